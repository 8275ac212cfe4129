"""One subject's counter of one kind of event, as the counters store it (``counters``)
and the backends answer it: windows, total, daily peaks and recent evidence.

Packed with ``struct``, not JSON: ``import json`` alone costs ~10 ms on the hooks' path.

What one counter can hold, whatever its subject sends (issue 21): per window at most
``ratelimit.CAP`` events of 12 bytes and ``PEAK_DAYS`` daily peaks; at most ``[evidence]
rcpts`` pieces of evidence and ``ips`` client addresses, each list at most
``evidence.EVIDENCE_KEPT`` bytes (kept by ``Counters.event``). ``max_bytes`` adds it up:
with the defaults (one window, 10 and 5) a counter never encodes to more than 14,502
bytes, 12,373 of them the window of a subject past 1,024 events in its period
(``tests/unit/test_bounds.py`` checks it over hostile input).
"""

from __future__ import annotations

import struct

from .evidence import EVIDENCE_KEPT
from .ratelimit import CAP

TYPE_CHECKING = False  # typing costs ~10 ms to import on the hooks' path
if TYPE_CHECKING:
    from .policy import Policy

_HEAD = struct.Struct("<QdB")  # total events, when last counted, number of windows
# period, number of events; the count at the last crossing (0: none), its limit; whether
# its events carry tags (a distinct or ratio counter: ``ratelimit``)
_WINDOW = struct.Struct("<dIIIB")
_PEAK = struct.Struct("<II")  # day (since the epoch), the highest count seen in the window that day
_EVENT = 12  # a time (8 bytes) and a weight (4)
_TAG = 8  # and, in a window of a distinct or ratio counter, a tag
_STRING = struct.Struct("<I")  # the length of one piece of evidence
_STRINGS = struct.Struct("<H")  # how many
PEAK_DAYS = 8  # daily peaks kept per window, for eximhook top --since (up to 7d)
_U32 = 0xFFFFFFFF


def max_bytes(windows: int, keep_evidence: int, keep_ips: int) -> int:
    """The most a counter with ``windows`` windows can encode to, when it keeps
    ``keep_evidence`` pieces of evidence and ``keep_ips`` addresses."""
    window = _WINDOW.size + CAP * (_EVENT + _TAG) + 1 + PEAK_DAYS * _PEAK.size
    strings = 2 * (_STRINGS.size + EVIDENCE_KEPT) + (keep_evidence + keep_ips) * _STRING.size
    return _HEAD.size + windows * window + strings


class Window:
    """One window of a counter: the events in its period (see ``ratelimit``), the
    highest count it reached on each of the last PEAK_DAYS days, and the count at the
    event that last took it over its limit (``crossed``).

    ``crossed`` is what a block record reports. Processes count in one order (the
    counters' write lock) but settle trips in another: a hook that counted the 51st
    event may be overtaken by the daemon settling the 56th. Whoever makes the block, it
    names the event that crossed the limit, as it would without the race. The limit is
    kept with it: after an admin changes the limit, an old crossing names nothing."""

    __slots__ = ("crossed", "crossed_limit", "peaks", "period", "tags", "times", "weights")

    def __init__(self, period: float, times: list[float] | None = None, weights: list[int] | None = None,
                 peaks: list[tuple[int, int]] | None = None, crossed: int = 0, crossed_limit: int = 0,
                 tags: list[int] | None = None) -> None:
        self.period = period
        self.times = times or []
        self.weights = weights or []
        self.tags = tags or []  # a distinct or ratio counter's (``ratelimit``); empty for a sum
        self.peaks = peaks or []
        self.crossed, self.crossed_limit = crossed, crossed_limit

    def count(self, now: float, policy: Policy | None = None) -> int:
        """The count now, as the counter's kind adds it up (``policy``: its ``adds`` and
        ``minimum``; None: a sum): a sum, the distinct values, or a ratio's percentage."""
        from bisect import bisect_right

        from .ratelimit import judge_ratio

        start = bisect_right(self.times, now - self.period)
        if policy is not None and policy.adds == "ratio":
            return judge_ratio(self.weights[start:], self.tags[start:], 100, policy.minimum)[0]
        return sum(self.weights[start:])

    def judged(self, now: float, minimum: int) -> bool:
        """Does a ratio window hold ``minimum`` events now, enough to be over its limit?"""
        from bisect import bisect_right

        return sum(self.weights[bisect_right(self.times, now - self.period):]) >= minimum

    def peak(self, since: float) -> tuple[int, int]:
        """The highest count from the day of ``since`` on, and its day (0, 0 if none)."""
        day = int(since // 86400)
        return max(((c, d) for d, c in self.peaks if d >= day), default=(0, 0))


class Counter:
    """Events of one kind for one subject: total, windows, evidence, and when it last
    counted one (``touched``: the least recently touched go first when the counters
    reach their budget)."""

    __slots__ = ("ips", "recent", "total", "touched", "windows")

    def __init__(self, total: int = 0, windows: list[Window] | None = None,
                 recent: list[str] | None = None, ips: list[str] | None = None, touched: float = 0.0) -> None:
        self.total = total
        self.windows = windows or []
        self.recent = recent or []
        self.ips = ips or []
        self.touched = touched

    def window(self, period: float) -> Window:
        """The window of ``period`` (an empty one if there is none yet)."""
        for w in self.windows:
            if w.period == period:
                return w
        return Window(period)

    def within(self, period: float, now: float, adds: str) -> tuple[int, bool]:
        """Its events in the last ``period`` (of a ratio counter: the bad ones; of a
        distinct counter: its values), from the shortest window that spans ``period``;
        and False if none does (the count is then its longest window's, a lower bound).
        A customer's members' shares come from their own counters so (``customers``)."""
        from bisect import bisect_right

        spans = [w for w in self.windows if w.period >= period]
        if not spans and not self.windows:
            return 0, True
        w = min(spans, key=lambda w: w.period) if spans else max(self.windows, key=lambda w: w.period)
        start = bisect_right(w.times, now - period)
        if adds == "ratio":
            return sum(x for x, bad in zip(w.weights[start:], w.tags[start:], strict=True) if bad), bool(spans)
        return sum(w.weights[start:]), bool(spans)

    def active(self, now: float) -> bool:
        """Does any window still hold an event (one counted within its period)?"""
        return any(w.times and w.times[-1] > now - w.period for w in self.windows)

    def peaked_since(self, day: int) -> bool:
        """Has a window a daily peak from ``day`` (days since the epoch) on?"""
        return any(d >= day for w in self.windows for d, _ in w.peaks)

    def quiet(self) -> Counter:
        """What a sweep keeps of a counter whose windows hold no event: its total and
        daily peaks (``top --since``, ``show``), not the evidence nor the crossing."""
        return Counter(self.total, [Window(w.period, peaks=w.peaks) for w in self.windows], touched=self.touched)

    def is_quiet(self) -> bool:
        return not (self.recent or self.ips or any(w.times or w.crossed for w in self.windows))

    def encode(self) -> bytes:
        # counts past 32 bits (a message counts up to 2**31 recipients) are kept as 2**32 - 1,
        # far over any limit, rather than refused: such a subject is still counted
        parts = [_HEAD.pack(self.total, self.touched, len(self.windows))]
        for w in self.windows:
            n, tagged = len(w.times), bool(w.tags)
            parts += [_WINDOW.pack(w.period, n, min(w.crossed, _U32), min(w.crossed_limit, _U32), tagged),
                      struct.pack(f"<{n}d{n}I", *w.times, *(min(x, _U32) for x in w.weights)),
                      struct.pack(f"<{n}Q", *w.tags) if tagged else b"",
                      struct.pack("<B", len(w.peaks)), *(_PEAK.pack(d, min(c, _U32)) for d, c in w.peaks)]
        for strings in (self.recent, self.ips):
            parts.append(_STRINGS.pack(len(strings)))
            for text in strings:
                data = text.encode("utf-8", "surrogateescape")
                parts.append(_STRING.pack(len(data)) + data)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes | memoryview | None) -> Counter:
        if not data:
            return cls()
        data = bytes(data)
        total, touched, nwin = _HEAD.unpack_from(data)
        pos = _HEAD.size
        windows = []
        for _ in range(nwin):
            period, n, crossed, crossed_limit, tagged = _WINDOW.unpack_from(data, pos)
            pos += _WINDOW.size
            values = struct.unpack_from(f"<{n}d{n}I", data, pos)
            pos += _EVENT * n
            tags = list(struct.unpack_from(f"<{n}Q", data, pos)) if tagged else []
            pos += _TAG * n if tagged else 0
            (npeaks,) = struct.unpack_from("<B", data, pos)
            pos += 1
            peaks = [_PEAK.unpack_from(data, pos + i * _PEAK.size) for i in range(npeaks)]
            pos += npeaks * _PEAK.size
            windows.append(Window(period, list(values[:n]), list(values[n:]), peaks, crossed, crossed_limit, tags))
        lists: list[list[str]] = []
        for _ in range(2):
            (count,) = _STRINGS.unpack_from(data, pos)
            pos += _STRINGS.size
            items = []
            for _ in range(count):
                (size,) = _STRING.unpack_from(data, pos)
                pos += _STRING.size
                items.append(data[pos : pos + size].decode("utf-8", "surrogateescape"))
                pos += size
            lists.append(items)
        return cls(total, windows, lists[0], lists[1], touched)


def touched_of(data: bytes | memoryview) -> float:
    """When the encoded counter last counted an event, without decoding the rest."""
    return float(_HEAD.unpack_from(data)[1])


class Tally:
    """One event counted for one subject: the counter after it, the count in each of
    the policy's windows, and the first window it is over (-1: none)."""

    __slots__ = ("counter", "counts", "key", "ns", "over", "policy")

    def __init__(self, ns: str, key: str, policy: Policy, counter: Counter, counts: list[int], over: int) -> None:
        self.ns, self.key, self.policy, self.counter, self.counts, self.over = ns, key, policy, counter, counts, over

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def window(self) -> tuple[int, float]:
        return self.policy.windows[self.over]

    @property
    def count(self) -> int:
        """The count in the window it is over, at the event that crossed its limit (the
        count now if it crossed under another limit, or not while counted here)."""
        limit, period = self.window
        w, now = self.counter.window(period), self.counts[self.over]
        return w.crossed if w.crossed_limit == limit and limit < w.crossed <= now else now
