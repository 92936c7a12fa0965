"""The model store: ``<root>/<name>/<version>/{model.keras, metadata.json}`` on disk.

A calibrated version also holds ``calibration.json`` (:mod:`mcdropout.calibration.model`);
:meth:`ModelStore.save_calibrated` writes one as a new version beside the one it calibrates.

Versions are positive integers (as in TensorFlow Serving); the highest is the latest. A version
directory is written under a temporary name and renamed into place, so a reader never sees a
half-written model.

The path is the version's identity: a version whose metadata names another model, or states
another version number, is refused rather than served under a name its folder does not give it.
Files are read only inside the root: a symbolic link that leads out of it is refused unless the
store is told to follow such links.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mcdropout.calibration.model import CALIBRATION_FILE, Calibration
from mcdropout.errors import InvalidArgumentError, ModelLoadError, NotFoundError, shorten
from mcdropout.loading import load_keras_file
from mcdropout.metadata import HeadInfo, InputInfo, ModelInfo

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
# calibration.json holds every calibration row's scores (about 20 bytes a value): 64 MiB is some
# three million values, far beyond a calibration set, and keeps a stray huge file from being read.
MAX_CALIBRATION_BYTES = 64 * 2**20
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

__all__ = ["METADATA_FILE", "MODEL_FILE", "HeadInfo", "InputInfo", "ModelInfo", "ModelStore", "as_array",
           "validate_name"]


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise InvalidArgumentError."""
    if not _NAME_RE.match(name or ""):
        raise InvalidArgumentError(
            "model name must match [A-Za-z0-9][A-Za-z0-9_.-]* (at most 128 characters), got "
            f"{shorten(name)}"
        )
    return name


class ModelStore:
    """Versioned models under one root directory.

    Args:
        root: The store's directory; created on the first save.
        allow_outside_links: Read model and metadata files that symbolic links lead to outside
            ``root``. Off, such a version is refused when read (links that stay inside ``root``
            always work), so that the store reads only what lies under its root.
    """

    def __init__(self, root: str | os.PathLike[str], *, allow_outside_links: bool = False) -> None:
        self.root = Path(root)
        self.allow_outside_links = allow_outside_links

    def names(self) -> list[str]:
        """Names of the models that have at least one complete version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and _NAME_RE.match(p.name) and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        """Complete versions of ``name``, ascending; [] when there are none."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = []
        for p in folder.iterdir():
            if p.name.isdigit() and int(p.name) > 0 and (p / METADATA_FILE).is_file():
                found.append(int(p.name))
        return sorted(found)

    def resolve(self, name: str, version: int | None = None) -> int:
        """The version that answers for ``(name, version)``; None or 0 means the latest.

        Raises:
            NotFoundError: no such model or version (the message lists what exists).
        """
        validate_name(name)
        versions = self.versions(name)
        if not versions:
            raise NotFoundError(f"model {name!r} not found; available models: {self.names()}")
        if not version:
            return versions[-1]
        if version not in versions:
            raise NotFoundError(
                f"model {name!r} has no version {version}; available versions: {versions}")
        return version

    def path(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def read_info(self, name: str, version: int | None = None) -> ModelInfo:
        """The metadata of a stored version.

        Raises:
            NotFoundError: no such model or version.
            ModelLoadError: the metadata does not parse; it names another model than its folder
                does, or states another version; or it lies outside the root (see
                ``allow_outside_links``).
        """
        version = self.resolve(name, version)
        folder = self.path(name, version)
        path = self._inside_root(folder / METADATA_FILE)
        try:
            info = ModelInfo.from_json(path.read_text(), version=version)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"cannot read {folder / METADATA_FILE}: {exc}") from exc
        if info.name != name:
            # Served under the name it claims, it would shadow (or stand in for) that model.
            raise ModelLoadError(
                f"version folder {folder} refused: its {METADATA_FILE} names model "
                f"{info.name!r}, but the folder belongs to model {name!r}; the folder names the "
                f"model: move the version under {self.root / info.name} or correct the name")
        return info

    def save(self, model: Any, info: ModelInfo, version: int | None = None, *,
             validate: bool = True) -> int:
        """Write ``model`` (a keras.Model) and ``info`` as a new version and return its number.

        The version's folder is readable by every user (folders 0755, files 0644): a server
        often runs under another uid than whoever wrote the store.

        Args:
            model: The Keras model; saved in the native ``.keras`` format.
            info: Its metadata; ``info.name`` names the model.
            version: Explicit version number; default one above the latest.
            validate: First check that the model can be served as ``info`` describes it (see
                :func:`mcdropout.engine.validate.validate_model`: a short MC pass on zero
                inputs), so that nothing unservable is stored.

        Raises:
            InvalidArgumentError: a bad name, an existing version, or (validating) inputs or
                heads the model does not have.
            NoStochasticLayersError: (validating) the model has no dropout-family layer.
            ModelLoadError: (validating) the model cannot run in MC mode.
        """
        validate_name(info.name)
        if validate:
            from mcdropout.engine.validate import validate_model  # deferred: TensorFlow

            validate_model(model, info)
        def fill(tmp: Path) -> None:
            model.save(tmp / MODEL_FILE)
            (tmp / METADATA_FILE).write_text(info.to_json())

        return self._write_version(info.name, version, fill)

    def read_calibration(self, name: str, version: int | None = None) -> Calibration | None:
        """The calibration of a stored version, or None when it has none (no
        ``calibration.json`` in its folder).

        Raises:
            NotFoundError: no such model or version.
            ModelLoadError: the file does not parse, is larger than ``MAX_CALIBRATION_BYTES``,
                or lies outside the root (see ``allow_outside_links``).
        """
        version = self.resolve(name, version)
        path = self.path(name, version) / CALIBRATION_FILE
        if not path.is_file():
            return None
        real = self._inside_root(path)
        try:
            with open(real, "rb") as f:
                data = f.read(MAX_CALIBRATION_BYTES + 1)
            if len(data) > MAX_CALIBRATION_BYTES:
                raise ValueError(f"it is larger than {MAX_CALIBRATION_BYTES} bytes, the most a "
                                 "calibration file may hold")
            return Calibration.from_json(data.decode("utf-8"))
        except (OSError, ValueError, TypeError) as exc:
            raise ModelLoadError(
                f"cannot read the calibration {path}: {exc}; remove the version or calibrate "
                "its model again with `mcdropout calibrate`") from exc

    def save_calibrated(self, name: str, version: int | None, calibration: Calibration,
                        description: str | None = None) -> int:
        """Write a calibrated copy of a version as a new version and return its number.

        The new version holds a copy of the version's files (the model), its metadata with the
        description saying what it is and ``provenance["calibration"]`` added, and
        ``calibration.json``; it is written like :meth:`save` (hidden folder renamed into place,
        folders 0755, files 0644). The version it copies stays as it was.

        Args:
            name: The model.
            version: The version calibrated; None or 0 for the latest.
            calibration: One head calibration per head of the model.
            description: The new version's description; default "calibrated copy of version N"
                followed by the old description.

        Raises:
            NotFoundError: no such model or version.
            InvalidArgumentError: the calibration's heads are not the model's.
            ModelLoadError: the version's metadata or files cannot be read.
        """
        info = self.read_info(name, version)
        source = self.path(name, info.version)
        # A one-head model's head is named by the engine (its Keras output) unless the metadata
        # lists heads, so only the count can be checked without loading the model.
        heads = [head.name for head in info.heads]
        if (sorted(calibration.heads) != sorted(heads)) if heads else len(calibration.heads) != 1:
            raise InvalidArgumentError(
                f"the calibration covers heads {sorted(calibration.heads)}, but model {name!r} "
                f"version {info.version} has {f'heads {heads}' if heads else 'one head'}: "
                "calibrate every head")
        note = {"from_version": info.version,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "heads": {h.head: h.method for h in calibration.heads.values()},
                "rows": max(h.rows for h in calibration.heads.values())}
        if description is None:
            description = f"calibrated copy of version {info.version}" + (
                f"; {info.description}" if info.description else "")
        new_info = dataclasses.replace(info, description=description, version=0,
                                       provenance={**info.provenance, "calibration": note})

        def fill(tmp: Path) -> None:
            for item in sorted(source.iterdir()):
                if item.name in (METADATA_FILE, CALIBRATION_FILE):
                    continue
                real = self._inside_root(item)
                if real.is_dir():
                    shutil.copytree(real, tmp / item.name)
                else:
                    shutil.copyfile(real, tmp / item.name)
            (tmp / METADATA_FILE).write_text(new_info.to_json())
            (tmp / CALIBRATION_FILE).write_text(calibration.to_json())

        return self._write_version(name, None, fill)

    def _write_version(self, name: str, version: int | None, fill: Callable[[Path], None]
                       ) -> int:
        """Fill a hidden folder, make it readable by all and rename it into place as
        ``version`` (default one above the latest); the number written."""
        existing = self.versions(name)
        version = version or (existing[-1] + 1 if existing else 1)
        if version in existing:
            raise InvalidArgumentError(f"model {name!r} already has version {version}")
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=folder))
        try:
            fill(tmp)
            _readable(tmp)
            os.replace(tmp, folder / str(version))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return version

    def load_model(self, name: str, version: int | None = None, *, safe_mode: bool = True) -> Any:
        """Load the Keras model of a stored version.

        Args:
            safe_mode: Keras safe mode: refuse model files that would run arbitrary code (lambda
                layers). Only turn off for models from a trusted source.

        Raises:
            NotFoundError: no such model or version.
            ModelLoadError: the file is missing, corrupt, needs a class no imported module
                registers, or needs arbitrary code while safe_mode is on (see
                :func:`mcdropout.loading.load_keras_file`).
        """
        version = self.resolve(name, version)
        path = self.path(name, version) / MODEL_FILE
        if not path.is_file():
            raise ModelLoadError(f"model file {path} is missing")
        return load_keras_file(self._inside_root(path), safe_mode=safe_mode, shown=path)

    def _inside_root(self, path: Path) -> Path:
        """``path`` with every link resolved, refused when that leaves the root.

        The resolved path is what the caller then reads, so a link swapped after the check
        cannot redirect the read.
        """
        real = path.resolve()
        if self.allow_outside_links:
            return real
        root = self.root.resolve()
        if not real.is_relative_to(root):
            raise ModelLoadError(
                f"{path} refused: a symbolic link leads it to {real}, outside the model root "
                f"{root}; the store reads only under its root (links that stay inside are fine; "
                "the server's MCDROPOUT_ALLOW_STORE_SYMLINKS=true follows links out of it)")
        return real


def _readable(folder: Path) -> None:
    """Folders 0755 and files 0644 under ``folder`` (``mkdtemp`` makes a 0700 folder)."""
    for path in (folder, *folder.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)


def as_array(values: tuple[float, ...] | None) -> np.ndarray | None:
    """A metadata tuple as a float64 array (None stays None)."""
    return None if values is None else np.asarray(values, dtype=np.float64)
