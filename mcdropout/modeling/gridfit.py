"""Training many MC dropout regression MLPs of one layout at once, for grid searches.

A grid search over the dropout rate p and the precision tau trains a dozen small networks, and a
benchmark repeats that on 20 splits. Trained one by one, each Adam step of a 50-unit network costs
far more in dispatch than in arithmetic; here M networks are stacked along a leading axis and
trained by one compiled graph, so a step of all of them costs little more than a step of one.
Each network still follows the Keras recipe of :func:`mcdropout.modeling.builders.build_mlp` exactly:
Glorot-uniform kernels, zero biases, inverted dropout on the inputs and after each hidden layer,
mean squared error plus the L2 penalty ``weight_decay * sum(kernel**2)`` on every kernel, Adam
(Keras defaults), and its own shuffle of its rows each epoch in mini-batches (the last one
smaller). Adam is element-wise and the networks share no parameter, so summing their losses
trains each exactly as if alone. The networks may share one data set (a grid) or each have their
own of the same size (a grid on every split).

With concrete dropout (``concrete_regularizer`` given) every network also learns one dropout rate
per layer, as :class:`mcdropout.modeling.concrete.ConcreteDense` does: a relaxed mask in
training, the rate-dependent weight and entropy terms in the loss.

A trained network becomes an ordinary Keras model with :meth:`MLPStack.to_keras` and is then
served, evaluated and stored like any other.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcdropout.engine.tracing import expect_retracing
from mcdropout.errors import InvalidArgumentError
from mcdropout.modeling import builders

# Each mc_samples call compiles its own sampler around that stack's weights, on purpose.
expect_retracing("MLPStack.mc_samples")

# Keras's Adam defaults, which build_mlp compiles with.
_BETA_1, _BETA_2, _EPSILON = 0.9, 0.999, 1e-7
_TEMPERATURE, _LOG_EPS = builders.CONCRETE_TEMPERATURE, builders.CONCRETE_EPS
# Hidden activations held at once while sampling (float32 values): about 64 MiB.
_SAMPLE_VALUES_PER_CHUNK = 16_000_000


@dataclass(frozen=True)
class MLPStack:
    """M trained ReLU MLPs of one layout, weights stacked on a leading axis.

    Attributes:
        kernels: Per layer, (M, fan_in, fan_out) float32; the last layer is the linear output.
        biases: Per layer, (M, fan_out) float32.
        dropout: Dropout rate of each network.
        weight_decay: L2 coefficient of each network.
        noise: "fixed" (outputs are the means) or "learned" (the means, then as many
            log-variances: see :func:`mcdropout.modeling.builders.gaussian_nll`).
        learned_rates: Concrete dropout: (M, layers) float64, each layer's learned rate (of
            its inputs); ``dropout`` is then where they started and ``weight_decay`` the
            weight regularizer. None: every layer drops at ``dropout``.
        concrete_regularizer: Concrete dropout: each network's dropout (entropy) regularizer.
    """

    kernels: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    dropout: tuple[float, ...]
    weight_decay: tuple[float, ...]
    noise: str = "fixed"
    learned_rates: np.ndarray | None = None
    concrete_regularizer: tuple[float, ...] = ()

    def layer_rates(self) -> np.ndarray:
        """(M, layers): the rate each layer's inputs are dropped with."""
        if self.learned_rates is not None:
            return self.learned_rates
        return np.repeat(np.asarray(self.dropout, np.float64)[:, None], len(self.kernels), axis=1)

    @property
    def size(self) -> int:
        return len(self.dropout)

    @property
    def hidden(self) -> tuple[int, ...]:
        return tuple(int(k.shape[2]) for k in self.kernels[:-1])

    def select(self, indices: Sequence[int]) -> MLPStack:
        """The stack of the networks at ``indices``, in that order."""
        index = np.asarray(indices, dtype=np.int64)
        if index.ndim != 1 or index.size == 0 or index.min() < 0 or index.max() >= self.size:
            raise InvalidArgumentError(
                f"indices must be a non-empty list in 0..{self.size - 1}, got {list(indices)}")
        return MLPStack(tuple(k[index] for k in self.kernels), tuple(b[index] for b in self.biases),
                        tuple(self.dropout[i] for i in index),
                        tuple(self.weight_decay[i] for i in index), self.noise,
                        None if self.learned_rates is None else self.learned_rates[index],
                        tuple(self.concrete_regularizer[i] for i in index)
                        if self.concrete_regularizer else ())

    def mc_samples(self, x: np.ndarray, samples: int, seed: int) -> np.ndarray:
        """T stochastic passes of every network (dropout on) over rows of inputs.

        As in the engine, a pass draws one mask per layer for all rows: each row still sees
        exactly the dropout distribution, and dropping input units becomes zeroing kernel rows,
        so masks cost (features + hidden) draws per pass rather than per row.

        Args:
            x: Inputs in the units the networks were trained on: (rows, features) shared by
                all networks, or (M, rows, features), one set per network.
            samples: Passes T, >= 1.
            seed: Seeds the dropout masks.

        Returns:
            (M, T, rows, outputs) float32, in the training target units (a learned noise: the
            means, then the log-variances).
        """
        import tensorflow as tf  # deferred: importing the package should not start TensorFlow

        if samples < 1:
            raise InvalidArgumentError(f"samples must be >= 1, got {samples}")
        x32 = np.asarray(x, np.float32)
        if x32.ndim not in (2, 3) or (x32.ndim == 3 and len(x32) != self.size) \
                or x32.shape[-1] != self.kernels[0].shape[1]:
            raise InvalidArgumentError(
                f"x must be (rows, {self.kernels[0].shape[1]}) or ({self.size}, rows, "
                f"{self.kernels[0].shape[1]}), got {x32.shape}")
        rows = x32.shape[-2]
        widest = max(int(k.shape[2]) for k in self.kernels)
        chunk = max(1, min(samples, _SAMPLE_VALUES_PER_CHUNK // (self.size * rows * widest)))
        keeps = [tf.constant(1.0 - rates.astype(np.float32))[:, None, None]
                 for rates in self.layer_rates().T]
        kernels = [tf.constant(k) for k in self.kernels]
        biases = [tf.constant(b) for b in self.biases]
        first = "rf,mtfo->mtro" if x32.ndim == 2 else "mrf,mtfo->mtro"
        inputs = tf.constant(x32)
        generator = tf.random.Generator.from_seed(seed)

        @tf.function(jit_compile=True)  # fuses the masking into the matrix products
        def passes(count: int) -> tf.Tensor:
            h = inputs
            for i, (kernel, bias, keep) in enumerate(zip(kernels, biases, keeps, strict=True)):
                mask = tf.cast(generator.uniform([self.size, count, kernel.shape[1]]) < keep,
                               tf.float32) / keep
                scaled = kernel[:, None] * mask[..., None]  # (M, t, fan_in, fan_out)
                h = tf.einsum(first if i == 0 else "mtrf,mtfo->mtro", h, scaled) \
                    + bias[:, None, None]
                if i < len(kernels) - 1:
                    h = tf.nn.relu(h)
            return h

        parts = [passes(min(chunk, samples - done)).numpy() for done in range(0, samples, chunk)]
        return np.concatenate(parts, axis=1)

    def to_keras(self, index: int, *, learning_rate: float = 1e-3) -> Any:
        """Network ``index`` as the Keras model of :func:`mcdropout.modeling.builders.build_mlp`."""
        if not 0 <= index < self.size:
            raise InvalidArgumentError(f"index must be in 0..{self.size - 1}, got {index}")
        outputs = int(self.kernels[-1].shape[2]) // (2 if self.noise == "learned" else 1)
        if self.learned_rates is None:
            model = builders.build_mlp(
                int(self.kernels[0].shape[1]), outputs, hidden=self.hidden,
                dropout=self.dropout[index], weight_decay=self.weight_decay[index],
                learning_rate=learning_rate, noise=self.noise)
            weights = []
            for kernel, bias in zip(self.kernels, self.biases, strict=True):
                weights += [kernel[index], bias[index]]
            model.set_weights(weights)
            return model
        from mcdropout.modeling import concrete  # deferred: it imports Keras

        # n_train only sets the layers' regularisers, replaced by the network's own below.
        model = builders.build_mlp(
            int(self.kernels[0].shape[1]), outputs, hidden=self.hidden,
            dropout=self.dropout[index], learning_rate=learning_rate, noise=self.noise,
            concrete=True, n_train=1)
        layers = [layer for layer in model.layers if isinstance(layer, concrete.ConcreteDense)]
        for layer, kernel, bias, rate in zip(layers, self.kernels, self.biases,
                                             self.learned_rates[index], strict=True):
            layer.dense.set_weights([kernel[index], bias[index]])
            layer.dropout.p_logit.assign(math.log(rate / (1.0 - rate)))
            layer.weight_regularizer = self.weight_decay[index]
            layer.dropout_regularizer = self.concrete_regularizer[index]
        return model


def fit_mlps(x: np.ndarray, y: np.ndarray, dropout: Sequence[float],
             weight_decay: Sequence[float], *, hidden: Sequence[int] = (50,), epochs: int,
             batch_size: int = 128, learning_rate: float = 1e-3, seed: int = 0,
             on_epoch: Callable[[int], None] | None = None, noise: str = "fixed",
             concrete_regularizer: Sequence[float] | None = None) -> MLPStack:
    """Train one MC dropout regression MLP per (dropout, weight_decay) pair, all at once.

    Args:
        x: Inputs, already standardised: (rows, features) shared by every network, or
            (M, rows, features), one data set per network.
        y: Targets, already standardised, matching ``x``: (rows,) or (rows, outputs) when
            shared; (M, rows) or (M, rows, outputs) per network.
        dropout: Dropout rate of each network, each in (0, 1).
        weight_decay: L2 coefficient of each network (same length), each >= 0; see
            :func:`mcdropout.modeling.builders.weight_decay`.
        hidden: Hidden layer widths (ReLU), at least one.
        epochs: Passes over the rows, >= 1.
        batch_size: Rows per Adam step, >= 1.
        learning_rate: Adam learning rate, > 0.
        seed: Seeds the initial weights, the shuffles and the dropout masks.
        on_epoch: Called with the number of epochs done after each epoch.
        noise: "fixed" (mean squared error) or "learned" (each network also predicts a
            log-variance per target and is trained by
            :func:`mcdropout.modeling.builders.gaussian_nll`).
        concrete_regularizer: Concrete dropout: each network's dropout (entropy) regularizer,
            >= 0; every layer's rate is then learned from ``dropout``, and ``weight_decay`` is
            the weight regularizer (times ``sum(kernel**2) / (1 - p)``), as in
            :class:`mcdropout.modeling.concrete.ConcreteDense` with
            :func:`mcdropout.modeling.builders.concrete_regularizers`. None: fixed rates.

    Returns:
        The trained :class:`MLPStack`, networks in the order given.

    Raises:
        InvalidArgumentError: mismatched shapes or lengths, or an argument out of range.
    """
    import tensorflow as tf  # deferred: importing the package should not start TensorFlow

    x, y, rates, decays = _check(x, y, dropout, weight_decay, hidden, epochs, batch_size,
                                 learning_rate)
    builders.check_noise(noise, "regression")
    learned = noise == "learned"
    concrete = concrete_regularizer is not None
    entropy = np.asarray(concrete_regularizer if concrete else np.zeros(len(rates)), np.float32)
    if entropy.shape != rates.shape or not np.all(np.isfinite(entropy) & (entropy >= 0)):
        raise InvalidArgumentError(
            f"concrete_regularizer must hold one finite value >= 0 per network, got "
            f"{list(entropy)}")
    rng = np.random.default_rng(seed)
    widths = [x.shape[-1], *hidden, y.shape[-1] * (2 if learned else 1)]
    size = len(rates)
    kernels = [tf.Variable(_glorot(rng, size, a, b)) for a, b in itertools.pairwise(widths)]
    biases = [tf.Variable(np.zeros((size, b), np.float32)) for b in widths[1:]]
    logits = [tf.Variable(np.log(rates / (1.0 - rates)).astype(np.float32))
              for _ in kernels] if concrete else []
    params = [*kernels, *biases, *logits]
    moments = [(tf.Variable(tf.zeros_like(p)), tf.Variable(tf.zeros_like(p))) for p in params]
    step = tf.Variable(0.0)
    generator = tf.random.Generator.from_seed(int(rng.integers(2**31)))
    x_all, y_all = tf.constant(x), tf.constant(y)
    shared = x.ndim == 2
    rate_t, decay_t, entropy_t = tf.constant(rates), tf.constant(decays), tf.constant(entropy)
    rows = x.shape[-2]
    full, rest = divmod(rows, batch_size)

    def adam_step(index: tf.Tensor) -> None:
        if shared:
            xb, yb = tf.gather(x_all, index), tf.gather(y_all, index)  # (M, batch, features)
        else:
            xb = tf.gather(x_all, index, batch_dims=1)
            yb = tf.gather(y_all, index, batch_dims=1)
        with tf.GradientTape() as tape:
            layer_rates = [tf.sigmoid(v) for v in logits] if concrete else [rate_t] * len(kernels)
            out = _forward(xb, kernels, biases, layer_rates, generator, concrete)
            if learned:  # builders.gaussian_nll, network by network
                mu, log_var = tf.split(out, 2, axis=-1)
                fit = tf.reduce_mean(0.5 * tf.exp(-log_var) * tf.square(mu - yb)
                                     + 0.5 * log_var, axis=[1, 2])
            else:
                fit = tf.reduce_mean(tf.square(out - yb), axis=[1, 2])
            penalty = penalties(kernels, layer_rates if concrete else None, decay_t,
                                entropy_t)
            loss = tf.reduce_sum(fit + penalty)
        grads = tape.gradient(loss, params)
        step.assign_add(1.0)
        alpha = learning_rate * tf.sqrt(1.0 - _BETA_2**step) / (1.0 - _BETA_1**step)
        for p, g, (m, v) in zip(params, grads, moments, strict=True):
            m.assign_add((g - m) * (1.0 - _BETA_1))
            v.assign_add((tf.square(g) - v) * (1.0 - _BETA_2))
            p.assign_sub(alpha * m / (tf.sqrt(v) + _EPSILON))

    @tf.function
    def epoch() -> None:
        # Each network draws its own shuffle: argsort of uniform keys is a uniform permutation.
        order = tf.argsort(generator.uniform([size, rows]), axis=1)
        for i in tf.range(full):
            adam_step(tf.slice(order, [0, i * batch_size], [size, batch_size]))
        if rest:
            adam_step(order[:, full * batch_size:])

    for done in range(1, epochs + 1):
        epoch()
        if on_epoch is not None:
            on_epoch(done)
    learned_rates = None if not concrete else np.stack(
        [1.0 / (1.0 + np.exp(-v.numpy().astype(np.float64))) for v in logits], axis=1)
    return MLPStack(tuple(k.numpy() for k in kernels), tuple(b.numpy() for b in biases),
                    tuple(float(r) for r in rates), tuple(float(d) for d in decays), noise,
                    learned_rates, tuple(float(e) for e in entropy) if concrete else ())


def penalties(kernels: Sequence[Any], rates: Sequence[Any] | None, weight: Any,
              entropy: Any) -> Any:
    """Each network's regularisation, (M,): ``weight * sum(kernel**2)`` over the kernels with
    fixed rates (``rates`` None); with concrete dropout (``rates`` per layer, (M,) each), as
    :meth:`mcdropout.modeling.concrete.ConcreteDense.regularization` per layer:
    ``weight * sum(kernel**2) / (1 - p) + entropy * fan_in * (p log p + (1 - p) log(1 - p))``."""
    import tensorflow as tf

    squares = [tf.reduce_sum(tf.square(k), axis=[1, 2]) for k in kernels]
    if rates is None:
        return weight * tf.add_n(squares)
    eps = _LOG_EPS
    return tf.add_n([
        weight * square / (1.0 - p)
        + entropy * float(k.shape[1]) * (p * tf.math.log(p + eps)
                                         + (1.0 - p) * tf.math.log(1.0 - p + eps))
        for k, square, p in zip(kernels, squares, rates, strict=True)])


def _forward(h: Any, kernels: Sequence[Any], biases: Sequence[Any], rates: Sequence[Any],
             generator: Any, relaxed: bool = False) -> Any:
    """(M, batch, features) -> (M, batch, outputs) with a fresh dropout mask per row; ``rates``
    per layer, (M,); ``relaxed``: concrete masks (a gradient reaches the rates)."""
    import tensorflow as tf

    for i, (kernel, bias, rate) in enumerate(zip(kernels, biases, rates, strict=True)):
        p = rate[:, None, None]
        if relaxed:  # as concrete.ConcreteDropout.call
            u = generator.uniform(tf.shape(h))
            drop = tf.sigmoid((tf.math.log(p + _LOG_EPS) - tf.math.log(1.0 - p + _LOG_EPS)
                               + tf.math.log(u + _LOG_EPS) - tf.math.log(1.0 - u + _LOG_EPS))
                              / _TEMPERATURE)
            mask = (1.0 - drop) / (1.0 - p)
        else:
            keep = 1.0 - p
            mask = tf.cast(generator.uniform(tf.shape(h)) < keep, h.dtype) / keep
        h = tf.matmul(h * mask, kernel) + bias[:, None, :]
        if i < len(kernels) - 1:
            h = tf.nn.relu(h)
    return h


def _glorot(rng: np.random.Generator, size: int, fan_in: int, fan_out: int) -> np.ndarray:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (size, fan_in, fan_out)).astype(np.float32)


def _check(x: np.ndarray, y: np.ndarray, dropout: Sequence[float], weight_decay: Sequence[float],
           hidden: Sequence[int], epochs: int, batch_size: int, learning_rate: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rates = np.asarray(dropout, np.float32)
    decays = np.asarray(weight_decay, np.float32)
    if rates.ndim != 1 or rates.shape != decays.shape or rates.size == 0:
        raise InvalidArgumentError(
            f"dropout and weight_decay must be equally long, non-empty lists, got "
            f"{len(rates)} and {len(decays)}")
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    if x.ndim == 2:
        y = y.reshape(len(y), -1)
    elif x.ndim == 3 and len(x) == rates.size:
        y = y.reshape(*x.shape[:2], -1)
    else:
        raise InvalidArgumentError(
            f"x must be (rows, features) or ({rates.size}, rows, features), got {x.shape}")
    if y.shape[:-1] != x.shape[:-1] or x.shape[-2] == 0:
        raise InvalidArgumentError(
            f"x and y must hold the same (non-zero) number of rows, got {x.shape} and {y.shape}")
    if not np.all((rates > 0) & (rates < 1)):
        raise InvalidArgumentError(f"dropout rates must be in (0, 1), got {list(dropout)}")
    if not np.all(np.isfinite(decays) & (decays >= 0)):
        raise InvalidArgumentError(f"weight decays must be finite and >= 0, got {list(weight_decay)}")
    if not hidden or any(int(w) < 1 for w in hidden):
        raise InvalidArgumentError(f"hidden must hold one or more widths >= 1, got {list(hidden)}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if int(value) != value or value < 1:
            raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}")
    if not learning_rate > 0:
        raise InvalidArgumentError(f"learning_rate must be > 0, got {learning_rate!r}")
    return x, y, rates, decays
