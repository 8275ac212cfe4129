"""``eximhook serve`` with ``[store] backend = "redis"``: real daemons on real sockets, a
real redis-server (``support/redis_server.py``), one store and mirror directory per relay."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings

from eximhook.backends.redis import RedisBackend
from eximhook.config.load import load
from eximhook.model.policy import Policy
from eximhook.model.records import Event, block_record
from eximhook.serve.protocol import encode
from eximhook.serve.server import Server
from eximhook.storage import relay_copy as local
from eximhook.storage.counters import Counters
from eximhook.storage.store import Store

from ..support.config import write_config
from ..support.daemon import Daemon
from ..support.fixtures import Run, Serve
from ..support.hooks import outbox_drained
from ..support.mailbox import messages
from ..support.marks import needs_redis
from ..support.waiting import wait_for
from .test_backends import any_bytes, published, short_bytes

pytestmark = needs_redis


def node(tmp_path: Path, name: str, url: str, mailbox: Path | None = None, **settings: object) -> Path:
    """The config of relay ``name``: its own store, mirror files and socket; Redis shared."""
    where = tmp_path / name
    where.mkdir()
    sendmail = f'"{mailbox}/sendmail.sh", "-f", "root"' if mailbox else None
    return write_config(where, sendmail=sendmail, settings={
        "store.backend": "redis", "store.redis_url": url, "notify.hold": 0.2, "exim.freeze_queued": False,
        **settings})


def record(daemon: Daemon, key: str, **fields: str) -> bytes:
    return daemon.request(encode("record-invalid", "auth", key, **fields))


def mirrored(config: Path, key: str) -> bool:
    path = config.parent / "mirror" / "blocked_authenticated_users"  # written at the relay's first block
    return path.exists() and f'"{key}"'.encode() in path.read_bytes()


def compared_since(shared: RedisBackend, configs: tuple[Path, ...], key: str) -> None:
    """Wait until each relay has compared its store with Redis's whole set: a block put in
    Redis without its message (as one a relay missed) reaches its mirror only that way.
    (Twice in a row: a whole pass of each relay, begun after the first call returned.)"""
    quiet = block_record("auth", key, time.time(), by="admin", reason="manual")
    shared.client.set(shared._key(b"auth\0" + key.encode(), b"block"), json.dumps(quiet))
    wait_for(f"every relay's comparison ({key})", lambda: all(mirrored(c, key) for c in configs), 10)


def log_of(config: Path) -> str:
    path = config.parent / "eximhook.log"
    return path.read_text() if path.exists() else ""


@pytest.fixture
def shared(redis_url: str) -> Iterator[RedisBackend]:
    """What the relays share, as a test (or an admin command) sees it."""
    backend = RedisBackend.open(redis_url)
    yield backend
    backend.close()


def test_the_daemon_counts_in_redis(tmp_path: Path, redis_url: str, shared: RedisBackend, mailbox: Path,
                                    serve: Serve, cli: Run) -> None:
    config = node(tmp_path, "a", redis_url, mailbox)
    d = serve(config)
    answers = [record(d, "Bob", rcpt=f"nobody{i}@example.com", ip="192.0.2.9") for i in range(7)]
    assert answers == [b"0"] * 5 + [b"1", b"1"], "LIMIT=5: the 6th blocks, once"
    assert mirrored(config, "bob"), "in this relay's mirror files before 1"
    assert shared.counter("auth", "bob").total == 7 and shared.get_block("auth", "bob") is not None
    shown = json.loads(cli("show", "--json", "auth", "bob", config_path=config)[1])
    assert shown["block"] == shared.get_block("auth", "bob"), "copied into the local store as Redis holds it"
    assert shown["counter"]["total"] == 7, "the shared count, as Redis holds it, on any relay"
    assert d.request(encode("check-blocked", "auth", "bob")) == b"1"
    assert d.request(encode("check-blocked", "auth", "alice")) == b"0"
    [msg] = wait_for("the notification", lambda: messages(mailbox), 10)  # type: ignore[misc]
    assert str(msg["Subject"]) == "user bob blocked"
    assert "blocked auth bob: 6 invalid recipients" in log_of(config)


def test_messages_and_their_bounces_count_in_redis(tmp_path: Path, redis_url: str, shared: RedisBackend,
                                                   serve: Serve) -> None:
    config = node(tmp_path, "a", redis_url, **{"limits.auth.bounces.limit": 2, "limits.auth.bounces.mode": "enforce"})
    d = serve(config)
    assert d.request(encode("message", "auth", "carol", n="3", sender="carol@example.com", mid="<m1@example.com>",
                            id="1xVbMq-0004rw-1g")) == b"0"
    assert shared.counter("auth", "carol", "recipients").total == 3
    assert shared.counter("sender", "carol@example.com", "recipients").total == 0, "sender volume is off"
    for i in range(3):  # the message is remembered here, so its bounces count against carol too
        answer = d.request(encode("bounce", "", "carol@example.com", mid=f"<b{i}@x> <m1@example.com>",
                                  failed="550 no\r\n such user"))
    assert answer == b"1" and shared.counter("sender", "carol@example.com", "bounces").total == 3
    assert shared.counter("auth", "carol", "bounces").recent == ["550 no such user"] * 3
    assert shared.is_blocked("auth", "carol") and mirrored(config, "carol")


def test_two_relays_one_redis_trip_once(tmp_path: Path, redis_url: str, shared: RedisBackend, mailbox: Path,
                                        serve: Serve) -> None:
    """A bot alternating between two relays trips at LIMIT+1 counted across both, once:
    one block, one notification; the other relay has it from the published message (no
    periodic comparison runs meanwhile: [serve] check_interval is an hour)."""
    a, b = (node(tmp_path, n, redis_url, mailbox, **{"serve.check_interval": 3600}) for n in "ab")
    relays = [serve(a), serve(b)]
    answers = [record(relays[i % 2], "mallory", rcpt=f"x{i}@example.com") for i in range(8)]
    assert answers == [b"0"] * 5 + [b"1"] * 3, "the 6th, on relay b, blocks; then both say blocked"
    assert mirrored(b, "mallory"), "the tripping relay, before its 1"
    wait_for("relay a's mirror", lambda: mirrored(a, "mallory"), 5)
    wait_for("the notification", lambda: messages(mailbox), 10)
    wait_for("every outbox drained", lambda: shared.outbox() == [] and outbox_drained(a) and outbox_drained(b), 10)
    assert len(messages(mailbox)) == 1, "taken by the relay that tripped"
    assert [e["event"] for e in shared.history("auth", "mallory")] == ["blocked"]
    assert "copied from Redis" in log_of(a)


def test_a_block_made_elsewhere_reaches_every_relay(tmp_path: Path, redis_url: str, shared: RedisBackend,
                                                    serve: Serve) -> None:
    """Published: in the mirror within a second. Missed (no message, as while a relay was
    cut off): the whole set is compared every [serve] check_interval."""
    from eximhook.model.records import block_record

    a, b = (node(tmp_path, n, redis_url, **{"serve.check_interval": 1}) for n in "ab")
    relays = [serve(a), serve(b)]
    for _ in range(6):
        record(relays[0], "trudy")
    assert relays[1].request(encode("check-blocked", "auth", "trudy")) == b"1", "Redis is asked"
    wait_for("relay b's mirror", lambda: mirrored(b, "trudy"), 1)
    shared.block(block_record("auth", "eve", time.time(), by="admin", reason="manual"), time.time())
    wait_for("both mirrors", lambda: mirrored(a, "eve") and mirrored(b, "eve"), 1)
    compared_since(shared, (a, b), "oscar")  # a block whose message was missed: the periodic comparison


def test_an_unblock_on_one_relay_lifts_the_block_on_all(tmp_path: Path, redis_url: str, shared: RedisBackend,
                                                        mailbox: Path, serve: Serve, cli: Run) -> None:
    """The lift reaches the other relay by the published message (no periodic comparison
    runs meanwhile: [serve] check_interval is an hour)."""
    a, b = (node(tmp_path, n, redis_url, mailbox, **{"store.node": n, "serve.check_interval": 3600}) for n in "ab")
    relays = [serve(a), serve(b)]
    for i in range(6):
        record(relays[0], "mallory", rcpt=f"x{i}@example.com")
    wait_for("relay b's mirror", lambda: mirrored(b, "mallory"), 2)
    assert shared.get_block("auth", "mallory")["node"] == "a"  # type: ignore[index]
    out = cli("unblock", "auth", "mallory", config_path=b)
    assert out[0] == 0, out
    assert not mirrored(b, "mallory") and not shared.is_blocked("auth", "mallory")
    wait_for("relay a's mirror", lambda: not mirrored(a, "mallory"), 5)
    assert relays[0].request(encode("check-blocked", "auth", "mallory")) == b"0"
    lifted = json.loads(cli("history", "--json", "auth", "mallory", config_path=a)[1])[-1]
    assert (lifted["event"], lifted["by"]) == ("unblocked", "admin:root on b")
    assert record(relays[0], "mallory") == b"0", "counted from zero again, in Redis"
    assert shared.counter("auth", "mallory").total == 1
    # an admin command with Redis down changes nothing, and says why
    down = node(tmp_path, "c", f"unix://{tmp_path}/nothing.sock")
    code, _, err = cli("block", "auth", "eve", config_path=down)
    assert code == 69 and "did not answer" in err and "this relay's store was not changed" in err
    assert json.loads(cli("show", "--json", "auth", "eve", config_path=down)[1])["block"] is None
    out = cli("status", config_path=down)[1]
    assert 'serve down (' in out and 'backend is "redis", and without the daemon' in out


def test_an_exemption_added_on_one_relay_holds_on_all(tmp_path: Path, redis_url: str, shared: RedisBackend,
                                                      serve: Serve, cli: Run) -> None:
    a, b = (node(tmp_path, n, redis_url, **{"store.node": n}) for n in "ab")
    relays = [serve(a), serve(b)]

    def exempt_on(config: Path) -> list[str]:
        return [r["pattern"] for r in json.loads(cli("exempt", "list", "--json", config_path=config)[1])["exempt"]]

    assert cli("exempt", "add", "auth", "list-*", "--reason", "mailing lists", config_path=a)[0] == 0
    wait_for("relay b's copy", lambda: exempt_on(b) == ["list-*"], 2)
    answers = [record(relays[1], "list-news") for _ in range(7)]
    assert answers == [b"0"] * 7 and not shared.is_blocked("auth", "list-news"), "counted on b, never blocked"
    assert shared.shadows("auth", "list-news")[0]["exempt"] == "list-*: mailing lists"
    assert cli("exempt", "remove", "auth", "list-*", config_path=b)[0] == 0
    wait_for("relay a's copy gone", lambda: exempt_on(a) == [], 2)
    # the store's change is seen before the line that reports it is written
    wait_for("relay a's log line", lambda: "removed in Redis, so here too" in log_of(a), 2)


def test_redis_down_the_relay_counts_alone_then_reconciles(tmp_path: Path, mailbox: Path, serve: Serve,
                                                           cli: Run) -> None:
    """Redis killed mid-run: the relays answer from their own stores and count in their
    own counters (journaled); when it is back, the blocks made alone are pushed to it (not
    mailed again) and the counts sent to it once, so the bot's total is whole."""
    from ..support.redis_server import RedisServer

    redis = RedisServer(tmp_path / "redis", persist=True).start()
    try:
        a, b = (node(tmp_path, n, redis.url, mailbox, **{"store.node": n, "serve.check_interval": 1})
                for n in "ab")
        relays = [serve(a), serve(b)]
        for _ in range(2):
            assert record(relays[1], "zed") == b"0"
        redis.stop()
        answers = [record(relays[0], "kim", rcpt=f"k{i}@example.com") for i in range(7)]
        assert answers == [b"0"] * 5 + [b"1"] * 2, "relay a alone: blocked at LIMIT+1 of its own counts"
        assert mirrored(a, "kim")
        for _ in range(3):
            assert record(relays[0], "zed") == b"0"
        assert relays[1].request(encode("check-blocked", "auth", "kim")) == b"0", "b's own store: fails open"
        assert "counting on this relay alone" in log_of(a)
        code, out, err = cli("show", "--json", "auth", "zed", config_path=a)
        assert json.loads(out)["counter"]["total"] == 3 and "the counts below are this relay's own" in err
        code, out, _ = cli("status", config_path=a)
        assert code == 2 and "redis eximhook serve could not use Redis at unix://" in out
        assert "(10 count(s) to send when it can" in out
        wait_for("kim's notification, from relay a", lambda: messages(mailbox), 10)
        redis.start()
        wait_for("relay a reconciled", lambda: "answers again" in log_of(a), 10)
        assert "10 count(s) sent to it" in log_of(a)
        code, out, _ = cli("status", config_path=a)
        assert f"redis Redis at {redis.url} answers (" in out
        wait_for("relay b's mirror", lambda: mirrored(b, "kim"), 5)
        shared = RedisBackend.open(redis.url)
        try:
            assert shared.get_block("auth", "kim")["node"] == "a"  # type: ignore[index]
            assert shared.counter("auth", "zed").total == 5, "2 before, 3 while down: replayed once"
            assert shared.counter("auth", "kim").total == 7
            assert record(relays[1], "zed") == b"1", "the 6th, counted across the outage, trips"
            wait_for("zed's notification", lambda: len(messages(mailbox)) == 2, 10)
            for n in range(2):  # a whole comparison on each relay since: nothing sent again, nothing mailed again
                compared_since(shared, (a, b), f"marker{n}")
            wait_for("every outbox drained", lambda: outbox_drained(a) and outbox_drained(b), 10)
            assert len(messages(mailbox)) == 2 and shared.counter("auth", "zed").total == 6
            assert [e["event"] for e in shared.history("auth", "kim")] == ["blocked"]
        finally:
            shared.close()
    finally:
        redis.close()


def test_a_dead_relays_notifications_are_mailed_whatever_their_keys_hold(
        tmp_path: Path, redis_url: str, shared: RedisBackend, mailbox: Path, serve: Serve) -> None:
    """The proof of issue 21: a relay went down with two notifications queued, one for a
    user name that is not UTF-8 (failed AUTH). Before, the daemon's claim failed on it,
    every comparison after it too: neither was mailed, and published lifts waited for a
    comparison that never came. Now both are mailed, and a lift is applied at once."""
    bad = b"bad\xff@example.com".decode("utf-8", "surrogateescape")
    dead = RedisBackend.open(redis_url, node="dead")
    try:
        for key in (bad, "good@example.com"):
            assert dead.record(Event("auth", key, Policy("invalid", ((0, 3600.0),), "enforce")),
                               time.time() - 120)[1].queued
        config = node(tmp_path, "a", redis_url, mailbox, **{"serve.check_interval": 3600})
        serve(config)
        wait_for("both notifications", lambda: len(messages(mailbox)) == 2, 10)
        assert sorted(str(m["Subject"]) for m in messages(mailbox)) == [
            "user bad\\xff@example.com blocked", "user good@example.com blocked"]
        assert shared.outbox() == []
        assert dead.lift("auth", bad, time.time(), "admin:root") == 1
        lifted = "unblocked auth bad\\xff@example.com: lifted in Redis"
        wait_for("the lift, published", lambda: lifted in log_of(config), 5)
        assert "not what eximhook writes" not in log_of(config) and "could not follow" not in log_of(config)
    finally:
        dead.close()


def test_a_call_that_timed_out_is_counted_once(tmp_path: Path, serve: Serve) -> None:
    """Redis stopped (SIGSTOP) with a count on its way: the relay counts it alone and
    journals it; Redis runs the late call when it resumes, and the journal sends the
    same count again: one count, not two."""
    import os
    import signal

    from ..support.redis_server import RedisServer

    redis = RedisServer(tmp_path / "redis").start()
    try:
        config = node(tmp_path, "a", redis.url, **{"serve.timeout": 1.0, "store.redis_timeout": 0.3,
                                                   "serve.check_interval": 1})
        d = serve(config)
        assert record(d, "tim") == b"0"
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            assert record(d, "tim") == b"0"
            wait_for("the relay alone", lambda: "counting on this relay alone" in log_of(config), 5)
        finally:
            os.kill(redis.pid, signal.SIGCONT)
        wait_for("the relay back on Redis", lambda: "answers again" in log_of(config), 10)
        shared = RedisBackend.open(redis.url)
        try:
            assert shared.counter("auth", "tim").total == 2
        finally:
            shared.close()
    finally:
        redis.close()


def test_a_hung_redis_never_stops_the_loop(tmp_path: Path, serve: Serve) -> None:
    """A Redis that accepts and never answers: each request is answered at [serve]
    timeout with the fallback (the first calls time out, then the relay counts alone),
    and the daemon answers others (a ping) meanwhile."""
    path = f"{tmp_path}/hung.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        d = serve(node(tmp_path, "a", f"unix://{path}", **{"serve.timeout": 1.0, "store.redis_timeout": 0.8}))
        idle = d.sockets() - len(held)  # each call to Redis holds a socket of the daemon's too
        results: list[bytes] = []
        counting = [threading.Thread(target=lambda n=n: results.append(record(d, f"bob{n}"))) for n in range(8)]
        for t in counting:
            t.start()
        wait_for("the 8 requests taken and Redis asked", lambda: held and d.sockets() - len(held) >= idle + 8)
        assert d.request(b"ping\n") == b"pong" and results == [], "answered while the counts wait for Redis"
        for t in counting:
            t.join()
        assert results == [b"0"] * 8, "each count: the fallback"
        wait_for("the calls' failure", lambda: "counting on this relay alone" in log_of(d.config), 5)
        assert d.request(encode("check-blocked", "auth", "bob0")) == b"0", "alone now: answered at once"
    finally:
        stop.set()
        thread.join()
        for s in held:
            s.close()
        listener.close()


# -- in-process: the sync's own steps, on Redis and on a one-node Redis Cluster ------------------


@pytest.fixture(params=[pytest.param("redis_url", id="redis"), pytest.param("redis_cluster_url", id="redis-cluster")])
def any_redis(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """The session's Redis, or its one-node cluster: its URL, and whether it is the cluster."""
    return request.getfixturevalue(request.param), request.param == "redis_cluster_url"


@contextlib.contextmanager
def in_process(config: Path) -> Iterator[Server]:
    """A relay's daemon, not started: its sync steps called by the test (``Shared``)."""
    cfg = load(str(config))
    store = Store(cfg.store.path, cfg.store.map_size, cfg.store.owner)
    counters = Counters(cfg.store.path, cfg.store.map_size, cfg.store.owner)
    backend = RedisBackend.from_config(cfg.store)
    try:
        yield Server(cfg, store, counters, backend)
    finally:
        backend.close()
        counters.close()
        store.close()


def journal(server: Server, key: str, times: list[float], evidence: str | None = None) -> None:
    """Counts of ``key`` made on this relay alone (Redis down), as ``Shared._serve_alone`` keeps them."""
    for i, ts in enumerate(times):
        local.journal(server.store, {"ts": ts, "ns": "auth", "key": key, "counter": "invalid", "weight": 1,
                                     "evidence": evidence, "ip": None, "hold": 0.0, "once": f"test:{ts!r}:{i}"})


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=any_bytes, evidence=short_bytes)
@example(key=b"bad\xff@example.com".decode("utf-8", "surrogateescape"), evidence="\udcfe")
def test_any_byte_through_reconcile(tmp_path: Path, any_redis: tuple[str, bool], key: str, evidence: str) -> None:
    """What the sync does when Redis is back, with keys and evidence of any bytes: the
    blocks made alone pushed, the journaled counts sent (the 6th trips), a dead relay's
    notification claimed, a published lift applied. (A key that is not UTF-8 made every
    reconcile fail: issue 21.)"""
    url, cluster = any_redis
    config = node(tmp_path, uuid.uuid4().hex[:8], url, **{"store.redis_cluster": cluster, "store.node": "a"})
    with in_process(config) as server:
        shared, store = server.shared, server.store
        assert shared is not None
        shared.backend.client.flushall()  # the Redis outlives the examples
        dead = RedisBackend.from_config(dataclasses.replace(server.cfg.store, node="dead"))
        pubsub = shared.backend.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(shared.backend.channel)
            assert pubsub.get_message(timeout=1.0) is None
            now = time.time()
            assert dead.record(Event("relay", key, Policy("invalid", ((0, 3600.0),), "enforce")), now - 120)[1].queued
            assert store.block(block_record("sender", key, now - 30, by="root", reason="manual", note=evidence),
                               now - 30, False)
            journal(server, key, [now - 60 + i for i in range(6)], evidence)
            shared.up = False  # as after a failed call
            shared.sync.reconcile(now)
            assert shared.up and local.journaled(store) == []
            block = dead.get_block("auth", key)
            assert block is not None and (block["key"], block["rcpts"], block["node"]) == (key, [evidence] * 6, "a")
            assert store.get_block("auth", key) == block
            assert dead.get_block("sender", key) == dict(store.get_block("sender", key) or {}, node="a")
            assert (store.get_block("relay", key) or {}).get("node") == "dead", "claimed, copied here"
            assert sorted((i["block"]["ns"], i["block"]["key"]) for i in store.outbox()) == [
                ("auth", key), ("relay", key)], "both mailed from here"
            assert dead.outbox() == []
            assert dead.lift("auth", key, now + 1, "admin:root") == 1
            (message,) = [m for m in published(pubsub, 4) if m["op"] == "unblock"]  # dead, pushed, tripped, lifted
            shared.sync.apply(json.dumps(message).encode(), now + 1)
            assert not store.is_blocked("auth", key) and store.is_blocked("relay", key)
        finally:
            pubsub.close()
            dead.close()


def test_a_block_tripped_by_a_journaled_count_is_dated_when_made(tmp_path: Path, redis_url: str, cli: Run) -> None:
    """Counted at the event's time (its windows), dated when Redis made the block, the
    event's time kept (``event_at``) and shown."""
    from eximhook.periods import format_time

    config = node(tmp_path, "a", redis_url)
    now = time.time()
    with in_process(config) as server:
        assert server.shared is not None
        journal(server, "kim", [now - 100 + i for i in range(6)])
        server.shared.sync.reconcile(now)
        backend = server.shared.backend
        block = backend.get_block("auth", "kim")
        assert block is not None and (block["since"], block["event_at"], block["count"]) == (now, now - 95, 6)
        assert server.store.get_block("auth", "kim") == block
        assert [(e["event"], e["ts"]) for e in backend.history("auth", "kim")] == [("blocked", now)]
        (item,) = server.store.outbox()
        assert (item["ts"], item["block"]["since"]) == (now, now)
    out = cli("show", "auth", "kim", config_path=config)[1]
    assert f"  blocked at {format_time(now)} by eximhook\n" in out
    assert f"  tripped by an event at {format_time(now - 95)}, counted when Redis answered again\n" in out


def test_a_bad_message_or_value_in_redis_is_logged_once_and_passed_over(tmp_path: Path, redis_url: str) -> None:
    """Not eximhook's (corrupt, another program's): the sync logs it and goes on, each
    value once however often the comparison meets it."""
    config = node(tmp_path, "a", redis_url, **{"store.node": "a"})
    with in_process(config) as server:
        shared = server.shared
        assert shared is not None
        now = time.time()
        shared.backend.client.set(shared.backend._key(b"auth\0broken", b"block"), b"\xff{")
        shared.backend.block(block_record("auth", "eve", now, by="admin", reason="manual"), now)
        for _ in range(3):
            shared.sync.reconcile(now)
        shared.sync.apply(b'{"op": "unblock"}', now)
        shared.sync.apply(b"\xff", now)
        assert server.store.is_blocked("auth", "eve")
    log = log_of(config)
    assert log.count("eximhook:{auth\\x00broken}:block in Redis is not what eximhook writes there (not JSON") == 1
    assert "that is not eximhook's (KeyError: 'ns'): b'{\"op\": \"unblock\"}': passed over" in log
