"""Building Open Inference Protocol requests and reading responses, as a v2 client would."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mcdropout_client import tensors
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from mcdropout_server.oip_codec import DATATYPES

DATATYPE_OF = {tensors.enum_to_dtype(enum): name for name, (enum, _) in DATATYPES.items()}
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def client_python(script: str, what: str) -> str:
    """The python of a third-party client's own environment, made by ``scripts/<script>`` on
    first use from PyPI; skips the calling test, with the reason, when it cannot be made."""
    venv = script.removesuffix(".sh").removesuffix("-venv")
    try:
        made = subprocess.run(["bash", str(SCRIPTS / script)], capture_output=True, text=True,
                              timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip(f"creating .venv-{venv} took over 15 minutes")
    if made.returncode != 0:
        pytest.skip(f"cannot create .venv-{venv} with {what} from PyPI: "
                    + made.stderr.strip()[-500:])
    return made.stdout.strip().splitlines()[-1]


def infer_request(model: str, x: np.ndarray | dict[str, np.ndarray], outputs: tuple[str, ...] = (),
                  *, raw: bool = True, version: str = "", **params: Any) -> oip.ModelInferRequest:
    """A ModelInferRequest: one input named "inputs", or an input per name of a mapping;
    ``params`` become request parameters by Python type."""
    request = oip.ModelInferRequest(model_name=model, model_version=version, id="req-1",
                                    outputs=[{"name": name} for name in outputs])
    for name, value in (x if isinstance(x, dict) else {"inputs": x}).items():
        value = np.asarray(value)
        datatype = DATATYPE_OF[value.dtype]
        tensor = request.inputs.add(name=name, datatype=datatype, shape=value.shape)
        if raw:
            request.raw_input_contents.append(
                value.astype(value.dtype.newbyteorder("<")).tobytes())
        else:
            getattr(tensor.contents, DATATYPES[datatype][1]).extend(value.ravel().tolist())
    for key, value in params.items():
        kind = {bool: "bool_param", int: "int64_param", float: "double_param",
                str: "string_param"}[type(value)]
        setattr(request.parameters[key], kind, value)
    return request


def outputs_of(response: oip.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of a response as a numpy array, from raw or typed contents."""
    arrays = {}
    for index, tensor in enumerate(response.outputs):
        dtype = tensors.enum_to_dtype(DATATYPES[tensor.datatype][0])
        if response.raw_output_contents:
            flat = np.frombuffer(response.raw_output_contents[index], dtype.newbyteorder("<"))
        else:
            flat = np.asarray(getattr(tensor.contents, DATATYPES[tensor.datatype][1]), dtype)
        arrays[tensor.name] = flat.reshape(tuple(tensor.shape))
    return arrays


def parameters_of(message: Any) -> dict[str, Any]:
    """A message's ``parameters`` map as plain Python values."""
    return {key: getattr(value, value.WhichOneof("parameter_choice"))
            for key, value in message.parameters.items()}
