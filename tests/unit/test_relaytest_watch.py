"""The mainlog watcher of issue 11: Exim's arrival lines, following the log across
rotation and restarts, and the probe scheduling, on real files and real threads.
(Lines the real Exim writes: e2e/test_relaytest_watch.py.)"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eximhook.errors import ConfigError
from eximhook.log import Logger
from eximhook.model import networks
from eximhook.relaytest.follow import MAX_LINE, Follower
from eximhook.relaytest.logline import parse_line
from eximhook.relaytest.watch import Scheduler, run

from ..support.waiting import wait_for

NETWORKS = ["192.0.2.0/24", "2001:db8::/32"]
OWN = "192.0.2.250"  # "this server", inside the networks: never probed (it would relay to itself)
PREFIX = b"2026-11-24 08:44:52 1xVm8y-0006Bv-1Y <= "


def arrival(ip: str, n: int = 0, helo: str = "client.example") -> bytes:
    """An arrival line as Exim 4.96 writes it with +incoming_port."""
    return (f"2026-11-24 08:44:{n % 60:02d} 1xVm8y-{n:06d}-1Y <= bob@test.example H=({helo}) "
            f"[{ip}]:{40000 + n % 20000} P=esmtp S=244 T=\"hi\" for alice@test.example\n").encode()


# -- the arrival lines ----------------------------------------------------------------

# Lines written by a real Exim 4.96 (tests/support/harness.py, log_selector +subject
# +received_recipients +incoming_port +pid +incoming_interface, helo_accept_junk_hosts = *)
REAL = [
    pytest.param(b"2026-11-24 08:44:51 [23766] 1xVm8x-0006BK-1Q <= bob@test.example H=(client.example) "
                 b"[127.0.0.1]:37881 I=[127.0.0.1]:60507 P=esmtp S=244 T=\"hi\" for alice@test.example",
                 "127.0.0.1", id="helo-name-port"),
    pytest.param(b"2026-11-24 08:44:51 [23772] 1xVm8x-0006BQ-2l <= bob@test.example H=([10.0.0.1]) "
                 b"[127.0.0.1]:35217 I=[127.0.0.1]:60507 P=esmtp S=240 T=\"hi\" for alice@test.example",
                 "127.0.0.1", id="helo-literal-of-another-address"),
    pytest.param(b"2026-11-24 08:44:52 [23797] 1xVm8y-0006Bp-0D <= bob@test.example H=([IPv6:::1]) [::1]:42325 "
                 b"I=[::1]:60507 P=esmtp S=218 T=\"hi\" for alice@test.example", "::1", id="ipv6-literal-helo"),
    pytest.param(b"2026-11-24 08:44:52 [23809] 1xVm8y-0006C1-2t <= bob@test.example H=(v6.example) [::1]:39703 "
                 b"I=[::1]:60507 P=esmtp S=234 T=\"hi\" for alice@test.example", "::1", id="ipv6"),
    pytest.param(b"2026-11-24 08:44:52 [23806] 1xVm8y-0006By-2D <= \"x H=[10.0.0.2] y\"@test.example H=(a b) "
                 b"[127.0.0.1]:51445 I=[127.0.0.1]:60507 P=esmtp S=306 id=\"a) [10.0.0.4] P=esmtp\"@x "
                 b"T=\"H=[10.0.0.3] \\\"q\\\" \\\\ z\" for alice@test.example", "127.0.0.1",
                 id="hostile-sender-message-id-subject"),
]

FORMS = [
    pytest.param(PREFIX + b"a@b.example H=[192.0.2.7] P=esmtp S=1", "192.0.2.7", id="address-only"),
    pytest.param(PREFIX + b"a@b.example H=[192.0.2.7]:2525 P=esmtp S=1", "192.0.2.7", id="address-port"),
    pytest.param(PREFIX + b"a@b.example H=mail.b.example [192.0.2.7] P=esmtps S=1", "192.0.2.7", id="name"),
    pytest.param(PREFIX + b"a@b.example H=mail.b.example (helo.b.example) [192.0.2.7]:25 P=esmtp S=1",
                 "192.0.2.7", id="name-and-helo"),
    pytest.param(PREFIX + b"<> R=1xVm8y-0006Bv-1Y DS H=[2001:db8::7]:25 P=esmtp S=1", "2001:db8::7",
                 id="bounce-reference-dnssec"),
    pytest.param(PREFIX + b"a@b H=[2001:DB8:0:0::7] P=esmtp S=1", "2001:db8::7", id="ipv6-canonical"),
    pytest.param(PREFIX + b"a@b H=[::ffff:192.0.2.7]:25 P=esmtp S=1", "192.0.2.7", id="ipv4-mapped"),
    pytest.param(b"2026-11-24 08:44:52.123 +0100 [77] 1rA9ea-00000000Yh-2Z <= a@b H=[192.0.2.7] P=esmtp S=1",
                 "192.0.2.7", id="millisec-timezone-pid-4.97-id"),
    pytest.param(PREFIX + b"a@b H=(x) [192.0.2.7] P=esmtp S=1 T=\"\xff\xfe ) [192.0.2.99] P=\"", "192.0.2.7",
                 id="not-utf8"),
    pytest.param(PREFIX + b"a@b.example H=([192.0.2.99]) [192.0.2.7] P=esmtp S=1", "192.0.2.7",
                 id="helo-literal-in-network"),
    pytest.param(PREFIX + b"a@b.example H=(x) [192.0.2.7] P=esmtpa A=plain:x) [192.0.2.9] S=1", "192.0.2.7",
                 id="auth-id"),
    pytest.param(PREFIX + b"root@b.example U=root P=local S=300", None, id="local-submission"),
    pytest.param(PREFIX + b"\"x H=[192.0.2.9] y\"@b U=www-data P=local S=3", None, id="local-with-fake-host"),
    pytest.param(PREFIX + b"\"x \\\" H=[192.0.2.9] \"@b U=www-data P=local S=3", None, id="escaped-quote"),
    pytest.param(PREFIX + b"\"open H=[192.0.2.9] P=esmtp S=1", None, id="unclosed-quote"),
    pytest.param(b"2026-11-24 08:44:52 1xVm8y-0006Bv-1Y (= a@b H=[192.0.2.7] P=esmtp S=1", None, id="fakereject"),
    pytest.param(b"2026-11-24 08:44:52 1xVm8y-0006Bv-1Y => a <a@b> R=r T=t H=[192.0.2.7]", None, id="delivery"),
    pytest.param(b"2026-11-24 08:44:52 H=[192.0.2.7] F=<a@b> rejected RCPT <c@d>: relay not permitted", None,
                 id="rejection"),
    pytest.param(PREFIX + b"a@b H=[192.0.2.300] P=esmtp S=1", None, id="bad-address"),
    pytest.param(PREFIX + b"a@b H=[192.0.2.7", None, id="cut-short"),
    pytest.param(b"", None, id="empty"),
]


@pytest.mark.parametrize(("line", "ip"), REAL + FORMS)
def test_parse_line(line: bytes, ip: str | None) -> None:
    assert parse_line(line) == ip


# What a client chooses: the sender (MAIL FROM, quoted local parts included), the
# Message-ID, the subject, the recipients and, with SMTP AUTH, the id. The HELO is
# what Exim's default check_helo lets through: a name or an address literal.
_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_brackets = st.sampled_from(["[10.0.0.1]", " H=[10.0.0.2]", ") [10.0.0.3]:25 P=esmtp", "H=(x) [10.0.0.4]", '"'])
_hostile = st.lists(st.one_of(_text, _brackets), max_size=6).map("".join)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_sender = st.one_of(st.just("<>"), st.from_regex(r"\A[a-z0-9.+-]{1,20}@[a-z0-9.-]{1,20}\Z"),
                    _hostile.map(lambda t: _quoted(t) + "@b.example"))
_helo = st.one_of(st.none(), st.from_regex(r"\A[A-Za-z0-9.-]{1,30}\Z"),
                  st.ip_addresses().map(lambda a: f"[{a}]" if a.version == 4 else f"[IPv6:{a}]"))
_client = st.ip_addresses()


@settings(max_examples=400, deadline=None)
@given(sender=_sender, helo=_helo, client=_client, name=st.booleans(), port=st.booleans(),
       auth=st.one_of(st.none(), _hostile), mid=_hostile, subject=_hostile, rcpts=_hostile)
def test_the_client_address_whatever_the_client_writes(sender: str, helo: str | None, client: object, name: bool,
                                                       port: bool, auth: str | None, mid: str, subject: str,
                                                       rcpts: str) -> None:
    host = ("mail.example " if name else "") + (f"({helo}) " if helo else "") + f"[{client}]"
    line = (f"2026-11-24 08:44:52 1xVm8y-0006Bv-1Y <= {sender} H={host}{':4242' if port else ''} "
            f"I=[192.0.2.1]:25 P=esmtpa A=plain:{auth or 'u'} S=1 id={mid} T={_quoted(subject)} for {rcpts}")
    expected = str(getattr(client, "ipv4_mapped", None) or client)
    assert parse_line(line.encode()) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_after_the_prefix(tail: bytes) -> None:
    ip = parse_line(PREFIX + tail)
    assert ip is None or str(ipaddress.ip_address(ip)) == ip  # only ever a canonical address


# -- following the log ----------------------------------------------------------------


@pytest.fixture
def log(tmp_path: Path) -> Logger:
    return Logger(str(tmp_path / "eximhook.log"))


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def follower(tmp_path: Path, log: Logger, **kwargs: object) -> Follower:
    return Follower(str(tmp_path / "mainlog"), str(tmp_path / "watch.state"), log, **kwargs)  # type: ignore[arg-type]


def test_first_start_skips_the_backlog_and_a_split_line_waits_for_its_end(tmp_path: Path, log: Logger) -> None:
    mainlog = tmp_path / "mainlog"
    mainlog.write_bytes(b"old 1\nold 2\n")
    f = follower(tmp_path, log)
    assert f.read() == []
    append(mainlog, b"new 1\nnew ")
    assert f.read() == [b"new 1"]
    append(mainlog, b"2 \xff\n")
    assert f.read() == [b"new 2 \xff"]


def test_an_overlong_line_is_skipped_not_the_lines_after_it(tmp_path: Path, log: Logger) -> None:
    mainlog = tmp_path / "mainlog"
    mainlog.write_bytes(b"")
    f = follower(tmp_path, log)
    append(mainlog, b"x" * (3 * MAX_LINE))
    assert f.read() == []
    append(mainlog, b"y" * 10 + b"\nnext\n")
    assert f.read() == [b"next"]


def test_rotation_by_rename_keeps_the_late_lines_of_the_old_file(tmp_path: Path, log: Logger) -> None:
    """logrotate renames, Exim writes to the old file until it sees the new name, then
    creates the new file (nocreate); a process that stat'ed before the rename writes
    one more line to the old file after that."""
    mainlog, rotated = tmp_path / "mainlog", tmp_path / "mainlog.1"
    mainlog.write_bytes(b"")
    clock = [0.0]
    f = follower(tmp_path, log, grace=10.0, clock=lambda: clock[0])
    append(mainlog, b"a\n")
    assert f.read() == [b"a"]
    os.rename(mainlog, rotated)
    append(rotated, b"b\n")
    assert f.read() == [b"b"]  # no new file yet: the old one is still followed
    append(rotated, b"c\n")
    mainlog.write_bytes(b"d\n")
    assert f.read() == [b"c", b"d"]  # the old file to its end, then the new one
    append(rotated, b"late\n")
    append(mainlog, b"e\n")
    assert f.read() == [b"late", b"e"]
    clock[0] = 11.0
    append(rotated, b"too late\n")
    assert f.read() == [b"too late"]  # read once more at its deadline, then closed
    append(rotated, b"never\n")
    assert f.read() == []
    assert f.old == []


def test_copytruncate_reads_from_the_start(tmp_path: Path, log: Logger) -> None:
    mainlog = tmp_path / "mainlog"
    mainlog.write_bytes(b"")
    f = follower(tmp_path, log)
    append(mainlog, b"one line\nanother\n")
    assert f.read() == [b"one line", b"another"]
    shutil.copyfile(mainlog, tmp_path / "mainlog.1")
    with open(mainlog, "r+b") as w:
        w.truncate(0)
    append(mainlog, b"new\n")
    assert f.read() == [b"new"]


def test_restart_resumes_where_it_stopped(tmp_path: Path, log: Logger) -> None:
    mainlog = tmp_path / "mainlog"
    mainlog.write_bytes(b"before\n")
    f = follower(tmp_path, log)
    append(mainlog, b"seen\nhalf")
    assert f.read() == [b"seen"]
    f.save()
    f.close()
    append(mainlog, b" line\nwhile away\n")
    f = follower(tmp_path, log)
    assert f.read() == [b"half line", b"while away"]


def test_restart_after_a_rotation_reads_the_rest_of_the_old_file(tmp_path: Path, log: Logger) -> None:
    mainlog = tmp_path / "mainlog"
    mainlog.write_bytes(b"")
    f = follower(tmp_path, log)
    append(mainlog, b"seen\n")
    assert f.read() == [b"seen"]
    f.save()
    f.close()
    append(mainlog, b"unseen\n")
    os.rename(mainlog, tmp_path / "mainlog.1")
    assert follower(tmp_path, log).read() == [b"unseen"]  # no new file yet
    mainlog.write_bytes(b"new\n")
    assert follower(tmp_path, log).read() == [b"unseen", b"new"]


def test_a_backlog_in_the_rotated_file_comes_first(tmp_path: Path, log: Logger) -> None:
    mainlog = tmp_path / "mainlog"
    mainlog.write_bytes(b"")
    f = follower(tmp_path, log)
    f.save()
    f.close()
    backlog = [b"%d" % n + b"x" * 1000 for n in range(3000)]  # 3 MB: several reads
    append(mainlog, b"\n".join(backlog) + b"\n")
    os.rename(mainlog, tmp_path / "mainlog.1")
    mainlog.write_bytes(b"new\n")
    f = follower(tmp_path, log)
    lines = f.read()
    f.save()  # stopped in the middle of the backlog
    f.close()
    f = follower(tmp_path, log)
    while batch := f.read():
        lines += batch
    assert lines == [*backlog, b"new"]


def test_restart_after_two_rotations_and_a_truncation(tmp_path: Path, log: Logger) -> None:
    mainlog = tmp_path / "mainlog"
    mainlog.write_bytes(b"")
    f = follower(tmp_path, log)
    append(mainlog, b"seen\n")
    f.read()
    f.save()
    f.close()
    os.rename(mainlog, tmp_path / "mainlog.2")  # the file read last is gone: the new one whole
    mainlog.write_bytes(b"new\n")
    assert follower(tmp_path, log).read() == [b"new"]
    f = follower(tmp_path, log)
    f.read()
    f.save()
    f.close()
    mainlog.write_bytes(b"x\n")  # shrank below the saved offset while away: copytruncate
    assert follower(tmp_path, log).read() == [b"x"]


def test_a_broken_state_file_starts_at_the_end(tmp_path: Path, log: Logger) -> None:
    (tmp_path / "mainlog").write_bytes(b"old\n")
    (tmp_path / "watch.state").write_bytes(b"[1, 2")
    assert follower(tmp_path, log).read() == []
    assert "ignoring unreadable state" in (tmp_path / "eximhook.log").read_text()


# -- scheduling -----------------------------------------------------------------------


class Recorder:
    """claim and probe, as the relay-test table and the SMTP probe would be called;
    probes block until ``release`` is set. Anything probed outside NETWORKS fails."""

    def __init__(self, due: Callable[[str], bool] = lambda ip: True) -> None:
        self.due = due
        self.lock = threading.Lock()
        self.claims: list[tuple[str, float]] = []
        self.probes: list[str] = []
        self.in_flight = self.peak = 0
        self.release = threading.Event()
        self.outside: list[str] = []
        self.nets = networks.parse(NETWORKS)

    def claim(self, ip: str, now: float) -> str | None:
        with self.lock:
            self.claims.append((ip, now))
            return f"p{len(self.claims)}" if self.due(ip) else None

    def probe(self, ip: str, probe_id: str) -> str:
        with self.lock:
            if not any(ipaddress.ip_address(ip) in net for net in self.nets):
                self.outside.append(ip)
            self.probes.append(ip)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        self.release.wait(30)
        with self.lock:
            self.in_flight -= 1
        return "sent"


def scheduler(rec: Recorder, log: Logger, **kwargs: int | float) -> Scheduler:
    settings: dict[str, int | float] = {"concurrency": 4, "rate_per_hour": 1000, "cooldown": 600.0, **kwargs}
    return Scheduler(rec.claim, rec.probe, log, **settings)  # type: ignore[arg-type]


def test_rate_cap_over_a_sliding_hour(log: Logger) -> None:
    rec = Recorder()
    rec.release.set()
    s = scheduler(rec, log, rate_per_hour=3, cooldown=0.0)
    try:
        assert [s.offer(f"192.0.2.{i}", 100.0 + i) for i in range(5)] == ["probing"] * 3 + ["rate"] * 2
        assert s.offer("192.0.2.9", 100.0 + 3599) == "rate"
        assert s.offer("192.0.2.9", 100.0 + 3600) == "probing"  # the first probe left the window
        assert [ip for ip, _ in rec.claims] == ["192.0.2.0", "192.0.2.1", "192.0.2.2", "192.0.2.9"]
    finally:
        s.close()


def test_cooldown_and_in_flight_deduplication(log: Logger) -> None:
    rec = Recorder(due=lambda ip: ip != "192.0.2.2")
    s = scheduler(rec, log, cooldown=600.0)
    try:
        assert s.offer("192.0.2.1", 1000.0) == "probing"
        assert s.offer("192.0.2.1", 1001.0) == "in-flight"
        assert s.offer("192.0.2.2", 1000.0) == "not-due"
        assert s.offer("192.0.2.2", 1059.0) == "not-due"  # the table is not even asked ...
        rec.release.set()
        wait_for("the probe to finish", lambda: not s.in_flight)
        assert s.offer("192.0.2.1", 1599.0) == "cooldown"
        assert s.offer("192.0.2.1", 1600.0) == "probing"
        # ... for a minute: an admin's `relaytest clear` makes it due, and its next mail gets it probed
        assert s.offer("192.0.2.2", 1060.0) == "not-due"
        assert [ip for ip, _ in rec.claims] == ["192.0.2.1", "192.0.2.2", "192.0.2.1", "192.0.2.2"]
        rec.due = lambda ip: True  # cleared
        assert s.offer("192.0.2.2", 1119.0) == "not-due"
        assert s.offer("192.0.2.2", 1120.0) == "probing"
    finally:
        rec.release.set()
        s.close()


def test_a_failing_claim_or_probe_is_logged_and_the_rest_goes_on(tmp_path: Path, log: Logger) -> None:
    def claim(ip: str, now: float) -> str | None:
        if ip.endswith(".1"):
            raise OSError("store unavailable")
        return "p"

    def probe(ip: str, probe_id: str) -> str:
        raise TimeoutError("no answer")

    s = Scheduler(claim, probe, log, concurrency=1, rate_per_hour=10, cooldown=60)
    assert s.offer("192.0.2.1", 0.0) == "error"
    assert s.offer("192.0.2.2", 0.0) == "probing"
    s.close()
    text = (tmp_path / "eximhook.log").read_text()
    assert "could not claim a probe of 192.0.2.1: OSError: store unavailable" in text
    assert "probe p of 192.0.2.2 failed: TimeoutError: no answer" in text


def test_bad_settings(log: Logger) -> None:
    with pytest.raises(ValueError, match=r"10\.1\.2\.3/8"):
        networks.parse(["10.1.2.3/8"])
    with pytest.raises(ConfigError):
        scheduler(Recorder(), log, concurrency=0)


# -- the whole loop, in a thread --------------------------------------------------------


def starts(tmp_path: Path) -> int:
    logged = tmp_path / "eximhook.log"
    return logged.read_text().count("relaytest watch: following") if logged.exists() else 0


class Watch:
    """``run`` in a thread on tmp_path/mainlog, with a Recorder's claim and probe."""

    def __init__(self, tmp_path: Path, log: Logger, rec: Recorder, **kwargs: object) -> None:
        self.stop = threading.Event()
        self.error: list[BaseException] = []
        # the test's "own address" in place of this machine's (which may be in 192.0.2.0/24)
        settings = {"concurrency": 2, "rate_per_hour": 1000, "cooldown": 600.0, "own": frozenset({OWN}), **kwargs}

        def target() -> None:
            try:
                run(str(tmp_path / "mainlog"), str(tmp_path / "watch.state"), NETWORKS, rec.claim, rec.probe,
                    log=log, stop=self.stop, poll=0.01, **settings)  # type: ignore[arg-type]
            except BaseException as exc:
                self.error.append(exc)

        started = starts(tmp_path)
        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()
        wait_for("the watcher to start", lambda: starts(tmp_path) > started or self.error)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive() and not self.error


@pytest.fixture
def watching(tmp_path: Path, log: Logger) -> Iterator[Callable[..., Watch]]:
    watches: list[Watch] = []
    recorders: list[Recorder] = []

    def start(rec: Recorder, **kwargs: object) -> Watch:
        recorders.append(rec)
        watches.append(Watch(tmp_path, log, rec, **kwargs))
        return watches[-1]

    yield start
    for rec in recorders:
        rec.release.set()
    for w in watches:
        w.close()


def test_only_the_customer_networks_are_probed(tmp_path: Path, watching: Callable[..., Watch]) -> None:
    mainlog = tmp_path / "mainlog"
    mainlog.write_bytes(b"")
    rec = Recorder()
    rec.release.set()
    watch = watching(rec)
    outside = ["198.51.100.7", "10.0.0.1", "2001:db9::1", "::ffff:10.0.0.1", OWN]
    inside = ["192.0.2.7", "2001:db8::7", "::ffff:192.0.2.8"]
    for n, ip in enumerate(outside + inside):
        append(mainlog, arrival(ip, n, helo="[192.0.2.99]"))
    wait_for("three probes", lambda: len(rec.probes) == 3)
    watch.close()
    assert sorted(rec.probes) == ["192.0.2.7", "192.0.2.8", "2001:db8::7"]
    assert [ip for ip, _ in rec.claims] == ["192.0.2.7", "2001:db8::7", "192.0.2.8"]
    assert rec.outside == []


def test_probes_in_flight_never_exceed_the_bound_and_reading_goes_on(tmp_path: Path,
                                                                     watching: Callable[..., Watch]) -> None:
    mainlog = tmp_path / "mainlog"
    mainlog.write_bytes(b"")
    rec = Recorder()
    watch = watching(rec, concurrency=3, save_every=0.0)
    for n in range(10):
        append(mainlog, arrival(f"192.0.2.{n}", n))
    wait_for("three probes", lambda: rec.in_flight == 3)
    append(mainlog, b"\n".join(b"noise" for _ in range(1000)) + b"\n" + arrival("192.0.2.200", 99))
    wait_for("the reader to pass the blocked probes", lambda: saved_offset(tmp_path) == mainlog.stat().st_size)
    assert rec.peak == 3 and len(rec.probes) == 3  # the others were passed over, not queued
    rec.release.set()
    wait_for("the probes to end", lambda: rec.in_flight == 0)
    append(mainlog, arrival("192.0.2.201", 100))
    wait_for("a fourth probe", lambda: len(rec.probes) == 4)
    watch.close()
    assert rec.probes[-1] == "192.0.2.201" and rec.peak == 3


def saved_offset(tmp_path: Path) -> int:
    try:
        return int(json.loads((tmp_path / "watch.state").read_bytes())["offset"])
    except FileNotFoundError:
        return -1


def test_a_restart_resumes_without_asking_again(tmp_path: Path, watching: Callable[..., Watch]) -> None:
    mainlog = tmp_path / "mainlog"
    mainlog.write_bytes(arrival("192.0.2.1"))  # before the first start: not read
    rec = Recorder()
    rec.release.set()
    watch = watching(rec)
    append(mainlog, arrival("192.0.2.2", 1))
    wait_for("a probe", lambda: rec.probes == ["192.0.2.2"])
    watch.close()
    append(mainlog, arrival("192.0.2.3", 2))
    rec2 = Recorder()
    rec2.release.set()
    watch = watching(rec2)
    wait_for("the line written while away", lambda: rec2.probes == ["192.0.2.3"])
    os.rename(mainlog, tmp_path / "mainlog.1")
    append(tmp_path / "mainlog.1", arrival("192.0.2.4", 3))
    mainlog.write_bytes(arrival("192.0.2.5", 4))
    wait_for("both files", lambda: rec2.probes == ["192.0.2.3", "192.0.2.4", "192.0.2.5"])
    watch.close()
    assert [ip for ip, _ in rec.claims + rec2.claims] == [f"192.0.2.{i}" for i in range(2, 6)]


def test_rate_cap_with_an_injected_clock(tmp_path: Path, watching: Callable[..., Watch]) -> None:
    mainlog = tmp_path / "mainlog"
    mainlog.write_bytes(b"")
    now = [1000.0]
    rec = Recorder()
    rec.release.set()
    watch = watching(rec, rate_per_hour=2, clock=lambda: now[0])
    for n in range(4):
        append(mainlog, arrival(f"192.0.2.{n}", n))
    wait_for("two probes", lambda: len(rec.probes) == 2)
    now[0] += 3600
    append(mainlog, arrival("192.0.2.3", 5))
    wait_for("the third", lambda: len(rec.probes) == 3)
    watch.close()
    assert rec.probes == ["192.0.2.0", "192.0.2.1", "192.0.2.3"]
    assert [t for _, t in rec.claims] == [1000.0, 1000.0, 4600.0]
