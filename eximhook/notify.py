"""Mail to the abuse desk, one per block, through the outbox in the store.

The block's transaction queues the notification; ``send_pending`` claims it, runs the
sendmail command and only then drops it from the outbox. A failed or hung command
leaves it queued for the next run, so a notification is never lost, and a claim keeps
two concurrent runs from sending it twice.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from . import outbox
from .expiry import when
from .periods import format_period
from .store import Store
from .subjects import FREEZING, escape, shell_quote

if TYPE_CHECKING:
    from ._log import Logger
    from .config import Config

_LABEL = {"auth": "user", "relay": "relay user", "sender": "sender", "local": "local user", "ip": "client"}
# what each counter's block says the subject did, as the seeds' sentence has it
_DID = {"invalid": "has sent mail to {count} invalid recipients", "bounces": "has caused {count} bounces",
        "recipients": "has sent mail to {count} recipients", "authfail": "has failed SMTP AUTH {count} times"}
_SUBJECT_KEY_MAX = 120


def command_line(cfg: Config) -> list[str]:
    """How to run eximhook with this config, for the commands printed in mail."""
    import os
    import sys

    from ._fastconfig import DEFAULT_PATH

    prog = sys.argv[0] if os.path.isabs(sys.argv[0]) and "eximhook" in os.path.basename(sys.argv[0]) else "eximhook"
    return [prog] if cfg.path == DEFAULT_PATH else [prog, "--config", cfg.path]


def describe(block: dict[str, Any]) -> str:
    """The seeds' sentence: ``user bob blocked because has sent mail to ...``."""
    who = f"{_LABEL.get(block['ns'], block['ns'])} {escape(block['key'])}"
    if block["reason"] == "limit":
        did = _DID[block.get("counter") or "invalid"].format(count=block["count"])
        verb = "would be blocked (shadow mode)" if block.get("shadow") else "blocked"
        return f"{who} {verb} because {did} during {format_period(block['period'])} (limit {block['limit']})."
    note = f": {escape(block['note'])}" if block.get("note") else ""
    return f"{who} blocked by hand ({block['by']}){note}."


def message_id(block: dict[str, Any], sender: str) -> str:
    """The same for every copy of one block's notification: a copy resent after a crash
    (see ``outbox``) is recognisable as the same mail, and ticket systems fold it."""
    import hashlib
    import os

    digest = hashlib.sha256(f"{block['ns']}\0{block['key']}\0{block['since']!r}".encode(
        "utf-8", "surrogateescape")).hexdigest()[:32]
    domain = sender.rpartition("@")[2] if "@" in sender else os.uname().nodename
    return f"<eximhook.{digest}@{domain or 'localhost'}>"


def compose(block: dict[str, Any], *, to: str, sender: str, command: Sequence[str],
            frozen: Sequence[str] = ()) -> EmailMessage:
    if block.get("shadow"):
        return _compose_shadow(block, to=to, sender=sender, command=command)
    """The notification for ``block``. ``command`` is how the admin runs eximhook
    (program and ``--config``), so the commands in the mail can be pasted as they are."""
    shown_key = escape(block["key"])
    if len(shown_key) > _SUBJECT_KEY_MAX:
        shown_key = shown_key[:_SUBJECT_KEY_MAX] + "..."
    msg = EmailMessage()
    # escape() leaves no CR or LF in a header: a key cannot add a header of its own
    _headers(msg, block, f"{_LABEL.get(block['ns'], block['ns'])} {shown_key} blocked", to=to, sender=sender)
    prog = " ".join(shell_quote(c) for c in command)
    subject = f"{block['ns']} {shell_quote(block['key'])}"
    if block["ns"] not in FREEZING:  # an address guessing passwords: its AUTH is refused, nothing is frozen
        _set_body(msg, "\n".join([describe(block), "", *_facts(block), "",
                                  "From now on this address's SMTP AUTH is refused (the connection is dropped).",
                                  f"  {prog} show {subject}",
                                  f"  {prog} unblock {subject}   # lift it (a customer's NAT, say)", ""]))
        return msg
    lines = [
        describe(block), "",
        *_facts(block),
        "",
        f"Frozen messages ({len(frozen)} when this was sent): {' '.join(frozen) or '-'}",
        "",
        "From now on everything this sender submits is accepted and frozen.",
        "Look at the frozen mail, then decide:",
        f"  {prog} show {subject}",
        f"  {prog} frozen {subject}",
        f"  {prog} view MESSAGE-ID",
        f"  {prog} release {subject}          # not spam: unblock, deliver the frozen mail",
        f"  {prog} purge {subject} --unblock  # spam: delete the frozen mail, then unblock",
        f"  {prog} purge {subject}            # spam: delete the frozen mail, keep the block",
        "",
    ]
    _set_body(msg, "\n".join(lines))
    return msg


def _headers(msg: EmailMessage, block: dict[str, Any], subject: str, *, to: str, sender: str) -> None:
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = formatdate(block["since"], localtime=True)
    msg["Message-ID"] = message_id(block, sender)
    msg["Auto-Submitted"] = "auto-generated"


_EVIDENCE = {"invalid": "Last invalid recipients", "bounces": "Last bounces (failed recipients)",
             "recipients": "Last messages (Exim id, recipients)", "authfail": "Last user names tried"}


def _facts(block: dict[str, Any]) -> list[str]:
    counter = block.get("counter") or "invalid"
    return [
        f"Namespace:   {block['ns']}",
        f"Key:         {escape(block['key'])}",
        f"{'Recorded at:' if block.get('shadow') else 'Blocked at:':<13}{formatdate(block['since'], localtime=True)}",
        f"Counter:     {counter}, {block['total']} in all since it was last reset",
        f"Client IPs:  {', '.join(escape(ip) for ip in block['ips']) or '-'}",
        *([f"Lifts at:    {when(block)}; eximhook show says if frozen mail holds it"] if "expires" in block else []),
        f"{_EVIDENCE[counter]}:",
        *(f"  {escape(r)}" for r in block["rcpts"]), *([] if block["rcpts"] else ["  -"]),
    ]


def _compose_shadow(block: dict[str, Any], *, to: str, sender: str, command: Sequence[str]) -> EmailMessage:
    """A would-block: nothing was blocked or frozen; the admin may want to enforce."""
    shown_key = escape(block["key"])[:_SUBJECT_KEY_MAX]
    msg = EmailMessage()
    _headers(msg, block, f"{_LABEL.get(block['ns'], block['ns'])} {shown_key} would be blocked (shadow mode)",
             to=to, sender=sender)
    prog = " ".join(shell_quote(c) for c in command)
    lines = [describe(block), "", *_facts(block), "",
             f"The {block.get('counter')} counter runs in shadow mode: nothing was blocked or frozen.",
             "If this sender should have been stopped, set mode = \"enforce\" for it in eximhook.toml.",
             f"  {prog} show {block['ns']} {shell_quote(block['key'])}",
             f"  {prog} top {block.get('counter')}", ""]
    _set_body(msg, "\n".join(lines))
    return msg


def compose_spool(notice: dict[str, Any], *, to: str, sender: str, command: Sequence[str]) -> EmailMessage:
    """The spool-space guard has switched blocked subjects from freeze to refuse."""
    import os

    msg = EmailMessage()
    host = os.uname().nodename
    _headers(msg, notice, f"eximhook on {host}: spool space low, blocked senders' mail is now refused",
             to=to, sender=sender)
    prog = " ".join(shell_quote(c) for c in command)
    blocked = [f"  {ns} {escape(key)}" for ns, key in notice["blocked"]]
    more = notice["blocked_total"] - len(blocked)
    lines = [f"The spool of {host} has {notice['free']} KiB free, below {notice['threshold']} KiB: the free space",
             "recorded when the blocks below started, times [spool] fraction, or [spool] floor.",
             "From now on a blocked subject's mail is refused (5xx) instead of frozen, so the",
             "spam already frozen stays, and no more comes in. It is frozen again once there is",
             "room (eximhook maintain notes it). Purge what is spam to make room:",
             f"  {prog} list", f"  {prog} purge NS KEY", "",
             f"Blocked now ({notice['blocked_total']}):", *blocked, *([f"  ... and {more} more"] if more > 0 else []),
             ""]
    _set_body(msg, "\n".join(lines))
    return msg


def send_alert(cfg: Config, since: float, error: str | None) -> str | None:
    """Tell the abuse desk that counting has failed open since ``since`` (``error``), or,
    with ``error`` None, that it works again. None on success, else why it failed."""
    import os

    msg = EmailMessage()
    state = "fails open" if error else "works again"
    host = os.uname().nodename
    msg["Subject"] = f"eximhook on {host}: counting {state}"
    msg["From"] = cfg.notify.sender
    msg["To"] = cfg.notify.to
    msg["Date"] = formatdate(localtime=True)
    domain = cfg.notify.sender.rpartition("@")[2] if "@" in cfg.notify.sender else host
    msg["Message-ID"] = f"<eximhook.health.{int(since)}.{'down' if error else 'up'}@{domain}>"
    msg["Auto-Submitted"] = "auto-generated"
    if error:
        lines = [f"Since {formatdate(since, localtime=True)} the eximhook store on {host} refuses writes:",
                 f"  {escape(error)}", "",
                 "Hooks and the daemon fail open meanwhile: mail flows, but invalid recipients are not",
                 "counted and nobody is blocked. Fix the store, then check with:",
                 f"  {' '.join(shell_quote(c) for c in command_line(cfg))} status", ""]
    else:
        lines = [f"The eximhook store on {host} takes writes again (it refused them since "
                 f"{formatdate(since, localtime=True)}). Counting works again.", ""]
    _set_body(msg, "\n".join(lines))
    return send(msg, cfg.notify.sendmail, cfg.notify.to, cfg.notify.timeout)


def _set_body(msg: EmailMessage, text: str) -> None:
    """The text as it reads: 7bit, or 8bit when it holds non-ASCII (an escaped key may),
    so that the paste-ready commands are not wrapped with quoted-printable's ``=``. Only
    a line past SMTP's 998 octets (a key of kilobytes) takes quoted-printable."""
    longest = max((len(line.encode()) for line in text.split("\n")), default=0)
    cte = "quoted-printable" if longest > 998 else "7bit" if text.isascii() else "8bit"
    msg.set_content(text, cte=cte)


def send(msg: EmailMessage, sendmail: Sequence[str], to: str, timeout: float) -> str | None:
    """Run ``sendmail TO`` with ``msg`` on stdin; None on success, else the reason."""
    # Output goes to a file, not a pipe: Exim's background delivery process may keep
    # a pipe open long after the submission has finished.
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.run([*sendmail, to], input=msg.as_bytes(), stdout=output,
                                  stderr=subprocess.STDOUT, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return f"{sendmail[0]} did not finish within {timeout:g}s; killed"
        except OSError as exc:
            return f"cannot run {sendmail[0]}: {exc.strerror}"
        if proc.returncode != 0:
            output.seek(0)
            said = output.read(500).decode("utf-8", "replace").strip()
            return f"{sendmail[0]} exited {proc.returncode}" + (f": {escape(said)}" if said else "")
    return None


def send_pending(store: Store, *, to: str, sender: str, sendmail: Sequence[str], timeout: float,
                 stale_after: float, budget: float, command: Sequence[str], clock: Callable[[], float],
                 frozen_ids: Callable[[str, str], list[str]] = lambda ns, key: [],
                 release: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset()) -> tuple[int, list[str]]:
    """Send queued notifications, one claim at a time, until none is left or ``budget``
    seconds have passed (Exim kills a ``${run}`` after 60 s); returns (sent, errors).
    Held notifications wait, unless their subject is in ``release``."""
    sent, errors, failed = 0, [], set[int]()
    deadline = clock() + budget
    while clock() < deadline and (item := outbox.claim_next(store, clock(), stale_after, failed, release)) is not None:
        block = item["block"]
        shadow = item.get("kind") == "would-block"  # nothing is frozen, so nothing to freeze or list
        if shadow:
            block = dict(block, shadow=True)
        if item.get("kind") == "spool-low":
            msg = compose_spool(block, to=to, sender=sender, command=command)
        else:
            msg = compose(block, to=to, sender=sender, command=command,
                          frozen=() if shadow else frozen_ids(block["ns"], block["key"]))
        error = send(msg, sendmail, to, timeout)
        item["to"] = to
        outbox.finish(store, item, clock(), error)
        if error is None:
            sent += 1
        else:
            errors.append(error)
            failed.add(item["seq"])  # retried by the next run, not in a tight loop now
    return sent, errors


def deliver(cfg: Config, store: Store, log: Logger, command: Sequence[str], *,
            release: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset(),
            reported: Callable[[str, str], list[str]] = lambda ns, key: []) -> tuple[int, list[str]]:
    """Send what the outbox holds, as ``eximhook notify`` and the daemon do: first freeze
    the subject's mail still queued (``[exim] freeze_queued``), then list its frozen
    messages in the mail, the ``reported`` ones (the tripping message, which may not be
    in the spool yet) first. Each failure is logged, and returned."""
    from .core import freeze_queued
    from .errors import EximError
    from .exim import Exim

    exim = Exim.from_config(cfg.exim)

    def frozen_ids(ns: str, key: str) -> list[str]:
        if ns not in FREEZING:
            return []
        ids = list(reported(ns, key))
        # a queue we cannot read must not hold the notification back: log, mail anyway
        try:
            if cfg.exim.freeze_queued:
                freeze_queued(store, exim, ns, key, time.time())
            ids += exim.message_ids(ns, key, frozen=True)
        except (EximError, OSError, ValueError) as exc:
            log.log("err", f"could not freeze or list the queue of {ns} {key}: {exc}")
        return list(dict.fromkeys(ids))

    n = cfg.notify
    sent, errors = send_pending(
        store, to=n.to, sender=n.sender, sendmail=n.sendmail, timeout=n.timeout,
        stale_after=n.stale_after, budget=n.budget, command=command, clock=time.time,
        frozen_ids=frozen_ids, release=release)
    for error in errors:
        log.log("err", f"notification left queued: {error}")
    return sent, errors
