"""Placeholders (``$name``, ``${name}``) in text an admin writes: the notification
templates (``notify.templates``) and the owner's address patterns (``[owner] pattern``)."""

from __future__ import annotations

import string
from collections.abc import Iterable

PATTERN_PLACEHOLDERS = ("key", "local", "domain")  # the owner pattern's: the key, and its parts around the last @
LISTS = frozenset({"evidence", "commands", "consequence", "blocks"})  # one line per item


def problem(text: str, known: Iterable[str], *, single: bool = False) -> str | None:
    """What is wrong with the placeholders in ``text``, or None. ``single``: where one
    line is wanted (a header), a list placeholder is wrong too."""
    known = frozenset(known)
    for m in string.Template.pattern.finditer(text):
        name = m.group("named") or m.group("braced")
        if m.group("invalid") is not None:
            return (f"'$' at column {m.start() + 1} starts no placeholder (write $$ for a dollar sign, "
                    "${name} for a placeholder)")
        if name is None:  # $$
            continue
        if name not in known:
            return f"unknown placeholder ${name}; known: {', '.join('$' + k for k in sorted(known))}"
        if single and name in LISTS:
            return f"${name} is a list, one line per item: only the body can hold it"
    return None
