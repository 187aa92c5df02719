#!/usr/bin/env bash
# The environment of bench.peers' PyTriton peer: nvidia-pytriton (which bundles the Triton server
# and pins numpy < 2) with what the project's serving code imports. Its own venv, so that the
# project's keeps numpy 2. Made from the Python of the project's venv: Triton's Python backend
# stub links libpython, and bench.peers points LD_LIBRARY_PATH at that Python's lib directory.
#
#   bash bench/peers_env.sh        # -> .venv-peers
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_VENV="${PEERS_VENV:-.venv-peers}"
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || { echo "error: $VENV/bin/python missing: run bash deploy/install.sh" >&2; exit 2; }
base=$("$VENV/bin/python" -c 'import sys; print(sys.base_prefix)')
if [ ! -x "$PEERS_VENV/bin/python" ]; then
  "$base/bin/python3" -m venv "$PEERS_VENV"
fi
# The serve extra's packages (as pyproject.toml lists them), without the project itself: the peer
# runs from this checkout (python -m bench.peer_pytriton).
serve=$("$VENV/bin/python" -c '
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["serve"]))')
mapfile -t packages <<<"$serve"
"$PEERS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "nvidia-pytriton==0.7.0" "${packages[@]}"
"$PEERS_VENV/bin/python" -c 'import pytriton, numpy, onnxruntime; print("pytriton ready: numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__)'
