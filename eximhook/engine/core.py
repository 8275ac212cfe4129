"""Operations on subjects, shared by the hooks and the admin commands.

They take plain values rather than a ``Config`` so the hooks can call them without
importing the config machinery. Nothing here exits the process or prints.
"""

from __future__ import annotations

from ..errors import EximhookError, FileError, NotBlocked
from ..model.evidence import cut, newest
from ..model.policy import UNITS
from ..periods import format_period
from ..storage.counters import Counter, Counters, Tally
from ..storage.store import Outcome, Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    import lmdb

    from ..backends.redis import RedisBackend
    from ..log import Logger
    from ..model.policy import Policy
    from ..model.schedule import Schedule
    from ..model.spool import Guard

    Policies = Callable[[str, str, str], Policy | None]  # (ns, counter, key)
    Exempt = Mapping[str, Sequence[tuple[str, str]]]  # ns -> (pattern, reason), as [exempt]
    Owner = Callable[[str, str], str | None]  # (ns, key) -> the owner's address, if any


def block_record(ns: str, key: str, now: float, *, by: str, reason: str, counter_name: str | None = None,
                 limit: int | None = None, period: float | None = None, count: int | None = None,
                 counter: Counter | None = None, note: str | None = None) -> dict[str, Any]:
    """The block as stored, mirrored, mailed and shown: when, why (which counter over
    which window), and the evidence: the counter's, each piece cut (``evidence.cut``),
    the newest within ``EVIDENCE_KEPT`` bytes a list (``evidence.newest``), so a record
    holds at most 2 KiB of evidence besides its key and note."""
    counter = counter or Counter()
    return {
        "ns": ns, "key": key, "since": now, "by": by, "reason": reason, "note": note, "counter": counter_name,
        "limit": limit, "period": period, "period_text": None if period is None else format_period(period),
        "count": count, "total": counter.total, "ips": newest([cut(x) for x in counter.ips], len(counter.ips)),
        "rcpts": newest([cut(x) for x in counter.recent], len(counter.recent)),
    }


def count(store: Store, counters: Counters, ns: str, key: str, now: float, policy: Policy, *, weight: int = 1,
          evidence: str | None = None, ip: str | None = None, keep_evidence: int = 10, keep_ips: int = 5,
          hold: float = 0.0, notify_shadow: bool = False) -> tuple[Tally, Outcome]:
    """Count one event for one subject; the first over a window of an enforced counter
    blocks the subject, once (see ``settle``). The caller rewrites the mirror files when
    the outcome says ``tripped`` (``make_known``)."""
    tally = counters.update(counters.event(ns, key, now, policy, weight=weight, evidence=evidence, ip=ip,
                                           keep_evidence=keep_evidence, keep_ips=keep_ips))
    return tally, settle(store, tally, now, hold=hold, notify_shadow=notify_shadow)


def counted(policies: Policies, counter: str, subjects: Sequence[tuple[str, str]]) -> list[tuple[str, str, Policy]]:
    """The subjects one event counts against, each with the policy of ``counter`` it
    counts under; those whose counter is off are left out. The daemon's two paths (its
    own counters, Redis: ``serve.shared``) and the hooks ask this, so they count alike."""
    return [(ns, key, p) for ns, key in subjects if (p := policies(ns, counter, key)) is not None and p.windows]


def message_subjects(ns: str, key: str, sender: str) -> list[tuple[str, str]]:
    """A message counts against the subject that sent it and its envelope sender."""
    return [(ns, key), *([("sender", sender)] if sender and ns != "sender" else [])]


def record_subjects(ns: str, key: str, wider: tuple[str, str] | None) -> list[tuple[str, str]]:
    """A generic ``record`` counts against its subject and the wider network that holds
    it (``subjects.WIDER``: a failed AUTH against the client's /24 or /48 too). The
    network first: when one event trips both, the network's block is made first and
    supersedes the address's (``settle``'s ``within``)."""
    return [*([wider] if wider is not None else []), (ns, key)]


def message_event(counters: Counters, policies: Policies, now: float, ns: str, key: str, *, recipients: int,
                  sender: str, message_id: str, ip: str | None, msg: str | None, keep_evidence: int,
                  keep_ips: int) -> Callable[[lmdb.Transaction], list[Tally]]:
    """The body for one message a subject sent: count its recipients against the
    subject (and its envelope sender, where ``[limits.sender.recipients]`` is set), and
    remember the message, so a bounce of it counts against the subject too."""
    count_all = events(counters, now, counted(policies, "recipients", message_subjects(ns, key, sender)),
                       weight=recipients, evidence=f"{msg or '-'} ({recipients} rcpt)", ip=ip,
                       keep_evidence=keep_evidence, keep_ips=keep_ips)

    def body(txn: lmdb.Transaction) -> list[Tally]:
        tallies = count_all(txn)
        if sender and message_id and ns != "sender":
            counters.remember_in(txn, sender, message_id, ns, key, now, recipients)
        return tallies
    return body


def events(counters: Counters, now: float, subjects: Sequence[tuple[str, str, Policy]], *, weight: int,
           evidence: str | None, ip: str | None, keep_evidence: int,
           keep_ips: int) -> Callable[[lmdb.Transaction], list[Tally]]:
    """One body that counts the same event against each of ``subjects`` (``counted``),
    in one transaction."""
    bodies = [counters.event(ns, key, now, policy, weight=weight, evidence=evidence, ip=ip,
                             keep_evidence=keep_evidence, keep_ips=keep_ips) for ns, key, policy in subjects]
    return lambda txn: [b(txn) for b in bodies]


def bounce_event(counters: Counters, policies: Policies, now: float, sender: str, *, message_id: str,
                 failed: str | None, remember: float, keep_evidence: int, remote: bool = False,
                 ip: str | None = None) -> Callable[[lmdb.Transaction], list[Tally]]:
    """The body for one bounce to ``sender``: count it against the sender address, and
    against the subject that sent the bounced message, when ``message_id`` names one it
    sent within ``remember`` seconds (each message at most once per recipient it had).

    A ``remote`` report (another MTA's, over SMTP, from ``ip``) counts only when it names
    such a message, and only the first time that network reports on it: anyone can
    send one. Backscatter from spam that forged our user's address names no message of
    ours; someone who got one of our user's messages may know its Message-ID, but one
    host can report it once, as the one MTA that delivers to a domain does."""
    failed = unfold(failed)

    def body(txn: lmdb.Transaction) -> list[Tally]:
        tallies = []
        for ns, key in bounce_subjects_in(counters, txn, now, sender, message_id=message_id, remember=remember,
                                          remote=remote, ip=ip):
            policy = policies(ns, "bounces", key)
            if policy is not None and policy.windows:
                tallies.append(counters.event(ns, key, now, policy, evidence=failed, keep_evidence=keep_evidence)(txn))
        return tallies
    return body


def unfold(header: str | None) -> str | None:
    """A folded header, unfolded (its whitespace runs one space)."""
    return " ".join(header.split()) if header else header


def bounce_subjects_in(counters: Counters, txn: lmdb.Transaction, now: float, sender: str, *, message_id: str,
                       remember: float, remote: bool, ip: str | None) -> list[tuple[str, str]]:
    """Whom one bounce to ``sender`` counts against (see ``bounce_event``), read and
    marked in the counters' write transaction ``txn``: none, the sender, or the sender
    and the subject that sent the bounced message."""
    if remote and not (message_id and counters.recall_in(txn, sender, message_id, now, remember, take=False)
                       and counters.first_report_in(txn, sender, message_id, _network(ip), now, remember)):
        return []
    subjects = [("sender", sender)]
    sent_by = counters.recall_in(txn, sender, message_id, now, remember) if message_id else None
    if sent_by is not None and sent_by[0] != "sender":
        subjects.append(sent_by)
    return subjects


def _network(ip: str | None) -> str:
    """The reporting host's network: IPv4 /24, IPv6 /48 (one site's MTAs)."""
    if not ip:
        return ""
    import ipaddress

    try:
        addr = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return ip
    return str(ipaddress.ip_network((addr, 24 if addr.version == 4 else 48), strict=False))


def message_ref(text: str) -> str:
    """The message id a header names last (a bounce's References ends with the id of
    the bounced message), without its angle brackets; the text itself if it has none."""
    end = text.rfind(">")
    start = text.rfind("<", 0, end) if end > 0 else -1
    return text[start + 1 : end].strip() if start >= 0 else text.strip()


def exemptions_in(store: Store, configured: Exempt, ns: str) -> Callable[[lmdb.Transaction], list[tuple[str, str]]]:
    """The body that lists what may exempt a subject of ``ns``, (pattern, reason) in
    order: ``[exempt]`` in the config, then the admin's ``eximhook exempt add`` in the
    store; for a network, then those of the addresses in it (``exempt.spaces``)."""
    from ..model.patterns import spaces

    return lambda txn: [e for space in spaces(ns) for e in (*configured.get(space, ()),
                                                             *store.exemptions_in(txn, space))]


def exempt_in(store: Store, configured: Exempt, ns: str, key: str) -> Callable[[lmdb.Transaction], str | None]:
    """The body that says why the subject is exempt (``PATTERN: REASON``), or None."""
    from ..model.patterns import first

    entries = exemptions_in(store, configured, ns)

    def body(txn: lmdb.Transaction) -> str | None:
        found = first(ns, key, entries(txn))
        return None if found is None else f"{found[0]}: {found[1]}"
    return body


def settle(store: Store, tally: Tally, now: float, *, hold: float = 0.0, notify_shadow: bool = False,
           exempt: Exempt | None = None, spool: Guard | None = None,
           owner: Owner | None = None, expiry: Schedule | None = None,
           within: tuple[str, str] | None = None) -> Outcome:
    """Answer for a counted event: over a window, and not blocked yet, makes the block
    (in shadow mode, or for an exempt subject: the record that it would have; ``exempt``
    holds the config's exemptions, the store the admin's). ``within``: the wider network
    that holds the subject (``Config.wider``); while it is blocked, its block stands for
    the subject's, and none is made (no record, no mail: a /48's 65,536 /64s are one block).

    However many processes settle an over-limit count for one subject at once, the
    store creates one block (``put`` without overwrite, in one write transaction) and
    one notification; the others find it there. ``hold`` is the daemon's: see ``notify``.
    ``owner`` (``[owner] notify``) finds the address of the owner's notification, which
    the block queues too; a would-block never mails the owner.
    ``expiry`` is ``[expiry]`` when on: see ``expiry``.
    """
    ns, key, total = tally.ns, tally.key, tally.counter.total
    if tally.over < 0:
        return Outcome(store.is_blocked(ns, key), False, max(tally.counts, default=0), total)
    if tally.policy.enforced and store.is_blocked(ns, key):
        # the common case once blocked: a read, no write lock, no exemption lookup (as
        # the daemon, which settles no count of a subject blocked already)
        return Outcome(True, False, tally.count, total)
    if within is not None and store.is_blocked(*within):
        return Outcome(True, False, tally.count, total)
    limit, period = tally.window
    record = block_record(ns, key, now, by="eximhook", reason="limit", counter_name=tally.name, limit=limit,
                          period=period, count=tally.count, counter=tally.counter)
    why_not = store.read(exempt_in(store, exempt or {}, ns, key))
    if why_not is not None or not tally.policy.enforced:
        # an exempt subject's would-block is for `show`, not for the abuse desk's mailbox
        record["exempt"] = why_not
        shadowed = not store.read(store.shadowed_in(tally.name, ns, key, tally.window)) and store.shadow(
            record, now, notify_shadow and why_not is None)
        return Outcome(store.is_blocked(ns, key), False, tally.count, total, shadowed=shadowed, exempt=why_not)
    if spool is not None:
        record.update(spool.at_block())
        store.set_spool_floor(spool.floor)  # the mirror rewritten for this block holds the floor too
    to = None if owner is None else owner(ns, key) or ""
    return Outcome(True, store.block(record, now, True, hold, to, expiry), tally.count, total)


def trip_text(tally: Tally) -> str:
    """``6 invalid recipients within 3600s (limit 5)``: what a trip logs."""
    limit, period = tally.window
    return f"{tally.count} {UNITS[tally.name]} within {period:g}s (limit {limit})"


def make_known(store: Store, mirror_dir: str, log: Logger, tally: Tally | None, outcome: Outcome) -> None:
    """After an answer that the subject is blocked, and before anyone hears it: a new
    block is logged and flushed to disk (a power cut must not undo it; a failed flush is
    logged, the block is committed all the same), and the mirror is brought up to the
    store (rewritten after a trip; else only if a killed process left it behind). A new
    would-block record (shadow mode) is logged and flushed; it changes no mirror."""
    if tally is not None and (outcome.tripped or outcome.shadowed):
        what = "blocked" if outcome.tripped else (
            f"would block (exempt, {outcome.exempt})" if outcome.exempt else "would block (shadow mode)")
        log.log("warning", f"{what} {tally.ns} {tally.key}: {trip_text(tally)}")
        try:
            store.sync()
        except EximhookError as exc:
            log.log("err", f"could not flush the new record to disk: {exc}")
    if outcome.blocked:
        refresh_mirror(store, mirror_dir, log, force=outcome.tripped)


def refresh_mirror(store: Store, mirror_dir: str, log: Logger, *, force: bool = False, wait: float = 0.0) -> bool:
    """Bring the mirror files up to the store's generation (always, with ``force``);
    whether they are there now (False: the failure is logged).

    For hooks, the daemon and maintenance, after a trip or on finding the mirror behind:
    the block is stored already and the answer stays 1, so a mirror that cannot be
    written is logged for the admin (and retried by the next writer that looks), never
    raised. Without ``force`` a lock held past ``wait`` means another process is
    rewriting right now (typically the one that tripped, while the bot's other
    connections find the stamp behind): this one answers instead of queueing behind it.
    """
    from ..storage import mirror

    try:
        if force:
            mirror.rewrite(store, mirror_dir, timeout=max(wait, 1.0))
        elif not mirror.current(store):
            # done means: up to the generation found under the lock (or another process got
            # there first); a change committed since is for its maker to mirror, no failure
            mirror.rewrite(store, mirror_dir, timeout=wait, if_behind=True)
        return True
    except mirror.LockBusy:
        if force:
            log.log("err", f"could not rewrite the mirror files in {mirror_dir}: another process holds the lock; "
                           "the next event, eximhook maintain or 'eximhook export' will rewrite them")
    except Exception as exc:
        log.log("err", f"could not rewrite the mirror files in {mirror_dir}: {exc}; "
                       "the next event, eximhook maintain or 'eximhook export' will rewrite them")
    return False


def _mirror_after(store: Store, mirror_dir: str, done: str) -> None:
    """An admin's change is in the store: say so when only the mirror failed."""
    from ..storage import mirror

    try:
        mirror.rewrite(store, mirror_dir)
    except FileError as exc:
        raise FileError(f"{done} in the store, but {exc}; eximhook maintain rewrites the mirror "
                        "files once it can (eximhook status shows them behind until then)") from exc


def block(store: Store, counters: Counters, mirror_dir: str, ns: str, key: str, now: float, *, by: str,
          note: str | None, notify: bool = True, spool: Guard | None = None, owner: Owner | None = None,
          expiry: Schedule | None = None, shared: RedisBackend | None = None) -> bool:
    """Block by hand; False (and nothing changed) if the subject was blocked already.
    ``owner``: mail the owner too (``[owner] manual``), at the address it finds.
    ``shared``: the Redis of several relays, blocked there first (``cluster``); a
    block another relay made is copied here."""
    counter = counters.get(ns, key)
    record = block_record(ns, key, now, by=by, reason="manual", counter=counter, note=note)
    if spool is not None:
        record.update(spool.at_block())
        store.set_spool_floor(spool.floor)  # the mirror rewritten for this block holds the floor too
    queued = 0
    if shared is not None:
        record["node"] = shared.node
        queued = shared.block_queued(record, now, notify=notify)
        if queued < 0:
            made = shared.get_block(ns, key)
            if made is not None and store.block(made, now, False):
                _mirror_after(store, mirror_dir, f"{ns} {key!r} is blocked")
            return False
    to = None if owner is None or not notify or store.is_blocked(ns, key) else owner(ns, key) or ""
    created = store.block(record, now, notify, owner=to, expiry=expiry)
    if shared is not None and queued > 0:  # this store has it: this relay mails it
        shared.take(ns, key, queued)
    _mirror_after(store, mirror_dir, f"{ns} {key!r} is blocked")
    return created


def unblock(store: Store, counters: Counters, mirror_dir: str, ns: str, key: str, now: float, *,
            by: str, event: str = "unblocked", only: Callable[[dict[str, Any]], bool] | None = None,
            shared: RedisBackend | None = None) -> None:
    """Lift the block (and any would-block records) and reset the subject's counters,
    so they start from zero. The counters first: lifted the other way round, the
    sender's next event could count on from over the limit and block it again.
    ``event`` and ``only`` are for automatic lifts (see ``Store.unblock``).
    ``shared``: the Redis of several relays, where it is lifted first (in one script,
    counters included), and published: every relay lifts its copy."""
    if shared is not None and only is not None:  # tested here, before Redis lifts it
        record = store.get_block(ns, key)
        if record is None or not only(record):
            raise NotBlocked(f"{ns} {key!r} is not blocked")
    lifted = shared is not None and shared.lift(ns, key, now, by, event=event) > 0
    blocked = store.is_blocked(ns, key)
    if not blocked and not store.shadows(ns, key):
        if not lifted:
            raise NotBlocked(f"{ns} {key!r} is not blocked")
        # the copy here was lifted already, by this relay's daemon: the mirror is still
        # the caller's to see written before it says unblocked
        _mirror_after(store, mirror_dir, f"{ns} {key!r} is unblocked")
        return
    counters.reset(ns, key)
    if store.clear_shadows(ns, key):
        store.audit({"ts": now, "event": "shadow-cleared", "ns": ns, "key": key, "by": by})
    if not blocked:
        return
    # lifted in Redis: this relay's daemon may have lifted the copy meanwhile
    if not store.unblock(ns, key, now, by, event=event, only=only) and not lifted:
        raise NotBlocked(f"{ns} {key!r} is not blocked")
    _mirror_after(store, mirror_dir, f"{ns} {key!r} is unblocked")
