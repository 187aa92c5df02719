"""A throw-away local Redis Cluster: real redis-server processes on loopback ports (test support).

Three masters with one replica each by default, built the way an operator builds one: every node
started with ``--cluster-enabled yes`` in its own folder, then ``redis-cli --cluster create ...
--cluster-replicas 1``. Nodes can be killed (SIGKILL, as a crash), restarted (they rejoin from
their ``nodes.conf``), and new masters added with slots rebalanced onto them (``redis-cli
--cluster add-node`` and ``rebalance``), while clients keep running. Every wait polls the
cluster's own state (CLUSTER INFO, CLUSTER NODES); nothing sleeps for a fixed time.

``node_timeout_ms`` is Redis' ``cluster-node-timeout``: how long a master may be unreachable
before its replica takes over. Short here so that failover tests finish in seconds, long enough
that a busy two-core machine does not fail masters over by accident.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.retry import Retry

from tests.support.redis import HOW_TO_INSTALL, RedisServer, find_redis_server

#: How long the cluster may take to form, to heal, or to take a rebalance.
SETTLE_TIMEOUT_S = 120.0
_POLL_S = 0.05


@dataclass(frozen=True)
class NodeInfo:
    """One line of CLUSTER NODES, the parts the tests use."""

    node_id: str
    port: int
    role: str  # "master" or "slave"
    master_id: str | None
    failed: bool
    connected: bool
    slots: int


def find_redis_cli(server: str) -> str | None:
    """redis-cli beside the redis-server in use, else on PATH."""
    beside = Path(server).with_name("redis-cli")
    return str(beside) if beside.is_file() else shutil.which("redis-cli")


class LocalCluster:
    """``masters`` masters with ``replicas`` replicas each on 127.0.0.1; a context manager."""

    def __init__(
        self,
        workdir: Path,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 2000,
        executable: str | None = None,
    ) -> None:
        found = executable or find_redis_server()
        if found is None:
            raise FileNotFoundError(f"redis-server not found: {HOW_TO_INSTALL}")
        cli = find_redis_cli(found)
        if cli is None:
            raise FileNotFoundError(f"redis-cli not found: {HOW_TO_INSTALL}")
        self.executable, self.cli = found, cli
        self.workdir = Path(workdir)
        self.masters, self.replicas = masters, replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: dict[int, RedisServer] = {}

    # ----------------------------------------------------------------------------------------
    # Life cycle

    def _node(self, port: int) -> RedisServer:
        return RedisServer(
            self.workdir / str(port),
            executable=self.executable,
            port=port,
            extra_args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                # The tests kill masters: the survivors keep serving their own slots.
                "--cluster-require-full-coverage", "no",
                # Replicas sync at once (the default waits 5 s for more replicas to join).
                "--repl-diskless-sync-delay", "0",
            ),
        )  # fmt: skip

    def start(self) -> LocalCluster:
        ports = [cluster_port() for _ in range(self.masters * (1 + self.replicas))]
        for port in ports:
            self.nodes[port] = node = self._node(port)
            node.start()
        self._cli(
            "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports),
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
        )  # fmt: skip
        self.wait_healthy(replicas=self.masters * self.replicas)
        self.wait_synced()
        return self

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------
    # Addresses and clients

    @property
    def ports(self) -> list[int]:
        return list(self.nodes)

    def running_ports(self) -> list[int]:
        return [port for port, node in self.nodes.items() if _alive(node)]

    @property
    def url(self) -> str:
        """A seed URL: the first node that is running."""
        return f"redis://127.0.0.1:{self.running_ports()[0]}/0"

    def client(self, timeout_s: float = 5.0) -> redis.RedisCluster:
        """A cluster client for the test's own checks (every running node as a start node)."""
        return redis.RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", port) for port in self.running_ports()],
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            require_full_coverage=False,
            retry=Retry(NoBackoff(), 3),
        )

    def node_client(self, port: int) -> redis.Redis:
        return self.nodes[port].client()

    # ----------------------------------------------------------------------------------------
    # State

    def topology(self, port: int | None = None) -> list[NodeInfo]:
        """CLUSTER NODES as seen by ``port`` (default: the first running node)."""
        client = self.node_client(port or self.running_ports()[0])
        try:
            raw = client.execute_command("CLUSTER", "NODES")  # two words: the raw reply
        finally:
            client.close()
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return [_parse_node(line) for line in text.splitlines() if line.strip()]

    def master_ports(self) -> list[int]:
        return [n.port for n in self.topology() if n.role == "master" and not n.failed]

    def master_of(self, key: str) -> int:
        """The port of the master that owns ``key``'s slot right now."""
        client = self.node_client(self.running_ports()[0])
        try:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for low, high, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(low) <= slot <= int(high):
                    return int(master[1])
        finally:
            client.close()
        raise LookupError(f"no master owns slot {slot} of {key!r}")

    def replica_of(self, master_port: int) -> int:
        nodes = self.topology()
        master = next(n for n in nodes if n.port == master_port)
        return next(n.port for n in nodes if n.master_id == master.node_id)

    def healthy(self, replicas: int = 0) -> bool:
        """Every running node says cluster_state:ok, every slot is served by a live master, the
        running nodes agree on who the masters are, and at least ``replicas`` replicas are
        attached to live masters."""
        views = []
        for port in self.running_ports():
            client = self.node_client(port)
            try:
                info = client.execute_command("CLUSTER", "INFO")
            except redis.exceptions.RedisError:
                return False
            finally:
                client.close()
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text or "cluster_slots_ok:16384" not in text:
                return False
            views.append(
                sorted(
                    n.port
                    for n in self.topology(port)
                    if n.role == "master" and not n.failed and n.slots
                )
            )
        if not all(view == views[0] for view in views):
            return False
        nodes = self.topology()
        masters = {n.node_id for n in nodes if n.role == "master" and not n.failed}
        attached = [n for n in nodes if n.role == "slave" and not n.failed and n.connected]
        return sum(n.master_id in masters for n in attached) >= replicas

    def wait_healthy(self, timeout_s: float = SETTLE_TIMEOUT_S, replicas: int = 0) -> float:
        """Wait until ``healthy(replicas)``; returns the seconds it took."""
        started = time.monotonic()
        while not self.healthy(replicas):
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"the cluster did not become healthy in {timeout_s:g} s")
            time.sleep(_POLL_S)
        return time.monotonic() - started

    def synced(self) -> bool:
        """Every running replica has completed its sync (master_link_status:up): only then can
        it take over (a replica that never synced refuses to fail over)."""
        for node in self.topology():
            if node.role != "slave" or node.port not in self.running_ports():
                continue
            client = self.node_client(node.port)
            try:
                link = client.info("replication").get("master_link_status")
            except redis.exceptions.RedisError:
                return False
            finally:
                client.close()
            if link != "up":
                return False
        return True

    def wait_synced(self, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        self._wait(self.synced, "every replica to sync with its master", timeout_s)

    # ----------------------------------------------------------------------------------------
    # Faults and changes

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash: no shutdown, no save)."""
        process = self.nodes[port].process
        assert process is not None
        process.kill()
        process.wait()

    def restart(self, port: int) -> None:
        """Start a killed node again on its port; it rejoins from its nodes.conf (as a replica of
        whoever took over) and is waited for until the cluster is healthy and synced."""
        self.nodes[port].start()
        self.wait_healthy()
        self.wait_synced()

    def wait_promoted(self, replica: int, timeout_s: float = SETTLE_TIMEOUT_S) -> float:
        """Wait until ``replica`` (of a killed master) serves its master's slots as a master and
        the cluster is healthy again; returns the seconds it took."""
        started = time.monotonic()

        def promoted() -> bool:
            mine = next((n for n in self.topology(replica) if n.port == replica), None)
            return mine is not None and mine.role == "master" and mine.slots > 0

        self._wait(promoted, f"node {replica} to take over its master's slots", timeout_s)
        self.wait_healthy(max(1.0, timeout_s - (time.monotonic() - started)))
        return time.monotonic() - started

    def add_master(self) -> int:
        """Start an empty node, join it as a master and rebalance slots onto it; its port.

        Returns once ``rebalance`` has moved the slots (redis-cli migrates keys with MIGRATE
        while clients keep reading: they see ASK and MOVED redirects meanwhile)."""
        port = cluster_port()
        self.nodes[port] = node = self._node(port)
        node.start()
        seed = f"127.0.0.1:{self._a_master()}"
        self._cli("--cluster", "add-node", f"127.0.0.1:{port}", seed)
        self._wait(lambda: self._knows(port), "the new node to join")
        self.wait_healthy()  # the new node too must see the cluster up, or MIGRATE to it fails
        self._cli(
            "--cluster", "rebalance", seed, "--cluster-use-empty-masters",
            "--cluster-yes",
        )  # fmt: skip
        self.wait_healthy()
        return port

    # ----------------------------------------------------------------------------------------
    # Helpers

    def _a_master(self) -> int:
        return self.master_ports()[0]

    def _knows(self, port: int) -> bool:
        return all(
            any(n.port == port and n.connected for n in self.topology(p))
            for p in self.running_ports()
            if p != port
        )

    def _wait(
        self, predicate: Callable[[], bool], what: str, timeout_s: float = SETTLE_TIMEOUT_S
    ) -> None:
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(_POLL_S)

    def _cli(self, *args: str) -> str:
        done = subprocess.run(
            [self.cli, *args], capture_output=True, text=True, timeout=SETTLE_TIMEOUT_S
        )
        if done.returncode != 0 or "[ERR]" in done.stdout:
            raise RuntimeError(
                f"redis-cli {' '.join(args[:2])} failed ({done.returncode}): "
                f"{(done.stdout + done.stderr)[-2000:]}"
            )
        return done.stdout


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free too: Redis needs both,
    so the port must be at most 55535 (the OS's free ports are often above)."""
    for _ in range(1000):
        port = random.randint(20000, 55535)
        if all(_free(candidate) for candidate in (port, port + 10000)):
            return port
    raise RuntimeError("no free pair of loopback ports for a cluster node")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(node: RedisServer) -> bool:
    return node.process is not None and node.process.poll() is None


def _parse_node(line: str) -> NodeInfo:
    fields = line.split()
    node_id, address, flags, master = fields[0], fields[1], fields[2].split(","), fields[3]
    port = int(address.split("@")[0].rsplit(":", 1)[1])
    slots = 0
    for part in fields[8:]:
        if part.startswith("["):
            continue  # a slot being migrated
        low, _, high = part.partition("-")
        slots += int(high or low) - int(low) + 1
    return NodeInfo(
        node_id=node_id,
        port=port,
        role="master" if "master" in flags else "slave",
        master_id=None if master == "-" else master,
        failed="fail" in flags or "fail?" in flags,
        connected=fields[7] == "connected",
        slots=slots,
    )
