"""What the store records beside a model: :class:`ModelInfo` and its inputs and heads.

A model may have several named inputs (:class:`InputInfo`) and several named output heads
(:class:`HeadInfo`). The older single-input, single-head fields of :class:`ModelInfo` stay and keep
their meaning: empty ``inputs``/``heads`` mean the one input and head those fields describe, and
given ``inputs``/``heads`` the old fields hold the first one's values, so a reader that knows only
the old fields still sees a valid description of the first input and head.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from mcdropout.engine.inputs import LEGACY_NAME as LEGACY_INPUT_NAME
from mcdropout.engine.prediction import Task
from mcdropout.errors import InvalidArgumentError

INPUT_DTYPES = ("float16", "float32", "float64", "int32", "int64")
TASKS = ("regression", "classification")
NOISE_MODELS = ("fixed", "learned")
"""A regression head's observation noise: "fixed" (one precision tau, or none known) or
"learned" (the model predicts a log-variance beside each mean, Kendall & Gal 2017)."""
LEGACY_HEAD_NAME = "output"
_REQUIRED = ("name", "task", "input_shape")


def _check_task(task: object, where: str) -> None:
    if task not in TASKS:
        raise InvalidArgumentError(f"{where}task must be 'regression' or 'classification', "
                                   f"got {task!r}")


def _check_noise(noise: object, task: object, tau: object, where: str) -> None:
    if noise not in NOISE_MODELS:
        raise InvalidArgumentError(f"{where}noise must be one of {list(NOISE_MODELS)}, "
                                   f"got {noise!r}")
    if noise == "learned" and (task != "regression" or tau is not None):
        raise InvalidArgumentError(
            f"{where}a learned noise is for regression heads without tau (the model predicts "
            f"its own variance), got task {task!r} and tau {tau!r}")


def _floats(values: Any) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


@dataclass(frozen=True)
class InputInfo:
    """One named input of a model.

    Attributes:
        name: The input's name (the Keras input's name), non-empty.
        shape: Shape of one row (no rows dimension); None marks a variable dimension (e.g. a
            sequence length), which rows of one request share.
        dtype: Numpy dtype name: float16, float32, float64, or int32/int64 (integer ids, e.g.
            for an Embedding).
        feature_mean, feature_std: Standardisation applied to this input first, or None.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"
    feature_mean: tuple[float, ...] | None = None
    feature_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgumentError(f"an input needs a non-empty name, got {self.name!r}")
        shape = tuple(None if d is None else int(d) for d in self.shape)
        if any(d is not None and d < 1 for d in shape):
            raise InvalidArgumentError(f"input {self.name!r}: dimensions must be positive or "
                                       f"None (variable), got {shape}")
        if self.dtype not in INPUT_DTYPES:
            raise InvalidArgumentError(f"input {self.name!r}: dtype must be one of "
                                       f"{', '.join(INPUT_DTYPES)}, got {self.dtype!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "feature_mean", _floats(self.feature_mean))
        object.__setattr__(self, "feature_std", _floats(self.feature_std))


@dataclass(frozen=True)
class HeadInfo:
    """One named output head of a model, with its own task.

    Attributes:
        name: The head's name (the Keras output's name), non-empty.
        task: "regression" or "classification".
        labels: Class labels (classification) or target names (regression), one per output.
        target_mean, target_std: The head predicts ``(y - mean) / std``; None if it predicts y.
        tau: Regression noise precision in the head's standardised units, or None.
        noise: "fixed" (tau, if given) or "learned": the head's outputs are a mean and then a
            log-variance (standardised units) per target, twice as many as ``labels``.
    """

    name: str
    task: Task
    labels: tuple[str, ...] = ()
    target_mean: tuple[float, ...] | None = None
    target_std: tuple[float, ...] | None = None
    tau: float | None = None
    noise: str = "fixed"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgumentError(f"a head needs a non-empty name, got {self.name!r}")
        _check_task(self.task, f"head {self.name!r}: ")
        _check_noise(self.noise, self.task, self.tau, f"head {self.name!r}: ")
        object.__setattr__(self, "labels", tuple(str(v) for v in self.labels))
        object.__setattr__(self, "target_mean", _floats(self.target_mean))
        object.__setattr__(self, "target_std", _floats(self.target_std))


@dataclass(frozen=True)
class ModelInfo:
    """What the store records beside a model (``metadata.json``).

    Attributes:
        name: Model name, ``[A-Za-z0-9][A-Za-z0-9_.-]*``, at most 128 characters.
        task: "regression" or "classification" (with ``heads``: the first head's).
        input_shape: Shape of one input row (no batch dimension); with ``inputs``, the first's.
        input_dtype: Numpy dtype name the model expects, e.g. "float32".
        labels: Class labels (classification) or target names (regression), one per output.
        feature_mean, feature_std: Standardisation applied to inputs before the model, or None.
        target_mean, target_std: The model predicts ``(y - target_mean) / target_std``; None if
            it predicts y directly.
        tau: Regression noise precision in the *standardised* target units, or None.
        noise: The (first) head's noise model, "fixed" or "learned" (see :class:`HeadInfo`). A
            learned noise without ``heads`` is given its one head here, so every reader of
            ``heads`` (the engine) sees it.
        default_samples: T used when a request gives none.
        max_samples: Largest T a request may ask for.
        description: Free text shown in metadata.
        provenance: How the model was made (data, hyper-parameters, metrics, library versions).
        inputs: Every named input, in the model's order; empty for the single input the fields
            above describe. Given, the single-input fields are set from the first (what was
            passed for them is replaced), so older readers see a valid first input.
        heads: Every named head, in the model's order; empty for the single head the fields
            above describe. Given, ``task``, ``labels``, ``target_*`` and ``tau`` are set from
            the first.
        version: Filled in by the store when loading; 0 before the model is saved.
    """

    name: str
    task: Task
    input_shape: tuple[int | None, ...]
    input_dtype: str = "float32"
    labels: tuple[str, ...] = ()
    feature_mean: tuple[float, ...] | None = None
    feature_std: tuple[float, ...] | None = None
    target_mean: tuple[float, ...] | None = None
    target_std: tuple[float, ...] | None = None
    tau: float | None = None
    noise: str = "fixed"
    default_samples: int = 100
    max_samples: int = 10_000
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[InputInfo, ...] = ()
    heads: tuple[HeadInfo, ...] = ()
    version: int = 0

    def __post_init__(self) -> None:
        inputs, heads = tuple(self.inputs), tuple(self.heads)
        if not heads and self.noise != "fixed":
            heads = (HeadInfo(LEGACY_HEAD_NAME, self.task, self.labels, self.target_mean,
                              self.target_std, self.tau, self.noise),)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "heads", heads)
        for kind, items in (("input", inputs), ("head", heads)):
            names = [item.name for item in items]
            if len(set(names)) != len(names):
                raise InvalidArgumentError(f"{kind} names must be distinct, got {names}")
        derived: dict[str, object] = {}
        if inputs:
            first = inputs[0]
            derived.update(input_shape=first.shape, input_dtype=first.dtype,
                           feature_mean=first.feature_mean, feature_std=first.feature_std)
        if heads:
            head = heads[0]
            derived.update(task=head.task, labels=head.labels, target_mean=head.target_mean,
                           target_std=head.target_std, tau=head.tau, noise=head.noise)
        for key, value in derived.items():
            object.__setattr__(self, key, value)
        _check_task(self.task, "")

    def input_infos(self) -> tuple[InputInfo, ...]:
        """Every input, the single legacy input (named "inputs") when ``inputs`` is empty."""
        if self.inputs:
            return self.inputs
        return (InputInfo(LEGACY_INPUT_NAME, self.input_shape, self.input_dtype,
                          self.feature_mean, self.feature_std),)

    def head_infos(self) -> tuple[HeadInfo, ...]:
        """Every head, the single legacy head (named "output") when ``heads`` is empty."""
        if self.heads:
            return self.heads
        return (HeadInfo(LEGACY_HEAD_NAME, self.task, self.labels, self.target_mean,
                         self.target_std, self.tau, self.noise),)

    @property
    def multi_input(self) -> bool:
        return len(self.inputs) > 1

    @property
    def multi_head(self) -> bool:
        return len(self.heads) > 1

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("version")
        for key in ("inputs", "heads"):
            if not data[key]:
                data.pop(key)  # files of single-input, single-head models stay as they were
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, version: int = 0) -> ModelInfo:
        """Parse ``metadata.json``; ``version`` is the one the store files it under.

        ``task`` and ``input_shape`` may be left out when ``heads`` and ``inputs`` give them.

        Raises:
            ValueError: not JSON, not an object, a missing or unknown key, a bad task, shape or
                dtype, or a ``"version"`` key that differs from ``version`` (the folder numbers
                the version; the key may only agree).
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"metadata must be a JSON object, got {type(data).__name__}")
        stated = data.pop("version", version)
        if stated != version:
            raise ValueError(f"metadata says version {stated!r}, but its folder is version "
                             f"{version}; the folder numbers the version")
        known = set(cls.__dataclass_fields__) - {"version"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown metadata keys {sorted(unknown)}; known keys: "
                             f"{sorted(known)}")
        inputs = tuple(_input(item) for item in data.pop("inputs", None) or ())
        heads = tuple(_head(item) for item in data.pop("heads", None) or ())
        if heads:
            data.setdefault("task", heads[0].task)
        if inputs:
            data.setdefault("input_shape", inputs[0].shape)
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ValueError(
                f"metadata lacks the required key(s) {missing}; every metadata.json needs "
                "'name' (the model's name, as its folder), 'task' ('regression' or "
                "'classification') and 'input_shape' (one row's shape), the last two unless "
                "'heads' and 'inputs' give them")
        for key in ("input_shape", "labels", "feature_mean", "feature_std", "target_mean",
                    "target_std"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        _check_task(data.get("task"), "")
        return cls(**data, inputs=inputs, heads=heads, version=version)


def _fields(item: Any, cls: type, what: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ValueError(f"each of {what} must be a JSON object, got {item!r}")
    known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    unknown = set(item) - known
    if unknown or "name" not in item:
        raise ValueError(f"{what} entry {item.get('name', '?')!r}: keys must be among "
                         f"{sorted(known)} with 'name' given, got {sorted(item)}")
    return dict(item)


def _input(item: Any) -> InputInfo:
    data = _fields(item, InputInfo, "inputs")
    if "shape" not in data:
        raise ValueError(f"input {data['name']!r} needs 'shape' (null for a variable dimension)")
    data["shape"] = tuple(data["shape"])
    return InputInfo(**data)


def _head(item: Any) -> HeadInfo:
    data = _fields(item, HeadInfo, "heads")
    if "task" not in data:
        raise ValueError(f"head {data['name']!r} needs 'task' ('regression' or "
                         "'classification')")
    if data.get("labels") is not None:
        data["labels"] = tuple(data["labels"])
    return HeadInfo(**data)
