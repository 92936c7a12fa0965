"""Importing a Keras model file into a model store (``mcdropout import``).

The model is loaded the way a server loads it (Keras safe mode, the user's modules imported
first), its inputs and heads are read from the model itself, the user's per-head choices (task,
labels, tau) are checked against them, and the version is written beside the store's others. It
becomes visible only once it has been loaded back from its own folder and has run a short Monte
Carlo pass, so a version that appears in the store is one a server can serve.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from mcdropout.engine.prediction import Task
from mcdropout.errors import InvalidArgumentError, ModelLoadError
from mcdropout.loading import load_keras_file
from mcdropout.metadata import TASKS, HeadInfo, InputInfo, ModelInfo
from mcdropout.store import ModelStore, validate_name

# What --task, --labels and --tau without "HEAD=" apply to: the model's only head.
ONLY_HEAD: str | None = None


@dataclass(frozen=True)
class HeadChoices:
    """What the user states about the heads, by head name (``ONLY_HEAD``: the only head).

    Attributes:
        tasks: "regression" or "classification", where the output activation would mislead.
        labels: Class labels (classification) or output names (regression).
        taus: Regression noise precision in the head's output units.
    """

    tasks: Mapping[str | None, str] = field(default_factory=dict)
    labels: Mapping[str | None, tuple[str, ...]] = field(default_factory=dict)
    taus: Mapping[str | None, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Imported:
    """A version written by :func:`import_model`.

    Attributes:
        version: Its number in the store.
        info: Its metadata, as written.
        predictor: The ``MCDropoutPredictor`` of the version as loaded back from the store.
    """

    version: int
    info: ModelInfo
    predictor: Any


def parse_choices(tasks: Sequence[str] = (), labels: Sequence[str] = (),
                  taus: Sequence[str] = ()) -> HeadChoices:
    """``HEAD=VALUE`` (or a bare ``VALUE`` for a one-head model) flags as :class:`HeadChoices`.

    Raises:
        InvalidArgumentError: a task other than regression/classification, a tau that is not a
            positive finite number, empty labels, or a head named twice.
    """
    def task(text: str) -> str:
        if text not in TASKS:
            raise InvalidArgumentError(f"--task takes [HEAD=]regression or "
                                       f"[HEAD=]classification, got {text!r}")
        return text

    def label_list(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(","))
        if not all(names):
            raise InvalidArgumentError(f"--labels takes [HEAD=]A,B,C with no empty label, "
                                       f"got {text!r}")
        return names

    def tau(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise InvalidArgumentError(f"--tau takes [HEAD=]X with X a positive finite number, "
                                       f"got {text!r}")
        return value

    return HeadChoices(_by_head("--task", tasks, task), _by_head("--labels", labels, label_list),
                       _by_head("--tau", taus, tau))


def _by_head(flag: str, values: Sequence[str], convert: Any) -> dict[str | None, Any]:
    out: dict[str | None, Any] = {}
    for value in values:
        head, sep, text = value.partition("=")
        key = head.strip() if sep else ONLY_HEAD
        if key in out:
            raise InvalidArgumentError(f"{flag} names {'head ' + repr(key) if key else 'the head'}"
                                       " twice; give it once per head")
        out[key] = convert(text if sep else value)
    return out


def import_model(source: Path, store: ModelStore, name: str, *,
                 choices: HeadChoices = HeadChoices(), version: int | None = None,
                 default_samples: int = 100, max_samples: int = 10_000,
                 description: str = "") -> Imported:
    """Check that ``source`` can be served and write it as a version of ``name`` in ``store``.

    The modules that register the model's custom classes must be imported first
    (:func:`mcdropout.loading.import_modules`).

    Args:
        source: A Keras 3 ``.keras`` file.
        store: The store to write to (created if need be).
        name: The model's name, which names its folder.
        choices: Per-head task, labels and tau; the rest is read from the model.
        version: The version number; default one above the latest.
        default_samples, max_samples: T when a request names none, and the largest T allowed.
        description: Free text kept in the metadata.

    Returns:
        What was written.

    Raises:
        InvalidArgumentError: a bad name or file type, a version that exists, choices naming a
            head the model lacks or not fitting it (labels per output, tau on a classifier).
        NoStochasticLayersError: the model has no dropout-family layer.
        ModelLoadError: the file does not load (unknown class, unsafe code, corrupt) or the
            model does not run in MC mode.
    """
    from mcdropout.engine.validate import validate_model  # deferred: TensorFlow

    validate_name(name)
    _check_source(source)
    existing = store.versions(name)
    version = version or (existing[-1] + 1 if existing else 1)
    if version < 1 or version in existing:
        raise InvalidArgumentError(
            f"version must be a positive number not yet in the store; model {name!r} has "
            f"versions {existing}, got {version} (leave --version out to take the next)")
    model = load_keras_file(source)
    found = validate_model(model, max_samples=max_samples, default_samples=default_samples)
    info = ModelInfo(
        name=name, task="regression", input_shape=(), inputs=_inputs(found),
        heads=_heads(found, choices), default_samples=default_samples, max_samples=max_samples,
        description=description, provenance=_provenance(source))
    predictor = _write(store, model, info, version)
    return Imported(version, info, predictor)


def _check_source(source: Path) -> None:
    if source.suffix != ".keras" or not source.is_file():
        what = "no such file" if not source.exists() else (
            "a folder" if source.is_dir() else f"a {source.suffix or 'suffix-less'} file")
        raise InvalidArgumentError(
            f"{source}: {what}; mcdropout import takes a Keras 3 .keras file "
            "(model.save('model.keras')); .h5 files and SavedModel folders are not accepted: "
            "load them with Keras and save them as .keras")


def _inputs(predictor: Any) -> tuple[InputInfo, ...]:
    return tuple(InputInfo(spec.name, spec.shape, spec.dtype) for spec in predictor.inputs)


def per_row(task: str, width: int) -> str:
    """A head's width in words: "3 classes a row", "1 value a row"."""
    unit = "class" if task == "classification" else "value"
    return f"{width} {unit}{'' if width == 1 else 'es' if unit == 'class' else 's'} a row"


def _heads(predictor: Any, choices: HeadChoices) -> tuple[HeadInfo, ...]:
    specs = [(head.name, head.task, int(head.width)) for head in predictor.heads]
    names = [name for name, _, _ in specs]
    listed = ", ".join(f"{n} ({task}, {per_row(task, width)})" for n, task, width in specs)
    for flag, given in (("--task", choices.tasks), ("--labels", choices.labels),
                        ("--tau", choices.taus)):
        for key in given:
            if key is ONLY_HEAD and len(specs) > 1:
                raise InvalidArgumentError(
                    f"the model has {len(specs)} heads, so {flag} must name one as HEAD=VALUE; "
                    f"its heads: {listed}")
            if key is not ONLY_HEAD and key not in names:
                raise InvalidArgumentError(f"{flag} names head {key!r}, which the model does not "
                                           f"have; its heads: {listed}")
    def chosen(given: Mapping[str | None, Any], head: str) -> Any:
        return given.get(head, given.get(ONLY_HEAD))

    tasks: list[Task] = [chosen(choices.tasks, name) or inferred for name, inferred, _ in specs]
    heads = []
    for (name, _, width), task in zip(specs, tasks, strict=True):
        labels, tau = chosen(choices.labels, name) or (), chosen(choices.taus, name)
        if labels and len(labels) != width:
            kind = "classes" if task == "classification" else "outputs"
            raise InvalidArgumentError(
                f"head {name!r} has {width} {kind} a row, so --labels needs {width} labels, got "
                f"{len(labels)}: {list(labels)}")
        if tau is not None and task != "regression":
            regression = [n for (n, _, _), t in zip(specs, tasks, strict=True)
                          if t == "regression"]
            raise InvalidArgumentError(f"--tau applies to regression heads; head {name!r} is a "
                                       f"{task} head (regression heads: {regression})")
        heads.append(HeadInfo(name, task, labels, tau=tau))
    return tuple(heads)


def _provenance(source: Path) -> dict[str, Any]:
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    versions = {}
    for package in ("mcdropout", "keras", "tensorflow"):
        try:
            versions[package] = package_metadata.version(package)
        except package_metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return {"imported": {"file": source.name, "sha256": digest,
                         "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         "versions": versions}}


def _write(store: ModelStore, model: Any, info: ModelInfo, version: int) -> Any:
    """Save into a hidden staging store under the root, load it back in safe mode and run it,
    then rename the version folder into place; returns the checked predictor.

    The staging folder's name starts with a dot, which no model name can, so neither a server
    nor the store's listing ever sees it; the rename is atomic on the root's file system.
    """
    from mcdropout.engine.validate import validate_model

    store.root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=store.root))
    try:
        staged = ModelStore(staging)
        # Validated below on the reloaded copy: the model the server will read, not this one.
        staged.save(model, info, version, validate=False)
        predictor = validate_model(staged.load_model(info.name, version), info)
        folder = store.root / info.name
        if not folder.exists():
            folder.mkdir()
            os.chmod(folder, 0o755)  # a server often runs under another uid than the writer
        try:
            os.rename(staged.path(info.name, version), store.path(info.name, version))
        except OSError as exc:
            raise InvalidArgumentError(
                f"model {info.name!r} version {version} appeared in the store meanwhile; "
                f"import again (versions now: {store.versions(info.name)})") from exc
    except ModelLoadError as exc:
        raise ModelLoadError(f"the model did not survive being saved and loaded back: {exc}"
                             ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return predictor
