"""Calls a running mcdropout server with the KServe SDK's gRPC client, unmodified; prints JSON.

Runs inside .venv-kserve (scripts/kserve-venv.sh), not the project's environment: kserve pins
protobuf < 7. Usage: python kserve_probe.py '<json spec>', where the spec holds "target"
(host:port), "reg_x" and "cls_x" (input rows) and "too_many_samples". test_oip_kserve.py compares
what this prints with the native API's answers.

kserve's InferParameter has only bool, int64 and string values: its client refuses a Python
float, so every number that is not an integer goes as a string, and the response parameters it
can read are those of these three types (``to_http_parameters`` is the SDK's own reading).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import RequestedOutput, to_http_parameters

REG_OUTPUTS = ("mean", "std", "predictive_std", "lower", "upper")
CLS_OUTPUTS = ("probabilities", "predicted_class", "entropy", "mutual_information")


async def infer(client: InferenceGRPCClient, model: str, x: np.ndarray,
                outputs: tuple[str, ...], *, raw: bool = True,
                **parameters: Any) -> dict[str, Any]:
    """One ModelInfer: raw inputs (numpy bytes) or typed contents (a flat list)."""
    if raw:
        tensor = InferInput("inputs", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
    else:
        tensor = InferInput("inputs", list(x.shape), "FP32", data=x.ravel().tolist())
    request = InferRequest(model, [tensor], request_id="probe", parameters=parameters,
                           request_outputs=[RequestedOutput(name) for name in outputs])
    response = await client.infer(request)
    return {
        "model_version": response.model_version,
        "id": response.id,
        "parameters": to_http_parameters(response.parameters),
        "outputs": {o.name: {"dtype": str(o.as_numpy().dtype), "values": o.as_numpy().tolist()}
                    for o in response.outputs},
    }


async def failure(call: Any, *args: Any, **kwargs: Any) -> dict[str, str]:
    """The status code and message of a call that fails, or of a request the SDK refuses."""
    try:
        await call(*args, **kwargs)
    except grpc.aio.AioRpcError as exc:
        return {"status": str(exc.code()), "message": str(exc.details())}
    except InvalidInput as exc:
        return {"status": "refused by the client", "message": str(exc)}
    return {"status": "no error"}


async def probe(spec: dict[str, Any]) -> dict[str, Any]:
    reg_x = np.asarray(spec["reg_x"], dtype=np.float32)
    cls_x = np.asarray(spec["cls_x"], dtype=np.float32)
    async with InferenceGRPCClient(spec["target"], retries=0) as client:
        report: dict[str, Any] = {
            "server_live": await client.is_server_live(),
            "server_ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready("reg"),
            "unknown_model_ready": await client.is_model_ready("nope"),
            "reg": await infer(client, "reg", reg_x, REG_OUTPUTS, samples=300, seed=42,
                               interval_level="0.9"),
            "cls": await infer(client, "cls", cls_x, CLS_OUTPUTS, raw=False, samples="200",
                               seed="7"),
            "adaptive": await infer(client, "reg", reg_x, ("mean", "standard_error"),
                                    samples=4000, seed=11, tolerance="0.05"),
            "fresh": await infer(client, "reg", reg_x, ("mean", "lower"), samples=30),
            "large_seed": await infer(client, "reg", reg_x, ("mean",), samples=30,
                                      seed=str(2**64 - 1)),
            "float_parameter": await failure(infer, client, "reg", reg_x, ("lower",),
                                             interval_level=0.9),
            "not_a_number": await failure(infer, client, "reg", reg_x, ("lower",),
                                          interval_level="ninety"),
            "too_many_samples": await failure(infer, client, "reg", reg_x, ("mean",),
                                              samples=spec["too_many_samples"]),
        }
        # The seed read back as kserve reads it, sent again: the same passes, the same answer.
        seed = report["fresh"]["parameters"]["seed_string"]
        report["repeat"] = await infer(client, "reg", reg_x, ("mean", "lower"), samples=30,
                                       seed=seed)
    return report


def main() -> None:
    print(json.dumps(asyncio.run(probe(json.loads(sys.argv[1])))))


if __name__ == "__main__":
    main()
