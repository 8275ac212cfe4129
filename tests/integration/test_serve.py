"""``eximhook serve`` as a real process on a real socket: answers, hostile and silent
clients, a stuck store, signals, notifications, and the hooks writing beside it."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eximhook.errors import Exit
from eximhook.model.evidence import CUT_END, cut
from eximhook.serve.protocol import encode

from ..support.config import write_config
from ..support.daemon import Daemon
from ..support.fixtures import Run, Serve
from ..support.hooks import hook, outbox_drained
from ..support.mailbox import messages
from ..support.paths import EXIMHOOK
from ..support.waiting import wait_for


def record(daemon: Daemon, key: str, **fields: str) -> bytes:
    return daemon.request(encode("record-invalid", "auth", key, **fields))


def log_of(tmp_path: Path) -> str:
    path = tmp_path / "eximhook.log"
    return path.read_text() if path.exists() else ""


def test_trip_at_limit_plus_one(daemon: Daemon, tmp_path: Path, cli: Run) -> None:
    answers = [record(daemon, "Bob", rcpt=f"nobody{i}@example.com", ip="192.0.2.9") for i in range(7)]
    assert answers == [b"0"] * 5 + [b"1", b"1"], "LIMIT=5: the 6th blocks, once"
    assert daemon.request(encode("check-blocked", "auth", "bob")) == b"1"
    assert daemon.request(encode("check-blocked", "auth", "alice")) == b"0"
    assert b'"bob"' in (tmp_path / "mirror" / "blocked_authenticated_users").read_bytes(), "mirrored before 1"
    shown = json.loads(cli("show", "--json", "auth", "bob")[1])
    assert shown["block"]["count"] == 6 and shown["block"]["rcpts"][-1] == "nobody5@example.com"
    assert shown["block"]["ips"] == ["192.0.2.9"] and shown["counter"]["total"] == 7
    assert "blocked auth bob: 6 invalid recipients" in log_of(tmp_path)


def test_generic_record_counts_the_same_counter(daemon: Daemon, cli: Run) -> None:
    for _ in range(3):
        record(daemon, "carol")
    for _ in range(3):
        assert daemon.request(encode("record", "auth", "carol", kind="invalid", evidence="x@y")) in (b"0", b"1")
    assert json.loads(cli("show", "--json", "auth", "carol")[1])["block"]["count"] == 6


@pytest.mark.parametrize(
    ("data", "logged"),
    [
        pytest.param(b"launch missiles\n", "unknown operation 'launch'", id="unknown-op"),
        pytest.param(b"check-blocked auth not-base64!\n", "KEY is not base64", id="bad-base64"),
        pytest.param(b"check-blocked auth " + b"QUFB" * 20000 + b"\n", "cut at [serve] max_request before its KEY",
                     id="oversized-key"),
        pytest.param(b"x" * 70000, "cut at [serve] max_request before its KEY", id="oversized-no-newline"),
        pytest.param(b"check-blocked auth AGI=\n", "key contains NUL", id="nul-in-key"),
        pytest.param(b"check-blocked auth \n", "empty key", id="empty-key"),
        pytest.param(encode("message", "auth", "bob", n="1", sender="a\0b"), "key contains NUL", id="nul-in-sender"),
    ],
)
def test_bad_request_gets_E_and_a_log_line(daemon: Daemon, tmp_path: Path, data: bytes, logged: str) -> None:
    assert daemon.request(data) == b"E"
    assert logged in log_of(tmp_path)
    assert daemon.request(b"ping\n") == b"pong", "and the daemon goes on"


@pytest.mark.parametrize("shutdown", [True, False], ids=["eof", "newline"])
def test_an_oversized_request_is_counted_with_its_evidence_cut(daemon: Daemon, tmp_path: Path, cli: Run,
                                                               shutdown: bool) -> None:
    """Over [serve] max_request (64 KiB): the first 64 KiB are read, the rest thrown
    away up to the newline or EOF, and the event counted with its evidence cut."""
    rcpt = "x" * 100_000 + "@example.com"
    answers = [daemon.request(encode("record-invalid", "auth", "bob", ip="192.0.2.9", rcpt=rcpt + str(i)) +
                              (b"ping\n" if not shutdown else b""), shutdown=shutdown) for i in range(7)]
    assert answers == [b"0"] * 5 + [b"1", b"1"], "counted as any other: LIMIT=5, the 6th blocks"
    shown = json.loads(cli("show", "--json", "auth", "bob")[1])
    assert shown["counter"]["total"] == 7 and shown["block"]["ips"] == ["192.0.2.9"]
    kept = shown["counter"]["rcpts"][-1]
    assert kept.endswith(CUT_END) and rcpt.startswith(kept.removesuffix(CUT_END)), "cut, and marked"
    assert "longer than 65536 bytes ([serve] max_request), counted with its evidence cut" in log_of(tmp_path)


def test_request_ends_at_newline_or_at_eof(daemon: Daemon) -> None:
    assert daemon.request(b"ping") == b"pong", "Exim's default: no newline, then shutdown"
    assert daemon.request(b"ping\n", shutdown=False) == b"pong", "shutdown=no: the newline ends it"
    assert daemon.request(b"ping\nlaunch missiles\n") == b"pong", "only the first line counts"
    assert daemon.request(encode("check-blocked", "auth", "bob")[:-1] + b"\r\n") == b"0"


def still_open(s: socket.socket) -> bool:
    """The peer has neither answered nor closed ``s`` (yet)."""
    s.setblocking(False)
    try:
        s.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        s.setblocking(True)
    return False


def test_silent_client_is_dropped_and_holds_up_nobody(daemon: Daemon, tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as silent:
        silent.connect(daemon.socket)
        silent.sendall(b"check-bl")  # half a request, then nothing
        pings = [daemon.request(b"ping\n") for _ in range(20)]
        assert pings == [b"pong"] * 20 and still_open(silent), "answered while the silent one waits"
        silent.settimeout(10)
        assert silent.recv(16) == b"", "closed without an answer"
    assert "a client sent no complete request within 1s; dropped" in log_of(tmp_path), "at [serve] timeout"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=1, max_size=2000).filter(lambda b: b"\0" not in b))
def test_any_key_over_the_socket(daemon: Daemon, cli: Run, raw: bytes) -> None:
    key = raw.decode("utf-8", "surrogateescape")
    assert record(daemon, key, rcpt=key, ip=key) in (b"0", b"1")
    shown = json.loads(cli("show", "--json", "auth", "--", key)[1])
    assert shown["counter"]["rcpts"][-1] == cut(key), "the evidence arrives byte for byte, cut past its length"


def hold_lock(code: str) -> subprocess.Popen[bytes]:
    holder = subprocess.Popen(  # holds until killed
        [sys.executable, "-c", code + "\nprint('held', flush=True)\nimport signal; signal.pause()"],
        stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    return holder


def hold_counters_lock(store: Path) -> subprocess.Popen[bytes]:
    """Another process writing the counters (a hook, say) and stuck there."""
    return hold_lock(f"import fcntl, os; fd = os.open({str(store / 'counters' / 'write.lock')!r}, os.O_RDWR)\n"
                     "fcntl.flock(fd, fcntl.LOCK_EX)")


def hold_records_lock(store: Path) -> subprocess.Popen[bytes]:
    """Another process inside a write transaction of the store of records."""
    return hold_lock(f"import lmdb; env = lmdb.open({str(store)!r}, max_dbs=5, max_readers=1024, map_size=1<<32)\n"
                     "txn = env.begin(write=True)")


@pytest.mark.parametrize(("policy", "token"), [("open", b"0"), ("closed", b"1")])
def test_stuck_counters_get_the_fallback_in_time(tmp_path: Path, policy: str, token: bytes, serve: Serve) -> None:
    d = serve(write_config(tmp_path, settings={"hooks.record": policy}))
    holder = hold_counters_lock(tmp_path / "store")
    try:
        idle = d.sockets()
        with ThreadPoolExecutor(4) as pool:
            waiting = [pool.submit(record, d, f"user{i}") for i in range(4)]
            wait_for("the 4 requests taken", lambda: d.sockets() >= idle + 4)
            assert d.request(b"ping\n") == b"pong" and not any(w.done() for w in waiting), "the loop is not stuck"
            assert [w.result() for w in waiting] == [token] * 4
    finally:
        holder.kill()
        holder.wait()
    # answered at [serve] timeout (1s, below the snippets' 2s), not when the lock came free
    assert f"no answer from the store within 1s ([serve] timeout); answered {token.decode()}" in log_of(tmp_path)
    assert record(d, "user0") == b"0", "counting resumes once the lock is free"
    d.stop()


def test_a_held_records_lock_does_not_stall_counting(tmp_path: Path, serve: Serve) -> None:
    """Counting writes only the counters: a store of records busy elsewhere (an admin
    command, a hook making a block) holds up only a trip, answered at its deadline."""
    d = serve(write_config(tmp_path, limit=3))
    holder = hold_records_lock(tmp_path / "store")
    try:
        assert [record(d, "ulla") for _ in range(3)] == [b"0"] * 3
        assert "no answer from the store" not in log_of(tmp_path), "counted, not answered at the deadline"
        assert record(d, "ulla") == b"0", "the trip waits for the lock: the fallback at the deadline"
        wait_for("the deadline's log line", lambda: "no answer from the store within 1s ([serve] timeout); "
                                                    "answered 0" in log_of(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    assert record(d, "ulla") == b"1", "the block is made once the lock is free"
    d.stop()


def test_hooks_and_daemon_on_one_store_block_once(tmp_path: Path, cli: Run, serve: Serve) -> None:
    """16 hook processes and 16 daemon clients, 5 events each, LIMIT 50. (Deadlines far
    away: a fallback answer under load would be a 0 for an event still counted.)"""
    config = write_config(tmp_path, limit=50, settings={"serve.timeout": 15, "hooks.timeout": 15})
    d = serve(config)

    def by_hook(n: int) -> list[bytes]:
        return [hook(config, "record-invalid", "auth", "bot", "--rcpt", f"h{n}-{i}@x").stdout for i in range(5)]

    def by_daemon(n: int) -> list[bytes]:
        return [record(d, "bot", rcpt=f"d{n}-{i}@x") for i in range(5)]

    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(by_hook, n) for n in range(16)] + [pool.submit(by_daemon, n) for n in range(16)]
        answers = [a for f in futures for a in f.result()]
    # every count past the 50th answers 1; any of the first 50 may too, when the block
    # was made between its count and its answer ("blocked now" is the answer's meaning;
    # as test_concurrency.py's 32 hook processes)
    assert len(answers) == 160 and set(answers) <= {b"0", b"1"}, "each call answered exactly one token"
    assert answers.count(b"0") <= 50, "the 51st count trips, every later one sees the block"
    shown = json.loads(cli("show", "--json", "auth", "bot", config_path=config)[1])
    assert shown["counter"]["total"] == 160 and [e["event"] for e in shown["history"]] == ["blocked"]
    assert json.loads(cli("list", "--json", config_path=config)[1])[0]["count"] == 51
    d.stop()


def test_sighup_keeps_a_good_config_and_takes_a_new_one(daemon: Daemon, tmp_path: Path) -> None:
    config = daemon.config
    good = config.read_text()
    config.write_text(good.replace('period = "1h"', 'period = "1x"', 1))
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for("the complaint", lambda: "still serving with the config read before" in log_of(tmp_path))
    assert "limits.auth.period bad period '1x'" in log_of(tmp_path)
    assert [record(daemon, "dave") for _ in range(6)][-1] == b"1", "the old limit (5) still holds"
    config.write_text(good.replace("limit = 5", "limit = 1"))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for("the reload", lambda: "read again" in log_of(tmp_path))
    assert [record(daemon, "erin") for _ in range(2)] == [b"0", b"1"], "the new limit (1)"


def test_sigterm_answers_what_is_in_flight_then_exits(daemon: Daemon, tmp_path: Path) -> None:
    holder = hold_counters_lock(tmp_path / "store")
    try:
        answer: list[bytes] = []
        idle = daemon.sockets()
        waiting = threading.Thread(target=lambda: answer.append(record(daemon, "frank")))
        waiting.start()
        wait_for("frank's request taken", lambda: daemon.sockets() > idle)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        wait_for("the socket gone: no new connections once stopping", lambda: not os.path.exists(daemon.socket))
    finally:
        holder.kill()
        holder.wait()
    waiting.join(10)
    assert answer == [b"0"]
    assert daemon.stop() == 0
    assert "stopped after 2 requests" in log_of(tmp_path), "the start-up ping, then frank"


def test_socket_is_for_its_user_and_root_only(daemon: Daemon) -> None:
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600


def test_start_refusals(tmp_path: Path, serve: Serve) -> None:
    config = write_config(tmp_path)
    argv = [sys.executable, "-IS", EXIMHOOK, "--config", str(config), "serve"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    assert proc.returncode == Exit.USAGE and "refusing to run as root" in proc.stderr
    (tmp_path / "bad").mkdir()
    bad = write_config(tmp_path / "bad", settings={"serve.timeout": -1})
    proc = subprocess.run([*argv[:4], str(bad), "serve", "--allow-root"], capture_output=True, text=True,
                          check=False, timeout=30)
    assert proc.returncode == Exit.CONFIG and "serve.timeout must be a number of seconds" in proc.stderr
    first = serve(config)
    try:
        proc = subprocess.run([*argv, "--allow-root"], capture_output=True, text=True, check=False, timeout=30)
        assert proc.returncode == Exit.UNAVAILABLE and "another eximhook serve answers on" in proc.stderr
        assert first.request(b"ping\n") == b"pong", "and the first one is untouched"
    finally:
        first.stop(signal.SIGKILL)
    assert os.path.exists(first.socket), "a killed daemon leaves its socket"
    serve(config).stop()  # which the next one replaces


def test_socket_activation_serves_on_the_inherited_socket_and_keeps_it(tmp_path: Path) -> None:
    """As systemd with eximhook-serve.socket: the socket outlives the daemon (killed or
    stopped), so connections made meanwhile wait for the next one; a socket on another
    path than [serve] socket is refused, by name."""
    config = write_config(tmp_path)
    path = str(tmp_path / "eximhook.sock")
    held = socket.socket(socket.AF_UNIX)
    held.bind(path)
    held.listen(16)
    try:
        first = Daemon(config, held=held).start()
        assert first.request(b"ping\n") == b"pong"
        first.stop(signal.SIGTERM)
        assert os.path.exists(path), "systemd's socket: the daemon does not remove it"
        waiting = socket.socket(socket.AF_UNIX)
        waiting.connect(path)  # nobody serves: the connection waits in the backlog
        waiting.sendall(b"ping\n")
        second = Daemon(config, held=held).start()
        assert waiting.recv(16) == b"pong", "answered by the next daemon"
        waiting.close()
        second.stop()
        other = socket.socket(socket.AF_UNIX)
        other.bind(str(tmp_path / "other.sock"))
        other.listen(1)
        proc = Daemon(config, held=other).spawn()
        assert proc.wait(timeout=30) == Exit.UNAVAILABLE
        assert proc.stderr is not None and "but [serve] socket is" in proc.stderr.read().decode()
        other.close()
    finally:
        held.close()


def test_a_socket_directory_it_cannot_make_says_how(tmp_path: Path) -> None:
    config = write_config(tmp_path, settings={"serve.socket": "/dev/null/eximhook/eximhook.sock"})
    proc = subprocess.run([sys.executable, "-IS", EXIMHOOK, "--config", str(config), "serve", "--allow-root"],
                          capture_output=True, text=True, check=False, timeout=30)
    assert proc.returncode == Exit.UNAVAILABLE
    assert "cannot make /dev/null/eximhook: Not a directory" in proc.stderr and "install -d -o" in proc.stderr


def test_check_reports_up_and_down(daemon: Daemon, cli: Run) -> None:
    code, out, _ = cli("serve", "--check", config_path=daemon.config)
    assert code == 0 and out.startswith(f"eximhook serve on {daemon.socket}: up")
    daemon.stop()
    code, out, err = cli("serve", "--check", config_path=daemon.config)
    assert code == Exit.UNAVAILABLE and "does not answer" in err


def test_notification_waits_for_the_tripping_message(tmp_path: Path, mailbox: Path, serve: Serve) -> None:
    """Held up to [notify] hold for the DATA ACL's report; sent at once when it comes."""
    config = write_config(tmp_path, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"',
                          settings={"notify.hold": 60, "exim.freeze_queued": False})
    d = serve(config)
    for i in range(6):
        record(d, "gina", rcpt=f"n{i}@example.com")
    listed = json.loads(subprocess.run([sys.executable, "-IS", EXIMHOOK, "--config", str(config), "list", "--json"],
                                       capture_output=True, check=True).stdout)
    assert [b["notification"]["state"] for b in listed] == ["held"]
    assert messages(mailbox) == [], "held"
    assert d.request(encode("frozen", "auth", "gina", id="1xVbMq-0004rw-1g")) == b"1"
    [msg] = wait_for("the notification", lambda: messages(mailbox), 10)  # type: ignore[misc]
    assert "Frozen messages (1 when this was sent): 1xVbMq-0004rw-1g" in msg.get_content()
    # the outbox thread forgets the subject once deliver() has returned, a moment after
    # the stand-in has written the mail: from then on, nothing waits
    wait_for("nothing to wait for", lambda: d.request(encode("frozen", "auth", "gina", id="1xVbMq-0004rw-2h")) == b"0",
             5)
    assert d.request(encode("frozen", "auth", "hank", id="1xVbMq-0004rw-3i")) == b"0"
    d.stop()


def test_notification_without_a_report_goes_after_the_hold(tmp_path: Path, mailbox: Path, serve: Serve,
                                                           cli: Run) -> None:
    config = write_config(tmp_path, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"',
                          settings={"notify.hold": 1.5, "exim.freeze_queued": False})
    d = serve(config)
    for _ in range(6):
        record(d, "ivan")
    wait_for("the notification", lambda: messages(mailbox), 10)
    wait_for("the outbox drained", lambda: outbox_drained(config), 10)
    [msg] = messages(mailbox)
    assert "Frozen messages (0 when this was sent): -" in msg.get_content(), "no report came"
    # the daemon's own record of when it blocked and when the mail went: after the hold
    events = {e["event"]: e["ts"] for e in json.loads(cli("history", "--json", "auth", "ivan", config_path=config)[1])}
    assert events["notified"] - events["blocked"] >= 1.5
    d.stop()


def test_restart_sends_what_was_queued_once(tmp_path: Path, mailbox: Path, cli: Run, serve: Serve) -> None:
    config = write_config(tmp_path, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"',
                          settings={"notify.hold": 0.2, "exim.freeze_queued": False})
    (mailbox / "FAIL").touch()
    d = serve(config)
    for key in ("jack", "kate"):
        for _ in range(6):
            record(d, key)
    wait_for("two failed sends", lambda: log_of(tmp_path).count("notification left queued") >= 2, 10)
    d.stop()
    (mailbox / "FAIL").unlink()
    d.start()
    with ThreadPoolExecutor(4) as pool:  # the maintenance timer's notify, at the same moment
        sent = list(pool.map(lambda _: hook(config, "notify").stdout, range(4)))
    wait_for("both notifications", lambda: len(messages(mailbox)) == 2, 10)
    wait_for("the outbox drained", lambda: outbox_drained(config), 10)
    assert sorted(str(m["Subject"]) for m in messages(mailbox)) == ["user jack blocked", "user kate blocked"]
    assert sum(int(s or b"0") for s in sent) <= 2
    events = [e["event"] for e in json.loads(cli("history", "--json", config_path=config)[1])]
    assert events.count("notified") == 2
    d.stop()


def test_tells_systemd_when_ready_and_when_stopping(tmp_path: Path) -> None:
    """Type=notify in debian/eximhook.eximhook-serve.service: READY=1 once the socket listens."""
    config = write_config(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(20)
        proc = subprocess.Popen([sys.executable, "-IS", EXIMHOOK, "--config", str(config), "serve", "--allow-root"],
                                env={"NOTIFY_SOCKET": str(tmp_path / "notify")}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            assert notify.recv(64) == b"READY=1"
            assert Daemon(config).request(b"ping\n") == b"pong", "listening by then"
            proc.send_signal(signal.SIGTERM)
            assert notify.recv(64) == b"STOPPING=1"
            assert proc.wait(20) == 0
        finally:
            proc.kill()


def block_behind_the_mirror(tmp_path: Path, key: str) -> Path:
    """Block auth KEY in the store only, as a process killed before its mirror rewrite
    leaves it; returns the lsearch file that should come to list it."""
    from eximhook.model.records import block_record
    from eximhook.storage.store import Store

    with Store(str(tmp_path / "store")) as store:
        store.block(block_record("auth", key, 1.0, by="test", reason="manual"), 1.0, notify=False)
    return tmp_path / "mirror" / "blocked_authenticated_users"


def test_daemon_repairs_a_lagging_mirror_by_itself(tmp_path: Path, cli: Run, serve: Serve) -> None:
    config = write_config(tmp_path, settings={"serve.check_interval": 0.5})
    cli("export", config_path=config)
    d = serve(config)
    listed = block_behind_the_mirror(tmp_path, "zoe")
    wait_for("the daemon's own check", lambda: b'"zoe"' in listed.read_bytes(), 10)
    d.stop()


def test_a_flood_of_bad_requests_is_one_log_line(daemon: Daemon, tmp_path: Path) -> None:
    for _ in range(50):
        assert daemon.request(b"junk\n") == b"E"
    assert log_of(tmp_path).count("unknown operation 'junk'") == 1


def test_a_blocked_answer_repairs_a_lagging_mirror(tmp_path: Path, cli: Run, serve: Serve) -> None:
    """As a hook does: no waiting for check_interval (an hour here)."""
    config = write_config(tmp_path, settings={"serve.check_interval": 3600})
    cli("export", config_path=config)
    d = serve(config)
    listed = block_behind_the_mirror(tmp_path, "yves")
    assert b'"yves"' not in listed.read_bytes()
    assert record(d, "yves") == b"1"
    wait_for("the repair", lambda: b'"yves"' in listed.read_bytes(), 10)


def test_a_held_socket_outlives_daemons_that_stop(tmp_path: Path) -> None:
    """eximhook-serve.socket hands the daemon its socket (fd 3, LISTEN_FDS, LISTEN_PID).
    From Python 3.13, asyncio and uvloop remove a Unix server's file when it closes, one
    handed over included: stopped cleanly twice, the daemon must leave the path, so that
    the third, on the same socket, answers there (Debian 13; no restart of the unit)."""
    config = write_config(tmp_path)
    path = tmp_path / "eximhook.sock"
    held = socket.socket(socket.AF_UNIX)
    try:
        held.bind(str(path))
        held.listen(64)
        for _ in range(2):
            daemon = Daemon(config, held=held).start()  # up: it answered a ping through the path
            assert daemon.stop() == 0
            assert path.exists(), f"Python {sys.version.split()[0]} removed the socket a daemon was handed"
        daemon = Daemon(config, held=held).start()
        assert daemon.request(b"ping\n") == b"pong"
        assert daemon.stop() == 0
    finally:
        held.close()


def test_check_config_says_a_running_daemon_needs_a_reload(config: Path, cli: Run, serve: Serve) -> None:
    """An admin who edits the config and runs check-config, as its header says, learns
    that the daemon goes on with the config it read at its start until SIGHUP."""
    reload = "systemctl reload eximhook-serve.service"
    code, out, _ = cli("check-config")
    assert code == Exit.OK and reload not in out, "no daemon: nothing to reload"
    serve(config)
    code, out, _ = cli("check-config")
    assert code == Exit.OK and reload in out


def test_a_fresh_store_has_its_mirror_files_before_the_first_answer(tmp_path: Path, serve: Serve, cli: Run) -> None:
    """Exim's cdb lookup of a file that does not exist fails, and the snippets answer 451
    to every counted sender: a daemon on a store no one has mirrored yet writes the files
    before it answers; check-config says when they are missing."""
    config = write_config(tmp_path)
    cdb = tmp_path / "mirror" / "blocked_subjects.cdb"
    assert not cdb.exists()
    code, out, _ = cli("check-config", config_path=config)
    assert code == 0 and f"warning: {cdb} does not exist yet" in out and "run eximhook export" in out
    d = serve(config)
    assert d.request(b"ping\n") == b"pong" and cdb.exists()
    assert (tmp_path / "mirror" / "blocked_authenticated_users").exists()
    assert "does not exist yet" not in cli("check-config", config_path=config)[1]
