"""``mcdropout serve``: settings from flags and environment, help, and a real process end to end."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mcdropout_client import Client
from mcdropout_server.app import ServerApp, ServerThread, load_registry
from mcdropout_server.cli import register, run
from mcdropout_server.logs import configure_logging, fields
from mcdropout_server.registry import ModelRegistry
from mcdropout_server.settings import ServerSettings, _meta, env_name
from server_testkit import MCDROPOUT, cls_inputs, serve_process, settings

import mcdropout.modeling.defaults

# The variables the deployment docs promise; the help must list each of them.
DOCUMENTED = ("MCDROPOUT_MODEL_ROOT", "MCDROPOUT_HOST", "MCDROPOUT_PORT", "MCDROPOUT_METRICS_PORT",
              "MCDROPOUT_WORKERS", "MCDROPOUT_MAX_CONCURRENT_RPCS", "MCDROPOUT_MAX_MESSAGE_BYTES",
              "MCDROPOUT_MAX_ROWS", "MCDROPOUT_MAX_SAMPLES", "MCDROPOUT_MEMORY_BUDGET_MB",
              "MCDROPOUT_GRACE_SECONDS", "MCDROPOUT_LOG_LEVEL", "MCDROPOUT_LOG_FORMAT")


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcdropout")
    register(parser.add_subparsers(dest="command"))
    return parser


def test_help_lists_every_setting_with_its_env_var() -> None:
    done = subprocess.run([MCDROPOUT, "serve", "--help"], capture_output=True, text=True,
                          timeout=60, check=True)
    declared = [env_name(f.name) for f in dataclasses.fields(ServerSettings)]
    for name in {*DOCUMENTED, *declared}:
        assert name in done.stdout, name
    for f in dataclasses.fields(ServerSettings):
        assert "--" + f.name.replace("_", "-") in done.stdout


def test_flag_beats_environment_beats_default() -> None:
    env = {"MCDROPOUT_PORT": "6000", "MCDROPOUT_WORKERS": "3", "MCDROPOUT_LOG_LEVEL": "debug",
           "MCDROPOUT_MODEL_ROOT": "/models", "MCDROPOUT_GRACE_SECONDS": "2.5",
           "UNRELATED": "x"}
    args = serve_parser().parse_args(["serve", "--port", "7000", "--log-format", "keyvalue"])
    assert args.func is run
    got = ServerSettings.from_args(args, env)
    assert (got.port, got.workers, got.log_level, got.log_format) == (7000, 3, "DEBUG",
                                                                      "keyvalue")
    assert (got.model_root, got.grace_seconds) == (Path("/models"), 2.5)
    assert got.max_rows == ServerSettings().max_rows  # untouched: the default
    assert ServerSettings.from_env({}) == ServerSettings()


def test_warmup_sample_classes_is_off_unless_a_flag_or_variable_turns_it_on() -> None:
    assert ServerSettings().warmup_sample_classes is False
    on = {"MCDROPOUT_WARMUP_SAMPLE_CLASSES": "true"}
    assert ServerSettings.from_env(on).warmup_sample_classes is True
    args = serve_parser().parse_args(["serve", "--warmup-sample-classes", "off"])
    assert ServerSettings.from_args(args, on).warmup_sample_classes is False
    with pytest.raises(ValueError, match="MCDROPOUT_WARMUP_SAMPLE_CLASSES must be true or false"):
        ServerSettings.from_env({"MCDROPOUT_WARMUP_SAMPLE_CLASSES": "maybe"})


@pytest.mark.parametrize(("env", "message"), [
    ({"MCDROPOUT_PORT": "abc"}, "MCDROPOUT_PORT must be an integer, got 'abc'"),
    ({"MCDROPOUT_GRACE_SECONDS": "soon"}, "MCDROPOUT_GRACE_SECONDS must be a number"),
    ({"MCDROPOUT_WORKERS": "0"}, "MCDROPOUT_WORKERS must be >= 1, got 0"),
    ({"MCDROPOUT_PORT": "70000"}, "ports must be in 0..65535"),
    ({"MCDROPOUT_LOG_FORMAT": "xml"}, "MCDROPOUT_LOG_FORMAT must be one of json, keyvalue"),
])
def test_bad_settings_name_the_variable_and_what_is_allowed(env: dict[str, str],
                                                            message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ServerSettings.from_env(env)


def test_bad_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        serve_parser().parse_args(["serve", "--port", "abc"])
    assert info.value.code == 2
    assert "MCDROPOUT_PORT must be an integer, got 'abc'" in capsys.readouterr().err


def test_describe_prints_every_setting_and_masks_secrets() -> None:
    @dataclass(frozen=True)
    class WithToken(ServerSettings):
        token: str = field(default="", metadata=_meta("An API token.", secret=True))

    text = WithToken(token="hunter2", port=1234).describe()
    assert "port=1234" in text and "token=***" in text and "hunter2" not in text
    assert len(text.split()) == len(dataclasses.fields(WithToken))


def test_no_model_root_serves_the_default_store(store_root: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mcdropout.modeling.defaults, "ensure_default_store", lambda root=None: store_root)
    loaded = load_registry(settings(model_root=None))
    assert loaded.names() == ["cls", "reg"] and loaded.versions("reg") == [1, 2]


def test_port_in_use_fails_loudly(server: ServerApp, registry: ModelRegistry) -> None:
    with pytest.raises(RuntimeError, match="Failed to bind"):
        ServerThread(settings(port=server.port), registry).start()


def test_serve_process_reports_its_port_and_exits_0_on_sigterm(store_root: Path) -> None:
    with serve_process(store_root, "--grace-seconds", "5") as served:
        port, started = served.port, served.started  # JSON lines by default
        assert port > 0 and f"listening on 127.0.0.1:{port};" in started["msg"]
        assert "models: cls (v1), reg (v1, v2)" in started["msg"]
        assert any("settings: " in s and "max_rows=" in s for s in served.lines)

        with Client(f"127.0.0.1:{port}", retries=0) as client:
            assert client.health() == "SERVING"
            assert client.predict(cls_inputs(2), model="cls", samples=5).samples_used == 5
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=60) == 0
    assert any('"msg": "stopped"' in line for line in served.lines), served.lines[-5:]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level,
             {name: logging.getLogger(name).level for name in ("mcdropout", "mcdropout_server")})
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["json", "keyvalue"])
def test_log_lines_carry_the_structured_fields(fmt: str) -> None:
    out = io.StringIO()
    configure_logging("DEBUG", fmt, out)
    logging.getLogger("mcdropout_server.test").debug(
        "rpc", extra=fields(request_id="r-1", model="reg", note="two words"))
    logging.getLogger("some.library").debug("library chatter")  # not ours: filtered at DEBUG
    [line] = out.getvalue().splitlines()
    if fmt == "json":
        got = json.loads(line)
        assert {k: got[k] for k in ("level", "msg", "request_id", "model", "note")} == {
            "level": "DEBUG", "msg": "rpc", "request_id": "r-1", "model": "reg",
            "note": "two words"}
    else:
        assert "level=DEBUG" in line and "request_id=r-1" in line
        assert 'note="two words"' in line
