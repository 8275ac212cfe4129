"""Periods written the way Exim writes them (``3600s``, ``60m``, ``1h``, ``1d``, ``2w``), and
points in time as eximhook shows them."""

from __future__ import annotations

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_period(text: str) -> float:
    """Seconds in ``text``; Exim's forms, including sums such as ``1h30m``.

    Raises ValueError with a message fit for the user.
    """
    total = 0.0
    number = ""
    for ch in text.strip():
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in _UNITS and number:
            total += float(number) * _UNITS[ch]
            number = ""
        else:
            raise ValueError(f"bad period {text!r}: use a number and a unit s, m, h, d or w")
    if number:  # a bare number counts as seconds, as in Exim
        total += float(number)
    if total <= 0:
        raise ValueError(f"bad period {text!r}: must be longer than 0s")
    return total


def format_period(seconds: float) -> str:
    """The shortest Exim-style spelling of ``seconds``: 3600 -> ``1h``, 5400 -> ``90m``."""
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def format_time(ts: float | None) -> str:
    """``ts`` in local time, ISO 8601 to the second: ``2026-11-24T03:12:57+00:00``."""
    from datetime import datetime

    return "-" if ts is None else datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")
