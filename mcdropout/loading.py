"""Loading ``.keras`` files: the user's modules imported first, safe mode on, a failure explained.

Custom layers and subclassed models (``keras.saving.register_keras_serializable``) resolve only
once the module defining them has run. Keras never imports such a module by itself; the user
names it (``--import-module``, ``MCDROPOUT_IMPORT_MODULES``) and :func:`import_modules` imports it
before any model loads. Importing a module runs its code with the process's rights, so a module
is trusted like the program itself. Safe mode stays on either way: a file that would carry its
own code (a ``Lambda`` layer's bytecode) is still refused.

When a file does not load, :func:`load_keras_file` tells apart the three causes a user can act
on: a class the process does not know (which module to import), code that safe mode refuses, and
a file that is not a readable Keras archive.
"""

from __future__ import annotations

import importlib
import json
import sys
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcdropout.errors import InvalidArgumentError, ModelLoadError

IMPORT_MODULES_ENV = "MCDROPOUT_IMPORT_MODULES"
IMPORT_MODULE_HELP = (
    "Python module to import before any model loads, so that the custom layers and models it "
    "registers with keras.saving.register_keras_serializable resolve (repeat the flag, or give "
    "several separated by commas). The module must be importable (installed, or on "
    "PYTHONPATH). Importing runs its code with this process's rights: name only modules you "
    "trust as you trust this program. Keras safe mode stays on.")


def parse_modules(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Module names from a comma-separated text or a list of such texts, blanks dropped."""
    if text is None:
        return ()
    parts = [text] if isinstance(text, str) else list(text)
    return tuple(name.strip() for part in parts for name in part.split(",") if name.strip())


def modules_setting(flags: Sequence[str] | None, environ: Mapping[str, str]) -> tuple[str, ...]:
    """The modules to import: the ``--import-module`` flags when given, else the variable."""
    if flags:
        return parse_modules(flags)
    return parse_modules(environ.get(IMPORT_MODULES_ENV))


def import_modules(names: Sequence[str]) -> None:
    """Import each module, in order (again importing one already imported does nothing).

    Raises:
        InvalidArgumentError: a name that is not a dotted Python name, a module that cannot be
            found, or one whose import fails (the message says which and why).
    """
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise InvalidArgumentError(
                f"--import-module takes a Python module name such as 'mypackage.layers', got "
                f"{name!r} (a file path does not work: put its folder on PYTHONPATH)")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise InvalidArgumentError(
                f"cannot import module {name!r} (--import-module): {exc}; it must be installed "
                "or lie in a folder on PYTHONPATH (the current folder is not searched unless "
                "PYTHONPATH names it)") from exc
        except Exception as exc:  # the module's own code failed: say so, with its error
            raise InvalidArgumentError(
                f"importing module {name!r} (--import-module) failed: "
                f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class UnknownClass:
    """A class a model file names that this process has not registered.

    Attributes:
        class_name: The class as the file names it, e.g. "Scale".
        registered_name: Its registration key, e.g. "zoo>Scale".
        module: The module that defined it when the model was saved; None when that was a
            script (``__main__``), which no process can import.
    """

    class_name: str
    registered_name: str
    module: str | None


def load_keras_file(path: Path, *, safe_mode: bool = True, shown: Path | None = None) -> Any:
    """Load a ``.keras`` file without compiling it.

    Args:
        path: The file to read.
        safe_mode: Keras safe mode: refuse a file that would run code of its own when loaded.
        shown: The path messages name (the store names the path in the store, not the file a
            link resolved to); default ``path``.

    Raises:
        ModelLoadError: one of three messages: the classes the file needs that are not known
            here and the module to import for each; the file needs arbitrary code while safe
            mode is on; or the file is corrupt or not a Keras model.
    """
    import keras  # deferred: listing a store or building the CLI must not pay for TensorFlow

    from mcdropout.modeling import concrete  # noqa: F401  (registers the project's own layers)

    shown = shown or path
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=safe_mode)
    except Exception as exc:
        text = str(exc)
        unknown = unknown_classes(path)
        if unknown:
            raise ModelLoadError(_unknown_message(shown, unknown)) from exc
        if "safe_mode" in text or "unsafe" in text.lower():
            raise ModelLoadError(
                f"{shown} needs arbitrary code to load (e.g. a Lambda layer) and safe mode is "
                "on; re-save the model without it, or allow unsafe models only for a trusted "
                f"source. Keras said: {text.splitlines()[0]}") from exc
        raise ModelLoadError(f"{shown} could not be loaded (corrupt or incompatible): "
                             f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
                             ) from exc


def unknown_classes(path: Path) -> tuple[UnknownClass, ...]:
    """The registered custom classes the file's model config names and this process lacks.

    Reads ``config.json`` from the archive; an unreadable archive gives ``()`` (the file is then
    corrupt, which the caller reports as such).
    """
    import keras

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return ()
    found: dict[str, UnknownClass] = {}
    for node in _objects(config):
        registered, module = node.get("registered_name"), node.get("module")
        if not isinstance(registered, str) or not registered or _is_builtin(module):
            continue
        if keras.saving.get_registered_object(registered) is None and registered not in found:
            found[registered] = UnknownClass(str(node.get("class_name")), registered,
                                             module if isinstance(module, str) else None)
    return tuple(found.values())


def _objects(config: Any) -> Iterator[dict[str, Any]]:
    """Every serialised Keras object (a dict with "class_name" and "module") in a config tree."""
    if isinstance(config, dict):
        if "class_name" in config and "module" in config:
            yield config
        for value in config.values():
            yield from _objects(value)
    elif isinstance(config, list):
        for value in config:
            yield from _objects(value)


def _remedy(unknown: UnknownClass) -> str:
    if unknown.module is None:
        return ("it was defined in a script's __main__, which cannot be imported: move it into a "
                "module, re-save the model and import that module with --import-module MODULE")
    if unknown.module in sys.modules:  # imported, yet the class is not registered
        return (f"its module {unknown.module!r} is imported but registers no such class: "
                "decorate the class with @keras.saving.register_keras_serializable")
    return f"import its module with --import-module {unknown.module}"


def _is_builtin(module: object) -> bool:
    return isinstance(module, str) and (module.split(".")[0] in ("keras", "builtins"))


def _unknown_message(path: Path, unknown: Sequence[UnknownClass]) -> str:
    described = "; ".join(f"unknown class {u.class_name!r} (registered as {u.registered_name!r}; "
                          f"{_remedy(u)})" for u in unknown)
    return (f"{path} names classes this process does not know: {described}. Modules named with "
            f"--import-module or {IMPORT_MODULES_ENV} are imported before models load; importing "
            "runs their code, so name only modules you trust. The archive itself is readable")
