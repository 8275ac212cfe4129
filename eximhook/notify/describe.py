"""What a block says in words, the seeds' sentence: ``user bob blocked because has sent
mail to 101 invalid recipients during 1h (limit 100).`` For every mail about blocks."""

from __future__ import annotations

from typing import Any

from ..model.policy import KINDS
from ..model.subjects import escape
from ..periods import format_period

LABELS = {"auth": "user", "relay": "relay user", "sender": "sender", "local": "local user", "ip": "client",
          "net": "network", "login": "login", "customer": "customer"}


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
