"""The Kubernetes manifests: they render with kustomize, validate against the Kubernetes schemas
offline, and agree with the server's settings, the image and each other.

Rendering needs ``kubectl`` (or ``kustomize``) on PATH and validation the ``kubernetes-validate``
package (dev extra); each test skips with the reason when its tool is missing.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mcdropout_server.settings import ServerSettings, env_name

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
PVC = ROOT / "deploy" / "kubernetes-pvc"
HEALTH_SERVICES = ("", "mcdropout.v1.PredictionService")
# Oldest release whose schemas must accept the manifests: gRPC probes are GA from 1.27.
KUBERNETES_VERSIONS = ("1.27", "latest")


def render(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR`` (or ``kustomize build DIR``), parsed into objects."""
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(directory)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(directory)]
    else:
        pytest.skip("neither kubectl nor kustomize is on PATH")
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(BASE)


@pytest.fixture(scope="module")
def pvc() -> list[dict[str, Any]]:
    return render(PVC)


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def server(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = pod_spec(objects)["containers"]
    return next(c for c in containers if c["name"] == "server")  # type: ignore[no-any-return]


def settings(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The server's environment from the generated ConfigMap its container reads."""
    ref = server(objects)["envFrom"][0]["configMapRef"]["name"]
    return one(objects, "ConfigMap", ref)["data"]  # type: ignore[no-any-return]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- schema validation -----------------------------------------------------------------------------
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", ["base", "pvc"])
def test_rendered_objects_validate_against_the_kubernetes_schemas(
        variant: str, version: str, request: pytest.FixtureRequest) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    wanted = kv.latest_version() if version == "latest" else version
    objects = request.getfixturevalue(variant)
    for obj in objects:
        # strict: an unknown or misspelt field is an error, not silently ignored
        kv.validate(obj, wanted, strict=True)
    kinds = sorted(o["kind"] for o in objects)
    expected = ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                "Service", "Service"] + (["PersistentVolumeClaim"] if variant == "pvc" else [])
    assert kinds == sorted(expected)


def test_the_validator_rejects_a_misspelt_field(base: list[dict[str, Any]]) -> None:
    # Without this, a validator that accepts everything would pass the test above.
    kv = pytest.importorskip("kubernetes_validate")
    broken = copy.deepcopy(one(base, "Deployment"))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)


# -- agreement with the server and the image -------------------------------------------------------
def test_every_variable_in_the_configmap_is_a_server_setting(base: list[dict[str, Any]]) -> None:
    known = {env_name(name) for name in ServerSettings.__dataclass_fields__}
    env = settings(base)
    assert set(env) <= known, f"unknown settings: {sorted(set(env) - known)}"
    ServerSettings.from_env(env)  # and every value parses and is in range


def test_probes_use_grpc_health_on_the_served_port(base: list[dict[str, Any]]) -> None:
    container = server(base)
    port = int(settings(base)[env_name("port")])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = container[probe]["grpc"]
        assert grpc["port"] == port, probe
        assert grpc.get("service", "") in HEALTH_SERVICES, probe
    # readiness follows the prediction service, which turns NOT_SERVING when draining starts
    assert container["readinessProbe"]["grpc"]["service"] == "mcdropout.v1.PredictionService"


def test_pods_outlive_the_server_drain_time(base: list[dict[str, Any]]) -> None:
    grace = float(settings(base)[env_name("grace_seconds")])
    termination = pod_spec(base)["terminationGracePeriodSeconds"]
    assert termination >= grace + 5, (termination, grace)


def test_metrics_port_is_scraped(base: list[dict[str, Any]]) -> None:
    deployment = one(base, "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    metrics_port = int(settings(base)[env_name("metrics_port")])
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"
    ports = {p["name"]: p["containerPort"] for p in server(base)["ports"]}
    assert ports["metrics"] == metrics_port


def test_containers_run_unprivileged_with_a_read_only_root(base: list[dict[str, Any]]) -> None:
    spec = pod_spec(base)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == _dockerfile_uid()
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"] + spec.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), container["name"]
    mounts = {m["mountPath"]: m for m in server(base)["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "/tmp must be a writable emptyDir"


@pytest.mark.parametrize("variant", ["base", "pvc"])
def test_models_are_mounted_read_only_where_the_server_looks(
        variant: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(variant)
    root = settings(objects)[env_name("model_root")]
    mounts = {m["mountPath"]: m for m in server(objects)["volumeMounts"]}
    assert mounts[root]["readOnly"] is True
    volume = next(v for v in pod_spec(objects)["volumes"] if v["name"] == mounts[root]["name"])
    if variant == "pvc":
        claim = volume["persistentVolumeClaim"]
        assert claim["readOnly"] is True
        one(objects, "PersistentVolumeClaim", claim["claimName"])
        assert "initContainers" not in pod_spec(objects)
    else:
        assert "emptyDir" in volume
        (init,) = pod_spec(objects)["initContainers"]
        assert any(m["name"] == volume["name"] and not m.get("readOnly")
                   for m in init["volumeMounts"])


def test_services_hpa_and_pdb_point_at_the_pods(base: list[dict[str, Any]]) -> None:
    deployment = one(base, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)

    cluster_ip = one(base, "Service", "mcdropout")
    headless = one(base, "Service", "mcdropout-headless")
    assert cluster_ip["spec"]["type"] == "ClusterIP"
    assert "clusterIP" not in cluster_ip["spec"]
    assert headless["spec"]["clusterIP"] == "None"
    for service in (cluster_ip, headless):
        assert selects(service["spec"]["selector"], labels)
        grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["targetPort"] == "grpc"

    hpa = one(base, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    assert 1 < hpa["minReplicas"] < hpa["maxReplicas"]

    pdb = one(base, "PodDisruptionBudget")["spec"]
    assert selects(pdb["selector"]["matchLabels"], labels)
    # with the HPA's floor of replicas, a drain can always proceed and always leaves one serving
    assert pdb["maxUnavailable"] < hpa["minReplicas"]


def _dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users, "the Dockerfile must switch to a numeric USER"
    return int(users[-1])
