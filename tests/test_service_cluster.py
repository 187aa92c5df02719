"""The service on a real Redis Cluster (3 masters, one replica each) while it changes under load:
a master killed (SIGKILL) until its replica takes over, and a new master added with slots moved
onto it. Requests come from an open-loop sender (a fixed rate, whatever the answers do), and
every request sent must get an HTTP answer: 200, or 503 with Retry-After while its data has no
master; never a 500, never a lost request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from service.features.layout import Keys
from service.features.loader import load_dataset
from tests.service_stack import HISTORY_LEN, ServedModel, ServiceThread, service_settings
from tests.support.openloop import Answer, OpenLoop
from tests.support.redis_cluster import LocalCluster
from tests.support.wait import wait_until

KEYS = Keys("qin")
RATE = 40.0  # requests per second: a rate a busy two-core machine sustains with the service
#: Seconds the service may take, after the replica serves the slots, to answer for them again.
#: It re-reads the topology at the first failure after the promotion (within ~0.2 s); the bound
#: is for a loaded machine.
RECOVERY_AFTER_PROMOTION_S = 15.0
REQUEST_TIMEOUT_S = 10.0


@dataclass
class ClusterStack:
    cluster: LocalCluster
    service: ServiceThread
    users: list[int]
    version: str

    def owner(self, key: str) -> int:
        return self.cluster.master_of(key)

    def users_on(self, port: int) -> set[int]:
        return {u for u in self.users if self.owner(KEYS.history(self.version, u)) == port}

    def body(self, index: int) -> dict[str, object]:
        user = self.users[index % len(self.users)]
        return {"user_id": user, "item_ids": list(range(1 + index % 7, 60, 3))}


@pytest.fixture
def cluster_stack(redis_cluster: LocalCluster, served_model: ServedModel) -> Iterator[ClusterStack]:
    report = load_dataset(
        redis_cluster.url,
        served_model.data,
        prefix="qin",
        history_len=HISTORY_LEN,
        keep=2,
        cluster=True,
    )
    settings = service_settings(
        served_model,
        redis_cluster.url,
        redis_cluster=True,
        redis_timeout_s=0.25,
        request_timeout_s=REQUEST_TIMEOUT_S,
    )
    users = [int(u) for u in served_model.features.user_ids[:120]]
    with ServiceThread(settings) as service:
        yield ClusterStack(redis_cluster, service, users, report.version)


def count(answers: list[Answer], status: int) -> int:
    return sum(a.status == status for a in answers)


def check_clean(loop: OpenLoop, answers: list[Answer]) -> None:
    """Every request answered; only 200 and well-formed 503s; none outlived its deadline."""
    assert len(answers) == loop.sent, f"sent {loop.sent}, answered {len(answers)}"
    statuses = {a.status for a in answers}
    assert statuses <= {200, 503}, [a for a in answers if a.status not in (200, 503)][:5]
    for answer in answers:
        if answer.status == 503:
            assert answer.error == "feature_store_unavailable" and answer.retry_after == "1"
        assert answer.latency_s < REQUEST_TIMEOUT_S + 5, answer


@pytest.mark.parametrize("victim", ["control", "other"])
def test_master_killed_under_load(cluster_stack: ClusterStack, victim: str) -> None:
    """``control``: the master of the control keys ({qin}:live), which every request reads, so
    every request fails until its replica takes over. ``other``: a master with neither the
    control keys nor the item hash: only its users fail, everyone else is served throughout."""
    stack, cluster = cluster_stack, cluster_stack.cluster
    control = stack.owner(KEYS.live)
    if victim == "control":
        port = control
    else:
        busy = {control, stack.owner(KEYS.items(stack.version))}
        port = next(p for p in cluster.master_ports() if p not in busy and stack.users_on(p))
    affected = set(stack.users) if victim == "control" else stack.users_on(port)
    assert 0 < len(affected) <= len(stack.users)
    replica = cluster.replica_of(port)
    loop = OpenLoop(stack.service.url, stack.body, rate=RATE, timeout_s=REQUEST_TIMEOUT_S)
    loop.start()
    try:
        wait_until(lambda: count(loop.snapshot(), 200) >= 20, 60, "20 answers before the kill")
        killed_at = time.monotonic()
        cluster.kill(port)
        cluster.wait_promoted(replica)
        promoted_at = time.monotonic()

        def recovered() -> bool:
            later = [
                a for a in loop.snapshot() if a.sent_at > promoted_at and a.user_id in affected
            ]
            return len(later) >= 20 and all(a.status == 200 for a in later[-20:])

        wait_until(recovered, 120, "20 answers in a row for the affected users after promotion")
    finally:
        answers = loop.stop()
    check_clean(loop, answers)
    before = [a for a in answers if a.sent_at < killed_at]
    assert before and all(a.status == 200 for a in before)
    failed = [a for a in answers if a.status != 200]
    assert failed, "the kill was never felt: no request failed"
    assert {a.user_id for a in failed} <= affected
    if victim == "other":  # the other masters' users were served all along
        assert count([a for a in answers if a.user_id not in affected], 503) == 0
    recovery_s = failed[-1].sent_at - killed_at
    assert failed[-1].sent_at < promoted_at + RECOVERY_AFTER_PROMOTION_S, (
        f"failures went on {failed[-1].sent_at - promoted_at:.1f} s after the promotion"
    )
    print(
        f"{victim} master killed: {len(failed)} of {len(answers)} answered 503, last "
        f"{recovery_s:.2f} s after the kill; replica promoted after "
        f"{promoted_at - killed_at:.2f} s"
    )


def test_master_added_and_slots_rebalanced_while_serving(cluster_stack: ClusterStack) -> None:
    """redis-cli --cluster add-node + rebalance moves slots (and their keys, with MIGRATE) while
    requests come: redirects (ASK during a slot's move, MOVED after) are followed, no 500."""
    stack, cluster = cluster_stack, cluster_stack.cluster
    loop = OpenLoop(stack.service.url, stack.body, rate=RATE, timeout_s=REQUEST_TIMEOUT_S)
    loop.start()
    try:
        wait_until(lambda: count(loop.snapshot(), 200) >= 20, 60, "20 answers before the change")
        new = cluster.add_master()
        done = loop.answered()
        wait_until(lambda: count(loop.snapshot()[done:], 200) >= 40, 60, "answers after it")
    finally:
        answers = loop.stop()
    check_clean(loop, answers)
    assert count(answers, 503) == 0, [a for a in answers if a.status != 200][:5]
    moved = {u for u in stack.users if stack.owner(KEYS.history(stack.version, u)) == new}
    assert moved, "the rebalance moved no user's history to the new master"
    client = cluster.node_client(new)
    try:
        assert int(client.dbsize()) > 0
    finally:
        client.close()
