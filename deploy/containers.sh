#!/usr/bin/env bash
# Builds the images of the stack with podman and runs docker-compose.yml for real, on a host that
# has no Docker and no image registry: Debian's podman, buildah, mmdebstrap and podman-compose.
#
#   bash deploy/containers.sh            (root; installs them with apt when missing)
#
# Stages: local bases (a Debian rootfs built by mmdebstrap from the archive apt uses, then Python,
# Redis and Prometheus images on it: cached by content), the serving image (CPU) and the train
# image from the project's own Dockerfile (only build arguments choose the local base), then the
# stack of the project's own docker-compose.yml with deploy/local/docker-compose.local.yml on top
# (which only swaps in the local Redis and Prometheus images) and without Grafana (no image of it
# can be had here: every dashboard query is evaluated against the stack's Prometheus instead).
# Then: POST /score from the host, Prometheus' scrape, the dashboard's queries, the service's
# process killed (a crash) and the container restarted by its restart policy, Redis restarted with
# its features kept, a start without GRAFANA_ADMIN_PASSWORD refused, non-root users, no torch in
# the serving image. Everything it started is removed on exit, success or not; the
# images and the base cache stay.
#
# Environment: TORCH_INDEX_URL (unset: torch from the host's pip indexes), QIN_CONTAINERS_CACHE
# (/var/cache/qin-containers for root, else ~/.cache/qin-containers), DEBIAN_MIRROR (the host
# apt's), DEMO_EPOCHS (1), DEMO_TRAIN_ROWS (20000), SERVICE_PORT (18000), PROMETHEUS_PORT (19090),
# QIN_CONTAINERS_TIMEOUT (seconds each wait may take, 900).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

PROJECT="${QIN_CONTAINERS_PROJECT:-qincontainers}"
WAIT_S="${QIN_CONTAINERS_TIMEOUT:-900}"
if [ "$(id -u)" -eq 0 ]; then
  CACHE="${QIN_CONTAINERS_CACHE:-/var/cache/qin-containers}"
else
  CACHE="${QIN_CONTAINERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qin-containers}"
fi
SUITE=bookworm
export SERVICE_PORT="${SERVICE_PORT:-18000}"
export PROMETHEUS_PORT="${PROMETHEUS_PORT:-19090}"
export BIND_ADDRESS=127.0.0.1
export DEMO_EPOCHS="${DEMO_EPOCHS:-1}"
export DEMO_TRAIN_ROWS="${DEMO_TRAIN_ROWS:-20000}"
SERVICE_URL="http://127.0.0.1:$SERVICE_PORT"
PROMETHEUS_URL="http://127.0.0.1:$PROMETHEUS_PORT"
# The services of docker-compose.yml that run here: all but grafana.
SERVICES=(redis artifacts service service-2 lb prometheus)

T0=$SECONDS
STAGE="setup"
STAGE_T0=$SECONDS
stage() {
  if [ "$STAGE" != setup ] || [ $((SECONDS - STAGE_T0)) -gt 0 ]; then
    echo "== [$(date -u +%H:%M:%S)] done: $STAGE ($((SECONDS - STAGE_T0)) s)"
  fi
  STAGE="$1"
  STAGE_T0=$SECONDS
  echo "== [$(date -u +%H:%M:%S)] stage: $STAGE"
}
fail() {
  echo "error: containers.sh failed in stage '$STAGE': $*" >&2
  exit 1
}

# ------------------------------------------------------------------------------------------------
# Tools

apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends "$@" \
    || { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends "$@"; }
}
stage "tools"
missing=()
for tool in podman:podman buildah:buildah runc:runc mmdebstrap:mmdebstrap \
  podman-compose:podman-compose newuidmap:uidmap curl:curl; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt_install "${missing[@]}" || fail "apt-get install ${missing[*]}"
fi
podman --version
# Compose services reach each other by name ("redis"). netavark has that built in; podman's CNI
# backend needs the dnsname plugin, which apt does not pull in with podman. Without it the stack
# starts and then fails on "Name or service not known".
if [ "$(podman info --format '{{.Host.NetworkBackend}}' 2>/dev/null)" = "cni" ]; then
  found=""
  for dir in /usr/lib/cni /usr/libexec/cni /opt/cni/bin; do
    [ -x "$dir/dnsname" ] && found="$dir/dnsname"
  done
  if [ -z "$found" ]; then
    echo "installing the CNI dnsname plugin (container names resolve on compose networks)"
    apt_install golang-github-containernetworking-plugin-dnsname \
      || fail "apt-get install golang-github-containernetworking-plugin-dnsname"
  fi
fi

WORK="$(mktemp -d)"
# Root cannot raise every limit on some hosts (the default nofile/nproc of containers fail) and
# crun does not run on hybrid cgroups: runc and explicit limits work on both.
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"
COMPOSE=(podman-compose -p "$PROJECT" -f docker-compose.yml -f deploy/local/docker-compose.local.yml)
export GRAFANA_ADMIN_PASSWORD="containers-sh-$RANDOM$RANDOM"

cleanup() {
  local rc=$?
  trap - EXIT
  if [ "$rc" -ne 0 ]; then
    echo "== containers.sh failed (exit $rc) in stage '$STAGE'; the stack's last logs:" >&2
    for service in "${SERVICES[@]}"; do
      name="${PROJECT}_${service}_1"
      if podman container exists "$name" 2>/dev/null; then
        echo "-- $service ($(podman inspect -f '{{.State.Status}} exit {{.State.ExitCode}}' \
          "$name" 2>/dev/null))" >&2
        podman logs --tail 30 "$name" 2>&1 | sed 's/^/   /' >&2 || true
      fi
    done
  fi
  if [ "$STAGE" != teardown ]; then echo "== [$(date -u +%H:%M:%S)] stage: teardown"; fi
  local teardown_t0=$SECONDS
  # Containers, then the pod, networks and volumes of the project (by its label), whatever
  # podman-compose managed to make before a failure.
  local ids
  ids=$(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" 2>/dev/null || true)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    podman rm -f -t 2 $ids >/dev/null 2>&1 || true
  fi
  podman pod rm -f "pod_$PROJECT" >/dev/null 2>&1 || true
  ids=$(podman network ls -q --filter "label=io.podman.compose.project=$PROJECT" 2>/dev/null || true)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    podman network rm -f $ids >/dev/null 2>&1 || true
  fi
  podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
  ids=$(podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT" 2>/dev/null || true)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    podman volume rm -f $ids >/dev/null 2>&1 || true
  fi
  podman ps -a --filter "label=io.podman.compose.project=$PROJECT" -q | grep -q . \
    && echo "warning: containers of $PROJECT are left" >&2
  rm -rf "$WORK"
  echo "== [$(date -u +%H:%M:%S)] done: teardown ($((SECONDS - teardown_t0)) s)"
  if [ "$rc" -eq 0 ]; then
    echo "== containers.sh: every check passed in $((SECONDS - T0)) s"
  else
    echo "error: containers.sh FAILED in stage '$STAGE' after $((SECONDS - T0)) s" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "error: stage $STAGE: line $LINENO: $BASH_COMMAND" >&2' ERR

# A stack left by an interrupted run (same project name) would collide with this one.
cleanup_leftovers() {
  local ids
  ids=$(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT")
  # shellcheck disable=SC2086
  if [ -n "$ids" ]; then podman rm -f -t 2 $ids >/dev/null; fi
  ids=$(podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT")
  # shellcheck disable=SC2086
  if [ -n "$ids" ]; then podman volume rm -f $ids >/dev/null; fi
}
cleanup_leftovers
for port in "$SERVICE_PORT" "$PROMETHEUS_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "port $port on 127.0.0.1 is taken: set SERVICE_PORT / PROMETHEUS_PORT"
  fi
done

# ------------------------------------------------------------------------------------------------
# Local base images, cached by content

stage "base images"
mkdir -p "$CACHE"
MIRROR="${DEBIAN_MIRROR:-}"
if [ -z "$MIRROR" ]; then
  # shellcheck disable=SC2016  # apt's own $(FIELD) syntax, not the shell's
  MIRROR=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
    | awk -v suite="$SUITE" '$2 == suite { print $1; exit }')
fi
[ -n "$MIRROR" ] || fail "no $SUITE archive in apt's sources: set DEBIAN_MIRROR to a Debian mirror URL"
# The rootfs: minbase and ca-certificates of $SUITE from $MIRROR. Keyed by what goes in (the key
# changes with the recipe, not with the archive's daily updates: delete the cache to refresh).
rootfs_key=$(printf 'v1 minbase %s %s ca-certificates\n' "$SUITE" "$MIRROR" | sha256sum | cut -c1-16)
rootfs_image="localhost/qin-local/rootfs:$rootfs_key"
rootfs_tar="$CACHE/rootfs-$SUITE-$rootfs_key.tar"
if ! podman image exists "$rootfs_image"; then
  if [ ! -f "$rootfs_tar" ]; then
    echo "mmdebstrap: $SUITE minbase from $MIRROR into $rootfs_tar (about 2 minutes)"
    mmdebstrap --quiet --format=tar --variant=minbase --include=ca-certificates "$SUITE" \
      "$rootfs_tar.part" "$MIRROR" || fail "mmdebstrap $SUITE $MIRROR"
    mv "$rootfs_tar.part" "$rootfs_tar"
  fi
  podman import --quiet "$rootfs_tar" "$rootfs_image" >/dev/null || fail "podman import $rootfs_tar"
fi
# The host's local CAs (Debian keeps them in /usr/local/share/ca-certificates): the debian image
# trusts them, and its tag says which.
mkdir -p "$WORK/debian/ca-certificates"
if [ -d /usr/local/share/ca-certificates ]; then
  cp -r /usr/local/share/ca-certificates/. "$WORK/debian/ca-certificates/"
fi
cp deploy/local/debian.Containerfile "$WORK/debian/Containerfile"
debian_key=$( (
  cd "$WORK/debian"
  echo "$rootfs_key"
  find . -type f -print0 | sort -z | xargs -0 sha256sum
) | sha256sum | cut -c1-16)
DEBIAN_IMAGE="localhost/qin-local/debian:$debian_key"
if ! podman image exists "$DEBIAN_IMAGE"; then
  podman build --quiet --build-arg ROOTFS_IMAGE="$rootfs_image" -t "$DEBIAN_IMAGE" "$WORK/debian" \
    >/dev/null || fail "podman build debian"
fi
# Python, Redis, Prometheus and HAProxy on it; podman's layer cache makes a rebuild a no-op.
for name in python redis prometheus haproxy; do
  podman build --quiet --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
    -f "deploy/local/$name.Containerfile" -t "localhost/qin-local/$name:$debian_key" deploy/local \
    >/dev/null || fail "podman build $name"
  # The tags the override file names.
  podman tag "localhost/qin-local/$name:$debian_key" "localhost/qin-local/$name:latest"
done
PYTHON_IMAGE="localhost/qin-local/python:$debian_key"
podman run --rm "$PYTHON_IMAGE" python3 --version

# ------------------------------------------------------------------------------------------------
# The project's images, from its own Dockerfile

# pip inside the builds is configured as the host's pip is (indexes, find-links, constraints,
# certificates), and the local folders that configuration names are mounted read-only at the
# same paths: a host with a local package mirror builds from it, any other from PyPI.
pip_config() {
  local py
  for py in "$ROOT/.venv/bin/python" python3; do
    if "$py" -m pip --version >/dev/null 2>&1; then
      "$py" -m pip config list 2>/dev/null
      return
    fi
  done
}
BUILD_MOUNTS=()
# Files first, then the environment's settings, which win in pip too (last one kept).
pip_config | python3 -c '
import re, sys
settings = {}
for line in sorted(sys.stdin, key=lambda line: line.startswith(":env:")):
    match = re.match(r"^(?:global|:env:)\.([a-z-]+)=\x27(.*)\x27$", line.strip())
    if match:
        settings[match[1]] = match[2]
print("[global]")
for key, value in settings.items():
    print(f"{key} = {value}")
' >"$WORK/pip.conf"
mounted=" "
while read -r key value; do
  for token in $value; do
    path="${token#file://}"
    case "$path" in /*) ;; *) continue ;; esac
    # A local index's pages link to files beside it (../files/...): its parent goes along.
    case "$key" in index-url | extra-index-url) path=$(dirname "$path") ;; esac
    [ -e "$path" ] || continue
    case "$mounted" in *" $path "*) continue ;; esac
    mounted="$mounted$path "
    BUILD_MOUNTS+=(--volume "$path:$path:ro")
  done
done < <(sed -n 's/^\([a-z-]*\) = /\1 /p' "$WORK/pip.conf")
BUILD_MOUNTS+=(--volume "$WORK/pip.conf:/etc/pip.conf:ro")
echo "pip in the builds: $(grep -c ' = ' "$WORK/pip.conf") settings of the host's pip," \
  "$((${#BUILD_MOUNTS[@]} / 2 - 1)) local folders mounted"
# The train image's torch: from the indexes above (the host's pip configuration), unless
# TORCH_INDEX_URL names an extra index (the Dockerfile's own default is PyTorch's CPU index, which
# a host without it cannot reach; no probe of it is made here).
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
echo "torch for the train image: ${TORCH_INDEX_URL:-from the configured pip indexes}"

# A rebuilt image leaves its predecessor untagged (1-2 GB each): removed once superseded.
image_id() { podman image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
drop_superseded() {
  local old="$1" image="$2"
  if [ -n "$old" ] && [ "$old" != "$(image_id "$image")" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
}

stage "serving image (CPU)"
old_serve=$(image_id qin-service:cpu)
podman build --layers "${BUILD_MOUNTS[@]}" --target serve --build-arg DEVICE=cpu \
  --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" -t qin-service:cpu . >"$WORK/build-serve.log" 2>&1 \
  || { tail -40 "$WORK/build-serve.log" >&2; fail "podman build --target serve"; }
echo "$(grep -c -- '--> Using cache' "$WORK/build-serve.log" || true) layers from podman's cache"

drop_superseded "$old_serve" qin-service:cpu

stage "train image"
old_train=$(image_id qin-train)
podman build --layers "${BUILD_MOUNTS[@]}" --target train \
  --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" \
  -t qin-train . >"$WORK/build-train.log" 2>&1 \
  || { tail -40 "$WORK/build-train.log" >&2; fail "podman build --target train"; }
echo "$(grep -c -- '--> Using cache' "$WORK/build-train.log" || true) layers from podman's cache"

drop_superseded "$old_train" qin-train

stage "image checks"
serve_bytes=$(podman image inspect -f '{{.Size}}' qin-service:cpu)
echo "qin-service:cpu: $((serve_bytes / 1000000)) MB; qin-train:" \
  "$(($(podman image inspect -f '{{.Size}}' qin-train) / 1000000)) MB"
for image in qin-service:cpu qin-train; do
  uid=$(podman run --rm --entrypoint id "$image" -u) || fail "id -u in $image"
  [ "$uid" != 0 ] || fail "$image runs as root"
  echo "$image runs as uid $uid"
done
podman run --rm qin-service:cpu python -c '
import importlib.metadata as m, importlib.util as u, sys
names = {d.metadata["Name"].lower() for d in m.distributions()}
bad = sorted(n for n in names if n in {"torch", "pyarrow", "onnx"} or n.startswith("nvidia-"))
if bad or u.find_spec("torch") or u.find_spec("model"):
    sys.exit("the serving image holds " + (", ".join(bad) or "torch or model/"))
import onnxruntime, service.api
print("serving image: no torch, no pyarrow, onnxruntime", onnxruntime.__version__,
      onnxruntime.get_available_providers())
' || fail "the serving image must hold no torch"

# ------------------------------------------------------------------------------------------------
# The stack

# podman-compose does not wait on depends_on conditions, and health checks run only when asked:
# the services start one by one, each after the health (or the exit) of what it depends on.
wait_healthy() {
  local name="${PROJECT}_$1_1" deadline=$((SECONDS + WAIT_S)) state
  while :; do
    state=$(podman inspect -f '{{.State.Status}}' "$name" 2>/dev/null) || state=missing
    if [ "$state" = running ] && podman healthcheck run "$name" >/dev/null 2>&1; then
      echo "$1 healthy after $((SECONDS - STAGE_T0)) s"
      return 0
    fi
    [ $SECONDS -lt $deadline ] || fail "$1 not healthy within $WAIT_S s (state $state)"
    sleep 2
  done
}
up() {
  "${COMPOSE[@]}" up -d --no-build --no-deps "$@" >"$WORK/up.log" 2>&1 \
    || { cat "$WORK/up.log" >&2; fail "podman-compose up $*"; }
}

# Retries only while the condition is not yet met, up to a deadline.
until_ok() {
  local what="$1" deadline=$((SECONDS + WAIT_S))
  shift
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "$what: not within $WAIT_S s"
    sleep 2
  done
}

stage "refused without GRAFANA_ADMIN_PASSWORD"
if env -u GRAFANA_ADMIN_PASSWORD "${COMPOSE[@]}" up -d --no-build "${SERVICES[@]}" \
  >"$WORK/refused.log" 2>&1; then
  fail "podman-compose up started without GRAFANA_ADMIN_PASSWORD"
fi
grep -q "Grafana admin password" "$WORK/refused.log" \
  || { cat "$WORK/refused.log" >&2; fail "the refusal does not name the Grafana password"; }
if podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" | grep -q .; then
  fail "containers were made before the refusal"
fi
echo "refused, nothing started: $(grep -m1 -o 'Grafana admin password.*' "$WORK/refused.log")"

stage "redis up"
up redis
wait_healthy redis

stage "artifacts job (DEMO_EPOCHS=$DEMO_EPOCHS, DEMO_TRAIN_ROWS=$DEMO_TRAIN_ROWS)"
up artifacts
deadline=$((SECONDS + WAIT_S))
while :; do
  state=$(podman inspect -f '{{.State.Status}} {{.State.ExitCode}}' "${PROJECT}_artifacts_1")
  case "$state" in
    "exited 0") break ;;
    exited* | stopped*) fail "the artifacts job ended: $state" ;;
  esac
  [ $SECONDS -lt $deadline ] || fail "the artifacts job still runs after $WAIT_S s"
  sleep 3
done
podman logs --tail 4 "${PROJECT}_artifacts_1" 2>&1 | sed 's/^/   /'

stage "service replicas up"
up service service-2
wait_healthy service
wait_healthy service-2

stage "balancer up"
up lb
lb_up() {
  [ "$(podman inspect -f '{{.State.Status}}' "${PROJECT}_lb_1" 2>/dev/null)" = running ] \
    && curl -sS -o /dev/null --max-time 5 "$SERVICE_URL/healthz"
}
until_ok "the balancer to answer on $SERVICE_URL" lb_up
echo "the balancer answers on $SERVICE_URL"

stage "prometheus up"
up prometheus
wait_healthy prometheus
for service in redis service service-2 lb prometheus; do
  uid=$(podman exec "${PROJECT}_${service}_1" id -u) || fail "id -u in $service"
  [ "$uid" != 0 ] || fail "the $service container runs as root"
done
echo "redis, both service replicas, the balancer and prometheus run as non-root users"

# A user and items the loaded features know: read from Redis inside the stack.
REDIS=(podman exec "${PROJECT}_redis_1" redis-cli --no-raw)
score_body() {
  python3 - "$@" <<'EOF'
import json, sys
print(json.dumps({"user_id": int(sys.argv[1]), "item_ids": [1, 2, 3, 4, 5]}))
EOF
}
score() {
  local status
  status=$(curl -sS -o "$WORK/score.json" -w '%{http_code}' --max-time 30 \
    -H 'content-type: application/json' -d "$(score_body 1)" "$SERVICE_URL/score") || status=000
  [ "$status" = 200 ] || {
    cat "$WORK/score.json" >&2 2>/dev/null || true
    return 1
  }
  python3 - "$WORK/score.json" <<'EOF'
import json, math, sys
body = json.load(open(sys.argv[1]))
scores = body["scores"]
assert len(scores) == 5, body
assert all(isinstance(s, float) and 0.0 <= s <= 1.0 and not math.isnan(s) for s in scores), body
print("scores", [round(s, 4) for s in scores])
EOF
}

stage "POST /score from the host"
score || fail "POST $SERVICE_URL/score"
# Some traffic for the dashboard: scored requests and a rejected one (422).
for _ in $(seq 1 40); do score >/dev/null || fail "POST /score (traffic)"; done
status=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 30 -H 'content-type: application/json' \
  -d '{"user_id": 1, "item_ids": []}' "$SERVICE_URL/score")
[ "$status" = 422 ] || fail "an empty item list answered $status, not 422"

stage "prometheus scrape"
promql() {
  # The value of an instant query's first sample, or "none".
  curl -sS --max-time 10 -G --data-urlencode "query=$1" "$PROMETHEUS_URL/api/v1/query" \
    | python3 -c '
import json, sys
body = json.load(sys.stdin)
assert body["status"] == "success", body
result = body["data"]["result"]
print(result[0]["value"][1] if result else "none", len(result))
'
}
targets_up() {
  [ "$(promql 'count(up{job="qin-service"} == 1)' | cut -d' ' -f1)" = 2 ] \
    && [ "$(promql 'up{job="haproxy"}' | cut -d' ' -f1)" = 1 ] \
    && [ "$(promql 'haproxy_backend_active_servers{proxy="qin"}' | cut -d' ' -f1)" = 2 ]
}
until_ok "both replicas and the balancer scraped (up == 1), 2 servers active" targets_up
echo "up == 1 for both replicas and the balancer; haproxy_backend_active_servers = 2"
p99() {
  local value
  value=$(promql 'histogram_quantile(0.99, sum by (le) (rate(qin_request_duration_seconds_bucket[1m])))' \
    | cut -d' ' -f1)
  case "$value" in none | NaN | "") return 1 ;; esac
  echo "request p99 over 1m: $value s"
}
# Two scrapes of the traffic make a rate: more requests while waiting for them.
p99_with_traffic() { score >/dev/null && p99; }
until_ok "histogram_quantile of the request histogram" p99_with_traffic

stage "dashboard queries"
# Every panel of the provisioned Grafana dashboard, asked of Prometheus as Grafana would, with
# its interval variables as 1m (Grafana's $__rate_interval is at least 4 scrapes, here 20 s): a
# panel passes when one of its queries returns a series (a labelled counter that never counted,
# such as deadline-exceeded by stage, has none yet).
cat >"$WORK/dashboard.py" <<'EOF'
import json, sys, urllib.parse, urllib.request

url, path = sys.argv[1], sys.argv[2]
failures = 0
for panel in json.load(open(path))["panels"]:
    targets = panel.get("targets", [])
    answered = []
    for target in targets:
        expr = target["expr"]
        for var in ("$__rate_interval", "$__interval", "$__range"):
            expr = expr.replace(var, "1m")
        query = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", (expr, body)
        series = body["data"]["result"]
        answered.append(bool(series))
        print(f"  {'ok  ' if series else 'none'} {len(series)} series  {panel['title']}: {expr}")
    if not targets or not any(answered):
        print(f"FAIL panel {panel['title']!r}: no query returns a series", file=sys.stderr)
        failures += 1
sys.exit(failures)
EOF
# A series appears in a rate only from its second scrape on (the 422s' status="422" series is
# new): asked again, with more traffic, until every panel answers or the deadline passes.
dashboard_ok() {
  score >/dev/null || return 1
  curl -sS -o /dev/null --max-time 30 -H 'content-type: application/json' \
    -d '{"user_id": 1, "item_ids": []}' "$SERVICE_URL/score" || return 1
  python3 "$WORK/dashboard.py" "$PROMETHEUS_URL" deploy/grafana/dashboards/qin.json \
    >"$WORK/dashboard.txt" 2>&1
}
if ! (until_ok "every dashboard panel answers" dashboard_ok); then
  cat "$WORK/dashboard.txt"
  fail "a dashboard panel queries nothing"
fi
cat "$WORK/dashboard.txt"

stage "service crashed (SIGKILL), restarted by its policy"
# A crash: the container's main process killed from the host. Not `podman kill`: podman (4.3)
# marks a container it killed as stopped by the user, which no restart policy restarts.
name="${PROJECT}_service_1"
restarts=$(podman inspect -f '{{.RestartCount}}' "$name")
started=$(podman inspect -f '{{.State.StartedAt}}' "$name")
pid=$(podman inspect -f '{{.State.Pid}}' "$name")
[ "${pid:-0}" -gt 1 ] || fail "no main process of $name"
kill -KILL "$pid"
# Meanwhile the balancer routes around it: the other replica answers (a request the dead one
# dropped, or a connection it refused, is sent there again).
for _ in $(seq 1 20); do
  score >/dev/null || fail "POST /score through the balancer with one replica killed"
done
echo "20 requests answered through the balancer right after one replica was killed"
restarted() {
  [ "$(podman inspect -f '{{.State.Status}}' "$name")" = running ] \
    && [ "$(podman inspect -f '{{.State.StartedAt}}' "$name")" != "$started" ]
}
until_ok "the killed service restarted" restarted
echo "restart count $restarts -> $(podman inspect -f '{{.RestartCount}}' "$name")"
wait_healthy service
score || fail "POST /score after the service restart"

stage "redis restarted, features kept"
keys_before=$("${REDIS[@]}" dbsize | tr -dc 0-9)
[ "${keys_before:-0}" -gt 0 ] || fail "redis holds no keys before the restart"
podman exec "${PROJECT}_redis_1" sh -c 'ls -d /data/appendonlydir/* | head -3' \
  || fail "no append-only file in the redis volume"
# (podman logs, on stderr, that it has no systemd for health-check timers: not an error here.)
podman restart -t 10 "${PROJECT}_redis_1" >"$WORK/restart.log" 2>&1 \
  || { cat "$WORK/restart.log" >&2; fail "podman restart redis"; }
wait_healthy redis
keys_ready() { [ "$("${REDIS[@]}" dbsize | tr -dc 0-9)" = "$keys_before" ]; }
until_ok "redis keeps its $keys_before keys" keys_ready
echo "redis: $keys_before keys before and after the restart"
until_ok "POST /score after the redis restart" score
wait_healthy service

stage "teardown"
