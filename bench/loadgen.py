"""Open-loop load generator for ``POST /score``: a fixed arrival rate, whatever the answers do.

    python -m bench.loadgen --url http://127.0.0.1:8000 --rate 200 --duration 10 \\
        --candidates 100 --users-file users.txt --item-vocab 10001 --out result.json

Why open loop: a closed loop (N clients, each waiting for its answer before the next request)
slows down exactly when the server does, so queueing never shows in its latencies ("coordinated
omission"). Here request i is due at ``t0 + i / rate``, computed from t0 (no drift), and is sent
then, however many earlier requests are still unanswered. Its latency is counted from that due
time, so a request that had to wait (for a free connection, or for the generator itself) carries
the wait. Latency from the actual send is reported too, and so is how late the generator was:

* dispatch lag: due time to the moment the generator got round to the request (its own timer and
  CPU: on an overloaded machine this grows, and the run says so);
* send lag: due time to the bytes written (adds the wait for a free connection).

Each request is 1 user x ``--candidates`` item ids drawn uniformly from ``1 .. item_vocab - 1``;
users are drawn from ``--users-file`` (one id per line) or ``--user-ids``. With ``--history N``
every request carries an explicit history of N random item ids instead of the stored one.

The HTTP/1.1 client is written here on asyncio streams (keep-alive, a bounded pool of
connections, uvloop when installed), so the generator depends on nothing beyond numpy. Request
bodies are built before t0 and the garbage collector is off during the run, so the generator's
own work per request is a task, a write and a read.

The JSON written to ``--out`` holds the settings, the summary (:func:`summarize`) and t0 (the
generator's ``time.perf_counter()`` at t0, so another process can place events on the run's
clock); per-request records go to ``--records FILE`` (CSV, seconds after t0) when asked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

#: Status recorded for a request that got no answer before its deadline.
STATUS_TIMEOUT = -1
#: Status recorded for a connection or protocol failure (refused, reset, malformed answer).
STATUS_ERROR = -2
#: Distinct request bodies built before the run; request i sends body ``i % BODIES``.
BODIES = 16_384
#: A run whose dispatch lag p99 exceeds this many ms was limited by the generator itself.
GENERATOR_LAG_LIMIT_MS = 5.0
#: Shortest dispatcher sleep. Event-loop timers have 1 ms resolution and uvloop rounds a shorter
#: delay to 0, which would spin a core the service needs; requests due within it go together.
MIN_SLEEP_S = 0.001
#: Seconds between the end of set-up and the first due time (lets the event loop settle).
START_DELAY_S = 0.05

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Pure functions: schedule, summary


def schedule(rate: float, duration: float) -> np.ndarray:
    """Due times (seconds after t0) of an open-loop run: ``i / rate`` for every i < rate*duration.

    Each time is computed from its index, never by adding intervals, so rounding cannot drift.
    """
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate and duration must be positive, got {rate} and {duration}")
    count = int(np.floor(rate * duration + 1e-9))
    return np.arange(count, dtype=np.float64) / rate


def percentiles_ms(seconds: np.ndarray) -> dict[str, float | None]:
    """p50/p95/p99/max in milliseconds, nearest rank (a reported p99 is a real sample)."""
    if len(seconds) == 0:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    values = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(values, [50, 95, 99], method="inverted_cdf")
    return {
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "max_ms": float(values.max()),
    }


def status_name(status: int) -> str:
    if status == STATUS_TIMEOUT:
        return "timeout"
    if status == STATUS_ERROR:
        return "error"
    return str(status)


@dataclass(frozen=True)
class Outcome:
    """Per-request record of a run; times in seconds after t0, NaN where it never happened."""

    scheduled: np.ndarray  # due time
    started: np.ndarray  # the generator began handling it
    sent: np.ndarray  # request bytes written
    done: np.ndarray  # answer read, or failure noticed
    status: np.ndarray  # HTTP status, STATUS_TIMEOUT or STATUS_ERROR
    #: ``time.perf_counter()`` of t0 in the generator's process (CLOCK_MONOTONIC on Linux, so
    #: another process's perf_counter or monotonic times can be placed on this run's clock).
    t0: float = 0.0

    @staticmethod
    def empty(scheduled: np.ndarray) -> Outcome:
        def blank() -> np.ndarray:
            return np.full(len(scheduled), np.nan)

        status = np.full(len(scheduled), STATUS_ERROR, dtype=np.int64)
        return Outcome(scheduled, blank(), blank(), blank(), status)


def summarize(
    outcome: Outcome, *, rate: float, duration: float, warmup: float, candidates: int
) -> dict[str, Any]:
    """The figures of a run, over the requests due in ``[warmup, duration)``.

    ``scheduled_rate`` is the offered rate as counted in the window (whole requests: at a few per
    second it differs from ``rate``). ``achieved_rate`` is OK answers per second over the span
    from the first measured due time to the later of the window's end and the last OK answer: a
    server that falls behind stretches the span, so its backlog lowers the rate instead of being
    hidden. ``requests_per_s`` counts every HTTP answer (429/503 included); timeouts and
    connection errors are not answers.
    """
    measured = outcome.scheduled >= warmup
    status = outcome.status[measured]
    scheduled, sent = outcome.scheduled[measured], outcome.sent[measured]
    started, done = outcome.started[measured], outcome.done[measured]
    ok = status == 200
    answered = status > 0
    window = max(duration - warmup, 1e-9)
    span = max(window, float(done[ok].max()) - warmup) if ok.any() else window
    was_sent = ~np.isnan(sent)
    dispatch_lag = percentiles_ms((started - scheduled)[~np.isnan(started)])
    codes, counts = np.unique(status, return_counts=True)
    return {
        "offered_rate": rate,
        "scheduled_rate": float(measured.sum() / window),
        "requests": int(measured.sum()),
        "window_s": window,
        "span_s": span,
        "achieved_rate": float(ok.sum() / span),
        "requests_per_s": float(answered.sum() / span),
        "candidates_per_s": float(ok.sum() * candidates / span),
        "ok": int(ok.sum()),
        "status_counts": {status_name(int(c)): int(n) for c, n in zip(codes, counts, strict=True)},
        "non_ok": int((~ok).sum()),
        "timeouts": int((status == STATUS_TIMEOUT).sum()),
        "errors": int((status == STATUS_ERROR).sum()),
        "latency": percentiles_ms((done - scheduled)[ok]),
        "latency_from_send": percentiles_ms((done - sent)[ok]),
        "dispatch_lag": dispatch_lag,
        "send_lag": percentiles_ms((sent - scheduled)[was_sent]),
        "generator_late": (dispatch_lag["p99_ms"] or 0.0) > GENERATOR_LAG_LIMIT_MS,
    }


# --------------------------------------------------------------------------------------------
# Requests


def read_users(users_file: Path | None, user_ids: str | None) -> np.ndarray:
    """User ids from a file (one per line, '#' comments) and/or a comma-separated list."""
    ids: list[int] = []
    if users_file is not None:
        for line in users_file.read_text().splitlines():
            text = line.split("#", 1)[0].strip()
            if text:
                ids.append(int(text))
    if user_ids:
        ids += [int(word) for word in user_ids.split(",") if word.strip()]
    if not ids:
        raise ValueError("no user ids: give --users-file or --user-ids")
    return np.asarray(ids, dtype=np.int64)


def score_bodies(
    users: np.ndarray,
    item_vocab: int,
    candidates: int,
    count: int,
    history: int = 0,
    seed: int = 0,
) -> list[bytes]:
    """``count`` JSON bodies of POST /score: a random user, ``candidates`` uniform item ids."""
    if item_vocab < 2:
        raise ValueError(f"item_vocab must be at least 2 (ids start at 1), got {item_vocab}")
    rng = np.random.default_rng(seed)
    picked = rng.choice(users, size=count)
    items = rng.integers(1, item_vocab, size=(count, candidates))
    histories = rng.integers(1, item_vocab, size=(count, history))
    bodies = []
    for index in range(count):
        body: dict[str, Any] = {"user_id": int(picked[index]), "item_ids": items[index].tolist()}
        if history:
            body["history"] = histories[index].tolist()
        bodies.append(json.dumps(body, separators=(",", ":")).encode())
    return bodies


def kserve_bodies(score_json: list[bytes]) -> list[bytes]:
    """The same requests in Triton's HTTP protocol (KServe v2), for a peer that speaks only it:
    ``user_id`` [1, 1], ``item_ids`` [1, C] and, when sent, ``history`` [1, H], all INT64."""
    bodies = []
    for raw in score_json:
        body = json.loads(raw)
        inputs = [
            {"name": "user_id", "shape": [1, 1], "datatype": "INT64", "data": [body["user_id"]]}
        ]
        for name in ("item_ids", "history"):
            if name in body:
                values = body[name]
                inputs.append(
                    {"name": name, "shape": [1, len(values)], "datatype": "INT64", "data": values}
                )
        bodies.append(json.dumps({"inputs": inputs}, separators=(",", ":")).encode())
    return bodies


def http_request(method: str, host: str, path: str, body: bytes = b"") -> bytes:
    """One HTTP/1.1 keep-alive request, as bytes on the wire."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: qin-loadgen\r\n"
    if method != "GET":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


# --------------------------------------------------------------------------------------------
# HTTP/1.1 client


class HttpError(Exception):
    """The answer is not HTTP/1.1 as this client reads it."""


@dataclass(frozen=True)
class ResponseHead:
    status: int
    content_length: int | None
    chunked: bool
    keep_alive: bool


def parse_head(head: bytes) -> ResponseHead:
    """Status line and the headers that frame the body; ``head`` ends with the blank line."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
    length = headers.get("content-length")
    if length is not None and not length.isdigit():
        raise HttpError(f"bad Content-Length {length!r}")
    connection = headers.get("connection", "")
    http10 = parts[0] == "HTTP/1.0"
    keep_alive = "close" not in connection and (not http10 or "keep-alive" in connection)
    return ResponseHead(
        status=int(parts[1]),
        content_length=None if length is None else int(length),
        chunked="chunked" in headers.get("transfer-encoding", ""),
        keep_alive=keep_alive,
    )


class Connection:
    """One keep-alive connection; one request at a time (no pipelining)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @staticmethod
    async def open(host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:  # small requests must not wait for Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Connection(reader, writer)

    async def exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """Send ``request`` and read the answer: (status, body, connection reusable)."""
        self.writer.write(request)
        head = parse_head(await self.reader.readuntil(b"\r\n\r\n"))
        if head.chunked:
            body = await self._read_chunked()
        elif head.content_length is not None:
            body = await self.reader.readexactly(head.content_length)
        else:  # framed by closing the connection
            return head.status, await self.reader.read(), False
        return head.status, body, head.keep_alive

    async def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(f"bad chunk size {size_line!r}") from None
            if size == 0:
                while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class ConnectionPool:
    """At most ``limit`` connections; a request that finds none free waits for one."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port = host, port
        self.slots = asyncio.Semaphore(limit)
        self.idle: list[Connection] = []
        self.opened = 0

    async def connection(self) -> tuple[Connection, bool]:
        """A free connection and whether it was used before (call with a slot held).

        Idle connections the server has closed meanwhile (uvicorn drops keep-alive connections
        idle for 5 s) are noticed by their end-of-file and dropped here.
        """
        while self.idle:
            connection = self.idle.pop()
            if connection.usable():
                return connection, True
            connection.close()
        return await self.fresh(), False

    async def fresh(self) -> Connection:
        connection = await Connection.open(self.host, self.port)
        self.opened += 1
        return connection

    def put_back(self, connection: Connection, reusable: bool) -> None:
        if reusable:
            self.idle.append(connection)
        else:
            connection.close()

    async def preconnect(self, count: int) -> None:
        """Open ``count`` connections before t0, so the first requests do not pay for them."""
        opened = await asyncio.gather(
            *(Connection.open(self.host, self.port) for _ in range(count))
        )
        self.opened += len(opened)
        self.idle.extend(opened)

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()


ERRORS = (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HttpError)


class OpenLoopRun:
    """One run: sends request i at its due time and records what happened to it."""

    def __init__(
        self,
        pool: ConnectionPool,
        requests: Sequence[bytes],
        scheduled: np.ndarray,
        timeout_s: float,
    ) -> None:
        self.pool = pool
        self.requests = requests
        self.timeout_s = timeout_s
        self.outcome = Outcome.empty(scheduled)
        self.t0 = 0.0

    async def run(self) -> Outcome:
        """Dispatch on schedule, then wait for every answer (each bounded by its deadline)."""
        loop = asyncio.get_running_loop()
        scheduled = self.outcome.scheduled
        # Only unanswered requests are kept: gathering every task of the run at the end walked
        # ~18,000 tasks in one step, so the last requests of a run went out ~12 ms late.
        pending: set[asyncio.Task[None]] = set()
        self.t0 = time.perf_counter() + START_DELAY_S
        index = 0
        while index < len(scheduled):
            now = time.perf_counter() - self.t0
            while index < len(scheduled) and scheduled[index] <= now:
                deadline = loop.time() + (scheduled[index] + self.timeout_s - now)
                task = loop.create_task(self._one(index, deadline))
                pending.add(task)
                task.add_done_callback(pending.discard)
                index += 1
            if index < len(scheduled):
                delay = scheduled[index] - (time.perf_counter() - self.t0)
                await asyncio.sleep(max(delay, MIN_SLEEP_S))
        while pending:
            await asyncio.gather(*pending)
        return replace(self.outcome, t0=self.t0)

    async def _one(self, index: int, deadline: float) -> None:
        out = self.outcome
        out.started[index] = time.perf_counter() - self.t0
        status = STATUS_ERROR
        try:
            async with asyncio.timeout_at(deadline), self.pool.slots:
                status = await self._exchange(index)
        except TimeoutError:
            status = STATUS_TIMEOUT
        except ERRORS:
            status = STATUS_ERROR
        out.done[index] = time.perf_counter() - self.t0
        out.status[index] = status

    async def _exchange(self, index: int) -> int:
        """Send on a free connection; a kept-alive one the server closed is retried once."""
        request = self.requests[index % len(self.requests)]
        connection, reused = await self.pool.connection()
        self.outcome.sent[index] = time.perf_counter() - self.t0
        try:
            return await self._send_on(connection, request)
        except (ConnectionError, asyncio.IncompleteReadError):
            if not reused:
                raise
        return await self._send_on(await self.pool.fresh(), request)

    async def _send_on(self, connection: Connection, request: bytes) -> int:
        try:
            status, _, reusable = await connection.exchange(request)
        except BaseException:  # timeout or failure mid-answer: the connection is unusable
            connection.close()
            raise
        self.pool.put_back(connection, reusable)
        return status


# --------------------------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str

    @staticmethod
    def parse(url: str, path: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--url must be http://HOST[:PORT], got {url!r}")
        return Target(parts.hostname, parts.port or 80, path)

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--url", required=True, help="service base URL, http://HOST:PORT")
    parser.add_argument("--path", default="/score", help="POST /score, or GET any other path")
    parser.add_argument(
        "--protocol",
        choices=["score", "kserve"],
        default="score",
        help="score: this service's JSON; kserve: Triton's HTTP protocol, POSTed to --path",
    )
    parser.add_argument("--rate", type=float, required=True, help="requests per second offered")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of arrivals")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="first seconds sent but left out of the figures"
    )
    parser.add_argument("--candidates", type=int, default=100, help="item ids per request")
    parser.add_argument("--users-file", type=Path, help="user ids, one per line")
    parser.add_argument("--user-ids", help="user ids, comma-separated")
    parser.add_argument("--item-vocab", type=int, help="candidates drawn from 1..VOCAB-1")
    parser.add_argument(
        "--history", type=int, default=0, help="send an explicit history of N ids (0: stored)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds from the due time")
    parser.add_argument("--connections", type=int, default=256, help="most open at once")
    parser.add_argument("--preconnect", type=int, default=16, help="opened before t0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-probe", action="store_true", help="skip the check request")
    parser.add_argument("--out", type=Path, help="JSON result (settings and summary)")
    parser.add_argument("--records", type=Path, help="per-request CSV")
    return parser


def build_requests(args: argparse.Namespace, target: Target, count: int) -> list[bytes]:
    if args.protocol == "score" and target.path != "/score":
        return [http_request("GET", target.netloc, target.path)]
    if args.item_vocab is None:
        raise ValueError("--item-vocab is needed to draw candidates for /score")
    users = read_users(args.users_file, args.user_ids)
    bodies = score_bodies(
        users, args.item_vocab, args.candidates, min(count, BODIES), args.history, args.seed
    )
    if args.protocol == "kserve":
        bodies = kserve_bodies(bodies)
    return [http_request("POST", target.netloc, target.path, body) for body in bodies]


async def probe(
    pool: ConnectionPool, request: bytes, target: Target, candidates: int, protocol: str = "score"
) -> None:
    """One request before t0: fail fast, with the server's words, if the target is wrong."""
    async with pool.slots:
        connection = await pool.fresh()
        status, body, reusable = await asyncio.wait_for(connection.exchange(request), 30.0)
    pool.put_back(connection, reusable)
    if status != 200:
        raise RuntimeError(f"probe {target.path} answered {status}: {body[:300]!r}")
    if protocol == "kserve":
        outputs = json.loads(body).get("outputs") or [{}]
        data = outputs[0].get("data")
        if not isinstance(data, list) or len(data) != candidates:
            raise RuntimeError(f"probe: expected {candidates} scores, got {body[:300]!r}")
    elif target.path == "/score":
        scores = json.loads(body).get("scores")
        if not isinstance(scores, list) or len(scores) != candidates:
            raise RuntimeError(f"probe /score: expected {candidates} scores, got {body[:300]!r}")


async def generate(
    args: argparse.Namespace, target: Target, requests: list[bytes], scheduled: np.ndarray
) -> Outcome:
    pool = ConnectionPool(target.host, target.port, args.connections)
    try:
        if not args.no_probe:
            await probe(pool, requests[0], target, args.candidates, args.protocol)
        await pool.preconnect(max(0, min(args.preconnect, args.connections) - len(pool.idle)))
        gc.collect()
        gc.disable()  # no collector pauses inside the timed run
        try:
            return await OpenLoopRun(pool, requests, scheduled, args.timeout).run()
        finally:
            gc.enable()
    finally:
        pool.close()


def run_event_loop(main: Callable[[], Awaitable[T]]) -> T:
    """Run on uvloop when installed (cheaper per request), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_call(main))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_call(main))


async def _call(main: Callable[[], Awaitable[T]]) -> T:
    return await main()


def write_records(path: Path, outcome: Outcome) -> None:
    columns = np.column_stack(
        [outcome.scheduled, outcome.started, outcome.sent, outcome.done, outcome.status]
    )
    header = "scheduled_s,started_s,sent_s,done_s,status"
    np.savetxt(path, columns, delimiter=",", header=header, comments="", fmt="%.6f")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        target = Target.parse(args.url, args.path)
        scheduled = schedule(args.rate, args.duration)
        requests = build_requests(args, target, len(scheduled))
        outcome = run_event_loop(lambda: generate(args, target, requests, scheduled))
    except (ValueError, OSError, RuntimeError, TimeoutError) as error:
        print(f"loadgen: {error}", file=sys.stderr)
        return 2
    summary = summarize(
        outcome,
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup if args.warmup < args.duration else 0.0,
        candidates=args.candidates if target.path == "/score" else 0,
    )
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result = {"settings": settings, "t0_perf_counter": outcome.t0, "summary": summary}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.records:
        write_records(args.records, outcome)
    latency = summary["latency"]
    print(
        f"offered {args.rate:g}/s achieved {summary['achieved_rate']:.1f}/s "
        f"p50 {latency['p50_ms']} p99 {latency['p99_ms']} ms "
        f"statuses {summary['status_counts']} dispatch lag p99 "
        f"{summary['dispatch_lag']['p99_ms']} ms",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
