"""Turning the store's versions into served models: one version at a time, under one policy.

Each version loads on its own (:func:`load_version`); one that fails does not stop the others.
What happens then is the start-up policy, ``on_load_error`` (Triton's ``--exit-on-error`` is the
model):

- ``"serve"`` (the default): every good version serves; each bad one is logged with its reason
  and kept in the registry as *not ready* (health of its name NOT_SERVING while no version of it
  serves, OIP ``ModelReady`` false, Predict and metadata NOT_FOUND saying it failed to load;
  ``ListModels`` lists only what serves). The reloader treats a bad version the same way.
- ``"exit"``: every version is tried, then start fails listing each bad one (for CI: the process
  exits 1).

Either way a store with nothing servable at all (empty, or every version bad) fails the start:
a server that can answer nothing is a misconfiguration, and failing loudly lets the orchestrator
show it, where a live server answering only NOT_FOUND would hide it. A store that cannot be read
fails the start too. A running server never gets there: reload never empties the registry.
"""

from __future__ import annotations

import logging
import time

from mcdropout import ModelLoadError, ModelStore
from mcdropout.engine import MCDropoutPredictor
from mcdropout_server.logs import fields
from mcdropout_server.registry import FailedVersions, LoadOptions, ServedModel

log = logging.getLogger(__name__)


def load_version(store: ModelStore, name: str, version: int, options: LoadOptions) -> ServedModel:
    """Load one stored version, build its predictor and (by default) warm it up.

    The version's calibration (``calibration.json``, when it has one) is read with it and
    handed to the predictor.

    Raises:
        ModelLoadError: the version cannot be loaded or served (the message names it), including
            a model file that needs arbitrary code while ``options.safe_mode`` is on, and a
            calibration file that is malformed or does not fit the model's heads.
    """
    started = time.monotonic()
    try:
        info = store.read_info(name, version)
        calibration = store.read_calibration(name, version)
        predictor = MCDropoutPredictor.from_info(
            store.load_model(name, version, safe_mode=options.safe_mode), info,
            calibration=calibration,
            memory_budget_bytes=options.memory_budget_bytes,
            max_samples=min(info.max_samples, options.max_samples),
            default_samples=min(info.default_samples, options.max_samples),
            max_raw_sample_values=options.max_raw_sample_values)
        if options.warmup:
            predictor.warmup(every_sample_class=options.warmup_sample_classes)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"model {name!r} version {version} cannot be served: "
                             f"{type(exc).__name__}: {exc}") from exc
    log.info("loaded model", extra=fields(
        model=name, version=version, task=info.task, calibrated=calibration is not None,
        seconds=round(time.monotonic() - started, 3)))
    return ServedModel(info, predictor)


def load_store(store: ModelStore, options: LoadOptions, on_load_error: str = "serve"
               ) -> tuple[list[ServedModel], FailedVersions]:
    """Load every version of every model in ``store`` under the start-up policy.

    Args:
        on_load_error: "serve" or "exit" (see the module docstring).

    Returns:
        The served versions, and each bad version's reason by (name, version).

    Raises:
        ModelLoadError: nothing servable (the message lists every failure), or a bad version
            while ``on_load_error`` is "exit" (the message lists every bad version).
        OSError: the store cannot be listed.
    """
    served: list[ServedModel] = []
    failed: FailedVersions = {}
    for name in store.names():
        for version in store.versions(name):
            try:
                served.append(load_version(store, name, version, options))
            except ModelLoadError as exc:
                failed[(name, version)] = f"{type(exc).__name__}: {exc}"
                log.error("model version not served: it failed to load", extra=fields(
                    model=name, version=version, error=failed[(name, version)]))
    listed = "; ".join(f"{name} v{version}: {reason}" for (name, version), reason in failed.items())
    if failed and on_load_error == "exit":
        raise ModelLoadError(f"{len(failed)} model version(s) failed to load and on_load_error "
                             f"is 'exit' (MCDROPOUT_ON_LOAD_ERROR=serve would serve the others): "
                             f"{listed}")
    if not served and failed:
        raise ModelLoadError(f"nothing to serve: every version in model store {store.root} "
                             f"failed to load: {listed}")
    if not served:
        raise ModelLoadError(f"no models found in model store {store.root}; expected "
                             "<root>/<name>/<version>/{model.keras,metadata.json}")
    return served, failed
