"""Two real Exims, one Redis (issue 13): each relay with its own eximhook config, store,
mirror files and ``eximhook serve`` (the ${readsocket} path), both with ``[store]
backend = "redis"`` on one redis-server of the test's own (``support/redis_server.py``, run as
the Exim user on a Unix socket in a temp dir, stopped by its pid)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from functools import partial

import pytest

from eximhook.backends.redis import RedisBackend

from ..support import harness as h
from ..support.marks import needs_exim, needs_redis, needs_root
from ..support.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, needs_exim, needs_root, needs_redis]
LIMIT = 5
BOT = "carol"  # has a mailbox: the bounces of its invalid recipients are delivered, not frozen
ALICE = f"alice@{h.DOMAIN}"
Cluster = tuple[h.Exim, h.Exim]


@pytest.fixture
def shared(own_redis: RedisServer) -> Iterator[RedisBackend]:
    """What the relays share, as the test sees it."""
    backend = RedisBackend.open(own_redis.url)
    yield backend
    backend.close()


@pytest.fixture
def cluster(own_redis: RedisServer) -> Iterator[Cluster]:
    """Relays a and b: two Exims on their own ports and work dirs, each its daemon."""
    a, b = (h.make(["alice", "bob", BOT], limit=LIMIT, serve=True, settings={
        "store.backend": "redis", "store.redis_url": own_redis.url, "store.node": name, "notify.hold": 2})
        for name in "ab")
    nodes = (a, b)
    try:
        for node in nodes:
            node.setup().start()
        yield nodes
    finally:
        for node in nodes:
            h.cleanup(node)


def listed(node: h.Exim, key: str) -> tuple[bool, bool]:
    """Is ``auth:key`` in the relay's mirror files: (the lsearch text, the cdb Exim reads)?"""
    text, cdb = node.spool / "blocked_authenticated_users", node.spool / "blocked_subjects.cdb"
    return (text.exists() and f'"{key}"'.encode() in text.read_bytes(),
            cdb.exists() and f"auth:{key}".encode() in cdb.read_bytes())


def mirrored(node: h.Exim, key: str) -> bool:
    return all(listed(node, key))


def notifications(cluster: Cluster, key: str = BOT) -> list[bytes]:
    """The abuse desk's mail about ``key``, from both relays (each mails through its own Exim)."""
    return [m for node in cluster for m in node.maildir("abuse") if f"\nSubject: user {key} blocked\n".encode() in m]


def one_notification(cluster: Cluster, key: str = BOT) -> None:
    h.wait_for("the notification", lambda: notifications(cluster, key), 15)
    for node in cluster:  # nothing left to send on either relay: a second one cannot come
        node.settled()
    assert len(notifications(cluster, key)) == 1


def frozen_subjects(node: h.Exim) -> list[str]:
    """The subjects of the bot's messages frozen on ``node`` (by the snippets, which add
    the header)."""
    # exim -Mvh: each header as "LLLF Name: value" (its length, its flag)
    headers = [[line[5:] for line in node.headers(i).splitlines()] for i in node.queue(frozen=True)]
    return sorted(line.removeprefix("Subject: ") for lines in headers if f"X-Authenticated-As: {BOT}" in lines
                  for line in lines if line.startswith("Subject: "))


def delivered(node: h.Exim, box: str, subject: str) -> list[bytes]:
    return [m for m in node.maildir(box) if f"\nSubject: {subject}\n".encode() in m]


def history(node: h.Exim, key: str) -> list[str]:
    return [e["event"] for e in json.loads(node.eximhook("history", "--json", "auth", key).stdout)]


def test_a_bot_alternating_between_relays_trips_once(cluster: Cluster, shared: RedisBackend) -> None:
    """One user's invalid recipients, one message at a time on a, b, a, ...: the LIMIT+1st
    counted across both blocks it, once; from then on both relays accept and freeze its
    mail without counting it; one notification in all."""
    a, b = cluster
    for i in range(LIMIT):  # 3 on a, 2 on b
        assert cluster[i % 2].send([f"nobody{i}@{h.DOMAIN}", ALICE], user=BOT, subject=f"probe {i}") == {}
    assert frozen_subjects(a) == frozen_subjects(b) == [], "LIMIT across both relays: not yet"
    assert shared.counter("auth", BOT).total == LIMIT and not shared.is_blocked("auth", BOT)
    assert b.send([f"nobody{LIMIT}@{h.DOMAIN}", ALICE], user=BOT, subject="the trip") == {}
    assert frozen_subjects(b) == ["the trip"], "the 6th, on b, blocks and freezes its message"
    [trip] = [i for i in b.queue(frozen=True) if "Subject: the trip" in b.headers(i)]
    assert shared.get_block("auth", BOT)["count"] == LIMIT + 1  # type: ignore[index]
    assert mirrored(b, BOT), "the tripping relay's mirror, before it answered 1"
    h.wait_for("a's mirror", lambda: mirrored(a, BOT), 2)
    for node in cluster:  # from now on, on both: every message accepted and frozen, nothing counted
        assert node.send([ALICE], user=BOT, subject=f"later {node.work.name}") == {}
        assert node.send([f"more@{h.DOMAIN}", ALICE], user=BOT, subject=f"invalid {node.work.name}") == {}
    assert frozen_subjects(a) == sorted([f"invalid {a.work.name}", f"later {a.work.name}"])
    assert frozen_subjects(b) == sorted([f"invalid {b.work.name}", f"later {b.work.name}", "the trip"])
    assert shared.counter("auth", BOT).total == LIMIT + 1, "a blocked sender's recipients are not counted"
    for i in range(LIMIT):
        h.wait_for(f"probe {i} delivered", partial(delivered, cluster[i % 2], "alice", f"probe {i}"))
    one_notification(cluster)
    [note] = notifications(cluster)
    assert note in b.maildir("abuse") and trip.encode() in note, "mailed by b, naming the tripping message"
    assert [e["event"] for e in shared.history("auth", BOT)] == ["blocked"] and shared.outbox() == []
    assert history(a, BOT).count("notified") + history(b, BOT).count("notified") == 1
    assert not [m for node in cluster for m in node.maildir("alice") if b"\nSubject: later " in m]


def test_a_block_made_on_a_reaches_b_by_its_message(cluster: Cluster, shared: RedisBackend) -> None:
    """b's mirror files (the cdb its snippets look up) have a's block from the message
    Redis publishes, not from the periodic comparison ([serve] check_interval, 30s, far
    past the wait), and b freezes the user's next messages."""
    a, b = cluster
    assert a.send(h.invalid(LIMIT + 1), user=BOT, subject="the trip") == {}
    assert frozen_subjects(a) == ["the trip"] and shared.is_blocked("auth", BOT)
    h.wait_for("b's mirror", lambda: mirrored(b, BOT), 5)
    assert b.eximhook("check-blocked", "auth", BOT).stdout == "1"
    assert b.send([ALICE], user=BOT, subject="via b") == {}
    assert b.send([f"more@{h.DOMAIN}"], user=BOT, subject="invalid via b") == {}
    assert frozen_subjects(b) == ["invalid via b", "via b"], "b's cdb lookup: frozen, not counted"
    assert shared.counter("auth", BOT).total == LIMIT + 1
    assert b.send([ALICE], user="bob", subject="honest via b") == {}
    h.wait_for("honest mail delivered", lambda: delivered(b, "alice", "honest via b"))
    assert not delivered(b, "alice", "via b")
    one_notification(cluster)


def test_32_sessions_on_two_relays_make_one_block(cluster: Cluster, shared: RedisBackend) -> None:
    """16 SMTP sessions per relay, released at once, each with invalid recipients for one
    user: one block record in Redis, one notification."""
    sessions = 32
    barrier = threading.Barrier(sessions)

    def bot(n: int) -> None:
        with cluster[n % 2].connect() as smtp:
            smtp.login(BOT, h.PASSWORD)
            barrier.wait(30)
            smtp.sendmail(f"bob@{h.DOMAIN}", h.invalid(2, f"c{n}x"), f"Subject: spam {n}\r\n\r\nhi\r\n")

    h.at_once(sessions, bot)
    [record] = shared.blocks()
    assert (record["ns"], record["key"], record["count"]) == ("auth", BOT, LIMIT + 1)
    assert [e["event"] for e in shared.history("auth", BOT)] == ["blocked"] and shared.outbox() == []
    assert LIMIT + 1 <= shared.counter("auth", BOT).total <= 2 * sessions
    h.wait_for("both mirrors", lambda: all(mirrored(node, BOT) for node in cluster), 2)
    one_notification(cluster)
    assert history(cluster[0], BOT).count("notified") + history(cluster[1], BOT).count("notified") == 1


def test_unblock_on_b_lifts_a_block_made_via_a(cluster: Cluster, shared: RedisBackend) -> None:
    """`eximhook --config B unblock auth USER`: gone from Redis and, within a second, from
    a's mirror; a delivers the user's mail again."""
    a, b = cluster
    assert a.send(h.invalid(LIMIT + 1), user=BOT, subject="the trip") == {}
    h.wait_for("b's mirror", lambda: mirrored(b, BOT), 2)
    result = b.eximhook("unblock", "auth", BOT)
    assert result.returncode == 0, result.stderr
    h.wait_for("a's mirror without it", lambda: listed(a, BOT) == (False, False), 1)
    assert not shared.is_blocked("auth", BOT)
    assert a.send([ALICE], user=BOT, subject="after unblock") == {}
    h.wait_for("delivery", lambda: delivered(a, "alice", "after unblock"))
    assert frozen_subjects(a) == ["the trip"], "only the old frozen message"


def test_redis_down_counts_locally_and_reconciles(cluster: Cluster, own_redis: RedisServer) -> None:
    """Redis stopped: honest mail flows through both relays, and a counts and blocks the
    bot locally. Redis back (empty, on the same socket): within a few seconds a pushes
    its block (b's mirror has it) and its counts; still one notification."""
    a, b = cluster
    own_redis.stop()
    for node in cluster:  # honest mail flows through both
        assert node.send([ALICE], user="bob", subject=f"honest {node.work.name}") == {}
    for node in cluster:
        h.wait_for("honest mail delivered", partial(delivered, node, "alice", f"honest {node.work.name}"))
    for i in range(LIMIT):
        assert a.send([f"nobody{i}@{h.DOMAIN}", ALICE], user=BOT, subject=f"probe {i}") == {}
    shown = json.loads(a.eximhook("show", "--json", "auth", BOT).stdout)
    assert shown["counter"]["total"] == LIMIT and shown["block"] is None, "counted on a, locally"
    assert a.send([f"nobody{LIMIT}@{h.DOMAIN}", ALICE], user=BOT, subject="the trip") == {}
    assert frozen_subjects(a) == ["the trip"], "blocked on a, locally, at LIMIT+1"
    shown = json.loads(a.eximhook("show", "--json", "auth", BOT).stdout)
    assert shown["block"]["count"] == LIMIT + 1 and mirrored(a, BOT)
    assert not mirrored(b, BOT)
    own_redis.start()  # empty, on the same socket
    h.wait_for("b's mirror, from the block a pushed", lambda: mirrored(b, BOT), 5)
    shared = RedisBackend.open(own_redis.url)
    try:
        h.wait_for("a's counts in Redis", lambda: shared.counter("auth", BOT, "invalid").total == LIMIT + 1, 5)
        assert shared.is_blocked("auth", BOT)
    finally:
        shared.close()
    one_notification(cluster)
