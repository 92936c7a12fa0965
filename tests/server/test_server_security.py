"""TLS, mutual TLS and bearer tokens on the gRPC port; Keras safe mode for model files.

Certificates are made here, at test time, with a throwaway CA (no key is committed): one CA signs
the server certificate (for 127.0.0.1 and localhost) and the accepted client certificate, a
second, untrusted CA signs a rogue client certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import keras
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from mcdropout_client import Client
from mcdropout_client.errors import PermissionDenied, Unauthenticated, Unavailable
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from mcdropout_client.proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from mcdropout_server.app import ServerApp, ServerThread, load_registry
from mcdropout_server.registry import ModelRegistry
from mcdropout_server.security import SecurityConfigError, TokenAuthInterceptor, refresh_tokens
from mcdropout_server.settings import ServerSettings
from server_testkit import REG_FEATURES, REG_INFO, cls_inputs, reg_inputs, settings

from mcdropout import ModelLoadError, ModelStore

TOKENS = ("s3cret-token-one", "another.Token_2")


# -- certificates ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    key_pem: bytes
    cert_pem: bytes
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _identity(common_name: str, issuer: Identity | None = None, *, ca: bool = False,
              server: bool = False) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer.cert.subject if issuer else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Identity(key_pem, cert.public_bytes(serialization.Encoding.PEM), key, cert)


@dataclass(frozen=True)
class Pki:
    ca: Identity
    server: Identity
    client: Identity
    rogue_ca: Identity
    rogue_client: Identity
    files: dict[str, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = _identity("mcdropout test CA", ca=True)
    rogue_ca = _identity("someone else's CA", ca=True)
    pki = Pki(ca, _identity("mcdropout server", ca, server=True), _identity("good client", ca),
              rogue_ca, _identity("rogue client", rogue_ca), {})
    folder = tmp_path_factory.mktemp("pki")
    for name, data in (("ca.pem", ca.cert_pem), ("server.pem", pki.server.cert_pem),
                       ("server.key", pki.server.key_pem)):
        (folder / name).write_bytes(data)
        pki.files[name] = folder / name
    return pki


def tls_settings(pki: Pki, *, mutual: bool = False, **changes: Any) -> ServerSettings:
    return settings(tls_cert_file=pki.files["server.pem"], tls_key_file=pki.files["server.key"],
                    tls_client_ca_file=pki.files["ca.pem"] if mutual else None, **changes)


@pytest.fixture(scope="module")
def tls_server(registry: ModelRegistry, pki: Pki) -> Iterator[ServerApp]:
    with ServerThread(tls_settings(pki), ModelRegistry(registry.models())) as app:
        yield app


@pytest.fixture(scope="module")
def mtls_server(registry: ModelRegistry, pki: Pki) -> Iterator[ServerApp]:
    with ServerThread(tls_settings(pki, mutual=True), ModelRegistry(registry.models())) as app:
        yield app


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(f"# rotated monthly\n{TOKENS[0]}\n\n  {TOKENS[1]}  \n")
    return path


@pytest.fixture(scope="module")
def token_server(registry: ModelRegistry, token_file: Path) -> Iterator[ServerApp]:
    with ServerThread(settings(auth_tokens_file=token_file),
                      ModelRegistry(registry.models())) as app:
        yield app


def address(app: ServerApp) -> str:
    return f"127.0.0.1:{app.port}"


# -- TLS --------------------------------------------------------------------------------------------
def test_tls_client_with_the_ca_is_served(tls_server: ServerApp, pki: Pki) -> None:
    with Client(address(tls_server), root_certificates=pki.ca.cert_pem, retries=0) as client:
        assert client.health() == "SERVING"
        assert client.predict(reg_inputs(2), model="reg", samples=5).samples_used == 5


@pytest.mark.parametrize("how", ["plaintext", "untrusted server certificate"])
def test_tls_port_refuses_plaintext_and_untrusting_clients(tls_server: ServerApp, pki: Pki,
                                                           how: str) -> None:
    options: dict[str, Any] = ({} if how == "plaintext"
                               else {"root_certificates": pki.rogue_ca.cert_pem})
    with Client(address(tls_server), retries=0, timeout=5, **options) as client, \
            pytest.raises(Unavailable):
        client.health()


def test_mutual_tls_needs_a_client_certificate_from_the_trusted_ca(mtls_server: ServerApp,
                                                                   pki: Pki) -> None:
    good = {"private_key": pki.client.key_pem, "certificate_chain": pki.client.cert_pem}
    rogue = {"private_key": pki.rogue_client.key_pem,
             "certificate_chain": pki.rogue_client.cert_pem}
    with Client(address(mtls_server), root_certificates=pki.ca.cert_pem, retries=0,
                **good) as client:
        assert client.predict(cls_inputs(1), model="cls", samples=3).samples_used == 3
    for refused in ({}, rogue):
        with Client(address(mtls_server), root_certificates=pki.ca.cert_pem, retries=0,
                    timeout=5, **refused) as client, pytest.raises(Unavailable):
            client.health()


# -- bearer tokens ---------------------------------------------------------------------------------
def test_listed_tokens_are_accepted_for_every_method(token_server: ServerApp) -> None:
    for token in TOKENS:
        with Client(address(token_server), token=token, retries=0) as client:
            assert client.predict(reg_inputs(1), model="reg", samples=4).samples_used == 4
            assert [m.name for m in client.models()] == ["cls", "reg"]
            assert client.metadata("cls").name == "cls"


def test_missing_token_is_unauthenticated_and_wrong_token_permission_denied(
        token_server: ServerApp, caplog: pytest.LogCaptureFixture) -> None:
    with Client(address(token_server), retries=0) as client, \
            pytest.raises(Unauthenticated, match="needs a bearer token"):
        client.predict(reg_inputs(1), model="reg")
    with caplog.at_level(logging.WARNING, logger="mcdropout_server"), \
            Client(address(token_server), token="not-" + TOKENS[0], retries=0) as client, \
            pytest.raises(PermissionDenied, match="not accepted"):
        client.models()
    refusals = [r for r in caplog.records if r.getMessage() == "rpc refused"]
    assert refusals[-1].fields["code"] == "PERMISSION_DENIED"  # type: ignore[attr-defined]
    assert refusals[-1].fields["method"] == "/mcdropout.v1.PredictionService/ListModels"  # type: ignore[attr-defined]
    assert all(TOKENS[0] not in str(r.__dict__) for r in refusals)  # no secret in the log


@pytest.mark.parametrize("value", [TOKENS[0], f"Basic {TOKENS[0]}", "Bearer", "Bearer   "])
def test_malformed_authorization_is_unauthenticated(token_server: ServerApp, value: str) -> None:
    with Client(address(token_server), metadata=[("authorization", value)], retries=0) as client, \
            pytest.raises(Unauthenticated, match="must be one 'Bearer <token>' value"):
        client.models()


def test_health_stays_open_and_everything_else_is_closed(token_server: ServerApp) -> None:
    with grpc.insecure_channel(address(token_server)) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        live = oip_grpc.GRPCInferenceServiceStub(channel)
        assert live.ServerLive(oip.ServerLiveRequest(), timeout=5).live
        refused = [
            lambda: live.ModelMetadata(oip.ModelMetadataRequest(name="reg"), timeout=5),
            lambda: list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)),
            lambda: channel.unary_unary("/no.Such/Method")(b"", timeout=5),
        ]
        for call in refused:
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value.details()


def test_tokens_from_the_environment_and_rotation_on_reload(
        registry: ModelRegistry, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("old-file-token\n")
    from_env = ServerSettings.from_env({"MCDROPOUT_AUTH_TOKENS": "env-a, env-b",
                                        "MCDROPOUT_AUTH_TOKENS_FILE": str(path)})
    assert (from_env.auth_tokens, from_env.auth_tokens_file) == ("env-a, env-b", path)
    assert "env-a" not in from_env.describe() and "auth_tokens=***" in from_env.describe()
    config = settings(auth_tokens=from_env.auth_tokens, auth_tokens_file=path)
    with ServerThread(config, ModelRegistry(registry.models())) as app:
        assert app.auth is not None
        for token in ("env-a", "env-b", "old-file-token"):
            with Client(address(app), token=token, retries=0) as client:
                assert client.models()
        path.write_text("new-file-token\n")
        refresh_tokens(app.auth, config)  # what SIGHUP does
        with Client(address(app), token="new-file-token", retries=0) as client:
            assert client.models()
        with Client(address(app), token="old-file-token", retries=0) as client, \
                pytest.raises(PermissionDenied):
            client.models()
        path.write_text("# emptied by mistake\n")
        refresh_tokens(app.auth, config)  # refused: the current tokens stay
        with Client(address(app), token="new-file-token", retries=0) as client:
            assert client.models()


def test_tls_mutual_tls_and_token_together(registry: ModelRegistry, pki: Pki,
                                           token_file: Path) -> None:
    config = tls_settings(pki, mutual=True, auth_tokens_file=token_file)
    with ServerThread(config, ModelRegistry(registry.models())) as app:
        identity = {"root_certificates": pki.ca.cert_pem, "private_key": pki.client.key_pem,
                    "certificate_chain": pki.client.cert_pem}
        with Client(address(app), token=TOKENS[1], retries=0, **identity) as client:
            assert client.predict(reg_inputs(3), model="reg", samples=7).samples_used == 7
        with Client(address(app), retries=0, **identity) as client, \
                pytest.raises(Unauthenticated):
            client.predict(reg_inputs(3), model="reg", samples=7)


def test_interceptor_check_without_a_server() -> None:
    auth = TokenAuthInterceptor(["tok"])
    assert auth.check([("authorization", "Bearer tok")]) is None
    assert auth.check([("authorization", "bearer  tok ")]) is None  # scheme is case-insensitive
    code, _ = auth.check([("authorization", "Bearer tok"), ("authorization", "Bearer tok")]) \
        or (None, "")
    assert code == grpc.StatusCode.UNAUTHENTICATED  # two headers: ambiguous, refused
    with pytest.raises(ValueError, match="at least one token"):
        TokenAuthInterceptor([])


# -- bad security settings -----------------------------------------------------------------------
def test_bad_security_settings_name_what_is_wrong(tmp_path: Path, pki: Pki,
                                                  registry: ModelRegistry) -> None:
    with pytest.raises(ValueError, match="MCDROPOUT_TLS_CERT_FILE and MCDROPOUT_TLS_KEY_FILE go"):
        ServerSettings.from_env({"MCDROPOUT_TLS_CERT_FILE": "/x/cert.pem"})
    with pytest.raises(ValueError, match=r"MCDROPOUT_TLS_CLIENT_CA_FILE .* needs"):
        ServerSettings.from_env({"MCDROPOUT_TLS_CLIENT_CA_FILE": "/x/ca.pem"})
    with pytest.raises(ValueError, match="MCDROPOUT_ALLOW_UNSAFE_MODELS must be true or false"):
        ServerSettings.from_env({"MCDROPOUT_ALLOW_UNSAFE_MODELS": "maybe"})
    assert ServerSettings.from_env({"MCDROPOUT_ALLOW_UNSAFE_MODELS": "True"}).allow_unsafe_models

    empty, spaced = tmp_path / "empty", tmp_path / "spaced"
    empty.write_text("# nothing yet\n")
    spaced.write_text("fine\nhas space\n")
    cases = [
        (settings(tls_cert_file=tmp_path / "missing.pem", tls_key_file=pki.files["server.key"]),
         r"MCDROPOUT_TLS_CERT_FILE .*missing.pem cannot be read"),
        (settings(tls_cert_file=pki.files["server.key"], tls_key_file=pki.files["server.key"]),
         "is not a PEM file holding a CERTIFICATE"),
        (settings(auth_tokens_file=empty), "holds no token"),
        (settings(auth_tokens_file=spaced), r"line 2 of .*spaced contains whitespace"),
        (settings(auth_tokens=" , "), "lists no token"),
    ]
    for config, message in cases:
        with pytest.raises(SecurityConfigError, match=message):
            ServerApp(config, registry)
    with pytest.raises(SecurityConfigError) as info:
        ServerApp(settings(auth_tokens_file=spaced), registry)
    assert "has space" not in str(info.value)  # messages never quote a token


# -- model files that would run code -------------------------------------------------------------
def lambda_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((REG_FEATURES,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Lambda(lambda t: t * 2.0),  # serialised as Python bytecode
        keras.layers.Dense(1),
    ], name="unsafe")


def test_model_needing_arbitrary_code_is_refused_unless_explicitly_allowed(
        tmp_path: Path) -> None:
    ModelStore(tmp_path).save(lambda_model(), replace(REG_INFO, name="unsafe"))
    with pytest.raises(ModelLoadError, match="needs arbitrary code to load"):
        load_registry(settings(model_root=tmp_path))
    allowed = load_registry(settings(model_root=tmp_path, allow_unsafe_models=True))
    assert allowed.names() == ["unsafe"]
    with ServerThread(settings(), allowed) as app, \
            Client(address(app), retries=0) as client:
        assert client.predict(reg_inputs(2), model="unsafe", samples=6).samples_used == 6
