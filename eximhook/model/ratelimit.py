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

What a count costs does not grow with what the window holds: the window (``Window``)
keeps its events in arrays and their sums beside them, so a count adds the new event
and takes off only the events that left (each event leaves once), and the arrays are
read and written whole as bytes (a copy, not a Python object per event). Compaction
alone walks the window, once per ``CAP / 2`` events at most.
Pure functions of the window they are given; the clock is an argument.

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

import sys
from array import array
from bisect import bisect_right

TYPE_CHECKING = False  # typing costs ~10 ms to import on the hooks' path
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from .policy import Policy

CAP = 1024
_U32 = 0xFFFFFFFF  # a stored weight's most: a merged slot past it is kept at it
# a window's arrays are kept little-endian (``counter``, and Redis's Lua: ``<d``, ``<I4``,
# ``<I8``); a big-endian host swaps them on the way in and out
_SWAP = sys.byteorder == "big"


def unpacked(code: str, data: bytes | memoryview) -> array[Any]:
    """The array of ``code`` ("d" times, "I" weights, "Q" tags) stored as ``data``."""
    a = array(code)
    a.frombytes(data)
    if _SWAP:
        a.byteswap()
    return a


def packed(a: array[Any]) -> bytes | memoryview:
    """The bytes ``unpacked`` reads ``a`` back from: a view of the array itself, not a
    copy (on a little-endian host), for ``bytes.join`` to copy once."""
    if _SWAP:
        a = array(a.typecode, a)
        a.byteswap()
        return a.tobytes()
    return memoryview(a)


class Window:
    """One window of a counter: the events in its period (see ``ratelimit``), the
    highest count it reached on each of the last PEAK_DAYS days, and the count at the
    event that last took it over its limit (``crossed``).

    ``crossed`` is what a block record reports. Processes count in one order (the
    counters' write lock) but settle trips in another: a hook that counted the 51st
    event may be overtaken by the daemon settling the 56th. Whoever makes the block, it
    names the event that crossed the limit, as it would without the race. The limit is
    kept with it: after an admin changes the limit, an old crossing names nothing."""

    __slots__ = ("bad", "crossed", "crossed_limit", "peaks", "period", "tags", "times", "total", "weights")

    def __init__(self, period: float, times: Sequence[float] = (), weights: Sequence[int] = (),
                 peaks: list[tuple[int, int]] | None = None, crossed: int = 0, crossed_limit: int = 0,
                 tags: Sequence[int] = (), total: int | None = None, bad: int | None = None) -> None:
        self.period = period
        self.times = array("d", times)
        self.weights = array("I", weights)
        self.tags = array("Q", tags)  # a distinct or ratio counter's (``ratelimit``); empty for a sum
        # the sums of the weights, and of the bad events' (a ratio's tag 1): a count
        # takes off what leaves rather than adding up what stays (``ratelimit``)
        self.total = sum(self.weights) if total is None else total
        self.bad = _bad(self.weights, self.tags) if bad is None else bad
        self.peaks = peaks or []
        self.crossed, self.crossed_limit = crossed, crossed_limit

    def sums(self, now: float, period: float | None = None) -> tuple[int, int]:
        """The weights of the events in the last ``period`` (default: the window's) up to
        ``now``, and of the bad ones among them: the sums, less the events before it."""
        return self.after(bisect_right(self.times, now - (self.period if period is None else period)))

    def after(self, start: int) -> tuple[int, int]:
        """The sums of the events from the ``start``-th on: the window's, less those
        before it (which leave first: a count walks only them)."""
        if not start:
            return self.total, self.bad
        gone = self.weights[:start]
        return self.total - sum(gone), self.bad - (_bad(gone, self.tags[:start]) if self.bad else 0)

    def count(self, now: float, policy: Policy | None = None) -> int:
        """The count now, as the counter's kind adds it up (``policy``: its ``adds`` and
        ``minimum``; None: a sum): a sum, the distinct values, or a ratio's percentage."""
        total, bad = self.sums(now)
        if policy is not None and policy.adds == "ratio":
            return judge(total, bad, 100, policy.minimum)[0]
        return total

    def judged(self, now: float, minimum: int) -> bool:
        """Does a ratio window hold ``minimum`` events now, enough to be over its limit?"""
        return self.sums(now)[0] >= minimum

    def peak(self, since: float) -> tuple[int, int]:
        """The highest count from the day of ``since`` on, and its day (0, 0 if none)."""
        day = int(since // 86400)
        return max(((c, d) for d, c in self.peaks if d >= day), default=(0, 0))


def expire(w: Window, now: float) -> float:
    """Drop the events out of ``(now - period, now]`` and take them off the window's
    sums. Returns the time to count a new event at: ``now``, or, if the clock stepped
    back, the newest time already seen (so the times stay sorted)."""
    times = w.times
    if times and now < times[-1]:
        now = times[-1]
    start = bisect_right(times, now - w.period)
    if start:
        w.total, w.bad = w.after(start)
        del times[:start], w.weights[:start]
        if w.tags:
            del w.tags[:start]
    return now


def add(w: Window, adds: str, now: float, weight: int, new: tuple[int, ...], limit: int,
        minimum: int) -> tuple[int, bool, bool]:
    """Count an event in the window ``w`` (changed in place) as its counter's kind adds up
    (``policy.Kind.adds``): ``weight`` for a sum, the values ``new`` for a distinct
    counter, a good (``new`` (0,)) or bad ((1,)) event of ``weight`` for a ratio.
    Returns the count, whether it is over ``limit``, and whether this event took it
    over (it was not before)."""
    now = expire(w, now)
    if adds == "distinct":
        return _distinct(w, now, new, limit)
    if adds == "ratio":
        was = judge(w.total, w.bad, limit, minimum)[1]
        bad = bool(new and new[0])
        w.times.append(now)
        w.weights.append(weight)
        w.tags.append(int(bad))
        w.total += weight
        w.bad += weight if bad else 0
        if len(w.times) > CAP:
            compact(w, w.period / (CAP // 4))
        count, over = judge(w.total, w.bad, limit, minimum)
        return count, over, over and not was
    w.times.append(now)
    w.weights.append(weight)
    w.total += weight
    if len(w.times) > CAP:
        compact(w, w.period / (CAP // 2))
    count = w.total
    return count, count > limit, count > limit and count - weight <= limit


def _distinct(w: Window, now: float, new: tuple[int, ...], limit: int) -> tuple[int, bool, bool]:
    """A distinct window: the values ``new`` move to (or join at) ``now``, and the newest
    ``limit + 1`` (at most CAP) are kept. The weights of such a window are all 1."""
    before = len(w.times)
    raw = w.tags.tobytes()
    fresh = dict.fromkeys(new)
    for x in fresh:  # the value's place, found in the tags' bytes at C speed
        value = array("Q", (x,)).tobytes()
        at = raw.find(value)
        while at >= 0 and at % 8:
            at = raw.find(value, at + 1)
        if at >= 0:
            i = at // 8
            del w.times[i], w.weights[i], w.tags[i]
            raw = w.tags.tobytes()
    for x in fresh:
        w.times.append(now)
        w.weights.append(1)
        w.tags.append(x)
    extra = len(w.times) - min(limit + 1, CAP)
    if extra > 0:
        del w.times[:extra], w.weights[:extra], w.tags[:extra]
    w.total = count = len(w.times)
    return count, count > limit, count > limit and before <= limit


def compact(w: Window, slot: float) -> None:
    """Merge the events of each ``slot`` into its first (of the same tag, in a ratio
    window): within one period that leaves at most period / slot + 1 entries (twice
    that with two tags). A merged weight past 32 bits is kept at 2**32 - 1, far over any
    limit; the sums are counted again from what is kept."""
    times, weights, tags = array("d"), array("I"), array("Q")
    first: dict[int, int] = {}
    last = None
    tagged = bool(w.tags)
    for j, (t, x) in enumerate(zip(w.times, w.weights, strict=True)):
        n = t // slot
        if n != last:
            first, last = {}, n
        flag = w.tags[j] if tagged else 0
        at = first.get(flag)
        if at is None:
            first[flag] = len(times)
            times.append(t)
            weights.append(x)
            if tagged:
                tags.append(flag)
        else:
            weights[at] = min(weights[at] + x, _U32)
    w.times, w.weights, w.tags = times, weights, tags
    w.total = sum(weights)
    w.bad = _bad(weights, tags) if w.bad else 0


def _bad(weights: Sequence[int], tags: Sequence[int]) -> int:
    """The weight of a ratio's bad events (tag 1) among ``weights``."""
    return sum(x for x, tag in zip(weights, tags, strict=False) if tag == 1)


def judge(total: int, bad: int, limit: int, minimum: int) -> tuple[int, bool]:
    """A ratio window's percentage of bad events (rounded down; 0 when empty), and
    whether it is over ``limit`` with at least ``minimum`` events (never below that: the
    percentage is shown all the same, to tune the limit from)."""
    if total == 0:
        return 0, False
    return bad * 100 // total, total >= minimum and bad * 100 > limit * total


def tag(value: str) -> int:
    """A value's tag in a distinct window: 52 bits of its BLAKE2b hash, so that Redis's
    Lua, whose numbers are doubles, holds it exactly (two of 500 values collide with a
    chance of 3e-11)."""
    from hashlib import blake2b

    return int.from_bytes(blake2b(value.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big") >> 12
