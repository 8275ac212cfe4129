"""Mail to the abuse desk, one per block, and to the subject's owner (``[owner]``),
through the outbox in the store.

The block's transaction queues the notifications; ``send_pending`` claims each, runs the
sendmail command and only then drops it from the outbox. A failed or hung command
leaves it queued for the next run, so a notification is never lost, and a claim keeps
two concurrent runs from sending it twice. The text comes from templates (``templates``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from ..engine.expiry import when
from ..model.policy import KINDS
from ..model.subjects import FREEZING, escape, shell_quote
from ..periods import format_period
from ..storage import outbox
from ..storage.store import Store
from . import templates
from .describe import LABELS, crossed_by, describe, did
from .describe import shares as member_shares
from .mails import mail, message, new_message_id, send, set_body
from .templates import Template

Subject = tuple[str, str]

if TYPE_CHECKING:
    from ..config.load import Config, EximConfig
    from ..log import Logger
    from ..model.counter import Counter

    Shares = Sequence[tuple[str, str, int, bool]]

def command_line(cfg: Config) -> list[str]:
    """How to run eximhook with this config, for the commands printed in mail."""
    import os
    import sys

    from ..config import DEFAULT_PATH

    prog = sys.argv[0] if os.path.isabs(sys.argv[0]) and "eximhook" in os.path.basename(sys.argv[0]) else "eximhook"
    return [prog] if cfg.path == DEFAULT_PATH else [prog, "--config", cfg.path]


def message_id(block: dict[str, Any], sender: str, part: str = "") -> str:
    """The same for every copy of one block's notification: a copy resent after a crash
    (see ``outbox``) is recognisable as the same mail, and ticket systems fold it. The
    owner's mail is another message (``part`` "owner.")."""
    import hashlib

    digest = hashlib.sha256(f"{block['ns']}\0{block['key']}\0{block['since']!r}".encode(
        "utf-8", "surrogateescape")).hexdigest()[:32]
    return new_message_id(f"{part}{digest}", sender)


def compose(block: dict[str, Any], *, to: str, sender: str, command: Sequence[str],
            frozen: Sequence[str] = (), template: Template | None = None, members: Shares = ()) -> EmailMessage:
    """The abuse desk's mail about ``block`` (a would-block when it says ``shadow``),
    from ``template`` (default: the built-in one). ``command`` is how the admin runs
    eximhook (program and ``--config``), so the commands in the mail can be pasted as
    they are. A customer's names the member that crossed its limit and the ``members``'
    shares (``engine.customers.shares``)."""
    kind = "shadow" if block.get("shadow") else "notify"
    counter = block.get("counter") or "invalid"
    prog = " ".join(shell_quote(c) for c in command)
    args = f"{block['ns']} {shell_quote(block['key'])}"
    values: dict[str, str | list[str]] = {
        **_facts(block), "summary": describe(block), "reason": block["reason"], "by": escape(block["by"]),
        "note": escape(block.get("note") or "-"), "counted": counted(block),
        "ips": ", ".join(escape(ip) for ip in block["ips"]) or "-",
        "evidence_title": KINDS[counter].evidence, "evidence": [escape(r) for r in block["rcpts"]],
        "frozen": " ".join(frozen) or "-", "frozen_count": str(len(frozen)), "command": prog, "subject_args": args,
        "consequence": [f"Frozen messages ({len(frozen)} when this was sent): {' '.join(frozen) or '-'}", "",
                        "From now on everything this sender submits is accepted and frozen.",
                        "Look at the frozen mail, then decide:"],
        "commands": [f"{prog} show {args}", f"{prog} frozen {args}", f"{prog} view MESSAGE-ID",
                     f"{prog} release {args}          # not spam: unblock, deliver the frozen mail",
                     f"{prog} purge {args} --unblock  # spam: delete the frozen mail, then unblock",
                     f"{prog} purge {args}            # spam: delete the frozen mail, keep the block"],
    }
    if block["ns"] not in FREEZING:  # an address guessing passwords: its AUTH is refused, nothing is frozen
        refused = ("SMTP AUTH from every address in this network is refused" if block["ns"] == "net" else
                   "this address's SMTP AUTH is refused")
        values["consequence"] = [f"From now on {refused}: the connection is dropped",
                                 "before the password is checked. Nothing is frozen. Decide:"]
        values["commands"] = [f"{prog} show {args}",
                              f"{prog} unblock {args}              # lift it (a customer's NAT, say)",
                              f"{prog} exempt add {args} --reason ...  # and never block it again"]
    if block["ns"] == "login":  # a spray at one account: refused only from where it never sent mail
        # its key is the user name tried: the evidence is where the guesses came from
        values["evidence_title"] = "Last client addresses that tried it"
        values["evidence"] = [escape(ip) for ip in block["ips"]]
        values["consequence"] = ["From now on SMTP AUTH for this account is refused from every network it has",
                                 "not sent mail from lately, with the right password too (a 535, as for a",
                                 "wrong one); from its own networks it logs in as before. Nothing is frozen.",
                                 "Decide:"]
        values["commands"] = [f"{prog} show {args}                # and the networks it is known from",
                              f"{prog} unblock {args}             # lift it",
                              f"{prog} show auth {shell_quote(block['key'])}   # the account's own mail"]
    if block["ns"] == "customer":
        values["consequence"] = [line.replace("everything this sender submits", "everything its members submit")
                                 for line in values["consequence"]]
    if block["ns"] == "customer" and block["reason"] == "limit":
        crossed = crossed_by(block)
        shares = [] if KINDS[counter].adds == "score" else member_shares(counter, block["count"], block["period"],
                                                                          list(members))
        values["consequence"] = [*([f"Crossed by:  its member {crossed}"] if crossed else []), *shares, "",
                                 "A customer's block freezes the mail of every member.", *values["consequence"]]
    if block["ns"] == "all":  # a spray across many accounts: each refused only from where it never sent mail
        values["consequence"] = ["From now on SMTP AUTH for EVERY account is refused from every network it has not",
                                 "sent mail from lately, with the right password too (a 535, as for a wrong one);",
                                 "from their own networks accounts log in as before: a user on a new network cannot,",
                                 "until you lift it. Nothing is frozen. Decide:"]
        values["commands"] = [f"{prog} show {args}",
                              f"{prog} top authfail --ns login       # the accounts the spray tried",
                              f"{prog} unblock {args}             # lift it"]
    if "expires" in block and not block.get("shadow"):  # [expiry]
        values["consequence"] = [f"Lifts at:    {when(block)}; eximhook show says if frozen mail holds it", "",
                                 *values["consequence"]]
    return mail(template or templates.builtin(kind), values, when=block["since"], to=to, sender=sender,
                 msgid=message_id(block, sender))


def compose_owner(block: dict[str, Any], *, to: str, sender: str, abuse: str,
                  template: Template | None = None) -> EmailMessage:
    """The owner's mail about ``block`` (``[owner]``): what the block says about their
    own account, and ``abuse`` (the abuse desk) to reply to."""
    why = did(block) if block["reason"] == "limit" else "was blocked by an administrator"
    values: dict[str, str | list[str]] = {**_facts(block), "why": why, "abuse": escape(abuse)}
    return mail(template or templates.builtin("owner"), values, when=block["since"], to=to, sender=sender,
                 msgid=message_id(block, sender, "owner."))


def counted(block: dict[str, Any]) -> str:
    """The counter and its total as its kind adds up (``$counted``): a sum's events, the
    events a distinct or ratio counter judged, none for the score; "-" for a block by
    hand, which no counter made."""
    if block["reason"] != "limit":
        return "-"
    counter = block.get("counter") or "invalid"
    adds, total = KINDS[counter].adds, block.get("total")
    if adds == "sum":
        return f"{counter}, {total} in all since it was last reset"
    if adds == "score":
        return f"{counter}, the sum of its parts below"
    what = "distinct values in its window" if adds == "distinct" else "a percentage of its window's outcomes"
    return f"{counter} ({what}), {total} events in all since it was last reset"


def _facts(block: dict[str, Any]) -> dict[str, str]:
    """The placeholders every template has; "-" for what does not apply (the limit of a
    manual block)."""
    import os

    def shown(value: Any) -> str:
        return "-" if value is None else str(value)

    return {"label": LABELS.get(block["ns"], block["ns"]), "ns": block["ns"], "key": escape(block["key"]),
            "counter": block.get("counter") or "invalid", "count": shown(block.get("count")),
            "limit": shown(block.get("limit")),
            "period": "-" if block.get("period") is None else format_period(block["period"]),
            "total": shown(block.get("total")), "date": formatdate(block["since"], localtime=True),
            "host": os.uname().nodename}




def compose_spool(notice: dict[str, Any], *, to: str, sender: str, command: Sequence[str]) -> EmailMessage:
    """The spool-space guard has switched blocked subjects from freeze to refuse."""
    import os

    host = os.uname().nodename
    msg = message(f"eximhook on {host}: spool space low, blocked senders' mail is now refused", sender=sender,
                   to=to, when=notice["since"], msgid=message_id(notice, sender, "spool."))
    prog = " ".join(shell_quote(c) for c in command)
    blocked = [f"  {prog} purge {ns} {shell_quote(key)}" for ns, key in notice["blocked"]]
    more = notice["blocked_total"] - len(blocked)
    lines = [f"The spool of {host} has {notice['free']} KiB free, below {notice['threshold']} KiB: the free space",
             "recorded when the blocks below started, times [spool] fraction, or [spool] floor.",
             "A blocked subject's mail is now refused (5xx) instead of frozen: the spam already",
             "frozen stays, no more comes in. It is frozen again once there is room (eximhook",
             "maintain notes it). Look at the frozen mail, and purge what is spam to make room:",
             f"  {prog} list", "",
             f"Blocked now, whose mail is refused ({notice['blocked_total']}):", *blocked,
             *([f"  ... and {more} more: {prog} list"] if more > 0 else []), ""]
    set_body(msg, "\n".join(lines))
    return msg


def send_alert(cfg: Config, since: float, error: str | None) -> str | None:
    """Tell the abuse desk that counting has failed open since ``since`` (``error``), or,
    with ``error`` None, that it works again. None on success, else why it failed."""
    import os

    state = "fails open" if error else "works again"
    host = os.uname().nodename
    msg = message(f"eximhook on {host}: counting {state}", sender=cfg.notify.sender, to=cfg.notify.to, when=None,
                   msgid=new_message_id(f"health.{int(since)}.{'down' if error else 'up'}", cfg.notify.sender))
    if error:
        lines = [f"Since {formatdate(since, localtime=True)} the eximhook store on {host} refuses writes:",
                 f"  {escape(error)}", "",
                 "Hooks and the daemon fail open meanwhile: mail flows, but invalid recipients are not",
                 "counted and nobody is blocked. Fix the store, then check with:",
                 f"  {' '.join(shell_quote(c) for c in command_line(cfg))} status", ""]
    else:
        lines = [f"The eximhook store on {host} takes writes again (it refused them since "
                 f"{formatdate(since, localtime=True)}). Counting works again.", ""]
    set_body(msg, "\n".join(lines))
    return send(msg, cfg.notify.sendmail, cfg.notify.to, cfg.notify.timeout)


def send_pending(store: Store, *, to: str, sender: str, sendmail: Sequence[str], timeout: float,
                 stale_after: float, budget: float, command: Sequence[str], clock: Callable[[], float],
                 frozen: Callable[[list[Subject]], Mapping[Subject, list[str]]] = lambda subjects: {},
                 release: set[Subject] | frozenset[Subject] = frozenset(),
                 template: Callable[[str], Template] = templates.builtin,
                 exim: EximConfig | None = None, burst: outbox.Burst | None = None,
                 shares: Callable[[dict[str, Any]], Shares] = lambda block: ()) -> tuple[int, list[str]]:
    """Send queued notifications, one claim at a time, until none is left or ``budget``
    seconds have passed (Exim kills a ``${run}`` after 60 s); returns (sent, errors):
    the notifications sent, a digest counting all it names. Held notifications wait,
    unless their subject is in ``release``. The abuse desk (``to``) gets the block and
    would-block mails, bursts of blocks in digests (``burst``: [notify] digest_after,
    digest_every; see ``outbox``); an owner mail goes to the address its block looked
    up. ``frozen`` freezes what the subjects have queued, and lists their frozen mail.
    ``template`` gives the template of each kind of mail; ``exim`` the Exim whose name
    a customer's mail gives (None: the default [exim]); ``shares`` a customer's members'
    shares of what its block or would-block counted."""
    sent, errors, failed = 0, [], set[int]()
    deadline = clock() + budget
    while clock() < deadline and (item := outbox.claim_next(store, clock(), stale_after, failed, release,
                                                             burst)) is not None:
        block = item["block"]
        members = item["items"] if item.get("kind") == "digest" else [item]
        if item.get("kind") == "digest" and len(members) > 1:
            from .digest import compose_digest

            subjects = list(dict.fromkeys((m["block"]["ns"], m["block"]["key"]) for m in members))
            msg = compose_digest(members, to=to, sender=sender, command=command, burst=burst,
                                 template=template("digest"), frozen=frozen(subjects))
            item["to"] = to
        elif item.get("kind") == "digest":  # a digest of one: the block's own mail
            block = members[0]["block"]
            msg = compose(block, to=to, sender=sender, command=command,
                          frozen=frozen([(block["ns"], block["key"])]).get((block["ns"], block["key"]), ()),
                          template=template("notify"), members=shares(block))
            item["to"] = to
        elif item.get("kind") == "owner":
            msg = compose_owner(block, to=item["to"], sender=sender, abuse=to, template=template("owner"))
        elif item.get("kind") == "relaytest":  # an open relay: its postmaster (if known), Cc the abuse desk
            from ..config.load import EximConfig
            from ..exim.queue import primary_hostname
            from .relaytest import blocked

            msg = blocked(block, to=item["to"], cc=item["cc"], sender=sender,
                          server=primary_hostname(exim or EximConfig()))
            item["to"] = [a for a in (item["to"], item["cc"]) if a]
        elif item.get("kind") == "spool-low":
            msg = compose_spool(block, to=to, sender=sender, command=command)
            item["to"] = to
        else:
            shadow = item.get("kind") == "would-block"  # nothing is frozen, so nothing to freeze or list
            if shadow:
                block = dict(block, shadow=True)
            subject = (block["ns"], block["key"])
            msg = compose(block, to=to, sender=sender, command=command,
                          frozen=() if shadow else frozen([subject]).get(subject, ()),
                          template=template("shadow" if shadow else "notify"), members=shares(block))
            item["to"] = to
        error = send(msg, sendmail, item["to"], timeout)
        outbox.finish(store, item, clock(), error)
        if error is None:
            sent += len(members)
        else:
            errors.append(error)
            failed.update(m["seq"] for m in members)  # retried by the next run, not in a tight loop now
    return sent, errors


def deliver(cfg: Config, store: Store, log: Logger, command: Sequence[str], *,
            release: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset(),
            reported: Callable[[str, str], list[str]] = lambda ns, key: [],
            read: Callable[[str, str, str], Counter] | None = None) -> tuple[int, list[str]]:
    """Send what the outbox holds, as ``eximhook notify`` and the daemon do: first freeze
    the subject's mail still queued (``[exim] freeze_queued``), then list its frozen
    messages in the mail, the ``reported`` ones (the tripping message, which may not be
    in the spool yet) first. Each failure is logged, and returned. The templates are
    read when the first mail needs them: one that no longer loads is logged, and the
    built-in one sent instead. ``read(ns, key, name)`` reads a subject's counter, for a
    customer's members' shares (None: the mail lists none)."""
    from ..engine.actions import freeze_queued
    from ..errors import ConfigError, EximError, EximhookError
    from ..exim.queue import Exim

    exim = Exim.from_config(cfg.exim)

    def frozen(subjects: list[Subject]) -> dict[Subject, list[str]]:
        """One look at the queue for all of them (a digest names many)."""
        mine = [s for s in subjects if s[0] in FREEZING]
        if not mine:
            return {}
        ids = {s: list(reported(*s)) for s in mine}
        # a queue we cannot read must not hold the notification back: log, mail anyway
        try:
            if cfg.exim.freeze_queued:
                freeze_queued(store, exim, mine, time.time())
            for s, messages in exim.messages_of(mine, frozen=True).items():
                ids[s] += [m.id for m in messages]
        except (EximError, OSError, ValueError) as exc:
            names = ", ".join(f"{ns} {escape(key)}" for ns, key in mine[:3]) + (" ..." if len(mine) > 3 else "")
            log.log("err", f"could not freeze or list the queue of {names}: {exc}")
        return {s: list(dict.fromkeys(found)) for s, found in ids.items()}

    loaded: dict[str, Template] = {}

    def template(kind: str) -> Template:
        if kind not in loaded:
            try:
                loaded[kind] = templates.load(template_path(cfg, kind), kind)
            except ConfigError as exc:
                log.log("err", f"{exc}; sending with the built-in {kind} template instead")
                loaded[kind] = templates.builtin(kind)
        return loaded[kind]

    def shares(block: dict[str, Any]) -> Shares:
        counter = block.get("counter") or "invalid"
        if read is None or block["ns"] != "customer" or block["reason"] != "limit" or KINDS[counter].adds == "score":
            return ()
        from ..config.hookcache import View
        from ..engine.customers import shares as of_members

        try:
            return of_members(View.of(cfg), block["key"], counter, KINDS[counter].adds, block["period"], time.time(),
                              block["rcpts"], read)
        except (EximhookError, OSError) as exc:  # the mail goes out without them
            log.log("err", f"could not read the members' shares of customer {escape(block['key'])}: {exc}")
            return ()

    n = cfg.notify
    sent, errors = send_pending(
        store, to=n.to, sender=n.sender, sendmail=n.sendmail, timeout=n.timeout,
        stale_after=n.stale_after, budget=n.budget, command=command, clock=time.time,
        frozen=frozen, release=release, template=template, exim=cfg.exim, burst=n.digest(), shares=shares)
    for error in errors:
        log.log("err", f"notification left queued: {error}")
    return sent, errors


def template_path(cfg: Config, kind: str) -> str | None:
    """The template file the config names for mail of ``kind``; None: the built-in one."""
    return {"notify": cfg.notify.template, "shadow": cfg.notify.shadow_template, "owner": cfg.owner.template,
            "digest": cfg.notify.digest_template}[kind]
