"""The sliding window against a brute-force oracle: the event at t trips when the
weights of the events in (t - PERIOD, t], its own included, add up to more than LIMIT.
Exact up to CAP events in a window; past that, within one slot of the period."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from eximhook.model import ratelimit
from eximhook.model.ratelimit import CAP, in_window, record


def oracle(events: list[tuple[float, int]], period: float, i: int, slack: float = 0.0) -> int:
    t = events[i][0]
    return sum(w for u, w in events[: i + 1] if u > t - period + slack)


def incremental(events: list[tuple[float, int]], limit: int, period: float) -> tuple[list[int], list[bool]]:
    times: list[float] = []
    weights: list[int] = []
    counts, verdicts = [], []
    for t, w in events:
        times, weights, count, over = record(times, weights, t, w, limit, period)
        assert len(times) <= CAP, "memory per window is bounded"
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
    times: list[float] = []
    weights: list[int] = []
    for t in (0.0, 1.0, 2.0):
        times, weights, _, _ = record(times, weights, t, 1, 3, 10.0)
    times, weights, count, over = record(times, weights, 10.0, 1, 3, 10.0)  # t=0 is out of (0, 10]
    assert (count, over) == (3, False)
    assert in_window(times, weights, 10.0, 10.0) == 3
    assert in_window(times, weights, 11.5, 10.0) == 2  # (1.5, 11.5] holds 2.0 and 10.0
    assert in_window(times, weights, 12.0, 10.0) == 1


def test_clock_stepping_back_keeps_state_sorted() -> None:
    times, weights, _, _ = record([], [], 100.0, 1, 5, 10.0)
    times, weights, count, _ = record(times, weights, 50.0, 2, 5, 10.0)
    assert times == [100.0, 100.0] and count == 3


def test_compact_merges_a_slot_into_its_first_event() -> None:
    assert ratelimit.compact([0.0, 0.4, 1.2, 1.9, 5.0], [1, 2, 3, 4, 5], 1.0) == ([0.0, 1.2, 5.0], [3, 7, 5])


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
    times: list[float] = []
    weights: list[int] = []
    tags: list[int] = []
    seen: list[tuple[float, int]] = []
    for gap, values in batches:
        t += gap
        before = len({x for u, x in seen if u > t - period})  # what the window held just before
        seen += [(t, x) for x in values]
        times, weights, tags, count, over, crossed = ratelimit.add("distinct", times, weights, tags, t, 1,
                                                                   tuple(values), limit, 0, period)
        true = len({x for u, x in seen if u > t - period})
        assert len(times) <= limit + 1 and len(set(tags)) == len(tags) and weights == [1] * len(times)
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
    times: list[float] = []
    weights: list[int] = []
    tags: list[int] = []
    seen: list[tuple[float, int, bool]] = []
    for gap, w, bad in events:
        t += gap
        seen.append((t, w, bad))
        times, weights, tags, *_ = ratelimit.add("ratio", times, weights, tags, t, w, (int(bad),),
                                                               limit, minimum, period)
        assert len(times) <= CAP
    slot = period / (CAP // 4)
    for flag in (0, 1):
        kept = sum(w for w, x in zip(weights, tags, strict=True) if x == flag)
        most = sum(w for u, w, b in seen if u > t - period and b == flag)
        least = sum(w for u, w, b in seen if u > t - period + slot and b == flag)
        assert least <= kept <= most
