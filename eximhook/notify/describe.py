"""What a block says in words, the seeds' sentence: ``user bob blocked because has sent
mail to 101 invalid recipients during 1h (limit 100).`` For every mail about blocks."""

from __future__ import annotations

from typing import Any

from ..model.policy import KINDS, UNITS
from ..model.subjects import escape
from ..periods import format_period

LABELS = {"auth": "user", "relay": "relay user", "sender": "sender", "local": "local user", "ip": "client",
          "net": "network", "login": "login", "customer": "customer", "all": "all"}


def describe(block: dict[str, Any]) -> str:
    """The seeds' sentence: ``user bob blocked because has sent mail to ...``."""
    who = f"{LABELS.get(block['ns'], block['ns'])} {escape(block['key'])}"
    if block["reason"] == "limit":
        verb = "would be blocked (shadow mode)" if block.get("shadow") else "blocked"
        return f"{who} {verb} because {did(block)}."
    note = f": {escape(block['note'])}" if block.get("note") else ""
    return f"{who} blocked by hand ({block['by']}){note}."


def did(block: dict[str, Any]) -> str:
    """What the subject did, for a block by a limit: ``has sent mail to ... (limit 100)``."""
    kind = KINDS[block.get("counter") or "invalid"]
    text = kind.did.format(count=block["count"])
    if kind.adds == "score":  # its parts have windows of their own: the evidence lists them
        return f"{text} (limit {block['limit']} %)"
    percent = " %" if kind.adds == "ratio" else ""
    return f"{text} during {format_period(block['period'])} (limit {block['limit']}{percent})"


SHARES_SHOWN = 20  # members listed by name; the rest summed on one line


def shares(name: str, count: int, period: float, members: list[tuple[str, str, int, bool]]) -> list[str]:
    """A customer's members' shares of its counter ``name`` (``engine.customers.shares``:
    ns, key, count, exact), as ``show`` and the notification print them: a heading,
    then a line each, the largest first. Of a sum, each with its percentage of the
    customer's ``count``, and what members no one can name sent; a distinct counter's
    members may share values, a ratio's counts are the bad outcomes. A member's own
    counter also holds what it counted before it was the customer's, or before the
    customer's limit was set: then the shares add up to more than the total."""
    kind = KINDS[name]
    lines = [f"Members' {UNITS[name]} in the last {format_period(period)}, from their own counters:"]
    for ns, key, n, exact in members[:SHARES_SHOWN]:
        part = f" ({(n * 200 + count) // (2 * count)} %)" if kind.adds == "sum" and count else ""  # rounded
        short = "" if exact else " (at least: its windows are shorter)"
        lines.append(f"  {LABELS.get(ns, ns)} {escape(key)}: {n}{part}{short}")
    if len(members) > SHARES_SHOWN:
        lines.append(f"  {len(members) - SHARES_SHOWN} more members: {sum(m[2] for m in members[SHARES_SHOWN:])}")
    if kind.adds == "sum" and (rest := count - sum(m[2] for m in members)) > 0:
        lines.append(f"  members not in the lookup file nor in the recent evidence: {rest}")
    if len(lines) == 1:
        lines.append("  none that can be named (not in the lookup file nor in the recent evidence)")
    return lines


def crossed_by(block: dict[str, Any]) -> str | None:
    """The member whose event took a customer over its limit: the newest evidence names
    it (``NS KEY: ...``); None for any other block."""
    if block["ns"] != "customer" or block.get("reason") != "limit" or not block.get("rcpts"):
        return None
    ns, _, rest = block["rcpts"][-1].partition(" ")
    return f"{LABELS.get(ns, ns)} {escape(rest.split(': ', 1)[0])}"
