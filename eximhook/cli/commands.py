"""The admin subcommands, by area (blocks, queue, system): each opens the store, calls
one engine function and prints a table for people or JSON for scripts. Return values are
exit codes (``errors.Exit``). Here: what they share."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..config.load import Config
from ..log import Logger
from ..model.subjects import normalize
from ..storage import mirror
from ..storage.counters import Counters
from ..storage.store import Store


def open_counters(cfg: Config) -> Counters:
    return Counters(cfg.store.path, cfg.store.counters_budget, cfg.store.owner)

def open_store(cfg: Config) -> Store:
    """The store, with the mirror brought up to it if a killed process left it behind
    (and a warning on stderr if that cannot be done)."""
    store = Store(cfg.store.path, cfg.store.map_size, cfg.store.owner)
    if not mirror.refresh(store, cfg.store.mirror_dir, Logger(cfg.log.file), wait=10.0):
        print(f"eximhook: warning: the mirror files in {cfg.store.mirror_dir} are behind the store and could not "
              "be rewritten (see the log): Exim does not see every block", file=sys.stderr)
    return store

def subject(cfg: Config, opts: argparse.Namespace) -> tuple[str, str]:
    # argparse drops a literal "--" given after the "--" separator and leaves [] for
    # KEY: the key was "--" itself (`eximhook show auth -- --`; a user name can be that)
    key = opts.key if isinstance(opts.key, str) else "--"
    return opts.ns, normalize(opts.ns, key, cfg.relay.ipv6_prefix)

def actor() -> str:
    """Who ran the command, for the audit log: the sudo user if there is one."""
    import pwd

    name = os.environ.get("SUDO_USER") or pwd.getpwuid(os.geteuid()).pw_name
    return f"admin:{name}"

def age(seconds: float) -> str:
    """Like mailq: 45s, 12m, 5h, 3d."""
    for unit, size, up_to in (("s", 1, 90), ("m", 60, 5400), ("h", 3600, 172800)):
        if seconds < up_to:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds // 86400)}d"

def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [headers, *rows])
    return "\n".join(line.rstrip() for line in lines)

def dump(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))
