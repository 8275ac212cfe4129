"""eximhook relaytest list|show|probe|clear|receive|watch: open-relay probing (CHANGELOG: seed 003).

list, show, probe and receive first settle the table (UNKNOWN past ``unknown_after``:
OK); every command brings ``blocked.nets`` up to the table, so a rewrite a killed
process left undone is made by the next command that looks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ..config.load import Config
from ..errors import EximhookError, Exit, UsageError
from ..log import Logger
from ..relaytest import hosts, nets, table
from ..storage.store import Store
from .commands import actor, age, dump
from .commands import table as text_table


def _open(cfg: Config) -> Store:
    if not cfg.relaytest.enabled:
        raise UsageError(f"relay testing is off: [relaytest] networks is empty in {cfg.path}")
    return Store(cfg.store.path, cfg.store.map_size, cfg.store.owner)


def _settle(cfg: Config, store: Store, now: float) -> None:
    table.settle(store, now, cfg.relaytest.unknown_after)
    nets.sync(store, cfg.relaytest.blocked_nets)


def _ip(cfg: Config, opts: argparse.Namespace) -> str:
    try:
        return hosts.normalize(opts.ip)
    except ValueError:
        raise UsageError(f"{opts.ip!r} is not an IP address") from None


def _row(r: dict[str, Any], now: float) -> list[str]:
    last = r["history"][-1] if r.get("history") else {}
    return [r["ip"], r["status"], f"{age(now - r['last_tested'])} ago", r.get("probe_id") or "-",
            r.get("outcome") or "-", str(last.get("event", "-"))]


def list_hosts(cfg: Config, opts: argparse.Namespace) -> int:
    now = time.time()
    with _open(cfg) as store:
        _settle(cfg, store, now)
        rows = sorted(table.records(store), key=lambda r: (r["status"] != table.BLOCK, r["ip"]))
    if opts.json:
        dump(rows)
    elif rows:
        print(text_table(["IP", "STATUS", "TESTED", "PROBE", "OUTCOME", "LAST EVENT"], [_row(r, now) for r in rows]))
    else:
        print("no hosts tested")
    return Exit.OK


def show(cfg: Config, opts: argparse.Namespace) -> int:
    now, ip = time.time(), _ip(cfg, opts)
    with _open(cfg) as store:
        _settle(cfg, store, now)
        record = table.get(store, ip)
    listed = nets.listed(cfg.relaytest.blocked_nets, ip)
    if opts.json:
        dump({"ip": ip, "customer": hosts.is_customer(ip, cfg.relaytest.networks), "record": record,
              "blocked_nets": listed})
        return Exit.OK if record or listed else Exit.FAILED
    customer = hosts.is_customer(ip, cfg.relaytest.networks)
    print(f"{ip}: {'a customer' if customer else hosts.why_not(ip, cfg.relaytest.networks)}")
    if record is None:
        print("  never tested")
    else:
        print(f"  status {record['status']}, tested {age(now - record['last_tested'])} ago, "
              f"probe {record.get('probe_id') or '-'}, outcome {record.get('outcome') or '-'}")
        for e in record.get("history", []):
            detail = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("ts", "event"))
            print(f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e['ts']))}  {e['event']}  {detail}")
    for line in listed:
        print(f"  listed in {cfg.relaytest.blocked_nets}: {line}")
    return Exit.OK if record or listed else Exit.FAILED


def probe(cfg: Config, opts: argparse.Namespace) -> int:
    from ..relaytest.probe import NotACustomer, send_probe

    now, ip = time.time(), _ip(cfg, opts)
    rt = cfg.relaytest
    if not hosts.is_customer(ip, rt.networks):
        raise NotACustomer(f"{hosts.why_not(ip, rt.networks)}: not probed")
    with _open(cfg) as store:
        _settle(cfg, store, now)
        probe_id = table.claim(store, ip, now, 0.0, rt.cooldown, by=actor())
        if probe_id is None:
            record = table.get(store, ip) or {}
            why = ("it is BLOCK: eximhook relaytest clear it first" if record.get("status") == table.BLOCK else
                   f"it was probed {age(now - record['last_tested'])} ago, within [relaytest] cooldown")
            print(f"eximhook: error: {ip} not probed: {why}", file=sys.stderr)
            return Exit.FAILED
        result = send_probe(cfg, ip, probe_id, now, store=store)
        record = table.get(store, ip) or {}
    detail = record.get("history", [{}])[-1].get("detail", "")
    print(f"{ip}: probe {probe_id}: {result} ({detail}); status {record.get('status')}")
    return Exit.OK


def clear(cfg: Config, opts: argparse.Namespace) -> int:
    ip = _ip(cfg, opts)
    with _open(cfg) as store:
        record = table.clear(store, ip, time.time(), actor())
        nets.sync(store, cfg.relaytest.blocked_nets)
    if record is None:
        print(f"eximhook: error: {ip} has no relay-test record", file=sys.stderr)
        return Exit.FAILED
    print(f"{ip}: cleared (was {record['status']}); its next mail through us gets it probed again")
    for line in nets.listed(cfg.relaytest.blocked_nets, ip):
        print(f"eximhook: note: {cfg.relaytest.blocked_nets} still lists it, by a line of yours: {line}",
              file=sys.stderr)
    return Exit.OK


def receive(cfg: Config, opts: argparse.Namespace) -> int:
    """Exim's pipe transport: exit 0 once the message is dealt with, also when it is junk
    or forged (logged: a failure would bounce it back to whoever sent it); 75 when the
    store or blocked.nets cannot be written now, so Exim keeps it and tries again."""
    from ..notify import send as notify
    from ..relaytest.receive import process, read_message

    log = Logger(cfg.log.file)
    data = read_message(sys.stdin.buffer)
    if not cfg.relaytest.enabled:
        log.log("warning", "relaytest receive: a message for the probe mailbox, but [relaytest] networks is empty: "
                           "dropped")
        return Exit.OK
    try:
        with Store(cfg.store.path, cfg.store.map_size, cfg.store.owner) as store:
            # the pipe transport gives the envelope sender in the environment (tainted data
            # may not be in its command's arguments); empty for a bounce
            sender = opts.sender if opts.sender is not None else os.environ.get("SENDER")
            results = process(cfg, store, data, sender, time.time(), log)
            _settle(cfg, store, time.time())
            if "blocked" in results:
                notify.deliver(cfg, store, log, notify.command_line(cfg))
    except EximhookError as exc:  # the store, blocked.nets, an unreadable key: retried once fixed
        log.log("err", f"relaytest receive: {exc}; Exim will retry")
        return Exit.TEMPFAIL
    return Exit.OK


def watch(cfg: Config, opts: argparse.Namespace) -> int:
    """The watcher (debian/eximhook.eximhook-relaytest.service, as the Exim user): follow the
    mainlog and probe the customers who send, until SIGTERM (``relaytest.watch``)."""
    import signal
    import threading

    from ..relaytest.probe import send_probe
    from ..relaytest.watch import run

    rt, log, stop = cfg.relaytest, Logger(cfg.log.file), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with _open(cfg) as store:
        def claim(ip: str, now: float) -> str | None:
            table.settle(store, now, rt.unknown_after)  # a host silent since its last probe is OK, and due again
            return table.claim(store, ip, now, rt.retest, rt.cooldown)

        def probe(ip: str, probe_id: str) -> str:
            return send_probe(cfg, ip, probe_id, time.time(), store=store)

        run(opts.log or rt.log, rt.state, list(rt.networks), claim, probe, concurrency=rt.concurrency,
            rate_per_hour=rt.rate, cooldown=rt.cooldown, log=log, stop=stop)
    return Exit.OK
