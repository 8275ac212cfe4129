"""One suite over every storage backend: whatever LMDB promises, Redis promises too.

Each test gets ``make(node)``, which opens a backend as relay ``node`` would: for LMDB
both "nodes" open the one store of this machine; for Redis each node has its own
client of the one redis-server (a real one, ``support/redis_server.py``).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eximhook.backends.base import Backend
from eximhook.backends.lmdb import LmdbBackend
from eximhook.backends.redis import RedisBackend
from eximhook.config.load import StoreConfig
from eximhook.model.evidence import cut
from eximhook.model.policy import Policy
from eximhook.model.records import Event, block_record

from ..support.marks import needs_redis

Make = Callable[[int], Backend]
# "redis-cluster": a one-node Redis Cluster (support/redis_ha.py), which refuses what a real
# cluster refuses: a command or script whose declared keys lie in two slots (CROSSSLOT;
# redis-py refuses it before sending). Every script declares every key it touches.
BACKENDS = [pytest.param("lmdb", id="lmdb"), pytest.param("redis", id="redis", marks=needs_redis),
            pytest.param("redis-cluster", id="redis-cluster", marks=needs_redis)]


def opener(kind: str, tmp_path: Path, redis_url: str | None) -> Make:
    def make(node: int) -> Backend:
        if kind == "lmdb":
            return LmdbBackend.open(str(tmp_path / "store"))
        assert redis_url is not None
        if kind == "redis":
            return RedisBackend.open(redis_url, node=f"node{node}")
        if kind == "redis-cluster":
            return RedisBackend.from_config(StoreConfig(backend="redis", redis_url=redis_url, redis_timeout=2.0,
                                                        redis_cluster=True, node=f"node{node}"))
        raise AssertionError(kind)
    return make


@pytest.fixture(params=BACKENDS)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    yield from _opened(request, tmp_path)


@pytest.fixture(params=BACKENDS[1:])
def make_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    """``make`` of the Redis backends only (what only a shared store does: claim, lift, publish)."""
    yield from _opened(request, tmp_path)


def _opened(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    url = {"lmdb": None, "redis": "redis_url", "redis-cluster": "redis_cluster_url"}[request.param]
    url = request.getfixturevalue(url) if url else None
    opened: list[Backend] = []

    def make(node: int) -> Backend:
        opened.append(opener(request.param, tmp_path, url)(node))
        return opened[-1]

    yield make
    for b in opened:
        b.close()


@pytest.fixture
def backend(make: Make) -> Backend:
    return make(0)


def enforce(*windows: tuple[int, float]) -> Policy:
    return Policy("invalid", windows, "enforce")


NOW = 1_700_000_000.25


# -- the window: exact, against a brute-force oracle -------------------------------------


def oracle(events: list[tuple[float, int]], i: int, period: float) -> int:
    t = events[i][0]
    return sum(w for u, w in events[: i + 1] if u > t - period)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gaps=st.lists(st.sampled_from([0.0, 0.5, 1.0, 9.99, 10.0, 10.01, 30.0]), min_size=1, max_size=40),
       weights=st.lists(st.integers(min_value=1, max_value=20), min_size=40, max_size=40),
       limit=st.integers(min_value=1, max_value=60))
def test_window_is_exact(backend: Backend, gaps: list[float], weights: list[int], limit: int) -> None:
    key = uuid.uuid4().hex  # a subject of its own per example: the backend outlives them
    policy = Policy("invalid", ((limit, 10.0), (limit * 3, 25.0)), "shadow")
    events, t = [], NOW
    for gap, w in zip(gaps, weights, strict=False):
        t += gap
        events.append((t, w))
    for i, (t, w) in enumerate(events):
        tally, outcome = backend.record(Event("auth", key, policy, weight=w), t)
        expect = [oracle(events, i, p) for _, p in policy.windows]
        assert tally.counts == expect
        over = [c > lim for c, (lim, _) in zip(expect, policy.windows, strict=True)]
        assert tally.over == (over.index(True) if any(over) else -1)
        assert not outcome.blocked and tally.counter.total == sum(w for _, w in events[: i + 1])


def distinct_oracle(events: list[tuple[float, tuple[int, ...]]], i: int, period: float) -> int:
    """How many different values the events in (t - period, t] name."""
    t = events[i][0]
    return len({x for u, values in events[: i + 1] if u > t - period for x in values})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gaps=st.lists(st.sampled_from([0.0, 1.0, 9.99, 10.0, 10.01, 30.0]), min_size=1, max_size=30),
       values=st.lists(st.lists(st.sampled_from([0, 1, 2, 3, 5, 8, 13, 21, (1 << 52) - 1]), min_size=1, max_size=4),
                       min_size=30, max_size=30),
       limit=st.integers(min_value=1, max_value=6))
def test_a_distinct_window_is_exact_up_to_its_limit(backend: Backend, gaps: list[float], values: list[list[int]],
                                                    limit: int) -> None:
    """Distinct values (``rcpts``, ``networks``): exact while the true count is at most the
    limit, over it whenever the true count is; both backends alike, 52-bit tags whole."""
    key = uuid.uuid4().hex
    policy = Policy("rcpts", ((limit, 10.0), (limit * 2, 25.0)), "shadow")
    events, t = [], NOW
    for gap, v in zip(gaps, values, strict=False):
        t += gap
        events.append((t, tuple(v)))
    for i, (t, v) in enumerate(events):
        tally, _ = backend.record(Event("auth", key, policy, tags=v), t)
        for count, (lim, period) in zip(tally.counts, policy.windows, strict=True):
            true = distinct_oracle(events, i, period)
            assert count == true if true <= lim else count == lim + 1


def ratio_oracle(events: list[tuple[float, int, bool]], i: int, period: float, limit: int,
                 minimum: int) -> tuple[int, bool]:
    t = events[i][0]
    inside = [(w, bad) for u, w, bad in events[: i + 1] if u > t - period]
    total, bad = sum(w for w, _ in inside), sum(w for w, b in inside if b)
    return bad * 100 // total, total >= minimum and bad * 100 > limit * total


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gaps=st.lists(st.sampled_from([0.0, 1.0, 9.99, 10.0, 30.0]), min_size=1, max_size=30),
       outcomes=st.lists(st.tuples(st.integers(1, 3), st.booleans()), min_size=30, max_size=30),
       limit=st.integers(min_value=1, max_value=99), minimum=st.integers(min_value=1, max_value=8))
def test_a_ratio_window_is_exact_and_trips_once(backend: Backend, gaps: list[float],
                                                outcomes: list[tuple[int, bool]], limit: int, minimum: int) -> None:
    """The failure ratio (``failrate``): the percentage of bad events (shown from the
    first event, to tune from), over the limit only from ``minimum`` events on; the
    first event over the limit trips, once."""
    key = uuid.uuid4().hex
    policy = Policy("failrate", ((limit, 10.0),), "enforce", minimum)
    events, t, tripped = [], NOW, 0
    for gap, (w, bad) in zip(gaps, outcomes, strict=False):
        t += gap
        events.append((t, w, bad))
    for i, (t, w, bad) in enumerate(events):
        tally, outcome = backend.record(Event("relay", key, policy, weight=w, tags=(int(bad),)), t)
        percent, over = ratio_oracle(events, i, 10.0, limit, minimum)
        assert (tally.counts[0], tally.over >= 0) == (percent, over)
        tripped += outcome.tripped
    assert tripped == int(any(ratio_oracle(events, i, 10.0, limit, minimum)[1] for i in range(len(events))))


@pytest.mark.parametrize("name", ["invalid", "failrate", "rcpts"])
def test_past_the_cap_every_backend_keeps_the_window_python_keeps(backend: Backend, name: str) -> None:
    """Past ``CAP`` events a window compacts (a sum, a ratio) or keeps its newest values
    (a distinct counter): every backend's window, event by event, is the one the Python
    model (``ratelimit``) keeps, its events and sums alike, and so are its counts. Bursts
    fill slots, pauses let events leave: the window compacts, shrinks and fills again."""
    import random

    from eximhook.model import ratelimit

    rng, key = random.Random(7), uuid.uuid4().hex
    policy = Policy(name, ((600 if name == "rcpts" else 10**6, 60.0),), "shadow", minimum=5)
    model = ratelimit.Window(60.0)
    t, full = NOW, 0
    for i in range(2600):
        t += rng.choice([0.0, 0.001, 0.01, 0.05]) if i % 700 else 45.0
        weight, tags = rng.randint(1, 4), (rng.randint(0, 1),)
        if name == "rcpts":
            weight, tags = 1, tuple(rng.randrange(1 << 52) if rng.random() < 0.7 else rng.randrange(50)
                                    for _ in range(rng.randint(1, 3)))
        count = ratelimit.add(model, policy.adds, t, weight, tags, policy.windows[0][0], policy.minimum)[0]
        tally, _ = backend.record(Event("relay", key, policy, weight=weight, tags=tags), t)
        assert tally.counts == [count], i
        full += max(model.weights) > 4 if name != "rcpts" else len(model.times) == 601  # compacted, or cut
        if i % 97 == 0 or i > 2590:
            (w,) = backend.counter("relay", key, name).windows
            assert (w.times, w.weights, w.tags, w.total, w.bad) == (model.times, model.weights, model.tags,
                                                                   model.total, model.bad), i
    assert 0 < len(model.times) <= ratelimit.CAP and full > 100


def test_clock_stepping_back_counts_at_the_newest_time(backend: Backend) -> None:
    policy = enforce((5, 10.0))
    backend.record(Event("auth", "u", policy), NOW)
    tally, _ = backend.record(Event("auth", "u", policy, weight=2), NOW - 100)
    assert tally.counts == [3]
    tally, _ = backend.record(Event("auth", "u", policy), NOW + 10.0)  # NOW is out of (NOW, NOW + 10]
    assert tally.counts == [1]


# -- the trip: exactly once ------------------------------------------------------------------


def test_trips_once_at_limit_plus_one(backend: Backend) -> None:
    policy = enforce((5, 3600.0))
    tripped = []
    for i in range(12):
        ev = Event("auth", "bob", policy, evidence=f"nobody{i}@example.com", ip=f"192.0.2.{i % 3}", keep_evidence=4,
                   keep_ips=2)
        _, outcome = backend.record(ev, NOW + i, hold=30.0)
        tripped.append(outcome.tripped)
        assert outcome.blocked == (i >= 5)
    assert tripped == [False] * 5 + [True] + [False] * 6
    assert backend.is_blocked("auth", "bob") and not backend.is_blocked("auth", "bo")
    block = backend.get_block("auth", "bob")
    assert block is not None
    assert {k: block[k] for k in ("ns", "key", "since", "by", "reason", "counter", "limit", "period", "period_text",
                                  "count", "total", "ips", "rcpts")} == {
        "ns": "auth", "key": "bob", "since": NOW + 5, "by": "eximhook", "reason": "limit", "counter": "invalid",
        "limit": 5, "period": 3600.0, "period_text": "1h", "count": 6, "total": 6,
        "ips": ["192.0.2.1", "192.0.2.2"], "rcpts": [f"nobody{i}@example.com" for i in range(2, 6)]}
    assert backend.blocks() == [block] and backend.blocks("relay") == []
    (item,) = backend.outbox()
    assert (item["kind"], item["state"], item["attempts"], item["block"], item["hold_until"]) == (
        "blocked", "queued", 0, block, NOW + 5 + 30.0)
    events = [e["event"] for e in backend.history("auth", "bob")]
    assert events == ["blocked"]
    assert backend.counter("auth", "bob").total == 12


def test_a_second_window_trips_too(backend: Backend) -> None:
    policy = enforce((3, 10.0), (5, 3600.0))
    outcomes = [backend.record(Event("auth", "w", policy), NOW + 20 * i)[1] for i in range(6)]
    assert [o.tripped for o in outcomes] == [False] * 5 + [True]
    block = backend.get_block("auth", "w")
    assert block is not None and (block["limit"], block["period"], block["count"]) == (5, 3600.0, 6)


def test_shadow_mode_records_once_per_window_and_never_blocks(backend: Backend) -> None:
    policy = Policy("recipients", ((5, 3600.0),), "shadow")
    results = [backend.record(Event("auth", "s", policy, weight=2), NOW + i, notify_shadow=True)[1]
               for i in range(6)]
    assert [o.shadowed for o in results] == [False, False, True, False, False, False]
    assert not any(o.blocked or o.tripped for o in results) and not backend.is_blocked("auth", "s")
    (shadow,) = backend.shadows("auth", "s")
    assert (shadow["counter"], shadow["limit"], shadow["count"], shadow["exempt"]) == ("recipients", 5, 6, None)
    assert [i["kind"] for i in backend.outbox()] == ["would-block"]
    assert [e["event"] for e in backend.history("auth", "s")] == ["would-block"]
    # a raised limit is another setting: its trip is recorded anew
    raised = Policy("recipients", ((13, 3600.0),), "shadow")
    assert backend.record(Event("auth", "s", raised, weight=2), NOW + 7, notify_shadow=True)[1].shadowed
    assert backend.clear_shadows("auth", "s") == 2 and backend.shadows("auth", "s") == []


def test_an_exempt_subject_is_recorded_not_blocked_nor_mailed(backend: Backend) -> None:
    exempt = {"auth": [("*@trusted.example", "the mailing list")]}
    policy = enforce((1, 3600.0))
    outcomes = [backend.record(Event("auth", "list@trusted.example", policy), NOW + i, notify_shadow=True,
                               exempt=exempt)[1] for i in range(3)]
    assert [o.shadowed for o in outcomes] == [False, True, False]
    assert outcomes[1].exempt == "*@trusted.example: the mailing list"
    assert not backend.is_blocked("auth", "list@trusted.example") and backend.outbox() == []
    (shadow,) = backend.shadows()
    assert shadow["exempt"] == "*@trusted.example: the mailing list"


# -- by hand ---------------------------------------------------------------------------------


def manual(ns: str, key: str) -> dict[str, Any]:
    from eximhook.model.records import block_record

    return block_record(ns, key, NOW, by="root", reason="manual", note="seen in the logs")


def test_block_unblock_reset(backend: Backend) -> None:
    assert backend.block(manual("relay", "192.0.2.9"), NOW, notify=False)
    assert not backend.block(manual("relay", "192.0.2.9"), NOW + 1)
    block = backend.get_block("relay", "192.0.2.9")
    assert block is not None and block.pop("node", "node0") == "node0"  # Redis: the relay that made it
    assert block == manual("relay", "192.0.2.9")
    assert backend.outbox() == []
    assert backend.unblock("relay", "192.0.2.9", NOW + 2, "root")
    assert not backend.unblock("relay", "192.0.2.9", NOW + 3, "root")
    assert not backend.is_blocked("relay", "192.0.2.9")
    assert [(e["event"], e["by"]) for e in backend.history("relay", "192.0.2.9")] == [
        ("blocked", "root"), ("unblocked", "root")]
    policy = enforce((2, 3600.0))
    for i in range(3):
        backend.record(Event("relay", "192.0.2.9", policy), NOW + 10 + i)
    assert backend.is_blocked("relay", "192.0.2.9")
    backend.reset("relay", "192.0.2.9")
    assert backend.counter("relay", "192.0.2.9").total == 0
    assert backend.unblock("relay", "192.0.2.9", NOW + 20, "root", event="expired")
    assert backend.history("relay", "192.0.2.9")[-1]["event"] == "expired"
    # an unblock starts the counters from zero too, would-block records included
    backend.record(Event("relay", "192.0.2.8", Policy("invalid", ((0, 3600.0),), "shadow")), NOW)
    assert backend.shadows("relay", "192.0.2.8")
    assert not backend.unblock("relay", "192.0.2.8", NOW + 20, "root")
    assert backend.counter("relay", "192.0.2.8").total == 0 and not backend.shadows("relay", "192.0.2.8")
    # neither blocked nor would-be: nothing changes, the counters are kept
    backend.record(Event("relay", "192.0.2.7", policy), NOW)
    assert not backend.unblock("relay", "192.0.2.7", NOW + 20, "root")
    assert backend.counter("relay", "192.0.2.7").total == 1
    # counted from zero again: the next trip is a new block, with its own notification
    assert not backend.record(Event("relay", "192.0.2.9", policy), NOW + 21)[1].blocked
    assert len(backend.outbox()) == 1
    for i in range(2):
        backend.record(Event("relay", "192.0.2.9", policy), NOW + 22 + i)
    assert len(backend.outbox()) == 2


# -- hostile keys ------------------------------------------------------------------------------


hostile = st.one_of(
    st.binary(min_size=1, max_size=64).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.text(min_size=1, max_size=64),
    st.sampled_from(["a}b", "{x}", "}:block", "a\nb", "\r\n.\r\n", "x" * 5000, "x" * 4999 + "y", "\0"]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=hostile, other=hostile, evidence=hostile)
def test_hostile_keys_are_kept_whole_and_apart(backend: Backend, key: str, other: str, evidence: str) -> None:
    ns = "auth"
    key, other = f"{uuid.uuid4().hex}{key}", f"{uuid.uuid4().hex}{other}"
    policy = enforce((1, 3600.0))
    for i in range(2):
        backend.record(Event(ns, key, policy, evidence=evidence, ip=evidence), NOW + i)
    backend.record(Event(ns, other, policy), NOW)
    assert backend.is_blocked(ns, key) and not backend.is_blocked(ns, other)
    block = backend.get_block(ns, key)
    assert block is not None and block["key"] == key and block["rcpts"] == [cut(evidence)] * 2, "kept cut"
    assert block["ips"] == [cut(evidence)]
    assert backend.counter(ns, other).total == 1
    assert backend.unblock(ns, key, NOW + 5, "root") and not backend.is_blocked(ns, key)


# -- any byte through Redis: every script, on Redis and on a one-node cluster --------------------


@pytest.fixture
def relays(make_redis: Make) -> tuple[RedisBackend, RedisBackend]:
    """Two relays' backends on one Redis (or cluster), for every example of a test."""
    a, b = make_redis(0), make_redis(1)
    assert isinstance(a, RedisBackend) and isinstance(b, RedisBackend)
    return a, b


def published(pubsub: Any, n: int) -> list[dict[str, Any]]:
    """The next ``n`` messages on the channel (published already: each comes at once)."""
    return [json.loads(pubsub.get_message(timeout=5.0)["data"]) for _ in range(n)]


# Keys as Exim hands them over (base64 of raw bytes: any byte, surrogate-escaped when it
# is not UTF-8), NUL, CR/LF, kilobytes (past store._MAX_RAW_KEY: digested in key names)
_odd_bytes = [b"bad\xff@example.com", b"\0", b"a\r\n.\r\nb", b"\xed\xb3\xbf", b"\xf0\x9f\x98\x80", b"}:block{",
              b"\\udcff", b'"\\']
any_bytes = st.one_of(
    st.binary(min_size=1, max_size=64), st.binary(min_size=1000, max_size=3000),
    st.sampled_from([*_odd_bytes, bytes(range(256))]),
).map(lambda b: b.decode("utf-8", "surrogateescape"))
# Evidence of any byte, short enough to be kept whole (evidence.py cuts a long one)
short_bytes = st.one_of(st.binary(min_size=1, max_size=64), st.sampled_from(_odd_bytes)).map(
    lambda b: b.decode("utf-8", "surrogateescape"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=any_bytes, evidence=short_bytes)
def test_any_byte_through_every_script(relays: tuple[RedisBackend, RedisBackend], key: str, evidence: str) -> None:
    """The count that trips, a would-block, a block by hand, the claim of their queued
    notifications, the lift and what each publishes: the key and evidence come back as
    they went in, whatever bytes they hold (Lua's cjson refused the escape of a byte
    that is not UTF-8, and the claim of every notification beside it failed)."""
    a, b = relays
    a.client.flushall()  # the backends outlive the examples
    pubsub = a.client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(a.channel)
        assert pubsub.get_message(timeout=1.0) is None
        policy = enforce((1, 3600.0))
        outcomes = [a.record(Event("auth", key, policy, evidence=evidence, ip=evidence), NOW + i)[1] for i in range(2)]
        assert [o.tripped for o in outcomes] == [False, True] and outcomes[1].queued > 0
        assert a.counter("auth", key).recent == [cut(evidence)] * 2 and a.counter("auth", key).ips == [cut(evidence)]
        shadow = Policy("recipients", ((0, 3600.0),), "shadow")
        assert a.record(Event("auth", key, shadow, evidence=evidence), NOW, notify_shadow=True)[1].shadowed
        assert [(r["key"], r["rcpts"]) for r in a.shadows("auth", key)] == [(key, [cut(evidence)])]
        assert a.block_queued(dict(manual("relay", key), note=evidence), NOW) > 0
        block = a.get_block("auth", key)
        assert block is not None and (block["key"], block["rcpts"], block["ips"]) == (key, [cut(evidence)] * 2,
                                                                                      [cut(evidence)])
        # relay a stopped before taking them: relay b claims all three
        claimed = b.claim(NOW + 61, mine_after=10, orphan_after=60)
        assert sorted((i["kind"], i["block"]["ns"], i["block"]["key"]) for i in claimed) == [
            ("blocked", "auth", key), ("blocked", "relay", key), ("would-block", "auth", key)]
        assert a.outbox() == [] and b.claim(NOW + 62, mine_after=10, orphan_after=60) == []
        assert b.lift("auth", key, NOW + 70, "root") == 1 and b.lift("relay", key, NOW + 70, "root") == 1
        lifted = b.lifted("relay", key)
        assert lifted is not None and (lifted["key"], lifted["note"]) == (key, evidence)
        assert [(e["event"], e["key"]) for e in b.history("auth", key)] == [
            ("would-block", key), ("blocked", key), ("unblocked", key)]
        assert [(m["op"], m.get("record", m)["key"]) for m in published(pubsub, 4)] == [
            ("block", key), ("block", key), ("unblock", key), ("unblock", key)]
        assert not a.is_blocked("auth", key) and a.counter("auth", key).total == 0
    finally:
        pubsub.close()


def test_a_bad_key_queued_beside_a_healthy_one_both_claimed(relays: tuple[RedisBackend, RedisBackend]) -> None:
    """The proof of issue 21: a block keyed ``bad\\xff@…`` queued by a relay that went
    down made every claim fail, the healthy notification's beside it too."""
    dead, alive = relays
    bad = b"bad\xff@example.com".decode("utf-8", "surrogateescape")
    for key in (bad, "good@example.com"):
        assert dead.record(Event("auth", key, enforce((0, 3600.0))), NOW)[1].queued > 0
    claimed = alive.claim(NOW + 61, mine_after=10, orphan_after=60)
    assert sorted(i["block"]["key"] for i in claimed) == [bad, "good@example.com"]
    assert alive.outbox() == []


def test_a_count_sent_late_is_counted_then_and_its_block_dated_now(relays: tuple[RedisBackend, RedisBackend]) -> None:
    """A relay's journal (Redis was down) sends counts made seconds ago: each counts in
    the windows at its own time, and the block it trips is made now, the event's time
    kept as evidence; its notification is due from now, for the claim's ages too."""
    backend = relays[0]
    policy = enforce((1, 10.0))
    backend.record(Event("auth", "late", policy), NOW - 30, made=NOW)
    tally, outcome = backend.record(Event("auth", "late", policy), NOW - 14, made=NOW)
    assert tally.counts == [1] and not outcome.tripped, "the first fell out of (NOW-24, NOW-14]"
    tally, outcome = backend.record(Event("auth", "late", policy), NOW - 13, made=NOW)
    assert outcome.tripped and list(backend.counter("auth", "late").windows[0].times) == [NOW - 14, NOW - 13]
    block = backend.get_block("auth", "late")
    assert block is not None and (block["since"], block["event_at"]) == (NOW, NOW - 13)
    assert [(e["event"], e["ts"]) for e in backend.history("auth", "late")] == [("blocked", NOW)]
    (item,) = backend.outbox()
    assert (item["ts"], item["hold_until"]) == (NOW, NOW)
    assert backend.claim(NOW + 59, mine_after=60, orphan_after=60) == []
    for _ in range(2):  # counted when it happened, as a request is: one time, nothing more to keep
        backend.record(Event("auth", "now", policy), NOW, made=NOW)
    block = backend.get_block("auth", "now")
    assert block is not None and block["since"] == NOW and "event_at" not in block


def test_an_undecodable_entry_is_reported_once_and_the_others_go_on(relays: tuple[RedisBackend, RedisBackend]) -> None:
    """A value in Redis that eximhook did not write (corrupt, another program's): the
    daemon reports it (``skip``) and goes on; a notification no relay can read is taken
    off by the one relay that reports it. Without ``skip``, it is an error, not a crash
    of some later step."""
    from eximhook.backends.redis_values import Undecodable

    a, b = relays
    policy = enforce((0, 3600.0))
    for key in ("first", "second"):
        a.record(Event("auth", key, policy), NOW)
    outbox = a._key(b"auth\0first", b"outbox")
    a.client.hset(outbox, "99", b"\xff not JSON")
    a.client.hset(outbox, "98", b'{"ts": 1}')  # JSON, but not a notification
    a.client.set(a._key(b"auth\0broken", b"block"), b"{")
    with pytest.raises(Undecodable, match="not JSON"):
        a.blocks()
    with pytest.raises(Undecodable):
        a.claim(NOW + 61, mine_after=10, orphan_after=60)
    assert a.client.hlen(outbox) == 3, "raised before anything was taken"
    reported: list[Undecodable] = []
    a.skip = b.skip = reported.append
    assert [r["key"] for r in a.blocks()] == ["first", "second"]
    assert [(r.key, r.field, r.raw) for r in reported] == [(a._key(b"auth\0broken", b"block"), None, b"{")]
    assert "is not what eximhook writes there (not JSON: Expecting property name" in str(reported[0])
    reported.clear()
    claims = [r.claim(NOW + 61, mine_after=10, orphan_after=60) for r in (a, b)]
    assert sorted(i["block"]["key"] for c in claims for i in c) == ["first", "second"]
    assert sorted(r.field for r in reported) == [b"98", b"99"], "each reported by the one relay that took it off"
    assert a.client.hlen(outbox) == 0


# -- processes racing across two nodes ---------------------------------------------------------


def _racer(make: Make, node: int, barrier: Any, out: Any) -> None:
    backend = make(node)
    try:
        barrier.wait(timeout=30)
        _, outcome = backend.record(Event("auth", "bot", enforce((5, 3600.0)), ip=f"node{node}"), NOW)
        out.put((outcome.blocked, outcome.tripped))
    except Exception as exc:  # raised again by the test, as it was, not waited for
        out.put(exc)
    finally:
        backend.close()


@pytest.mark.slow
def test_32_processes_on_two_nodes_make_one_block_and_one_notification(make: Make) -> None:
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(32), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(make, i % 2, barrier, out)) for i in range(32)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for r in results:
        if isinstance(r, Exception):
            raise r
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sum(tripped for _, tripped in results) == 1
    backend = make(0)
    blocked = sum(blocked for blocked, _ in results)
    # the contract (Backend.record): every count over the limit answers blocked; one
    # within the limit may too, if the block lands between its count and its answer
    assert blocked >= 32 - 5
    assert len(backend.blocks()) == 1 and len(backend.outbox()) == 1
    assert [e["event"] for e in backend.history("auth", "bot")] == ["blocked"]
    assert backend.counter("auth", "bot").total == 32


# -- Redis only ----------------------------------------------------------------------------------


@needs_redis
def test_scripts_are_loaded_again_after_a_flush(redis_url: str) -> None:
    """EVALSHA first; a Redis restarted or failed over has no scripts (NOSCRIPT): loaded again."""
    backend = RedisBackend.open(redis_url)
    try:
        policy = enforce((1, 3600.0))
        backend.record(Event("auth", "f", policy), NOW)
        backend.client.script_flush()
        assert backend.record(Event("auth", "f", policy), NOW + 1)[1].tripped
        assert backend.client.script_exists(backend._record.sha) == [True]
    finally:
        backend.close()


@needs_redis
def test_changes_are_published(redis_url: str) -> None:
    """Each relay's daemon follows them (serve.shared): a block with its record, a lift."""
    backend = RedisBackend.open(redis_url, node="a")
    pubsub = backend.client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(backend.channel)
        assert pubsub.get_message(timeout=1.0) is None  # the subscription, not shown
        policy = enforce((1, 3600.0))
        for i in range(3):  # the second trips; the third finds the block made: one message
            backend.record(Event("auth", "pub", policy), NOW + i)
        backend.record(Event("auth", "quiet", Policy("invalid", ((0, 3600.0),), "shadow")), NOW)
        record = block_record("relay", "192.0.2.7", NOW, by="admin", reason="manual")
        assert backend.block(record, NOW) and not backend.block(record, NOW + 1)
        assert backend.unblock("relay", "192.0.2.7", NOW + 2, "admin") and not backend.unblock(
            "relay", "192.0.2.7", NOW + 3, "admin")
        published = []
        while (msg := pubsub.get_message(timeout=0.2)) is not None:
            assert msg["channel"] == b"eximhook:changes"
            published.append(json.loads(msg["data"]))
        assert published == [
            {"op": "block", "node": "a", "record": backend.get_block("auth", "pub")},
            {"op": "block", "node": "a", "record": dict(record, node="a")},
            {"op": "unblock", "node": "a", "ns": "relay", "key": "192.0.2.7", "by": "admin", "event": "unblocked"}]
    finally:
        pubsub.close()
        backend.close()


@needs_redis
def test_each_notification_goes_to_one_relay(redis_url: str) -> None:
    """The relay whose script queued it takes it; one that stopped first claims its own
    at restart; any relay claims one nobody took; never two relays one notification."""
    a, b = RedisBackend.open(redis_url, node="a"), RedisBackend.open(redis_url, node="b")
    try:
        policy = enforce((0, 3600.0))
        _, taken = a.record(Event("auth", "taken", policy), NOW)
        assert taken.tripped and taken.queued > 0
        assert a.take("auth", "taken", taken.queued) and not b.take("auth", "taken", taken.queued)
        assert a.record(Event("auth", "left", policy), NOW)[1].queued > 0  # a stops before taking it
        assert [i["block"]["key"] for i in a.outbox()] == ["left"]
        assert a.claim(NOW + 5, mine_after=10, orphan_after=60) == []  # a may still be taking it
        assert b.claim(NOW + 30, mine_after=10, orphan_after=60) == []  # not b's, and a may be back soon
        (mine,) = a.claim(NOW + 30, mine_after=10, orphan_after=60)
        assert (mine["node"], mine["block"]["key"]) == ("a", "left") and a.outbox() == []
        b.record(Event("auth", "orphan", policy), NOW)  # b is down for good
        for _ in range(3):
            assert a.claim(NOW + 30, mine_after=10, orphan_after=60) == []
        claimed = [r.claim(NOW + 61, mine_after=10, orphan_after=60) for r in (a, b, a)]
        assert [[i["block"]["key"] for i in c] for c in claimed] == [["orphan"], [], []]
    finally:
        a.close()
        b.close()


@needs_redis
def test_a_count_sent_again_is_counted_once(redis_url: str) -> None:
    """A relay sends again the counts it made alone: after a call that timed out (which
    Redis may have run after all), or a crash between sending one and forgetting it:
    each counted once."""
    from eximhook.backends.redis_values import Replayed

    backend = RedisBackend.open(redis_url, node="a")
    try:
        policy = enforce((5, 3600.0))
        backend.record(Event("auth", "r", policy, once="a:1"), NOW)
        with pytest.raises(Replayed):
            backend.record(Event("auth", "r", policy, once="a:1"), NOW)
        backend.record(Event("auth", "r", policy, once="a:2"), NOW)
        assert backend.counter("auth", "r").total == 2
    finally:
        backend.close()


def test_one_turns_counts_in_one_round_trip_each_once(make_redis: Make) -> None:
    """``record_many`` (a turn of the daemon's loop): each count as ``record`` makes it,
    in order, the one that crosses the limit blocking once; sent again, each is counted
    already; after Redis forgot the script (a restart, a failover), it is loaded again."""
    from eximhook.backends.redis_values import Replayed

    backend = make_redis(0)
    assert isinstance(backend, RedisBackend)
    policy = enforce((3, 60.0))
    items = [(Event("auth", k, policy, once=f"t:{i}"), NOW + i, 0.0, None) for i, k in enumerate("abaaa")]
    found = [x for x in backend.record_many(items) if not isinstance(x, Exception)]
    assert [(t.key, t.counts, o.tripped, o.blocked) for t, o in found] == [
        ("a", [1], False, False), ("b", [1], False, False), ("a", [2], False, False), ("a", [3], False, False),
        ("a", [4], True, True)]
    assert all(isinstance(x, Replayed) for x in backend.record_many(items))
    assert [backend.counter("auth", k).total for k in "ab"] == [4, 1]
    assert [e["event"] for e in backend.history("auth", "a")] == ["blocked"]
    backend.client.script_flush()
    (again,) = backend.record_many([(Event("auth", "c", policy, once="t:new"), NOW, 0.0, None)])
    assert not isinstance(again, Exception) and again[0].counts == [1]


@needs_redis
def test_every_key_of_a_subject_shares_its_hash_tag(redis_url: str) -> None:
    from redis.crc import key_slot

    backend = RedisBackend.open(redis_url)
    try:
        for key in ("bob", "a}b{c", "x" * 3000):
            backend.record(Event("auth", key, enforce((0, 3600.0))), NOW)
            backend.record(Event("auth", key, Policy("recipients", ((0, 3600.0),), "shadow")), NOW)
        subject_keys = [k for k in backend.client.scan_iter() if b":{" in k]
        by_tag: dict[bytes, set[bytes]] = {}
        for k in subject_keys:
            tag = k[k.index(b"{") + 1 : k.index(b"}", k.index(b"{"))]
            by_tag.setdefault(tag, set()).add(k.rpartition(b"}:")[2])
        assert sorted(by_tag.values()) == [
            {b"block", b"c2:invalid", b"c2:recipients", b"shadow", b"audit", b"seq", b"outbox"}] * 3
        assert len({key_slot(k) for k in subject_keys}) == 3  # Redis Cluster's slot of each: one per subject
    finally:
        backend.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=any_bytes, learned=st.lists(st.tuples(st.integers(0, 23), st.floats(2e9, 3e9)), min_size=1, max_size=60,
                                        unique_by=lambda x: x[1]))
def test_the_networks_an_account_is_known_from_are_shared_and_bounded(
        relays: tuple[RedisBackend, RedisBackend], user: str, learned: list[tuple[int, float]]) -> None:
    """What relays learn an account sends from (``learn``) every relay reads (``known``,
    ``known_everyone``):
    each network with the latest time any relay learned, the ``KEEP`` latest of them,
    and the hash expires when the last of them does."""
    from eximhook.storage.known import KEEP

    a, b = relays
    a.client.delete(a._keys("auth", user, b"known")[0])
    for i, (net, until) in enumerate(learned):
        (a, b)[i % 2].learn(user, f"10.0.{net}.0/24", until)
    latest: dict[str, float] = {}
    for net, until in learned:
        latest[f"10.0.{net}.0/24"] = max(until, latest.get(f"10.0.{net}.0/24", until))
    expected = sorted(latest.items(), key=lambda e: e[1])[-KEEP:]
    assert sorted(a.known(user), key=lambda e: e[1]) == expected
    everyone = dict(b.known_everyone())  # the block of all logins: every user's, by a SCAN
    if len(user.encode("utf-8", "surrogateescape")) <= 400:  # past that stored by digest: no name to give
        assert sorted(everyone[user], key=lambda e: e[1]) == expected
    key = a._keys("auth", user, b"known")[0]
    assert int(a.client.execute_command("EXPIRETIME", key)) == math.ceil(expected[-1][1])
