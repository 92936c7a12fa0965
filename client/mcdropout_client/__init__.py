"""Python client for the mcdropout gRPC service (grpcio, protobuf and numpy; no TensorFlow).

    from mcdropout_client import Client

    with Client("localhost:50051") as client:
        result = client.predict([[0.1, 0.2, 0.3]], model="boston", samples=200, seed=0)
        print(result.mean, result.std)
"""

from mcdropout_client.aio import AsyncClient
from mcdropout_client.client import Client
from mcdropout_client.errors import ClientError
from mcdropout_client.outputs import OUTPUT_NAMES
from mcdropout_client.results import (
    DropoutLayer,
    ModelDescription,
    ModelSummary,
    PredictResult,
    TensorSpec,
)

__all__ = [
    "OUTPUT_NAMES",
    "AsyncClient",
    "Client",
    "ClientError",
    "DropoutLayer",
    "ModelDescription",
    "ModelSummary",
    "PredictResult",
    "TensorSpec",
]
