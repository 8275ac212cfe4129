"""The abuse desk's mail about a burst of blocks: one namespace's blocks (an address's
and its network's together) in one digest (``[notify] digest_after``; the outbox
decides when, see ``outbox``).

Each block gets a few lines: when, the seeds' sentence (key, counter, count, window),
and the paste-ready commands for it. Keys come from clients: each is shown escaped on
one line (``subjects.escape``), cut when it is long, and the Subject names no key, so
no key can add a header or a line of its own. A digest of one block is the ordinary
notification (``notify.compose``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from ..model.subjects import FREEZING, shell_quote
from ..periods import format_period
from .describe import LABELS, describe
from .mails import mail, new_message_id
from .templates import Template

# a key longer than this is shown cut in the digest, and its commands left out (a
# paste-ready command needs the whole key): `eximhook list` shows it
SHOWN_KEY = 120
_COMMAND_KEY = 400


def compose_digest(items: Sequence[dict[str, Any]], *, to: str, sender: str, command: Sequence[str],
                   burst: tuple[int, float] | None, template: Template,
                   frozen: Mapping[tuple[str, str], Sequence[str]] | None = None) -> EmailMessage:
    """The digest of the blocks that ``items`` (outbox entries of one namespace) are
    about; ``burst`` is ([notify] digest_after, digest_every: None, turned off since the
    digest was claimed), ``frozen`` the frozen message ids of each subject, where known."""
    blocks = [item["block"] for item in items]
    spaces = list(dict.fromkeys(b["ns"] for b in blocks))  # an address's and its network's (subjects.family)
    prog = " ".join(shell_quote(c) for c in command)
    lines: list[str] = []
    for block in blocks:
        lines += _lines(block, prog, (frozen or {}).get((block["ns"], block["key"])))
    first, last = min(b["since"] for b in blocks), max(b["since"] for b in blocks)
    if spaces[0] in FREEZING:
        consequence = ["From now on everything each of them submits is accepted and frozen. Look at its",
                       f"frozen mail ({prog} frozen NS KEY), then release or purge it as above. All of them:"]
    else:
        consequence = ["From now on their SMTP AUTH is refused (a network's: from every address in it): the",
                       "connection is dropped before the password is checked. Nothing is frozen. All of them:"]
    values: dict[str, str | list[str]] = {
        "what": " and ".join(f"{LABELS.get(ns, ns)}s" for ns in spaces), "ns": ", ".join(spaces),
        "count": str(len(blocks)), "host": os.uname().nodename,
        "first": formatdate(first, localtime=True), "last": formatdate(last, localtime=True),
        "after": str(burst[0]) if burst else "-", "every": format_period(burst[1]) if burst else "-",
        "command": prog, "blocks": lines,
        "consequence": consequence, "commands": [*(f"{prog} list --ns {ns}" for ns in spaces), f"{prog} stats"],
    }
    # the same entries give the same Message-ID: a digest sent again after a crash (see
    # outbox) is recognisable as the same mail
    members = "\0".join(f"{b['ns']}\0{b['key']}\0{b['since']!r}" for b in blocks)
    unique = hashlib.sha256(members.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return mail(template, values, when=last, to=to, sender=sender, msgid=new_message_id(f"digest.{unique}", sender))


def _lines(block: dict[str, Any], prog: str, frozen: Sequence[str] | None) -> list[str]:
    """One block: when and what (key, counter, count, window), then its commands."""
    key = block["key"]
    shown = dict(block, key=key[:SHOWN_KEY] + "..." if len(key) > SHOWN_KEY else key)
    at = time.strftime("%H:%M:%S", time.localtime(block["since"]))
    held = f" Frozen: {len(frozen)}." if frozen is not None and block["ns"] in FREEZING else ""
    out = [f"{at} {describe(shown)}{held}"]
    args = f"{block['ns']} {shell_quote(key)}"
    if len(args) > _COMMAND_KEY:
        return [*out, f"    (a key of {len(key)} characters: {prog} list --ns {block['ns']} shows it)"]
    if block["ns"] in FREEZING:
        return [*out, f"    {prog} show {args}", f"    {prog} release {args}   # not spam",
                f"    {prog} purge {args}     # spam"]
    return [*out, f"    {prog} show {args}", f"    {prog} unblock {args}"]
