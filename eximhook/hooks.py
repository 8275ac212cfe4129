"""The hooks Exim calls through ``${run}``: ``check-blocked``, ``record-invalid``, and
``record-message`` / ``record-bounce`` (seed 004). With ``eximhook serve`` the snippets
ask the daemon instead, and run these only when it does not answer.

A hook is a fresh interpreter per call, so this module imports only what the answer
needs (no argparse, json, typing, enum, tomllib or dataclasses: each costs milliseconds
against a ~10 ms interpreter start; ``bench/hooks.py`` measures it). Its contract:

- stdout carries exactly one token, ``1`` (blocked) or ``0``, with no newline; nothing
  is ever written to stderr, because Exim merges it into ``$value``;
- exit 0 means the token is a real answer; any other exit (see ``errors.Exit``) means
  the token is the configured fallback (``hooks.check`` / ``hooks.record``: ``open``
  prints ``0``), and the reason went to the log;
- a watchdog prints the fallback and exits 75 after ``hooks.timeout`` seconds, long
  before Exim's own 60 s ``${run}`` timeout would turn the RCPT into a 4xx.
"""

from __future__ import annotations

import _thread
import os
import sys
import time

from .config import hookcache
from .errors import EximhookError, Exit, UsageError
from .log import Logger
from .model.subjects import normalize
from .storage.store import Store

TYPE_CHECKING = False  # typing costs ~10 ms to import on this path
if TYPE_CHECKING:
    from typing import Any

    from .storage.counters import Counters

HOOKS = ("check-blocked", "record-invalid", "record-message", "record-bounce")
_POLICY = {"check-blocked": "check", "record-invalid": "record", "record-message": "record",
           "record-bounce": "record"}
_OPTIONS = {"record-invalid": ("--rcpt", "--ip"), "record-message": ("--count", "--sender", "--mid", "--ip", "--id"),
            "record-bounce": ("--mid", "--failed", "--ip")}
# --fallback: the snippets' ${readsocket} to eximhook serve failed and Exim ran the hook
# instead; the hook says so in the log, at most once a minute (FALLBACK_STAMP's mtime).
# --remote: a delivery report another MTA sent (see core.bounce_event).
_FLAGS = {"record-bounce": ("--fallback", "--remote")}
FALLBACK_STAMP = "fallback.stamp"
_FALLBACK_LOG_EVERY = 60.0


class _Output:
    """Writes the one token exactly once, whether the hook or its watchdog gets there first."""

    def __init__(self, fallback: str) -> None:
        self.fallback = fallback
        self.lock = _thread.allocate_lock()
        self.done = False

    def emit(self, token: str) -> None:
        with self.lock:
            if not self.done:
                self.done = True
                sys.stdout.write(token)
                sys.stdout.flush()

    def watchdog(self, seconds: float, log: Logger, name: str) -> None:
        def fire() -> None:
            time.sleep(seconds)
            with self.lock:
                if self.done:
                    return
                self.done = True
                log.log("err", f"{name}: no answer after {seconds:g}s (hooks.timeout); answered {self.fallback}")
                os.write(1, self.fallback.encode())
                os._exit(Exit.TEMPFAIL)

        _thread.start_new_thread(fire, ())


def parse(name: str, args: list[str]) -> tuple[str, str, dict[str, str]]:
    """``NS KEY [--opt VALUE]...``: NS and KEY always come first, so a key that looks
    like an option (``--ip``) is still taken as the key."""
    if name == "record-bounce":  # its subject is always a sender address
        args = ["sender", *args]
    if len(args) < 2:
        usage = "SENDER" if name == "record-bounce" else "NS KEY"
        raise UsageError(f"usage: eximhook {name} {usage}" + "".join(f" [{o} VALUE]" for o in _OPTIONS.get(name, ())))
    ns, key, rest = args[0], args[1], args[2:]
    options: dict[str, str] = {}
    allowed = _OPTIONS.get(name, ())
    while rest:
        if rest[0] in _FLAGS.get(name, ("--fallback",)):
            options[rest[0][2:]] = ""
            rest = rest[1:]
            continue
        opt, sep, value = rest[0].partition("=")
        if opt not in allowed:
            raise UsageError(f"{name}: unexpected argument {rest[0]!r}")
        if not sep:
            if len(rest) < 2:
                raise UsageError(f"{name}: {opt} needs a value")
            value, rest = rest[1], rest[1:]
        options[opt[2:]] = value
        rest = rest[1:]
    return ns, key, options


def silence_stderr() -> None:
    """Point fd 2 at /dev/null: anything there would land in Exim's ``$value``."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def _note_fallback(store_dir: str, log: Logger) -> None:
    stamp = os.path.join(store_dir, FALLBACK_STAMP)
    try:
        if time.time() - os.stat(stamp).st_mtime < _FALLBACK_LOG_EVERY:
            return
    except OSError:
        pass
    log.log("warning", "eximhook serve did not answer Exim's ${readsocket} (or answered E: its log says why): "
                       "the ${run} hook counts instead (slower, still exact); logged at most once a minute")
    try:
        os.close(os.open(stamp, os.O_WRONLY | os.O_CREAT, 0o640))
        os.utime(stamp)
    except OSError:
        pass


def run(name: str, args: list[str], config_path: str, *, standalone: bool = False) -> int:
    """Answer hook ``name``; ``standalone`` (a real process) arms the watchdog, points
    stderr at /dev/null and skips interpreter teardown, none of which suits a test
    runner calling in-process."""
    if standalone:
        silence_stderr()
    out = _Output("0")
    log = Logger()
    store: Store | None = None
    counters: Counters | None = None
    try:
        settings, cached = hookcache.hook_settings(config_path)
        log = Logger(settings["log"])
        out.fallback = "1" if settings[_POLICY[name]] == "closed" else "0"
        if standalone:
            out.watchdog(settings["timeout"], log, name)
        if not cached:
            log.log("notice", f"config cache for {config_path} was stale; run 'eximhook check-config' as root")
        ns, key, opts = parse(name, args)
        if "fallback" in opts:
            _note_fallback(settings["store"], log)
        key = normalize(ns, key, settings["ipv6_prefix"])
        store = Store(settings["store"], settings["map_size"], settings["owner"])
        if name == "check-blocked":
            blocked = store.is_blocked(ns, key)
            out.emit("1" if blocked else "0")
            if blocked:  # a block a killed process may not have mirrored yet
                from .engine import core

                core.refresh_mirror(store, settings["mirror_dir"], log)
            code = Exit.OK
        else:
            from .storage.counters import Counters

            counters = Counters(settings["store"], settings["counters_budget"], settings["owner"])
            out.emit("1" if _record(name, store, counters, settings, ns, key, opts, log) else "0")
            code = Exit.OK
    except EximhookError as exc:
        log.log("err", f"{name} {' '.join(args)}: {exc}; answered {out.fallback}")
        out.emit(out.fallback)
        code = exc.exit_code
    except Exception as exc:  # a hook must answer whatever happens: log it, fall back
        import traceback

        log.log("err", f"{name}: unexpected {type(exc).__name__}: {exc}; answered {out.fallback}")
        log.log("err", "".join(traceback.format_exc()))
        out.emit(out.fallback)
        code = Exit.SOFTWARE
    for env in (counters, store):
        if env is not None:
            env.close()  # frees this process's slot in LMDB's reader table
    if standalone:
        # Skip interpreter teardown: ~2.7 ms here, a quarter of a hook's budget. The
        # token is flushed, log lines went out in single write()s, the store is closed.
        os._exit(code)
    return code


def _record(name: str, store: Store, counters: Counters, settings: dict[str, Any], ns: str, key: str,
            opts: dict[str, str], log: Logger) -> bool:
    """Count the event as the daemon would (the same core bodies); True if blocked."""
    from .engine import core
    from .model.policy import Policy, pick
    from .model.spool import Guard

    def policy(ns: str, counter: str, key: str) -> Policy | None:
        found = settings["policies"].get(ns, {}).get(counter)
        base = {ns: {counter: Policy(counter, *found)}} if found is not None else {}
        overrides = {(ns, counter): tuple((p, Policy(counter, w, m)) for p, w, m in
                                          settings["overrides"].get((ns, counter), ()))}
        return pick(base, overrides, ns, counter, key)

    now, keep = time.time(), settings["rcpts"]
    if name == "record-invalid":
        p = policy(ns, "invalid", key)
        body = None if p is None or not p.windows else counters.event(
            ns, key, now, p, evidence=opts.get("rcpt") or None, ip=opts.get("ip") or None, keep_evidence=keep,
            keep_ips=settings["ips"])
        tallies = [] if body is None else [counters.update(body)]
    elif name == "record-message":
        count = opts.get("count", "")
        if not (count.isascii() and count.isdigit() and 0 < int(count) < 1 << 31):
            raise UsageError(f"record-message: --count {count!r} is not a number of recipients")
        sender = normalize("sender", opts["sender"]) if opts.get("sender") else ""
        tallies = counters.update(core.message_event(
            counters, policy, now, ns, key, recipients=int(count), sender=sender,
            message_id=core.message_ref(opts.get("mid", "")), ip=opts.get("ip") or None, msg=opts.get("id") or None,
            keep_evidence=keep, keep_ips=settings["ips"]))
    else:
        tallies = counters.update(core.bounce_event(
            counters, policy, now, key, message_id=core.message_ref(opts.get("mid", "")),
            failed=opts.get("failed") or None, remember=settings["remember"], keep_evidence=keep,
            remote="remote" in opts, ip=opts.get("ip") or None))

    def owner(ns: str, key: str) -> str | None:
        from .engine.owner import resolve  # only a block pays for it

        return resolve(ns, key, lookup=settings["owner_lookup"], patterns=settings["owner_pattern"],
                       ipv6_prefix=settings["ipv6_prefix"], log=log)

    blocked = store.is_blocked(ns, key)
    for tally in tallies:
        outcome = core.settle(store, tally, now, notify_shadow=settings["notify_shadow"], exempt=settings["exempt"],
                              spool=Guard(*settings["spool"]), owner=owner if settings["owner_notify"] else None,
                              expiry=settings["expiry"])
        if outcome.blocked or outcome.shadowed:
            core.make_known(store, settings["mirror_dir"], log, tally, outcome)
        blocked = blocked or outcome.blocked
    if blocked and not tallies:
        core.refresh_mirror(store, settings["mirror_dir"], log)
    return blocked
