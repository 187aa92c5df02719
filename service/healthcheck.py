"""``python -m service.healthcheck URL``: exit 0 when GET URL answers 2xx within 2 s, else 1.

A URL that is only a path (``/healthz``) is asked of this container's own port: 127.0.0.1:$PORT.

The container health checks of docker-compose.yml and the Dockerfile call it, so that their test
is a few plain words: podman-compose 1.0.3 joins a CMD health check into one shell line without
quoting it, which breaks any argument with spaces or quotes (a ``python -c`` one-liner). Standard
library only, no import of the service itself: it starts in milliseconds in the serving image.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m service.healthcheck URL", file=sys.stderr)
        return 2
    url = argv[0]
    if url.startswith("/"):
        url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}{url}"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            ok = 200 <= response.status < 300
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
