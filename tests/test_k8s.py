"""The Kubernetes manifests (deploy/kubernetes): rendered, validated, checked against the service.

No cluster, kubectl or kustomize is needed: tests/support/kustomize.py renders the three
variants (the base, the base with the ServiceMonitor component, the GPU overlay), every object is
validated offline against the Kubernetes OpenAPI schemas bundled with kubernetes-validate
(strict: an unknown or misspelt field fails), the ServiceMonitor (a CRD, not in those schemas)
by hand. The checks then hold the files to the real service: probe paths are GET routes of the
app, env keys are Settings fields and their values build a valid Settings, ports and selectors
agree, the grace period covers the drain. Each check is also run on a broken copy of the
manifests (MUTANTS) and must fail there. Where kubectl is installed, its own kustomize must
render what the test renderer renders.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from fastapi.routing import APIRoute

from service.api import create_app
from service.features.__main__ import build_parser
from service.settings import Settings
from tests.support.kustomize import KustomizeError, apply_operation, render

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
BASE = K8S / "base"
GPU = K8S / "overlays" / "gpu"
SERVICEMONITOR = K8S / "components" / "servicemonitor"
JOBS = K8S / "jobs"
#: Schemas the objects must validate against: the oldest Kubernetes the manifests claim to
#: support (matchLabelKeys of topology spread is beta from 1.27) and the newest bundled.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
NAME = "qin-service"
GPU_RESOURCE = "nvidia.com/gpu"

Objects = list[dict[str, Any]]


def base_with_component(root: Path) -> Path:
    """A kustomization of the base plus the ServiceMonitor component, written under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    spec = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(BASE, root)],
        "components": [os.path.relpath(SERVICEMONITOR, root)],
    }
    (root / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    return root


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Objects]:
    monitored = base_with_component(tmp_path_factory.mktemp("k8s") / "monitored")
    return {"base": render(BASE), "monitored": render(monitored), "gpu": render(GPU)}


@pytest.fixture(scope="module")
def get_routes() -> set[str]:
    app = create_app(Settings())  # no Redis and no model needed until start-up
    return {
        route.path
        for route in app.routes
        if isinstance(route, APIRoute) and "GET" in (route.methods or ())
    }


def jobs() -> Objects:
    return [
        doc for path in sorted(JOBS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
    ]


# ------------------------------------------------------------------------------------------------
# Lookups


def one(objects: Objects, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(objects: Objects) -> dict[str, Any]:
    containers = one(objects, "Deployment", NAME)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == NAME)


def pod_spec(objects: Objects) -> dict[str, Any]:
    return one(objects, "Deployment", NAME)["spec"]["template"]["spec"]


def config(objects: Objects) -> dict[str, str]:
    return one(objects, "ConfigMap", "qin-service-config")["data"]


def secret(objects: Objects) -> dict[str, str]:
    return one(objects, "Secret", "qin-service-secrets")["stringData"]


def named_port(spec: dict[str, Any], port: int | str) -> int:
    """A probe's or a targetPort's port as a number (a name is looked up in the container)."""
    if isinstance(port, int):
        return port
    matches = [p["containerPort"] for p in spec.get("ports", []) if p.get("name") == port]
    assert len(matches) == 1, f"no container port named {port!r}"
    return int(matches[0])


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def container_env(objects: Objects) -> dict[str, str]:
    """The container's own env, with downward-API CPU references resolved as the kubelet does
    (the limit divided by the divisor, rounded up)."""
    spec = container(objects)
    env: dict[str, str] = {}
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["resourceFieldRef"]
        assert ref.get("containerName", spec["name"]) == spec["name"]
        kind, _, resource = ref["resource"].partition(".")
        assert resource == "cpu", f"{item['name']}: only CPU references are resolved here"
        amount = cpu_cores(spec["resources"][kind]["cpu"]) / cpu_cores(ref.get("divisor", "1"))
        env[item["name"]] = str(math.ceil(amount))
    return env


def graceful_shutdown_s(request_timeout_s: float) -> int:
    """uvicorn's timeout_graceful_shutdown as service/__main__.py sets it."""
    return max(5, int(request_timeout_s * 2))


def prestop_sleep_s(spec: dict[str, Any]) -> float:
    command = spec["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"], command  # the serve image has python, no sleep
    compile(command[2], "preStop", "exec")
    match = re.fullmatch(r"import time; time\.sleep\((\d+(?:\.\d+)?)\)", command[2])
    assert match, command
    return float(match.group(1))


# ------------------------------------------------------------------------------------------------
# Checks: each takes the rendered objects and raises AssertionError. MUTANTS below breaks each.


def check_probes(objects: Objects, routes: set[str]) -> None:
    spec = container(objects)
    port = int(config(objects)["PORT"])
    assert spec["ports"][0]["containerPort"] == port, "containerPort != PORT"
    probes = {p: spec[p] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for name, probe in probes.items():
        get = probe["httpGet"]
        assert get["path"] in routes, f"{name}: {get['path']} is not a GET route of the app"
        assert named_port(spec, get["port"]) == port, f"{name}: port != PORT"
        assert probe["timeoutSeconds"] < probe["periodSeconds"], name
    startup = probes["startupProbe"]
    # Warm-up room: uvicorn answers nothing until the model is loaded and warmed.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    service = one(objects, "Service", NAME)
    (service_port,) = service["spec"]["ports"]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert service_port["name"] == "http" and service_port["port"] == port
    assert named_port(spec, service_port["targetPort"]) == port, "Service targetPort != PORT"


def check_env_keys(objects: Objects) -> None:
    fields = {name.upper() for name in Settings.model_fields}
    for source, keys in (
        ("ConfigMap", config(objects)),
        ("Secret", secret(objects)),
        ("container env", container_env(objects)),
    ):
        unknown = set(keys) - fields
        assert not unknown, f"{source}: not settings: {sorted(unknown)}"
    spec = container(objects)
    assert {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in spec["envFrom"]} == {
        "qin-service-config",
        "qin-service-secrets",
    }
    assert set(config(objects)).isdisjoint(secret(objects)), "a key both in ConfigMap and Secret"
    assert not {"REDIS_URL", "API_KEY", "ADMIN_API_KEY"} & set(config(objects)), "secret in config"


def settings_from(objects: Objects, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a pod builds: the environment of ConfigMap, Secret and container env only."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    env = {**config(objects), **secret(objects), **container_env(objects)}  # env wins: k8s order
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def check_settings(objects: Objects, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(objects, monkeypatch)
    spec = container(objects)
    assert settings.redis_cluster, "REDIS_CLUSTER must be true: the Redis is a cluster"
    assert urlsplit(settings.redis_url).password, "REDIS_URL carries the cluster's password"
    assert settings.host == "0.0.0.0", "HOST must be 0.0.0.0 for probes and the Service"
    assert settings.port == spec["ports"][0]["containerPort"]
    assert settings.api_key is not None and settings.admin_api_key is not None
    mounts = {m["mountPath"]: m for m in spec["volumeMounts"]}
    assert mounts["/models"].get("readOnly") is True
    assert settings.model_path.parent.as_posix() == "/models"
    limit = cpu_cores(spec["resources"]["limits"]["cpu"])
    assert limit == int(limit), "a whole number of cores: onnxruntime's threads = the limit"
    assert settings.intra_op_threads == int(limit), "INTRA_OP_THREADS != the CPU limit"


def check_resources(objects: Objects) -> None:
    resources = container(objects)["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), f"cpu and memory {kind}"
    assert cpu_cores(resources["requests"]["cpu"]) <= cpu_cores(resources["limits"]["cpu"])


def check_selectors(objects: Objects) -> None:
    deployment = one(objects, "Deployment", NAME)
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items(), "the Deployment's selector misses its pods"
    assert one(objects, "Service", NAME)["spec"]["selector"] == selector
    pdb = one(objects, "PodDisruptionBudget", NAME)
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["maxUnavailable"] == 1
    hpa = one(objects, "HorizontalPodAutoscaler", NAME)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", NAME)
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert "replicas" not in deployment["spec"], "the HPA owns replicas: an apply would reset them"
    spreads = pod_spec(objects)["topologySpreadConstraints"]
    by_node = [s for s in spreads if s["topologyKey"] == "kubernetes.io/hostname"]
    assert by_node, "no spread across nodes"
    for spread in spreads:
        assert spread["labelSelector"]["matchLabels"].items() <= labels.items()


def check_shutdown(objects: Objects) -> None:
    spec = container(objects)
    timeout = float(
        config(objects).get("REQUEST_TIMEOUT_S", Settings.model_fields["request_timeout_s"].default)
    )
    drain = float(
        config(objects).get("SHUTDOWN_DRAIN_S", Settings.model_fields["shutdown_drain_s"].default)
    )
    needed = prestop_sleep_s(spec) + drain + graceful_shutdown_s(timeout)
    grace = pod_spec(objects)["terminationGracePeriodSeconds"]
    assert grace > needed, f"grace {grace} s <= preStop + drain + graceful shutdown {needed} s"


def check_security(objects: Objects) -> None:
    pod = pod_spec(objects)
    spec = container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    user = re.findall(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)[0]
    assert pod["securityContext"].get("runAsUser", int(user)) == int(user)
    context = spec["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
    assert context["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = next(m for m in spec["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in volumes[tmp["name"]], "/tmp must be a writable emptyDir"
    models = next(m for m in spec["volumeMounts"] if m["mountPath"] == "/models")
    claim = volumes[models["name"]]["persistentVolumeClaim"]
    assert claim["claimName"] == "qin-models" and models["readOnly"] is True
    one(objects, "PersistentVolumeClaim", "qin-models")


def check_cpu_variant(objects: Objects) -> None:
    assert GPU_RESOURCE not in yaml.safe_dump(objects), "the base asks for a GPU"
    assert config(objects)["PROVIDER"] != "cuda"
    assert container(objects)["image"] == "qin-service:cpu"


def check_gpu_variant(objects: Objects) -> None:
    spec = container(objects)
    assert spec["resources"]["limits"].get(GPU_RESOURCE) == 1, "no GPU limit"
    assert config(objects)["PROVIDER"] == "cuda"
    assert spec["image"] == "qin-service:gpu"
    tolerations = pod_spec(objects).get("tolerations", [])
    assert any(t["key"] == GPU_RESOURCE for t in tolerations), "no toleration of GPU nodes"


def check_servicemonitor(objects: Objects, routes: set[str]) -> None:
    """The CRD by hand: its schema is not among kubernetes-validate's."""
    monitor = one(objects, "ServiceMonitor", NAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) <= {"apiVersion", "kind", "metadata"} | {"spec"}
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    service = one(objects, "Service", NAME)
    wanted = spec["selector"]["matchLabels"]
    assert wanted and wanted.items() <= service["metadata"]["labels"].items(), "selects no Service"
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert endpoint["port"] in ports, f"endpoint port {endpoint['port']} not on the Service"
        assert endpoint["path"] == "/metrics" and endpoint["path"] in routes
        interval, timeout = (
            int(endpoint[k].removesuffix("s")) for k in ("interval", "scrapeTimeout")
        )
        assert timeout <= interval


# ------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("variant", ["base", "monitored", "gpu"])
def test_every_object_validates(variants: dict[str, Objects], variant: str) -> None:
    objects = variants[variant]
    assert {o["kind"] for o in objects} >= {
        "ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service",
        "PodDisruptionBudget", "HorizontalPodAutoscaler",
    }  # fmt: skip
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            continue  # a CRD: test_servicemonitor
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_jobs_validate_and_fit_the_base(variants: dict[str, Objects]) -> None:
    base = variants["base"]
    names = {(o["kind"], o["metadata"]["name"]) for o in base}
    found = jobs()
    assert {o["kind"] for o in found} == {"Job", "Pod"}
    for obj in found:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        pod = obj["spec"]["template"]["spec"] if obj["kind"] == "Job" else obj["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims == {"qin-models"}
        for spec in pod["containers"]:
            assert spec["image"].startswith("qin-train"), "jobs run the train image (load extra)"
            for ref in spec.get("envFrom", []):
                kind = "ConfigMap" if "configMapRef" in ref else "Secret"
                assert (kind, (ref.get("configMapRef") or ref["secretRef"])["name"]) in names


def test_load_job_is_a_cluster_load_of_the_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    job = one(jobs(), "Job", "qin-load-features")
    (spec,) = job["spec"]["template"]["spec"]["containers"]
    command = spec["command"]
    assert command[:3] == ["python", "-m", "service.features"]
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    args = build_parser(Settings()).parse_args(command[3:])  # the real command line
    assert args.command == "load" and args.cluster is True
    mount = next(m for m in spec["volumeMounts"] if m["name"] == "models")
    assert Path(args.data).parent == Path(mount["mountPath"])
    demo = one(jobs(), "Job", "qin-demo-artifacts")
    (spec,) = demo["spec"]["template"]["spec"]["containers"]
    assert (ROOT / spec["command"][-1]).is_file()
    env = {e["name"]: e["value"] for e in spec["env"]}
    assert env["DEMO_DIR"] == spec["volumeMounts"][0]["mountPath"] == "/models"


@pytest.mark.parametrize("variant", ["base", "monitored", "gpu"])
def test_manifests_fit_the_service(
    variants: dict[str, Objects],
    get_routes: set[str],
    monkeypatch: pytest.MonkeyPatch,
    variant: str,
) -> None:
    objects = variants[variant]
    check_probes(objects, get_routes)
    check_env_keys(objects)
    check_settings(objects, monkeypatch)
    check_resources(objects)
    check_selectors(objects)
    check_shutdown(objects)
    check_security(objects)
    if variant == "gpu":
        check_gpu_variant(objects)
        assert settings_from(objects, monkeypatch).provider == "cuda"
    else:
        check_cpu_variant(objects)
    if variant == "base":
        assert not [o for o in objects if o["kind"] == "ServiceMonitor"]
    else:
        check_servicemonitor(objects, get_routes)


def _mutate(path: str, value: Any = None, op: str = "replace") -> Callable[[Objects], None]:
    """A mutation of the object of ``path``'s first segment (Kind/name), then a JSON6902 op."""
    kind, name, pointer = path.split(":", 2)

    def mutate(objects: Objects) -> None:
        operation = {"op": op, "path": pointer} | ({} if op == "remove" else {"value": value})
        apply_operation(one(objects, kind, name), operation)

    return mutate


D = "Deployment:qin-service:/spec/template/spec"
C = f"{D}/containers/0"
CM = "ConfigMap:qin-service-config:/data"
SECRET = "Secret:qin-service-secrets:/stringData"
HPA = "HorizontalPodAutoscaler:qin-service:/spec"
SM = "ServiceMonitor:qin-service:/spec"
LABEL = "app.kubernetes.io~1"
#: Broken copies of the manifests: name -> (the check that must fail, the breakage).
MUTANTS = {
    "probe path not a route": ("probes", _mutate(f"{C}/startupProbe/httpGet/path", "/started")),
    "probe on another port": ("probes", _mutate(f"{C}/livenessProbe/httpGet/port", 8080)),
    "PORT not the containerPort": ("probes", _mutate(f"{CM}/PORT", "9000")),
    "Service targetPort": ("probes", _mutate("Service:qin-service:/spec/ports/0/targetPort", 81)),
    "no warm-up room": ("probes", _mutate(f"{C}/startupProbe/failureThreshold", 3)),
    "unknown env key": ("env", _mutate(f"{CM}/REDIS_CLUSTR", "true", "add")),
    "unknown secret key": ("env", _mutate(f"{SECRET}/APIKEY", "x", "add")),
    "secret in the ConfigMap": ("env", _mutate(f"{CM}/API_KEY", "x", "add")),
    "bad setting value": ("settings", _mutate(f"{CM}/LOG_LEVEL", "verbose")),
    "not a cluster": ("settings", _mutate(f"{CM}/REDIS_CLUSTER", "false")),
    "cluster db 1": ("settings", _mutate(f"{SECRET}/REDIS_URL", "redis://:p@r:6379/1")),
    "no password": ("settings", _mutate(f"{SECRET}/REDIS_URL", "redis://r:6379/0")),
    "threads not the limit": ("settings", _mutate(f"{C}/resources/limits/cpu", "1500m")),
    "no memory limit": ("resources", _mutate(f"{C}/resources/limits/memory", op="remove")),
    "Service selects nothing": (
        "selectors",
        _mutate(f"Service:qin-service:/spec/selector/{LABEL}name", "x"),
    ),
    "PDB selector": (
        "selectors",
        _mutate(f"PodDisruptionBudget:qin-service:/spec/selector/matchLabels/{LABEL}instance", "y"),
    ),
    "HPA target": ("selectors", _mutate(f"{HPA}/scaleTargetRef/name", "qin")),
    "HPA minimum 1": ("selectors", _mutate(f"{HPA}/minReplicas", 1)),
    "replicas set": ("selectors", _mutate("Deployment:qin-service:/spec/replicas", 2, "add")),
    "no spread across nodes": (
        "selectors",
        _mutate(f"{D}/topologySpreadConstraints/0", op="remove"),
    ),
    "short grace period": ("shutdown", _mutate(f"{D}/terminationGracePeriodSeconds", 15)),
    "longer requests": ("shutdown", _mutate(f"{CM}/REQUEST_TIMEOUT_S", "10")),
    "sleep binary": ("shutdown", _mutate(f"{C}/lifecycle/preStop/exec/command", ["sleep", "10"])),
    "writable root": ("security", _mutate(f"{C}/securityContext/readOnlyRootFilesystem", False)),
    "model volume writable": ("security", _mutate(f"{C}/volumeMounts/0/readOnly", False)),
    "root allowed": ("security", _mutate(f"{D}/securityContext/runAsNonRoot", False)),
    "GPU in the base": ("cpu", _mutate(f"{C}/resources/limits/nvidia.com~1gpu", 1, "add")),
    "monitor selects nothing": (
        "monitor",
        _mutate(f"{SM}/selector/matchLabels/{LABEL}part-of", "z"),
    ),
    "monitor port": ("monitor", _mutate(f"{SM}/endpoints/0/port", "metrics")),
    "monitor path": ("monitor", _mutate(f"{SM}/endpoints/0/path", "/prometheus")),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_checks_fail_on_broken_manifests(
    variants: dict[str, Objects], get_routes: set[str], monkeypatch: pytest.MonkeyPatch, mutant: str
) -> None:
    check, mutate = MUTANTS[mutant]
    checks: dict[str, Callable[[Objects], None]] = {
        "probes": lambda o: check_probes(o, get_routes),
        "env": check_env_keys,
        "settings": lambda o: check_settings(o, monkeypatch),
        "resources": check_resources,
        "selectors": check_selectors,
        "shutdown": check_shutdown,
        "security": check_security,
        "cpu": check_cpu_variant,
        "monitor": lambda o: check_servicemonitor(o, get_routes),
    }
    objects = copy.deepcopy(variants["monitored"])
    checks[check](objects)  # passes as it is
    mutate(objects)
    with pytest.raises((AssertionError, ValueError)):  # pydantic's ValidationError is a ValueError
        checks[check](objects)


def test_gpu_check_fails_on_the_base(variants: dict[str, Objects]) -> None:
    with pytest.raises(AssertionError):
        check_gpu_variant(variants["base"])
    with pytest.raises(AssertionError):
        check_cpu_variant(variants["gpu"])


def test_schema_validation_is_strict(variants: dict[str, Objects]) -> None:
    deployment = copy.deepcopy(one(variants["base"], "Deployment", NAME))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


# ------------------------------------------------------------------------------------------------
# The renderer


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(KustomizeError, match="commonLabels"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(BASE, tmp_path)}]\n"
        "patches: [{path: p.yaml, target: {kind: Deployment, name: nothing}}]\n"
    )
    (tmp_path / "p.yaml").write_text("[]\n")
    with pytest.raises(KustomizeError, match="matches no object"):
        render(tmp_path)


def test_json6902_operations() -> None:
    doc: dict[str, Any] = {"a": {"b/c": [1, 2]}}
    apply_operation(doc, {"op": "add", "path": "/a/b~1c/-", "value": 3})
    apply_operation(doc, {"op": "add", "path": "/a/b~1c/0", "value": 0})
    apply_operation(doc, {"op": "replace", "path": "/a/b~1c/1", "value": 9})
    apply_operation(doc, {"op": "remove", "path": "/a/b~1c/2"})
    apply_operation(doc, {"op": "test", "path": "/a/b~1c", "value": [0, 9, 3]})
    with pytest.raises(KustomizeError):
        apply_operation(doc, {"op": "replace", "path": "/a/missing", "value": 1})
    with pytest.raises(KustomizeError):
        apply_operation(doc, {"op": "move", "from": "/a", "path": "/b"})


@pytest.mark.skipif(
    shutil.which("kubectl") is None and shutil.which("kustomize") is None,
    reason="neither kubectl nor kustomize is installed: the test renderer is not cross-checked",
)
def test_kustomize_renders_the_same(tmp_path: Path) -> None:
    """Where kustomize itself (or kubectl's) is installed, the two renderers agree."""
    tool = ["kustomize", "build"] if shutil.which("kustomize") else ["kubectl", "kustomize"]
    monitored = base_with_component(tmp_path / "monitored")
    for directory in (BASE, monitored, GPU):
        done = subprocess.run(
            [*tool, str(directory)], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr

        def key(obj: dict[str, Any]) -> tuple[str, str]:
            return obj["kind"], obj["metadata"]["name"]

        theirs = sorted(yaml.safe_load_all(done.stdout), key=key)
        assert sorted(render(directory), key=key) == theirs, directory


def test_docs_name_files_that_exist() -> None:
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    paths = set(re.findall(r"deploy/kubernetes/[\w./-]*[\w]", text))
    assert {"deploy/kubernetes/base", "deploy/kubernetes/overlays/gpu"} <= paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/kubernetes.md names missing files: {missing}"
    for link in re.findall(r"\]\(([\w.]+\.md)(?:#[\w-]+)?\)", text):
        assert (ROOT / "docs" / link).is_file(), link
    assert "(kubernetes.md)" in (ROOT / "docs" / "operations.md").read_text()
