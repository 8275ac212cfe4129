"""The limit admins read: "more than LIMIT events in any PERIOD trips".

An exact sliding window, not Exim's smoothed ``ratelimit``: the event at time ``t``
trips when more than ``limit`` events (itself included) fall in ``(t - period, t]``.
Only the newest ``limit`` timestamps can decide a later verdict, so that is all the
state kept per subject. Pure functions; the clock is an argument.
"""

from __future__ import annotations

from bisect import bisect_right

TYPE_CHECKING = False  # typing costs ~10 ms to import on the hooks' path
if TYPE_CHECKING:
    from collections.abc import Sequence


def record(
    times: Sequence[float], now: float, limit: int, period: float
) -> tuple[list[float], int, bool]:
    """Add one event at ``now`` to the sorted ``times``.

    Returns the state to keep, the number of events now in the window (at most
    ``limit + 1``) and whether this event is over the limit. A clock that steps back
    counts the event at the newest time already seen, so the state stays sorted.
    """
    if times and now < times[-1]:
        now = times[-1]
    window = list(times[bisect_right(times, now - period) :])
    window.append(now)
    count = len(window)
    return window[-limit:], count, count > limit


def in_window(times: Sequence[float], now: float, period: float) -> int:
    """How many of ``times`` fall in ``(now - period, now]``."""
    return len(times) - bisect_right(times, now - period)
