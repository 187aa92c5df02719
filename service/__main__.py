"""``python -m service``: serve POST /score on HOST:PORT, configured by environment variables.

Settings and the model file are checked before the server starts, so a bad value or a bad file
ends the process with one line naming it (exit 2), not a trace. One process, one event loop: the
batcher needs every request of the process in one queue; scale out with more processes behind a
load balancer (they share nothing but Redis).
"""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from service.api import create_app
from service.runtime import ModelError, ModelRunner
from service.settings import Settings


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']).upper() or 'settings'}: {e['msg']}"
            for e in exc.errors()
        )
        print(f"error: bad configuration: {problems}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        runner = ModelRunner(
            settings.model_path,
            settings.provider,
            settings.intra_op_threads,
            settings.ort_spinning,
        )
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, runner)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=max(5, int(settings.request_timeout_s * 2)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
