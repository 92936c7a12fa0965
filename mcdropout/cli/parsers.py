"""The arguments of the built-in ``mcdropout`` sub-commands: flags, defaults and help text.

Each parser names its handler in :mod:`mcdropout.cli.commands` as its ``func`` default.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mcdropout.cli import calibrating, commands
from mcdropout.loading import IMPORT_MODULE_HELP, IMPORT_MODULES_ENV
from mcdropout.modeling import search_cli


def add_builtin_commands(sub: Any) -> None:
    """Add train, import, predict, evaluate, calibrate, info, make-default-models and demo, in
    that order."""
    _add_train(sub)
    _add_import(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    _add_calibrate(sub)
    _add_info(sub)
    _add_defaults(sub)


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="train an MC dropout MLP on a CSV/NPZ file and save it in a model store",
        description="Train the standard MC dropout MLP (dropout on the inputs and after each "
                    "hidden layer, weight decay l^2 (1-p) / (2 N tau)) with early stopping on a "
                    "validation split, and save it as a new version in the store with its "
                    "standardisation, tau and provenance.")
    p.add_argument("--data", required=True, type=Path,
                   help="CSV with a header line, or NPZ with arrays x (rows, features) and y")
    _store_args(p, required=True)
    p.add_argument("--task", choices=("regression", "classification"), default="regression",
                   help="regression (numeric target) or classification (class labels); "
                        "default %(default)s")
    p.add_argument("--target", nargs="+", metavar="COLUMN",
                   help="CSV target column(s); default the last column (classification: one)")
    p.add_argument("--hidden", nargs="*", type=int, default=[50], metavar="WIDTH",
                   help="hidden layer widths, e.g. --hidden 50 50; default 50")
    p.add_argument("--activation", default="relu", help="hidden activation; default relu")
    p.add_argument("--dropout", type=float, default=0.05,
                   help="dropout rate p of every Dropout layer, in (0, 1) (with "
                        "--concrete-dropout, the rate each layer starts from); default 0.05")
    search_cli.add_concrete_argument(p)
    p.add_argument("--no-input-dropout", dest="input_dropout", action="store_false",
                   help="no Dropout layer on the inputs")
    p.add_argument("--length-scale", type=float, default=1e-2,
                   help="prior length-scale l for the weight decay; default 0.01")
    p.add_argument("--tau", type=float,
                   help="regression noise precision in standardised target units (1 = noise as "
                        "large as the target's spread); default: estimated from the validation "
                        "residuals")
    search_cli.add_noise_argument(p, "--tau then sets the weight decay only (default 1)")
    p.add_argument("--max-norm", type=float, help="max-norm constraint on incoming weights")
    p.add_argument("--epochs", type=int, default=200, help="most epochs; default 200")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam; default 0.001")
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="share of rows held out for early stopping and metrics; default 0.2")
    p.add_argument("--patience", type=int, default=20,
                   help="epochs without a better validation loss before stopping; default 20")
    p.add_argument("--seed", type=int,
                   help="seed for split, initialisation, shuffling, dropout; default random "
                        "(recorded in the metadata)")
    p.add_argument("--description", default="", help="free text stored with the model")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    p.set_defaults(func=commands.train)


_IMPORT_DESCRIPTION = """\
Import a Keras 3 model file (.keras) into a model store, so that `mcdropout serve` serves it.

The model is loaded as the server loads it (Keras safe mode: a file carrying its own code, such
as a Lambda layer, is refused), its inputs (names, row shapes with None for a variable
dimension, dtypes) and output heads (names, task from the output activation: softmax or sigmoid
means classification) are read from the model, a short Monte Carlo pass (2 passes on zero
inputs) is run, and the version is written atomically with files readable by every user
(folders 0755, files 0644). It appears in the store only once it has loaded back from its own
folder and run, so a running server never sees a half-written or unservable version.

Accepted: Sequential, Functional or subclassed models with one or more named inputs (floats, or
integer ids for an Embedding) and one or more output heads, holding at least one Dropout,
SpatialDropout1D/2D/3D, GaussianDropout, AlphaDropout, or a recurrent layer with dropout or
recurrent_dropout. Refused, with a message saying why and what would be accepted: a model with
no such layer, one that does not run with dropout on, a file that is not .keras, and a file
naming custom classes no imported module registers (name the module with --import-module).

--task, --labels and --tau take HEAD=VALUE (the head names are the model's output names,
printed on success); for a model with one head, VALUE alone is enough. Repeat them per head.

Exit status: 0 imported; 1 refused (one line on stderr says what is wrong and what would be
accepted); 2 bad usage."""


def _add_import(sub: Any) -> None:
    p = sub.add_parser(
        "import", help="check a Keras .keras model file and add it to a model store",
        description=_IMPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, metavar="MODEL.keras", help="the Keras 3 model file")
    p.add_argument("--model-root", type=Path, required=True,
                   help="model store directory (created if missing)")
    p.add_argument("--name", required=True,
                   help="model name, [A-Za-z0-9][A-Za-z0-9_.-]* (its folder in the store)")
    p.add_argument("--version", type=int,
                   help="version number; default one above the latest (1 for a new model)")
    p.add_argument("--task", action="append", default=[], metavar="[HEAD=]TASK",
                   help="regression or classification for a head, where its output activation "
                        "would mislead; default: inferred")
    p.add_argument("--labels", action="append", default=[], metavar="[HEAD=]A,B,...",
                   help="class labels (classification) or output names (regression) of a head, "
                        "one per value a row")
    p.add_argument("--tau", action="append", default=[], metavar="[HEAD=]X",
                   help="noise precision of a regression head in its output units (adds the "
                        "noise 1/tau to predictive_std and intervals); default none")
    p.add_argument("--default-samples", type=int, default=100,
                   help="passes T when a request names none; default 100")
    p.add_argument("--max-samples", type=int, default=10_000,
                   help="largest T a request may ask for; default 10000")
    p.add_argument("--description", default="", help="free text stored with the model")
    _import_module_arg(p)
    p.set_defaults(func=commands.import_model)


def _add_predict(sub: Any) -> None:
    p = sub.add_parser(
        "predict", help="predict rows of a file with a stored model (mean ± std per row)",
        description="Run T stochastic passes of a stored model over the rows of a file and "
                    "print, per row, mean ± std (regression) or class, probability, predictive "
                    "entropy and mutual information (classification).")
    _store_args(p, required=False)
    p.add_argument("--input", required=True, type=Path,
                   help="rows to predict: .npy, .npz (array x) or .csv (a header naming the "
                        "model's features picks those columns)")
    _sampling_args(p)
    p.add_argument("--interval", type=float, default=0.95,
                   help="level of the central predictive interval; default 0.95")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.set_defaults(func=commands.predict)


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate", help="score a stored model on labelled data (RMSE, NLL, test LL, ECE...)",
        description="Regression: RMSE, Gaussian NLL, MC-mixture test log-likelihood, 95% "
                    "interval coverage (PICP) and width, in the target's units. "
                    "Classification: accuracy, NLL, expected calibration error (15 bins), "
                    "Brier score. With --report, also plots: a calibration curve, error "
                    "against predicted std and (one input) the mean with +-2 std bands for "
                    "regression; a reliability diagram and mutual-information histograms of "
                    "right and wrong predictions for classification; for both, the "
                    "risk-coverage curve (risk of the rows kept against the share kept, the "
                    "least uncertain first: by predictive std, or by predictive entropy and "
                    "mutual information).")
    _store_args(p, required=False)
    p.add_argument("--data", required=True, type=Path,
                   help="CSV with a header (the columns the model was trained on) or NPZ x/y")
    p.add_argument("--target", nargs="+", metavar="COLUMN",
                   help="CSV target column(s); default those the model was trained on")
    _sampling_args(p)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--report", type=Path, metavar="DIR",
                   help="also write the plots as PNG files and an index.html showing them with "
                        "the metrics into DIR")
    p.add_argument("--calibrated", action="store_true",
                   help="score the version's calibrated answers (conformal intervals, "
                        "temperature-scaled probabilities); the version must be calibrated "
                        "(mcdropout calibrate)")
    p.set_defaults(func=commands.evaluate)


_CALIBRATE_DESCRIPTION = """\
Fit post-hoc calibration of a stored version on labelled rows it was not trained on, and write
a calibrated copy as a new version (atomically; the version calibrated stays as it was). Every
head is calibrated:

- regression: split-conformal intervals. Scores |y - mean| / scale (scale: predictive std when
  the head has tau, else the MC std) give, at level L, intervals mean +- q(L) scale that cover at
  least L of new targets exchangeable with the calibration rows (on average over rows, not for
  each row). A level needs n >= L/(1-L) rows (19 for 0.95).
- classification: a temperature T (each pass's probabilities become softmax(log p / T) before
  any statistic), fitted by the NLL of the MC predictive distribution, then LAC prediction sets
  on the calibrated mean probabilities.

Optionally an abstention policy: a threshold on --abstain-measure (predictive_std or std for
regression; predictive_entropy, mutual_information or variation_ratio for a classifier), chosen
on the calibration rows to keep the share --abstain-coverage, or the largest share whose risk
(error rate; RMSE in target units for regression) is at most --abstain-risk.

Prints the new version and, per head, the scores before and after (after: on the calibration
rows themselves), the drift reference (95th/99th percentiles of the drift measure) and the
policy. Exit status: 0 written; 1 refused (one line on stderr says why); 2 bad usage."""


def _add_calibrate(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate", help="fit conformal intervals / temperature and prediction sets on held-out "
                          "rows and write a calibrated version",
        description=_CALIBRATE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-root", type=Path, required=True, help="model store directory")
    p.add_argument("--name", required=True, help="model name in the store")
    p.add_argument("--version", type=int, help="version to calibrate; default the latest")
    p.add_argument("--data", required=True, type=Path,
                   help="held-out labelled rows: CSV with a header, or NPZ with x and y (several "
                        "heads: one array per head, named by --target)")
    p.add_argument("--target", action="append", metavar="[HEAD=]COLUMN",
                   help="target column (repeat for several outputs); HEAD=COLUMN for each head "
                        "of a model with several; default the columns the model was trained on")
    _sampling_args(p)
    p.add_argument("--abstain-measure", metavar="MEASURE",
                   help="measure of an abstention policy: predictive_std, std, "
                        "predictive_entropy, mutual_information or variation_ratio")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--abstain-risk", type=float, metavar="R",
                        help="keep the largest share of rows whose risk is at most R")
    target.add_argument("--abstain-coverage", type=float, metavar="C",
                        help="keep the share C in (0, 1] of rows with the lowest measure")
    _import_module_arg(p)
    p.set_defaults(func=calibrating.calibrate)


def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="list the models of a store, or describe one",
                       description="Without --name: every model and its versions. With "
                                   "--name: every input (name, row shape with None for a "
                                   "variable dimension, dtype), every head (name, task, values "
                                   "a row, labels, tau), the stochastic layers with their rates "
                                   "(an RNN's recurrent rate too), the calibration (method, "
                                   "rows, temperature, scores before and after, abstention "
                                   "policy, drift percentiles) and the metadata.")
    p.add_argument("--model-root", type=Path,
                   help="model store directory; default the built-in default store")
    p.add_argument("--name", help="model to describe")
    p.add_argument("--version", type=int, help="version; default the latest")
    _import_module_arg(p)
    p.set_defaults(func=commands.show_info)


def _add_defaults(sub: Any) -> None:
    p = sub.add_parser(
        "make-default-models", help="train the built-in default models (diabetes, iris)",
        description="Train the built-in models from data shipped in the package (seconds, no "
                    "download) into a store, unless it already holds them.")
    p.add_argument("--model-root", type=Path,
                   help="store directory; default $XDG_CACHE_HOME/mcdropout/default-store")
    p.set_defaults(func=commands.make_defaults)
    p = sub.add_parser(
        "demo", help="predict held-out diabetes rows with uncertainty (trains on first use)",
        description="Make sure the default models exist, then predict rows of the diabetes "
                    "data that training never saw, printing the truth, mean ± predictive std "
                    "and the 95%% predictive interval.")
    p.add_argument("--model-root", type=Path,
                   help="store directory; default $XDG_CACHE_HOME/mcdropout/default-store")
    p.add_argument("--model", default="diabetes", choices=("diabetes", "iris"),
                   help="default model to demonstrate; default diabetes")
    p.add_argument("--rows", type=int, default=5, help="held-out rows to predict; default 5")
    p.add_argument("--samples", type=int, default=100, help="MC passes T; default 100")
    p.add_argument("--seed", type=int, default=0, help="dropout seed; default 0")
    p.set_defaults(func=commands.demo)


def _store_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--model-root", type=Path, required=required,
                   help="model store directory" if required else
                   "model store directory; default the built-in default store")
    p.add_argument("--name", required=True, help="model name in the store")
    if not required:
        p.add_argument("--version", type=int, help="model version; default the latest")
        _import_module_arg(p)  # the commands that load a stored model


def _import_module_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--import-module", action="append", metavar="MODULE",
                   help=f"{IMPORT_MODULE_HELP} [env {IMPORT_MODULES_ENV}, comma-separated; a "
                        "flag replaces it]")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, help="MC passes T; default the model's (usually 100)")
    p.add_argument("--seed", type=int, default=0, help="dropout seed; default 0")
