"""The deployment files: docker compose, the Dockerfile, Prometheus and Grafana provisioning.

No Docker engine is needed: the files are read as data and checked against each other and against
the real service (every metric a dashboard panel queries must be in the service's /metrics).
CI also validates the compose files with ``docker-compose config`` and lints the Dockerfile
with hadolint (``.ci/run``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.service_stack import ServedModel, ServiceThread

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = ROOT / "deploy" / "docker-compose.gpu.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "qin.json"
DOCKERFILE = ROOT / "Dockerfile"

#: PromQL words that look like metric names but are not.
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "atan2", "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar",
    "topk", "bottomk", "quantile", "count_values", "limitk", "limit_ratio", "inf", "nan",
}  # fmt: skip
#: Labels Prometheus itself adds to every scraped series.
TARGET_LABELS = {"job", "instance"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


#: The scoring replicas of docker-compose.yml (one definition), in the balancer's order.
REPLICAS = ("service", "service-2")


def compose_services() -> dict[str, Any]:
    return load_yaml(COMPOSE)["services"]


def dashboard_targets() -> list[dict[str, Any]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target for panel in panels for target in panel["targets"]]


# ------------------------------------------------------------------------------------------------
# PromQL and the Prometheus text format


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and label names one PromQL expression uses."""
    labels: set[str] = set()
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings can hold anything
    for matchers in re.findall(r"\{([^}]*)\}", text):
        labels.update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors and their $__rate_interval
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        labels.update(name.strip() for name in grouping.split(",") if name.strip())
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    # Whole words only ((?![\w:]) stops backtracking into "su" of "sum("), not calls.
    words = re.findall(r"(?<![\w.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    return {word for word in words if word.lower() not in PROMQL_WORDS}, labels


def exposed_names(text: str) -> tuple[set[str], set[str]]:
    """Every series name a Prometheus query may use for the families in a /metrics body (samples
    or not: a labelled counter without children is declared but has no sample yet), and every
    label name of its samples."""
    names: set[str] = set()
    labels: set[str] = set()
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
    }
    for family in text_string_to_metric_families(text):
        # The client names a counter family with or without _total depending on its version.
        base = family.name.removesuffix("_total") if family.type == "counter" else family.name
        names.update(base + suffix for suffix in suffixes.get(family.type, ("",)))
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    return names, labels


def test_promql_names_are_parsed_out_of_expressions() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, stage) (rate(qin_x_bucket{status!~"2..",'
        'job="a{b}"}[$__rate_interval]))) / ignoring(stage) sum without (job) (qin_y_total) '
        "+ on(instance) group_left max(qin_z offset 5m) and topk(3, qin_w)"
    )
    assert promql_names(expr) == (
        {"qin_x_bucket", "qin_y_total", "qin_z", "qin_w"},
        {"le", "stage", "status", "job", "instance"},
    )


# ------------------------------------------------------------------------------------------------
# The dashboard against the real service


@pytest.fixture
def metrics_text(service: ServiceThread, served_model: ServedModel) -> str:
    """The real /metrics after one scored request and one 422, so labelled series exist."""
    with httpx.Client(base_url=service.url, timeout=30) as http:
        user = int(served_model.features.user_ids[0])
        assert http.post("/score", json={"user_id": user, "item_ids": [1, 2, 3]}).status_code == 200
        assert http.post("/score", json={"user_id": user, "item_ids": []}).status_code == 422
        response = http.get("/metrics")
    assert response.status_code == 200
    return response.text


def test_every_dashboard_metric_and_label_is_in_the_service_metrics(metrics_text: str) -> None:
    exposed, exposed_labels = exposed_names(metrics_text)
    assert {"qin_requests_total", "qin_request_duration_seconds_bucket"} <= exposed
    for target in dashboard_targets():
        names, labels = promql_names(target["expr"])
        assert names, f"no metric in {target['expr']!r}"
        assert names <= exposed, f"{sorted(names - exposed)} not in /metrics: {target['expr']!r}"
        unknown = labels - exposed_labels - TARGET_LABELS
        assert not unknown, f"labels {sorted(unknown)} not in /metrics: {target['expr']!r}"


# ------------------------------------------------------------------------------------------------
# Dashboard and Grafana provisioning


def test_the_dashboard_covers_the_service_metrics() -> None:
    exprs = [target["expr"] for target in dashboard_targets()]
    used = set().union(*(promql_names(expr)[0] for expr in exprs))
    assert {
        "qin_requests_total",
        "qin_request_duration_seconds_bucket",
        "qin_stage_duration_seconds_bucket",
        "qin_batch_candidates_sum",
        "qin_batch_candidates_count",
        "qin_batch_requests_sum",
        "qin_batch_requests_count",
        "qin_queue_depth",
        "qin_queue_candidates",
        "qin_item_cache_hits_total",
        "qin_item_cache_misses_total",
        "qin_shed_requests_total",
        "qin_in_flight",
        "qin_in_flight_limit",
        "qin_model_info",
    } <= used
    latency = " ".join(e for e in exprs if "qin_request_duration_seconds_bucket" in e)
    assert set(re.findall(r"histogram_quantile\(([\d.]+)", latency)) == {"0.5", "0.95", "0.99"}
    assert any("status!~" in e and "qin_requests_total" in e for e in exprs), "no error panel"


def test_the_dashboard_is_a_valid_grafana_model() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasource_uid = provisioned_datasource()["uid"]
    assert dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in {"timeseries", "stat"} and panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in "xywh")
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24
        covered = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"panel {panel['title']!r} overlaps another"
        cells |= covered
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource_uid}
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids)
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["datasource"]["uid"] == datasource_uid


def provisioned_datasource() -> dict[str, Any]:
    provisioning = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    assert provisioning["apiVersion"] == 1
    (datasource,) = provisioning["datasources"]
    return dict(datasource)


def test_the_datasource_is_the_stacks_prometheus() -> None:
    datasource = provisioned_datasource()
    assert datasource["type"] == "prometheus" and datasource["access"] == "proxy"
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose_services()
    assert datasource["isDefault"] is True
    interval = load_yaml(PROMETHEUS)["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == interval


def test_the_dashboard_provider_reads_the_mounted_dashboards() -> None:
    provisioning = load_yaml(GRAFANA / "provisioning" / "dashboards" / "qin.yml")
    assert provisioning["apiVersion"] == 1
    (provider,) = provisioning["providers"]
    assert provider["type"] == "file"
    grafana = compose_services()["grafana"]
    mounts = dict(bind_mounts(grafana))
    assert mounts[provider["options"]["path"]] == GRAFANA / "dashboards"
    assert mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent.as_posix() == provider["options"]["path"] and home.name == DASHBOARD.name


# ------------------------------------------------------------------------------------------------
# Prometheus


def test_prometheus_scrapes_the_service_metrics() -> None:
    config = load_yaml(PROMETHEUS)
    assert config["global"]["scrape_interval"] == "5s"
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "qin-service"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (targets,) = [group["targets"] for group in job["static_configs"]]
    assert targets == [f"{name}:8000" for name in REPLICAS]
    assert set(REPLICAS) <= set(compose_services())
    assert "PORT=8000" in dockerfile_stage("serve").env
    # and the balancer's own exporter, on the stats address haproxy.cfg binds in the stack
    (lb_job,) = [job for job in config["scrape_configs"] if job["job_name"] == "haproxy"]
    (lb_targets,) = [group["targets"] for group in lb_job["static_configs"]]
    stats_port = compose_services()["lb"]["environment"]["QIN_LB_STATS_BIND"].rsplit(":")[-1]
    assert lb_targets == [f"lb:{stats_port}"]


def test_prometheus_is_mounted_with_this_config() -> None:
    prometheus = compose_services()["prometheus"]
    assert dict(bind_mounts(prometheus))["/etc/prometheus/prometheus.yml"] == PROMETHEUS
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


# ------------------------------------------------------------------------------------------------
# docker compose


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, Path]]:
    """(container path, host path) of a service's bind mounts (short syntax, ./ relative)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts.append((target, (ROOT / source).resolve()))
    return mounts


def test_every_service_is_health_checked_or_the_one_shot_job() -> None:
    services = compose_services()
    one_shot = {
        name
        for service in services.values()
        for name, need in service.get("depends_on", {}).items()
        if need["condition"] == "service_completed_successfully"
    }
    assert one_shot == {"artifacts"}
    for name, service in services.items():
        if name in one_shot:
            assert service["restart"] == "no" and "healthcheck" not in service
        elif name == "lb":  # no HTTP client in the HAProxy image; its replicas are checked
            assert "healthcheck" not in service and service["restart"] == "unless-stopped"
        else:
            assert service["healthcheck"]["test"][0] == "CMD", f"{name} has no healthcheck"
            # podman-compose 1.0.3 joins the words into one unquoted shell line: plain words only.
            for word in service["healthcheck"]["test"][1:]:
                assert re.fullmatch(r"[\w./:=-]+", word), f"{name}: {word!r} is not a plain word"
            assert service["restart"] == "unless-stopped"
        for needed, need in service.get("depends_on", {}).items():
            assert needed in services
            expected = "service_completed_successfully" if needed in one_shot else "service_healthy"
            if needed == "lb":
                expected = "service_started"
            assert need["condition"] == expected, f"{name} -> {needed}"


def test_the_service_waits_for_redis_and_the_artifacts_and_reads_the_model_volume() -> None:
    services = compose_services()
    assert services["service-2"] == services["service"]  # one definition, two replicas
    service, artifacts = services["service"], services["artifacts"]
    assert service["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "artifacts": {"condition": "service_completed_successfully"},
    }
    assert artifacts["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert "models:/models:ro" in service["volumes"] and "models:/models" in artifacts["volumes"]
    assert service["environment"]["MODEL_PATH"] == "/models/model.onnx"
    assert service["environment"]["REDIS_URL"] == artifacts["environment"]["REDIS_URL"]
    assert service["environment"]["REDIS_URL"].startswith("redis://redis:6379/")
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert service["build"]["target"] == "serve" and artifacts["build"]["target"] == "train"


def test_redis_keeps_its_data_on_a_named_volume() -> None:
    compose = load_yaml(COMPOSE)
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    (volume,) = redis["volumes"]
    assert volume.split(":")[0] in compose["volumes"]


def test_cpu_by_default_and_the_gpu_override_reserves_a_gpu() -> None:
    base = compose_services()["service"]
    assert base["build"]["args"]["DEVICE"] == "cpu" and "deploy" not in base
    overrides = load_yaml(GPU_OVERRIDE)["services"]
    assert set(overrides) == set(REPLICAS) and overrides["service-2"] == overrides["service"]
    gpu = overrides["service"]
    assert gpu["build"]["args"]["DEVICE"] == "gpu" and gpu["image"] != base["image"]
    assert gpu["environment"]["PROVIDER"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_grafana_has_no_default_admin_password() -> None:
    password = compose_services()["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?")


# ------------------------------------------------------------------------------------------------
# Dockerfile


class Stage:
    def __init__(self, base: str, name: str) -> None:
        self.base, self.name = base, name
        self.instructions: list[tuple[str, str]] = []

    def all(self, keyword: str) -> list[str]:
        return [args for instruction, args in self.instructions if instruction == keyword]

    @property
    def env(self) -> set[str]:
        return {pair for args in self.all("ENV") for pair in args.split()}


def dockerfile_stages() -> dict[str, Stage]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # continuation lines
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, args = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            base, _, name = args.partition(" AS ")
            stage = stages[name.strip()] = Stage(base.strip(), name.strip())
        elif stage is not None:
            stage.instructions.append((keyword.upper(), args.strip()))
    return stages


def dockerfile_stage(name: str) -> Stage:
    return dockerfile_stages()[name]


def stage_chain(name: str, stages: dict[str, Stage]) -> set[str]:
    """A stage and every stage it is built from or copies from (FROM python-${DEVICE} stands for
    each stage whose name it can expand to)."""
    chain = {name}
    stage = stages[name]
    pattern = re.escape(stage.base).replace(re.escape("${DEVICE}"), ".+")
    sources = {other for other in stages if re.fullmatch(pattern, other)}
    sources |= {m for args in stage.all("COPY") for m in re.findall(r"--from=(\S+)", args)}
    for source in sources - chain:
        chain |= stage_chain(source, stages)
    return chain


def test_the_serving_image_installs_only_what_serving_imports() -> None:
    stages = dockerfile_stages()
    chain = stage_chain("serve", stages)
    assert {"serve", "serve-builder", "python-gpu", "python-cpu"} <= chain
    assert "train" not in chain
    installs = [
        args
        for name in chain
        for args in stages[name].all("RUN")
        if "install.sh" in args or "pip" in args
    ]
    # The serve extra alone: not even the load extra's pyarrow (the image never loads features).
    assert installs and all(install_extras(args) == ["serve"] for args in installs), installs
    for name in chain:
        for args in stages[name].all("RUN"):
            assert "torch" not in args and "train" not in args, f"{name}: {args}"
        # The service imports contract/ and service/ only (tests/test_contract.py checks).
        for args in stages[name].all("COPY"):
            sources = {source.rstrip("/") for source in args.split()[:-1]}
            assert not {"model", "export", "bench"} & sources, f"{name}: COPY {args}"
    # The positive control: the one-shot job's image does install the train extra.
    assert any("install.sh train," in args for args in stages["train"].all("RUN"))


def install_extras(args: str) -> list[str] | None:
    """The extras of the ``bash deploy/install.sh EXTRAS`` in a command line (None: none there)."""
    found = re.search(r"install\.sh(?: +([\w,]+))?", args)
    return None if found is None else (found.group(1) or "").split(",")


def test_the_images_and_scripts_that_load_features_install_the_load_extra() -> None:
    """``python -m service.features load`` needs the load extra; every install of a script or
    image that runs it has it, and the demo installs what the train image did (same stamp)."""
    assert "service.features load" in (ROOT / "deploy" / "build_demo_artifacts.sh").read_text()
    assert compose_services()["artifacts"]["build"]["target"] == "train"
    (train,) = [e for a in dockerfile_stage("train").all("RUN") if (e := install_extras(a))]
    assert {"train", "serve", "load"} <= set(train)
    assert "service.features load" in (ROOT / "deploy" / "serve_demo.sh").read_text()
    for script in ("demo.sh", "test.sh"):
        lines = (ROOT / "deploy" / script).read_text().splitlines()
        extras = [e for line in lines if not line.startswith("#") if (e := install_extras(line))]
        assert extras == [train], f"deploy/{script}: {extras}"
    ci = [
        e for line in (ROOT / ".ci" / "run").read_text().splitlines() if (e := install_extras(line))
    ]
    assert ci == [train]
    default = re.search(r'EXTRAS="\$\{1:-([\w,]+)\}"', (ROOT / "deploy" / "install.sh").read_text())
    assert default is not None and default.group(1).split(",") == train


def test_the_images_run_as_a_non_root_user() -> None:
    for name in ("serve", "train"):
        (user,) = dockerfile_stage(name).all("USER")
        assert user.split(":")[0] not in {"root", "0"}, f"{name} runs as root"


def test_the_serving_image_serves_on_all_interfaces_with_a_health_check() -> None:
    serve = dockerfile_stage("serve")
    (healthcheck,) = serve.all("HEALTHCHECK")
    assert "/healthz" in healthcheck and "curl" not in healthcheck
    assert serve.all("EXPOSE") == ["8000"]
    assert {"HOST=0.0.0.0", "MODEL_PATH=/models/model.onnx"} <= serve.env
    assert serve.all("CMD") == ['["python", "-m", "service"]']


def test_the_health_check_command_answers_for_the_service(service: ServiceThread) -> None:
    from service.healthcheck import main

    assert main([f"{service.url}/healthz"]) == 0
    assert main([f"{service.url}/no-such-page"]) == 1
    assert main(["http://127.0.0.1:9/healthz"]) == 1  # nothing listens on the discard port
    assert main([]) == 2


def dockerfile_args() -> dict[str, str]:
    """The global ARGs (before the first FROM) and their defaults."""
    args: dict[str, str] = {}
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("FROM "):
            break
        if line.startswith("ARG "):
            name, _, default = line[4:].strip().partition("=")
            args[name] = default
    return args


def test_the_gpu_image_differs_from_the_cpu_image_only_in_base_and_onnxruntime() -> None:
    """The GPU image cannot be built without NVIDIA's base (deploy/containers.sh builds the CPU
    one): what it adds to the CPU image is only its base (with a Python) and onnxruntime-gpu."""
    stages = dockerfile_stages()
    gpu, cpu = stages["python-gpu"], stages["python-cpu"]
    assert gpu.base == "${CUDA_IMAGE}" and cpu.base == "${PYTHON_IMAGE}"
    assert dockerfile_args()["DEVICE"] in {"cpu", "gpu"}
    # The CUDA image has no Python: its stage installs one and nothing else.
    (run,) = gpu.all("RUN")
    installed = re.search(r"apt-get install -y --no-install-recommends ([\w. -]+?)(?:&&|$)", run)
    assert installed is not None and installed.group(1).split() == ["python3", "python3-venv"]
    assert [i for i, _ in gpu.instructions] == ["RUN"] and cpu.instructions == []
    for name in ("serve-builder", "serve"):
        assert stages[name].base == "python-${DEVICE}", name
    # Of everything built on python-${DEVICE}, only the onnxruntime swap reads DEVICE.
    uses = [
        (name, args)
        for name in ("serve-builder", "serve")
        for keyword, args in stages[name].instructions
        if "DEVICE" in args and keyword != "ARG"
    ]
    assert len(uses) == 1, uses
    assert 'if [ "$DEVICE" = gpu ]; then export ONNXRUNTIME="$ONNXRUNTIME_GPU"; fi' in uses[0][1]
    (onnxruntime_gpu,) = [a for a in stages["serve-builder"].all("ARG") if "ONNXRUNTIME_GPU" in a]
    assert onnxruntime_gpu.startswith("ONNXRUNTIME_GPU=onnxruntime-gpu==")


def test_the_dockerfile_defaults_to_the_public_bases() -> None:
    """Local bases (deploy/containers.sh) are build arguments; real hosts get the public ones."""
    args = dockerfile_args()
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "cudnn-runtime" in args["CUDA_IMAGE"]
    (torch_index,) = [a for a in dockerfile_stage("train").all("ARG") if "TORCH_INDEX_URL" in a]
    assert torch_index == "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"
    assert "localhost/" not in DOCKERFILE.read_text()


LOCAL = ROOT / "deploy" / "local"
CONTAINERS_SH = ROOT / "deploy" / "containers.sh"
HAPROXY = ROOT / "deploy" / "haproxy"


def test_the_balancer_fronts_both_replicas_on_the_published_port() -> None:
    services = compose_services()
    lb = services["lb"]
    assert all("ports" not in services[name] for name in REPLICAS)  # reached through the lb
    (published,) = lb["ports"]
    bind_port = lb["environment"]["QIN_LB_BIND"].rsplit(":")[-1]
    assert published.endswith(f":{bind_port}") and "SERVICE_PORT" in published
    assert lb["depends_on"] == {name: {"condition": "service_healthy"} for name in REPLICAS}
    assert dict(bind_mounts(lb))["/usr/local/etc/haproxy"] == HAPROXY
    files = [word for word in lb["command"] if word.startswith("/usr/local/etc/haproxy/")]
    assert [Path(f).name for f in files] == ["haproxy.cfg", "backend-compose.cfg"]
    servers = re.findall(
        r"^\s*server (\S+) (\S+):(\d+) ", (HAPROXY / "backend-compose.cfg").read_text(), re.M
    )
    assert [(name, host, int(port)) for name, host, port in servers] == [
        (name, name, 8000) for name in REPLICAS
    ]
    # health-checked on the service's readiness route
    assert "http-check send meth GET uri /readyz" in (HAPROXY / "haproxy.cfg").read_text()


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_accepts_the_compose_configuration() -> None:
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(HAPROXY / "haproxy.cfg"), "-f",
         str(HAPROXY / "backend-compose.cfg")],
        env={**os.environ, **compose_services()["lb"]["environment"]},  # -c binds nothing
        capture_output=True, text=True,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    # the replicas' names resolve only inside the stack: here they are left down, not refused
    assert "could not resolve address 'service'" in checked.stderr


def test_the_local_override_only_swaps_images() -> None:
    """deploy/containers.sh runs docker-compose.yml itself: its override swaps in local images of
    the public ones (Redis, Prometheus) and nothing else, and every service but Grafana runs."""
    services = compose_services()
    override = load_yaml(LOCAL / "docker-compose.local.yml")
    assert set(override) == {"services"}
    assert set(override["services"]) == {"redis", "prometheus", "lb"}
    for name, service in override["services"].items():
        assert set(service) == {"image"}, name
        assert service["image"].startswith("localhost/qin-local/"), name
        assert "build" not in services[name], f"{name} is built by the Dockerfile: no swap"
    started = re.search(r"^SERVICES=\(([^)]*)\)$", CONTAINERS_SH.read_text(), re.MULTILINE)
    assert started is not None
    assert set(started.group(1).split()) == set(services) - {"grafana"}
    # The images the project builds are the compose file's own names.
    script = CONTAINERS_SH.read_text()
    for name in ("artifacts", "service"):
        assert f"-t {services[name]['image']} ." in script, name


def test_the_local_bases_are_chosen_by_build_arguments() -> None:
    """The script builds the serving and train images with the Dockerfile's own stages, choosing
    only PYTHON_IMAGE (and the torch index); the local base images start from the local rootfs."""
    script = CONTAINERS_SH.read_text()
    assert "--target serve --build-arg DEVICE=cpu" in script
    assert "--target train" in script
    assert "--build-arg PYTHON_IMAGE=" in script
    assert "-f Dockerfile" not in script  # the Dockerfile found in the context, as it is
    for path in LOCAL.glob("*.Containerfile"):
        bases = re.findall(r"^FROM (\S+)", path.read_text(), re.MULTILINE)
        assert bases and all(base.startswith("${") for base in bases), path.name


# ------------------------------------------------------------------------------------------------
# The demo's Redis


def test_the_demo_finds_a_redis_server() -> None:
    found = subprocess.run(
        ["bash", str(ROOT / "deploy" / "redis.sh")], capture_output=True, text=True, timeout=120
    )
    assert found.returncode == 0, found.stderr
    executable = Path(found.stdout.strip())
    assert executable.is_file() and "using" in found.stderr
    version = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=10)
    assert version.stdout.startswith("Redis server v=")


def test_the_artifacts_job_serves_a_model_of_your_own_as_it_is(tmp_path: Path) -> None:
    """A model.onnx in the volume without the demo's data and checkpoint is not rebuilt (the
    demo's own artifacts are re-exported on every run; that path trains, so it is not run
    here): the job goes straight to loading features, and says what is missing."""
    (tmp_path / "model.onnx").write_bytes(b"a model of your own")
    done = subprocess.run(
        ["bash", str(ROOT / "deploy" / "build_demo_artifacts.sh")],
        env={**os.environ, "DEMO_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "model.onnx is not the demo's: serving it as it is" in done.stdout
    assert done.returncode == 2 and "item_info.parquet is missing" in done.stderr
    assert (tmp_path / "model.onnx").read_bytes() == b"a model of your own"


# ------------------------------------------------------------------------------------------------
# install.sh and demo.sh


def test_install_says_when_it_has_nothing_to_do(tmp_path: Path) -> None:
    """A venv whose stamp matches pyproject.toml and the extras is not touched, and install.sh
    says so, naming the venv, the extras and the stamp."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = venv / f".installed-{digest}-serve-dev"
    stamp.touch()
    done = subprocess.run(
        ["bash", str(ROOT / "deploy" / "install.sh"), "serve,dev"],
        env={**os.environ, "VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"install.sh: {venv}, extras [serve,dev]: already installed (stamp {stamp})"
    ]
    assert sorted(p.name for p in venv.iterdir()) == sorted(["bin", stamp.name])


def test_the_demo_stops_at_once_on_a_data_folder_it_did_not_write(tmp_path: Path) -> None:
    """$DEMO_DIR/data holding someone's parquet file: demo.sh names the folder and stops before
    installing, generating or training anything; the folder is left byte for byte."""
    demo = tmp_path / "demo"
    (demo / "data").mkdir(parents=True)
    theirs = demo / "data" / "train.parquet"
    theirs.write_bytes(b"PAR1 someone's data PAR1")
    venv = tmp_path / "venv"
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(ROOT / "deploy" / "demo.sh")],
        env={**os.environ, "DEMO_DIR": str(demo), "VENV": str(venv), "DEMO_SERVE": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert time.monotonic() - started < 20
    assert f"{demo / 'data'} holds files and it has no meta.json of model.synth" in done.stderr
    assert "before installing anything" in done.stderr
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data", "demo", "train.parquet"]
    assert theirs.read_bytes() == b"PAR1 someone's data PAR1"
