"""The subjects' offence records (the store's ``offences`` database): how many blocks a
subject has had, written in each block's own transaction, so however many processes race
to block a subject there is one block and one step (``[expiry]``, ``engine.expiry``).
They outlive unblocks."""

from __future__ import annotations

from ..model.schedule import duration

TYPE_CHECKING = False  # stamp_in runs in a hook that trips: no typing there
if TYPE_CHECKING:
    from typing import Any

    import lmdb

    from ..model.schedule import Schedule


def stamp_in(db: Any, txn: lmdb.Transaction, sk: bytes, record: dict[str, Any], now: float,
             schedule: Schedule) -> None:
    """In the transaction that creates the block ``record`` (subject key ``sk``; ``db``:
    the store's offences database): count
    the subject's offence and give the block its lift time (a manual one only with
    ``manual``), as ``offence`` and ``expires`` in the record."""
    import json

    after, escalate, longest, forget, manual = schedule
    data = txn.get(sk, db=db)
    last = None if data is None else json.loads(bytes(data))
    offence = last["count"] + 1 if last is not None and now - last["last"] < forget else 1
    txn.put(sk, json.dumps({"count": offence, "last": now}).encode(), db=db)
    record["offence"] = offence
    if record["reason"] == "limit" or manual:
        record["expires"] = now + duration(after, escalate, longest, offence)


def lifted_in(db: Any, txn: lmdb.Transaction, sk: bytes, now: float) -> None:
    """In the transaction that lifts a block: ``forget`` counts from the end of the
    subject's last block, not its start (a long block must not wipe the record)."""
    import json

    data = txn.get(sk, db=db)
    if data is not None:
        txn.put(sk, json.dumps(dict(json.loads(bytes(data)), last=now)).encode(), db=db)
