"""User code the zoo's subclassed model needs: a registered custom layer and a subclassed model.

The server resolves these classes only when it imports this module first (``--import-module
zoo_layers``): Keras' safe mode loads registered classes by name, never code from the file.
"""

from __future__ import annotations

from typing import Any

import keras

PACKAGE = "mcdropout_zoo"


@keras.saving.register_keras_serializable(package=PACKAGE)
class DenseDropBlock(keras.layers.Layer):
    """Dense, then Dropout: a custom layer holding the model's stochastic sublayer.

    Args:
        units: Width of the dense layer.
        rate: Dropout rate in [0, 1).
    """

    def __init__(self, units: int, rate: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate must be in [0, 1), got {rate}")
        self.units = units
        self.rate = rate
        self.dense = keras.layers.Dense(units, activation="relu")
        self.dropout = keras.layers.Dropout(rate)

    def build(self, input_shape: Any) -> None:
        self.dense.build(input_shape)
        self.dropout.build(self.dense.compute_output_shape(input_shape))
        super().build(input_shape)

    def call(self, inputs: Any, training: Any = None) -> Any:
        # training is passed on: MC dropout needs the nested Dropout to see it.
        return self.dropout(self.dense(inputs), training=training)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "rate": self.rate}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ZooRegressor(keras.Model):
    """A subclassed regression model: two custom blocks and a linear output.

    Args:
        units: Width of each block.
        rate: Dropout rate of each block.
    """

    def __init__(self, units: int = 16, rate: float = 0.2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.rate = rate
        self.first = DenseDropBlock(units, rate)
        self.second = DenseDropBlock(units, rate)
        self.out = keras.layers.Dense(1)

    def call(self, inputs: Any, training: Any = None) -> Any:
        return self.out(self.second(self.first(inputs, training=training), training=training))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "rate": self.rate}
