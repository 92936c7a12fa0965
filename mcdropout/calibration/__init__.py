"""Post-hoc calibration of a model version: conformal intervals and prediction sets,
temperature scaling, abstention policies, and the drift reference (see docs/calibration.md)."""

from mcdropout.calibration.abstention import AbstentionTarget
from mcdropout.calibration.fit import calibrate
from mcdropout.calibration.model import (
    CALIBRATION_FILE,
    AbstentionPolicy,
    Calibration,
    ConformalRegression,
    ConformalSets,
    DriftReference,
    HeadCalibration,
)

__all__ = ["CALIBRATION_FILE", "AbstentionPolicy", "AbstentionTarget", "Calibration", "ConformalRegression",
           "ConformalSets", "DriftReference", "HeadCalibration", "calibrate"]
