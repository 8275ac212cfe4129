"""How eximhook is doing: ``eximhook maintain`` (the timer, every minute), and the store's
probe and failure state that ``eximhook status`` reports (``status``).

A hook or the daemon that cannot write the store fails open: mail flows, uncounted. It
logs that, but a log is easy to miss, so the maintenance run probes the store itself
(as the Exim user, like the hooks), notes in ``STATE_FILE`` when the failures began, and
mails the abuse desk once they have lasted ``[notify] alert_after``, and once more when
the store takes writes again. The state file lives beside the daemon's socket, in
``/run`` (a tmpfs): a full spool or a broken store cannot keep it from being written.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from ..backends import cluster
from ..config.load import Config
from ..engine import customers, expiry, spool
from ..errors import EximhookError, Exit, UnsafePath
from ..log import Logger
from ..notify import send as notify
from ..perms import Dir, read_file, remove, replace_files, resolve_owner
from ..storage import mirror, upkeep
from ..storage.counters import Counters
from ..storage.store import Store

STATE_FILE = "health.json"


class CannotTell(Exception):
    """The probe cannot run as the Exim user: status answers UNKNOWN."""


def _probe(cfg: Config, now: float) -> str | None:
    """Do, as the Exim user, what the hooks do: write the store and the counters (a
    heartbeat; the counters are made if missing, as the first hook would), write in the
    mirror directory, and read the mirror files Exim looks up."""
    if not os.path.lexists(os.path.join(cfg.store.path, "data.mdb")):  # a link to nowhere is no missing store
        return f"there is no store in {cfg.store.path} ([store] path): eximhook export makes it"
    try:
        with Store(cfg.store.path, cfg.store.map_size, cfg.store.owner) as store:
            store.heartbeat(now)
        with Counters(cfg.store.path, cfg.store.counters_budget, cfg.store.owner) as counters:
            counters.heartbeat(now)
    except EximhookError as exc:
        return str(exc)
    problems = []
    if not os.access(cfg.store.mirror_dir, os.W_OK | os.X_OK):
        problems.append(f"cannot write in {cfg.store.mirror_dir} ([store] mirror_dir): no mirror rewrite")
    for path in mirror.mirror_paths(cfg.store.mirror_dir):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:  # Exim answers 451 to every RCPT whose lookup cannot open its file
            problems.append(f"Exim cannot read {path}: {exc.strerror}")
    lock = os.path.join(cfg.store.path, mirror.LOCK_FILE)
    if os.path.exists(lock) and not os.access(lock, os.W_OK):
        problems.append(f"cannot take the mirror lock {lock}: not writable")
    return "; ".join(problems) or None


def probe_store(cfg: Config, now: float) -> str | None:
    """Can the Exim user (``[exim] user``) do what the hooks do? None if so, else why not.

    As root the probe runs in a child that has become that user, since root can write
    where the hooks cannot (a data.mdb chowned to root passes root's test and fails every
    hook). As that user it runs here. As anyone else it cannot tell (``CannotTell``).
    """
    import pwd

    try:
        exim = pwd.getpwnam(cfg.exim.user)
    except KeyError:
        raise CannotTell(f"[exim] user {cfg.exim.user!r} does not exist: set it to the user Exim runs as") from None
    if os.geteuid() == exim.pw_uid:
        return _probe(cfg, now)
    if os.geteuid() != 0:
        raise CannotTell(f"run eximhook status as root or as {cfg.exim.user} ([exim] user): only they can "
                         "check what the hooks can do")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the Exim user, try, report through the pipe
        os.close(read_end)
        try:
            os.initgroups(exim.pw_name, exim.pw_gid)
            os.setgid(exim.pw_gid)
            os.setuid(exim.pw_uid)
            error = _probe(cfg, now)
        except BaseException as exc:
            error = f"probe as {exim.pw_name}: {exc}"
        os.write(write_end, (error or "").encode("utf-8", "replace"))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        error = f.read().decode("utf-8", "replace")
    os.waitpid(pid, 0)
    return error or None


def _state_path(cfg: Config) -> str:
    return os.path.join(os.path.dirname(cfg.serve.socket), STATE_FILE)


def read_state(cfg: Config) -> dict[str, Any] | None:
    try:
        return dict(json.loads(read_file(_state_path(cfg))))
    except (OSError, ValueError, UnsafePath):
        return None


def _write_state(cfg: Config, state: dict[str, Any] | None) -> None:
    # /run/eximhook is the Exim user's (systemd's RuntimeDirectory=): by descriptor, not by path
    path = _state_path(cfg)
    if state is None:
        remove(path)
        return
    Dir(os.path.dirname(path), create=True).close()
    # maintain runs as the Exim user (the timer) and as root (cron, by hand): written by
    # root, it must stay the store owner's to read and replace, or the next run as the
    # Exim user finds no state and alerts the abuse desk a second time
    replace_files([(path, json.dumps(state).encode())], resolve_owner(cfg.store.owner, cfg.store.path))


def maintain(cfg: Config, log: Logger, command: list[str], now: float) -> tuple[int, list[str], int]:
    """The timer's run: probe the store (alert when it has failed long enough), bring
    the mirror up to date, lift the blocks whose time has come (``[expiry]``), send the
    notifications due, tend the counters (``upkeep``: swept hourly, within their
    budget). Returns (sent, problems, exit code: UNAVAILABLE while the store refuses
    writes, TEMPFAIL for anything else left to do, else OK)."""
    problems: list[str] = []
    try:
        error = probe_store(cfg, now)
    except CannotTell as exc:
        return 0, [str(exc)], Exit.UNAVAILABLE
    state = read_state(cfg)
    if error is not None:
        problems.append(f"counting fails open: {error}")
        log.log("err", f"maintain: the store refuses writes, so hooks and daemon fail open: {error}")
        state = state or {"since": now, "mailed": False, "error": error}
        if not state["mailed"] and now - state["since"] >= cfg.notify.alert_after:
            failed = notify.send_alert(cfg, state["since"], error)
            state["mailed"] = failed is None
            if failed:
                problems.append(f"could not mail the abuse desk about it: {failed}")
    elif state is not None:
        log.log("notice", f"maintain: the store takes writes again (refused them since {state['since']:.0f})")
        if state["mailed"]:
            notify.send_alert(cfg, state["since"], None)
        state = None
    try:
        _write_state(cfg, state)
    except OSError as exc:
        problems.append(f"cannot record the health state in {_state_path(cfg)}: {exc.strerror}")
    except UnsafePath as exc:
        problems.append(f"cannot record the health state: {exc}")
    if error is not None:
        return 0, problems, Exit.UNAVAILABLE
    with Store(cfg.store.path, cfg.store.map_size, cfg.store.owner) as store:
        leftovers = mirror.temp_files(cfg.store.mirror_dir, store.path)
        for path in leftovers:
            log.log("notice", f"maintain: {path} was left by a killed mirror rewrite; rewriting removes it")
        # a rewrite removes leftovers under the lock; outside it they may be a live rewrite's
        store.set_spool_floor(cfg.spool.floor)  # an edited floor reaches the mirror now, and the customers
        customers.publish(store, cfg.customers.lookup, cfg.customers.by_domain, cfg.relay.ipv6_prefix)
        if not mirror.refresh(store, cfg.store.mirror_dir, log, force=bool(leftovers), wait=10.0):
            problems.append("the mirror files are behind the store (see the log)")
        spool.check(store, cfg.spool.guard(), now, log)
        with cluster.shared(cfg) as shared:  # with Redis, lifted on every relay (else: the next run)
            problems += expiry.lift_due(cfg, store, log, now, shared)
        try:
            counters: Counters | None = Counters(cfg.store.path, cfg.store.counters_budget, cfg.store.owner)
        except EximhookError as exc:  # the notifications go out all the same, without members' shares
            problems.append(f"could not tend the counters: {exc}")
            counters = None
        with contextlib.ExitStack() as stack:
            read = None
            if counters is not None:
                stack.enter_context(counters)
                read = stack.enter_context(cluster.reader(cfg, counters, lambda note: log.log("notice", note)))
            sent, errors = notify.deliver(cfg, store, log, command, read=read)
            if counters is not None:
                try:
                    upkeep.upkeep(store, counters, log, now, cfg.bounces.remember)
                except EximhookError as exc:
                    problems.append(f"could not tend the counters: {exc}")
    problems += [f"notification left queued: {e}" for e in errors]
    return sent, problems, Exit.TEMPFAIL if problems else Exit.OK
