"""The networks each authenticated user is known from (``storage.known``), in Redis for
every relay (``RedisBackend``): a login block, or the block of all logins, lets an
account in from any network some relay learned it sends mail from.

Key: ``eximhook:{S}:known``, a hash NETWORK -> until when (``S``: the user's auth
subject key); at most ``storage.known.KEEP`` fields, and it expires with the last of
them (``redis_lua.LEARN``)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .connect import Client


class KnownNetworks:
    """The known networks' part of ``RedisBackend``."""

    # RedisBackend's
    client: Client
    prefix: bytes
    _learn: Any  # the registered LEARN script
    _keys: Callable[..., list[bytes]]  # (ns, key, *what)
    _scan: Callable[[bytes], list[bytes]]

    def learn(self, user: str, network: str, until: float) -> None:
        """``user`` sent mail from ``network`` through some relay: known there until
        ``until`` for every relay (``known``); at most ``storage.known.KEEP`` a user."""
        from ..storage.known import KEEP

        self._learn(keys=self._keys("auth", user, b"known"), args=[network, repr(until), KEEP])

    def known(self, user: str) -> list[tuple[str, float]]:
        """The networks ``user`` is known from on any relay (network, until); a field that
        is not what ``learn`` writes is left out."""
        return self._networks(self._keys("auth", user, b"known")[0])

    def known_everyone(self) -> list[tuple[str, list[tuple[str, float]]]]:
        """``known`` of every user a relay learned networks of (SCAN: for the block of
        all logins, once per copy); a user stored by digest (a name past 400 bytes) is
        left out, as the relays' stores leave it out."""
        head, tail = self.prefix + b":{auth\0", b"}:known"
        return [(k[len(head):-len(tail)].decode("utf-8", "surrogateescape"), self._networks(k))
                for k in self._scan(b"known") if k.startswith(head) and k.endswith(tail)]

    def _networks(self, k: bytes) -> list[tuple[str, float]]:
        out = []
        for network, until in self.client.hgetall(k).items():
            try:
                out.append((network.decode("ascii") if isinstance(network, bytes) else network, float(until)))
            except ValueError:  # not ASCII (UnicodeDecodeError), or no number
                continue
        return out
