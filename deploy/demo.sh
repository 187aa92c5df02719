#!/usr/bin/env bash
# The main job, from a fresh clone with nothing but Python: install, generate a demo dataset in
# the MicroLens format, train the small QIN preset on it, evaluate it on the test split, export it
# to a parity-checked ONNX serving graph; then (deploy/serve_demo.sh) start a Redis server, load
# the features and serve POST /score on localhost, printing the URLs and an example request.
#
#   bash deploy/demo.sh
#
# Everything lands in artifacts/demo/ (git-ignored). A second run reuses the data and the
# trained checkpoint (the export is redone: it follows the code); delete artifacts/demo/ to start
# over. A $DEMO_DIR/data that model.synth did not write (its meta.json says) is never written
# into: the demo stops at once, before installing anything. Settings by environment variable:
#   DEMO_DIR (artifacts/demo), DEMO_EPOCHS (3), DEMO_TRAIN_ROWS (200000),
#   DEMO_SERVE (1; 0 stops after the export), HOST (127.0.0.1), PORT (8000),
#   DEMO_REDIS_URL (unset: a redis-server is started on DEMO_REDIS_PORT, 6399, and stopped on exit)
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR="${DEMO_DIR:-artifacts/demo}"
DEMO_EPOCHS="${DEMO_EPOCHS:-3}"
DEMO_TRAIN_ROWS="${DEMO_TRAIN_ROWS:-200000}"
VENV="${VENV:-.venv}"
started=$(date +%s)

# First, with the standard library only (nothing is installed yet): "generated" (model.synth
# wrote $DEMO_DIR/data: reuse it), "empty" (generate it), or a refusal naming the folder.
if ! data_state=$("${PYTHON:-python3}" -m model.synth_meta "$DEMO_DIR/data"); then
  echo "error: demo.sh stopped before installing anything: set DEMO_DIR to another folder" \
    "or move $DEMO_DIR/data away" >&2
  exit 2
fi

bash deploy/install.sh train,serve,load,dev
PY="$VENV/bin/python"

if [ "$data_state" = "generated" ]; then
  echo "== reusing demo data in $DEMO_DIR/data (written by model.synth)"
else
  echo "== generating demo data in $DEMO_DIR/data"
  "$PY" -m model.synth --out "$DEMO_DIR/data" --items 10000 --users 20000 \
    --train-rows "$DEMO_TRAIN_ROWS" --valid-rows 20000 --test-rows 20000
fi

if [ ! -f "$DEMO_DIR/checkpoint/checkpoint.json" ]; then
  echo "== training the small QIN preset ($DEMO_EPOCHS epochs at most)"
  "$PY" -m model.train --data "$DEMO_DIR/data" --out "$DEMO_DIR/checkpoint" --preset small \
    --epochs "$DEMO_EPOCHS"
else
  echo "== reusing the checkpoint in $DEMO_DIR/checkpoint"
fi

echo "== evaluating on the test split"
"$PY" -m model.evaluate --checkpoint "$DEMO_DIR/checkpoint" --data "$DEMO_DIR/data" --split test

# Always exported (about 15 s): a model.onnx left by an older checkout would serve the older
# graph (same model version, slower rewrites) without saying so.
echo "== exporting the serving graph to ONNX (parity-checked against PyTorch)"
"$PY" -m export --checkpoint "$DEMO_DIR/checkpoint" --out "$DEMO_DIR/model.onnx" \
  --verify-data "$DEMO_DIR/data"

echo "== built in $(( $(date +%s) - started ))s: checkpoint $DEMO_DIR/checkpoint" \
  "(training curves: $DEMO_DIR/checkpoint/curves.png), model $DEMO_DIR/model.onnx"
if [ "${DEMO_SERVE:-1}" = "1" ]; then
  exec bash deploy/serve_demo.sh
fi
