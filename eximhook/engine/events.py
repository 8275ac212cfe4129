"""The one place a request becomes counts, whichever door it came in by (a ``${run}``
hook's argv, a ``${readsocket}`` request: both a ``Request``) and whichever backend
counts it: ``events_in`` says which subjects one request counts against, under which
counter and with which evidence, as ``Event``s; ``count_in`` counts them in the LMDB
counters (Redis counts them in its own scripts). A check counts nothing.

The message references (which subject sent a message, for its bounces) are kept in
this machine's counters, in the same transaction."""

from __future__ import annotations

from ..model.ratelimit import tag
from ..model.records import Event
from ..model.subjects import ALL_LOGINS

# what reads and marks the message references in the counters' write transaction: a
# message is remembered for its bounces, a bounce recalls the message it reports, a
# delivery outcome marks the recipient's first
_REFERENCES = ("message", "bounce", "delivery")
# the outcomes of a remote delivery (the transport's events, exim-snippets): delivered,
# deferred, refused; the last two are bad for the failure ratio (failrate)
OUTCOMES = ("ok", "defer", "fail")

TYPE_CHECKING = False  # the hooks import this module: typing costs ~10 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import lmdb

    from ..config.hookcache import View
    from ..model.counter import Tally
    from ..model.policy import Policy
    from ..model.records import Request
    from ..storage.counters import Counters


def events_in(counters: Counters, txn: lmdb.Transaction | None, req: Request, now: float,
              view: View) -> list[Event]:
    """The events ``req`` counts (none for a check, or for counters that are off), read
    and marked in the counters' write transaction ``txn``: a message is remembered for
    its bounces, a bounce recalls the message it reports (``txn`` None: neither, which
    only a check or a count of another kind may be). Each event of a customer's member
    counts against the customer too (``customers``)."""
    found = _events_in(counters, txn, req, now, view)
    return found + customer_events(view, found) if found else found


def customer_events(view: View, found: list[Event]) -> list[Event]:
    """The events of ``found`` again, for the customers of their subjects where a
    customer's counter is on ([limits.customer.COUNTER]), each naming its member."""
    if not view.policies.get("customer") and not any(ns == "customer" for ns, _ in view.overrides):
        return []  # the common case: no customer limits, nothing to look up
    from . import customers

    out = []
    for e in found:
        cid = customers.of(view, e.ns, e.key)
        p = None if cid is None else view.policy("customer", e.policy.name, cid)
        if cid is not None and p is not None and p.windows:
            evidence = f"{e.ns} {e.key}" + (f": {e.evidence}" if e.evidence else "")
            out.append(Event("customer", cid, p, weight=e.weight, evidence=evidence, ip=e.ip, tags=e.tags,
                             keep_evidence=e.keep_evidence, keep_ips=e.keep_ips))
    return out


def _events_in(counters: Counters, txn: lmdb.Transaction | None, req: Request, now: float,
               view: View) -> list[Event]:
    f, ip = req.fields, req.fields.get("ip") or None
    if req.op == "check-blocked":
        return []
    if req.op == "message":
        assert txn is not None
        n, mid = int(f["n"]), message_ref(f.get("mid", ""))
        sender = f.get("sender", "")  # normalized at the door (Request.normalize)
        if sender and mid and req.ns != "sender":
            counters.remember_in(txn, sender, mid, req.ns, req.key, now, n)
        evidence = f"{f.get('id') or '-'} ({n} rcpt)"
        subjects = message_subjects(req.ns, req.key, sender)
        found = [Event(ns, key, p, weight=n, evidence=evidence, ip=ip, keep_evidence=view.keep_evidence,
                       keep_ips=view.keep_ips) for ns, key, p in counted(view, "recipients", subjects)]
        if "rcpts" in f and (tags := recipient_tags(f["rcpts"], n, f.get("id", ""))):
            found += [Event(ns, key, p, weight=len(tags), evidence=evidence, tags=tags, ip=ip,
                            keep_evidence=view.keep_evidence, keep_ips=view.keep_ips)
                      for ns, key, p in counted(view, "rcpts", subjects)]
        if req.ns == "auth" and ip and (net := view.wider("ip", ip)) is not None:
            found += [Event(ns, key, p, evidence=net[1], tags=(tag(net[1]),), ip=ip,
                            keep_evidence=view.keep_evidence, keep_ips=view.keep_ips)
                      for ns, key, p in counted(view, "networks", [(req.ns, req.key)])]
        return found
    if req.op == "delivery":
        assert txn is not None
        return delivery_events(counters, txn, req, now, view)
    if req.op == "bounce":
        assert txn is not None
        subjects = bounce_subjects_in(counters, txn, now, req.key, message_id=message_ref(f.get("mid", "")),
                                      remember=view.remember, remote=f.get("remote") == "1", ip=ip)
        failed = unfold(f.get("failed") or None)
        return [Event(ns, key, p, evidence=failed, keep_evidence=view.keep_evidence)
                for ns, key, p in counted(view, "bounces", subjects)]
    subjects = record_subjects(req.ns, req.key, view.wider(req.ns, req.key))
    if req.kind == "authfail" and f.get("user"):  # the account tried, from whichever address (spraying)
        subjects.append(("login", f["user"]))
    if req.kind == "authfail":  # and every failure together (a spray of few guesses at each of many)
        subjects.append(("all", ALL_LOGINS))
    told = f.get("rcpt") or f.get("evidence") or None
    return [Event(ns, key, p, weight=int(f.get("n") or 1), evidence=None if ns == "login" else told,  # its key
                  ip=ip, keep_evidence=view.keep_evidence, keep_ips=view.keep_ips)
            for ns, key, p in counted(view, req.kind, subjects)]


def events_of(counters: Counters, req: Request, now: float, view: View) -> list[Event]:
    """The events of ``req`` for a backend that counts them itself (Redis): a message or a
    bounce reads and marks its references in a write transaction of this machine's
    counters; a check or a count of another kind needs none (no lock taken)."""
    if req.op in _REFERENCES:
        return counters.update(lambda txn: events_in(counters, txn, req, now, view))
    return events_in(counters, None, req, now, view)


def count_in(counters: Counters, txn: lmdb.Transaction, events: Sequence[Event], now: float,
             view: View) -> list[Tally]:
    """Count each of ``events`` in the counters' write transaction ``txn``; then the
    combined scores over their limits (``scores``), read in the same transaction."""
    from .scores import scores

    tallies = [counters.event(e, now)(txn) for e in events]
    return tallies + scores(tallies, now, view, lambda ns, key, names: counters.get_in(txn, ns, key, names))


def counts(counters: Counters, req: Request, now: float,
           view: View) -> Callable[[lmdb.Transaction], list[Tally]] | None:
    """The body that counts ``req`` in the LMDB counters, in one write transaction (the
    daemon groups a turn's bodies in one: ``Counters.try_update_many``); None when it
    counts nothing (a check, or a count whose counter is off for every subject). A
    message or a bounce reads its references in the transaction; the rest read nothing,
    so their events are made once, here."""
    if req.op in _REFERENCES:
        return lambda txn: count_in(counters, txn, events_in(counters, txn, req, now, view), now, view)
    found = events_in(counters, None, req, now, view)
    return (lambda txn: count_in(counters, txn, found, now, view)) if found else None


def delivery_events(counters: Counters, txn: lmdb.Transaction, req: Request, now: float,
                    view: View) -> list[Event]:
    """The events of one remote recipient's delivery outcome, read and marked in the
    counters' write transaction ``txn``: its first outcome counts in the failure ratio
    (failrate: bad if deferred or refused), its first refusal in the failures; a
    deferral retried ten times, or reported by every host tried, is one. Marked for
    ``[bounces] remember``, as the message references are."""
    f = req.fields
    outcome, subjects = f["outcome"], message_subjects(req.ns, req.key, f.get("sender", ""))
    evidence = f"{f['rcpt']}: {f['evidence']}" if f.get("evidence") else f["rcpt"]
    which = f"{f['id']}\0{f['rcpt']}"
    found = []
    if (rate := counted(view, "failrate", subjects)) and counters.first_in(txn, "outcome", which, now, view.remember):
        bad = (int(outcome != "ok"),)
        found += [Event(ns, key, p, evidence=evidence if bad[0] else None, tags=bad,
                        keep_evidence=view.keep_evidence) for ns, key, p in rate]
    if outcome == "fail" and (failures := counted(view, "failures", subjects)) and counters.first_in(
            txn, "fail", which, now, view.remember):
        found += [Event(ns, key, p, evidence=evidence, keep_evidence=view.keep_evidence) for ns, key, p in failures]
    return found


def recipient_tags(text: str, n: int, message_id: str) -> tuple[int, ...]:
    """The tags of a message's recipients (``rcpts``: Exim's ``$recipients``, cut to
    the snippets' size), for the distinct recipients (rcpts). A list cut short
    (``evidence.CUT_END``) loses its last, partial address; the recipients it left out
    count as distinct ones (tagged by the message and their place), up to ``CAP``: a
    message that long is over the volume limit long before."""
    from ..model.evidence import CUT_END
    from ..model.ratelimit import CAP
    from ..model.subjects import fold

    cut = text.endswith(CUT_END)
    listed = text.removesuffix(CUT_END).split(",")
    if cut:
        listed.pop()
    found = dict.fromkeys(tag(fold(x.strip())) for x in listed if x.strip())
    missing = min(max(n - len(listed), 0), CAP) if cut else 0  # a window keeps no more than CAP
    found.update(dict.fromkeys(tag(f"{message_id}\0{i}") for i in range(missing)))
    return tuple(found)


def counted(view: View, counter: str, subjects: Sequence[tuple[str, str]]) -> list[tuple[str, str, Policy]]:
    """The subjects one event counts against, each with the policy of ``counter`` it
    counts under; those whose counter is off are left out."""
    return [(ns, key, p) for ns, key in subjects if (p := view.policy(ns, counter, key)) is not None and p.windows]


def message_subjects(ns: str, key: str, sender: str) -> list[tuple[str, str]]:
    """A message counts against the subject that sent it and its envelope sender."""
    return [(ns, key), *([("sender", sender)] if sender and ns != "sender" else [])]


def record_subjects(ns: str, key: str, wider: tuple[str, str] | None) -> list[tuple[str, str]]:
    """A generic ``record`` counts against its subject and the wider network that holds
    it (``subjects.WIDER``: a failed AUTH against the client's /24 or /48 too). The
    network first: when one event trips both, the network's block is made first and
    supersedes the address's (``settle``'s ``within``)."""
    return [*([wider] if wider is not None else []), (ns, key)]


def bounce_subjects_in(counters: Counters, txn: lmdb.Transaction, now: float, sender: str, *, message_id: str,
                       remember: float, remote: bool, ip: str | None) -> list[tuple[str, str]]:
    """Whom one bounce to ``sender`` counts against, read and marked in the counters'
    write transaction ``txn``: none, the sender, or the sender and the subject that sent
    the bounced message, when ``message_id`` names one it sent within ``remember``
    seconds (each message at most once per recipient it had).

    A ``remote`` report (another MTA's, over SMTP, from ``ip``) counts only when it names
    such a message, and only the first time that network reports on it: anyone can
    send one. Backscatter from spam that forged our user's address names no message of
    ours; someone who got one of our user's messages may know its Message-ID, but one
    host can report it once, as the one MTA that delivers to a domain does."""
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


def unfold(header: str | None) -> str | None:
    """A folded header, unfolded (its whitespace runs one space)."""
    return " ".join(header.split()) if header else header
