from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eximhook.backends.lmdb import LmdbBackend, settle
from eximhook.engine import actions
from eximhook.errors import NotBlocked
from eximhook.model.policy import Policy
from eximhook.model.records import Event, Outcome, block_record
from eximhook.storage import outbox
from eximhook.storage.counters import Counter, Counters, Window
from eximhook.storage.store import Store, subject_key

surrogate_text = st.binary(max_size=300).map(lambda b: b.decode("utf-8", "surrogateescape"))


windows = st.lists(st.builds(
    lambda period, pairs, peaks, crossed: Window(period, [t for t, _ in pairs], [w for _, w in pairs], peaks, crossed),
    st.floats(min_value=1, max_value=1e7),
    st.lists(st.tuples(st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 2**32 - 1)), max_size=30),
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=8),
    st.integers(0, 2**32 - 1)), max_size=4)


@given(
    total=st.integers(min_value=0, max_value=2**63),
    windows=windows,
    recent=st.lists(surrogate_text, max_size=10),
    ips=st.lists(surrogate_text, max_size=5),
)
def test_counter_codec_round_trips(total: int, windows: list[Window], recent: list[str], ips: list[str]) -> None:
    c = Counter.decode(Counter(total, windows, recent, ips).encode())
    assert (c.total, c.recent, c.ips) == (total, recent, ips)
    assert [(w.period, w.times, w.weights, [tuple(p) for p in w.peaks], w.crossed) for w in c.windows] == [
        (w.period, w.times, w.weights, w.peaks, w.crossed) for w in windows]


def test_subject_keys_never_collide() -> None:
    long_key = "x" * 1000
    assert subject_key("auth", "bob") != subject_key("relay", "bob")
    assert len(subject_key("auth", long_key)) < 64
    assert subject_key("auth", long_key) != subject_key("auth", long_key + "y")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "store"))


@pytest.fixture
def counters(store: Store) -> Counters:
    return Counters(store.path)


def count(store: Store, counters: Counters, key: str, now: float, limit: int = 3,
          rcpt: str | None = None) -> Outcome:
    policy = Policy("invalid", ((limit, 3600.0),), "enforce")
    event = Event("auth", key, policy, evidence=rcpt, ip="192.0.2.1", keep_evidence=2, keep_ips=5)
    return LmdbBackend(store, counters).record(event, now)[1]


def test_trip_blocks_once_with_evidence(store: Store, counters: Counters) -> None:
    outcomes = [count(store, counters, "bob", 100.0 + i, rcpt=f"n{i}@x") for i in range(6)]
    assert [o.tripped for o in outcomes] == [False, False, False, True, False, False]
    assert [o.blocked for o in outcomes] == [False, False, False, True, True, True]
    block = store.get_block("auth", "bob")
    assert block is not None
    assert (block["reason"], block["count"], block["limit"], block["period"]) == ("limit", 4, 3, 3600)
    assert block["rcpts"] == ["n2@x", "n3@x"] and block["ips"] == ["192.0.2.1"]
    assert counters.get("auth", "bob").total == 6
    assert [e["event"] for e in store.history("auth", "bob")] == ["blocked"]
    assert [n["block"]["key"] for n in store.outbox()] == ["bob"]


def test_the_block_names_the_event_that_crossed_the_limit(store: Store, counters: Counters) -> None:
    """Counting is serialized, settling is not: the process that counted the 4th event
    (limit 3) may settle after one that counted the 6th. The record says 4 either way;
    a weighted event that jumps the limit says its own count."""
    policy = Policy("invalid", ((3, 3600.0),), "enforce")
    tallies = [counters.update(counters.event(Event("auth", "eve", policy), 100.0 + i)) for i in range(6)]
    assert settle(store, tallies[5], 106.0).tripped, "the 6th settles first"
    assert store.get_block("auth", "eve")["count"] == 4  # type: ignore[index]
    assert not settle(store, tallies[3], 107.0).tripped, "the 4th finds the block made"
    volume = Policy("recipients", ((10, 3600.0),), "enforce")
    big = [counters.update(counters.event(Event("auth", "fay", volume, weight=4), 100.0 + i)) for i in range(4)]
    settle(store, big[3], 110.0)
    assert store.get_block("auth", "fay")["count"] == 12, "4+4+4 crossed 10"  # type: ignore[index]


def test_a_crossing_under_another_limit_names_nothing(store: Store, counters: Counters) -> None:
    high, low = Policy("recipients", ((100, 3600.0),), "enforce"), Policy("recipients", ((20, 3600.0),), "enforce")
    for i in range(150):
        counters.update(counters.event(Event("auth", "gus", high), 100.0 + i))  # crossed 100 at 101
    tally = counters.update(counters.event(Event("auth", "gus", low), 300.0))  # the admin lowered the limit
    assert tally.count == 151, "the count now: no event crossed 20 while it was the limit"
    settle(store, tally, 300.0)
    assert store.get_block("auth", "gus")["count"] == 151  # type: ignore[index]


def test_would_block_once_per_window_and_limit(store: Store) -> None:
    """A counter with an hourly and a daily window may trip one, then the other, then the
    first again: one record (and audit event) each, not one per switch."""
    hour, day = (5, 3600.0), (20, 86400.0)
    records = [block_record("auth", "hal", 1.0 + i, by="eximhook", reason="limit", counter_name="recipients",
                                 limit=w[0], period=w[1], count=w[0] + 1) for i, w in enumerate([hour, day, hour, day])]
    assert [store.shadow(r, r["since"], False) for r in records] == [True, True, False, False]
    assert [e["event"] for e in store.history("auth", "hal")] == ["would-block", "would-block"]
    assert len(store.shadows("auth", "hal")) == 2 and store.clear_shadows("auth", "hal") == 2
    assert store.shadows() == []


def test_unblock_resets_the_counter(store: Store, counters: Counters, tmp_path: Path) -> None:
    for i in range(4):
        count(store, counters, "bob", 100.0 + i)
    actions.unblock(store, counters, str(tmp_path), "auth", "bob", 200.0, by="admin:root")
    assert not store.is_blocked("auth", "bob") and counters.get("auth", "bob").total == 0
    assert not count(store, counters, "bob", 201.0).blocked
    with pytest.raises(NotBlocked):
        actions.unblock(store, counters, str(tmp_path), "auth", "bob", 202.0, by="admin:root")
    assert [e["event"] for e in store.history("auth", "bob")] == ["blocked", "unblocked"]


def test_counters_start_afresh_after_a_reboot(store: Store, counters: Counters) -> None:
    """Unsynced counts are only trusted within the boot that wrote them."""
    for i in range(2):
        count(store, counters, "bob", 100.0 + i)
    counters.close()
    assert Counters(store.path).get("auth", "bob").total == 2, "same boot: kept"
    (Path(store.path) / "counters" / "boot_id").write_text("another boot")
    again = Counters(store.path)
    assert again.get("auth", "bob").total == 0, "after a reboot: wiped"
    assert (Path(store.path) / "counters" / "boot_id").read_text() != "another boot"
    assert count(store, again, "bob", 300.0).count == 1


def test_subjects_are_independent(store: Store, counters: Counters) -> None:
    for i in range(4):
        count(store, counters, "bob", 100.0 + i)
    assert store.is_blocked("auth", "bob")
    assert not store.is_blocked("auth", "alice") and not store.is_blocked("relay", "bob")
    assert [b["key"] for b in store.blocks("auth")] == ["bob"] and store.blocks("relay") == []


def test_map_grows_when_full(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "small"), map_size=64 * 1024)
    for i in range(300):  # far more than 64 KiB of block records
        store.block(block_record("auth", f"user{i:04d}-" + "p" * 200, 1.0, by="t", reason="manual"), 1.0, False)
    assert len(store.blocks()) == 300
    assert store.env.info()["map_size"] > 64 * 1024


def test_notification_claims_are_exclusive(store: Store, counters: Counters) -> None:
    count(store, counters, "bob", 1.0, limit=1)
    count(store, counters, "bob", 2.0, limit=1)
    first = outbox.claim_next(store, 10.0, stale_after=300)
    assert first is not None and outbox.claim_next(store, 11.0, stale_after=300) is None
    assert outbox.claim_next(store, 400.0, stale_after=300) is not None, "a stale claim is taken over"
    outbox.finish(store, first, 401.0, None)
    assert store.outbox() == []


def test_claim_of_a_dead_sender_is_taken_over_at_once(store: Store, counters: Counters) -> None:
    count(store, counters, "bob", 1.0, limit=1)
    count(store, counters, "bob", 2.0, limit=1)
    first = outbox.claim_next(store, 10.0, stale_after=300)
    assert first is not None and not outbox.stuck(store.outbox()[0]), "this process lives"

    def as_dead(txn: Any) -> None:  # our pid with another start time: the claimer that died
        item = dict(first, claimer_start=first["claimer_start"] - 1)
        txn.put(struct.pack(">Q", first["seq"]), json.dumps(item).encode(), db=store.db(txn, b"outbox"))

    store.update(as_dead)
    assert outbox.stuck(store.outbox()[0])
    second = outbox.claim_next(store, 11.0, stale_after=300)
    assert second is not None and second["seq"] == first["seq"] and not outbox.stuck(store.outbox()[0])


def test_a_map_too_small_for_the_first_write_grows(tmp_path: Path) -> None:
    """Creating the databases is a write too, inside the grow-and-retry loop. (The
    counters' map is their budget, never grown: tests/unit/test_bounds.py.)"""
    store = Store(str(tmp_path / "tiny"), map_size=8192)
    assert count(store, Counters(store.path), "bob", 1.0).count == 1 and store.env.info()["map_size"] > 8192


def test_a_full_disk_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """LMDB's lock file is written through mmap: it is allocated whole when created, so a
    disk that fills up later gives ENOSPC errors, never SIGBUS."""
    Store(str(tmp_path / "s")).close()
    lock = tmp_path / "s" / "lock.mdb"
    assert lock.stat().st_blocks * 512 >= lock.stat().st_size >= 65664


def test_notifications_of_a_block_stored_without_them(store: Store) -> None:
    """The daemon's Redis path: another thread copied the block first, unmailed."""
    record = block_record("auth", "bob", 100.0, by="eximhook", reason="limit")
    assert store.block(record, 100.0, False) and store.outbox() == []
    store.notify(record, 101.0, hold=30.0, owner="bob@example.com")
    assert [(i["kind"], i.get("to"), i["block"], i["hold_until"]) for i in store.outbox()] == [
        ("blocked", None, record, 131.0), ("owner", "bob@example.com", record, 101.0)]
    assert [e["event"] for e in store.history("auth", "bob")] == ["blocked"], "one block, audited once"


def test_the_combined_score_adds_the_enforced_counters_fullest_windows() -> None:
    """Each group of counters that count the same events adds its fullest enforced
    counter's fullest window (count over limit; a ratio's percentage over its limit once
    judged): a dead address counted as invalid and in the failure ratio adds once. A
    counter in shadow mode adds nothing."""
    from eximhook.model import score
    from eximhook.model.counter import Counter, Window

    now = 1000.0
    policies = {"invalid": Policy("invalid", ((10, 60.0), (100, 3600.0)), "enforce"),
                "recipients": Policy("recipients", ((1000, 3600.0),), "enforce"),
                "rcpts": Policy("rcpts", ((10, 3600.0),), "shadow"),
                "failrate": Policy("failrate", ((20, 3600.0),), "enforce", minimum=4)}
    counters = {"invalid": Counter(windows=[Window(60.0, [990.0], [5]), Window(3600.0, [100.0, 990.0], [80, 5])]),
                "recipients": Counter(windows=[Window(3600.0, [990.0], [600])]),
                "rcpts": Counter(windows=[Window(3600.0, [990.0] * 9, [1] * 9, tags=list(range(9)))]),
                "failrate": Counter(windows=[Window(3600.0, [990.0] * 4, [1] * 4, tags=[1, 0, 0, 0])])}
    found = score.parts(policies, counters, now)
    assert sorted(found) == [("failrate", 25, 20), ("recipients", 600, 1000)]  # 125 % of one group, 60 %
    tally = score.tally("auth", "bob", Policy("score", ((150, 0.0),), "enforce"), found)
    assert (tally.counts, tally.over, tally.count) == ([185], 0, 185)
    assert sorted(tally.counter.recent) == ["failrate: 25 / 20", "recipients: 600 / 1000"]
    counters["failrate"].windows[0] = Window(3600.0, [990.0] * 3, [1] * 3, tags=[1, 0, 0])  # below its minimum
    assert sorted(score.parts(policies, counters, now)) == [("invalid", 85, 100), ("recipients", 600, 1000)]


def test_customers_come_from_the_lookup_file_else_the_domain(tmp_path: Path) -> None:
    """``[customers]``: the lookup file's customer first, an authenticated user's domain
    else (``by_domain``); a sender or a client address has none; the members reach the
    mirror packed, any byte in a key kept."""
    from eximhook.config.hookcache import View
    from eximhook.config.load import load
    from eximhook.engine import customers
    from eximhook.storage.mirror import pack_members, unpack_members

    lookup = tmp_path / "customers"
    lookup.write_bytes(b'auth:Bob@Example.com acme\nrelay:192.0.2.7 ACME\nlocal:"www\\x0adata" h42\nsender:x@y z\n'
                       b"auth:eve bad:id\n")
    config = tmp_path / "eximhook.toml"
    config.write_text(f'[store]\npath = "{tmp_path}/store"\n[customers]\nlookup = "{lookup}"\n')
    view = View.of(load(str(config)))
    assert customers.of(view, "auth", "bob@example.com") == "acme"
    assert customers.of(view, "relay", "192.0.2.7") == "acme"
    assert customers.of(view, "local", "www\ndata") == "h42"
    assert customers.of(view, "auth", "carol@Other.example") == "other.example"
    assert customers.of(view, "auth", "eve") is None, "no domain, and its line's customer is no id"
    assert customers.of(view, "sender", "x@y") is None
    listed = customers.listed(str(lookup), 64)
    assert unpack_members(pack_members(True, listed)) == (True, sorted(
        (f"{ns}:{key}".encode(), cid.encode()) for (ns, key), cid in listed.items()))
    assert unpack_members(None) == (True, [])
