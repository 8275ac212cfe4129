"""Where an account logs in from (password spraying, issue 24): the networks it sends
mail from are learned (``storage.known``), so that the block of a ``login`` subject, the
account a spray of failed AUTH aimed at, refuses AUTH for it only from the others."""

from __future__ import annotations

TYPE_CHECKING = False  # the hooks import this module on a message: typing costs ~10 ms
if TYPE_CHECKING:
    from ..config.hookcache import View
    from ..model.records import Request
    from ..storage.store import Store


def learning(req: Request, view: View) -> tuple[str, str] | None:
    """(user, network) a request teaches: a message an authenticated user sent from a
    client address ([net] prefixes, as ``EXIMHOOK_NET_KEY``); None for anything else."""
    ip = req.fields.get("ip")
    if req.op != "message" or req.ns != "auth" or not ip or not view.known:
        return None
    net = view.wider("ip", ip)
    return None if net is None else (req.key, net[1])


# (user, network) -> when this process last found it known or made it so: the daemon
# looks in the store again only after LOOKED_FOR seconds (a read for every message
# cost as much as counting one of its counters). At most LOOKED_KEPT, all dropped when full.
_looked: dict[tuple[str, str], float] = {}
LOOKED_FOR = 60.0
LOOKED_KEPT = 65536


def learn(store: Store, req: Request, now: float, view: View) -> tuple[str, str, float] | None:
    """Learn what ``req`` teaches (``learning``), if anything: a synced write when new.
    Called for mail that went out, not for mail a block froze (a bot's network must not
    become one its victim's account may log in from). What took a write: (user,
    network, known until), for the other relays (``RedisBackend.learn``); else None."""
    found = learning(req, view)
    if found is None or 0 <= now - _looked.get(found, -LOOKED_FOR) < LOOKED_FOR:
        return None
    from ..storage.known import learn as note

    until = note(store, *found, now, view.known)
    if len(_looked) >= LOOKED_KEPT:
        _looked.clear()
    _looked[found] = now
    return None if until is None else (*found, until)
