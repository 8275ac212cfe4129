"""The admin subcommands: each opens the store, calls one core function and prints a
table for people or JSON for scripts. Return values are exit codes (``errors.Exit``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from . import core, health, mirror
from . import notify as notify_mod
from ._log import Logger
from .config import Config
from .counters import Counters
from .errors import Exit, SetupError
from .exim import Exim
from .periods import format_period, format_time
from .policy import UNITS
from .store import Store
from .subjects import escape, normalize


def open_counters(cfg: Config) -> Counters:
    return Counters(cfg.store.path, cfg.store.map_size, cfg.store.owner)


def open_store(cfg: Config) -> Store:
    """The store, with the mirror brought up to it if a killed process left it behind
    (and a warning on stderr if that cannot be done)."""
    store = Store(cfg.store.path, cfg.store.map_size, cfg.store.owner)
    if not core.refresh_mirror(store, cfg.store.mirror_dir, Logger(cfg.log.file), wait=10.0):
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


def send_notifications(cfg: Config, store: Store) -> tuple[int, list[str]]:
    return notify_mod.deliver(cfg, store, Logger(cfg.log.file), notify_mod.command_line(cfg))


def notify(cfg: Config, opts: argparse.Namespace) -> int:
    with open_store(cfg) as store:
        sent, errors = send_notifications(cfg, store)
    print(sent, end="")
    return Exit.TEMPFAIL if errors else Exit.OK


def _notifications(store: Store) -> dict[tuple[str, str], dict[str, Any]]:
    """Each subject's notification still in the outbox: queued, held, sending or stuck."""
    now = time.time()
    return {(d["ns"], d["key"]): d for d in (health.describe_item(i, now) for i in store.outbox())}


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
    rows = [[b["ns"], escape(b["key"]), format_time(b["since"]), _why(b), str(b["count"] or "-"), b["by"],
             pending[(b["ns"], b["key"])]["state"] if (b["ns"], b["key"]) in pending else "-"]
            for b in sorted(blocks, key=lambda b: b["since"])]
    print(table(["NS", "KEY", "SINCE", "REASON", "COUNT", "BY", "NOTIFICATION"], rows) if rows
          else "no blocked subjects")
    for item in pending.values():
        if item["state"] == "stuck":
            print(f"notification for {item['ns']} {escape(item['key'])}: {_notification_text(item)}")
    return Exit.OK


def _why(record: dict[str, Any]) -> str:
    """``manual``, or the counter and window that tripped: ``bounces>50/1h``."""
    if record["reason"] != "limit":
        return str(record["reason"])
    return f"{record.get('counter') or 'invalid'}>{record['limit']}/{format_period(record['period'])}"


def _list_shadows(cfg: Config, opts: argparse.Namespace) -> int:
    """Trips of counters in shadow mode: who would have been blocked under the limits
    set now, and when (trips at a limit since changed are in the history)."""
    def current(r: dict[str, Any]) -> bool:
        policy = cfg.policy(r["ns"], r["counter"])
        return policy is not None and (r["limit"], r["period"]) in policy.windows

    with open_store(cfg) as store:
        records = [r for r in store.shadows(opts.ns) if current(r) and not store.is_blocked(r["ns"], r["key"])]
    if opts.json:
        dump(records)
        return Exit.OK
    rows = [[r["ns"], escape(r["key"]), format_time(r["since"]), _why(r), str(r["count"])]
            for r in sorted(records, key=lambda r: r["since"])]
    print(table(["NS", "KEY", "SINCE", "WOULD-BLOCK", "COUNT"], rows) if rows else "no would-block records")
    return Exit.OK


def show(cfg: Config, opts: argparse.Namespace) -> int:
    from . import report

    ns, key = subject(cfg, opts)
    now = time.time()
    with open_store(cfg) as store, open_counters(cfg) as counters:
        block = store.get_block(ns, key)
        shadows = store.shadows(ns, key)
        counts = report.subject(cfg, counters, ns, key, now, now - 86400)
        events = store.history(ns, key)
        notification = _notifications(store).get((ns, key))
    invalid = counts.get("invalid")
    if opts.json:
        legacy = None
        if invalid:  # the invalid counter as "counter" (before counters had names), for scripts
            first = invalid["windows"][0] if invalid["windows"] else {"count": 0, "limit": None, "period": None}
            legacy = {"total": invalid["total"], "in_window": first["count"], "limit": first["limit"],
                      "period": first["period"], "rcpts": invalid["evidence"], "ips": invalid["ips"]}
        dump({"ns": ns, "key": key, "block": block, "would_block": shadows, "history": events,
              "notification": notification, "counter": legacy, "counters": counts})
        return Exit.OK
    print(f"{ns} {escape(key)}: " + (notify_mod.describe(block) if block else "not blocked"))
    if block:
        print(f"  blocked at {format_time(block['since'])} by {block['by']}")
        print(f"  notification: {_notification_text(notification)}")
    for record in shadows:
        print(f"  would have been blocked at {format_time(record['since'])} (shadow mode): {_why(record)}, "
              f"count {record['count']}")
    for name, c in counts.items():
        for w in c["windows"]:
            print(f"  {UNITS[name]}: {w['count']} in the last {format_period(w['period'])} (limit {w['limit']}, "
                  f"{w['mode']}), peak {w['peak']} since yesterday")
        if c["total"]:
            print(f"  {UNITS[name]}: {c['total']} since the counter was last reset")
        for item in c["evidence"]:
            print(f"  {_EVIDENCE[name]}: {escape(item)}")
    ips = list(dict.fromkeys(ip for c in counts.values() for ip in c["ips"]))
    print(f"  client IPs: {', '.join(map(escape, ips)) or '-'}")
    if events:
        print(_history_table(events))
    return Exit.OK


_EVIDENCE = {"invalid": "invalid recipient", "bounces": "bounce for", "recipients": "message"}


def top(cfg: Config, opts: argparse.Namespace) -> int:
    """The busiest subjects of one counter: peak counts against limits, to choose limits."""
    from . import report

    now = time.time()
    with open_counters(cfg) as counters:
        rows = report.top(cfg, counters, opts.counter, now, now - opts.since, opts.ns, opts.limit)
    if opts.json:
        dump(rows)
        return Exit.OK
    out = []
    for r in rows:
        for w in r["windows"]:
            out.append([r["ns"], escape(r["key"]) if r["key"] is not None else "(long key)",
                        f"{w['limit']}/{format_period(w['period'])}", str(w["count"]), str(w["peak"]),
                        f"{100 * w['peak'] / w['limit']:.0f}%", w["mode"]])
    print(table(["NS", "KEY", "WINDOW", "NOW", "PEAK", "OF-LIMIT", "MODE"], out) if out
          else f"no {opts.counter} counted since {format_time(now - opts.since)}")
    return Exit.OK


def block(cfg: Config, opts: argparse.Namespace) -> int:
    ns, key = subject(cfg, opts)
    with open_store(cfg) as store, open_counters(cfg) as counters:
        created = core.block(store, counters, cfg.store.mirror_dir, ns, key, time.time(), by=actor(),
                             note=opts.reason, notify=not opts.no_notify)
        if not created:
            print(f"{ns} {escape(key)} was blocked already")
            return Exit.OK
        print(f"blocked {ns} {escape(key)}")
        if not opts.no_notify:
            sent, errors = send_notifications(cfg, store)
            print(f"notification sent to {cfg.notify.to}" if sent else
                  f"notification queued, not sent: {'; '.join(errors) or 'another notify run has it'}")
    return Exit.OK


def unblock(cfg: Config, opts: argparse.Namespace) -> int:
    if opts.release:
        return release(cfg, opts)
    if opts.purge:
        opts.unblock = True
        return purge(cfg, opts)
    ns, key = subject(cfg, opts)
    with open_store(cfg) as store, open_counters(cfg) as counters:
        core.unblock(store, counters, cfg.store.mirror_dir, ns, key, time.time(), by=actor())
    print(f"unblocked {ns} {escape(key)}; its counter starts from zero")
    return Exit.OK


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
    print(Exim.from_config(cfg.exim).view(opts.id, opts.lines), end="")
    return Exit.OK


def _report(verb: str, ns: str, key: str, ids: list[str], lifted: bool, dry_run: bool) -> None:
    would = "would be " if dry_run else ""
    print(f"{len(ids)} message(s) from {ns} {escape(key)} {would}{verb}: {' '.join(ids) or '-'}")
    if lifted:
        print(f"block on {ns} {escape(key)} {would}lifted")


def release(cfg: Config, opts: argparse.Namespace) -> int:
    ns, key = subject(cfg, opts)
    with open_store(cfg) as store, open_counters(cfg) as counters:
        ids, lifted = core.release(store, counters, Exim.from_config(cfg.exim), cfg.store.mirror_dir, ns, key,
                                   time.time(), by=actor(), dry_run=opts.dry_run)
    _report("released (thawed, delivery started)", ns, key, ids, lifted, opts.dry_run)
    return Exit.OK


def purge(cfg: Config, opts: argparse.Namespace) -> int:
    ns, key = subject(cfg, opts)
    with open_store(cfg) as store, open_counters(cfg) as counters:
        ids, lifted = core.purge(store, counters, Exim.from_config(cfg.exim), cfg.store.mirror_dir, ns, key,
                                 time.time(), by=actor(), dry_run=opts.dry_run, lift=opts.unblock,
                                 remember=cfg.bounces.remember)
    _report("removed from the queue", ns, key, ids, lifted, opts.dry_run)
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
        written = mirror.rewrite(store, cfg.store.mirror_dir)
    for name, count in written.items():
        print(f"{os.path.join(cfg.store.mirror_dir, name)}: {count} key(s)")
    return Exit.OK


def status(cfg: Config, opts: argparse.Namespace) -> int:
    checks = health.status(cfg, time.time())
    level = max(c.level for c in checks)
    if opts.json:
        dump({"level": health.LEVELS[level], "checks": [c.as_dict() for c in checks]})
    else:  # one line, as a Nagios/Icinga plugin prints it
        print(f"EXIMHOOK {health.LEVELS[level]} - " + "; ".join(f"{c.name} {escape(c.text)}" for c in checks))
    return level


def maintain(cfg: Config, opts: argparse.Namespace) -> int:
    sent, problems, code = health.maintain(cfg, Logger(cfg.log.file), notify_mod.command_line(cfg), time.time())
    for problem in problems:
        print(f"eximhook maintain: {problem}", file=sys.stderr)
    print(f"{sent} notification(s) sent")
    return code


def serve(cfg: Config, opts: argparse.Namespace) -> int:
    from .serve import server, sockets

    if opts.check:
        rtt = sockets.ping(cfg.serve.socket, cfg.serve.timeout)
        print(f"eximhook serve on {cfg.serve.socket}: up, answered ping in {rtt * 1000:.1f} ms")
        return Exit.OK
    server.serve(cfg, allow_root=opts.allow_root)
    return Exit.OK


def setup_exim4(cfg: Config, opts: argparse.Namespace) -> int:
    """Debian: wire eximhook into exim4-config (add), take it out (remove), or show
    what the generated config does (test). See ``debian``."""
    from . import debian

    lay = debian.layout(opts.confdir)
    where = f"{'split' if lay.split else 'unsplit'} config in {lay.confdir}"
    if opts.action == "test":
        with open_store(cfg) as store:
            blocked = [(b["ns"], b["key"]) for b in store.blocks()][:1]
        for line in debian.selftest([*blocked, ("auth", "eximhook-selftest")]):
            print(line)
        return Exit.OK if debian.is_added(lay) else Exit.UNAVAILABLE
    if opts.action == "add":
        cdb = os.path.join(cfg.store.mirror_dir, "blocked_subjects.cdb")
        changed = debian.add(lay, debian.block(cfg.serve.socket, cfg.path, cdb, opts.snippets))
        try:
            debian.update()
        except SetupError:
            debian.remove(lay)  # what Exim would not take goes out again, and the config with it
            debian.update()
            raise
    else:
        changed = debian.remove(lay)
        debian.update()
    verb = "added to" if opts.action == "add" else "removed from"
    print(f"eximhook {verb} the {where}: {', '.join(changed) or 'nothing to do'}")
    print("update-exim4.conf and exim4 -bV: ok. Now: systemctl reload exim4")
    return Exit.OK


def check_config(cfg: Config, opts: argparse.Namespace) -> int:
    print(f"config {cfg.path}: ok")
    print(f"  store {cfg.store.path}, mirrors in {cfg.store.mirror_dir}")
    for ns, table_ in cfg.policies.items():
        for name, policy in table_.items():
            if policy.windows:
                windows = " or ".join(f"more than {lim} {UNITS[name]} in {format_period(per)}"
                                      for lim, per in policy.windows)
                verb = "blocks" if policy.enforced else "is recorded as a would-block (shadow mode)"
                print(f"  limits.{ns}.{name}: {windows} {verb}")
    print(f"  notify {cfg.notify.to} via {' '.join(cfg.notify.sendmail)}")
    print(f"  hooks fail {cfg.hooks.check} (check-blocked), {cfg.hooks.record} (record-invalid)")
    print(f"  eximhook serve on {cfg.serve.socket}, answering within {cfg.serve.timeout:g}s")
    if cfg.serve.timeout >= 2:
        print(f"  note: [serve] timeout {cfg.serve.timeout:g}s: keep it below the snippets' EXIMHOOK_WAIT (2s unless "
              "you changed it), or Exim runs the ${run} hook while the daemon may still count the same event")
    import pwd

    try:
        pwd.getpwnam(cfg.exim.user)
    except KeyError:
        print(f"  note: [exim] user {cfg.exim.user!r} does not exist here: set it to the user Exim runs as "
              "(eximhook status and maintain check as that user)")
    return Exit.OK
