"""Model updates with no downtime, and a drain on SIGTERM that loses no accepted request.

Each test serves a private copy of the session store, so that it can drop versions into it, break
them or delete them. The in-process servers reuse the session's loaded models; only the versions
a test adds are loaded from disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from load_testkit import Hammer
from mcdropout_client import Client
from mcdropout_client.errors import ClientError, NotFound
from mcdropout_server.app import ServerApp, ServerThread, load_registry
from mcdropout_server.registry import LoadOptions, ModelRegistry, ModelSource
from mcdropout_server.reload import ModelReloader
from mcdropout_server.settings import ServerSettings
from prometheus_client.parser import text_string_to_metric_families
from server_testkit import (
    LIMITS,
    REG_INFO,
    cls_inputs,
    load_options,
    predictor,
    reg_inputs,
    regression,
    serve_process,
    settings,
)
from test_server_security import lambda_model

from mcdropout import ModelLoadError, ModelStore

POLL = 0.2  # seconds between store scans in the in-process servers


@pytest.fixture
def live_store(store_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(store_root, root)
    return root


@pytest.fixture
def reloadable(registry: ModelRegistry, live_store: Path) -> ModelRegistry:
    """The session's loaded models, as if loaded from ``live_store`` (which holds the same)."""
    source = ModelSource(ModelStore(live_store), LoadOptions(**load_options()))
    return ModelRegistry(registry.models(), LIMITS, source)


@pytest.fixture
def watched(reloadable: ModelRegistry) -> Iterator[ServerThread]:
    thread = ServerThread(settings(reload_interval_seconds=POLL), reloadable)
    thread.start()
    yield thread
    thread.stop(grace=1.0)


def wait_for(condition: Callable[[], Any], timeout: float = 60.0) -> None:
    ends = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < ends, "condition not met in time"
        time.sleep(0.05)


def latest(client: Client, model: str = "reg") -> int:
    return client.metadata(model).version


def drop_broken_version(root: Path, version: int) -> None:
    """A version whose metadata is fine and whose model file is garbage, renamed into place."""
    staging = root / "reg" / f".staging-{version}"
    staging.mkdir()
    (staging / "model.keras").write_bytes(b"PK\x03\x04 not really a zip file" * 10)
    shutil.copy(root / "reg" / "2" / "metadata.json", staging / "metadata.json")
    os.replace(staging, root / "reg" / str(version))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in [root, *root.rglob("*")]}


# -- swapping under load --------------------------------------------------------------------------
def test_new_version_swaps_in_under_load_with_zero_failed_requests(
        watched: ServerThread, live_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = f"127.0.0.1:{watched.app.port}"
    clients, stop = 4, threading.Event()
    seen: list[list[int]] = [[] for _ in range(clients)]
    failures: list[str] = []

    def hammer(index: int) -> None:
        with Client(target, retries=0, timeout=30) as client:
            while not stop.is_set():
                try:
                    seen[index].append(client.predict(reg_inputs(8, seed=index), model="reg",
                                                      samples=20).version)
                except ClientError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")

    with caplog.at_level(logging.INFO, logger="mcdropout_server"), \
            ThreadPoolExecutor(clients) as pool:
        running = [pool.submit(hammer, i) for i in range(clients)]
        wait_for(lambda: all(len(s) >= 3 for s in seen))
        ModelStore(live_store).save(regression(3), REG_INFO)
        wait_for(lambda: all(3 in s[-3:] for s in seen))  # every client answered by v3
        counts = [len(s) for s in seen]
        wait_for(lambda: all(len(s) >= c + 3 for s, c in zip(seen, counts, strict=True)))
        stop.set()
        for future in running:
            future.result(timeout=60)

    assert failures == []
    for versions in seen:  # each client saw v2, then v3, and never v2 again after its first v3
        first = versions.index(3)
        assert set(versions[:first]) == {2} and set(versions[first:]) == {3}, versions
    messages = [r.getMessage() for r in caplog.records]
    # Loaded and warmed up first, swapped in after.
    assert messages.index("loaded model") < messages.index("served model versions swapped")

    with Client(target, retries=0) as client:
        answer = client.predict(reg_inputs(5), model="reg", samples=30, seed=11)
        assert [s.versions for s in client.models() if s.name == "reg"] == [(1, 2, 3)]
        assert client.health("reg") == "SERVING"
    expected = predictor(live_store, "reg", 3).predict(reg_inputs(5), 30, 11).mean
    np.testing.assert_array_equal(answer.mean, expected)  # really the new weights


def test_request_in_flight_finishes_on_the_old_version(
        watched: ServerThread, reloadable: ModelRegistry, live_store: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    old = reloadable.get("reg", 2).predictor
    entered, release = threading.Event(), threading.Event()

    def held(real: Callable[..., Any]) -> Callable[..., Any]:
        def wait_then_run(*args: Any, **kwargs: Any) -> Any:
            entered.set()
            assert release.wait(60)
            return real(*args, **kwargs)
        return wait_then_run

    # The engine's one entry (alone or merged): the call waits inside v2.
    monkeypatch.setattr(old, "run", held(old.run))
    target = f"127.0.0.1:{watched.app.port}"
    with Client(target, retries=0, timeout=60) as client, ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(client.predict, reg_inputs(4), model="reg", samples=25, seed=5)
        assert entered.wait(30)
        ModelStore(live_store).save(regression(3), REG_INFO)
        wait_for(lambda: latest(client) == 3)
        assert client.predict(reg_inputs(1), model="reg", samples=3).version == 3
        assert not in_flight.done()
        release.set()
        answer = in_flight.result(timeout=60)
    assert answer.version == 2
    monkeypatch.undo()
    np.testing.assert_array_equal(answer.mean, old.predict(reg_inputs(4), 25, 5).mean)


def test_broken_new_versions_are_rejected_and_the_old_one_keeps_serving(
        watched: ServerThread, live_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = f"127.0.0.1:{watched.app.port}"
    store = ModelStore(live_store)
    with caplog.at_level(logging.INFO, logger="mcdropout_server"), \
            Client(target, retries=0) as client:
        drop_broken_version(live_store, 3)
        store.save(lambda_model(), REG_INFO, version=4)  # needs arbitrary code: safe mode says no

        def rejections() -> dict[int, str]:
            return {r.fields["version"]: r.fields["error"]  # type: ignore[attr-defined]
                    for r in caplog.records
                    if r.getMessage() == "model version rejected; the served versions stay"}

        wait_for(lambda: set(rejections()) == {3, 4})
        assert "could not be loaded" in rejections()[3]
        assert "needs arbitrary code to load" in rejections()[4]
        assert latest(client) == 2
        assert client.predict(reg_inputs(2), model="reg", samples=5).version == 2

        time.sleep(5 * POLL)  # several more scans: a rejected version is not retried
        assert sorted(r.fields["version"] for r in caplog.records  # type: ignore[attr-defined]
                      if r.getMessage().startswith("model version rejected")) == [3, 4]

        store.save(regression(5), REG_INFO, version=5)  # a good one is still picked up
        wait_for(lambda: latest(client) == 5)
        assert [s.versions for s in client.models() if s.name == "reg"] == [(1, 2, 5)]
        with pytest.raises(NotFound, match="available versions: \\[1, 2, 5\\]"):
            client.predict(reg_inputs(1), model="reg", version=3)


def requests_by_model(app: ServerApp, method: str = "Predict") -> dict[str, float]:
    """The server's mcdropout_requests_total for ``method`` with code OK, by model label."""
    with urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {s.labels["model"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "mcdropout_requests_total"
            and s.labels["method"] == method and s.labels["code"] == "OK"}


def test_metrics_count_a_model_added_by_reload_under_its_own_name(
        watched: ServerThread, live_store: Path) -> None:
    with Client(f"127.0.0.1:{watched.app.port}", retries=0) as client:
        with pytest.raises(NotFound):
            client.predict(reg_inputs(1), model="fresh")  # not served yet: "_unknown"
        ModelStore(live_store).save(regression(4), replace(REG_INFO, name="fresh"))
        wait_for(lambda: client.health("fresh") == "SERVING")
        before = requests_by_model(watched.app)
        for _ in range(2):
            assert client.predict(reg_inputs(3), model="fresh", samples=5).version == 1
        after = requests_by_model(watched.app)
    assert after.get("fresh", 0) - before.get("fresh", 0) == 2
    assert after.get("_unknown", 0) == before.get("_unknown", 0)


# -- the reloader on its own -----------------------------------------------------------------------
def test_reloader_drops_removed_versions_reloads_changed_ones_and_never_empties(
        reloadable: ModelRegistry, live_store: Path) -> None:
    reloader = ModelReloader(reloadable)
    assert reloader.reload().changed is False  # nothing changed: nothing loaded

    shutil.rmtree(live_store / "reg" / "1")
    report = reloader.reload()
    assert (report.loaded, report.removed) == ((), (("reg", 1),))
    assert reloadable.versions("reg") == [2]

    # Replacing a version's files in place (a new model under the same number) reloads it.
    info_path = live_store / "cls" / "1" / "metadata.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "description": "retrained"}))
    before = reloadable.get("cls")
    assert reloader.reload().loaded == (("cls", 1),)
    assert reloadable.get("cls") is not before
    assert reloadable.get("cls").info.description == "retrained"

    for name in ("reg", "cls"):
        shutil.rmtree(live_store / name)
    assert reloader.reload().changed is False  # an empty store never empties the registry
    assert reloadable.names() == ["cls", "reg"]


def test_registry_without_a_store_cannot_be_reloaded(registry: ModelRegistry) -> None:
    with pytest.raises(ValueError, match="not loaded from a model store"):
        ModelReloader(ModelRegistry(registry.models()))


def test_the_model_root_is_never_written(live_store: Path) -> None:
    before = snapshot(live_store)
    loaded = ModelRegistry.load(ModelStore(live_store), limits=LIMITS,
                                **{**load_options(), "warmup": True})
    with ServerThread(settings(reload_interval_seconds=POLL), loaded) as app, \
            Client(f"127.0.0.1:{app.port}", retries=0) as client:
        client.predict(reg_inputs(3), model="reg", samples=10)
        time.sleep(3 * POLL)  # a few scans
        assert ModelReloader(loaded).reload().changed is False
    assert snapshot(live_store) == before


# -- store integrity: the folder names the version, the root bounds the store ---------------------
def copy_version(root: Path, source: str, folder: str, **claims: object) -> Path:
    """``root/source`` copied to ``root/folder`` and renamed into place, its metadata amended."""
    staging = root / f".staging-{folder.replace('/', '-')}"
    shutil.copytree(root / source, staging)
    path = staging / "metadata.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **claims}))
    (root / folder).parent.mkdir(exist_ok=True)
    os.replace(staging, root / folder)
    return root / folder


def rejections(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int, str]]:
    return [(r.fields["model"], r.fields["version"], r.fields["error"])  # type: ignore[attr-defined]
            for r in caplog.records
            if r.getMessage() == "model version rejected; the served versions stay"]


@pytest.mark.parametrize("claims", [{"name": "reg"}, {"version": 2}],
                         ids=["another model", "another version"])
def test_start_refuses_a_version_whose_metadata_contradicts_its_folder(
        live_store: Path, claims: dict[str, object]) -> None:
    folder = copy_version(live_store, "reg/2", "alpha/1", **{"name": "alpha", **claims})
    expected = {"name": rf"version folder {folder} refused: its metadata\.json names model "
                        r"'reg', but the folder belongs to model 'alpha'",
                "version": rf"cannot read {folder}/metadata\.json: metadata says version 2, "
                           r"but its folder is version 1"}
    with pytest.raises(ModelLoadError, match=expected[next(iter(claims))]):
        load_registry(settings(model_root=live_store, on_load_error="exit"))
    # Under the default policy the others serve and it is not ready: test_server_startup_policy.


def test_reload_rejects_a_version_claiming_another_model_which_keeps_serving(
        watched: ServerThread, live_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mcdropout_server"), \
            Client(f"127.0.0.1:{watched.app.port}", retries=0) as client:
        before = client.predict(cls_inputs(3), model="cls", samples=20, seed=4).mean
        folder = copy_version(live_store, "cls/1", "reg/9")  # says "name": "cls"
        wait_for(lambda: rejections(caplog))
        time.sleep(5 * POLL)  # several more scans: rejected once, not at every scan
        assert rejections(caplog) == [("reg", 9, f"ModelLoadError: version folder {folder} "
                                       "refused: its metadata.json names model 'cls', but the "
                                       "folder belongs to model 'reg'; the folder names the "
                                       f"model: move the version under {live_store / 'cls'} or "
                                       "correct the name")]
        served = {s.name: s.versions for s in client.models()}
        assert served == {"cls": (1,), "reg": (1, 2)}
        assert client.metadata("cls").version == 1 and latest(client) == 2
        after = client.predict(cls_inputs(3), model="cls", samples=20, seed=4)
        assert after.version == 1
        np.testing.assert_array_equal(after.mean, before)


def link_out(root: Path, elsewhere: Path, version: int) -> Path:
    """A good reg version saved outside ``root``, linked in as ``root/reg/<version>``."""
    ModelStore(elsewhere).save(regression(version), REG_INFO, version=version)
    link = root / "reg" / str(version)
    link.symlink_to(elsewhere / "reg" / str(version), target_is_directory=True)
    return link


def test_start_refuses_a_version_linked_from_outside_the_root_unless_allowed(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "reg").mkdir(parents=True)
    link = link_out(root, tmp_path / "elsewhere", 3)
    with pytest.raises(ModelLoadError, match=rf"{link}/metadata\.json refused: a symbolic link "
                       rf"leads it to {tmp_path}/elsewhere/reg/3/metadata\.json, outside the "
                       r"model root .*MCDROPOUT_ALLOW_STORE_SYMLINKS=true"):
        load_registry(settings(model_root=root))
    allowed = load_registry(settings(model_root=root, allow_store_symlinks=True))
    with ServerThread(settings(), allowed) as app, \
            Client(f"127.0.0.1:{app.port}", retries=0) as client:
        assert client.predict(reg_inputs(2), model="reg", samples=5).version == 3


def test_reload_rejects_a_link_out_of_the_root_and_follows_one_inside(
        watched: ServerThread, live_store: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mcdropout_server"), \
            Client(f"127.0.0.1:{watched.app.port}", retries=0) as client:
        link = link_out(live_store, tmp_path / "elsewhere", 3)
        wait_for(lambda: rejections(caplog))
        [(model, version, error)] = rejections(caplog)
        assert (model, version) == ("reg", 3)
        assert error.startswith(f"ModelLoadError: {link}/metadata.json refused: a symbolic link "
                                "leads it to ")
        assert latest(client) == 2

        # A link that stays inside the root (a shelf of versions beside the served ones) is fine.
        ModelStore(live_store / "shelf").save(regression(4), REG_INFO)
        (live_store / "reg" / "4").symlink_to("../shelf/reg/1", target_is_directory=True)
        wait_for(lambda: latest(client) == 4)
        assert client.predict(reg_inputs(2), model="reg", samples=5).version == 4
        assert len(rejections(caplog)) == 1
        with pytest.raises(NotFound, match=r"available versions: \[1, 2, 4\]"):
            client.predict(reg_inputs(1), model="reg", version=3)


# -- real processes: SIGHUP and SIGTERM -----------------------------------------------------------
def test_sighup_reloads_the_store_of_a_running_server(live_store: Path) -> None:
    with serve_process(live_store, "--reload-interval-seconds", "0") as served, \
            Client(f"127.0.0.1:{served.port}", retries=0) as client:
        assert latest(client) == 2
        ModelStore(live_store).save(regression(3), REG_INFO)
        time.sleep(1.0)
        assert latest(client) == 2  # polling is off: nothing happens without the signal
        served.process.send_signal(signal.SIGHUP)
        wait_for(lambda: latest(client) == 3)
        assert client.predict(reg_inputs(2), model="reg", samples=4).version == 3
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=60) == 0


def test_sigterm_under_load_loses_no_accepted_request(live_store: Path) -> None:
    with serve_process(live_store, "--log-level", "DEBUG", "--workers", "2",
                       "--grace-seconds", "30") as served, Hammer(served.port, clients=6).running() as load:
        wait_for(lambda: len(load.answered) >= 20)
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=90) == 0
    answered, failed = load.answered, load.failed
    lines = served.lines

    records = [json.loads(line) for line in lines if line.startswith("{")]
    calls = [r for r in records if r.get("method") == "Predict" and "code" in r]
    signalled = next(i for i, r in enumerate(records) if r["msg"] == "shutdown signal received")
    served_after_signal = [r for r in records[signalled:] if r.get("code") == "OK"]
    assert {r["code"] for r in calls} <= {"OK", "UNAVAILABLE"}
    # Every request the server completed reached its client.
    assert sorted(answered) == sorted(r["request_id"] for r in calls if r["code"] == "OK")
    # Every request the server saw but refused was told to go elsewhere (it echoes the id)...
    refused = [e for e in failed if e.request_id is not None]
    assert {(e.code.name, "server is shutting down" in e.message) for e in refused} <= {
        ("UNAVAILABLE", True)}
    # ...and the rest never reached a handler: nothing listening any more (UNAVAILABLE), or,
    # in the last instant, a call gRPC had received but not dispatched when the server stopped
    # (CANCELLED, with no request id: it never ran, so it is safe to retry).
    unseen = Counter(e.code.name for e in failed if e.request_id is None)
    assert set(unseen) <= {"UNAVAILABLE", "CANCELLED"}, unseen
    assert served_after_signal, "no request was in flight at SIGTERM; the test proves nothing"
    assert next(r for r in records if r["msg"] == "stopped")["drained"] is True


def test_reload_interval_setting() -> None:
    assert ServerSettings().reload_interval_seconds == 10.0
    assert ServerSettings.from_env({"MCDROPOUT_RELOAD_INTERVAL_SECONDS": "0"}
                                   ).reload_interval_seconds == 0
    with pytest.raises(ValueError, match="MCDROPOUT_RELOAD_INTERVAL_SECONDS must be >= 0"):
        ServerSettings.from_env({"MCDROPOUT_RELOAD_INTERVAL_SECONDS": "-1"})
