"""The limit admins read: "more than LIMIT in any PERIOD trips".

A sliding window of weighted events (an invalid recipient or a bounce weighs 1, a
message weighs its number of recipients), not Exim's smoothed ``ratelimit``: the event
at time ``t`` trips when the weights of the events in ``(t - period, t]``, its own
included, add up to more than ``limit``.

The window keeps each event's time and weight, so the count is the true one (``show``
and ``top`` report how far over a limit a subject went, not just "over"). That is exact
up to ``CAP`` events in one window. Past that, the window is compacted: events in the
same slot of ``period / (CAP / 2)`` (7 s of an hour) merge into the slot's first event,
so a merged event leaves the window up to one slot early. The count is then never more
than the true one and never less than the events of the last ``period`` minus one slot,
and a window holds at most ``CAP`` entries (12 KB) whatever the rate.
Pure functions; the clock is an argument.
"""

from __future__ import annotations

from bisect import bisect_right

CAP = 1024


def record(times: list[float], weights: list[int], now: float, weight: int, limit: int,
           period: float) -> tuple[list[float], list[int], int, bool]:
    """Add an event of ``weight`` at ``now`` to the window (``times`` sorted).

    Returns the window to keep, the count now in it and whether it is over ``limit``.
    A clock that steps back counts the event at the newest time already seen, so the
    times stay sorted.
    """
    if times and now < times[-1]:
        now = times[-1]
    start = bisect_right(times, now - period)
    times, weights = times[start:], weights[start:]
    times.append(now)
    weights.append(weight)
    if len(times) > CAP:
        times, weights = compact(times, weights, period / (CAP // 2))
    count = sum(weights)
    return times, weights, count, count > limit


def compact(times: list[float], weights: list[int], slot: float) -> tuple[list[float], list[int]]:
    """Merge the events of each ``slot`` into its first: within one period that leaves
    at most period / slot + 1 entries."""
    out_t: list[float] = []
    out_w: list[int] = []
    last = None
    for t, w in zip(times, weights, strict=True):
        n = t // slot
        if n == last:
            out_w[-1] += w
        else:
            out_t.append(t)
            out_w.append(w)
            last = n
    return out_t, out_w


def in_window(times: list[float], weights: list[int], now: float, period: float) -> int:
    """The count in ``(now - period, now]``."""
    return sum(weights[bisect_right(times, now - period) :])
