"""The subject's mail in Exim's queue: frozen, view, release, purge."""

from __future__ import annotations

import argparse
import time

from ..backends.cluster import shared as cluster
from ..config.load import Config
from ..engine import actions
from ..errors import Exit
from ..exim.queue import Exim
from ..model.subjects import escape
from .commands import actor, age, dump, open_counters, open_store, subject, table


def frozen(cfg: Config, opts: argparse.Namespace) -> int:
    ns, key = subject(cfg, opts)
    now = time.time()
    messages = Exim.from_config(cfg.exim).messages(ns, key, frozen=True)
    with open_store(cfg) as store:  # mail the snippets froze, and mail freeze_queued froze at the block
        queued = {i for e in store.history(ns, key) if e["event"] == "froze-queued" for i in e.get("ids", [])}
    by_us = {m.id: m.frozen_by_us or m.id in queued for m in messages}
    if opts.json:
        dump([{"id": m.id, "sender": m.sender, "recipients": m.recipients, "recipient_count": len(m.recipients),
               "subject": m.subject, "age_s": round(now - m.received), "size": m.size,
               "frozen_by_eximhook": by_us[m.id]} for m in messages])
        return Exit.OK
    rows = [[m.id, age(now - m.received), str(m.size), escape(m.sender),
             str(len(m.recipients)), escape(m.subject)[:60], "yes" if by_us[m.id] else "no"] for m in messages]
    print(table(["ID", "AGE", "SIZE", "SENDER", "RCPTS", "SUBJECT", "BY-EXIMHOOK"], rows) if rows
          else f"no frozen messages from {ns} {escape(key)}")
    return Exit.OK

def view(cfg: Config, opts: argparse.Namespace) -> int:
    print(Exim.from_config(cfg.exim).view(opts.id, opts.lines, raw=opts.raw), end="")
    return Exit.OK

def _report(verb: str, ns: str, key: str, ids: list[str], lifted: bool, dry_run: bool) -> None:
    would = "would be " if dry_run else ""
    print(f"{len(ids)} message(s) from {ns} {escape(key)} {would}{verb}: {' '.join(ids) or '-'}")
    if lifted:
        print(f"block on {ns} {escape(key)} {would}lifted")

def release(cfg: Config, opts: argparse.Namespace) -> int:
    ns, key = subject(cfg, opts)
    with open_store(cfg) as store, open_counters(cfg) as counters, cluster(cfg) as shared:
        ids, lifted = actions.release(store, counters, Exim.from_config(cfg.exim), cfg.store.mirror_dir, ns, key,
                                   time.time(), by=actor(), dry_run=opts.dry_run, shared=shared)
    _report("released (thawed, delivery started)", ns, key, ids, lifted, opts.dry_run)
    return Exit.OK

def purge(cfg: Config, opts: argparse.Namespace) -> int:
    ns, key = subject(cfg, opts)
    with open_store(cfg) as store, open_counters(cfg) as counters, cluster(cfg) as shared:
        ids, lifted = actions.purge(store, counters, Exim.from_config(cfg.exim), cfg.store.mirror_dir, ns, key,
                                 time.time(), by=actor(), dry_run=opts.dry_run, lift=opts.unblock,
                                 remember=cfg.bounces.remember, shared=shared)
    _report("removed from the queue", ns, key, ids, lifted, opts.dry_run)
    return Exit.OK
