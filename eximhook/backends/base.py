"""What the core needs from storage to count and to block, whichever store holds it.

Two backends promise the same things (``tests/test_backends.py`` runs one suite over
both): the embedded LMDB store of one machine (``lmdb.LmdbBackend``, the default) and a
Redis shared by several relays (``redis.RedisBackend``). The promises:

- ``record`` counts one event in every window of the subject's counter, exactly
  ("more than LIMIT in any PERIOD", as ``ratelimit``), and answers with the ``Tally``
  and the ``Outcome``. The first event over a window of an enforced counter makes the
  block, its audit event and its notification (outbox entry) exactly once, however
  many processes, or relays, record at the same moment; the others find it made. A
  counter in shadow mode, or an exempt subject, makes the "would block" record
  instead, once per window and limit.
- ``block`` (by hand) does the same for a record the caller made; ``unblock`` lifts it
  with its audit event and starts the subject afresh (counters and would-block records
  cleared, as ``core.unblock``); ``reset`` starts the subject's counters from zero.
- Strings (keys, evidence) may be any text, surrogate-escaped bytes included: a key
  is never cut, merged with another or read back changed.

Each relay keeps in its own store what only it can use (see README, "Several relays,
one Redis"): the owner's notification, ``[expiry]`` offence numbers, the spool guard's
floor, daily peaks, the bounce references. The Redis backend adds what only a shared
store needs: exemptions, publishing changes, claiming notifications.
"""

from __future__ import annotations

from ..model.evidence import cut

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from ..model.policy import Policy
    from ..storage.counters import Counter, Tally
    from ..storage.store import Outcome

    Exempt = Mapping[str, Sequence[tuple[str, str]]]  # ns -> (pattern, reason), as [exempt]


class Event:
    """One event to count against a subject: ``weight`` of them (a message counts its
    recipients), with its evidence (the recipient, the failure) and the client's IP,
    both cut here (``evidence.cut``), before any backend stores them.
    ``once``: an id that makes the count happen once however often it is sent (Redis:
    a relay sends again what it counted alone after a call that timed out)."""

    __slots__ = ("evidence", "ip", "keep_evidence", "keep_ips", "key", "ns", "once", "policy", "weight")

    def __init__(self, ns: str, key: str, policy: Policy, *, weight: int = 1, evidence: str | None = None,
                 ip: str | None = None, keep_evidence: int = 10, keep_ips: int = 5, once: str = "") -> None:
        self.ns, self.key, self.policy, self.weight = ns, key, policy, weight
        self.evidence, self.ip = evidence and cut(evidence), ip and cut(ip)
        self.keep_evidence, self.keep_ips = keep_evidence, keep_ips
        self.once = once


class Backend:
    """The interface; each method says what every backend promises."""

    name = "?"

    def record(self, event: Event, now: float, *, hold: float = 0.0, notify_shadow: bool = False,
               exempt: Exempt | None = None) -> tuple[Tally, Outcome]:
        """Count ``event`` and settle it: the first count over an enforced window blocks
        the subject (record, audit event "blocked", outbox entry "blocked" held until
        ``now + hold``: one step, exactly once); in shadow mode or for a subject
        ``exempt`` names, the would-block record (audit "would-block", and an outbox
        entry with ``notify_shadow`` unless exempt), once per window and limit."""
        raise NotImplementedError

    def is_blocked(self, ns: str, key: str) -> bool:
        raise NotImplementedError

    def get_block(self, ns: str, key: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def blocks(self, ns: str | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def block(self, record: dict[str, Any], now: float, *, notify: bool = True, hold: float = 0.0) -> bool:
        """Store ``record`` (``core.block_record``) as the subject's block unless it has
        one, with its audit event and (``notify``) its outbox entry; True if new."""
        raise NotImplementedError

    def unblock(self, ns: str, key: str, now: float, by: str, *, event: str = "unblocked") -> bool:
        """Lift the block, audited as ``event``, and clear the subject's counters and
        would-block records; False if there was no block (with no would-block record
        either, nothing changes: the counters are kept)."""
        raise NotImplementedError

    def counter(self, ns: str, key: str, name: str = "invalid") -> Counter:
        """The subject's counter ``name`` as stored (an empty one if none)."""
        raise NotImplementedError

    def reset(self, ns: str, key: str, names: tuple[str, ...] | None = None) -> None:
        """Start the subject's counters (all, or ``names``) from zero."""
        raise NotImplementedError

    def shadows(self, ns: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def clear_shadows(self, ns: str, key: str) -> int:
        """Forget the subject's would-block records; how many there were."""
        raise NotImplementedError

    def history(self, ns: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        """The audit events (of the subject, if named), oldest first, each with its ``seq``."""
        raise NotImplementedError

    def outbox(self) -> list[dict[str, Any]]:
        """The notifications not sent yet, oldest first, each with its ``seq``."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
