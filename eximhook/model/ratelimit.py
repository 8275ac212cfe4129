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

Two other ways to add up a window (``policy.Kind.adds``), each event with a tag:

- ``distinct``: how many different values (recipients, client networks) the window
  holds. Each event's tag is its value's hash (``tag``); a value seen again moves to
  now. The window keeps the newest ``limit + 1`` values (at most ``CAP``): exact while
  the true count is at most the limit, and over it whenever the true count is.
- ``ratio``: the percentage of the window's events that were bad (tag 1: a remote
  recipient refused or deferred; 0: delivered), judged once the window holds at least
  ``minimum`` events. Compaction merges per slot and tag, as ``compact`` does.
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


def add(adds: str, times: list[float], weights: list[int], tags: list[int], now: float, weight: int,
        new: tuple[int, ...], limit: int, minimum: int,
        period: float) -> tuple[list[float], list[int], list[int], int, bool, bool]:
    """Count an event in a window as its counter's kind adds up (``policy.Kind.adds``):
    ``weight`` for a sum, the values ``new`` for a distinct counter, a good (``new``
    (0,)) or bad ((1,)) event of ``weight`` for a ratio. Returns the window to keep
    (times, weights, tags), the count, whether it is over ``limit``, and whether this
    event took it over (it was not before)."""
    if adds == "distinct":
        before = len(times) - bisect_right(times, max(now, times[-1] if times else now) - period)
        times, tags, count, over = record_distinct(times, tags, now, list(new), limit, period)
        return times, [1] * len(times), tags, count, over, over and before <= limit
    if adds == "ratio":
        start = bisect_right(times, max(now, times[-1] if times else now) - period)
        was = judge_ratio(weights[start:], tags[start:], limit, minimum)[1]
        times, weights, tags, count, over = record_ratio(times, weights, tags, now, weight, bool(new and new[0]),
                                                         limit, minimum, period)
        return times, weights, tags, count, over, over and not was
    times, weights, count, over = record(times, weights, now, weight, limit, period)
    return times, weights, [], count, over, over and count - weight <= limit


def record_distinct(times: list[float], tags: list[int], now: float, new: list[int], limit: int,
                    period: float) -> tuple[list[float], list[int], int, bool]:
    """Add the values ``new`` (tags) seen at ``now`` to a distinct window: returns the
    window to keep (times, tags), the number of distinct values in it, and whether
    that is over ``limit``. The weights of such a window are all 1."""
    if times and now < times[-1]:
        now = times[-1]
    start = bisect_right(times, now - period)
    fresh = dict.fromkeys(new)
    kept = [(t, x) for t, x in zip(times[start:], tags[start:], strict=True) if x not in fresh]
    kept += [(now, x) for x in fresh]
    kept = kept[-min(limit + 1, CAP):]
    return [t for t, _ in kept], [x for _, x in kept], len(kept), len(kept) > limit


def record_ratio(times: list[float], weights: list[int], tags: list[int], now: float, weight: int, bad: bool,
                 limit: int, minimum: int, period: float) -> tuple[list[float], list[int], list[int], int, bool]:
    """Add an event of ``weight`` (``bad`` or not) to a ratio window: returns the window
    to keep, the percentage of bad events in it (rounded down) and whether that is over
    ``limit`` percent with at least ``minimum`` events counted."""
    if times and now < times[-1]:
        now = times[-1]
    start = bisect_right(times, now - period)
    times, weights, tags = [*times[start:], now], [*weights[start:], weight], [*tags[start:], int(bad)]
    if len(times) > CAP:
        times, weights, tags = compact_tagged(times, weights, tags, period / (CAP // 4))
    percent, over = judge_ratio(weights, tags, limit, minimum)
    return times, weights, tags, percent, over


def judge_ratio(weights: list[int], tags: list[int], limit: int, minimum: int) -> tuple[int, bool]:
    """A ratio window's percentage of bad events (rounded down; 0 when empty), and
    whether it is over ``limit`` with at least ``minimum`` events (never below that: the
    percentage is shown all the same, to tune the limit from)."""
    total = sum(weights)
    if total == 0:
        return 0, False
    bad = sum(w for w, x in zip(weights, tags, strict=True) if x)
    return bad * 100 // total, total >= minimum and bad * 100 > limit * total


def compact_tagged(times: list[float], weights: list[int], tags: list[int],
                   slot: float) -> tuple[list[float], list[int], list[int]]:
    """``compact`` for a ratio window: the events of each slot merge into the slot's
    first of the same tag (two tags: at most 2 (period / slot + 1) entries)."""
    out_t: list[float] = []
    out_w: list[int] = []
    out_x: list[int] = []
    first: dict[int, int] = {}
    last = None
    for t, w, x in zip(times, weights, tags, strict=True):
        n = t // slot
        if n != last:
            first, last = {}, n
        if x in first:
            out_w[first[x]] += w
        else:
            first[x] = len(out_t)
            out_t.append(t)
            out_w.append(w)
            out_x.append(x)
    return out_t, out_w, out_x


def tag(value: str) -> int:
    """A value's tag in a distinct window: 52 bits of its BLAKE2b hash, so that Redis's
    Lua, whose numbers are doubles, holds it exactly (two of 500 values collide with a
    chance of 3e-11)."""
    from hashlib import blake2b

    return int.from_bytes(blake2b(value.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big") >> 12


def in_window(times: list[float], weights: list[int], now: float, period: float) -> int:
    """The count in ``(now - period, now]``."""
    return sum(weights[bisect_right(times, now - period) :])
