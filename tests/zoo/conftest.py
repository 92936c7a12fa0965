"""The zoo's fixtures: plain Keras models built here, imported with ``mcdropout import``, served by
ONE real ``mcdropout serve`` process (with ``--import-module zoo_layers``), and their references.

Everything is session-scoped and built once: the zoo's files, the store the import command fills,
the server over that store, and each model's reference (computed on first use).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

TESTS = Path(__file__).resolve().parent.parent
for kit in ("server", "oip"):  # server_testkit (the serve process) and oip_testkit
    sys.path.insert(0, str(TESTS / kit))

from mcdropout_client import Client  # noqa: E402
from mcdropout_client.proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc  # noqa: E402
from server_testkit import ServeProcess, serve_process  # noqa: E402
from zoo_models import ZooModel, build_zoo  # noqa: E402
from zoo_reference import References  # noqa: E402
from zoo_serving import (  # noqa: E402
    LAYERS_MODULE,
    Store,
    Zoo,
    import_in_process,
    import_subprocess,
    with_zoo_path,
)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ZooModel]:
    return build_zoo(tmp_path_factory.mktemp("zoo_files"))


@pytest.fixture(scope="session")
def references(zoo: dict[str, ZooModel]) -> References:
    return References(zoo)


@pytest.fixture(scope="session")
def store(zoo: dict[str, ZooModel], tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Every zoo model imported: the one with custom code by a ``mcdropout import`` process (as a
    user would, with ``--import-module``), meanwhile the others through the CLI's main here."""
    root = tmp_path_factory.mktemp("zoo_store")
    with ThreadPoolExecutor(1) as pool:
        outside = {name: pool.submit(import_subprocess, model, root)
                   for name, model in zoo.items() if model.custom}
        imported = {name: import_in_process(model, root)
                    for name, model in zoo.items() if not model.custom}
        imported.update({name: future.result() for name, future in outside.items()})
    return Store(root, imported)


@pytest.fixture(scope="session")
def server(store: Store) -> Iterator[ServeProcess]:
    """``mcdropout serve`` over the zoo's store, importing the custom layers' module first."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", with_zoo_path(dict(os.environ))["PYTHONPATH"])
        # No batching: the zoo sends one call at a time, so nothing would merge, and warming up
        # merged batches (every model, up to 64 rows) costs more CPU than the rest of the server.
        with serve_process(store.root, "--import-module", LAYERS_MODULE,
                           "--batching", "false") as process:
            yield process


@pytest.fixture(scope="session")
def channel(server: ServeProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        yield chan


@pytest.fixture(scope="session")
def client(server: ServeProcess) -> Iterator[Client]:
    with Client(f"127.0.0.1:{server.port}", timeout=120.0, retries=0) as c:
        yield c


@pytest.fixture(scope="session")
def oip_stub(channel: grpc.Channel) -> oip_grpc.GRPCInferenceServiceStub:
    return oip_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="session")
def served(zoo: dict[str, ZooModel], store: Store, client: Client,
           oip_stub: oip_grpc.GRPCInferenceServiceStub, references: References) -> Zoo:
    return Zoo(zoo, store, client, oip_stub, references)
