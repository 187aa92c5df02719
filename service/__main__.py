"""``python -m service``: serve POST /score on HOST:PORT, configured by environment variables.

Settings and the model file are checked before the server starts, so a bad value or a bad file
ends the process with one line naming it (exit 2), not a trace. One process, one event loop: the
batcher needs every request of the process in one queue; scale out with more processes behind a
load balancer (they share nothing but Redis).

SIGTERM drains first (SHUTDOWN_DRAIN_S): /readyz turns 503 while /score keeps serving, so a
balancer that health-checks the replica stops routing to it before its listener closes and no
request meets a refused connection. The process then exits 0: it stopped as asked.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from types import FrameType

import uvicorn
from pydantic import ValidationError

from service.api import create_app
from service.engine import Engine
from service.runtime import ModelError, ModelRunner
from service.settings import Settings

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before the graceful shutdown.

    The first SIGTERM marks the engine draining and schedules the exit ``drain_s`` later; the
    server is left running meanwhile. A second SIGTERM, or SIGINT, is uvicorn's own handling
    (shut down now). Not passing the first SIGTERM to uvicorn also keeps it from re-raising the
    signal after the shutdown, so a drained process exits 0 rather than by the signal.
    """

    def __init__(self, config: uvicorn.Config, engine: Engine, drain_s: float) -> None:
        super().__init__(config)
        self._engine = engine
        self._drain_s = drain_s
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._exit_at is None and not self.should_exit:
            self._engine.draining = True
            self._exit_at = time.monotonic() + self._drain_s
            if self._drain_s > 0:
                log.info("SIGTERM: draining for %.1f s (/readyz answers 503)", self._drain_s)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)


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
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=max(5, int(settings.request_timeout_s * 2)),
    )
    server = DrainingServer(config, app.state.engine, settings.shutdown_drain_s)
    # uvicorn re-raises SIGINT after its shutdown; Ctrl-C is no error
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
