"""The start-up policy: bad versions at start are logged and reported not ready ("serve"), or
fail the start listing each of them ("exit"); reload follows the same rules; the folder names
the model, and the model a bad version claims keeps serving."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from mcdropout_client import Client
from mcdropout_client.errors import NotFound
from mcdropout_client.proto.inference import grpc_predict_v2_pb2 as oip
from mcdropout_client.proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from mcdropout_server.app import ServerApp, ServerThread, load_registry
from mcdropout_server.cli import register
from mcdropout_server.registry import ModelRegistry
from mcdropout_server.settings import ServerSettings
from server_testkit import MCDROPOUT, cls_inputs, predictor, reg_inputs, settings
from test_server_reload import POLL, copy_version, rejections, wait_for

from mcdropout import ModelLoadError

NOT_SERVED = "model version not served: it failed to load"


def break_version(root: Path, source: str, folder: str) -> Path:
    """``root/source``'s metadata beside a model file that is not a Keras archive."""
    staging = root / f".staging-{folder.replace('/', '-')}"
    staging.mkdir()
    (staging / "model.keras").write_bytes(b"PK\x03\x04 not a zip archive" * 10)
    shutil.copy(root / source / "metadata.json", staging / "metadata.json")
    (root / folder).parent.mkdir(exist_ok=True)
    os.replace(staging, root / folder)
    return root / folder


@pytest.fixture
def mixed_store(store_root: Path, tmp_path: Path) -> Path:
    """The session store (reg v1, v2; cls v1) and three bad versions: alpha/1 names model 'reg',
    reg/9 names model 'cls', and cls/2 has a corrupt model file."""
    root = tmp_path / "store"
    shutil.copytree(store_root, root)
    copy_version(root, "reg/2", "alpha/1")
    copy_version(root, "cls/1", "reg/9")
    break_version(root, "cls/1", "cls/2")
    return root


def at_start(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records logged while the fixture started the server (pytest keeps them apart)."""
    return caplog.get_records("setup")


def not_served(records: list[logging.LogRecord]) -> dict[tuple[str, int], str]:
    return {(r.fields["model"], r.fields["version"]): r.fields["error"]  # type: ignore[attr-defined]
            for r in records if r.getMessage() == NOT_SERVED}


def ready(channel: grpc.Channel, name: str, version: str = "") -> bool:
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    return bool(stub.ModelReady(oip.ModelReadyRequest(name=name, version=version)).ready)


@pytest.fixture
def served_mixed(mixed_store: Path, caplog: pytest.LogCaptureFixture
                 ) -> Iterator[tuple[ServerApp, ModelRegistry]]:
    with caplog.at_level(logging.INFO, logger="mcdropout_server"):
        registry = load_registry(settings(model_root=mixed_store))  # the default: serve
        with ServerThread(settings(reload_interval_seconds=POLL), registry) as app:
            yield app, registry


def test_serve_serves_the_good_versions_and_reports_each_bad_one_not_ready(
        served_mixed: tuple[ServerApp, ModelRegistry], mixed_store: Path, store_root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    app, registry = served_mixed
    failures = not_served(at_start(caplog))
    assert set(failures) == {("alpha", 1), ("cls", 2), ("reg", 9)}
    assert failures[("alpha", 1)] == (
        f"ModelLoadError: version folder {mixed_store / 'alpha' / '1'} refused: its metadata.json "
        "names model 'reg', but the folder belongs to model 'alpha'; the folder names the model: "
        f"move the version under {mixed_store / 'reg'} or correct the name")
    assert "names model 'cls', but the folder belongs to model 'reg'" in failures[("reg", 9)]
    assert "model.keras could not be loaded (corrupt or incompatible)" in failures[("cls", 2)]
    assert registry.failed() == failures
    started = next(m for m in map(logging.LogRecord.getMessage, at_start(caplog))
                   if m.startswith("listening on"))
    assert started.endswith("models: cls (v1), reg (v1, v2); not ready (failed to load, see "
                            "above): alpha v1, cls v2, reg v9")

    target = f"127.0.0.1:{app.port}"
    with Client(target, retries=0) as client, grpc.insecure_channel(target) as channel:
        assert [client.health(n) for n in ("", "alpha", "reg", "cls")] == [
            "SERVING", "NOT_SERVING", "SERVING", "SERVING"]
        assert [ready(channel, *args) for args in (("alpha",), ("reg", "9"), ("cls", "2"),
                                                   ("reg",), ("reg", "2"), ("cls",))] == [
            False, False, False, True, True, True]
        assert {s.name: s.versions for s in client.models()} == {"cls": (1,), "reg": (1, 2)}
        with pytest.raises(NotFound, match=r"model 'alpha' is not served: its version\(s\) \[1\] "
                                           r"failed to load \(the server log says why\); served "
                                           r"models: \['cls', 'reg'\]"):
            client.predict(reg_inputs(1), model="alpha")
        with pytest.raises(NotFound, match=r"model 'reg' version 9 is not served: it failed to "
                                           r"load \(the server log says why\); available "
                                           r"versions: \[1, 2\]"):
            client.metadata("reg", version=9)
        # The models the bad versions claimed keep serving, as their own folders say.
        answer = client.predict(cls_inputs(3), model="cls", samples=20, seed=4)
        assert answer.version == 1
        np.testing.assert_array_equal(
            answer.mean, predictor(store_root, "cls", 1).predict(cls_inputs(3), 20, 4).mean)
        assert client.predict(reg_inputs(2), model="reg", samples=5).version == 2

        time.sleep(5 * POLL)  # several scans: a version that failed at start is not retried
        assert rejections(caplog) == []


def test_exit_tries_every_version_then_fails_listing_each_bad_one(mixed_store: Path) -> None:
    with pytest.raises(ModelLoadError) as failed:
        load_registry(settings(model_root=mixed_store, on_load_error="exit"))
    message = str(failed.value)
    assert message.startswith("3 model version(s) failed to load and on_load_error is 'exit' "
                              "(MCDROPOUT_ON_LOAD_ERROR=serve would serve the others): alpha v1: "
                              "ModelLoadError: version folder ")
    assert "; cls v2: ModelLoadError: " in message and "; reg v9: ModelLoadError: " in message


def test_exit_policy_in_a_real_process_exits_1_naming_every_bad_version(
        mixed_store: Path) -> None:
    done = subprocess.run(
        [MCDROPOUT, "serve", "--model-root", str(mixed_store), "--port", "0", "--metrics-port",
         "0", "--log-format", "keyvalue"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "MCDROPOUT_ON_LOAD_ERROR": "exit"})
    assert done.returncode == 1, done.stderr[-2000:]
    assert "on_load_error=exit" in done.stderr  # the settings line
    assert done.stderr.count(f'msg="{NOT_SERVED}"') == 3
    last = done.stderr.strip().splitlines()[-1]
    assert "cannot serve: 3 model version(s) failed to load and on_load_error is 'exit'" in last
    assert all(f"{v}: ModelLoadError" in last for v in ("alpha v1", "cls v2", "reg v9"))


def test_nothing_servable_fails_the_start_whatever_the_policy(tmp_path: Path,
                                                              store_root: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    with pytest.raises(ModelLoadError, match=f"no models found in model store {root}; expected "):
        load_registry(settings(model_root=root))
    shutil.copytree(store_root / "reg", root / ".source")
    copy_version(root, ".source/2", "alpha/1")  # names model 'reg'
    shutil.rmtree(root / ".source")
    with pytest.raises(ModelLoadError, match=rf"^nothing to serve: every version in model store "
                                             rf"{root} failed to load: alpha v1: ModelLoadError: "
                                             r"version folder .* refused"):
        load_registry(settings(model_root=root, on_load_error="serve"))


def test_on_load_error_setting() -> None:
    assert ServerSettings().on_load_error == "serve"
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--on-load-error", "EXIT"])
    assert ServerSettings.from_args(args, {"MCDROPOUT_ON_LOAD_ERROR": "serve"}).on_load_error == \
        "exit"
    assert ServerSettings.from_env({"MCDROPOUT_ON_LOAD_ERROR": "Exit"}).on_load_error == "exit"
    with pytest.raises(ValueError, match="MCDROPOUT_ON_LOAD_ERROR must be one of serve, exit, "
                                         "got 'later'"):
        ServerSettings.from_env({"MCDROPOUT_ON_LOAD_ERROR": "later"})


def test_reload_reports_bad_versions_not_ready_and_serves_them_once_fixed(
        served_mixed: tuple[ServerApp, ModelRegistry], mixed_store: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    app, registry = served_mixed
    target = f"127.0.0.1:{app.port}"
    with Client(target, retries=0) as client, grpc.insecure_channel(target) as channel:
        assert client.health("beta") == "SERVICE_UNKNOWN"
        break_version(mixed_store, "reg/1", "beta/1")  # a new model, broken
        wait_for(lambda: client.health("beta") == "NOT_SERVING")
        assert not ready(channel, "beta") and ("beta", 1) in registry.failed()
        assert [(m, v) for m, v, _ in rejections(caplog)] == [("beta", 1)]

        # alpha/1 corrected in place: its files change, so it is tried again, and serves.
        metadata = mixed_store / "alpha" / "1" / "metadata.json"
        metadata.write_text(json.dumps({**json.loads(metadata.read_text()), "name": "alpha"}))
        wait_for(lambda: client.health("alpha") == "SERVING")
        assert ready(channel, "alpha") and ("alpha", 1) not in registry.failed()
        assert client.predict(reg_inputs(2), model="alpha", samples=5).version == 1

        shutil.rmtree(mixed_store / "beta")  # a failed version that leaves is forgotten
        wait_for(lambda: ("beta", 1) not in registry.failed())
        assert client.health("beta") == "NOT_SERVING"
        assert set(registry.failed()) == {("cls", 2), ("reg", 9)}
        assert len(rejections(caplog)) == 1  # beta alone, once
