#!/usr/bin/env bash
# The one-shot `artifacts` job of docker-compose.yml (image target train). Builds the demo
# artifacts with deploy/demo.sh into DEMO_DIR (the shared volume) unless a model of your own is
# there, then loads the features into Redis, on every run: a load writes a new feature version
# and makes it live in one switch, so the service never reads half a load, and old versions are
# pruned.
#
#   DEMO_DIR (/models), REDIS_URL (redis://redis:6379/0), DEMO_EPOCHS and DEMO_TRAIN_ROWS (demo.sh)
#
# To serve another model, put its model.onnx and its data/ (MicroLens parquet) into the volume.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEMO_DIR="${DEMO_DIR:-/models}"
REDIS_URL="${REDIS_URL:-redis://redis:6379/0}"
PY="${VENV:-.venv}/bin/python"

# The demo's own artifacts (generated data, with its meta.json, and the demo checkpoint) are
# rebuilt on every run: demo.sh reuses the data and the checkpoint and only re-exports (~15 s),
# so a volume from an older image never serves that image's older graph. Any other model.onnx
# found in the volume is a model of your own and is served as it is.
if [ -f "$DEMO_DIR/model.onnx" ] \
  && ! { [ -f "$DEMO_DIR/data/meta.json" ] && [ -f "$DEMO_DIR/checkpoint/checkpoint.json" ]; }; then
  echo "== $DEMO_DIR/model.onnx is not the demo's: serving it as it is"
else
  DEMO_SERVE=0 bash deploy/demo.sh
fi

if [ ! -f "$DEMO_DIR/data/item_info.parquet" ]; then
  echo "error: $DEMO_DIR/data/item_info.parquet is missing: no features to load" >&2
  exit 2
fi
echo "== loading the features of $DEMO_DIR/data into Redis"
"$PY" -m service.features load --data "$DEMO_DIR/data" --redis-url "$REDIS_URL" --no-progress
