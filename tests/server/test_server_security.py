"""TLS, mutual TLS and bearer tokens on the gRPC port; Keras safe mode for model files.

Certificates are made here, at test time, with a throwaway CA (no key is committed): one CA signs
the server certificate (for 127.0.0.1 and localhost) and the accepted client certificate, a
second, untrusted CA signs a rogue client certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from collections.abc import Iterator, Sequence
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
from gated_testkit import gated, gated_registry, running, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from mcdropout_client import Client, tensors
from mcdropout_client.errors import PermissionDenied, Unauthenticated, Unavailable
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from mcdropout_client.proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from mcdropout_client.proto.mcdropout.v1 import mcdropout_pb2 as pb
from mcdropout_server.app import ServerApp, ServerThread, load_registry
from mcdropout_server.concurrency import ConcurrencyLimit
from mcdropout_server.front import Front
from mcdropout_server.intake import OPEN_BODY_LIMIT, ByteBudget, Intake
from mcdropout_server.logs import RateLimiter
from mcdropout_server.registry import ModelRegistry
from mcdropout_server.security import SecurityConfigError, TokenAuth, refresh_tokens
from mcdropout_server.settings import ServerSettings
from server_testkit import (
    REG_FEATURES,
    REG_INFO,
    cls_inputs,
    padded,
    reg_inputs,
    serve_process,
    settings,
)

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


def test_token_check_without_a_server() -> None:
    auth = TokenAuth(["tok"])
    assert auth.check([("authorization", "Bearer tok")]) is None
    assert auth.check([("authorization", "bearer  tok ")]) is None  # scheme is case-insensitive
    code, _ = auth.check([("authorization", "Bearer tok"), ("authorization", "Bearer tok")]) \
        or (None, "")
    assert code == grpc.StatusCode.UNAUTHENTICATED  # two headers: ambiguous, refused
    with pytest.raises(ValueError, match="at least one token"):
        TokenAuth([])


# -- request bodies: never read without a token, parsed by us, held within a budget -------------
PREDICT = "/mcdropout.v1.PredictionService/Predict"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
GARBAGE = b"\xff" * 16  # a varint that never ends: no message parses from it
AUTHORIZED = (("authorization", f"Bearer {TOKENS[0]}"),)


def raw_call(channel: grpc.Channel, method: str, body: bytes,
             metadata: Sequence[tuple[str, str]] | None = None) -> grpc.RpcError:
    """Send ``body`` as it is (no serializer) and return the refusal it gets."""
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(method)(body, metadata=metadata, timeout=10)
    return info.value  # type: ignore[return-value]


@pytest.mark.parametrize("method", [PREDICT, "/inference.GRPCInferenceService/ModelInfer"])
def test_unparseable_body_without_a_token_is_unauthenticated(token_server: ServerApp,
                                                             method: str) -> None:
    with grpc.insecure_channel(address(token_server)) as channel:
        error = raw_call(channel, method, GARBAGE)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()


def test_unparseable_body_with_a_token_is_invalid_argument_logged_once_per_client(
        registry: ModelRegistry, token_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    with ServerThread(settings(auth_tokens_file=token_file),
                      ModelRegistry(registry.models())) as app, \
            caplog.at_level(logging.WARNING), grpc.insecure_channel(address(app)) as channel:
        for _ in range(5):
            error = raw_call(channel, PREDICT, GARBAGE, AUTHORIZED)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert (f"the request body (16 bytes) is not a valid request message for {PREDICT}: "
                    "Error parsing message") in (error.details() or "")
        with Client(address(app), token=TOKENS[0], retries=0) as client:
            assert client.predict(reg_inputs(1), model="reg", samples=3).samples_used == 3
    lines = [r for r in caplog.records if r.getMessage() == "request body does not parse"]
    assert len(lines) == 1, lines  # five failures from one client within the interval
    assert lines[0].fields["peer"] == "ipv4:127.0.0.1"  # type: ignore[attr-defined]
    assert lines[0].exc_info is None
    assert not [r for r in caplog.records if r.name.startswith("grpc")]  # no traceback per call


def test_methods_open_without_a_token_take_only_small_bodies(token_server: ServerApp) -> None:
    # A Watch holds its body while it is open: a large one could hold the shared budget.
    large = padded(health_pb2.HealthCheckRequest(service=""), OPEN_BODY_LIMIT)
    with grpc.insecure_channel(address(token_server)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
        for call in (lambda: check(large, timeout=5), lambda: list(watch(large, timeout=5))):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
            assert f"may be at most {OPEN_BODY_LIMIT} bytes" in (info.value.details() or "")


def test_received_bytes_beyond_the_budget_are_refused_until_held_calls_end(
        store_root: Path) -> None:
    registry = gated_registry(store_root)
    body = padded(pb.PredictRequest(model_name="reg", inputs=tensors.to_proto(reg_inputs(1)),
                                    samples=3), 700 * 1024)
    assert pb.PredictRequest.FromString(body).samples == 3
    with running(registry, received_bytes_budget_mb=1) as app, \
            grpc.insecure_channel(address(app)) as channel:
        predict = channel.unary_unary(PREDICT)
        gate = gated(registry, "reg")
        gate.gate.clear()
        before = gate.started
        held = predict.future(body, timeout=30)  # 700 KiB of the 1 MiB budget, held at the gate
        wait_until(lambda: gate.started > before, what="the first request to reach the engine")
        error = raw_call(channel, PREDICT, body)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert "MCDROPOUT_RECEIVED_BYTES_BUDGET_MB" in (error.details() or "")
        gate.gate.set()
        assert pb.PredictResponse.FromString(held.result(30)).samples_used == 3
        # The held call's bytes were given back when it ended: the same body now fits.
        assert pb.PredictResponse.FromString(predict(body, timeout=30)).samples_used == 3


async def test_intake_serves_response_streams_of_either_sort_and_gives_every_byte_back() -> None:
    async def generated(request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        for _ in range(3):
            yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def written(request: health_pb2.HealthCheckRequest, context: Any) -> None:
        for _ in range(3):
            await context.write(health_pb2.HealthCheckResponse(
                status=health_pb2.HealthCheckResponse.SERVING))

    def handler(behaviour: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_stream_rpc_method_handler(
            behaviour, request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString)

    budget, limit = ByteBudget(1000), ConcurrencyLimit(4)
    front = Front(Intake(budget), limit, None, ())
    front.add_registered_method_handlers(
        "t.Streams", {"Generated": handler(generated), "Written": handler(written)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([front])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in ("/t.Streams/Generated", "/t.Streams/Written"):
                call = channel.unary_stream(
                    method, response_deserializer=health_pb2.HealthCheckResponse.FromString)
                answers = [r async for r in call(
                    health_pb2.HealthCheckRequest(service="m").SerializeToString())]
                assert len(answers) == 3
                for body, code in ((GARBAGE, grpc.StatusCode.INVALID_ARGUMENT),
                                   (health_pb2.HealthCheckRequest(service="m" * 2000)
                                    .SerializeToString(), grpc.StatusCode.RESOURCE_EXHAUSTED)):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        _ = [r async for r in call(body)]
                    assert info.value.code() == code, info.value.details()
                assert budget.held == 0
                assert limit.active == 0
    finally:
        await server.stop(None)


def test_rate_limiter_lets_one_line_per_key_and_interval_through_and_counts_the_rest() -> None:
    now = [0.0]
    limiter = RateLimiter(60.0, max_keys=2, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(4)] == [0, None, None, None]
    assert limiter.allow("b") == 0
    now[0] = 61.0
    assert limiter.allow("a") == 3  # the three held back since the last line
    assert limiter.allow("c") == 0  # a third key: the stale "b" is forgotten, not kept
    assert limiter.allow("b") == 0


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def test_bursts_of_large_bodies_leave_memory_near_its_baseline_and_the_log_short(
        store_root: Path) -> None:
    body = bytes(range(256)) * (30 * 2**20 // 256)  # 30 MiB that parse as no message
    with serve_process(store_root, "--auth-tokens", TOKENS[0], "--workers", "1",
                       "--batching", "false") as served:
        target = f"127.0.0.1:{served.port}"
        with Client(target, token=TOKENS[0], retries=0) as client:
            client.predict(reg_inputs(1), model="reg", samples=3)  # warm, then measure
        baseline = rss_mib(served.process.pid)
        with grpc.insecure_channel(target) as channel:
            predict = channel.unary_unary(PREDICT)
            for metadata, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                                   (AUTHORIZED, grpc.StatusCode.INVALID_ARGUMENT)):
                calls = [predict.future(body, metadata=metadata, timeout=60) for _ in range(8)]
                codes = {call.exception().code() for call in calls}  # type: ignore[union-attr]
                assert codes == {code}, [call.exception() for call in calls]
            for _ in range(3):  # a request-streaming method: grpcio parses, our filter logs
                with pytest.raises(grpc.RpcError):
                    list(channel.stream_stream(REFLECTION)(iter([GARBAGE]), metadata=AUTHORIZED,
                                                           timeout=10))
        wait_until(lambda: rss_mib(served.process.pid) < baseline + 200, timeout=10,
                   what=f"RSS to come back within 200 MiB of its baseline of {baseline:.0f} MiB")
    log = "".join(served.lines)
    assert log.count("request body does not parse") == 1
    assert log.count("Unexpected [DecodeError]") == 1
    assert "Traceback" not in log


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
