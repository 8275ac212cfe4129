"""What a relay keeps in its own LMDB store about the Redis it shares with others
(``[store] backend = "redis"``, ``serve.shared``), beside its copies of the blocks:

- on each copied block or exemption, the relay that made it (``node``): from then on
  its absence from Redis means it was lifted elsewhere (or lost there);
- the journal of counts made while Redis did not answer, sent to it later;
- the daemon's mark that it counts alone, for ``eximhook status`` (which runs as root
  and cannot see what the Exim user could not reach).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from .store import SEQ, Store, subject_key

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    import lmdb

_ALONE = b"redis-alone"  # in the meta database: a double, since when


def mark_shared(store: Store, ns: str, key: str | None, node: str, *, pattern: str | None = None) -> bool:
    """Note on the store's block of the subject (or its exemption of ``pattern``) that
    Redis holds it too, made or pushed by ``node``. False if it is gone."""
    if pattern is None:
        assert key is not None
        db, k = b"blocks", subject_key(ns, key)
    else:
        db, k = b"exempt", ns.encode() + b"\0" + pattern.encode("utf-8", "surrogateescape")

    def body(txn: lmdb.Transaction) -> bool:
        data = txn.get(k, db=store.db(txn, db))
        if data is None:
            return False
        record = json.loads(bytes(data))
        if record.get("node") != node:
            txn.put(k, json.dumps(dict(record, node=node)).encode(), db=store.db(txn, db))
        return True
    return store.update(body)


def counting_alone(store: Store, since: float | None) -> None:
    """The daemon counts alone (Redis failed) since ``since``; None: on Redis again."""
    def body(txn: lmdb.Transaction) -> None:
        if since is None:
            txn.delete(_ALONE, db=store.db(txn, b"meta"))
        else:
            txn.put(_ALONE, struct.pack(">d", since), db=store.db(txn, b"meta"))
    if (alone_since(store) is None) != (since is None):  # a read when nothing changes
        store.update(body)


def alone_since(store: Store) -> float | None:
    data = store.read(lambda txn: txn.get(_ALONE, db=store.db(txn, b"meta")))
    return None if data is None else float(struct.unpack(">d", data)[0])


def journal(store: Store, item: dict[str, Any]) -> int:
    """Keep a count made on this relay alone while Redis did not answer, to send it later."""
    return store.update(lambda txn: store.append_in(txn, b"journal", dict(item)))


def journaled(store: Store) -> list[dict[str, Any]]:
    return store.read(lambda txn: [json.loads(bytes(v)) for _, v in txn.cursor(db=store.db(txn, b"journal"))])


def sent(store: Store, seqs: Sequence[int]) -> None:
    """The journaled counts ``seqs`` are in Redis: forgotten in one synced write."""
    def body(txn: lmdb.Transaction) -> None:
        db = store.db(txn, b"journal")
        for seq in seqs:
            txn.delete(SEQ.pack(seq), db=db)
    store.update(body)
