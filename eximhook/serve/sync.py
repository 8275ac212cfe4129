"""The daemon's sync thread with a shared Redis: what other relays (and admin commands)
change comes here at once from what the scripts publish, and from a comparison of the
whole set every ``[serve] check_interval`` (a message missed while disconnected), which
also claims the notifications a relay left behind (``RedisBackend.claim``). After a
failure the relay counts in Redis again only when ``reconcile`` has run: the blocks made
alone are pushed to Redis, then the journaled counts are sent, once each."""

from __future__ import annotations

import json
import threading
import time

from ..model.records import Event
from ..periods import format_time
from ..storage import relay_copy as local

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .relay import Relay

_RECONNECT = 1.0  # seconds between two tries of the sync thread to reach Redis again
_MINE_AFTER = 10.0  # a notification this relay queued and did not take: it stopped in between
_ORPHAN_AFTER = 60.0  # one no relay took: the relay that queued it is down
_FORGET = 256  # journaled counts sent to Redis, forgotten in one synced write


class Sync:
    """Keeps this relay's store one with Redis, in a thread of its own."""

    def __init__(self, relay: Relay) -> None:
        self.relay, self.server, self.backend = relay, relay.server, relay.backend
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="eximhook-sync", daemon=True)

    def run(self) -> None:
        while not self.stopping.is_set():
            pubsub = self.backend.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.backend.channel)
                synced = -float("inf")
                while not self.stopping.is_set():
                    if time.monotonic() - synced >= self.server.cfg.serve.check_interval or not self.relay.up:
                        # after subscribing (nothing published since is missed), then as a
                        # check of what the messages brought
                        self.reconcile(time.time())
                        synced = time.monotonic()
                    message = pubsub.get_message(timeout=min(1.0, self.server.cfg.serve.check_interval))
                    if message is not None:
                        self.apply(message["data"], time.time())
            except self.relay.unreachable as exc:
                self.relay.down(exc)
                self.stopping.wait(_RECONNECT)
            except Exception as exc:  # a bug must not end the sync: log it, start over
                self.server.failure("sync", f"could not follow the changes in Redis: {type(exc).__name__}: {exc}; "
                                            f"trying again every {_RECONNECT:g}s")
                self.stopping.wait(_RECONNECT)
            finally:
                pubsub.close()

    def apply(self, data: bytes, now: float) -> None:
        """One change another relay, or an admin command, published (``data``: JSON)."""
        try:
            message = json.loads(data)
            op = message["op"]
            subject = message["record"] if op == "block" else message
            ns, key = (subject["ns"], subject["key"]) if op in ("block", "unblock") else ("", "")
            lift = (f"{message['by']} on {message['node']}", message["event"]) if op == "unblock" else None
        except (ValueError, LookupError, TypeError) as exc:
            self.server.failure("skip", f"a message on {self.backend.channel.decode()} that is not eximhook's "
                                        f"({type(exc).__name__}: {exc}): {data[:200]!r}: passed over")
            return
        if op == "block":
            self.relay.copy(ns, key, now)
        elif lift is not None:
            self.relay.lift(ns, key, now, *lift)
        elif op == "exempt":
            self._exemptions()

    def reconcile(self, now: float) -> None:
        """Bring this relay and Redis together: what this relay did alone goes to Redis,
        then what Redis holds comes here (blocks, lifts, exemptions, notifications no
        relay took). After a failure, the relay counts in Redis again only then."""
        store, node = self.server.store, self.backend.node
        pushed, began = 0, time.monotonic()
        for record in store.blocks():
            if record.get("node") is None:  # made here alone: the ${run} hooks, or while Redis was down
                self.backend.block_queued(dict(record, node=node), now, notify=False)  # mailed here already
                local.mark_shared(store, record["ns"], record["key"], node)
                pushed += 1
        replayed = self._replay(now)
        local.counting_alone(store, None)
        if not self.relay.up:
            self.relay.up = True
            replayed += self._replay(time.time())  # counted here while the first pass ran
            self.server.log.log("notice", f"{self.relay.where()} answers again: {pushed} block(s) made here "
                                          f"and {replayed} count(s) sent to it in {time.monotonic() - began:.2f} s; "
                                          "counting there again")
        self._exemptions()
        self._compare(now)
        self._claim(now)

    def _replay(self, now: float) -> int:
        """The journaled counts, into Redis once each (a count already there: a crash
        between sending it and forgetting it), each at its own time; a block one makes
        is made ``now``. Forgotten here a batch at a time (one synced write per
        ``_FORGET`` counts, not per count): a crash before a batch is forgotten sends it
        again, and Redis, which keeps each count's id for ``redis_count.ONCE`` seconds, counts
        none of it twice."""
        from ..backends.redis_values import Replayed

        cfg, store, sent = self.server.cfg, self.server.store, 0
        done: list[int] = []
        try:
            for item in local.journaled(store):
                policy = cfg.policy(item["ns"], item["counter"], item["key"])
                if policy is not None and policy.windows:
                    event = Event(item["ns"], item["key"], policy, weight=item["weight"], evidence=item["evidence"],
                                  ip=item["ip"], keep_evidence=cfg.evidence.rcpts, keep_ips=cfg.evidence.ips,
                                  once=item["once"], tags=tuple(item.get("tags", ())))
                    try:
                        tally, outcome = self.backend.record(event, item["ts"], hold=item["hold"],
                                                             notify_shadow=cfg.notify_shadow,
                                                             exempt=self.relay.exempt(event.ns), made=now)
                    except Replayed:
                        pass
                    else:
                        self.relay.keep(tally, outcome, now, item["hold"], "", at=item["ts"])
                        sent += 1
                done.append(item["seq"])
                if len(done) >= _FORGET:
                    local.sent(store, done)
                    done = []
        finally:  # Redis stopped answering halfway: what it counted is forgotten all the same
            if done:
                local.sent(store, done)
        return sent

    def _compare(self, now: float) -> None:
        """The whole set: blocks Redis has that this store lacks are copied; a copy here
        that Redis no longer has was lifted by another relay (Redis keeps the lifted
        record a while) or lost by Redis (a failover, a flush): then it goes back.
        This store is read first: a block copied after that is in Redis's answer too."""
        store = self.server.store
        mine = {(r["ns"], r["key"]): r for r in store.blocks() if r.get("node") is not None}
        theirs = self.backend.blocks()
        have = {(r["ns"], r["key"]) for r in theirs}
        added = [r for r in theirs if not store.is_blocked(r["ns"], r["key"]) and store.block(r, now, False)]
        self.relay.copied(added, now)
        for (ns, key), record in mine.items():
            if (ns, key) in have:
                continue
            lifted = self.backend.lifted(ns, key)
            if lifted is not None and lifted["since"] >= record["since"]:
                self.relay.lift(ns, key, now, f"{lifted.get('node')} (lifted in {self.relay.where()})", "unblocked",
                           since=record["since"])
            elif self.backend.block_queued(record, now, notify=False) >= 0:
                self.server.failure("lost", f"{ns} {key}: blocked here since {format_time(record['since'])} and "
                                            f"never lifted, but missing in {self.relay.where()} (a failover or a "
                                            "flush lost it): put back")

    def _exemptions(self) -> None:
        """The admin's exemptions, as Redis holds them: those added here alone (before
        the switch to Redis) go there; those another relay removed go from here."""
        store, node = self.server.store, self.backend.node
        theirs = {(r["ns"], r["pattern"]): r for r in self.backend.exemptions()}
        for record in store.exemptions():
            k = (record["ns"], record["pattern"])
            if record.get("node") is None:
                self.backend.exempt(dict(record, node=node))
                local.mark_shared(store, record["ns"], None, node, pattern=record["pattern"])
            elif k not in theirs and store.unexempt(record["ns"], record["pattern"], time.time(), "another relay"):
                self.server.log.log("notice", f"exempt {k[0]} {k[1]}: removed in Redis, so here too")
        for k, record in theirs.items():
            if store.exempt(record):
                self.server.log.log("notice", f"exempt {k[0]} {k[1]}: copied from Redis")

    def _claim(self, now: float) -> None:
        """Notifications no relay took: mailed from here (see ``RedisBackend.claim``)."""
        store, node = self.server.store, self.backend.node
        for entry in self.backend.claim(now, mine_after=_MINE_AFTER, orphan_after=_ORPHAN_AFTER):
            record = entry["block"]
            ns, key = record["ns"], record["key"]
            if entry["kind"] == "would-block":
                store.shadow(record, now, True)
            elif entry["node"] == node and store.is_blocked(ns, key):
                continue  # queued here with the block before this relay stopped
            elif not store.block(record, now, True):
                store.notify(record, now)
            self.server.log.log("notice", f"{entry['kind']} {ns} {key}: notification claimed "
                                          f"(queued by {entry['node']}, not taken)")
            self.server.outbox.tripped({(ns, key)})
