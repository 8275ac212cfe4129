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
from .model.records import Request, is_weight
from .model.subjects import SILENT
from .storage.store import Store

TYPE_CHECKING = False  # typing costs ~10 ms to import on this path
if TYPE_CHECKING:
    from .config.hookcache import View
    from .storage.counters import Counters

HOOKS = ("check-blocked", "record-invalid", "record-message", "record-bounce")
_OPTIONS = {"record-invalid": ("--rcpt", "--ip"),
            "record-message": ("--count", "--sender", "--mid", "--ip", "--id", "--rcpts"),
            "record-bounce": ("--mid", "--failed", "--ip")}
# --fallback: the snippets' ${readsocket} to eximhook serve failed and Exim ran the hook
# instead; the hook says so in the log, at most once a minute (FALLBACK_STAMP's mtime).
# --remote: a delivery report another MTA sent (see engine.events.bounce_subjects_in).
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


def request(name: str, args: list[str], ipv6_prefix: int) -> tuple[Request, bool]:
    """The hook's argv as the daemon's request (``serve.protocol``), so that both doors
    count through one path (``engine.events``); and whether ``--fallback`` was given."""
    ns, key, opts = parse(name, args)
    fields = {k: v for k, v in opts.items() if k not in ("fallback", "remote")}
    if name == "check-blocked":
        req = Request("check-blocked", ns, key)
    elif name == "record-invalid":
        req = Request("record-invalid", ns, key, "invalid", fields)
    elif name == "record-message":
        count = fields.pop("count", "")
        if not is_weight(count):
            raise UsageError(f"record-message: --count {count!r} is not a number of recipients")
        req = Request("message", ns, key, fields=dict(fields, n=count))
    else:
        req = Request("bounce", ns, key, fields=dict(fields, remote="1") if "remote" in opts else fields)
    req.normalize(ipv6_prefix)
    return req, "fallback" in opts


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
        view, cached = hookcache.view(config_path)
        log = Logger(view.log)
        out.fallback = "1" if (view.check if name == "check-blocked" else view.record) == "closed" else "0"
        if standalone:
            out.watchdog(view.timeout, log, name)
        if not cached:
            log.log("notice", f"config cache for {config_path} was stale; run 'eximhook check-config' as root")
        req, fallback = request(name, args, view.ipv6_prefix)
        if fallback:
            _note_fallback(view.store, log)
        store = Store(view.store, view.map_size, view.owner)
        if name == "check-blocked":
            blocked = store.is_blocked(req.ns, req.key)
            out.emit("1" if blocked else "0")
            if blocked:  # a block a killed process may not have mirrored yet
                from .storage import mirror

                mirror.refresh(store, view.mirror_dir, log)
        else:
            from .storage.counters import Counters

            counters = Counters(view.store, view.counters_budget, view.owner)
            out.emit("1" if _record(req, store, counters, view, log) else "0")
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


def _record(req: Request, store: Store, counters: Counters, view: View, log: Logger) -> bool:
    """Count the request as the daemon does (``engine.events``, ``engine.settle``);
    True if any of its subjects is blocked. No daemon hears a frozen message's id here,
    so a notification waits for nothing (hold 0)."""
    from .backends.lmdb import LmdbBackend
    from .engine import events, settle

    now, backend = time.time(), LmdbBackend(store, counters)
    body = events.counts(counters, req, now, view)
    tallies = [] if body is None else counters.update(body)
    blocked = store.is_blocked(req.ns, req.key)
    for tally in tallies:
        outcome = settle.decide(backend, view, log, tally, now, hold=0.0)
        settle.after(store, view, log, tally, outcome)
        blocked = blocked or (outcome.blocked and tally.ns not in SILENT)
    if blocked and not tallies:
        from .storage import mirror

        mirror.refresh(store, view.mirror_dir, log)
    if req.op == "message" and not blocked:  # mail that went out teaches where its sender logs in
        from .engine import logins

        logins.learn(store, req, now, view)
    return blocked
