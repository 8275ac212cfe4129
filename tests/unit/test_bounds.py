"""Soft state bounded by design (issue 21): evidence cut to a stated length, a counter of
a stated size, quiet counters swept, the counters within their budget, whatever the
clients send; blocks are never what goes. (The daemon's part: integration/test_bounds.py.)"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eximhook.backends.lmdb import LmdbBackend
from eximhook.config.load import load
from eximhook.log import Logger
from eximhook.model.counter import Counter, max_bytes
from eximhook.model.evidence import CUT_END, EVIDENCE_BYTES, EVIDENCE_KEPT, cut
from eximhook.model.policy import Policy
from eximhook.model.records import Event, block_record
from eximhook.ops import report
from eximhook.storage import upkeep
from eximhook.storage.counters import Counters
from eximhook.storage.store import Store, subject_key

from ..support.config import write_config
from ..support.fixtures import Run

DAY = 86400.0
AUTHFAIL = Policy("authfail", ((30, 3600.0),), "enforce")
INVALID = Policy("invalid", ((5, 3600.0),), "enforce")
any_text = st.one_of(st.binary(max_size=1200).map(lambda b: b.decode("utf-8", "surrogateescape")),
                     st.text(max_size=400))


# -- one piece of evidence -----------------------------------------------------------


@given(text=any_text)
def test_evidence_is_cut_to_its_length_and_marked(text: str) -> None:
    data, kept = text.encode("utf-8", "surrogateescape"), cut(text)
    out = kept.encode("utf-8", "surrogateescape")
    assert len(out) <= EVIDENCE_BYTES and cut(kept) == kept, "short enough, and cutting again changes nothing"
    if len(data) <= EVIDENCE_BYTES:
        assert kept == text
    else:
        start = out.removesuffix(CUT_END.encode())
        assert kept.endswith(CUT_END) and data.startswith(start), "its start, marked"
        assert len(start) >= EVIDENCE_BYTES - len(CUT_END) - 3, "at most a character's bytes short"


@given(text=st.text(min_size=EVIDENCE_BYTES // 4 + 1, max_size=600))
def test_evidence_is_cut_between_characters(text: str) -> None:
    kept = cut(text)
    assert text.startswith(kept.removesuffix(CUT_END)) or kept == text, "no character split"


# -- one counter, one block record -----------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.integers(1, 1300), evidence=st.lists(any_text | st.just("x" * 12000), min_size=1, max_size=12),
       ips=st.lists(any_text, min_size=1, max_size=8), steps=st.lists(st.floats(-5, 4), min_size=1, max_size=20),
       weights=st.lists(st.integers(1, (1 << 31) - 1), min_size=1, max_size=5),
       counter=st.sampled_from(["invalid", "rcpts", "failrate"]),
       tags=st.lists(st.lists(st.integers(0, (1 << 52) - 1), min_size=1, max_size=40), min_size=1, max_size=6))
def test_a_counter_never_outgrows_its_bound(tmp_path_factory: pytest.TempPathFactory, events: int,
                                            evidence: list[str], ips: list[str], steps: list[float],
                                            weights: list[int], counter: str, tags: list[list[int]]) -> None:
    """However many events, however long their evidence, however heavy (a message of
    2**31 - 1 recipients), however many distinct values, however the clock steps: each
    is counted, and a counter of any kind (a sum, distinct values, a ratio) with two
    windows encodes to at most ``max_bytes(2, 10, 5)``."""
    counters = Counters(str(tmp_path_factory.mktemp("c")))
    policy = Policy(counter, ((50, 60.0), (1000 if counter != "failrate" else 20, 3600.0)), "enforce")
    now = 1_700_000_000.0
    try:
        for i in range(events):
            now += steps[i % len(steps)]
            values = tuple(x % 2 for x in tags[i % len(tags)][:1]) if counter == "failrate" else tags[i % len(tags)]
            event = Event("auth", "bob", policy, weight=weights[i % len(weights)],
                          evidence=evidence[i % len(evidence)] or None, ip=ips[i % len(ips)] or None,
                          keep_evidence=10, keep_ips=5, tags=tuple(values) if counter != "invalid" else ())
            counters.update(counters.event(event, now))
        ck = counter.encode() + b"\0" + subject_key("auth", "bob")
        raw = counters.read(lambda txn: bytes(txn.get(ck, db=counters.db(txn, b"counters"))))
    finally:
        counters.close()
    assert len(raw) <= max_bytes(2, 10, 5)
    c = Counter.decode(raw)
    assert all(len(x.encode("utf-8", "surrogateescape")) <= EVIDENCE_BYTES for x in [*c.recent, *c.ips])
    assert len(c.recent) <= 10 and len(c.ips) <= 5
    if counter == "rcpts":  # a distinct window keeps the newest limit + 1 values
        assert all(len(w.times) <= 1001 and len(set(w.tags)) == len(w.tags) for w in c.windows)


def test_a_block_record_holds_little_evidence() -> None:
    """A guesser's 12,000-byte user names (and bytes that JSON escapes six times over)
    make a record of a few KiB, not 250 KB."""
    names = ["x" * 12000 + str(i) for i in range(10)]
    counter = Counter(31, [], names, ["\udcff" * 5000] * 5)
    record = block_record("ip", "2001:db8::/64", 1.0, by="eximhook", reason="limit", counter=counter)
    assert len(json.dumps(record)) < 2 * 6 * EVIDENCE_KEPT + 1024
    assert record["rcpts"][-1].startswith("x" * 100) and record["rcpts"][-1].endswith(CUT_END)


# -- quiet counters are swept -----------------------------------------------------------


def test_quiet_counters_are_swept_and_blocked_ones_kept(tmp_path: Path, cli: Run) -> None:
    """``maintain`` sweeps (hourly): a counter quiet past ``top --since``'s week goes, one
    quiet since its window keeps its total and peaks only; an active one, a blocked
    subject's and one with a would-block record stay whole."""
    config = write_config(tmp_path)
    cfg = load(str(config))
    cli("export", config_path=config)
    now = time.time()
    with Store(str(tmp_path / "store")) as store, Counters(str(tmp_path / "store")) as counters:
        def count(key: str, at: float, n: int = 1, policy: Policy = INVALID) -> None:
            for i in range(n):
                LmdbBackend(store, counters).record(Event("auth", key, policy, evidence=f"{key}{i}@example.com",
                                                          ip="192.0.2.1"), at + i)

        count("gone", now - 9 * DAY)
        count("quiet", now - 2 * 3600, 3)
        count("active", now - 600, 2)
        count("blocked", now - 9 * DAY, 6)
        count("shadowed", now - 9 * DAY, 2, Policy("recipients", ((1, 3600.0),), "shadow"))
        assert store.is_blocked("auth", "blocked") and store.shadows("auth", "shadowed")
    assert cli("maintain", config_path=config)[0] == 0
    with Counters(str(tmp_path / "store")) as counters:
        assert counters.get("auth", "gone").total == 0, "past the week of peaks: gone"
        quiet = counters.get("auth", "quiet")
        assert (quiet.total, quiet.recent, quiet.ips) == (3, [], []) and not quiet.windows[0].times
        assert [r["key"] for r in report.top(cfg, counters, "invalid", now, now - 7 * DAY)] == ["quiet", "active"], \
            "top --since 7d still has its peak"
        assert counters.get("auth", "active").recent == ["active0@example.com", "active1@example.com"]
        assert counters.get("auth", "blocked").total == 6 and len(counters.get("auth", "blocked").recent) == 6
        assert counters.get("auth", "shadowed", "recipients").recent == ["shadowed0@example.com",
                                                                         "shadowed1@example.com"]
        assert counters.sweep(now, upkeep.keep(Store(str(tmp_path / "store"), readonly=True))) == (0, 0), \
            "nothing left to sweep, the index of the gone ones included"
        assert counters.read(lambda txn: txn.stat(counters.db(txn, b"touched"))["entries"]) == 4
    assert "upkeep: 1 quiet counter(s) dropped, 1 cut to their totals and peaks" in (
        tmp_path / "eximhook.log").read_text()


# -- the counters' budget ------------------------------------------------------------------


def flood(store: Store, counters: Counters, n: int, start: float) -> None:
    for i in range(n):
        LmdbBackend(store, counters).record(Event("ip", f"2001:db8:{i:x}::/64", AUTHFAIL, evidence="x" * 3000),
                                            start + i / 100)


def test_the_counters_stay_within_their_budget(tmp_path: Path, cli: Run) -> None:
    """A flood of new subjects against a 1 MiB budget: the file never passes it, the
    least recently counted go, a block made before is kept, the newest subjects and a
    new one are counted exactly, status warns, the log says so once."""
    config = write_config(tmp_path, settings={"store.counters_budget": "1M"})
    cfg = load(str(config))
    cli("export", config_path=config)
    data = tmp_path / "store" / "counters" / "data.mdb"
    now = time.time()
    with Store(str(tmp_path / "store")) as store, \
            Counters(str(tmp_path / "store"), cfg.store.counters_budget) as counters:
        backend = LmdbBackend(store, counters)
        outcomes = [backend.record(Event("auth", "early", INVALID), now - 60 + i)[1] for i in range(6)]
        assert [o.tripped for o in outcomes] == [False] * 5 + [True]
        flood(store, counters, 6000, now)
        assert data.stat().st_size <= cfg.store.counters_budget
        assert counters.get("ip", "2001:db8:0::/64", "authfail").total == 0, "the least recently counted went"
        assert all(counters.get("ip", f"2001:db8:{i:x}::/64", "authfail").total == 1 for i in range(5900, 6000))
        tripped = [backend.record(Event("ip", "2001:db8:ffff::/64", AUTHFAIL), now + 70 + i)[1].tripped
                   for i in range(31)]
        assert tripped == [False] * 30 + [True], "counted exactly: blocked at 31"
        assert store.is_blocked("auth", "early") and store.get_block("auth", "early") is not None
    for _ in range(2):
        assert cli("maintain", config_path=config)[0] == 0
    code, out, _ = cli("status", config_path=config)
    assert code == 1 and "counters " in out and "of their budget of 1.0 MiB" in out and "full since" in out
    log = (tmp_path / "eximhook.log").read_text()
    assert log.count("the counters reached their budget of 1 MiB") == 1, "once per episode"
    with Store(str(tmp_path / "store")) as store, \
            Counters(str(tmp_path / "store"), cfg.store.counters_budget) as counters:
        upkeep.upkeep(store, counters, Logger(str(tmp_path / "eximhook.log")), time.time() + upkeep.QUIET + 1,
                      cfg.bounces.remember)
    assert "the counters are back under their budget of 1 MiB" in (tmp_path / "eximhook.log").read_text()
    assert cli("status", config_path=config)[0] == 0


@pytest.mark.parametrize("path", ["hook", "loop"])
def test_counting_never_fails_for_want_of_room(tmp_path: Path, path: str) -> None:
    """With no upkeep running at all (a hook's ``update``, the daemon's event loop while
    its sweeper lags): each count past the high-water mark makes a little room first, so
    the map never fills to its last page, where even deleting is refused."""
    counters = Counters(str(tmp_path), 1 << 20)
    now = time.time()
    for i in range(8000):
        body = counters.event(Event("ip", f"2001:db8:{i:x}::/64", AUTHFAIL, evidence="x" * 3000), now + i / 100)
        tally = counters.update(body) if path == "hook" else (counters.try_update_many([body]) or [None])[0]
        assert tally.counts == [1]
    assert (tmp_path / "counters" / "data.mdb").stat().st_size <= 1 << 20
    assert counters.get("ip", "2001:db8:1f3f::/64", "authfail").total == 1
    episode = counters.episode()
    assert episode is not None and episode["dropped"] > 5000
    counters.close()


def test_the_loop_never_waits_for_another_thread_writing(tmp_path: Path) -> None:
    """flock does not keep two threads of one process apart (they share the descriptor):
    the daemon's event loop must find the counters busy, not wait in LMDB's writer lock."""
    counters = Counters(str(tmp_path))
    inside, release = threading.Event(), threading.Event()

    def hold(txn: object) -> None:
        inside.set()
        release.wait(30)

    writer = threading.Thread(target=counters.update, args=(hold,))
    writer.start()
    try:
        assert inside.wait(30)
        result: list[object] = []
        loop = threading.Thread(target=lambda: result.append(counters.try_update_many([lambda txn: None])))
        loop.start()
        loop.join(10)
        assert not loop.is_alive() and result == [None], "busy: again next turn"
    finally:
        release.set()
        writer.join()
        loop.join()
    assert counters.try_update_many([lambda txn: 1]) == [1]
    counters.close()


def test_the_upkeep_lets_the_loop_in_between_two_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upkeep trims the counters to their budget a few hundred at a time, taking the
    locks for each batch; the daemon's loop only tries them. Once the loop found them
    taken, the upkeep's next batch waits for the loop's write (a million counters over
    the budget once kept a request out until its deadline, answered uncounted)."""
    from eximhook.storage import counters as module

    policy = Policy("invalid", ((10**9, 3600.0),), "enforce")
    now = time.time()
    with Counters(str(tmp_path)) as big:
        big.update_many([big.event(Event("auth", f"u{i}", policy, evidence="x" * 200), now) for i in range(6000)])
    size = (tmp_path / "counters" / "data.mdb").stat().st_size
    counters = Counters(str(tmp_path), size + size // 20 // 4096 * 4096)  # a budget it is over
    assert counters.over(counters.marks()[0]), "batches of trimming to do"
    monkeypatch.setattr(module, "_YIELD", 60.0)  # only the loop's write ends the wait
    order: list[str] = []
    batch, tried = threading.Event(), threading.Event()
    drop = counters._drop

    def one_batch(until: int, most: int | None = None) -> int:
        if threading.current_thread() is not upkeep_thread:  # the loop makes a little room itself
            return drop(until, most)
        order.append("drop")
        batch.set()
        assert tried.wait(30)
        return drop(until, most)

    monkeypatch.setattr(counters, "_drop", one_batch)
    upkeep_thread = threading.Thread(target=counters.trim)
    upkeep_thread.start()
    try:
        assert batch.wait(30)
        body = counters.event(Event("auth", "loop", policy), now)
        assert counters.try_update_many([body]) is None, "taken: the loop tries again next turn"
        tried.set()
        while counters.try_update_many([body]) is None:  # the loop's next turns
            pass
        order.append("write")
    finally:
        tried.set()
        upkeep_thread.join(60)
    assert order[:3] == ["drop", "write", "drop"]
    assert not counters.over(counters.marks()[0])
    counters.close()
