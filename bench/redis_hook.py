"""Issue 13's first question: may a ``${run}`` hook talk to Redis itself, or must it go through the daemon?

A hook is a fresh interpreter per call (``python3 -IS bin/eximhook``, as the snippets start it). Talking to
Redis directly, every call would pay ``import redis``, a connection and a round trip. This measures that,
with a real redis-server on a Unix socket in a temp dir (no persistence; stopped by its pid at the end), and
a real ``eximhook serve`` on a temp config, against what the hooks and the snippets cost today:

Per fresh process, interleaved round by round so machine noise hits all alike (median wall time):
  baseline              python -I -S -c pass
  import redis          ... + the venv's site-packages on sys.path (as bin/eximhook adds it) + import redis
  redis check           ... + connect + GET of the subject's block key
  redis record          ... + connect + EVALSHA of a counting script (ZSET window + block key lookup)
  hook check-blocked    the existing hook on the local LMDB store
  hook record-invalid   the existing hook on the local LMDB store
``python -X importtime`` of ``import redis`` in that interpreter (median of the cumulative time, and the
parts that cost most), and, in this process without a fork (what ``${readsocket}`` and the daemon pay):
  readsocket check / record   one ``${readsocket}``-style call to eximhook serve: connect, send, shut down
                              the write side, read to EOF (check-blocked; record-invalid, nothing trips)
  daemon->redis EVALSHA / GET one round trip on the daemon's persistent connection
  connect+EVALSHA             a new connection per call, as a hook would have

    /opt/eximhook-redis/bin/python bench/redis_hook.py [--rounds 200] [--calls 3000]

As root (the daemon runs with --allow-root), with eximhook and redis>=5 installed non-editable in the venv.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import benchlib
from benchlib import median, percentile, readsocket, table
from servelib import BenchDaemon

# What a counting call would run: the window of one subject as a sorted set, trimmed,
# added to, counted; and whether the subject is blocked. Representative of the work, not
# the backend's script (server time is microseconds either way; the question is the client's).
SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(ARGV[2] * 1000))
return {redis.call('ZCARD', KEYS[1]), redis.call('EXISTS', KEYS[2])}
"""


def start_redis(where: str) -> tuple[subprocess.Popen[bytes], str]:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    sock = os.path.join(where, "redis.sock")
    proc = subprocess.Popen([server, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", "--dir", where,
                             "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"redis-server exited {proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sock)
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, sock
        except OSError:
            time.sleep(0.02)
    proc.kill()
    sys.exit("redis-server did not answer within 20 s")


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env={}, cwd="/")
    return time.perf_counter() - start


def import_times(python: str, lib: str, runs: int) -> tuple[float, list[tuple[str, float]]]:
    """Median cumulative microseconds of ``import redis`` under -X importtime, and the modules it pulls in
    that cost most, their own imports included (medians over runs)."""
    totals: list[float] = []
    cumulatives: dict[str, list[float]] = {}
    for _ in range(runs):
        proc = subprocess.run([python, "-IS", "-X", "importtime", "-c", f"import sys; sys.path.append({lib!r}); "
                               "import redis"], capture_output=True, text=True, check=True, env={}, cwd="/")
        for line in proc.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
            cumulatives.setdefault(name, []).append(float(cumulative))
            if name == "redis":  # the top-level package, not indented: everything it pulled in
                totals.append(float(cumulative))
    top = sorted(((name, statistics.median(v)) for name, v in cumulatives.items() if name != "redis"),
                 key=lambda x: -x[1])[:6]
    return statistics.median(totals), top


def in_process(calls: int, call: Callable[[], object]) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="fresh processes per case")
    parser.add_argument("--calls", type=int, default=3000, help="in-process calls per case")
    parser.add_argument("--python", default=sys.executable)
    opts = parser.parse_args()
    benchlib.installed_eximhook()
    if os.geteuid() != 0:
        sys.exit("run this as root: the daemon runs with --allow-root")
    import redis

    python = opts.python
    script = shutil.which("eximhook", path=os.path.dirname(python))
    if script is None:
        sys.exit(f"no eximhook next to {python}: pip install . into that venv first")
    lib = sysconfig.get_paths()["purelib"]  # what bin/eximhook appends under -S
    tmp = tempfile.mkdtemp(prefix="eximhook-bench-redis-")
    redis_proc, rsock = start_redis(tmp)
    daemon = None
    try:
        client = redis.Redis(unix_socket_path=rsock)
        sha = client.script_load(SCRIPT)
        daemon = BenchDaemon(Path(tmp), "serve")
        daemon.start()
        config = str(daemon.config)
        hook = [python, "-IS", script, "--config", config]
        subprocess.run([*hook, "check-blocked", "auth", "warmup"], check=False, stdout=subprocess.DEVNULL)

        head = f"import sys; sys.path.append({lib!r}); import redis, time; "
        conn = f"r = redis.Redis(unix_socket_path={rsock!r}); "
        cases = {
            "baseline (python -I -S -c pass)": lambda i: [python, "-I", "-S", "-c", "pass"],
            "import redis": lambda i: [python, "-IS", "-c", head],
            "redis check (import+connect+GET)": lambda i: [
                python, "-IS", "-c", head + conn + f"r.get('eximhook:{{auth:user{i % 50}}}:block')"],
            "redis record (import+connect+EVALSHA)": lambda i: [
                python, "-IS", "-c", head + conn + f"r.evalsha({sha!r}, 2, 'eximhook:{{auth:user{i % 50}}}:w', "
                f"'eximhook:{{auth:user{i % 50}}}:block', time.time(), 3600, 'e{i}')"],
            "hook check-blocked (LMDB)": lambda i: [*hook, "check-blocked", "auth", f"user{i % 50}"],
            "hook record-invalid (LMDB)": lambda i: [*hook, "record-invalid", "auth", f"user{i % 50}", "--rcpt",
                                                     f"nobody{i}@example.com", "--ip", "192.0.2.1"],
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for i in range(opts.rounds):
            for name, argv in cases.items():
                times[name].append(timed(argv(i)))
        imported, top = import_times(python, lib, max(10, opts.rounds // 10))

        from eximhook.serve import protocol

        check = protocol.encode("check-blocked", "auth", "user1")
        record = protocol.encode("record-invalid", "auth", "user1", rcpt="nobody@example.com", ip="192.0.2.1")
        assert readsocket(daemon.socket, check) == b"0" and readsocket(daemon.socket, record) == b"0"
        n = 0

        def evalsha() -> None:
            nonlocal n
            n += 1
            client.evalsha(sha, 2, "eximhook:{auth:user1}:w", "eximhook:{auth:user1}:block", time.time(), 3600, n)

        def fresh_evalsha() -> None:
            r = redis.Redis(unix_socket_path=rsock)
            r.evalsha(sha, 2, "eximhook:{auth:user2}:w", "eximhook:{auth:user2}:block", time.time(), 3600, "x")
            r.close()

        inproc = {
            "readsocket check-blocked": lambda: readsocket(daemon.socket, check),
            "readsocket record-invalid": lambda: readsocket(daemon.socket, record),
            "daemon->redis EVALSHA": evalsha,
            "daemon->redis GET": lambda: client.get("eximhook:{auth:user1}:block"),
            "connect+EVALSHA (per call)": fresh_evalsha,
        }
        lat = {name: in_process(opts.calls, fn) for name, fn in inproc.items()}
    finally:
        if daemon is not None:
            daemon.stop()
        redis_proc.send_signal(signal.SIGTERM)
        try:
            redis_proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            redis_proc.kill()
            redis_proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    base = median(times["baseline (python -I -S -c pass)"])
    print(f"redis-py {redis.__version__}, python {sys.version.split()[0]} at {python}, {os.cpu_count()} CPUs")
    print(f"\nPer fresh process ({opts.rounds} rounds, medians):")
    print(table(["case", "ms", "x baseline"],
                [(name, f"{median(v) * 1000:.2f}", f"{median(v) / base:.2f}") for name, v in times.items()]))
    print(f"\npython -X importtime, import redis: {imported / 1000:.1f} ms cumulative (median); the costliest parts:")
    print(table(["module (with what it imports)", "ms"], [(name, f"{us / 1000:.2f}") for name, us in top]))
    print(f"\nIn this process, no fork ({opts.calls} calls each):")
    print(table(["call", "p50 us", "p99 us"], [(name, f"{median(v) * 1e6:.0f}", f"{percentile(v, 99) * 1e6:.0f}")
                                              for name, v in lat.items()]))

    m = {name: median(v) * 1000 for name, v in times.items()}
    direct_rec, direct_chk = m["redis record (import+connect+EVALSHA)"], m["redis check (import+connect+GET)"]
    hook_rec, hook_chk = m["hook record-invalid (LMDB)"], m["hook check-blocked (LMDB)"]
    rs = median(lat["readsocket record-invalid"]) * 1000
    hop = median(lat["daemon->redis EVALSHA"]) * 1000
    print(f"""
Conclusion: a hook that talked to Redis itself would pay import redis ({imported / 1000:.1f} ms under
-X importtime) plus a connection and a round trip on every fork: {direct_rec:.1f} ms for a record and
{direct_chk:.1f} ms for a check, against {hook_rec:.1f} / {hook_chk:.1f} ms for today's LMDB hooks
({direct_rec / hook_rec:.2f}x / {direct_chk / hook_chk:.2f}x) and {base * 1000:.1f} ms for a bare interpreter,
while one ${{readsocket}} call to the daemon costs {rs:.2f} ms in-process and the daemon's own hop to Redis
on its persistent connection {hop:.3f} ms. So the hooks do not talk to Redis: Exim asks the daemon through
${{readsocket}}, and the daemon alone holds the Redis connection (and imports redis, once). When the daemon
is down the ${{run}} fallback keeps counting on the node's local LMDB, as it does today, and never imports
redis (it would make every fallback call {direct_rec - hook_rec:+.1f} ms slower, at the moment the node is
already degraded, and a dead daemon is no reason to expect a live Redis); what was counted locally
meanwhile is the daemon's to reconcile with Redis when both are back (issue 13's failure policy).""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
