"""Evaluation reports: valid PNG files, an index page that shows them, calibration numbers."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from mcdropout.engine import MCDropoutPredictor
from mcdropout.errors import InvalidArgumentError
from mcdropout.evaluation import plotting, report
from mcdropout.modeling.builders import build_mlp

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDTH, HEIGHT = (round(v * plotting.DPI) for v in plotting.FIGURE_INCHES)


def assert_png(path: Path) -> None:
    """A real PNG: the signature, an IHDR of the figure's size, and pixels that decode."""
    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE, f"{path.name} does not start with the PNG signature"
    assert raw[12:16] == b"IHDR"
    assert struct.unpack(">II", raw[16:24]) == (WIDTH, HEIGHT)
    with Image.open(path) as image:
        image.load()  # decodes every pixel; raises on a truncated or corrupt stream
        assert image.size == (WIDTH, HEIGHT)
        assert np.unique(np.asarray(image.convert("L"))).size > 2  # something was drawn


def referenced_images(index: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index.read_text())


def test_coverage_curve_by_hand() -> None:
    y = np.array([0.0, 1.0, 2.0, 3.0])
    narrow = (np.array([0.0, 2.0, 2.0, 9.0]), np.array([0.5, 3.0, 2.0, 9.0]))  # rows 0, 2 inside
    wide = (np.full(4, -10.0), np.full(4, 10.0))
    assert report.coverage_curve(y, [narrow, wide]).tolist() == [0.5, 1.0]


def test_regression_report_with_one_input(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    predictor = MCDropoutPredictor(build_mlp(1, 1, hidden=(16,), dropout=0.2), tau=25.0,
                                   target_mean=[3.0], target_std=[2.0])
    x = np.linspace(-2, 2, 60)[:, None]
    y = 3.0 + 2.0 * np.sin(x) + np.random.default_rng(0).normal(0, 0.4, size=x.shape)
    index = report.write_report(tmp_path / "out", predictor, x, y, samples=50, seed=1,
                                metrics_table={"rmse": 0.5, "picp": 0.93}, title="sine <test>")
    assert index == tmp_path / "out" / "index.html"
    assert referenced_images(index) == ["calibration.png", "error_vs_std.png", "mean_band.png",
                                        "risk_coverage.png"]
    for name in referenced_images(index):
        assert_png(index.parent / name)
    page = index.read_text()
    assert "sine &lt;test&gt;" in page  # escaped
    assert "<td>rmse</td><td>0.5</td>" in page and "<td>picp</td><td>0.93</td>" in page


def test_regression_report_with_several_inputs_has_no_band(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    predictor = MCDropoutPredictor(build_mlp(3, 2, hidden=(8,), dropout=0.1))  # no tau
    rng = np.random.default_rng(1)
    index = report.write_report(tmp_path, predictor, rng.normal(size=(40, 3)),
                                rng.normal(size=(40, 2)), samples=20)
    assert referenced_images(index) == ["calibration.png", "error_vs_std.png",
                                        "risk_coverage.png"]
    assert not (tmp_path / "mean_band.png").exists()
    for name in referenced_images(index):
        assert_png(tmp_path / name)


def test_classification_report(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    predictor = MCDropoutPredictor(build_mlp(2, 3, hidden=(8,), dropout=0.3,
                                             task="classification"))
    rng = np.random.default_rng(2)
    index = report.write_report(tmp_path, predictor, rng.normal(size=(50, 2)),
                                np.arange(50) % 3, samples=30, metrics_table={"accuracy": 0.4})
    assert referenced_images(index) == ["reliability.png", "mutual_information.png",
                                        "risk_coverage.png"]
    for name in referenced_images(index):
        assert_png(tmp_path / name)


def test_mismatched_rows_are_rejected(tmp_path: Path) -> None:
    predictor = MCDropoutPredictor(build_mlp(2, 1, hidden=(4,), dropout=0.1))
    with pytest.raises(InvalidArgumentError, match="same, non-zero number of rows, got 3 and 2"):
        report.write_report(tmp_path, predictor, np.zeros((3, 2)), np.zeros(2))


def test_dropout_sweep_plot(tmp_path: Path) -> None:
    points = [(p, f"tau={t}", -1.0 - p - t) for p in (0.005, 0.01, 0.05, 0.1) for t in (0.5, 1)]
    path = report.plot_dropout_sweep(points, tmp_path / "sweep.png", metric="validation LL")
    assert_png(path)


def test_intervals_of_a_model_are_calibrated_on_its_own_predictive_distribution() -> None:
    """Targets drawn from the model's own predictive distribution fall inside the level-l
    intervals a share l of the time, within five standard errors."""
    keras.utils.set_random_seed(4)
    predictor = MCDropoutPredictor(build_mlp(2, 1, hidden=(32,), dropout=0.3))  # no tau: passes
    rows, passes = 2000, 1000
    x = np.random.default_rng(5).normal(size=(rows, 2))
    draws = predictor.predict(x, passes, seed=11, return_samples=True).raw_samples
    assert draws is not None
    y = draws[np.random.default_rng(6).integers(passes, size=rows), np.arange(rows), 0]
    p = predictor.predict(x, passes, seed=12, interval_levels=report.CALIBRATION_LEVELS)
    observed = report.coverage_curve(y[:, None], [(i.lower, i.upper) for i in p.intervals])
    for level, share in zip(report.CALIBRATION_LEVELS, observed, strict=True):
        # binomial spread over the rows, plus the finite passes behind y and behind the bounds
        se = math.sqrt(level * (1 - level) * (1 / rows + 2 / passes))
        assert abs(share - level) < 5 * se, (level, share)
