"""The daemon, health and Debian's Exim config: serve, status, maintain, stats,
setup-exim4 (check-config: ``checks``)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..config.load import Config
from ..errors import Exit, SetupError
from ..log import Logger
from ..model.subjects import escape
from ..notify import send as notify_mod
from ..ops import health
from ..ops import status as checks_of
from .checks import exposed_secrets, unsafe_config
from .commands import dump, open_store, table


def status(cfg: Config, opts: argparse.Namespace) -> int:
    checks = checks_of.status(cfg, time.time())
    checks += [checks_of.Check("secrets", checks_of.WARNING, text) for text in exposed_secrets(cfg)]
    checks += [checks_of.Check("config", checks_of.WARNING, text) for text in unsafe_config(cfg)]
    level = max(c.level for c in checks)
    if opts.json:
        dump({"level": checks_of.LEVELS[level], "checks": [c.as_dict() for c in checks]})
    else:  # one line, as a Nagios/Icinga plugin prints it
        print(f"EXIMHOOK {checks_of.LEVELS[level]} - " + "; ".join(f"{c.name} {escape(c.text)}" for c in checks))
    return level

def maintain(cfg: Config, opts: argparse.Namespace) -> int:
    sent, problems, code = health.maintain(cfg, Logger(cfg.log.file), notify_mod.command_line(cfg), time.time())
    for problem in problems:
        print(f"eximhook maintain: {problem}", file=sys.stderr)
    print(f"{sent} notification(s) sent")
    return code

def serve(cfg: Config, opts: argparse.Namespace) -> int:
    from ..serve import server, sockets

    if opts.check:
        rtt = sockets.ping(cfg.serve.socket, cfg.serve.timeout)
        print(f"eximhook serve on {cfg.serve.socket}: up, answered ping in {rtt * 1000:.1f} ms")
        return Exit.OK
    server.serve(cfg, allow_root=opts.allow_root)
    return Exit.OK

def stats(cfg: Config, opts: argparse.Namespace) -> int:
    from ..exim.queue import Exim
    from ..ops import stats as figures_of

    with open_store(cfg) as store:
        figures = figures_of.collect(store, Exim.from_config(cfg.exim))
    if opts.prometheus:
        figures_of.prometheus(figures, opts.prometheus)
    if opts.json:
        dump(figures)
        return Exit.OK
    rows = [[kind, r["ns"], r["counter"], str(r["count"])] for kind, key in
            (("blocked now", "blocks"), ("would block", "would_block"), ("trips in all", "trips_total"))
            for r in figures[key]]
    print(table(["WHAT", "NS", "COUNTER", "COUNT"], rows) if rows else "no blocks, would-blocks or trips")
    n = figures["notifications"]
    print(f"trips: {figures['trips_last_hour']} in the last hour, {figures['trips_last_day']} in the last day")
    print(f"notifications: {n['sent_total']} sent, {n['failed_total']} failed attempts, "
          f"{n['queued']} queued, {n['held']} held, {n['sending']} being sent")
    frozen = figures.get("frozen")
    print(f"frozen messages: {frozen['total']} ({frozen['by_eximhook']} by eximhook)" if frozen else
          f"frozen messages: unknown ({figures['frozen_error']})")
    return Exit.OK


def setup_exim4(cfg: Config, opts: argparse.Namespace) -> int:
    """Debian: wire eximhook into exim4-config (add), take it out (remove), or show
    what the generated config does (test). See ``debian``."""
    from ..exim import debian

    lay = debian.layout()
    where = f"{'split' if lay.split else 'unsplit'} config in {lay.confdir}"
    if opts.action == "test":
        if not debian.is_added(lay):
            print(f"eximhook is not set up in the {where}: eximhook setup-exim4 add")
            return Exit.UNAVAILABLE
        with open_store(cfg) as store:
            blocked = [(b["ns"], b["key"]) for b in store.blocks()][:1]
        for line in debian.selftest([*blocked, ("auth", "eximhook-selftest")]):
            print(line)
        return Exit.OK
    elsewhere: list[str] = []  # remove: files of the admin's that include the snippets too
    unwired: list[str] = []  # add: the remote smtp transports whose delivery outcomes it cannot count
    if opts.action == "add":
        unwired = debian.transport_files(lay)[1]
        changed = debian.add(lay, debian.block(cfg, opts.snippets))
        try:
            debian.update()
        except SetupError:
            debian.remove(lay)  # what Exim would not take goes out again, and the config with it
            debian.update()
            raise
    else:
        elsewhere = debian.includes_elsewhere(lay, opts.snippets)
        if elsewhere and opts.uninstall:
            raise SetupError(f"{', '.join(elsewhere)} include(s) eximhook's snippets ({opts.snippets}), which go "
                             "with the package: Exim's configuration would no longer build. Take those lines out "
                             "(copy what they set into your own file), then remove the package again")
        if not debian.is_added(lay):
            # nothing changes, so Exim's config is not rebuilt (the package's prerm runs this)
            print(f"eximhook is not set up in the {where}: nothing to remove")
            return Exit.OK
        with open(lay.main_file, "rb") as f:
            before, mode = f.read(), os.fstat(f.fileno()).st_mode & 0o7777
        changed = debian.remove(lay)
        try:
            debian.update()
        except SetupError as exc:
            # Exim would not take the config without eximhook (a file of the admin's that
            # uses eximhook's macros, say): put it back, so the config in force still builds
            from ..perms import replace_files

            replace_files([(lay.main_file, before)], mode=mode)
            debian.update()
            raise SetupError(f"{exc}; eximhook is left in ({lay.main_file} restored): take out what uses its "
                             "macros first, then remove") from None
    verb = "added to" if opts.action == "add" else "removed from"
    print(f"eximhook {verb} the {where}: {', '.join(changed)}")
    print("update-exim4.conf and exim4 -bV: ok. Now: systemctl reload exim4")
    if elsewhere:
        print(f"still including eximhook's snippets: {', '.join(elsewhere)}")
    for note in unwired:
        print(f"delivery outcomes (docs/signals.md) not counted for {note}")
    return Exit.OK
