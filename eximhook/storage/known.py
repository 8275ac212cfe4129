"""The client networks each authenticated user has sent mail from (password spraying,
issue 24): an account whose failed logins cross their limit is locked only against the
networks it is not known from, so strangers cannot lock its owner out.

Key layout (in the store, synced: a lock must not forget the owner's networks at a
reboot): known  S (``subject_key("auth", user)``) -> (UNTIL (8) LENGTH (1) NETWORK)...,
packed (``struct``, not JSON: the hooks' path pays ~10 ms for ``import json``)

A network is known ``[logins] known`` seconds after the user last sent mail from it
(UNTIL: then; the mirror, which has no config, writes the networks known when it is
written). Bounded: at most ``KEEP`` networks per user, the most recently seen. A write
only when a network is new for the user or was last seen more than ``REFRESH`` ago:
one synced write per user and network a day at most, never one per message.
"""

from __future__ import annotations

import struct

from .store import subject_key

TYPE_CHECKING = False  # the hooks import this module on a message: typing costs ~10 ms
if TYPE_CHECKING:
    import lmdb

    from .store import Store

KNOWN = b"known"  # the database
# networks per user: home, office, phone, hotels; more than the networks a stolen
# password's botnet can add before [limits.auth.networks] (10 a day) blocks the account
# and its frozen mail teaches nothing more, so the owner's own stay known
KEEP = 16
_ENTRY = struct.Struct("<dB")  # until, the length of the network's text (a /48 in Exim's form: 44 bytes)
REFRESH = 86400.0


def networks_in(store: Store, txn: lmdb.Transaction, user: str, now: float) -> list[str]:
    """The networks ``user`` is known from now."""
    return [net for net, until in _entries_in(store, txn, user) if until > now]


def everyone_in(store: Store, txn: lmdb.Transaction, now: float) -> list[tuple[str, list[str]]]:
    """Every user and the networks it is known from now (for the block of all logins:
    the mirror then lists them all; at most ``KEEP`` a user). A user whose name was too
    long to keep whole (stored by digest) is left out: it is refused from everywhere."""
    from .store import decode_subject_key

    out = []
    for sk, _ in txn.cursor(db=store.db(txn, KNOWN)):
        user = decode_subject_key(bytes(sk))[1]
        if user is not None and (networks := networks_in(store, txn, user, now)):
            out.append((user, networks))
    return out


def learn(store: Store, user: str, network: str, now: float, keep_for: float) -> float | None:
    """Note that ``user`` sent mail from ``network`` now, known for ``keep_for`` seconds
    more; when that took a write, until when (for the other relays: ``merge``)."""
    until = dict(store.read(lambda txn: _entries_in(store, txn, user))).get(network, float("-inf"))
    if until - now > keep_for - REFRESH:
        return None
    merge(store, [(user, [(network, now + keep_for)])], now)
    return now + keep_for


def merge(store: Store, learned: list[tuple[str, list[tuple[str, float]]]], now: float) -> None:
    """Add the networks ``learned`` elsewhere (user, [(network, until)]) to each user's,
    each known until the later of the two; the ``KEEP`` known longest are kept. One
    write transaction for them all."""
    def body(txn: lmdb.Transaction) -> None:
        for user, networks in learned:
            entries = dict(_entries_in(store, txn, user))
            for network, until in networks:
                entries[network] = max(until, entries.get(network, until))
            kept = sorted(((n, t) for n, t in entries.items() if t > now), key=lambda e: e[1])[-KEEP:]
            data = b"".join(_ENTRY.pack(t, len(raw)) + raw for n, t in kept if len(raw := n.encode()) < 256)
            txn.put(subject_key("auth", user), data, db=store.db(txn, KNOWN))
    store.update(body)


def _entries_in(store: Store, txn: lmdb.Transaction, user: str) -> list[tuple[str, float]]:
    data = bytes(txn.get(subject_key("auth", user), db=store.db(txn, KNOWN)) or b"")
    out, pos = [], 0
    while pos + _ENTRY.size <= len(data):
        until, size = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        out.append((data[pos : pos + size].decode("ascii", "replace"), until))
        pos += size
    return out
