"""The relay-test table in the store: customer IP -> last tested, status, probe id,
history (database ``relaytest``).

Every change is one LMDB write transaction, so two watchers, or a watcher and an admin,
never both claim one host within the cool-down, and a returned probe blocks a host,
and queues its one notification, exactly once. A probe id is good for one answer: a
return or bounce must name the host's current outstanding probe.

Statuses: UNKNOWN (probed, no answer yet), OK, BLOCK (it relayed our probe: listed in
``blocked.nets`` until an admin clears it; never probed again by itself).
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

from ..storage.store import queued

if TYPE_CHECKING:
    import lmdb

    from ..storage.store import Store

OK, BLOCK, UNKNOWN = "OK", "BLOCK", "UNKNOWN"
NS = "relaytest"  # the namespace of its audit events and notifications
_HISTORY = 20  # events kept in a record; the audit log keeps them all
# what send_probe saw (probe.py)
REFUSED, ACCEPTED, UNREACHABLE = "refused", "accepted", "unreachable"


def _get(store: Store, txn: lmdb.Transaction, ip: str) -> dict[str, Any] | None:
    data = txn.get(ip.encode(), db=store.db(txn, b"relaytest"))
    return None if data is None else dict(json.loads(bytes(data)))


def _put(store: Store, txn: lmdb.Transaction, record: dict[str, Any], now: float, event: str, by: str,
         **detail: Any) -> None:
    """Store ``record`` with ``event`` in its history, and the same event in the audit log."""
    entry = {"ts": now, "event": event, **{k: v for k, v in detail.items() if v is not None}}
    record["history"] = [*record.get("history", []), entry][-_HISTORY:]
    txn.put(record["ip"].encode(), json.dumps(record).encode(), db=store.db(txn, b"relaytest"))
    store.append_in(txn, b"audit", {"ts": now, "event": f"relaytest-{event}", "ns": NS, "key": record["ip"],
                                    "by": by, **detail})


def get(store: Store, ip: str) -> dict[str, Any] | None:
    return store.read(lambda txn: _get(store, txn, ip))


def records(store: Store) -> list[dict[str, Any]]:
    return store.read(lambda txn: [json.loads(bytes(v)) for _, v in txn.cursor(db=store.db(txn, b"relaytest"))])


def due_record(record: dict[str, Any] | None, now: float, retest: float, cooldown: float) -> bool:
    """Should a host with this record be probed now? Never a BLOCK host (an admin clears
    it first), never within ``cooldown`` of its last probe, else once ``retest`` passed."""
    if record is None:
        return True
    if record["status"] == BLOCK:
        return False
    age = now - float(record["last_tested"])
    return age >= cooldown and age >= retest


def due(store: Store, ip: str, now: float, retest: float, cooldown: float) -> bool:
    """Read only: would ``claim`` give a probe id now? (``ip`` normalised: ``hosts.normalize``.)"""
    return due_record(get(store, ip), now, retest, cooldown)


def claim(store: Store, ip: str, now: float, retest: float, cooldown: float, by: str = "eximhook") -> str | None:
    """If the host is due, make it UNKNOWN with a new probe id, tested ``now``, in one
    write transaction; the probe id, or None when it is not due (or someone else just
    claimed it). The id supersedes any earlier one: an answer to that is ignored."""
    def body(txn: lmdb.Transaction) -> str | None:
        record = _get(store, txn, ip)
        if not due_record(record, now, retest, cooldown):
            return None
        probe_id = secrets.token_hex(8)
        record = dict(record or {"ip": ip}, status=UNKNOWN, last_tested=now, probe_id=probe_id, probe_time=now,
                      outcome=None, bounced=False)
        _put(store, txn, record, now, "probe", by, probe_id=probe_id)
        return probe_id
    return store.update(body)


def outcome(store: Store, ip: str, probe_id: str, now: float, result: str, detail: str) -> str | None:
    """Record what sending probe ``probe_id`` saw: refused -> OK; accepted -> stays
    UNKNOWN, for the return, the bounce or ``unknown_after``; unreachable -> stays
    UNKNOWN (nothing was sent: the id is dropped), and turns OK after ``unknown_after``
    like a host that drops probes. The new status, or None if the probe was superseded
    or cleared meanwhile (then nothing changes)."""
    def body(txn: lmdb.Transaction) -> str | None:
        record = _get(store, txn, ip)
        if record is None or record.get("probe_id") != probe_id:
            return None
        record["outcome"] = result
        if result == REFUSED:
            record.update(status=OK, probe_id=None)
        elif result == UNREACHABLE:
            record["probe_id"] = None
        _put(store, txn, record, now, result, "eximhook", probe_id=probe_id, detail=detail[:300])
        return str(record["status"])
    return store.update(body)


def returned(store: Store, token_ip: str, probe_id: str, probe_time: int, now: float, bounce: bool,
             postmaster: str | None, abuse: str) -> str:
    """A valid token came back (``bounce``: in a bounce). What it did: "blocked" (a
    return: BLOCK, and the customer's mail queued in the outbox, in this transaction),
    "ok" (a bounce of an UNKNOWN host), or why it changed nothing. A bounce leaves the
    probe outstanding: the relayed probe itself is proof, a bounce is not (whoever saw
    the probe could fake one), so a return still blocks until the probe is stale."""
    def body(txn: lmdb.Transaction) -> str:
        record = _get(store, txn, token_ip)
        if record is None or record.get("probe_id") != probe_id or int(record["probe_time"]) != probe_time:
            return "ignored: not the host's outstanding probe (replayed, superseded, or cleared)"
        if bounce:
            if record["status"] != UNKNOWN or record.get("bounced"):
                return f"ignored: a bounce of a host that is {record['status']} already"
            record.update(status=OK, bounced=True)
            _put(store, txn, record, now, "bounced", "eximhook", probe_id=probe_id)
            return "ok"
        record.update(status=BLOCK, probe_id=None, blocked_at=now, returned_probe=probe_id)
        _put(store, txn, record, now, "blocked", "eximhook", probe_id=probe_id)
        notice = {"ns": NS, "key": token_ip, "since": now, "probe_id": probe_id, "probe_time": record["probe_time"]}
        store.append_in(txn, b"outbox", queued(now, "relaytest", block=notice, to=postmaster, cc=abuse))
        if postmaster is None:
            store.append_in(txn, b"audit", {"ts": now, "event": "relaytest-contact-unknown", "ns": NS,
                                            "key": token_ip, "by": "eximhook"})
        return "blocked"
    return store.update(body)


def settle(store: Store, now: float, unknown_after: float) -> list[str]:
    """UNKNOWN for ``unknown_after`` since the probe: OK (it drops relay attempts, or was
    unreachable); its probe is dropped, so a later return changes nothing. The hosts."""
    def body(txn: lmdb.Transaction) -> list[str]:
        late = [r for _, v in txn.cursor(db=store.db(txn, b"relaytest"))
                if (r := json.loads(bytes(v)))["status"] == UNKNOWN and now - r["probe_time"] >= unknown_after]
        for record in late:
            probe_id = record.get("probe_id")
            record.update(status=OK, probe_id=None)
            _put(store, txn, record, now, "timeout", "eximhook", probe_id=probe_id)
        return [r["ip"] for r in late]
    return store.update(body)


def clear(store: Store, ip: str, now: float, by: str) -> dict[str, Any] | None:
    """Forget the host (its next mail through us gets it probed again); its record, or None."""
    def body(txn: lmdb.Transaction) -> dict[str, Any] | None:
        record = _get(store, txn, ip)
        if record is None:
            return None
        txn.delete(ip.encode(), db=store.db(txn, b"relaytest"))
        store.append_in(txn, b"audit", {"ts": now, "event": "relaytest-cleared", "ns": NS, "key": ip, "by": by,
                                        "status": record["status"]})
        return record
    return store.update(body)
