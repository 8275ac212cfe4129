"""``[limits]``, ``[overrides]`` and ``[exempt]``: which counters count, over which
windows, in which mode; for whom otherwise; and who is never blocked.

The tables are read into ``policy.Policy`` objects, one per (namespace, counter), and
per pattern (``exempt``) for the overrides.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..model import patterns as exempt
from ..model.policy import COUNTERS, DEFAULT_WINDOWS, KINDS, Policy, default_mode
from ..model.subjects import NAMESPACES
from . import values as v


def default_policies() -> dict[str, dict[str, Policy]]:
    out: dict[str, dict[str, Policy]] = {ns: {} for ns in NAMESPACES}
    for (ns, name), windows in DEFAULT_WINDOWS.items():
        out[ns][name] = Policy(name, windows, default_mode(name, ns))
    return out


def parse(path: str, table: dict[str, Any]) -> tuple[dict[str, dict[str, Policy]], bool]:
    """``[limits]``: a global ``mode`` and ``notify_shadow``, then one table per namespace.

    ``[limits.auth]`` with ``limit``/``period`` (and ``mode``) is the invalid-recipient
    counter, as before counters had names; ``[limits.auth.bounces]`` and the like are
    the named counters, each with ``limit``/``period`` for one window or ``windows`` for
    several (``windows = []`` turns the counter off), and for a ratio (failrate) the
    ``minimum`` of events a window needs before it is judged. The global ``mode`` is for the
    seed-004 counters: the invalid counter changes mode only in its own table, so that
    switching everything to shadow to measure the new counters cannot turn off blocking
    that already works.
    """
    try:
        mode = v.mode(table.get("mode")) if "mode" in table else None
        notify_shadow = v.boolean(table.get("notify_shadow", False))
    except ValueError as exc:
        raise ConfigError(f"{path}: limits.{'mode' if 'mode' in table else 'notify_shadow'} {exc}") from exc
    def default(name: str, ns: str) -> str:
        return mode if mode is not None and name != "invalid" else default_mode(name, ns)

    policies = {ns: {n: Policy(n, p.windows, default(n, ns), p.minimum) for n, p in t.items()}
                for ns, t in default_policies().items()}
    for ns, ns_table in table.items():
        if ns in ("mode", "notify_shadow"):
            continue
        if ns not in NAMESPACES:
            raise ConfigError(f"{path}: unknown section [limits.{ns}]: namespaces are {', '.join(NAMESPACES)}")
        ns_table = v.table(path, f"limits.{ns}", ns_table)
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
            old = policies[ns].get(name) or Policy(name, (), default(name, ns))
            policies[ns][name] = _policy_of(path, where, name, v.table(path, where, counter_table), old)
    return policies, notify_shadow


def _policy_of(path: str, where: str, name: str, table: dict[str, Any], old: Policy) -> Policy:
    ratio, score = KINDS[name].adds == "ratio", KINDS[name].adds == "score"
    allowed = ("limit", "mode", "windows") if score else (
        "limit", "period", "windows", "mode", *(("minimum",) if ratio else ()))
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{path}: unknown key {where}.{key}")

    try:
        minimum = v.positive_int(table["minimum"]) if "minimum" in table else old.minimum
    except ValueError as exc:
        raise ConfigError(f"{path}: {where}.minimum {exc}") from exc
    if "windows" in table and ("limit" in table or "period" in table):
        raise ConfigError(f"{path}: {where} has windows and limit/period: use one or the other")
    try:
        mode = v.mode(table["mode"]) if "mode" in table else old.mode
    except ValueError as exc:
        raise ConfigError(f"{path}: {where}.mode {exc}") from exc
    if score:  # one window: the limit, in percent of the counters' limits added up (model.score)
        if "windows" in table:
            if table["windows"] != [] or "limit" in table:
                raise ConfigError(f"{path}: {where} has a limit (percent) and no windows; windows = [] turns it off")
            return Policy(name, (), mode)
        if "limit" not in table:
            if not old.windows:
                raise ConfigError(f"{path}: {where} needs a limit")
            return Policy(name, old.windows, mode)
        try:
            return Policy(name, ((v.positive_int(table["limit"]), 0.0),), mode)
        except ValueError as exc:
            raise ConfigError(f"{path}: {where}.limit {exc}") from exc
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
    if ratio and any(limit >= 100 for limit, _ in windows):
        raise ConfigError(f"{path}: {where}: a limit of {name} is a percentage, from 1 to 99")
    return Policy(name, windows, mode, minimum)


def _window(path: str, where: str, table: Any, default: tuple[int, float] | None) -> tuple[int, float]:
    if not isinstance(table, dict):
        raise ConfigError(f'{path}: {where} must be a table such as {{limit = 100, period = "1h"}}')
    for key in table:
        if key not in ("limit", "period", "mode", "windows", "minimum"):  # _policy_of says which the counter takes
            raise ConfigError(f"{path}: unknown key {where}.{key}")
    values: list[Any] = []
    for key, parse in (("limit", v.positive_int), ("period", v.period)):
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



def parse_overrides(path: str, table: dict[str, Any], policies: dict[str, dict[str, Policy]],
                    ipv6_prefix: int) -> dict[tuple[str, str], tuple[tuple[str, Policy], ...]]:
    """``[overrides.NS."PATTERN".COUNTER]``: other limits (or mode) for the subjects a
    pattern names, such as a newsletter account's higher volume. A limit or period left
    out is the counter's own (``[limits]``)."""
    out: dict[tuple[str, str], list[tuple[str, Policy]]] = {}
    for ns, ns_table in table.items():
        if ns not in NAMESPACES:
            raise ConfigError(f"{path}: unknown section [overrides.{ns}]: namespaces are {', '.join(NAMESPACES)}")
        for raw, pattern_table in v.table(path, f"overrides.{ns}", ns_table).items():
            pattern = _pattern(path, f"overrides.{ns}", ns, raw, ipv6_prefix)
            where = f'overrides.{ns}."{raw}"'
            for name, counter_table in v.table(path, where, pattern_table).items():
                if name not in COUNTERS:
                    raise ConfigError(f"{path}: unknown counter {where}.{name}: counters are {', '.join(COUNTERS)}")
                base = policies[ns].get(name) or Policy(name, (), default_mode(name, ns))
                policy = _policy_of(path, f"{where}.{name}", name, v.table(path, f"{where}.{name}", counter_table),
                                    base)
                out.setdefault((ns, name), []).append((pattern, policy))
    return {k: tuple(entries) for k, entries in out.items()}


def parse_exempt(path: str, table: dict[str, Any], ipv6_prefix: int) -> dict[str, tuple[tuple[str, str], ...]]:
    """``[exempt]``: per namespace, a list of patterns, or a table of pattern = reason."""
    out = {}
    for ns, entries in table.items():
        if ns not in NAMESPACES:
            raise ConfigError(f"{path}: unknown key exempt.{ns}: namespaces are {', '.join(NAMESPACES)}")
        if isinstance(entries, list) and all(isinstance(e, str) for e in entries):
            pairs = [(e, "") for e in entries]
        elif isinstance(entries, dict) and all(isinstance(e, str) for e in entries.values()):
            pairs = list(entries.items())
        else:
            raise ConfigError(f'{path}: exempt.{ns} must be a list of patterns, such as ["monitor@example.com"], '
                              'or a table of pattern = "reason"')
        out[ns] = tuple((_pattern(path, f"exempt.{ns}", ns, p, ipv6_prefix), reason or "in the config")
                        for p, reason in pairs)
    return out


def _pattern(path: str, where: str, ns: str, raw: str, ipv6_prefix: int) -> str:
    try:
        return exempt.check(ns, raw, ipv6_prefix)
    except ValueError as exc:
        raise ConfigError(f"{path}: {where}: the pattern {raw!r} {exc}") from exc
