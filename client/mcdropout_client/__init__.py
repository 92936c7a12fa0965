"""Python client for the mcdropout gRPC service (grpcio, protobuf and numpy; no TensorFlow).

    from mcdropout_client import Client

    with Client("localhost:50051") as client:
        result = client.predict([[0.1, 0.2, 0.3]], model="boston", samples=200, seed=0)
        print(result.mean, result.std)

        # A model with several inputs and heads: a mapping of inputs, a result per head.
        result = client.predict({"features": f, "ids": ids}, model="shop", seed=0)
        print(result.heads["price"].mean, result.heads["kind"].predicted_class)
"""

from mcdropout_client.aio import AsyncClient
from mcdropout_client.client import Client
from mcdropout_client.errors import ClientError
from mcdropout_client.outputs import OUTPUT_NAMES
from mcdropout_client.ranking import ACQUISITION_NAMES, RankedPool
from mcdropout_client.results import (
    AbstentionPolicy,
    DropoutLayer,
    HeadCalibration,
    HeadResult,
    HeadSpec,
    ModelDescription,
    ModelSummary,
    PredictResult,
    Statistics,
    TensorSpec,
)

__all__ = [
    "ACQUISITION_NAMES",
    "OUTPUT_NAMES",
    "AbstentionPolicy",
    "AsyncClient",
    "Client",
    "ClientError",
    "DropoutLayer",
    "HeadCalibration",
    "HeadResult",
    "HeadSpec",
    "ModelDescription",
    "ModelSummary",
    "PredictResult",
    "RankedPool",
    "Statistics",
    "TensorSpec",
]
