"""Calls a running mcdropout server with NVIDIA's tritonclient[grpc], unmodified; prints JSON.

Runs inside .venv-tritonclient (scripts/tritonclient-venv.sh), not the project's environment:
tritonclient pins protobuf < 7. Usage: python tritonclient_probe.py '<json spec>', where the spec
holds "target" (host:port), "reg_x" and "cls_x" (input rows) and "too_many_samples".
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


def infer(client: Any, model: str, x: np.ndarray, outputs: tuple[str, ...],
          **parameters: Any) -> dict[str, Any]:
    inputs = [triton.InferInput("inputs", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)  # sent in raw_input_contents
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
    print(json.dumps(report))


if __name__ == "__main__":
    main()
