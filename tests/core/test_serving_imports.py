"""Serving without plotting: matplotlib is the optional ``report`` extra, never a server's.

The server's install (``pip install ./client '.[server]'``, what the image holds) has no matplotlib,
so the serving path must neither need it nor import it. Keras imports ``matplotlib.pyplot`` inside
``try: ... except ImportError`` at ``import keras`` whenever matplotlib is installed (that, not our
code, is what loaded it, and built its font cache, in a server started from the dev install), so the
check runs a fresh interpreter in which matplotlib cannot be imported, as on the server's install,
and records every attempt to import it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mcdropout.errors import MCDropoutError
from mcdropout.evaluation import plotting, report
from mcdropout.modeling import tuning_cli
from mcdropout.store import ModelStore

ROOT = Path(__file__).resolve().parents[2]
# matplotlib and what it alone brings in (deploy/constraints.txt pinned these before they moved to
# the report extra).
PLOTTING = {"matplotlib", "contourpy", "cycler", "fonttools", "kiwisolver", "pillow", "pyparsing",
            "python-dateutil"}

# Runs in a fresh interpreter: the `mcdropout` command's parser (which plugs in `serve`), the server
# module, the start path's registry over the built-in default models (trained with two epochs into
# a temporary store) and a prediction with intervals, with matplotlib made unimportable.
SERVING = r"""
import importlib.abc
import json
import sys

attempts = []


class NoMatplotlib(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] != "matplotlib":
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(
                ("importlib", "_frozen_importlib")):
            frame = frame.f_back
        attempts.append(frame.f_globals.get("__name__") if frame is not None else None)
        raise ModuleNotFoundError(f"No module named {name!r} (the server's install)", name=name)


sys.meta_path.insert(0, NoMatplotlib())

from dataclasses import replace
from pathlib import Path

import numpy as np

from mcdropout.cli import build_parser

build_parser()  # loads the plug-in commands: serve, benchmark, tune
import mcdropout_server.app as app
from mcdropout.modeling import defaults
from mcdropout_server.settings import ServerSettings

tiny = tuple(replace(m, config=replace(m.config, epochs=2, validation_samples=10))
             for m in defaults.DEFAULT_MODELS)
root = defaults.ensure_default_store(Path(sys.argv[1]), tiny)
registry = app.load_registry(ServerSettings(model_root=root))
served = registry.get("diabetes")
x = np.zeros((2, 10))
prediction = served.predictor.predict(x, samples=8, seed=0, interval_levels=(0.9,))
assert np.all(np.isfinite(prediction.intervals[0].upper))
print(json.dumps({"attempts": attempts, "models": registry.names(),
                  "loaded": sorted(m for m in sys.modules if m.partition(".")[0] == "matplotlib")}))
"""


@pytest.mark.timeout(300)
def test_the_serving_path_works_without_matplotlib_and_never_imports_it(tmp_path: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_HOME": str(tmp_path / "keras"),
           "MPLCONFIGDIR": str(tmp_path / "mpl")}
    done = subprocess.run([sys.executable, "-c", SERVING, str(tmp_path / "store")], env=env,
                          capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(result["models"]) == ["diabetes", "iris"]
    assert result["loaded"] == []
    # Third-party code may look for it and carry on without it (Keras does); ours never does.
    ours = [name for name in result["attempts"]
            if name is None or name.partition(".")[0] in {"mcdropout", "mcdropout_server",
                                                          "mcdropout_client", "__main__"}]
    assert not ours, result["attempts"]


def test_the_server_install_does_not_require_matplotlib() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    server = project["dependencies"] + project["optional-dependencies"]["server"] + client["dependencies"]
    names = {canonicalize_name(Requirement(text).name) for text in server}
    assert not names & PLOTTING, sorted(names & PLOTTING)
    report_extra = {canonicalize_name(Requirement(t).name)
                    for t in project["optional-dependencies"]["report"]}
    assert "matplotlib" in report_extra
    # the dev install (scripts/bootstrap.sh: [server,dev]) still draws the plots in the tests
    dev = [Requirement(t) for t in project["optional-dependencies"]["dev"]]
    assert any(canonicalize_name(r.name) == "mcdropout" and "report" in r.extras for r in dev)


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """matplotlib cannot be imported, as on the server's install (None in sys.modules blocks it)."""
    for name in [n for n in sys.modules if n.partition(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.usefixtures("no_matplotlib")
def test_plots_without_matplotlib_name_the_extra_to_install(tmp_path: Path) -> None:
    with pytest.raises(plotting.PlottingUnavailableError, match=r"pip install 'mcdropout\[report\]'"):
        report.plot_dropout_sweep([(0.1, "", 1.0)], tmp_path / "sweep.png", metric="m")
    with pytest.raises(plotting.PlottingUnavailableError, match=r"mcdropout\[report\]"):
        report.write_report(tmp_path / "out", object(), np.zeros((2, 1)), np.zeros(2))
    assert not (tmp_path / "out").exists()  # refused before predicting or writing anything


@pytest.mark.usefixtures("no_matplotlib")
def test_tune_with_output_refuses_before_training(tmp_path: Path) -> None:
    data = tmp_path / "lin.csv"
    data.write_text("x,y\n" + "".join(f"{i},{2 * i}\n" for i in range(20)))
    parser = argparse.ArgumentParser(prog="mcdropout")
    tuning_cli.register(parser.add_subparsers(dest="command"))  # the `mcdropout tune` plug-in
    args = parser.parse_args(["tune", "--data", str(data), "--model-root", str(tmp_path / "store"),
                              "--name", "lin", "--epochs", "1", "--output", str(tmp_path / "grid")])
    with pytest.raises(plotting.PlottingUnavailableError, match=r"pip install 'mcdropout\[report\]'"):
        args.func(args)
    assert ModelStore(tmp_path / "store").names() == []  # nothing trained or saved
    # an MCDropoutError: `mcdropout` prints "mcdropout tune: error: <message>" and exits 1
    assert issubclass(plotting.PlottingUnavailableError, MCDropoutError)
