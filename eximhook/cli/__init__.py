"""``eximhook``: the hooks Exim runs and the admin's commands.

``main`` sends ``check-blocked`` and ``record-invalid`` to ``hooks`` before anything
else is imported (argparse alone costs ~8 ms); everything else is an argparse
subcommand that opens the store and calls one engine function.
"""

from __future__ import annotations

import sys

from .. import hooks
from ..config import DEFAULT_PATH, ENV_VAR, hookcache, resolve_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    config_opt, rest = _leading_config(args)
    # a hook's NS comes first, so only there is --help a request for help, not a key
    if rest and rest[0] in hooks.HOOKS and rest[1:2] not in (["-h"], ["--help"]):
        return hooks.run(rest[0], rest[1:], resolve_path(config_opt), standalone=argv is None)
    return _admin(args, standalone=argv is None)


def _leading_config(args: list[str]) -> tuple[str | None, list[str]]:
    if args and args[0] == "--config" and len(args) > 1:
        return args[1], args[2:]
    if args and args[0].startswith("--config="):
        return args[0].partition("=")[2], args[1:]
    return None, args


_UNKNOWN = 3  # `status` is a Nagios/Icinga plugin: it cannot tell, so UNKNOWN, not a sysexits code


def _admin(args: list[str], standalone: bool) -> int:
    from ..errors import EximhookError, Exit

    try:
        opts = build_parser().parse_args(args)
    except SystemExit as exc:  # argparse exits on --help (0) and on bad usage (2)
        if exc.code == 2:
            return _UNKNOWN if "status" in args else Exit.USAGE
        return int(exc.code or 0)
    if opts.func is None:  # a hook that main() could not route: options before it
        print(f"eximhook: error: {opts.command} takes --config once, before its name", file=sys.stderr)
        return Exit.USAGE
    if opts.command == "notify" and standalone:
        hooks.silence_stderr()  # notify is also run by Exim: stdout is its one token
    try:
        from ..config.load import load

        cfg = load(resolve_path(opts.config))
        hookcache.write_cache(cfg.path, None, hookcache.View.of(cfg))
        code: int = opts.func(cfg, opts)
        return code
    except EximhookError as exc:
        if opts.command == "notify":
            from ..log import Logger

            Logger().log("err", f"notify: {exc}")
            print("0", end="")
        elif opts.command == "relaytest" and opts.verb == "receive":
            # Exim's pipe transport: keep the message and retry once the config is fixed
            from ..log import Logger

            Logger().log("err", f"relaytest receive: {exc}; Exim will retry")
            return Exit.TEMPFAIL
        elif opts.command == "status":  # a monitoring check: its own line, UNKNOWN
            print(f"EXIMHOOK UNKNOWN - {exc}")
            return _UNKNOWN
        else:
            print(f"eximhook: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # `eximhook show ... | head -1`: the reader has gone, which is no error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.OK
    except OSError as exc:  # a file of ours we could not write or read: one line, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"eximhook: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return Exit.IOERR
    except KeyboardInterrupt:
        return Exit.FAILED


def _period_arg(text: str) -> float:
    import argparse

    from ..periods import parse_period

    try:
        return parse_period(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from ..model.policy import COUNTERS
    from ..model.subjects import NAMESPACES
    from . import blocks, checks, exempt, queue, relaytest, system

    parser = argparse.ArgumentParser(
        prog="eximhook", description="Block senders who mail many nonexistent recipients, cause many bounces or send "
                    "too much (Exim).")
    parser.add_argument("--config", metavar="FILE",
                        help=f"config file (default: ${ENV_VAR}, else {DEFAULT_PATH})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Any, help: str, subject: bool = False, json: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if subject:
            p.add_argument("ns", metavar="NS", help=f"namespace: {', '.join(NAMESPACES)}")
            p.add_argument("key", metavar="KEY",
                           help="the subject in NS: an authenticated id (auth), a host IP or RADIUS id (relay), a "
                                "sender address (sender), a local user name (local), a client IP (ip) or a network "
                                "(net)")
        if json:
            p.add_argument("--json", action="store_true", help="print JSON for scripts")
        p.set_defaults(func=func)
        return p

    # the two hooks are answered by hooks.run before argparse; listed here for --help
    fallback = "added by the snippets when eximhook serve did not answer: logged, once a minute at most"
    p = add("check-blocked", None, "hook: print 1 if NS KEY is blocked, else 0", subject=True)
    p.add_argument("--fallback", action="store_true", help=fallback)
    p = add("record-invalid", None, "hook: count one invalid recipient; print 1 if blocked now", subject=True)
    p.add_argument("--rcpt", help="the invalid recipient, kept as evidence")
    p.add_argument("--ip", help="the client's IP address, kept as evidence")
    p.add_argument("--fallback", action="store_true", help=fallback)
    p = add("record-message", None, "hook: count one message's recipients for NS KEY; print 1 if blocked now",
            subject=True)
    p.add_argument("--count", required=True, help="the message's number of recipients")
    p.add_argument("--sender", help="its envelope sender (counted too where [limits.sender.recipients] is set)")
    p.add_argument("--mid", help="its Message-ID header, remembered so a bounce of it counts against NS KEY")
    p.add_argument("--ip", help="the client's IP address, kept as evidence")
    p.add_argument("--id", help="its Exim message id, kept as evidence")
    p.add_argument("--fallback", action="store_true", help=fallback)
    p = add("record-bounce", None, "hook: count one bounce to SENDER (and the subject that sent the bounced message)")
    p.add_argument("sender", metavar="SENDER", help="the address the bounce goes to")
    p.add_argument("--mid", help="the bounce's References header: its last id names the bounced message")
    p.add_argument("--failed", help="the failed recipients, kept as evidence")
    p.add_argument("--remote", action="store_true",
                   help="a report another MTA sent: counted only if it names a message we remember sending, "
                        "once per reporting network")
    p.add_argument("--ip", help="with --remote: the reporting MTA's address")
    p.add_argument("--fallback", action="store_true", help=fallback)
    add("notify", blocks.notify, "hook: send queued notifications; print how many were sent")
    p = add("list", blocks.list_blocks, "list blocked subjects", json=True)
    p.add_argument("--ns", choices=NAMESPACES, help="only this namespace")
    p.add_argument("--would-block", action="store_true",
                   help="list the trips of counters in shadow mode instead: who would have been blocked")
    p = add("top", blocks.top, "the busiest subjects of a counter: peak counts against the limits", json=True)
    p.add_argument("counter", metavar="COUNTER", choices=COUNTERS,
                   help=f"one of {', '.join(COUNTERS)} (score: the combined score now, with its parts)")
    p.add_argument("--since", type=_period_arg, default=86400.0,
                   help="peaks from this long ago on, counted by day (default 1d; kept up to 7d)")
    p.add_argument("--ns", choices=NAMESPACES, help="only this namespace")
    p.add_argument("--limit", type=int, default=20, help="subjects to show (default 20)")
    add("show", blocks.show, "show a subject's block, counter and history", subject=True, json=True)
    p = add("block", blocks.block, "block a subject by hand (and notify)", subject=True)
    p.add_argument("--reason", help="why, for the record and the notification")
    p.add_argument("--no-notify", action="store_true", help="do not mail the abuse desk")
    p = add("unblock", blocks.unblock, "lift a block and reset the subject's counter", subject=True)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--release", action="store_true", help="also thaw and deliver the frozen mail")
    what.add_argument("--purge", action="store_true", help="also delete the frozen mail")
    p.set_defaults(dry_run=False)
    add("frozen", queue.frozen, "list a subject's frozen messages", subject=True, json=True)
    p = add("view", queue.view, "show a queued message: headers and the start of the body")
    p.add_argument("id", metavar="ID", help="message id (16 or 23 characters)")
    p.add_argument("--lines", type=int, default=40, help="body lines to show (default 40)")
    p.add_argument("--raw", action="store_true",
                   help="print control characters as they are (by default escaped: \\x1b, \\r ...)")
    p = add("release", queue.release, "not spam: unblock, thaw and deliver the frozen mail", subject=True)
    p.add_argument("--dry-run", action="store_true", help="only say what would be done")
    p = add("purge", queue.purge, "spam: delete the subject's frozen mail, keep the block", subject=True)
    p.add_argument("--dry-run", action="store_true", help="only say what would be done")
    p.add_argument("--unblock", action="store_true", help="lift the block afterwards")
    p = add("history", blocks.history, "the audit log, all of it or one subject's", json=True)
    p.add_argument("ns", nargs="?", metavar="NS", help="with KEY: only this subject's entries (relaytest IP: one "
                                                       "tested host's)")
    p.add_argument("key", nargs="?", metavar="KEY", help="the subject's key")
    p = add("exempt", None, "subjects that are counted but never blocked by a limit: add, remove, list")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="ACTION")
    for verb, func, help in (("add", exempt.add, "exempt the subjects PATTERN names (a key, a glob, a network)"),
                             ("remove", exempt.remove, "remove an exemption eximhook exempt add made")):
        q = verbs.add_parser(verb, help=help, description=help)
        q.add_argument("ns", metavar="NS", choices=NAMESPACES, help=f"namespace: {', '.join(NAMESPACES)}")
        q.add_argument("pattern", metavar="PATTERN",
                       help="a key (bob@example.com), a glob (*@lists.example.com) or, for relay, a network "
                            "(192.0.2.0/24, 2001:db8::/48)")
        if verb == "add":
            q.add_argument("--reason", help="why, for the record (list, show, the audit log)")
        q.set_defaults(func=func)
    q = verbs.add_parser("list", help="the exemptions (config and store) and the per-subject limits ([overrides])")
    q.add_argument("--ns", choices=NAMESPACES, help="only this namespace")
    q.add_argument("--json", action="store_true", help="print JSON for scripts")
    q.set_defaults(func=exempt.list_exempt)
    p = add("relaytest", None,
            "open-relay probing of customer hosts: list, show, probe, clear, receive, watch")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="ACTION")
    for verb, func, help in (("list", relaytest.list_hosts, "the tested hosts: status, last test, probe"),
                             ("show", relaytest.show, "one host: its record, history and blocked.nets lines"),
                             ("probe", relaytest.probe, "probe a customer host now (not within [relaytest] cooldown)"),
                             ("clear", relaytest.clear, "forget a host (unblock an open relay that was fixed): "
                                                        "it is probed again at its next mail")):
        q = verbs.add_parser(verb, help=help, description=help)
        if verb != "list":
            q.add_argument("ip", metavar="IP", help="the customer host's address")
        if verb in ("list", "show"):
            q.add_argument("--json", action="store_true", help="print JSON for scripts")
        q.set_defaults(func=func)
    q = verbs.add_parser("receive", help="run by Exim's pipe transport for the probe mailbox: a returned probe "
                                         "or its bounce on stdin")
    q.add_argument("--sender", help="the envelope sender, empty for a bounce (default: $SENDER, which Exim's pipe "
                                    "transport sets)")
    q.set_defaults(func=relaytest.receive)
    q = verbs.add_parser("watch", help="follow Exim's mainlog and probe the customer hosts that send through us, "
                                       "until SIGTERM (eximhook-relaytest.service)")
    q.add_argument("--log", help="the main log to follow (default: [relaytest] log)")
    q.set_defaults(func=relaytest.watch)
    add("export", blocks.export, "rewrite the mirror files (lsearch lists and cdb) from the store")
    p = add("serve", system.serve, "run the daemon Exim's ${readsocket} asks (as the Exim user), until SIGTERM")
    p.add_argument("--check", action="store_true", help="only ask a running daemon for a ping (for monitoring)")
    p.add_argument("--allow-root", action="store_true", help="run even as root (it should run as the Exim user)")
    add("status", system.status, "health for monitoring: store, mirror, outbox, daemon (Nagios exit codes)",
        json=True)
    add("maintain", system.maintain, "the timer's run: probe the store, repair the mirror, send notifications")
    p = add("stats", system.stats, "what eximhook holds and has done: blocks, trips, notifications, frozen mail",
            json=True)
    p.add_argument("--prometheus", metavar="FILE",
                   help="also write the figures there, for node_exporter's textfile collector (atomically)")
    p = add("setup-exim4", system.setup_exim4,
            "Debian: wire eximhook into exim4-config without editing a conffile (add), take it out (remove), "
            "or show what the generated config does (test)")
    p.add_argument("action", choices=("add", "remove", "test"),
                   help="add wires eximhook in, remove takes it out, test shows what the generated config does")
    p.add_argument("--snippets", default="/usr/share/eximhook/exim-snippets",
                   help="the directory of the Exim snippets the config includes (default: %(default)s, where "
                        "the package installs them)")
    p.add_argument("--uninstall", action="store_true",
                   help="with remove, as the package's prerm runs it: refuse while a file of Exim's configuration "
                        "other than eximhook's own lines includes the snippets, which go with the package")
    add("check-config", checks.check_config, "validate the config and refresh the hooks' cache of it")
    return parser
