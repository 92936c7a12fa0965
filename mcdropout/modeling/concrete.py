"""Concrete dropout (Gal, Hron & Kendall 2017): a dropout rate learned per layer by gradient descent.

Dropout's Bernoulli mask has no gradient with respect to its rate; the concrete (relaxed
Bernoulli) distribution at a low temperature does, so training can move each layer's rate p along
with the weights. The rate is the sigmoid of a trainable logit. Two terms of the MC dropout
objective depend on p and are what makes the learned rate meaningful (the data fit alone would
drive it to 0):

- the weights' prior term ``weight_regularizer * sum(kernel**2) / (1 - p)`` (the KL term of a
  layer whose inputs are dropped with rate p and scaled by 1 / (1 - p)), and
- the negative entropy of the mask, ``dropout_regularizer * K * (p log p + (1 - p) log(1 - p))``,
  K the number of units dropped per row (the layer's input width).

With N training rows, prior length-scale l and precision tau,
:func:`mcdropout.modeling.builders.concrete_regularizers` gives the two coefficients on the scale
of :func:`mcdropout.modeling.builders.weight_decay`: the KL term divided by ``N * tau``.

:class:`ConcreteDropout` is a ``keras.layers.Dropout`` whose ``rate`` is the learned one, so the
MC dropout engine samples it as it samples any Dropout layer: exact Bernoulli masks with the
learned rate (the relaxation's low-temperature limit; the relaxation is only for training).
:class:`ConcreteDense` is the unit a network is built of: concrete dropout on the inputs of a
Dense layer, owning both so that it can add the two terms above while training. Both classes are
registered with Keras (package "mcdropout"), so saved models load wherever this module has been
imported; :func:`mcdropout.loading.load_keras_file` imports it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import keras
from keras import ops

from mcdropout.errors import InvalidArgumentError
from mcdropout.modeling.builders import CONCRETE_EPS as _EPS
from mcdropout.modeling.builders import CONCRETE_INITIAL_RATE as DEFAULT_INITIAL_RATE
from mcdropout.modeling.builders import CONCRETE_TEMPERATURE as DEFAULT_TEMPERATURE


def _check_rate(rate: float, where: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 < rate < 1.0:
        raise InvalidArgumentError(f"{where} must be in (0, 1), got {rate!r}")
    return float(rate)


@keras.saving.register_keras_serializable(package="mcdropout")
class ConcreteDropout(keras.layers.Dropout):
    """Dropout whose rate is learned: ``rate = sigmoid(p_logit)``, ``p_logit`` a trainable weight.

    In training, inputs are multiplied by a concrete relaxation of the keep mask (temperature
    ``temperature``) and scaled by ``1 / (1 - rate)``; in inference they pass unchanged. The
    layer adds no loss of its own: :class:`ConcreteDense` adds the terms that involve the rate.

    Args:
        rate: The initial rate, in (0, 1). A saved layer stores its learned rate here.
        temperature: Temperature of the relaxation, > 0; lower is closer to Bernoulli.
        noise_shape, seed: As for ``keras.layers.Dropout``.

    Attributes:
        rate: The current rate, a Python float read from ``p_logit`` (also while a graph is
            being traced, so the engine builds its masks from the learned value).
    """

    def __init__(self, rate: float = DEFAULT_INITIAL_RATE, temperature: float = DEFAULT_TEMPERATURE,
                 noise_shape: Any = None, seed: int | None = None, **kwargs: Any) -> None:
        rate = _check_rate(rate, "the initial concrete dropout rate")
        if isinstance(temperature, bool) or not (math.isfinite(temperature) and temperature > 0):
            raise InvalidArgumentError(f"temperature must be a finite number > 0, "
                                       f"got {temperature!r}")
        super().__init__(rate, noise_shape=noise_shape, seed=seed, **kwargs)
        self.temperature = float(temperature)
        self.p_logit = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(math.log(rate / (1.0 - rate))),
            name="p_logit")

    def build(self, input_shape: Any) -> None:
        # Overridden so that Dropout's build-at-init (which would lock the layer before its
        # weight exists) does not apply: the weight is made in __init__, as it needs no shape.
        self.built = True

    @property  # type: ignore[override]
    def rate(self) -> float:
        logit = self.__dict__.get("p_logit")
        if logit is None:  # Dropout.__init__ sets (and reads) it before the weight exists
            return self.__dict__.get("_initial_rate", 0.0)
        import tensorflow as tf  # the engine traces its graphs with TensorFlow

        with tf.init_scope():  # read the variable's value even inside a graph being traced
            value = float(keras.ops.convert_to_numpy(logit.value))
        return 1.0 / (1.0 + math.exp(-value))

    @rate.setter
    def rate(self, value: float) -> None:
        self.__dict__["_initial_rate"] = float(value)

    def probability(self) -> Any:
        """The rate as a tensor with a gradient (for the losses and the relaxed mask)."""
        return ops.sigmoid(self.p_logit)

    def call(self, inputs: Any, training: bool = False) -> Any:
        if not training:
            return inputs
        p = self.probability()
        shape = ops.shape(inputs)
        if self.noise_shape is not None:
            shape = tuple(shape[i] if d is None else d for i, d in enumerate(self.noise_shape))
        u = keras.random.uniform(shape, seed=self.seed_generator, dtype=inputs.dtype)
        drop = ops.sigmoid((ops.log(p + _EPS) - ops.log(1.0 - p + _EPS)
                            + ops.log(u + _EPS) - ops.log(1.0 - u + _EPS)) / self.temperature)
        return inputs * (1.0 - drop) / (1.0 - p)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate, "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="mcdropout")
class ConcreteDense(keras.layers.Layer):
    """A Dense layer whose inputs pass through :class:`ConcreteDropout` first.

    While training it adds the two terms of the objective that involve the rate:
    ``weight_regularizer * sum(kernel**2) / (1 - p)`` and
    ``dropout_regularizer * K * (p log p + (1 - p) log(1 - p))``, K the input width (see
    :func:`mcdropout.modeling.builders.concrete_regularizers`). The bias is not regularised, as
    in the fixed-rate networks.

    Args:
        units: Output width, >= 1.
        activation: Keras activation name, or None for a linear layer.
        rate: Initial dropout rate of the inputs, in (0, 1).
        weight_regularizer, dropout_regularizer: The two coefficients, >= 0.
        temperature: Of the relaxation, > 0.
        kernel_constraint: Optional Keras constraint of the kernel (e.g. MaxNorm).
    """

    def __init__(self, units: int, activation: str | None = None, *,
                 rate: float = DEFAULT_INITIAL_RATE, weight_regularizer: float = 0.0,
                 dropout_regularizer: float = 0.0, temperature: float = DEFAULT_TEMPERATURE,
                 kernel_constraint: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value in (("weight_regularizer", weight_regularizer),
                            ("dropout_regularizer", dropout_regularizer)):
            if isinstance(value, bool) or not (math.isfinite(value) and value >= 0):
                raise InvalidArgumentError(f"{name} must be a finite number >= 0, got {value!r}")
        self.weight_regularizer = float(weight_regularizer)
        self.dropout_regularizer = float(dropout_regularizer)
        self.dropout = ConcreteDropout(rate, temperature, name=f"{self.name}_dropout")
        self.dense = keras.layers.Dense(
            units, activation=activation,
            kernel_constraint=keras.constraints.get(kernel_constraint),
            name=f"{self.name}_dense")

    def build(self, input_shape: Any) -> None:
        self.dense.build(input_shape)
        self.built = True

    def call(self, inputs: Any, training: bool = False) -> Any:
        if training:
            self.add_loss(self.regularization())
        return self.dense(self.dropout(inputs, training=training))

    def regularization(self) -> Any:
        """The two rate-dependent terms, a scalar tensor."""
        p = self.dropout.probability()
        kernel = self.dense.kernel
        units_in = int(kernel.shape[0])
        weights = self.weight_regularizer * ops.sum(ops.square(kernel)) / (1.0 - p)
        entropy = p * ops.log(p + _EPS) + (1.0 - p) * ops.log(1.0 - p + _EPS)
        return weights + self.dropout_regularizer * units_in * entropy

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.dense.compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.dense.units,
                "activation": keras.activations.serialize(self.dense.activation),
                "rate": self.dropout.rate, "weight_regularizer": self.weight_regularizer,
                "dropout_regularizer": self.dropout_regularizer,
                "temperature": self.dropout.temperature,
                "kernel_constraint": keras.constraints.serialize(self.dense.kernel_constraint)}


def learned_rates(model: Any) -> dict[str, float]:
    """The learned rate of each :class:`ConcreteDense` in ``model``, by layer name."""
    return {layer.name: layer.dropout.rate for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, ConcreteDense)}
