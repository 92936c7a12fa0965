"""deploy/kserve: the InferenceService renders with kustomize, validates offline against KServe's
schema, passes the rules KServe's admission webhook applies, and agrees with the server, the image
and deploy/kubernetes.

The schema (deploy/kserve/schema/, generated from the kserve 0.21 SDK's models) admits no field
KServe's types do not have; the Kubernetes types it embeds are checked against Kubernetes' own
schemas from the ``kubernetes-validate`` package (dev extra), for the oldest release with gRPC
probes and the newest it ships. Rendering needs ``kubectl`` or ``kustomize``; each test skips
with the reason when its tool is missing.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from mcdropout_server.settings import ServerSettings, env_name
from test_manifests import BASE, KUBERNETES_VERSIONS, one, render
from test_manifests import server as kubernetes_server

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "deploy" / "kserve"
SCHEMA = json.loads((KSERVE / "schema" / "inferenceservice-v1beta1.json").read_text())
# From KServe's admission webhook (pkg/apis/serving/v1beta1/inference_service_validation.go and
# pkg/validation/env_policy.go, v0.21).
ISVC_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
HPA_METRICS = ("cpu", "memory")
BLOCKED_ENV = ("PYTHONPATH",)
PROTOCOLS = ("v1", "v2")
IMPLEMENTATIONS = ("model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx",
                   "huggingface", "pmml", "lightgbm", "paddle")
SERVING_CONTAINER = "kserve-container"  # KServe's name for a predictor's serving container


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render(KSERVE)


@pytest.fixture(scope="module")
def isvc(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    return one(rendered, "InferenceService")


def predictor(isvc: dict[str, Any]) -> dict[str, Any]:
    return isvc["spec"]["predictor"]  # type: ignore[no-any-return]


def container(isvc: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in predictor(isvc)["containers"]  # type: ignore[no-any-return]
                if c["name"] == SERVING_CONTAINER)


def env(isvc: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(isvc)["env"]}


def validator(version: str) -> Any:
    """A strict validator of the KServe schema, Kubernetes' types of ``version`` ("latest", or
    the newest shipped release not above it)."""
    jsonschema = pytest.importorskip("jsonschema")
    referencing = pytest.importorskip("referencing")
    kv = pytest.importorskip("kubernetes_validate.utils")
    releases = [v for v in kv.all_versions()
                if version == "latest" or _release(v) <= _release(version)]
    shipped = releases[-1]
    kubernetes = kv.schema_contents(
        f"kubernetes-json-schema/v{shipped}-local-strict/_definitions.json", shipped)
    registry = referencing.Registry().with_resource(
        kubernetes["$id"], referencing.Resource.from_contents(kubernetes))
    return jsonschema.Draft202012Validator(SCHEMA, registry=registry)


def _release(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


# -- schema validation -----------------------------------------------------------------------------
def test_renders_an_inference_service_and_a_disruption_budget(
        rendered: list[dict[str, Any]]) -> None:
    assert sorted(o["kind"] for o in rendered) == ["InferenceService", "PodDisruptionBudget"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_inference_service_validates_against_the_kserve_schema(isvc: dict[str, Any],
                                                                  version: str) -> None:
    errors = sorted(validator(version).iter_errors(isvc), key=lambda e: list(e.path))
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_disruption_budget_validates_against_the_kubernetes_schema(
        rendered: list[dict[str, Any]], version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    kv.validate(one(rendered, "PodDisruptionBudget"),
                kv.latest_version() if version == "latest" else version, strict=True)


@pytest.mark.parametrize(("where", "field"), [
    ("predictor", "minReplica"),           # a KServe field misspelt
    ("container", "readinesProbe"),        # a Kubernetes field misspelt inside it
    ("probe", "prot"),                     # and one level further down
])
def test_the_validator_rejects_a_misspelt_field(isvc: dict[str, Any], where: str,
                                                field: str) -> None:
    # Without this, a schema that accepts everything would pass the test above.
    broken = copy.deepcopy(isvc)
    target = {"predictor": predictor(broken), "container": container(broken),
              "probe": container(broken)["readinessProbe"]["grpc"]}[where]
    target[field] = 1
    errors = [e.message for e in validator("latest").iter_errors(broken)]
    assert errors == [f"Additional properties are not allowed ({field!r} was unexpected)"]


def test_the_schema_is_of_the_pinned_kserve_release() -> None:
    pinned = re.search(r'"kserve==([0-9.]+)\.\*"', (ROOT / "scripts" / "kserve-venv.sh").read_text())
    assert pinned, "scripts/kserve-venv.sh pins kserve==X.Y.*"
    assert f"from the kserve {pinned[1]}." in SCHEMA["$comment"]


# -- KServe's admission rules ----------------------------------------------------------------------
def test_kserve_admits_it(isvc: dict[str, Any]) -> None:
    annotations = isvc["metadata"]["annotations"]
    spec = predictor(isvc)
    assert ISVC_NAME.fullmatch(isvc["metadata"]["name"])
    # a custom predictor: containers, and none of the built-in implementations besides
    assert spec["containers"] and not set(IMPLEMENTATIONS) & set(spec)
    # Standard mode with the HPA class is the only way KServe takes a CPU scale metric
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa"
    assert spec["scaleMetric"] in HPA_METRICS and 1 <= spec["scaleTarget"] <= 100
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
    for each in spec["containers"] + spec.get("initContainers", []):
        names = {e["name"] for e in each.get("env", [])}
        assert not names & set(BLOCKED_ENV), each["name"]
    assert env(isvc).get("PROTOCOL", "v1") in PROTOCOLS


# -- agreement with the server, the image and deploy/kubernetes ------------------------------------
def test_every_mcdropout_variable_is_a_server_setting(isvc: dict[str, Any]) -> None:
    known = {env_name(name) for name in ServerSettings.__dataclass_fields__}
    ours = {k: v for k, v in env(isvc).items() if k.startswith("MCDROPOUT_")}
    assert set(ours) <= known, f"unknown settings: {sorted(set(ours) - known)}"
    ServerSettings.from_env(ours)  # and every value parses and is in range


def test_grpc_is_the_first_port_named_h2c_and_probed_by_grpc_health(isvc: dict[str, Any]) -> None:
    served = container(isvc)
    port = int(env(isvc)[env_name("port")])
    first = served["ports"][0]
    assert (first["name"], first["containerPort"]) == ("h2c", port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert served[probe]["grpc"]["port"] == port, probe
    # readiness follows the prediction service, which turns NOT_SERVING when draining starts
    assert served["readinessProbe"]["grpc"]["service"] == "mcdropout.v1.PredictionService"


def test_metrics_port_is_declared_and_scraped(isvc: dict[str, Any]) -> None:
    port = int(env(isvc)[env_name("metrics_port")])
    annotations = predictor(isvc)["annotations"]
    assert (annotations["prometheus.io/scrape"], int(annotations["prometheus.io/port"]),
            annotations["prometheus.io/path"]) == ("true", port, "/metrics")
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container(isvc)["ports"]


def test_pods_outlive_the_server_drain_time(isvc: dict[str, Any]) -> None:
    grace = float(env(isvc)[env_name("grace_seconds")])
    assert predictor(isvc)["terminationGracePeriodSeconds"] >= grace + 5


def test_models_are_mounted_read_only_where_the_server_looks(isvc: dict[str, Any]) -> None:
    spec = predictor(isvc)
    mounts = {m["mountPath"]: m for m in container(isvc)["volumeMounts"]}
    models = mounts[env(isvc)[env_name("model_root")]]
    assert models["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == models["name"])
    assert "emptyDir" in volume
    (init,) = spec["initContainers"]
    assert any(m["name"] == volume["name"] and not m.get("readOnly") for m in init["volumeMounts"])


def test_the_pod_matches_the_kubernetes_deployment(isvc: dict[str, Any]) -> None:
    # The same image, user, probes, limits and hardening as deploy/kubernetes: the two must not
    # drift apart (only the port's name, KServe's container name and where settings come from
    # differ).
    base = render(BASE)
    deployment = one(base, "Deployment")["spec"]["template"]["spec"]
    ours, theirs = container(isvc), kubernetes_server(base)
    for key in ("image", "startupProbe", "readinessProbe", "livenessProbe", "resources",
                "securityContext", "volumeMounts"):
        assert ours[key] == theirs[key], key
    assert [p["containerPort"] for p in ours["ports"]] == [
        p["containerPort"] for p in theirs["ports"]]
    spec = predictor(isvc)
    for key in ("securityContext", "terminationGracePeriodSeconds", "automountServiceAccountToken",
                "initContainers", "volumes"):
        assert spec[key] == deployment[key], key  # the user: the Dockerfile's (test_manifests)


def test_the_disruption_budget_covers_the_predictor(rendered: list[dict[str, Any]],
                                                    isvc: dict[str, Any]) -> None:
    pdb = one(rendered, "PodDisruptionBudget")["spec"]
    # KServe labels every pod of an InferenceService with its name; this one has no other
    # component, so the selector takes exactly the predictor's pods.
    assert pdb["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    assert set(isvc["spec"]) == {"predictor"}
    assert pdb["maxUnavailable"] < predictor(isvc)["minReplicas"]
