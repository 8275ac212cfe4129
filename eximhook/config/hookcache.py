"""What the counting path needs of the config (``View``), and the hooks' cache of it,
which costs microseconds to read.

The daemon and the hooks count through the same engine with the same ``View``: the
daemon builds it from the loaded config (``View.of``). A hook is a fresh interpreter
per Exim call, and parsing TOML into the dataclasses of ``config.load`` costs ~28 ms of
imports, three times the interpreter's own start. So the view's plain values
(``View.plain``) are cached with ``marshal`` beside the config file as ``.NAME.cache``,
stamped with the shape of the view (its fields and eximhook's version) and the file's
inode, size and mtime.
A stale or missing cache is rebuilt by whoever can write it: root's admin commands
always, a hook when the config directory is writable. A hook that cannot write it
still gets correct settings, just ~28 ms slower (and logs why).
"""

from __future__ import annotations

import marshal
import os

from .. import __version__
from ..errors import ConfigError
from ..model.subjects import WIDER, wider

TYPE_CHECKING = False  # the hooks import this module: typing costs ~10 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..model.policy import Overrides, Policy
    from ..model.schedule import Schedule
    from ..model.spool import Guard
    from .load import Config


_pick: Callable[..., Policy | None] | None = None  # model.policy.pick, once a count needs it


class View:
    """The config as the counting path reads it, typed; the same for the daemon and the
    hooks. The cache holds ``plain()``: the policies as (windows, mode, minimum), made
    ``Policy`` objects again on first use (a check-blocked hook never needs them)."""

    # what the cache holds, by name
    FIELDS = ("check", "counters_budget", "customers_by_domain", "customers_lookup", "exempt", "expiry", "hold",
              "ipv6_prefix", "keep_evidence", "keep_ips", "known", "log", "map_size", "mirror_dir", "net_prefixes",
              "notify_shadow", "overrides", "owner", "owner_lookup", "owner_notify", "owner_pattern", "path",
              "policies", "record", "remember", "spool", "store", "timeout")
    __slots__ = (*(f for f in FIELDS if f not in ("policies", "overrides")), "_limits", "_overrides", "_policies",
                 "_wider", "_on")

    path: str  # the config file
    store: str  # [store] path, map_size, owner (the user it belongs to), counters_budget, mirror_dir
    map_size: int
    owner: str | None
    counters_budget: int
    mirror_dir: str
    log: str | None  # [log] file (None: syslog)
    check: str  # [hooks] check, record: "open" or "closed" when the store fails; timeout (s)
    record: str
    timeout: float
    ipv6_prefix: int  # [relay] ipv6_prefix: how a relay host's IPv6 address is grouped
    net_prefixes: tuple[int, int]  # [net] ipv4_prefix, ipv6_prefix: the network an ip counts in too
    _policies: dict[str, dict[str, Policy]] | None  # [limits]: namespace -> counter -> Policy
    _overrides: Overrides | None  # [overrides]
    _limits: tuple[dict[str, Any], dict[Any, Any]] | None  # both as the cache holds them, until first used
    exempt: dict[str, tuple[tuple[str, str], ...]]  # [exempt]: namespace -> (pattern, reason)
    notify_shadow: bool  # [limits] notify_shadow
    remember: float  # [bounces] remember
    known: float  # [logins] known
    _wider: dict[tuple[str, str], tuple[str, str] | None]  # wider's answers, by address (``wider``)
    _on: dict[tuple[str, tuple[str, ...]], dict[str, Policy]]  # policies_on's, per namespace without overrides
    customers_lookup: str | None  # [customers] lookup, by_domain
    customers_by_domain: bool
    keep_evidence: int  # [evidence] rcpts, ips
    keep_ips: int
    hold: float  # [notify] hold
    spool: tuple[str, int, float]  # [spool] directory, floor, fraction
    expiry: Schedule | None  # [expiry], when on
    owner_notify: bool  # [owner] notify, lookup, pattern
    owner_lookup: str | None
    owner_pattern: dict[str, str]

    @classmethod
    def of(cls, cfg: Config) -> View:
        view = cls()
        view.path, view.store, view.map_size, view.owner = cfg.path, cfg.store.path, cfg.store.map_size, cfg.store.owner
        view.counters_budget, view.mirror_dir, view.log = cfg.store.counters_budget, cfg.store.mirror_dir, cfg.log.file
        view.check, view.record, view.timeout = cfg.hooks.check, cfg.hooks.record, cfg.hooks.timeout
        view.ipv6_prefix, view.net_prefixes = cfg.relay.ipv6_prefix, (cfg.net.ipv4_prefix, cfg.net.ipv6_prefix)
        view._policies, view._overrides, view._limits, view.exempt = cfg.policies, cfg.overrides, None, cfg.exempt
        view.notify_shadow, view.remember, view.hold = cfg.notify_shadow, cfg.bounces.remember, cfg.notify.hold
        view.known = cfg.logins.known
        view.customers_lookup, view.customers_by_domain = cfg.customers.lookup, cfg.customers.by_domain
        view.keep_evidence, view.keep_ips = cfg.evidence.rcpts, cfg.evidence.ips
        view.spool = (cfg.spool.directory, cfg.spool.floor, cfg.spool.fraction)
        view.expiry = cfg.expiry.schedule()
        view.owner_notify, view.owner_lookup = cfg.owner.notify, cfg.owner.lookup
        view.owner_pattern = dict(cfg.owner.pattern)
        return view

    def plain(self) -> dict[str, Any]:
        """The values as marshal stores them (no objects)."""
        out = {name: getattr(self, name) for name in self.FIELDS}
        out["policies"] = {ns: {name: (p.windows, p.mode, p.minimum) for name, p in table.items()}
                           for ns, table in self.policies.items()}
        out["overrides"] = {k: tuple((pattern, p.windows, p.mode, p.minimum) for pattern, p in v)
                            for k, v in self.overrides.items()}
        return out

    @classmethod
    def from_plain(cls, values: dict[str, Any]) -> View:
        view = cls()
        for name in cls.FIELDS:
            if name not in ("policies", "overrides"):
                setattr(view, name, values[name])
        view._limits, view._policies, view._overrides = (values["policies"], values["overrides"]), None, None
        return view

    @property
    def policies(self) -> dict[str, dict[str, Policy]]:
        if self._policies is None:
            self._objects()
        assert self._policies is not None
        return self._policies

    @property
    def overrides(self) -> Overrides:
        if self._overrides is None:
            self._objects()
        assert self._overrides is not None
        return self._overrides

    def _objects(self) -> None:
        from ..model.policy import Policy  # not on a check's path

        assert self._limits is not None
        policies, overrides = self._limits
        self._policies = {ns: {name: Policy(name, *found) for name, found in table.items()}
                          for ns, table in policies.items()}
        self._overrides = {(ns, name): tuple((pattern, Policy(name, *found)) for pattern, *found in v)
                           for (ns, name), v in overrides.items()}

    def policy(self, ns: str, counter: str, key: str | None = None) -> Policy | None:
        """As ``Config.policy``: the counter's policy for the subject (its override, if any)."""
        global _pick
        pick = _pick
        if pick is None:  # once per process, and never on a check's path
            from ..model.policy import pick as found

            _pick = pick = found
        return pick(self.policies, self.overrides, ns, counter, key)

    def policies_on(self, ns: str, key: str, names: tuple[str, ...]) -> dict[str, Policy]:
        """The counters of ``names`` that are on for the subject, each with its policy
        (``policy``). The same for every key of a namespace no override names: then
        kept (the combined score asks on every count)."""
        try:
            kept = self._on
        except AttributeError:
            kept = self._on = {}
        if (ns, names) in kept:
            return kept[(ns, names)]
        found = {name: p for name in names if (p := self.policy(ns, name, key)) is not None and p.windows}
        if not any(o_ns == ns for o_ns, _ in self.overrides):
            kept[(ns, names)] = found
        return found

    def wider(self, ns: str, key: str) -> tuple[str, str] | None:
        """As ``Config.wider``: the ``net`` subject an ``ip`` key counts in too. The
        daemon asks for each message's client up to three times (``ipaddress`` parses
        it in ~10 us): kept for the last ``_WIDER_KEPT`` addresses asked about (a key of
        another namespace has none, and is not kept: it may be kilobytes)."""
        if ns not in WIDER:
            return None
        if len(key) > 64:  # no address (an IPv6 one is at most 45 characters): not kept
            return wider(ns, key, *self.net_prefixes)
        try:
            kept = self._wider
        except AttributeError:
            kept = self._wider = {}
        if (ns, key) not in kept:
            if len(kept) >= _WIDER_KEPT:
                kept.clear()
            kept[(ns, key)] = wider(ns, key, *self.net_prefixes)
        return kept[(ns, key)]

    def guard(self) -> Guard:
        from ..model.spool import Guard  # a block's: not on a count's path

        return Guard(*self.spool)


_WIDER_KEPT = 4096  # View.wider's answers kept (<= 64 bytes and a network each: < 2 MB), all dropped when full
# the cache's shape: a changed field, or another release, and every cache is stale
_FORMAT = f"{','.join(View.FIELDS)}|policies:windows,mode,minimum|{__version__}"
def cache_path(path: str) -> str:
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{tail}.cache")


def _stamp(path: str) -> tuple[str | int, ...]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    return (_FORMAT, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def view(path: str) -> tuple[View, bool]:
    """The view of the config at ``path`` and whether it came from a fresh cache."""
    stamp = _stamp(path)
    try:
        with open(cache_path(path), "rb") as f:
            cached_stamp, settings = marshal.load(f)
        if cached_stamp == stamp and isinstance(settings, dict):
            return View.from_plain(settings), True
    except (OSError, EOFError, ValueError, TypeError, KeyError):
        pass
    from .load import load

    fresh = View.of(load(path))
    write_cache(path, stamp, fresh)
    return fresh, False


def write_cache(path: str, stamp: tuple[str | int, ...] | None, fresh: View) -> bool:
    """Atomically (temp file + rename) store ``fresh``; False if not allowed to."""
    target = cache_path(path)
    tmp = f"{target}.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # the Exim user reads what root writes
            marshal.dump((stamp or _stamp(path), fresh.plain()), f)
        os.replace(tmp, target)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
    return True
