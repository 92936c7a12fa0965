"""Importing zoo models with the CLI and reading served answers as the reference's estimates."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mcdropout_client import Client, PredictResult
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from oip_testkit import DATATYPE_OF, outputs_of
from server_testkit import MCDROPOUT
from zoo_models import ZooModel
from zoo_reference import Estimate, References

import mcdropout.cli

ZOO_DIR = Path(__file__).resolve().parent
LAYERS_MODULE = "zoo_layers"
DEFAULT_SAMPLES = 50  # what a server's warm-up runs per model: small keeps the start short
MAX_SAMPLES = 5000


@dataclass(frozen=True)
class Imported:
    """The outcome of ``mcdropout import`` for one model: exit status and what it printed."""

    status: int
    output: str
    subprocess: bool


@dataclass(frozen=True)
class Store:
    """The model store ``mcdropout import`` filled, and how each import went."""

    root: Path
    imported: dict[str, Imported]


@dataclass(frozen=True)
class Zoo:
    """The zoo as served: its models, their store, the server's two APIs, the references."""

    models: dict[str, ZooModel]
    store: Store
    client: Client
    oip: Any  # GRPCInferenceServiceStub
    references: References

    def imported(self, name: str) -> ZooModel:
        """The model called ``name``, once its ``mcdropout import`` is known to have worked."""
        outcome = self.store.imported[name]
        how = "a subprocess" if outcome.subprocess else "mcdropout.cli.main"
        assert outcome.status == 0, (f"mcdropout import {name} ({how}) exited {outcome.status}:"
                                     f"\n{outcome.output}")
        return self.models[name]


def with_zoo_path(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` with this folder on PYTHONPATH, where ``--import-module zoo_layers`` finds it."""
    path = [str(ZOO_DIR), *filter(None, environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**environ, "PYTHONPATH": os.pathsep.join(path)}


def import_args(model: ZooModel, root: Path) -> list[str]:
    flags = ["--import-module", LAYERS_MODULE] if model.custom else []
    return ["import", str(model.path), "--model-root", str(root), "--name", model.name,
            "--default-samples", str(DEFAULT_SAMPLES), "--max-samples", str(MAX_SAMPLES),
            *flags, *model.import_flags]


def import_in_process(model: ZooModel, root: Path) -> Imported:
    """``mcdropout import`` through :func:`mcdropout.cli.main`, its output captured."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            status = mcdropout.cli.main(import_args(model, root))
        except SystemExit as exc:  # argparse refuses a flag it does not know
            status = int(exc.code or 0)
    return Imported(status, out.getvalue(), subprocess=False)


def import_subprocess(model: ZooModel, root: Path) -> Imported:
    """``mcdropout import`` run as a user runs it: a fresh process that knows nothing of the zoo."""
    done = subprocess.run([MCDROPOUT, *import_args(model, root)], capture_output=True, text=True,
                          env=with_zoo_path(dict(os.environ)), timeout=300, check=False)
    return Imported(done.returncode, done.stdout + done.stderr, subprocess=True)


def client_estimates(result: PredictResult, model: ZooModel) -> dict[str, Estimate]:
    """Each head's served mean and std from a native answer (one-head answers are top-level)."""
    if len(model.heads) == 1:
        assert not result.heads, f"a one-head model answers top-level, got heads {list(result.heads)}"
        [head] = model.heads
        assert result.mean is not None and result.std is not None
        return {head: Estimate(result.mean, result.std, result.samples_used)}
    assert set(result.heads) == set(model.heads), f"heads {list(result.heads)}"
    estimates = {}
    for name, head in result.heads.items():
        assert head.task == model.heads[name], f"head {name}: task {head.task}"
        assert head.mean is not None and head.std is not None
        estimates[name] = Estimate(head.mean, head.std, result.samples_used)
    return estimates


def oip_output_names(model: ZooModel) -> dict[str, tuple[str, str]]:
    """Head name -> (OIP name of its mean, of its std), as docs/oip.md names them."""
    names = {}
    for head, task in model.heads.items():
        prefix = "" if len(model.heads) == 1 else f"{head}/"
        mean = "probabilities" if task == "classification" else "mean"
        names[head] = (prefix + mean, prefix + "std")
    return names


def infer_request(model: ZooModel, inputs: dict[str, np.ndarray], **params: int
                  ) -> oip.ModelInferRequest:
    """A ModelInferRequest with every input under its name (raw contents), asking for means and
    stds of every head; ``params`` are int64 request parameters."""
    outputs = [name for pair in oip_output_names(model).values() for name in pair]
    request = oip.ModelInferRequest(model_name=model.name, id=f"zoo-{model.name}",
                                    outputs=[{"name": name} for name in outputs])
    for name, x in inputs.items():
        request.inputs.add(name=name, datatype=DATATYPE_OF[x.dtype], shape=x.shape)
        request.raw_input_contents.append(x.astype(x.dtype.newbyteorder("<")).tobytes())
    for key, value in params.items():
        request.parameters[key].int64_param = value
    return request


def oip_estimates(response: Any, model: ZooModel) -> dict[str, Estimate]:
    """Each head's served mean and std from a ModelInferResponse."""
    got = outputs_of(response)
    samples = int(response.parameters["samples"].int64_param)
    return {head: Estimate(got[mean], got[std], samples)
            for head, (mean, std) in oip_output_names(model).items()}
