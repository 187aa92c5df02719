#!/usr/bin/env bash
# Create the project's virtual environment and install it with the given extras.
#
#   bash deploy/install.sh [EXTRAS]      EXTRAS defaults to train,serve,load,dev
#
# Used by the README's commands, by CI and by the Dockerfile, so all of them install the same way.
# A second run with the same pyproject.toml and extras does nothing (a stamp file remembers).
#
# ONNXRUNTIME (unset) names a package that replaces the CPU onnxruntime the extras bring, e.g.
# ONNXRUNTIME=onnxruntime-gpu==1.31.1 for the GPU image: both install the same `onnxruntime`
# module, so they cannot sit side by side, and pyproject cannot choose between them.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS="${1:-train,serve,load,dev}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: Python >= 3.11 is required ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "install.sh: creating the virtual environment $VENV ($PYTHON)"
  "$PYTHON" -m venv "$VENV"
fi
ONNXRUNTIME="${ONNXRUNTIME:-}"
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${EXTRAS//,/-}"
if [ -n "$ONNXRUNTIME" ]; then stamp="$stamp-$(echo "$ONNXRUNTIME" | sha256sum | cut -c1-8)"; fi
if [ -f "$stamp" ]; then
  echo "install.sh: $VENV, extras [$EXTRAS]: already installed (stamp $stamp)"
else
  echo "install.sh: installing the project with extras [$EXTRAS] into $VENV" \
    "(pip runs quietly: the first install takes about a minute)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[$EXTRAS]"
  if [ -n "$ONNXRUNTIME" ]; then
    echo "install.sh: replacing onnxruntime with $ONNXRUNTIME"
    "$VENV/bin/python" -m pip uninstall --quiet --yes onnxruntime
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$ONNXRUNTIME"
  fi
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
