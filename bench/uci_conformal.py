"""The UCI conformal table of docs/calibration.md, from ``mcdropout benchmark uci`` reports.

Reads the ``<dataset>.json`` reports that ``mcdropout benchmark uci --calibration-fraction F``
wrote into one or more folders and prints one markdown row per report (data set and seed): the
uncalibrated and the split-conformal 95% and 90% intervals on the test rows (coverage and mean
width, mean ± SE over the splits), whether the conformal 95% coverage lies in the target band,
and the wall time.
With ``--update-docs`` the table replaces the text between ``<!-- uci-conformal:begin -->`` and
``<!-- uci-conformal:end -->`` in docs/calibration.md.

    python -m bench.uci_conformal /work/uci17 /work/uci17/energy-seed1 --update-docs
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import common

NAME = "uci-conformal"
DOC = common.BENCH_DIR.parent / "docs" / "calibration.md"
BAND = (0.94, 0.975)  # the target for the mean conformal 95% coverage over the splits
ORDER = ("yacht", "bostonHousing", "energy", "concrete", "wine-quality-red", "power-plant")


def _cell(summary: dict[str, Any], key: str, scale: float = 1.0, digits: int = 1) -> str:
    if key not in summary:
        return "-"
    mean, se = summary[key]["mean"] * scale, summary[key]["se"] * scale
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def row(report: dict[str, Any], label: str) -> list[str]:
    """One data set's table row from its JSON report, named ``label``."""
    s = report["summary"]
    coverage = s.get("coverage@0.95", {}).get("mean")
    met = "-" if coverage is None else ("yes" if BAND[0] <= coverage <= BAND[1] else "**no**")
    stages = report["stage_seconds"]
    calibration_rows = report["splits"][0].get("calibration_rows", 0) if report["splits"] else 0
    return [label, str(report["protocol"]["seed"]), str(report["splits_run"]),
            str(calibration_rows),
            _cell(s, "rmse", digits=3),
            _cell(s, "picp", 100), _cell(s, "coverage@0.95", 100),
            _cell(s, "interval_width", digits=2), _cell(s, "width@0.95", digits=2),
            _cell(s, "raw_coverage@0.9", 100), _cell(s, "coverage@0.9", 100),
            _cell(s, "raw_width@0.9", digits=2), _cell(s, "width@0.9", digits=2), met,
            f"{report['seconds']:.0f} ({stages['grid_search']:.0f} + {stages['retrain']:.0f} + "
            f"{stages['test']:.0f})"]


def table(folders: Sequence[Path]) -> str:
    """The markdown table of every report in ``folders`` (known data sets first, in size order,
    then by folder). Rows from the second folder on carry the folder's name after the data set's.
    """
    found = [(json.loads(p.read_text()), "" if i == 0 else f" ({folder.name})")
             for i, folder in enumerate(folders) for p in sorted(folder.glob("*.json"))]
    found = [(r, suffix) for r, suffix in found if "summary" in r and "splits_run" in r]
    found.sort(key=lambda item: (ORDER.index(item[0]["dataset"]) if item[0]["dataset"] in ORDER
                                 else len(ORDER), item[0]["dataset"]))
    reports = [r for r, _ in found]
    headers = ["data set", "seed", "splits", "calibration rows", "RMSE",
               "95% coverage, uncalibrated (%)", "95% coverage, conformal (%)",
               "95% width, uncalibrated", "95% width, conformal",
               "90% coverage, uncalibrated (%)", "90% coverage, conformal (%)",
               "90% width, uncalibrated", "90% width, conformal",
               f"conformal 95% in {BAND[0]:.0%} to {BAND[1]:.1%}", "wall s (grid + retrain + test)"]
    protocols = {json.dumps({**r["protocol"], "seed": None}, sort_keys=True) for r in reports}
    lines = [common.markdown_table(headers, [row(r, r["dataset"] + suffix) for r, suffix in found])]
    if len(protocols) == 1 and reports:
        p = reports[0]["protocol"]
        lines.append(f"Protocol of every row: calibration fraction {p['calibration_fraction']}, "
                     f"epochs = n_epochs x {p['epochs_multiplier']}, T = {p['samples']} "
                     f"(validation {p['validation_samples'] or p['samples']}).")
    return "\n\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", metavar="FOLDER",
                        help="--output folder(s) of the benchmark runs")
    parser.add_argument("--update-docs", action="store_true",
                        help=f"write the table into docs/calibration.md between the {NAME} markers")
    args = parser.parse_args(argv)
    block = table(args.folders)
    print(block)
    if args.update_docs:
        common.update_readme(NAME, block, readme=DOC)
    return 0


if __name__ == "__main__":
    sys.exit(main())
