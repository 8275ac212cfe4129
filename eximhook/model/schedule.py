"""Block lifetimes (``[expiry]``): how long a subject's n-th block lasts, and whether
one is due to lift. Off by default; see ``engine.expiry`` for what is done with them."""

from __future__ import annotations

TYPE_CHECKING = False  # the hooks import this on a trip: no typing there
if TYPE_CHECKING:
    from typing import Any

# what a new block needs of [expiry]: after, escalate, max, forget (seconds), manual
Schedule = tuple[float, float, float, float, bool]


def duration(after: float, escalate: float, longest: float, offence: int) -> float:
    """How long the subject's ``offence``-th block lasts."""
    seconds = after
    for _ in range(offence - 1):
        if seconds >= longest:  # stop multiplying at the cap: no overflow however many offences
            break
        seconds *= escalate
    return min(seconds, longest)


def due(block: dict[str, Any], now: float) -> bool:
    return block.get("expires") is not None and block["expires"] <= now
