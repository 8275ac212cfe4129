"""The sliding window against a brute-force oracle: the event at t trips when the
weights of the events in (t - PERIOD, t], its own included, add up to more than LIMIT.
Exact up to CAP events in a window; past that, within one slot of the period. The sums
a window keeps beside its events always equal what the events add up to."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from eximhook.model import ratelimit
from eximhook.model.counter import Counter, Window
from eximhook.model.ratelimit import CAP


def record(w: Window, now: float, weight: int, limit: int) -> tuple[int, bool]:
    count, over, _ = ratelimit.add(w, "sum", now, weight, (), limit, 0)
    assert w.total == sum(w.weights), "the running sum is the window's"
    return count, over


def oracle(events: list[tuple[float, int]], period: float, i: int, slack: float = 0.0) -> int:
    t = events[i][0]
    return sum(w for u, w in events[: i + 1] if u > t - period + slack)


def incremental(events: list[tuple[float, int]], limit: int, period: float) -> tuple[list[int], list[bool]]:
    window = Window(period)
    counts, verdicts = [], []
    for t, w in events:
        count, over = record(window, t, w, limit)
        assert len(window.times) <= CAP, "memory per window is bounded"
        window = Counter.decode(Counter(windows=[window]).encode()).windows[0]  # as the store keeps it
        counts.append(count)
        verdicts.append(over)
    return counts, verdicts


def timeline(gaps: list[float], weights: list[int]) -> list[tuple[float, int]]:
    events, t = [], 1000.0
    for gap, w in zip(gaps, weights, strict=False):
        t += gap  # gaps on the period's edges test the half-open window
        events.append((t, w))
    return events


@settings(max_examples=400)
@given(
    gaps=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 9.99, 10.0, 10.01, 30.0]), max_size=80),
    weights=st.lists(st.integers(min_value=1, max_value=50), min_size=80, max_size=80),
    limit=st.integers(min_value=1, max_value=120),
    period=st.sampled_from([1.0, 10.0, 25.0]),
)
def test_matches_brute_force(gaps: list[float], weights: list[int], limit: int, period: float) -> None:
    events = timeline(gaps, weights)
    counts, verdicts = incremental(events, limit, period)
    assert counts == [oracle(events, period, i) for i in range(len(events))]
    assert verdicts == [c > limit for c in counts]


@settings(max_examples=30, deadline=None)
@given(
    gaps=st.lists(st.sampled_from([0.0, 0.001, 0.01, 0.02, 0.5, 3.0]), min_size=CAP + 200, max_size=3 * CAP),
    period=st.sampled_from([10.0, 60.0]),
)
def test_past_the_cap_within_one_slot(gaps: list[float], period: float) -> None:
    """Compacted, a count is never above the true one nor below the events of the
    last period minus one slot; memory stays at CAP."""
    events = timeline(gaps, [1] * len(gaps))
    counts, _ = incremental(events, 10**9, period)
    slot = period / (CAP // 2)
    for i, count in enumerate(counts):
        assert oracle(events, period, i, slack=slot) <= count <= oracle(events, period, i)


def test_limit_means_more_than_limit() -> None:
    _, verdicts = incremental([(float(i), 1) for i in range(6)], limit=5, period=3600)
    assert verdicts == [False] * 5 + [True]


def test_a_heavy_event_trips_at_once() -> None:
    counts, verdicts = incremental([(1.0, 990), (2.0, 5), (3.0, 50)], limit=1000, period=3600)
    assert counts == [990, 995, 1045] and verdicts == [False, False, True]


def test_events_leave_the_window() -> None:
    w = Window(10.0)
    for t in (0.0, 1.0, 2.0):
        record(w, t, 1, 3)
    assert record(w, 10.0, 1, 3) == (3, False)  # t=0 is out of (0, 10]
    assert w.count(10.0) == 3
    assert w.count(11.5) == 2  # (1.5, 11.5] holds 2.0 and 10.0
    assert w.count(12.0) == 1


def test_clock_stepping_back_keeps_state_sorted() -> None:
    w = Window(10.0)
    record(w, 100.0, 1, 5)
    count, _ = record(w, 50.0, 2, 5)
    assert list(w.times) == [100.0, 100.0] and count == 3


def test_compact_merges_a_slot_into_its_first_event() -> None:
    w = Window(10.0, [0.0, 0.4, 1.2, 1.9, 5.0], [1, 2, 3, 4, 5])
    ratelimit.compact(w, 1.0)
    assert (list(w.times), list(w.weights), w.total) == ([0.0, 1.2, 5.0], [3, 7, 5], 15)


def test_a_merged_slot_past_32_bits_is_kept_at_the_most() -> None:
    w = Window(10.0, [0.0, 0.5], [2**31, 2**31])
    ratelimit.compact(w, 1.0)
    assert list(w.weights) == [2**32 - 1] and w.total == 2**32 - 1


# -- distinct values and ratios (issue 24) ------------------------------------------------


@settings(max_examples=200)
@given(batches=st.lists(st.tuples(st.floats(0, 5), st.lists(st.integers(0, 40), min_size=1, max_size=8)),
                        min_size=1, max_size=60),
       limit=st.integers(1, 30))
def test_distinct_is_exact_up_to_the_limit_and_crosses_once_per_rise(batches: list[tuple[float, list[int]]],
                                                                     limit: int) -> None:
    """A distinct window keeps at most limit + 1 values, counts exactly while the true
    count is at most the limit, and says "crossed" exactly when it goes from at most the
    limit to over it (the window just before this event held at most the limit)."""
    period, t = 20.0, 0.0
    w = Window(period)
    seen: list[tuple[float, int]] = []
    for gap, values in batches:
        t += gap
        before = len({x for u, x in seen if u > t - period})  # what the window held just before
        seen += [(t, x) for x in values]
        count, over, crossed = ratelimit.add(w, "distinct", t, 1, tuple(values), limit, 0)
        true = len({x for u, x in seen if u > t - period})
        assert len(w.times) <= limit + 1 and len(set(w.tags)) == len(w.tags) and list(w.weights) == [1] * len(w.times)
        assert w.total == len(w.times) and list(w.times) == sorted(w.times)
        assert count == true if true <= limit else count == limit + 1
        assert over == (true > limit) and crossed == (over and before <= limit)


@settings(max_examples=100)
@given(events=st.lists(st.tuples(st.floats(0, 0.2), st.integers(1, 5), st.booleans()), min_size=1, max_size=3000),
       limit=st.integers(1, 99), minimum=st.integers(1, 30))
def test_a_ratio_window_stays_bounded_and_close(events: list[tuple[float, int, bool]], limit: int,
                                                minimum: int) -> None:
    """Past CAP events, a ratio window compacts per slot and tag: at most CAP entries,
    and its good and bad totals never more than the true ones nor less than the events
    of the last period minus one slot."""
    period, t = 60.0, 0.0
    window = Window(period)
    seen: list[tuple[float, int, bool]] = []
    for gap, w, bad in events:
        t += gap
        seen.append((t, w, bad))
        count, over, _ = ratelimit.add(window, "ratio", t, w, (int(bad),), limit, minimum)
        assert len(window.times) <= CAP
        assert window.total == sum(window.weights)
        assert window.bad == sum(x for x, flag in zip(window.weights, window.tags, strict=True) if flag)
        assert (count, over) == ratelimit.judge(window.total, window.bad, limit, minimum)
    slot = period / (CAP // 4)
    for flag in (0, 1):
        kept = sum(w for w, x in zip(window.weights, window.tags, strict=True) if x == flag)
        most = sum(w for u, w, b in seen if u > t - period and b == flag)
        least = sum(w for u, w, b in seen if u > t - period + slot and b == flag)
        assert least <= kept <= most


def test_a_window_is_stored_little_endian_and_read_back_whole() -> None:
    """The events' arrays go into a counter as the bytes Redis's Lua reads (``<d``, ``<I4``,
    ``<I8``), and come back with their sums."""
    import struct

    w = Window(60.0, [1.5, 2.25], [3, 2**31], tags=[1, (1 << 52) - 1])
    assert bytes(ratelimit.packed(w.times)) == struct.pack("<2d", 1.5, 2.25)
    assert bytes(ratelimit.packed(w.weights)) == struct.pack("<2I", 3, 2**31)
    assert bytes(ratelimit.packed(w.tags)) == struct.pack("<2Q", 1, (1 << 52) - 1)
    (back,) = Counter.decode(Counter(windows=[w]).encode()).windows
    assert (back.times, back.weights, back.tags, back.total, back.bad) == (w.times, w.weights, w.tags, 2**31 + 3, 3)
