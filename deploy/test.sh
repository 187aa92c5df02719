#!/usr/bin/env bash
# The test command: install everything the tests need, lint, then run the whole suite.
#
#   bash deploy/test.sh [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install.sh train,serve,load,dev
VENV="${VENV:-.venv}"

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "== mypy"
"$VENV/bin/mypy" contract model export service bench
echo "== pytest"
"$VENV/bin/python" -m pytest "$@"
