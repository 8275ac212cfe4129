"""The configuration: one TOML file, read into frozen dataclasses.

Every default lives here, in the field definitions. Each field names the function that
checks and converts its TOML value; an error names the file and the dotted key.
Hooks read a compiled subset instead (see ``_fastconfig``), because ``tomllib`` and
``dataclasses`` together cost ~28 ms to import.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any

from ._fastconfig import DEFAULT_PATH
from .errors import ConfigError
from .periods import parse_period
from .policy import COUNTERS, DEFAULT_WINDOWS, MODES, Policy, default_mode
from .subjects import NAMESPACES


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _abs_path(value: Any) -> str:
    if not os.path.isabs(_str(value)):
        raise ValueError(f"must be an absolute path, not {value!r} (Exim runs hooks in its spool)")
    return str(value)


def _opt_abs_path(value: Any) -> str | None:
    return None if value == "" else _abs_path(value)


def _opt_str(value: Any) -> str | None:
    return None if value == "" else _str(value)


def _owner(value: Any) -> str | None:
    """``user[:group]``, both existing: a typo would lock every hook out of the store."""
    spec = _opt_str(value)
    if spec is None:
        return None
    import grp
    import pwd

    user, _, group = spec.partition(":")
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"is {spec!r}, but there is no user {user!r}") from None
    try:
        if group:
            grp.getgrnam(group)
    except KeyError:
        raise ValueError(f"is {spec!r}, but there is no group {group!r}") from None
    return spec


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


_MIN_MAP_SIZE = 1 << 20


def _map_size(value: Any) -> int:
    size = _positive_int(value)
    if size < _MIN_MAP_SIZE:
        raise ValueError(f"is {size} bytes; it must be at least {_MIN_MAP_SIZE} (1 MiB): LMDB needs room for "
                         "its own pages before the first block, and the map doubles by itself when full")
    return size


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError("must be a number of seconds above 0")
    return float(value)


def _period(value: Any) -> float:
    if isinstance(value, str):
        return parse_period(value)
    return _seconds(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _policy(value: Any) -> str:
    if value not in ("open", "closed"):
        raise ValueError('must be "open" or "closed"')
    return str(value)


def _argv(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a list of strings, such as ["/usr/sbin/exim", "-f", "root"]')
    _abs_path(value[0])
    return tuple(value)


def _socket_path(value: Any) -> str:
    path = _abs_path(value)
    if len(path.encode()) > 107:  # sun_path holds 108 bytes with the final NUL
        raise ValueError(f"is {len(path.encode())} bytes long; a Unix socket path holds at most 107")
    return path


def _ipv6_prefix(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 128:
        raise ValueError("must be a prefix length from 1 to 128 (128: no grouping)")
    return value


def _opt(default: Any, parse: Any, toml: str | None = None) -> Any:
    return field(default=default, metadata={"parse": parse, "toml": toml})


@dataclass(frozen=True)
class StoreConfig:
    path: str = _opt("/var/spool/exim4/eximhook", _abs_path)
    mirror_dir: str = _opt("/var/spool/exim4", _abs_path)
    map_size: int = _opt(1 << 32, _map_size)  # grows by doubling when full
    owner: str | None = _opt(None, _owner)  # "user[:group]"; default: the store dir's owner


@dataclass(frozen=True)
class BouncesConfig:
    # how long the message id of mail sent by an authenticated user, a relay host or a
    # local user is remembered, so a bounce that names it counts against that subject too
    remember: float = _opt(2 * 86400.0, _period)


@dataclass(frozen=True)
class NotifyConfig:
    to: str = _opt("postmaster", _str)
    sender: str = _opt("root", _str, toml="from")
    sendmail: tuple[str, ...] = _opt(("/usr/sbin/exim", "-f", "root"), _argv)
    timeout: float = _opt(10.0, _seconds)  # a hung sendmail is killed after this
    stale_after: float = _opt(300.0, _seconds)  # a claim older than this was a crashed notify
    budget: float = _opt(20.0, _seconds)  # notify starts no new mail after this many seconds
    # the daemon waits up to this long for the tripping message's id (reported by the
    # DATA ACL snippet) before it mails, so the notification can name that message
    hold: float = _opt(30.0, _seconds)
    # eximhook maintain mails the abuse desk (once) when the store has refused writes,
    # so counting failed open, for this long
    alert_after: float = _opt(300.0, _seconds)


@dataclass(frozen=True)
class HooksConfig:
    check: str = _opt("open", _policy)  # check-blocked when the store fails: open prints 0
    record: str = _opt("open", _policy)  # record-invalid when the store fails: open prints 0
    timeout: float = _opt(2.0, _seconds)  # watchdog: print the fallback token and exit 75


@dataclass(frozen=True)
class ServeConfig:
    socket: str = _opt("/run/eximhook/eximhook.sock", _socket_path)
    # a request is answered within this (else with the hooks' fallback token), and a
    # client that sends nothing for this long is dropped; below the snippets' 2s
    timeout: float = _opt(1.0, _seconds)
    max_request: int = _opt(65536, _positive_int)  # bytes; a longer request is cut off
    check_interval: float = _opt(30.0, _seconds)  # mirror lag and outbox, checked this often


@dataclass(frozen=True)
class EvidenceConfig:
    rcpts: int = _opt(10, _positive_int)
    ips: int = _opt(5, _positive_int)


@dataclass(frozen=True)
class RelayConfig:
    ipv6_prefix: int = _opt(64, _ipv6_prefix)


@dataclass(frozen=True)
class LogConfig:
    file: str | None = _opt(None, _opt_abs_path)  # default: syslog, facility mail


@dataclass(frozen=True)
class EximConfig:
    binary: str = _opt("/usr/sbin/exim4", _abs_path)
    config: str | None = _opt(None, _opt_abs_path)  # passed as -C to exim and exipick
    exipick: str = _opt("/usr/sbin/exipick", _abs_path)
    freeze_queued: bool = _opt(True, _bool)  # freeze a newly blocked subject's queued mail
    timeout: float = _opt(30.0, _seconds)
    # the user Exim runs the hooks as (its exim_user), who must be able to write the
    # store and read the mirror files: eximhook status and maintain check as this user
    user: str = _opt("Debian-exim", _str)


_SECTIONS = {
    "store": StoreConfig, "notify": NotifyConfig, "hooks": HooksConfig, "serve": ServeConfig,
    "evidence": EvidenceConfig, "relay": RelayConfig, "log": LogConfig, "exim": EximConfig,
    "bounces": BouncesConfig,
}


def _default_policies() -> dict[str, dict[str, Policy]]:
    out: dict[str, dict[str, Policy]] = {ns: {} for ns in NAMESPACES}
    for (ns, name), windows in DEFAULT_WINDOWS.items():
        out[ns][name] = Policy(name, windows, default_mode(name))
    return out


@dataclass(frozen=True)
class Config:
    path: str = DEFAULT_PATH
    store: StoreConfig = field(default_factory=StoreConfig)
    # namespace -> counter -> Policy; a counter without windows is not counted
    policies: dict[str, dict[str, Policy]] = field(default_factory=_default_policies)
    notify_shadow: bool = False  # [limits] notify_shadow: mail the abuse desk about would-blocks too
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    log: LogConfig = field(default_factory=LogConfig)
    exim: EximConfig = field(default_factory=EximConfig)
    bounces: BouncesConfig = field(default_factory=BouncesConfig)

    def policy(self, ns: str, counter: str) -> Policy | None:
        return self.policies.get(ns, {}).get(counter)

    def hook_settings(self) -> dict[str, Any]:
        """The plain values the hooks need, for the marshal cache in ``_fastconfig``."""
        return {
            "config": self.path,
            "store": self.store.path, "map_size": self.store.map_size, "owner": self.store.owner,
            "mirror_dir": self.store.mirror_dir,
            "policies": {ns: {name: (p.windows, p.mode) for name, p in table.items()}
                         for ns, table in self.policies.items()},
            "notify_shadow": self.notify_shadow, "remember": self.bounces.remember,
            "check": self.hooks.check, "record": self.hooks.record, "timeout": self.hooks.timeout,
            "rcpts": self.evidence.rcpts, "ips": self.evidence.ips,
            "ipv6_prefix": self.relay.ipv6_prefix, "log": self.log.file,
        }


def load(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    for name in data:
        if name not in _SECTIONS and name != "limits":
            raise ConfigError(f"{path}: unknown section [{name}]")
    policies, notify_shadow = _limits(path, _table(path, "limits", data.get("limits", {})))
    cfg = Config(
        path=os.path.abspath(path), policies=policies, notify_shadow=notify_shadow,
        **{name: _build(path, name, cls, data.get(name, {})) for name, cls in _SECTIONS.items()},
    )
    window = send_window(cfg)
    if cfg.notify.stale_after < 2 * window:
        raise ConfigError(
            f"{path}: notify.stale_after {cfg.notify.stale_after:g}s is too short: one send may take "
            f"{window:g}s (notify.timeout + 3 x exim.timeout: freeze the queued mail, list the frozen, "
            f"mail), and a live sender's claim must not be taken over; use at least {2 * window:g}s")
    return cfg


def _limits(path: str, table: dict[str, Any]) -> tuple[dict[str, dict[str, Policy]], bool]:
    """``[limits]``: a global ``mode`` and ``notify_shadow``, then one table per namespace.

    ``[limits.auth]`` with ``limit``/``period`` (and ``mode``) is the invalid-recipient
    counter, as before counters had names; ``[limits.auth.bounces]`` and the like are
    the named counters, each with ``limit``/``period`` for one window or ``windows`` for
    several (``windows = []`` turns the counter off). The global ``mode`` is for the
    seed-004 counters: the invalid counter changes mode only in its own table, so that
    switching everything to shadow to measure the new counters cannot turn off blocking
    that already works.
    """
    try:
        mode = _mode(table.get("mode")) if "mode" in table else None
        notify_shadow = _bool(table.get("notify_shadow", False))
    except ValueError as exc:
        raise ConfigError(f"{path}: limits.{'mode' if 'mode' in table else 'notify_shadow'} {exc}") from exc
    def default(name: str) -> str:
        return mode if mode is not None and name != "invalid" else default_mode(name)

    policies = {ns: {n: Policy(n, p.windows, default(n)) for n, p in t.items()}
                for ns, t in _default_policies().items()}
    for ns, ns_table in table.items():
        if ns in ("mode", "notify_shadow"):
            continue
        if ns not in NAMESPACES:
            raise ConfigError(f"{path}: unknown section [limits.{ns}]: namespaces are {', '.join(NAMESPACES)}")
        ns_table = _table(path, f"limits.{ns}", ns_table)
        legacy = {k: v for k, v in ns_table.items() if not isinstance(v, dict)}
        if legacy:
            if "invalid" in ns_table:
                raise ConfigError(f"{path}: [limits.{ns}] sets {', '.join(legacy)} and has [limits.{ns}.invalid]: "
                                  "they are the same counter; keep one")
            ns_table = {**{k: v for k, v in ns_table.items() if isinstance(v, dict)}, "invalid": legacy}
        for name, counter_table in ns_table.items():
            where = f"limits.{ns}" if counter_table is legacy else f"limits.{ns}.{name}"
            if name not in COUNTERS:
                raise ConfigError(f"{path}: unknown key or counter {where}: counters are {', '.join(COUNTERS)}")
            old = policies[ns].get(name) or Policy(name, (), default(name))
            policies[ns][name] = _policy_of(path, where, name, _table(path, where, counter_table), old)
    return policies, notify_shadow


def _policy_of(path: str, where: str, name: str, table: dict[str, Any], old: Policy) -> Policy:
    for key in table:
        if key not in ("limit", "period", "windows", "mode"):
            raise ConfigError(f"{path}: unknown key {where}.{key}")
    if "windows" in table and ("limit" in table or "period" in table):
        raise ConfigError(f"{path}: {where} has windows and limit/period: use one or the other")
    try:
        mode = _mode(table["mode"]) if "mode" in table else old.mode
    except ValueError as exc:
        raise ConfigError(f"{path}: {where}.mode {exc}") from exc
    if "windows" in table:
        raw = table["windows"]
        if not isinstance(raw, list):
            raise ConfigError(f'{path}: {where}.windows must be a list such as [{{limit = 100, period = "1h"}}]')
        windows = tuple(_window(path, f"{where}.windows[{i}]", w, None) for i, w in enumerate(raw))
    elif "limit" in table or "period" in table:
        first = old.windows[0] if old.windows else None
        windows = (_window(path, where, table, first),)
    else:
        windows = old.windows
    periods = [w[1] for w in windows]
    if len(set(periods)) != len(periods):
        raise ConfigError(f"{path}: {where} has two windows of the same period; keep the one limit that matters")
    return Policy(name, windows, mode)


def _window(path: str, where: str, table: Any, default: tuple[int, float] | None) -> tuple[int, float]:
    if not isinstance(table, dict):
        raise ConfigError(f'{path}: {where} must be a table such as {{limit = 100, period = "1h"}}')
    for key in table:
        if key not in ("limit", "period", "mode", "windows"):
            raise ConfigError(f"{path}: unknown key {where}.{key}")
    values: list[Any] = []
    for key, parse in (("limit", _positive_int), ("period", _period)):
        if key in table:
            try:
                values.append(parse(table[key]))
            except ValueError as exc:
                raise ConfigError(f"{path}: {where}.{key} {exc}") from exc
        elif default is not None:
            values.append(default[0] if key == "limit" else default[1])
        else:
            raise ConfigError(f"{path}: {where} needs a {key}")
    return int(values[0]), float(values[1])


def _mode(value: Any) -> str:
    if value not in MODES:
        raise ValueError('must be "enforce" or "shadow"')
    return str(value)


def send_window(cfg: Config) -> float:
    """The longest one notification may be claimed by a live sender."""
    return cfg.notify.timeout + 3 * cfg.exim.timeout


def _table(path: str, where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {where} must be a table ([{where}])")
    return value


def _build(path: str, where: str, cls: Any, value: Any) -> Any:
    table = _table(path, where, value)
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
