"""eximhook exempt add|remove|list: subjects that are counted but never blocked."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..backends.cluster import shared as cluster
from ..config.load import Config
from ..errors import Exit, UsageError
from ..model.patterns import check, matches
from ..model.subjects import escape, shell_quote
from .commands import actor, dump, open_store, table


def _pattern(cfg: Config, opts: argparse.Namespace) -> str:
    # argparse leaves [] for a pattern given as "--" after the separator (see subject())
    raw = opts.pattern if isinstance(opts.pattern, str) else "--"
    try:
        return check(opts.ns, raw, cfg.relay.ipv6_prefix)
    except ValueError as exc:
        raise UsageError(f"the pattern {escape(raw)!r} {exc}") from None


def add(cfg: Config, opts: argparse.Namespace) -> int:
    pattern = _pattern(cfg, opts)
    record = {"ns": opts.ns, "pattern": pattern, "reason": opts.reason or "", "by": actor(), "since": time.time()}
    with open_store(cfg) as store, cluster(cfg) as shared:
        if shared is not None:  # every relay's, from Redis (their daemons copy it)
            record["node"] = shared.node
            if not shared.exempt(record):
                print(f"{opts.ns} {escape(pattern)} was exempt already")
                return Exit.OK
        if not store.exempt(record) and shared is None:
            print(f"{opts.ns} {escape(pattern)} was exempt already")
            return Exit.OK
        blocked = [b for b in store.blocks(opts.ns) if matches(opts.ns, pattern, b["key"])]
    print(f"exempt {opts.ns} {escape(pattern)}: counted, never blocked by a limit")
    for b in blocked:
        print(f"eximhook: note: {b['ns']} {escape(b['key'])} is blocked now; an exemption does not lift a block: "
              f"eximhook release (or unblock) {b['ns']} {shell_quote(b['key'])}", file=sys.stderr)
    return Exit.OK


def remove(cfg: Config, opts: argparse.Namespace) -> int:
    pattern = _pattern(cfg, opts)
    with open_store(cfg) as store, cluster(cfg) as shared:
        removed = shared is not None and shared.unexempt(opts.ns, pattern)
        removed = store.unexempt(opts.ns, pattern, time.time(), actor()) or removed
    if not removed:
        configured = any(p == pattern for p, _ in cfg.exempt.get(opts.ns, ()))
        print(f"eximhook: error: {opts.ns} {escape(pattern)} is not exempt by eximhook exempt add"
              + (f" (it is in [exempt] of {cfg.path}: remove it there)" if configured else ""), file=sys.stderr)
        return Exit.FAILED
    print(f"{opts.ns} {escape(pattern)} is no longer exempt")
    return Exit.OK


def list_exempt(cfg: Config, opts: argparse.Namespace) -> int:
    """Both kinds: the config's [exempt] and the admin's, and the config's [overrides]."""
    rows: list[dict[str, Any]] = [{"ns": ns, "pattern": p, "reason": r, "source": "config", "by": None, "since": None}
            for ns, entries in cfg.exempt.items() for p, r in entries]
    with open_store(cfg) as store:
        rows += [dict(r, source="store") for r in sorted(store.exemptions(), key=lambda r: r["since"])]
    overrides: list[dict[str, Any]] = [
        {"ns": ns, "pattern": p, "counter": counter, "windows": [list(w) for w in policy.windows], "mode": policy.mode}
        for (ns, counter), entries in cfg.overrides.items() for p, policy in entries]
    if opts.ns:
        rows = [r for r in rows if r["ns"] == opts.ns]
        overrides = [o for o in overrides if o["ns"] == opts.ns]
    if opts.json:
        dump({"exempt": rows, "overrides": overrides})
        return Exit.OK
    from ..periods import format_period

    print(table(["NS", "PATTERN", "FROM", "REASON"], [[r["ns"], escape(r["pattern"]), r["source"] if r["by"] is None
                                                      else f"{r['by']}", escape(r["reason"]) or "-"] for r in rows])
          if rows else "no exemptions")
    if overrides:
        print(table(["NS", "PATTERN", "COUNTER", "LIMITS", "MODE"], [
            [o["ns"], escape(o["pattern"]), o["counter"],
             " or ".join(f"{lim}/{format_period(per)}" for lim, per in o["windows"]) or "not counted", o["mode"]]
            for o in overrides]))
    return Exit.OK
