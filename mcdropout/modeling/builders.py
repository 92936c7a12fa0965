"""Builders for the standard Monte Carlo dropout network.

The layout follows Gal & Ghahramani (2016), "Dropout as a Bayesian Approximation", and their public
experiment code: dropout on the inputs and after every hidden layer, and an L2 penalty on the
weights whose strength follows from the prior length-scale, the dropout rate and the noise
precision tau (their eq. 7)::

    Dropout -> Dense -> Dropout -> Dense -> ... -> Dropout -> Dense(outputs)

The Dropout layers are ordinary ``keras.layers.Dropout`` layers: they are off in ``model.predict``
and the MC dropout engine switches them on for its stochastic passes. With ``concrete=True`` each
Dropout -> Dense pair is one :class:`mcdropout.modeling.concrete.ConcreteDense` instead, whose rate
is learned in training (concrete dropout, Gal, Hron & Kendall 2017).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from mcdropout import metadata
from mcdropout.engine.prediction import Task
from mcdropout.errors import InvalidArgumentError

TASKS: tuple[Task, ...] = ("regression", "classification")
# Concrete dropout (mcdropout.modeling.concrete, and gridfit's stacked copy of its layer): the
# starting rate and relaxation temperature of Gal, Hron & Kendall, and the guard of its logs.
# Here because this module does not import Keras.
CONCRETE_INITIAL_RATE = 0.1
CONCRETE_TEMPERATURE = 0.1
CONCRETE_EPS = 1e-7
NOISE_MODELS = metadata.NOISE_MODELS


def gaussian_nll(y_true: Any, y_pred: Any) -> Any:
    """The loss of a learned-noise regression head: per row, the mean over targets of
    ``exp(-s) (y - mu)**2 / 2 + s / 2`` (the Gaussian negative log-likelihood less its constant),
    with ``y_pred`` the means ``mu`` then the log-variances ``s``, (rows, 2 * targets).

    Halved so that, with a noise variance fixed at 1, it is half the squared error: the weight
    decay ``l**2 (1 - p) / (2 N tau)`` of :func:`weight_decay` (at tau = 1) then completes the
    MC dropout objective divided by N, as it does for the squared error with a fixed tau.
    """
    from keras import ops

    half = y_pred.shape[-1] // 2
    mu, log_var = y_pred[..., :half], y_pred[..., half:]
    y = ops.cast(ops.reshape(y_true, ops.shape(mu)), mu.dtype)
    return ops.mean(0.5 * ops.exp(-log_var) * ops.square(y - mu) + 0.5 * log_var, axis=-1)


def concrete_regularizers(length_scale: float, n_train: int, tau: float) -> tuple[float, float]:
    """(weight_regularizer, dropout_regularizer) of concrete dropout for N = ``n_train`` rows:
    ``l**2 / (2 N tau)`` and ``1 / (N tau)``, the KL term of Gal, Hron & Kendall (their code)
    divided by ``N tau`` (see :mod:`mcdropout.modeling.concrete`).

    The weight term, ``l**2 / (2 N tau) * sum(kernel**2) / (1 - p)``, is :func:`weight_decay`'s
    ``l**2 (1 - p) / (2 N tau)`` applied to the effective weights ``kernel / (1 - p)`` that
    inverted dropout multiplies the kept inputs by; the fixed-rate recipe follows the 2016 code,
    which applies it to the kernel itself.

    Raises:
        InvalidArgumentError: an argument is out of range.
    """
    _check_positive("length_scale", length_scale)
    _check_positive("tau", tau)
    if isinstance(n_train, bool) or not isinstance(n_train, numbers.Integral) or n_train < 1:
        raise InvalidArgumentError(f"n_train must be an integer >= 1, got {n_train!r}")
    return length_scale**2 / (2.0 * n_train * tau), 1.0 / (n_train * tau)


def weight_decay(length_scale: float, dropout: float, n_train: int, tau: float) -> float:
    """The L2 coefficient that makes dropout training approximate a Gaussian-prior GP.

    ``length_scale**2 * (1 - dropout) / (2 * n_train * tau)``; the coefficient multiplies the sum
    of squared weights in the loss, as ``keras.regularizers.L2`` does.

    Args:
        length_scale: Prior length-scale l of the weights, in the units of the (standardised)
            inputs; > 0. Gal & Ghahramani use 1e-2.
        dropout: Dropout rate p, in [0, 1).
        n_train: Number of training rows N, >= 1.
        tau: Model precision (inverse observation-noise variance), in the units of the
            (standardised) targets; > 0. Classification uses 1.

    Returns:
        The non-negative weight-decay coefficient.

    Raises:
        InvalidArgumentError: an argument is out of range.
    """
    _check_positive("length_scale", length_scale)
    if not 0.0 <= dropout < 1.0:
        raise InvalidArgumentError(f"dropout must be in [0, 1), got {dropout!r}")
    if isinstance(n_train, bool) or not isinstance(n_train, numbers.Integral) or n_train < 1:
        raise InvalidArgumentError(f"n_train must be an integer >= 1, got {n_train!r}")
    _check_positive("tau", tau)
    return length_scale**2 * (1.0 - dropout) / (2.0 * n_train * tau)


def build_mlp(
    input_dim: int,
    output_dim: int,
    hidden: Sequence[int] = (50,),
    activation: str = "relu",
    dropout: float = 0.05,
    input_dropout: bool = True,
    task: Task = "regression",
    length_scale: float = 1e-2,
    tau: float | None = None,
    n_train: int | None = None,
    max_norm: float | None = None,
    weight_decay: float | None = None,
    learning_rate: float = 1e-3,
    noise: str = "fixed",
    concrete: bool = False,
) -> Any:
    """Build and compile the standard MC dropout multi-layer perceptron.

    Args:
        input_dim: Number of input features, >= 1.
        output_dim: Regression: number of targets. Classification: number of classes (softmax),
            or 1 for a binary problem (a single sigmoid unit giving P(class 1)).
        hidden: Widths of the hidden layers; may be empty (a linear model with input dropout).
        activation: Keras activation name of the hidden layers, e.g. "relu" or "tanh".
        dropout: Dropout rate p of every Dropout layer, in (0, 1).
        input_dropout: Whether to put a Dropout layer on the inputs too (as Gal & Ghahramani do).
        task: "regression" (linear output, mean squared error) or "classification" (softmax or
            sigmoid output, cross-entropy).
        length_scale: Prior length-scale for the derived weight decay, > 0.
        tau: Noise precision for the derived weight decay, in standardised target units, > 0;
            None means 1 (the conventional value for classification, and a unit-noise prior for
            standardised regression targets).
        n_train: Training-set size for the derived weight decay. None with ``weight_decay`` None
            means no weight decay.
        max_norm: If given, constrain each hidden unit's incoming weight vector to this L2 norm.
        weight_decay: Explicit L2 coefficient, overriding the derived one; >= 0.
        learning_rate: Adam learning rate, > 0.
        noise: Regression only: "fixed" (mean squared error; a precision tau describes the
            noise) or "learned" (Kendall & Gal 2017: the output layer gives ``output_dim`` means
            then ``output_dim`` log-variances, in standardised units, trained by
            :func:`gaussian_nll`; ``tau`` then enters the weight decay only).
        concrete: Learn each layer's dropout rate (concrete dropout), starting from
            ``dropout``; the weight and dropout regularisers follow from ``length_scale``,
            ``n_train`` and ``tau`` (:func:`concrete_regularizers`), so
            ``n_train`` is required and ``weight_decay`` must be None.

    Returns:
        A compiled ``keras.Model`` with input shape (None, input_dim), float32.

    Raises:
        InvalidArgumentError: an argument is out of range; the model would have no Dropout layer;
            ``concrete`` without ``n_train`` or with ``weight_decay``.
    """
    import keras  # deferred: importing the package should not start TensorFlow

    from mcdropout.modeling import concrete as concrete_dropout

    _check_dim("input_dim", input_dim)
    _check_dim("output_dim", output_dim)
    input_dim, output_dim = int(input_dim), int(output_dim)
    widths = tuple(hidden)
    for width in widths:
        if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
            raise InvalidArgumentError(
                f"hidden layer widths must be integers >= 1, got {list(widths)!r}")
    widths = tuple(int(w) for w in widths)
    if task not in TASKS:
        raise InvalidArgumentError(f"task must be one of {list(TASKS)}, got {task!r}")
    if not 0.0 < dropout < 1.0:
        raise InvalidArgumentError(f"dropout must be in (0, 1), got {dropout!r}")
    check_noise(noise, task)
    if not widths and not input_dropout:
        raise InvalidArgumentError(
            "the model would hold no Dropout layer (no hidden layers and input_dropout=False); "
            "MC dropout needs at least one")
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(
            f"activation must be a Keras activation name such as 'relu' or 'tanh', "
            f"got {activation!r}") from exc
    if max_norm is not None:
        _check_positive("max_norm", max_norm)
    _check_positive("learning_rate", learning_rate)
    if concrete:
        if weight_decay is not None or n_train is None:
            raise InvalidArgumentError(
                "concrete dropout derives its regularisers from length_scale, n_train and tau: "
                f"give n_train (got {n_train!r}) and no weight_decay (got {weight_decay!r})")
        regularizers = concrete_regularizers(length_scale, n_train, 1.0 if tau is None else tau)
        decay = 0.0
    else:
        regularizers = (0.0, 0.0)
        decay = _resolve_decay(weight_decay, length_scale, dropout, n_train, tau)

    def dense(units: int, act: str | None, name: str) -> Any:
        return keras.layers.Dense(
            units,
            activation=act,
            kernel_regularizer=keras.regularizers.L2(decay) if decay > 0 else None,
            kernel_constraint=keras.constraints.MaxNorm(max_norm) if max_norm else None,
            name=name,
        )

    def layer(units: int, act: str | None, name: str, dropped: bool) -> Any:
        """A Dense layer; with concrete dropout, one that learns the rate of its inputs'
        dropout when they are dropped (else the Dropout layers stand on their own)."""
        if not (concrete and dropped):
            return dense(units, act, name)
        weights, rates = regularizers
        return concrete_dropout.ConcreteDense(
            units, act, rate=dropout, weight_regularizer=weights, dropout_regularizer=rates,
            kernel_constraint=keras.constraints.MaxNorm(max_norm) if max_norm else None,
            name=name)

    inputs = keras.Input(shape=(input_dim,), dtype="float32", name="features")
    h = inputs
    if input_dropout and not concrete:
        h = keras.layers.Dropout(dropout, name="input_dropout")(h)
    for i, width in enumerate(widths, start=1):
        h = layer(width, activation, f"hidden_{i}", input_dropout or i > 1)(h)
        if not concrete:
            h = keras.layers.Dropout(dropout, name=f"dropout_{i}")(h)
    if noise == "learned":
        # Registered so that a saved model's compile settings name a known function.
        loss = keras.saving.register_keras_serializable("mcdropout")(gaussian_nll)
        out_act, output_dim = None, 2 * output_dim
    elif task == "regression":
        out_act, loss = None, "mean_squared_error"
    elif output_dim == 1:
        out_act, loss = "sigmoid", "binary_crossentropy"
    else:
        out_act, loss = "softmax", "sparse_categorical_crossentropy"
    outputs = layer(output_dim, out_act, "output", input_dropout or bool(widths))(h)
    model = keras.Model(inputs, outputs, name="mc_dropout_mlp")
    metrics = ["accuracy"] if task == "classification" else []
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)
    return model


def check_noise(noise: str, task: str) -> None:
    """Refuse a noise model other than :data:`NOISE_MODELS`, or a learned noise outside
    regression.

    Raises:
        InvalidArgumentError: as said.
    """
    if noise not in NOISE_MODELS:
        raise InvalidArgumentError(f"noise must be one of {list(NOISE_MODELS)}, got {noise!r}")
    if noise == "learned" and task != "regression":
        raise InvalidArgumentError(f"a learned noise is for regression only; the task is {task!r}")


def _resolve_decay(explicit: float | None, length_scale: float, dropout: float,
                   n_train: int | None, tau: float | None) -> float:
    if explicit is not None:
        if not math.isfinite(explicit) or explicit < 0:
            raise InvalidArgumentError(f"weight_decay must be finite and >= 0, got {explicit!r}")
        return float(explicit)
    _check_positive("length_scale", length_scale)
    if tau is not None:
        _check_positive("tau", tau)
    if n_train is None:
        return 0.0
    return weight_decay(length_scale, dropout, n_train, 1.0 if tau is None else tau)


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            math.isfinite(value) and value > 0):
        raise InvalidArgumentError(f"{name} must be a finite number > 0, got {value!r}")


def _check_dim(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}")
