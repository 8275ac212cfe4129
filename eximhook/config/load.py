"""The configuration: one TOML file, read into frozen dataclasses.

Every default lives here, in the field definitions. Each field names the function that
checks and converts its TOML value (``values``; ``limits`` reads ``[limits]``); an
error names the file and the dotted key. The counting path reads its view of them
(``hookcache.View``), the hooks from a cache, because ``tomllib`` and ``dataclasses``
together cost ~28 ms to import.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..model.policy import Overrides, Policy, pick
from ..model.spool import Guard
from ..model.subjects import wider
from . import DEFAULT_PATH
from . import limits as _limits
from . import values as v

if TYPE_CHECKING:
    from ..model.schedule import Schedule


def _opt(default: Any, parse: Any, toml: str | None = None) -> Any:
    return field(default=default, metadata={"parse": parse, "toml": toml})


@dataclass(frozen=True)
class StoreConfig:
    path: str = _opt("/var/spool/exim4/eximhook", v.abs_path)
    mirror_dir: str = _opt("/var/spool/exim4", v.abs_path)
    map_size: int = _opt(1 << 32, v.map_size)  # grows by doubling when full
    # the counters' environment (soft state) never grows past this; from 7/8 of it on,
    # the least recently counted go first, never a block (docs/counters.md, "Bounded state")
    counters_budget: int = _opt(256 << 20, v.budget)
    owner: str | None = _opt(None, v.owner)  # "user[:group]"; default: the store dir's owner
    # "redis": the daemon counts and blocks in the Redis at redis_url, shared by several
    # relays, and mirrors its blocks into this store (issue 13); the hooks stay on it
    backend: str = _opt("lmdb", v.backend)
    redis_url: str = _opt("", v.redis_url)  # redis://host:port/db, rediss://..., unix:///path
    # the password in a file of its own instead of in redis_url (so that the config may be
    # read by more than the daemon), read at each connect; not both
    redis_password_file: str = _opt("", v.opt_path)
    redis_timeout: float = _opt(0.5, v.seconds)  # one call to Redis; below [serve] timeout
    # more than one Redis (issue 13): the Sentinels ("host:port") that name the master
    # of redis_service (redis_url then names no host: it carries the password, the db,
    # rediss:// for TLS), or a Redis Cluster that redis_url names one node of; not both
    redis_sentinels: tuple[tuple[str, int], ...] = _opt((), v.sentinels)
    # the master's name in the Sentinels (their "sentinel monitor NAME ..."): eximhook's
    # own, not redis' example "mymaster", which a Sentinel may watch for another service
    redis_service: str = _opt("eximhook", v.text)
    redis_cluster: bool = _opt(False, v.boolean)
    # this relay's name in Redis (who claimed a notification, who counted while Redis
    # was down). Two relays sharing one Redis need two names.
    node: str = _opt(os.uname().nodename, v.text)


@dataclass(frozen=True)
class BouncesConfig:
    # how long the message id of mail sent by an authenticated user, a relay host or a
    # local user is remembered, so a bounce that names it counts against that subject too
    remember: float = _opt(2 * 86400.0, v.period)


@dataclass(frozen=True)
class CustomersConfig:
    # which customer a user, relay host or local user belongs to, for [limits.customer]:
    # a file of "NS:KEY CUSTOMER" lines (engine.customers); and, for an authenticated
    # user it does not list, whether the domain of its id is its customer
    lookup: str | None = _opt(None, v.opt_abs_path)
    by_domain: bool = _opt(True, v.boolean)


@dataclass(frozen=True)
class LoginsConfig:
    # how long an account is known from a network after it last sent mail from there: a
    # login block (password spraying, [limits.login.authfail]) refuses AUTH for the
    # account from every other network
    known: float = _opt(30 * 86400.0, v.period)


@dataclass(frozen=True)
class NotifyConfig:
    to: str = _opt("postmaster", v.text)
    sender: str = _opt("root", v.text, toml="from")
    sendmail: tuple[str, ...] = _opt(("/usr/sbin/exim", "-f", "root"), v.argv)
    timeout: float = _opt(10.0, v.seconds)  # a hung sendmail is killed after this
    stale_after: float = _opt(300.0, v.seconds)  # a claim older than this was a crashed notify
    budget: float = _opt(20.0, v.seconds)  # notify starts no new mail after this many seconds
    # the daemon waits up to this long for the tripping message's id (reported by the
    # DATA ACL snippet) before it mails, so the notification can name that message
    hold: float = _opt(30.0, v.seconds)
    # eximhook maintain mails the abuse desk (once) when the store has refused writes,
    # so counting failed open, for this long
    alert_after: float = _opt(300.0, v.seconds)
    # the text of the mail about a block and a would-block (see templates); unset: the built-in
    template: str | None = _opt(None, v.opt_abs_path)
    shadow_template: str | None = _opt(None, v.opt_abs_path)
    # a burst of blocks is one mail: once digest_after mails about one namespace's blocks
    # went out within digest_every, its next blocks wait and go together, in one digest
    # mail per digest_every (0: every block its own mail)
    digest_after: int = _opt(20, v.count)
    digest_every: float = _opt(60.0, v.period)
    digest_template: str | None = _opt(None, v.opt_abs_path)  # unset: the built-in digest.tmpl

    def digest(self) -> tuple[int, float] | None:
        """(digest_after, digest_every) for the outbox; None: off."""
        return (self.digest_after, self.digest_every) if self.digest_after else None


@dataclass(frozen=True)
class OwnerConfig:
    # also mail the blocked subject's owner, at the address the lookup file or the
    # pattern gives (see owner); the abuse desk is mailed either way
    notify: bool = _opt(False, v.boolean)
    lookup: str | None = _opt(None, v.opt_abs_path)  # lines "NS:KEY address"
    pattern: tuple[tuple[str, str], ...] = _opt((), v.owner_patterns)  # {NS = "$key"}, for keys not in lookup
    template: str | None = _opt(None, v.opt_abs_path)  # unset: the built-in
    manual: bool = _opt(False, v.boolean)  # a block by hand (eximhook block) mails the owner too


@dataclass(frozen=True)
class ExpiryConfig:
    # a block eximhook makes lifts by itself this long after it was made (eximhook
    # maintain lifts it); 0: never, an admin lifts every block, as in the seeds
    after: float = _opt(0.0, v.period_or_off)
    escalate: float = _opt(2.0, v.factor)  # the subject's n-th block lasts after x escalate^(n-1) ...
    longest: float = _opt(30 * 86400.0, v.period, toml="max")  # ... and never longer than this
    forget: float = _opt(30 * 86400.0, v.period)  # free of blocks this long: the next one is a first again
    lift_frozen: bool = _opt(False, v.boolean)  # lift even while the subject has frozen mail nobody reviewed
    manual: bool = _opt(False, v.boolean)  # blocks made with `eximhook block` lift by themselves too

    def schedule(self) -> Schedule | None:
        """What a new block needs to know (the hooks get it through their cache); None: off."""
        return (self.after, self.escalate, self.longest, self.forget, self.manual) if self.after else None


@dataclass(frozen=True)
class HooksConfig:
    check: str = _opt("open", v.fail_policy)  # check-blocked when the store fails: open prints 0
    record: str = _opt("open", v.fail_policy)  # record-invalid when the store fails: open prints 0
    timeout: float = _opt(2.0, v.seconds)  # watchdog: print the fallback token and exit 75


@dataclass(frozen=True)
class ServeConfig:
    socket: str = _opt("/run/eximhook/eximhook.sock", v.socket_path)
    # a request is answered within this (else with the hooks' fallback token), and a
    # client that sends nothing for this long is dropped; below the snippets' 2s
    timeout: float = _opt(1.0, v.seconds)
    max_request: int = _opt(65536, v.positive_int)  # bytes; a longer request is cut off
    check_interval: float = _opt(30.0, v.seconds)  # mirror lag and outbox, checked this often


@dataclass(frozen=True)
class EvidenceConfig:
    rcpts: int = _opt(10, v.positive_int)
    ips: int = _opt(5, v.positive_int)


@dataclass(frozen=True)
class RelayConfig:
    ipv6_prefix: int = _opt(64, v.ipv6_prefix)


@dataclass(frozen=True)
class NetConfig:
    # the ip subjects' wider network ([limits.net.authfail]): an IPv4 client's /24, an
    # IPv6 client's /48; must match EXIMHOOK_NET_KEY (32 and 128: none)
    ipv4_prefix: int = _opt(24, v.ipv4_prefix)
    ipv6_prefix: int = _opt(48, v.ipv6_prefix)


@dataclass(frozen=True)
class LogConfig:
    file: str | None = _opt(None, v.opt_abs_path)  # default: syslog, facility mail


@dataclass(frozen=True)
class EximConfig:
    binary: str = _opt("/usr/sbin/exim4", v.abs_path)
    config: str | None = _opt(None, v.opt_abs_path)  # passed as -C to exim and exipick
    exipick: str = _opt("/usr/sbin/exipick", v.abs_path)
    freeze_queued: bool = _opt(True, v.boolean)  # freeze a newly blocked subject's queued mail
    timeout: float = _opt(30.0, v.seconds)
    # the user Exim runs the hooks as (its exim_user), who must be able to write the
    # store and read the mirror files: eximhook status and maintain check as this user
    user: str = _opt("Debian-exim", v.text)


@dataclass(frozen=True)
class SpoolConfig:
    # Exim's spool_directory: its free space is recorded when a block starts
    directory: str = _opt("/var/spool/exim4", v.abs_path)
    # a blocked subject's mail is refused instead of frozen once free space falls below
    # floor, or below fraction x the free space when its block started (spool.py)
    floor: int = _opt(0, v.size_kib)  # KiB, or "500M", "2G"
    fraction: float = _opt(0.5, v.fraction)

    def guard(self) -> Guard:
        return Guard(self.directory, self.floor, self.fraction)


@dataclass(frozen=True)
class RelaytestConfig:
    """Open-relay probing of customer hosts (seed 003, ``relaytest``). Off while
    ``networks`` is empty; the values given as "" are derived by ``load``."""

    networks: tuple[str, ...] = _opt((), v.networks)  # customer networks (CIDR); only these are probed
    key_file: str = _opt("/etc/eximhook/relaytest.key", v.abs_path)  # HMAC key, root:Debian-exim 0640
    mailbox: str = _opt("", v.opt_address)  # our probe address; required when networks is set
    sender: str = _opt("", v.opt_address)  # probes' envelope sender and From (bounces go here); "": mailbox
    abuse: str = _opt("", v.opt_address)  # named in the probe, Cc of the customer's mail; "": [notify] to
    port: int = _opt(25, v.port)
    retest: float = _opt(14 * 86400.0, v.period)  # a host is probed again after this
    # UNKNOWN this long: OK (the host drops relay attempts); a return after it is stale
    unknown_after: float = _opt(48 * 3600.0, v.period)
    connect_timeout: float = _opt(10.0, v.seconds)
    timeout: float = _opt(60.0, v.seconds)  # a whole probe, connect to QUIT
    concurrency: int = _opt(4, v.positive_int)  # probes at once (the watcher)
    rate: int = _opt(120, v.positive_int)  # probes per hour at most (the watcher)
    cooldown: float = _opt(3600.0, v.period)  # never two probes to one host within this
    blocked_nets: str = _opt("", v.opt_path)  # "": [store] mirror_dir + /blocked.nets
    contacts: str | None = _opt(None, v.opt_abs_path)  # lines "IP-or-network address": the customer's postmaster
    log: str = _opt("/var/log/exim4/mainlog", v.abs_path)  # the mainlog the watcher follows
    state: str = _opt("", v.opt_path)  # the watcher's offset file; "": [store] path + /relaytest-watch.state

    @property
    def enabled(self) -> bool:
        return bool(self.networks)


_SECTIONS = {
    "store": StoreConfig, "notify": NotifyConfig, "hooks": HooksConfig, "serve": ServeConfig,
    "evidence": EvidenceConfig, "relay": RelayConfig, "net": NetConfig, "log": LogConfig, "exim": EximConfig,
    "bounces": BouncesConfig, "spool": SpoolConfig, "owner": OwnerConfig, "expiry": ExpiryConfig,
    "relaytest": RelaytestConfig, "logins": LoginsConfig, "customers": CustomersConfig,
}


@dataclass(frozen=True)
class Config:
    path: str = DEFAULT_PATH
    store: StoreConfig = field(default_factory=StoreConfig)
    # namespace -> counter -> Policy; a counter without windows is not counted
    policies: dict[str, dict[str, Policy]] = field(default_factory=_limits.default_policies)
    notify_shadow: bool = False  # [limits] notify_shadow: mail the abuse desk about would-blocks too
    # (namespace, counter) -> ((pattern, Policy), ...): [overrides], other limits for some subjects
    overrides: Overrides = field(default_factory=dict)
    # namespace -> ((pattern, reason), ...): [exempt], never blocked (still counted);
    # the admin's `eximhook exempt add` are in the store
    exempt: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    net: NetConfig = field(default_factory=NetConfig)
    log: LogConfig = field(default_factory=LogConfig)
    exim: EximConfig = field(default_factory=EximConfig)
    bounces: BouncesConfig = field(default_factory=BouncesConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    owner: OwnerConfig = field(default_factory=OwnerConfig)
    expiry: ExpiryConfig = field(default_factory=ExpiryConfig)
    relaytest: RelaytestConfig = field(default_factory=RelaytestConfig)
    logins: LoginsConfig = field(default_factory=LoginsConfig)
    customers: CustomersConfig = field(default_factory=CustomersConfig)

    def policy(self, ns: str, counter: str, key: str | None = None) -> Policy | None:
        """The policy of ``counter`` for ``ns`` (and for one subject's ``key``: its override)."""
        return pick(self.policies, self.overrides, ns, counter, key)

    def wider(self, ns: str, key: str) -> tuple[str, str] | None:
        """The ``net`` subject of an ``ip`` key: the network it counts in too (``[net]``)."""
        return wider(ns, key, self.net.ipv4_prefix, self.net.ipv6_prefix)



def load(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    for name in data:
        if name not in _SECTIONS and name not in ("limits", "overrides", "exempt"):
            raise ConfigError(f"{path}: unknown section [{name}]")
    sections = {name: _build(path, name, cls, data.get(name, {})) for name, cls in _SECTIONS.items()}
    sections["relaytest"] = _relaytest(path, sections["relaytest"], sections["store"], sections["notify"])
    prefix = sections["relay"].ipv6_prefix
    policies, notify_shadow = _limits.parse(path, v.table(path, "limits", data.get("limits", {})))
    cfg = Config(
        path=os.path.abspath(path), policies=policies, notify_shadow=notify_shadow,
        overrides=_limits.parse_overrides(path, v.table(path, "overrides", data.get("overrides", {})), policies,
                                          prefix),
        exempt=_limits.parse_exempt(path, v.table(path, "exempt", data.get("exempt", {})), prefix),
        **sections,
    )
    if cfg.store.backend == "redis":
        _check_redis(path, cfg.store, cfg.serve)
    if cfg.net.ipv6_prefix > cfg.relay.ipv6_prefix:
        raise ConfigError(f"{path}: net.ipv6_prefix {cfg.net.ipv6_prefix} is narrower than relay.ipv6_prefix "
                          f"{cfg.relay.ipv6_prefix}, the groups ip subjects count in: a network holds groups")
    window = send_window(cfg)
    if cfg.notify.stale_after < 2 * window:
        raise ConfigError(
            f"{path}: notify.stale_after {cfg.notify.stale_after:g}s is too short: one send may take "
            f"{window:g}s (notify.timeout + 3 x exim.timeout: freeze the queued mail, list the frozen, "
            f"mail), and a live sender's claim must not be taken over; use at least {2 * window:g}s")
    return cfg


def _relaytest(path: str, rt: RelaytestConfig, store: StoreConfig, notify: NotifyConfig) -> RelaytestConfig:
    """With probing on: the mailbox must be set, and the defaults given as "" are derived
    (off, the section stays as written, but for blocked_nets: setup-exim4 writes it for
    the snippets either way)."""
    from dataclasses import replace

    rt = replace(rt, blocked_nets=rt.blocked_nets or os.path.join(store.mirror_dir, "blocked.nets"))
    if not rt.enabled:
        return rt
    if not rt.mailbox:
        raise ConfigError(f"{path}: relaytest.mailbox must be set when relaytest.networks is: the address on this "
                          "server that probes are relayed back to (routed to `eximhook relaytest receive`)")
    if rt.connect_timeout > rt.timeout:
        raise ConfigError(f"{path}: relaytest.connect_timeout {rt.connect_timeout:g}s is longer than relaytest.timeout "
                          f"{rt.timeout:g}s, the limit of a whole probe")
    return replace(rt, sender=rt.sender or rt.mailbox, abuse=rt.abuse or notify.to,
                   state=rt.state or os.path.join(store.path, "relaytest-watch.state"))


def _check_redis(path: str, store: StoreConfig, serve: ServeConfig) -> None:
    from urllib.parse import parse_qs, urlsplit

    url = urlsplit(store.redis_url)
    if store.redis_sentinels and store.redis_cluster:
        raise ConfigError(f"{path}: store.redis_sentinels and store.redis_cluster = true exclude each other: "
                          "Sentinel watches one master and its replicas, a Redis Cluster fails over by itself")
    if store.redis_sentinels:
        if store.redis_url and (url.scheme == "unix" or url.hostname or url.port is not None):
            raise ConfigError(f"{path}: store.redis_url {store.redis_url!r} names an address, but with "
                              "store.redis_sentinels the Sentinels name the master's: leave it empty, or give only "
                              "the password, the database and TLS, such as redis://:password@/0 or rediss:///0")
    elif not store.redis_url:
        raise ConfigError(f'{path}: store.redis_url must be set when store.backend is "redis" (such as '
                          "redis://127.0.0.1:6379/0 or unix:///run/redis/redis.sock), unless "
                          "store.redis_sentinels is")
    elif url.scheme != "unix" and not url.hostname:
        raise ConfigError(f"{path}: store.redis_url {store.redis_url!r} names no host (only with "
                          "store.redis_sentinels, which name the master); such as redis://127.0.0.1:6379/0")
    if store.redis_cluster:
        db = url.path.removeprefix("/") or parse_qs(url.query).get("db", [""])[0]
        if url.scheme == "unix" or db.strip("0"):
            raise ConfigError(f"{path}: store.redis_url {store.redis_url!r}: with store.redis_cluster = true it "
                              "names one node of the cluster by TCP, in database 0 (a cluster has no other), such "
                              "as redis://192.0.2.5:6379 or rediss://redis-1.example.net:6379")
    if store.redis_password_file and v.has_password(store.redis_url):
        raise ConfigError(f"{path}: store.redis_url holds a password and store.redis_password_file names a file "
                          "for it: keep one (the file, and the URL without the password)")
    if store.redis_timeout >= serve.timeout:
        raise ConfigError(f"{path}: store.redis_timeout {store.redis_timeout:g}s must be below serve.timeout "
                          f"{serve.timeout:g}s: the daemon answers within serve.timeout, so a slower Redis "
                          "would only ever give the fallback token")


def send_window(cfg: Config) -> float:
    """The longest one notification may be claimed by a live sender."""
    return cfg.notify.timeout + 3 * cfg.exim.timeout


def _build(path: str, where: str, cls: Any, value: Any) -> Any:
    table = v.table(path, where, value)
    by_toml = {f.metadata["toml"] or f.name: f for f in fields(cls)}
    kwargs = {}
    for key, raw in table.items():
        spec = by_toml.get(key)
        if spec is None:
            raise ConfigError(f"{path}: unknown key {where}.{key}")
        try:
            kwargs[spec.name] = spec.metadata["parse"](raw)
        except ValueError as exc:
            raise ConfigError(f"{path}: {where}.{key} {exc}") from exc
    return cls(**kwargs)
