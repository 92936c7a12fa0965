"""Calls a running mcdropout server with NVIDIA's tritonclient[grpc], unmodified; prints JSON.

Runs inside .venv-tritonclient (scripts/tritonclient-venv.sh), not the project's environment:
tritonclient pins protobuf < 7. Usage: python tritonclient_probe.py '<json spec>', where the spec
holds "target" (host:port), "reg_x" and "cls_x" (input rows), "too_many_samples", and "shop":
the target, "features" and "ids" of a server of the two-input, two-head model (multi_testkit.py).
test_oip_tritonclient.py compares what this prints with the native API's answers.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

REG_OUTPUTS = ("mean", "std", "predictive_std", "lower", "upper")
CLS_OUTPUTS = ("probabilities", "predicted_class", "entropy", "mutual_information")
SHOP_OUTPUTS = ("price/mean", "price/predictive_std", "kind/probabilities", "kind/predicted_class")
DATATYPES = {"float32": "FP32", "int32": "INT32"}


def infer(client: Any, model: str, x: np.ndarray | dict[str, np.ndarray],
          outputs: tuple[str, ...], **parameters: Any) -> dict[str, Any]:
    named = x if isinstance(x, dict) else {"inputs": x}
    inputs = [triton.InferInput(name, list(value.shape), DATATYPES[str(value.dtype)])
              for name, value in named.items()]
    for tensor, value in zip(inputs, named.values(), strict=True):
        tensor.set_data_from_numpy(value)  # sent in raw_input_contents
    result = client.infer(model, inputs, outputs=[triton.InferRequestedOutput(n) for n in outputs],
                          parameters=parameters, request_id="probe")
    response = result.get_response()
    return {
        "model_version": response.model_version,
        "id": response.id,
        "raw": len(response.raw_output_contents),
        "parameters": {k: getattr(v, v.WhichOneof("parameter_choice"))
                       for k, v in response.parameters.items()},
        "outputs": {n: {"dtype": str(result.as_numpy(n).dtype),
                        "values": result.as_numpy(n).tolist()} for n in outputs},
    }


def failure(call: Any, *args: Any, **kwargs: Any) -> dict[str, str]:
    try:
        call(*args, **kwargs)
    except InferenceServerException as exc:
        return {"status": str(exc.status()), "message": str(exc.message())}
    return {"status": "no error"}


def main() -> None:
    spec = json.loads(sys.argv[1])
    client = triton.InferenceServerClient(url=spec["target"])
    metadata = client.get_model_metadata("reg")
    reg_x = np.asarray(spec["reg_x"], dtype=np.float32)
    cls_x = np.asarray(spec["cls_x"], dtype=np.float32)
    report = {
        "server_live": client.is_server_live(),
        "server_ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("reg"),
        "unknown_model_ready": client.is_model_ready("nope"),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": {
            "name": metadata.name, "versions": list(metadata.versions),
            "platform": metadata.platform,
            "inputs": [[t.name, t.datatype, list(t.shape)] for t in metadata.inputs],
            "outputs": [[t.name, t.datatype, list(t.shape)] for t in metadata.outputs]},
        "reg": infer(client, "reg", reg_x, REG_OUTPUTS, samples=300, seed=42,
                     interval_level=0.9),
        "cls": infer(client, "cls", cls_x, CLS_OUTPUTS, samples=200, seed=7),
        "too_many_samples": failure(infer, client, "reg", reg_x, ("mean",),
                                    samples=spec["too_many_samples"]),
        "unknown_model": failure(infer, client, "nope", reg_x, ("mean",)),
        "model_config": failure(client.get_model_config, "reg"),
        "repository_index": failure(client.get_model_repository_index),
        "descriptor": base64.b64encode(service_pb2.DESCRIPTOR.serialized_pb).decode(),
    }
    client.close()
    shop = spec["shop"]
    with triton.InferenceServerClient(url=shop["target"]) as client:
        metadata = client.get_model_metadata("shop")
        report["shop_metadata"] = {
            "inputs": [[t.name, t.datatype, list(t.shape)] for t in metadata.inputs],
            "outputs": [[t.name, t.datatype, list(t.shape)] for t in metadata.outputs]}
        x = {"features": np.asarray(shop["features"], dtype=np.float32),
             "ids": np.asarray(shop["ids"], dtype=np.int32)}
        report["shop"] = infer(client, "shop", x, SHOP_OUTPUTS, samples=100, seed=5)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
