"""The sliding window against a brute-force oracle: the event at t trips when more
than LIMIT events, itself included, fall in (t - PERIOD, t]."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from eximhook.ratelimit import in_window, record


def oracle(times: list[float], limit: int, period: float) -> list[bool]:
    return [sum(1 for u in times[: i + 1] if u > t - period) > limit for i, t in enumerate(times)]


def incremental(times: list[float], limit: int, period: float) -> tuple[list[bool], list[float]]:
    state: list[float] = []
    verdicts = []
    for t in times:
        state, _count, over = record(state, t, limit, period)
        assert len(state) <= limit, "memory per subject is bounded by LIMIT"
        verdicts.append(over)
    return verdicts, state


@settings(max_examples=400)
@given(
    gaps=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 9.99, 10.0, 10.01, 30.0]), max_size=80),
    limit=st.integers(min_value=1, max_value=8),
    period=st.sampled_from([1.0, 10.0, 25.0]),
)
def test_matches_brute_force(gaps: list[float], limit: int, period: float) -> None:
    times, t = [], 1000.0
    for gap in gaps:  # gaps on the period's edges test the half-open window
        t += gap
        times.append(t)
    assert incremental(times, limit, period)[0] == oracle(times, limit, period)


def test_limit_means_more_than_limit() -> None:
    verdicts, _ = incremental([float(i) for i in range(6)], limit=5, period=3600)
    assert verdicts == [False] * 5 + [True]


def test_events_leave_the_window() -> None:
    state: list[float] = []
    for t in (0.0, 1.0, 2.0):
        state, _, _ = record(state, t, 3, 10.0)
    state, count, over = record(state, 10.0, 3, 10.0)  # t=0 is out of (0, 10]
    assert (count, over) == (3, False)
    assert in_window(state, 10.0, 10.0) == 3
    assert in_window(state, 11.5, 10.0) == 2  # (1.5, 11.5] holds 2.0 and 10.0
    assert in_window(state, 12.0, 10.0) == 1


def test_clock_stepping_back_keeps_state_sorted() -> None:
    state, _, _ = record([], 100.0, 5, 10.0)
    state, count, _ = record(state, 50.0, 5, 10.0)
    assert state == [100.0, 100.0] and count == 2
