"""One subject's counter of one kind of event, as the counters store it (``counters``)
and the backends answer it: windows, total, daily peaks and recent evidence.

Packed with ``struct``, not JSON: ``import json`` alone costs ~10 ms on the hooks' path.

What one counter can hold, whatever its subject sends (issue 21): per window at most
``ratelimit.CAP`` events of 12 bytes (20 with a distinct or ratio counter's tags) and
``PEAK_DAYS`` daily peaks; at most ``[evidence] rcpts`` pieces of evidence and ``ips``
client addresses, each list at most ``evidence.EVIDENCE_KEPT`` bytes (kept by
``Counters.event``). ``max_bytes`` adds it up: with the defaults (one window, 10 and 5)
a counter never encodes to more than 22,711 bytes (a sum's, without tags, 14,511)
(``tests/unit/test_bounds.py`` checks it over hostile input).
"""

from __future__ import annotations

import struct

from .evidence import EVIDENCE_KEPT
from .ratelimit import CAP, Window, packed, unpacked

TYPE_CHECKING = False  # typing costs ~10 ms to import on the hooks' path
if TYPE_CHECKING:
    from .policy import Policy

_HEAD = struct.Struct("<QdB")  # total events, when last counted, number of windows
# period, number of events; the count at the last crossing (0: none), its limit; whether
# its events carry tags (a distinct or ratio counter: ``ratelimit``); the sum of its weights
_WINDOW = struct.Struct("<dIIIBQ")
_BAD = struct.Struct("<Q")  # after a tagged window's tags: the sum of its bad events' weights
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
    window = _WINDOW.size + CAP * (_EVENT + _TAG) + _BAD.size + 1 + PEAK_DAYS * _PEAK.size
    strings = 2 * (_STRINGS.size + EVIDENCE_KEPT) + (keep_evidence + keep_ips) * _STRING.size
    return _HEAD.size + windows * window + strings


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
        spans = [w for w in self.windows if w.period >= period]
        if not spans and not self.windows:
            return 0, True
        w = min(spans, key=lambda w: w.period) if spans else max(self.windows, key=lambda w: w.period)
        total, bad = w.sums(now, period)
        return bad if adds == "ratio" else total, bool(spans)

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
        parts: list[bytes | memoryview] = [_HEAD.pack(self.total, self.touched, len(self.windows))]
        for w in self.windows:
            n, tagged = len(w.times), bool(w.tags)
            parts += [_WINDOW.pack(w.period, n, min(w.crossed, _U32), min(w.crossed_limit, _U32), tagged, w.total),
                      packed(w.times), packed(w.weights),
                      *((packed(w.tags), _BAD.pack(w.bad)) if tagged else ()),
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
        view = memoryview(data)  # the events' arrays copied once, from the value, not from a slice of it
        total, touched, nwin = _HEAD.unpack_from(data)
        pos = _HEAD.size
        windows = []
        for _ in range(nwin):
            period, n, crossed, crossed_limit, tagged, wtotal = _WINDOW.unpack_from(data, pos)
            w = Window(period, crossed=crossed, crossed_limit=crossed_limit, total=wtotal, bad=0)
            pos += _WINDOW.size
            w.times = unpacked("d", view[pos : pos + 8 * n])
            pos += 8 * n
            w.weights = unpacked("I", view[pos : pos + 4 * n])
            pos += 4 * n
            if tagged:
                w.tags = unpacked("Q", view[pos : pos + _TAG * n])
                (w.bad,) = _BAD.unpack_from(data, pos + _TAG * n)
                pos += _TAG * n + _BAD.size
            (npeaks,) = struct.unpack_from("<B", data, pos)
            pos += 1
            w.peaks = [_PEAK.unpack_from(data, pos + i * _PEAK.size) for i in range(npeaks)]
            pos += npeaks * _PEAK.size
            windows.append(w)
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
    the policy's windows, and the first window it is over (-1: none). A Redis count's
    counter has its windows' crossings but not their events (reading those back would
    cost in proportion to the window: ``RedisBackend.counter`` reads them), and its
    evidence only when it is over a limit (a record's)."""

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
