"""The benchmark's table, in Markdown: per actor, per set of signals, what became of it.

A bot's cell: the counter that blocked it (its first block), how long after its first
step (run seconds, and production-equivalent), and what left the server meanwhile. An
honest sender's: its blocks (must be 0), would-blocks, and the highest share of a limit
one of its subjects reached. A password bot's: the passwords it tried, those tried
after the account's login block (which could not succeed: a success among them would
be a bug), and whether it found the one account's password its list holds. Counts of
mail measured at ``--divide D`` are shown as measured, with the production-equivalent
(x D) beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eximhook.ops.stats import why
from population.outcome import Result
from population.scale import Scale


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def counted(n: int, unit: str, divide: int) -> str:
    """``n`` as measured, and production-equivalent (``divide`` times as many)."""
    return f"{n:,} {unit}" + (f" (x{divide}: {n * divide:,})" if divide > 1 and n else "")


def blocked_by(block: dict[str, Any], main: str, parts: bool) -> str:
    """The counter that made ``block``, with the namespace when it is not the actor's
    ``main`` one; for the combined score its percentage or, with ``parts``, what it
    added up (the block's evidence)."""
    text = why(block) if block["ns"] == main else f"{why(block)} ({block['ns']} {block['key']})"
    if block.get("counter") == "score":
        added = " + ".join(map(str, block.get("rcpts") or []))
        text += f": {added}" if parts and added else f" {block['count']} %"
    return text


def share(blocks: list[dict[str, Any]], subjects: list[tuple[str, str]], ns: str) -> str:
    """How many of an actor's subjects of namespace ``ns`` were blocked, and by what."""
    mine = [b for b in blocks if b["ns"] == ns]
    by = f" ({', '.join(sorted({why(b) for b in mine}))})" if mine else ""
    return f"{len(mine)}/{sum(s[0] == ns for s in subjects)} {ns}{by}"


def cell(r: Result, scale: Scale) -> str:
    subjects = r.actor.subjects()
    main = subjects[0][0]
    if r.actor.honest:
        text = f"{len(r.blocks)} blocks" if not r.blocks else \
            "**BLOCKED** by " + "; ".join(blocked_by(b, main, parts=True) for b in r.blocks)
        text += f", {len(r.would)} would-blocks"
        if r.closest[1] and not r.blocks:
            text += f"; closest: {r.closest[1]} at {r.closest[0]:.0%} of its limit"
        return text
    if r.blocks:
        after = r.blocked_after or 0.0
        text = (f"**{blocked_by(r.blocks[0], main, parts=False)}** after {after:.1f} s "
                f"({duration(scale.production(after))})")
        if len(subjects) > 3:
            many = [ns for ns in dict.fromkeys(ns for ns, _ in subjects) if ns != "sender"]
            text += "; blocked " + ", ".join(share(r.blocks, subjects, ns) for ns in many)
    else:
        text = "**missed**"
    g = r.guesses
    if g.made:
        text += f"; {g.made:,} passwords tried"
        if r.blocks:
            text += f", {g.before_block:,} before its first block"
        if any(b["ns"] == "login" for b in r.blocks):
            text += f", {g.locked:,} after the account's login block: could not succeed ({g.found_locked} did)"
        if r.actor.weak is not None:
            found = [t for t, user in g.found if user == r.actor.weak]
            rank = f"(rank {r.actor.rank} of {r.actor.tries})"
            if found:
                at = found[0] - r.start
                text += f"; **found {r.actor.weak}'s password** {rank} {at:.0f} s in ({duration(scale.production(at))})"
            else:
                text += f"; {r.actor.weak}'s password {rank} not found"
    if r.mail.accepted:
        messages = scale.divide if r.actor.messages_divided else 1
        text += f"; left: {counted(r.mail.left, 'msgs', messages)}, {counted(r.mail.rcpts, 'rcpts', scale.divide)}"
        if r.blocks and (late := r.mail.left_after(r.blocks[0]["since"])):
            text += f" (**{late} accepted after its block**)"
    return text


def table(columns: Sequence[str], runs: Sequence[Sequence[Result]], scale: Scale) -> str:
    """One row per actor, one column per run (``columns``: the runs' names)."""
    lines = ["| who | strategy | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for i, first in enumerate(runs[0]):
        kind = "honest" if first.actor.honest else "bot"
        cells = [cell(run[i], scale) for run in runs]
        lines.append(f"| {first.actor.name} ({kind}) | {first.actor.what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
