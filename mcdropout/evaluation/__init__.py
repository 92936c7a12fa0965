"""Judging a model's uncertainty: scores (RMSE, log-likelihood, coverage, calibration), the HTML
report of ``mcdropout evaluate --report``, and the UCI benchmark (``mcdropout benchmark uci``)."""
