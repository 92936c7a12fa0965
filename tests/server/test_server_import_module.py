"""``--import-module`` / ``MCDROPOUT_IMPORT_MODULES``: custom layers and subclassed models served
by a real ``mcdropout serve``, with safe mode still on.

The module is written at test time and the store built in a child process, so that this process
never imports it: each server must find it through the setting alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from mcdropout_client import Client
from mcdropout_server.cli import register
from mcdropout_server.settings import ServerSettings
from server_testkit import MCDROPOUT, REG_FEATURES, reg_inputs, serve_process

from mcdropout.loading import IMPORT_MODULES_ENV

MODULE = "server_custom_zoo"
SOURCE = textwrap.dedent('''
    import keras

    @keras.saving.register_keras_serializable(package="serverzoo")
    class Scale(keras.layers.Layer):
        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    @keras.saving.register_keras_serializable(package="serverzoo")
    class MyRegressor(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.scale = Scale(0.5)
            self.hidden = keras.layers.Dense(16, activation="relu")
            self.drop = keras.layers.Dropout(0.2)
            self.out = keras.layers.Dense(1)

        def call(self, x):
            return self.out(self.drop(self.hidden(self.scale(x))))
''')
BUILD = textwrap.dedent(f'''
    import sys, keras, {MODULE}
    from mcdropout import ModelInfo, ModelStore
    keras.utils.set_random_seed(0)
    store = ModelStore(sys.argv[1])
    model = {MODULE}.MyRegressor()
    model(keras.ops.zeros((1, {REG_FEATURES})))
    store.save(model, ModelInfo(name="subclassed", task="regression",
                                input_shape=({REG_FEATURES},)))
    layered = keras.Sequential([keras.Input(({REG_FEATURES},)), {MODULE}.Scale(),
                                keras.layers.Dropout(0.3), keras.layers.Dense(1)])
    store.save(layered, ModelInfo(name="layered", task="regression",
                                  input_shape=({REG_FEATURES},)))
    # Safe mode stays on with modules imported: a Lambda layer is still refused.
    unsafe = keras.Sequential([keras.Input(({REG_FEATURES},)), keras.layers.Dropout(0.2),
                               keras.layers.Lambda(lambda t: t * 2.0), keras.layers.Dense(1)])
    store.save(unsafe, ModelInfo(name="unsafe", task="regression",
                                 input_shape=({REG_FEATURES},)))
''')


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the store, the folder holding the module)."""
    folder = tmp_path_factory.mktemp("custom")
    (folder / "lib").mkdir()
    (folder / "lib" / f"{MODULE}.py").write_text(SOURCE)
    subprocess.run([sys.executable, "-c", BUILD, str(folder / "store")], check=True,
                   timeout=300, env={**os.environ, "PYTHONPATH": str(folder / "lib")})
    return folder / "store", folder / "lib"


def serve(store: Path, *flags: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``mcdropout serve`` that is expected to exit by itself."""
    return subprocess.run([MCDROPOUT, "serve", "--model-root", str(store), "--port", "0",
                           "--metrics-port", "0", "--log-format", "keyvalue", *flags],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def test_without_its_module_a_custom_class_is_named_with_the_module_to_import(
        custom: tuple[Path, Path]) -> None:
    store, lib = custom
    done = serve(store, "--on-load-error", "exit", env={"PYTHONPATH": str(lib)})
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "cannot serve: 3 model version(s) failed to load" in last
    for name, cls in (("layered", "Scale"), ("subclassed", "MyRegressor")):
        assert (f"{store / name / '1' / 'model.keras'} names classes this process does not "
                f"know: unknown class '{cls}' (registered as 'serverzoo>{cls}'; import its "
                f"module with --import-module {MODULE})") in last
    assert "unsafe/1/model.keras needs arbitrary code to load" in last  # not a missing class


def test_a_module_that_cannot_be_imported_stops_the_start(custom: tuple[Path, Path]) -> None:
    store, _ = custom
    done = serve(store, env={IMPORT_MODULES_ENV: MODULE})  # not on PYTHONPATH
    assert done.returncode == 1
    assert (f"cannot serve: cannot import module {MODULE!r} (--import-module): No module named "
            f"{MODULE!r}; it must be installed or lie in a folder on PYTHONPATH") in done.stderr


def test_with_its_module_imported_custom_models_serve_and_safe_mode_stays_on(
        custom: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    store, lib = custom
    monkeypatch.setenv("PYTHONPATH", str(lib))
    monkeypatch.setenv(IMPORT_MODULES_ENV, MODULE)
    with serve_process(store) as served, \
            Client(f"127.0.0.1:{served.port}", retries=0) as client:
        assert {s.name for s in client.models()} == {"layered", "subclassed"}
        assert [client.health(n) for n in ("layered", "subclassed", "unsafe")] == [
            "SERVING", "SERVING", "NOT_SERVING"]
        answers = {name: client.predict(reg_inputs(4), model=name, samples=40, seed=3)
                   for name in ("layered", "subclassed")}
    assert "not ready (failed to load, see above): unsafe v1" in served.started["msg"]
    assert any("needs arbitrary code to load" in line for line in served.lines)

    # The same answers as the stored models give in this process, once it imports the module.
    monkeypatch.syspath_prepend(str(lib))
    from server_testkit import predictor

    from mcdropout.loading import import_modules

    import_modules([MODULE])
    for name, answer in answers.items():
        assert answer.samples_used == 40
        np.testing.assert_array_equal(
            answer.mean, predictor(store, name, 1).predict(reg_inputs(4), 40, 3).mean)


def test_import_module_setting_from_flags_and_the_environment() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="mcdropout")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--import-module", "a.b", "--import-module", "c, d"])
    assert ServerSettings.from_args(args, {IMPORT_MODULES_ENV: "x"}).import_modules == (
        "a.b", "c", "d")  # flags replace the variable
    assert ServerSettings.from_env({IMPORT_MODULES_ENV: " x, y.z ,"}).import_modules == (
        "x", "y.z")
    assert ServerSettings().import_modules == ()
    assert "import_modules=x,y.z" in ServerSettings(import_modules=("x", "y.z")).describe()
    text = " ".join(subprocess.run([MCDROPOUT, "serve", "--help"], capture_output=True,
                                   text=True, check=True, timeout=60).stdout.split())
    assert "--import-module MODULE, --import-modules MODULE" in text
    assert "Importing runs its code with this process's rights" in text
    assert f"[env {IMPORT_MODULES_ENV}, comma-separated; default: unset]" in text
