"""TLS and mutual TLS: certificates made with the openssl command line for each run."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from client_fakes import FakePredictionService
from mcdropout_client import Client, errors
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2_grpc

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(name: str, cwd: Path, extensions: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", f"/CN={name}", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "1", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
             cwd=cwd)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A throwaway CA, a server certificate for localhost, and a client certificate."""
    cwd = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "1", "-subj", "/CN=test-ca", cwd=cwd)
    _issue("server", cwd, "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _issue("client", cwd, "extendedKeyUsage=clientAuth\n")
    return {p.stem + p.suffix.replace(".", "_"): p.read_bytes() for p in cwd.iterdir()}


@pytest.fixture
def mtls_server(pki: dict[str, bytes]) -> Iterator[tuple[str, FakePredictionService]]:
    """A fake server that requires a client certificate signed by the test CA."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service = FakePredictionService()
    mcdropout_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    credentials = grpc.ssl_server_credentials(
        [(pki["server_key"], pki["server_pem"])], root_certificates=pki["ca_pem"],
        require_client_auth=True)
    port = server.add_secure_port("localhost:0", credentials)
    server.start()
    yield f"localhost:{port}", service
    server.stop(grace=None)


def test_mutual_tls_call_succeeds(mtls_server, pki) -> None:
    address, service = mtls_server
    with Client(address, root_certificates=pki["ca_pem"], private_key=pki["client_key"],
                certificate_chain=pki["client_pem"], token="over-tls") as client:
        assert [m.name for m in client.models()] == ["clf", "reg", "shop"]
    assert service.seen_metadata[0]["authorization"] == "Bearer over-tls"


def test_without_client_certificate_the_handshake_fails(mtls_server, pki) -> None:
    address, service = mtls_server
    with Client(address, root_certificates=pki["ca_pem"], retries=0, timeout=5) as client, \
            pytest.raises(errors.Unavailable):
        client.models()
    assert service.calls == 0


def test_untrusted_server_is_refused(mtls_server, pki) -> None:
    address, service = mtls_server
    # The client's own certificate is not a CA for the server's: verification must fail.
    with Client(address, root_certificates=pki["client_pem"], private_key=pki["client_key"],
                certificate_chain=pki["client_pem"], retries=0, timeout=5) as client, \
            pytest.raises(errors.Unavailable):
        client.models()
    assert service.calls == 0
