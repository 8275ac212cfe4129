"""Blocks, would-blocks and counters: list, show, top, block, unblock, history, export,
notify."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ..backends import cluster
from ..backends.lmdb import exempt_in
from ..config.hookcache import View
from ..config.load import Config
from ..engine import actions, customers, expiry, owner
from ..errors import Exit
from ..log import Logger
from ..model.patterns import first as first_match
from ..model.policy import KINDS, UNITS
from ..model.subjects import FREEZING, escape, own_address, shell_quote
from ..notify import send as notify_mod
from ..notify.describe import crossed_by, describe
from ..notify.describe import shares as member_shares
from ..ops import status
from ..ops.stats import why
from ..periods import format_period, format_time
from ..storage import mirror
from ..storage.counters import Counters
from ..storage.known import networks_in
from ..storage.store import Store
from .commands import actor, dump, open_counters, open_store, subject, table
from .queue import purge, release


def send_notifications(cfg: Config, store: Store, counters: Counters) -> tuple[int, list[str]]:
    log = Logger(cfg.log.file)
    with cluster.reader(cfg, counters, lambda note: log.log("notice", note)) as read:
        return notify_mod.deliver(cfg, store, log, notify_mod.command_line(cfg), read=read)

def notify(cfg: Config, opts: argparse.Namespace) -> int:
    with open_store(cfg) as store, open_counters(cfg) as counters:
        sent, errors = send_notifications(cfg, store, counters)
    print(sent, end="")
    return Exit.TEMPFAIL if errors else Exit.OK

def _notifications(store: Store, kind: str = "blocked") -> dict[tuple[str, str], dict[str, Any]]:
    """Each subject's notification still in the outbox: queued, held, sending or stuck.
    ``kind``: the abuse desk's ("blocked") or the owner's ("owner")."""
    now = time.time()
    return {(d["ns"], d["key"]): d for d in (status.describe_item(i, now) for i in store.outbox())
            if (d["kind"] == "owner") == (kind == "owner")}

def _notification_text(item: dict[str, Any] | None) -> str:
    if item is None:
        return "none pending (sent, or none was asked for)"
    if item["state"] == "stuck":
        return f"stuck in sending since {format_time(item['since'])}: its sender died; the next notify run resends it"
    text = f"{item['state']} since {format_time(item['since'])}"
    return text + (f", {item['attempts']} failed attempt(s): {item['error']}" if item["attempts"] else "")

def list_blocks(cfg: Config, opts: argparse.Namespace) -> int:
    if opts.would_block:
        return _list_shadows(cfg, opts)
    with open_store(cfg) as store:
        blocks = store.blocks(opts.ns)
        pending = _notifications(store)
    if opts.json:
        dump([dict(b, notification=pending.get((b["ns"], b["key"]))) for b in blocks])
        return Exit.OK
    lifts = bool(cfg.expiry.after)  # with [expiry] on, when each block lifts
    rows = [[b["ns"], escape(b["key"]), format_time(b["since"]), _why(b), str(b["count"] or "-"), b["by"],
             pending[(b["ns"], b["key"])]["state"] if (b["ns"], b["key"]) in pending else "-",
             *([expiry.lift_cell(b)] if lifts else [])]
            for b in sorted(blocks, key=lambda b: b["since"])]
    print(table(["NS", "KEY", "SINCE", "REASON", "COUNT", "BY", "NOTIFICATION", *(["LIFTS"] if lifts else [])],
                rows) if rows else "no blocked subjects")
    for item in pending.values():
        if item["state"] == "stuck":
            print(f"notification for {item['ns']} {escape(item['key'])}: {_notification_text(item)}")
    for b in blocks:
        if lifts and b.get("held") is not None:
            print(f"block on {b['ns']} {escape(b['key'])}: {expiry.lift_text(cfg, b)}")
    return Exit.OK

def _why(record: dict[str, Any]) -> str:
    """``manual``, or the counter and window that tripped: ``bounces>50/1h``."""
    if record["reason"] != "limit":
        return why(record)
    if record.get("counter") == "score":
        return f"{why(record)}>{record['limit']}%"
    return f"{why(record)}>{record['limit']}/{format_period(record['period'])}"

def _list_shadows(cfg: Config, opts: argparse.Namespace) -> int:
    """Trips of counters in shadow mode: who would have been blocked under the limits
    set now, and when (trips at a limit since changed are in the history)."""
    def current(r: dict[str, Any]) -> bool:
        policy = cfg.policy(r["ns"], r["counter"], r["key"])
        return policy is not None and (r["limit"], r["period"]) in policy.windows

    with open_store(cfg) as store:
        records = [r for r in store.shadows(opts.ns) if current(r) and not store.is_blocked(r["ns"], r["key"])]
    if opts.json:
        dump(records)
        return Exit.OK
    rows = [[r["ns"], escape(r["key"]), format_time(r["since"]), _why(r), str(r["count"]),
             "exempt" if r.get("exempt") else "shadow"] for r in sorted(records, key=lambda r: r["since"])]
    print(table(["NS", "KEY", "SINCE", "WOULD-BLOCK", "COUNT", "WHY-NOT"], rows) if rows
          else "no would-block records")
    return Exit.OK

def show(cfg: Config, opts: argparse.Namespace) -> int:
    from ..ops import report

    ns, key = subject(cfg, opts)
    now = time.time()
    with (open_store(cfg) as store, open_counters(cfg) as counters,
          cluster.reader(cfg, counters, lambda note: print(f"eximhook: note: {note}", file=sys.stderr)) as get):
        block = store.get_block(ns, key)
        exempt = store.read(exempt_in(store, cfg.exempt, ns, key))
        shadows = store.shadows(ns, key)
        counts = report.subject(cfg, get, ns, key, now, now - 86400)
        events = store.history(ns, key)
        notification = _notifications(store).get((ns, key))
        to_owner = _notifications(store, "owner").get((ns, key))
        known = store.read(lambda txn: networks_in(store, txn, key, now)) if ns in ("auth", "login") else []
        view = View.of(cfg)
        customer = customers.of(view, ns, key)
        customer_block = None if customer is None else store.get_block("customer", customer)
        shares = {name: (w["period"], customers.shares(view, key, name, KINDS[name].adds, w["period"], now,
                                                      c["evidence"], get))
                  for name, c in counts.items() if ns == "customer" and name != "score"
                  for w in c["windows"][:1] if w["count"]}
    invalid = counts.get("invalid")
    if opts.json:
        legacy = None
        if invalid:  # the invalid counter as "counter" (before counters had names), for scripts
            first = invalid["windows"][0] if invalid["windows"] else {"count": 0, "limit": None, "period": None}
            legacy = {"total": invalid["total"], "in_window": first["count"], "limit": first["limit"],
                      "period": first["period"], "rcpts": invalid["evidence"], "ips": invalid["ips"]}
        dump({"ns": ns, "key": key, "block": block, "exempt": exempt, "would_block": shadows, "history": events,
              "notification": notification, "owner_notification": to_owner, "counter": legacy,
              "counters": counts, "known": known, "customer": customer,
              "customer_blocked": customer_block is not None,
              "shares": {name: [{"ns": m[0], "key": m[1], "count": m[2], "exact": m[3]} for m in members]
                         for name, (_, members) in shares.items()}})
        return Exit.OK
    print(f"{ns} {escape(key)}: " + (describe(block) if block else "not blocked" + (
        f", but its customer {escape(customer)} is: its mail is frozen" if customer and customer_block else "")))
    if block:
        print(f"  blocked at {format_time(block['since'])} by {block['by']}")
        if member := crossed_by(block):
            print(f"  crossed by its member {member}")
        if block.get("event_at") not in (None, block["since"]):  # a journaled count (serve.shared)
            print(f"  tripped by an event at {format_time(block['event_at'])}, counted when Redis answered again")
        if block.get("spool_free") is not None and ns in FREEZING:  # the others' mail is never frozen
            print(f"  spool: {block['spool_free']} KiB free then; its mail is refused, not frozen, below "
                  f"{block['spool_low']} KiB or [spool] floor ({cfg.spool.floor} KiB)")
        if lift := expiry.lift_text(cfg, block):
            print(f"  {lift}")
        print(f"  notification: {_notification_text(notification)}")
        if to_owner:
            print(f"  owner's notification to {to_owner['to']}: {_notification_text(to_owner)}")
    if exempt:
        print(f"  exempt, never blocked by a limit (still counted): {escape(exempt)}")
    for record in shadows:
        print(f"  would have been blocked at {format_time(record['since'])} "
              f"({'exempt' if record.get('exempt') else 'shadow mode'}): {_why(record)}, count {record['count']}")
    for name in counts:
        override = first_match(ns, key, cfg.overrides.get((ns, name), ()))
        if override:
            print(f"  {UNITS[name]}: limits from [overrides.{ns}.\"{escape(override[0])}\"]")
    for name, c in counts.items():
        for w in c["windows"]:
            if name == "score":  # no window of its own: the sum of its parts, the evidence below
                print(f"  combined score: {w['count']} % of the enforced counters' limits (limit {w['limit']} %, "
                      f"{w['mode']})")
                continue
            print(f"  {UNITS[name]}: {w['count']} in the last {format_period(w['period'])} (limit {w['limit']}, "
                  f"{w['mode']}), peak {w['peak']} since yesterday")
        if c["total"] and KINDS[name].adds == "sum":  # a distinct or ratio counter's total is no such figure
            print(f"  {UNITS[name]}: {c['total']} since the counter was last reset")
        for item in c["evidence"]:
            print(f"  {KINDS[name].item}: {escape(item)}")
    for name, (period, members) in shares.items():
        for line in member_shares(name, counts[name]["windows"][0]["count"], period, members):
            print(f"  {line}")
    ips = list(dict.fromkeys(ip for c in counts.values() for ip in c["ips"]))
    print(f"  client IPs: {', '.join(map(escape, ips)) or '-'}")
    if known:
        print(f"  known networks (a login block lets the account log in from these): {', '.join(known)}")
    if customer is not None:
        print(f"  customer: {escape(customer)}" + (": BLOCKED, so this member's mail is frozen too (eximhook show "
                                                    f"customer {shell_quote(customer)})" if customer_block else ""))
    if events:
        print(_history_table(events))
    return Exit.OK


def top(cfg: Config, opts: argparse.Namespace) -> int:
    """The busiest subjects of one counter: peak counts against limits, to choose limits."""
    from ..ops import report

    now = time.time()
    with open_counters(cfg) as counters:
        rows = report.top(cfg, counters, opts.counter, now, now - opts.since, opts.ns, opts.limit)
    if opts.json:
        dump(rows)
        return Exit.OK
    out = []
    for r in rows:
        for w in r["windows"]:
            window = f"{w['limit']}%" if r["counter"] == "score" else f"{w['limit']}/{format_period(w['period'])}"
            out.append([r["ns"], escape(r["key"]) if r["key"] is not None else "(long key)",
                        window, str(w["count"]), str(w["peak"]),
                        f"{100 * w['peak'] / w['limit']:.0f}%", w["mode"]])
    print(table(["NS", "KEY", "WINDOW", "NOW", "PEAK", "OF-LIMIT", "MODE"], out) if out
          else f"no {opts.counter} counted since {format_time(now - opts.since)}")
    return Exit.OK

def block(cfg: Config, opts: argparse.Namespace) -> int:
    ns, key = subject(cfg, opts)
    with open_store(cfg) as store, open_counters(cfg) as counters, cluster.shared(cfg) as shared:
        exempt = store.read(exempt_in(store, cfg.exempt, ns, key))
        if exempt:  # by hand is the admin's call; a limit never blocks it
            print(f"eximhook: note: {ns} {escape(key)} is exempt ({escape(exempt)}); blocking it by hand all the same",
                  file=sys.stderr)
        found: list[str | None] = []  # the owner's address, when [owner] manual looked for one
        resolve = owner.resolver(cfg, Logger(cfg.log.file))

        def find_owner(ns: str, key: str) -> str | None:
            found.append(resolve(ns, key))
            return found[-1]

        created = actions.block(store, counters, cfg.store.mirror_dir, ns, key, time.time(), by=actor(),
                             note=opts.reason, notify=not opts.no_notify, spool=cfg.spool.guard(),
                             owner=find_owner if cfg.owner.notify and cfg.owner.manual else None,
                             expiry=cfg.expiry.schedule(), shared=shared)
        if not created:
            print(f"{ns} {escape(key)} was blocked already")
            return Exit.OK
        print(f"blocked {ns} {escape(key)}")
        if own_address(ns, key):
            print(f"eximhook: warning: {key} is this machine's own address, and the relay snippets skip "
                  "connections from the server itself (!@[]): this block freezes nothing", file=sys.stderr)
        if not opts.no_notify:
            sent, errors = send_notifications(cfg, store, counters)
            print(f"notification sent to {cfg.notify.to}" if sent else
                  f"notification queued, not sent: {'; '.join(errors) or 'another notify run has it'}")
            for to in found:
                print(f"the owner's notification goes to {to}" if to else
                      "no owner address ([owner] lookup, pattern): only the abuse desk is told")
    return Exit.OK

def unblock(cfg: Config, opts: argparse.Namespace) -> int:
    if opts.release:
        return release(cfg, opts)
    if opts.purge:
        opts.unblock = True
        return purge(cfg, opts)
    ns, key = subject(cfg, opts)
    with open_store(cfg) as store, open_counters(cfg) as counters, cluster.shared(cfg) as shared:
        actions.unblock(store, counters, cfg.store.mirror_dir, ns, key, time.time(), by=actor(), shared=shared)
    print(f"unblocked {ns} {escape(key)}; its counter starts from zero")
    return Exit.OK

def _detail(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)

def _history_table(events: list[dict[str, Any]]) -> str:
    skip = {"seq", "ts", "event", "ns", "key", "by"}
    rows = [[format_time(e["ts"]), e["event"], e.get("ns", "-"), escape(e.get("key", "-")), e.get("by", "-"),
             escape(" ".join(f"{k}={_detail(v)}" for k, v in sorted(e.items()) if k not in skip and v is not None))]
            for e in events]
    return table(["TIME", "EVENT", "NS", "KEY", "BY", "DETAIL"], rows)

def history(cfg: Config, opts: argparse.Namespace) -> int:
    if (opts.ns is None) != (opts.key is None):
        print("eximhook: error: history takes both NS and KEY, or neither", file=sys.stderr)
        return Exit.USAGE
    ns: str | None
    key: str | None
    if opts.ns == "relaytest":  # a tested host's events (relaytest.table.NS), keyed by its address
        from ..relaytest import hosts

        try:
            ns, key = opts.ns, hosts.normalize(opts.key)
        except ValueError:
            print(f"eximhook: error: {escape(opts.key)!r} is not an IP address", file=sys.stderr)
            return Exit.USAGE
    else:
        ns, key = subject(cfg, opts) if opts.ns else (None, None)
    with open_store(cfg) as store:
        events = store.history(ns, key)
    if opts.json:
        dump(events)
    else:
        print(_history_table(events) if events else "no events")
    return Exit.OK

def export(cfg: Config, opts: argparse.Namespace) -> int:
    with open_store(cfg) as store:
        customers.publish(store, cfg.customers.lookup, cfg.customers.by_domain, cfg.relay.ipv6_prefix)
        written = mirror.rewrite(store, cfg.store.mirror_dir)
    for name, count in written.items():
        print(f"{os.path.join(cfg.store.mirror_dir, name)}: {count} key(s)")
    return Exit.OK
