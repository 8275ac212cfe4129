"""`eximhook serve` alone, without Exim: requests per second and latency over its Unix socket.

Starts the installed daemon (`eximhook --config C serve --allow-root`, as root) on a temp dir on the normal
disk, with a temp config (huge limits: nothing trips; notify through /bin/true), waits until `serve --check`
answers, and loads it from 1, 8 and 32 client *processes* (threads in one Python would measure the GIL).
Each client, for --duration seconds, does what Exim's ${readsocket} does: connect, send one request,
shut down its write side, read the reply to EOF, close; and times each call:
  ping            `ping` -> `pong`, answered by the event loop: the socket and protocol cost alone
  record-invalid  `record-invalid auth KEY rcpt=.. ip=..` -> `0`, a write transaction in the store thread
  message         `message auth KEY n=3 sender=.. mid=.. id=..` -> `0`: seed 004's per-message volume count,
                  which also remembers the Message-ID for the bounces (the default shadow-mode counter)
(--keys distinct users, round-robin). Then the store's size: a store filled in-process with --subjects
subjects (one counted invalid recipient each, keys in random order) against a tiny one (--tiny), both served
at once and loaded in turns with 8 and 1 clients on --active subjects each (in the big store spread evenly
over its keys), and their bytes per subject (data.mdb's size, and the blocks allocated as du counts them).
With --redis, last, the two backends through the daemon (issue 13): an LMDB daemon and one with `[store]
backend = "redis"` on its own redis-server (Unix socket in the work dir, `--save "" --appendonly no`, stopped
by its pid), both served at once and loaded in turns, the order swapped each round (--rounds rounds, --keys
users), with record-invalid from 1 and 8 clients and check-blocked (`0`: nobody is blocked) from 1. Both answer
the fallback `1` ([hooks] closed), so a request the daemon could not answer in time fails the run instead of
passing for a `0`; and each store must hold one event per record-invalid call it answered. Printed with the
redis-server's CPU and the ratios Redis/LMDB.
With --windows, only this: record-invalid on --full subjects whose window holds 1,000 events (filled through the
backend, times over the last hour) against --keys fresh ones, in turns on one daemon (and, with --redis, on a Redis
one too), from 1 and 8 clients; target: the full ones' p50 within 1.1x of the fresh ones'.
Prints medians over rounds of ops/s, p50/p99 latency over all calls, the CPU the daemon and the clients used
(2 cores here: 100 % is one core), and the targets: >= 10,000 record-invalid/s with 8 clients and p99 <= 2 ms;
the big store within 1.2x of the tiny one's latency; <= 300 bytes per subject.

    /opt/eximhook/bin/python bench/serve.py [--duration 3] [--rounds 2] [--subjects 1000000] [--json FILE]
    /opt/eximhook/bin/python bench/serve.py --duration 2 --rounds 3 --subjects 100000 --redis  # ~2 min
    /opt/eximhook/bin/python bench/serve.py --windows --redis --duration 2 --rounds 3  # ~5 min

As root, with eximhook installed non-editable in the venv (and, for --redis, redis-py in it and redis-server
on PATH). Everything is stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

import benchlib
from benchlib import median, percentile, table
from servelib import HUGE, BenchDaemon, LoadResult, cpu_seconds, load

KEY = "user{:07d}@example.net"  # an auth id like real ones: 24 bytes


def requests(op: str, keys: list[int], rcpts: bool = True) -> list[bytes]:
    """The requests of ``op`` over ``keys``; a message as the DATA ACL sends it, with its client's address and
    (``rcpts``: where the daemon takes them, issue 24) its 3 recipients, new ones every message."""
    from eximhook.serve import protocol

    if op == "ping":
        return [protocol.encode("ping")]
    if op == "check-blocked":
        return [protocol.encode("check-blocked", "auth", KEY.format(i)) for i in keys]
    if op == "message":
        return [protocol.encode("message", "auth", KEY.format(i), n="3", sender=KEY.format(i), mid=f"<{i}.{n}@mua>",
                                id="1xVbMq-0004rw-1g", ip="192.0.2.1",
                                **({"rcpts": ", ".join(f"r{n}.{j}@example.com" for j in range(3))} if rcpts else {}))
                for n, i in enumerate(keys)]
    return [protocol.encode("record-invalid", "auth", KEY.format(i), rcpt=f"nobody{i}@example.com",
                            ip="192.0.2.1") for i in keys]


def fill(path: str, subjects: int, seed: int = 1) -> float:
    """Counters for ``subjects`` subjects, one invalid recipient each, written in batches of 10,000; seconds."""
    from eximhook.model.policy import Policy
    from eximhook.model.records import Event
    from eximhook.storage.counters import Counters

    order = list(range(subjects))
    random.Random(seed).shuffle(order)  # subjects arrive in no particular key order
    began, now = time.monotonic(), time.time()
    unlimited = Policy("invalid", ((10**9, 3600.0),), "enforce")
    with Counters(path) as counters:
        for start in range(0, subjects, 10_000):
            counters.update_many([counters.event(Event("auth", KEY.format(i), unlimited, evidence=f"n{i}@example.com",
                                                       ip="192.0.2.1"), now)
                                  for i in order[start:start + 10_000]])
    return time.monotonic() - began


FULL = 1_000  # events in a full subject's window: --windows


def fill_windows(d: BenchDaemon, keys: list[int], redis_url: str | None) -> float:
    """``FULL`` invalid recipients in the last hour for each of ``keys``, through the backend ``d`` counts in
    (the daemon's own policy: HUGE an hour), so its window holds them all; seconds."""
    from eximhook.model.policy import Policy
    from eximhook.model.records import Event

    began, now = time.monotonic(), time.time()
    policy = Policy("invalid", ((HUGE, 3600.0),), "enforce")
    times = [now - 3000 + i * 3000 / FULL for i in range(FULL)]  # all still in the window during the runs
    events = [(Event("auth", KEY.format(k), policy, evidence=f"n{n}@example.com", ip="192.0.2.1"), t)
              for k in keys for n, t in enumerate(times)]
    if redis_url:
        from eximhook.backends.redis import RedisBackend

        with RedisBackend.open(redis_url) as backend:
            for e, t in events:
                backend.record(e, t)
    else:
        from eximhook.storage.counters import Counters

        with Counters(str(d.store)) as counters:
            for start in range(0, len(events), 10_000):
                counters.update_many([counters.event(e, t) for e, t in events[start:start + 10_000]])
    return time.monotonic() - began


WINDOW_RUNS = (("full", 1), ("fresh", 1), ("full", 8), ("fresh", 8))


def compare_windows(work: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """--windows: record-invalid on subjects whose window holds ``FULL`` events against fresh ones (each counted
    a few times in the run), in turns, on LMDB and, with --redis, on Redis. The full subjects' windows stay full
    (their events are an hour old at most, and each run adds to them: past 1,024 they compact)."""
    from tests.support.redis_server import RedisServer

    backends = ("lmdb", "redis") if opts.redis else ("lmdb",)
    redis = RedisServer(work / "redis-server") if opts.redis else None
    daemons: dict[str, BenchDaemon] = {}
    full, fresh = list(range(opts.full)), list(range(10**6, 10**6 + opts.keys))
    runs: dict[tuple[str, str, int], list[LoadResult]] = {}
    fill_s: dict[str, float] = {}
    try:
        if redis:
            redis.start()
        for name in backends:
            d = BenchDaemon(work, f"windows-{name}", closed=True, redis_url=redis.url if name == "redis" and redis
                            else None)
            daemons[name] = d.start()
            fill_s[name] = fill_windows(d, full, redis.url if name == "redis" and redis else None)
            print(f"  filled {name}: {opts.full:,} subjects of {FULL:,} events in {fill_s[name]:.1f}s",
                  file=sys.stderr, flush=True)
        for rnd in range(opts.rounds):
            for name in backends:
                for which, clients in WINDOW_RUNS if rnd % 2 == 0 else WINDOW_RUNS[::-1]:
                    runs.setdefault((name, which, clients), []).append(run_load(
                        daemons[name], "record-invalid", full if which == "full" else fresh, clients, opts,
                        redis.pid if name == "redis" and redis else None))
            print(f"  windows round {rnd + 1}/{opts.rounds} done", file=sys.stderr, flush=True)
        exits = {name: d.stop() for name, d in daemons.items()}
    finally:
        for d in daemons.values():
            d.stop()
        if redis:
            redis.close()
    stats = {f"{name} {which} x{c}": summarize(rs) for (name, which, c), rs in runs.items()}
    ratios = {f"{name} x{c}": {m: stats[f"{name} full x{c}"][m] / stats[f"{name} fresh x{c}"][m]
                               for m in ("ops_s", "p50_ms", "p99_ms")}
              for name in backends for c in (1, 8)}
    return {"exits": exits, "fill_seconds": fill_s, "stats": stats, "ratios": ratios}


def print_windows(cmp: dict[str, Any], opts: argparse.Namespace) -> None:
    stats = cmp["stats"]
    print(f"record-invalid on {opts.full:,} subjects whose window holds {FULL:,} events (full) against {opts.keys:,} "
          f"fresh ones, {opts.rounds} rounds taking turns, {opts.duration:g}s a run; daemon exit "
          + ", ".join(f"{n} {e}" for n, e in cmp["exits"].items()) + "\n")
    print(table(["backend window", *HEADERS[1:]], [row(f"{key.rsplit(' ', 1)[0]}", int(key.rsplit("x", 1)[1]), s)
                                                   for key, s in stats.items()]))
    print("\nfull / fresh (ops/s below 1, latency above 1: the full window costs more); target p50 <= 1.1x")
    rows = [[key, *(f"{x:.2f}x" for x in r.values())] for key, r in cmp["ratios"].items()]
    print(table(["backend clients", "ops/s", "p50", "p99"], rows))
    for key, r in cmp["ratios"].items():
        print(f"  {'met   ' if r['p50_ms'] <= 1.1 else 'MISSED'} {key}: full p50 within 1.1x of fresh: "
              f"{r['p50_ms']:.2f}x")


def store_size(store: str, subjects: int) -> dict[str, Any]:
    """The counters' data.mdb (where subjects live): its size, the bytes allocated to it (du), and how many of
    its pages hold live data: the rest are on LMDB's free list (pages a later write copies into)."""
    import lmdb

    path = os.path.join(store, "counters")
    data = os.path.join(path, "data.mdb")
    du = subprocess.run(["du", "-B1", data], capture_output=True, text=True, check=True).stdout.split()[0]
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=8, subdir=True)
    try:
        stats = [env.stat()]
        with env.begin() as txn:
            stats.append(txn.stat(env.open_db(b"counters", txn=txn, create=False)))
        psize, pages = stats[0]["psize"], env.info()["last_pgno"] + 1
    finally:
        env.close()
    live = sum(st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"] for st in stats)
    return {"subjects": subjects, "size": os.path.getsize(data), "du": int(du), "pages": pages, "live_pages": live,
            "free_pages": pages - 2 - live, "psize": psize, "depth": stats[1]["depth"]}


def run_load(d: BenchDaemon, op: str, keys: list[int], clients: int, opts: argparse.Namespace,
             redis_pid: int | None = None, rcpts: bool = True) -> LoadResult:
    expect = b"pong" if op == "ping" else b"0"
    before, redis_before = cpu_seconds(d.pid), cpu_seconds(redis_pid) if redis_pid else 0.0
    result = load(str(d.socket), requests(op, keys, rcpts), expect, clients, opts.duration)
    result.daemon_cpu = cpu_seconds(d.pid) - before
    if redis_pid:
        result.extra["redis_cpu"] = cpu_seconds(redis_pid) - redis_before
    if result.errors:
        sys.exit(f"{d.name}: {op} x{clients}: {result.errors} calls failed or answered wrong; log: {d.log()}")
    return result


def summarize(results: list[LoadResult]) -> dict[str, Any]:
    lat: array[float] = array("d")
    for r in results:
        lat.extend(r.latencies)
    return {"ops_s": median([r.ops / r.seconds for r in results]), "p50_ms": percentile(lat, 50) * 1e3,
            "p99_ms": percentile(lat, 99) * 1e3, "max_ms": max(lat) * 1e3, "calls": len(lat),
            "daemon_cpu": median([r.daemon_cpu / r.seconds for r in results]) * 100,
            "client_cpu": median([r.client_cpu / r.seconds for r in results]) * 100,
            "redis_cpu": median([r.extra.get("redis_cpu", 0.0) / r.seconds for r in results]) * 100,
            "ops_s_rounds": [round(r.ops / r.seconds) for r in results]}


def row(name: str, clients: int, s: dict[str, Any]) -> list[object]:
    return [name, clients, f"{s['ops_s']:,.0f}", f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}", f"{s['max_ms']:.1f}",
            f"{s['daemon_cpu']:.0f}%", f"{s['client_cpu']:.0f}%", f"{s['calls']:,}"]


OPS = ("ping", "record-invalid", "message")
HEADERS = ["op", "clients", "ops/s", "p50 ms", "p99 ms", "max ms", "daemon CPU", "clients CPU", "calls"]
BACKEND_RUNS = (("record-invalid", 1), ("record-invalid", 8), ("check-blocked", 1))
BACKENDS = ("lmdb", "redis")


def compare_backends(work: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """An LMDB daemon and a Redis one (its own redis-server), served at once and loaded in turns, the order
    swapped each round; then the events each counted, against the record-invalid calls it answered."""
    from tests.support.redis_server import REDIS_SERVER, RedisServer

    version = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True, check=True).stdout
    redis = RedisServer(work / "redis-server")
    pair: dict[str, BenchDaemon] = {}
    keys = list(range(opts.keys))
    runs: dict[tuple[str, str, int], list[LoadResult]] = {}
    try:
        redis.start()
        pair = {"lmdb": BenchDaemon(work, "lmdb", closed=True),
                "redis": BenchDaemon(work, "redis", redis_url=redis.url, closed=True)}
        for d in pair.values():
            d.start()
        for rnd in range(opts.rounds):
            for op, clients in BACKEND_RUNS:
                for name in BACKENDS if rnd % 2 == 0 else BACKENDS[::-1]:
                    runs.setdefault((name, op, clients), []).append(run_load(
                        pair[name], op, keys, clients, opts, redis.pid if name == "redis" else None))
            print(f"  backend round {rnd + 1}/{opts.rounds} done", file=sys.stderr, flush=True)
        exits = {name: d.stop() for name, d in pair.items()}
        counted = {"lmdb": counted_lmdb(str(pair["lmdb"].store), keys), "redis": counted_redis(redis.url, keys)}
    finally:
        for d in pair.values():
            d.stop()
        redis.close()
    answered = {name: sum(r.ops for op, c in BACKEND_RUNS if op == "record-invalid" for r in runs[(name, op, c)])
                for name in BACKENDS}
    stats = {f"{name} {op} x{c}": summarize(rs) for (name, op, c), rs in runs.items()}
    ratios = {f"{op} x{c}": {m: stats[f"redis {op} x{c}"][m] / stats[f"lmdb {op} x{c}"][m]
                             for m in ("ops_s", "p50_ms", "p99_ms")} for op, c in BACKEND_RUNS}
    return {"redis_server": version.split()[2].removeprefix("v="), "exits": exits, "counted": counted,
            "answered": answered, "stats": stats, "ratios": ratios}


VERSION_RUNS = (("message", 1), ("message", 8), ("record-invalid", 1), ("record-invalid", 8), ("check-blocked", 1))
VERSIONS = ("before", "after", "after+score")
CUSTOMERS = 100  # --ab's after+score: the users in customers of --keys / CUSTOMERS members each


def score_config(work: Path, keys: int) -> str:
    """after+score's config: the volume enforced beside the invalid recipients (two enforced counters: the score
    is computed on every count), the score enforced, every user in a customer with enforced limits (its counts
    go to its customer too). Huge limits: nothing trips."""
    members = work / "customers"
    members.write_text("".join(f"auth:{KEY.format(i)} c{i % CUSTOMERS}\n" for i in range(keys)))
    return (f'[limits.auth.recipients]\nlimit = {HUGE}\nperiod = "1h"\nmode = "enforce"\n'
            '[limits.auth.score]\nlimit = 150\nmode = "enforce"\n'
            f'[customers]\nlookup = "{members}"\nby_domain = false\n'
            f'[limits.customer]\nlimit = {HUGE}\nperiod = "1h"\nmode = "enforce"\n'
            f'[limits.customer.recipients]\nlimit = {HUGE}\nperiod = "1h"\nmode = "enforce"\n')


def compare_versions(work: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """--ab: the install of --ab's interpreter (before) against this one (after), default config, and this one
    with the score and customer limits (after+score), served at once and loaded in turns, the order rotating each
    round. Each gets the message its own snippets send: rcpts= only where the daemon takes it (an older one
    answers E to it)."""
    from eximhook.serve import protocol

    keys = list(range(opts.keys))
    daemons: dict[str, BenchDaemon] = {}
    runs: dict[tuple[str, str, int], list[LoadResult]] = {}
    try:
        daemons = {"before": BenchDaemon(work, "before", closed=True, python=opts.ab),
                   "after": BenchDaemon(work, "after", closed=True),
                   "after+score": BenchDaemon(work, "after-score", closed=True,
                                              extra=score_config(work, opts.keys))}
        for d in daemons.values():
            d.start()
        probe = protocol.encode("message", "auth", "probe@example.org", n="1", rcpts="x@example.com")
        rcpts = {name: d.request(probe) == b"0" for name, d in daemons.items()}
        versions = {name: subprocess.run([d.python or sys.executable, "-I", "-c",
                                          "import eximhook; print(eximhook.__version__)"],
                                         capture_output=True, text=True, check=True).stdout.strip()
                    for name, d in daemons.items()}
        for rnd in range(opts.rounds):
            order = VERSIONS[rnd % 3:] + VERSIONS[:rnd % 3]
            for op, clients in VERSION_RUNS:
                for name in order:
                    runs.setdefault((name, op, clients), []).append(
                        run_load(daemons[name], op, keys, clients, opts, rcpts=rcpts[name]))
            print(f"  version round {rnd + 1}/{opts.rounds} done, load {os.getloadavg()[0]:.2f}", file=sys.stderr,
                  flush=True)
        exits = {name: d.stop() for name, d in daemons.items()}
    finally:
        for d in daemons.values():
            d.stop()
    stats = {f"{name} {op} x{c}": summarize(rs) for (name, op, c), rs in runs.items()}
    for s in stats.values():
        s["cpu_per_call"] = s["daemon_cpu"] / s["ops_s"]
    ratios = {f"{name} {op} x{c}": {m: stats[f"{name} {op} x{c}"][m] / stats[f"before {op} x{c}"][m]
                                    for m in ("ops_s", "p50_ms", "p99_ms", "cpu_per_call")}
              for name in VERSIONS[1:] for op, c in VERSION_RUNS}
    return {"versions": versions, "rcpts": rcpts, "exits": exits, "stats": stats, "ratios": ratios}


def print_versions(cmp: dict[str, Any], opts: argparse.Namespace) -> None:
    stats = cmp["stats"]
    print(f"before ({opts.ab}): {cmp['versions']['before']}; after ({sys.executable}): {cmp['versions']['after']}; "
          f"rcpts= sent to: {', '.join(n for n, r in cmp['rcpts'].items() if r) or 'none'}; {opts.rounds} rounds "
          f"taking turns, {opts.duration:g}s a run, {opts.keys:,} users; daemon exit "
          + ", ".join(f"{n} {e}" for n, e in cmp["exits"].items()) + "\n")
    print(table(["op version", *HEADERS[1:]], [row(f"{op} {name}", c, stats[f"{name} {op} x{c}"])
                                              for op, c in VERSION_RUNS for name in VERSIONS]))
    print("\nover before (ops/s below 1, latency or daemon CPU per call above 1: slower); ops/s of each round")
    rows = []
    for op, c in VERSION_RUNS:
        for name in VERSIONS:
            ratio = cmp["ratios"].get(f"{name} {op} x{c}", {})
            rows.append([f"{op} {name}", c, *(f"{x:.2f}x" for x in ratio.values()), *([""] * (4 - len(ratio))),
                         " ".join(map(str, stats[f"{name} {op} x{c}"]["ops_s_rounds"]))])
    print(table(["op version", "clients", "ops/s", "p50", "p99", "CPU/call", "ops/s rounds"], rows))


def counted_lmdb(store: str, keys: list[int]) -> int:
    from eximhook.storage.counters import Counters

    with Counters(store) as counters:
        return sum(counters.get("auth", KEY.format(i)).total for i in keys)


def counted_redis(url: str, keys: list[int]) -> int:
    from eximhook.backends.redis import RedisBackend

    with RedisBackend.open(url) as backend:
        return sum(backend.counter("auth", KEY.format(i)).total for i in keys)


def print_backends(cmp: dict[str, Any], opts: argparse.Namespace) -> bool:
    """The comparison's tables; whether each daemon counted exactly the calls it answered."""
    stats = cmp["stats"]
    print(f"\nLMDB against Redis (redis-server {cmp['redis_server']}, Unix socket, no persistence; the daemon calls "
          f"it from a 4-thread pool): {opts.rounds} rounds taking turns, {opts.keys:,} users")
    rows = []
    for op, c in BACKEND_RUNS:
        for name in BACKENDS:
            cells = row(f"{op} {name}", c, stats[f"{name} {op} x{c}"])
            cells.insert(7, f"{stats[f'{name} {op} x{c}']['redis_cpu']:.0f}%" if name == "redis" else "-")
            rows.append(cells)
    print(table(["op backend", *HEADERS[1:7], "redis CPU", *HEADERS[7:]], rows))
    print("\nRedis / LMDB (ops/s below 1 and latency above 1: Redis is slower)")
    print(table(["op", "clients", "ops/s", "p50", "p99"],
                [[op, c, *(f"{x:.2f}x" for x in cmp["ratios"][f"{op} x{c}"].values())] for op, c in BACKEND_RUNS]))
    ok = cmp["counted"] == cmp["answered"]
    print(f"\n  {'counted every call once' if ok else 'COUNT MISMATCH'}: events in the store / record-invalid calls "
          "answered: " + ", ".join(f"{n} {cmp['counted'][n]:,} / {cmp['answered'][n]:,}" for n in BACKENDS)
          + "; daemon exit " + ", ".join(f"{n} {cmp['exits'][n]}" for n in BACKENDS))
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load run (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the ping/record-invalid runs (default 2)")
    parser.add_argument("--clients", default="1,8,32", help="concurrency levels (default 1,8,32)")
    parser.add_argument("--keys", type=int, default=10_000, help="distinct users in record-invalid (default 10,000)")
    parser.add_argument("--subjects", type=int, default=1_000_000, help="the big store's subjects (default 1M)")
    parser.add_argument("--tiny", type=int, default=1_000, help="the tiny store's subjects (default 1,000)")
    parser.add_argument("--active", type=int, default=1_000, help="subjects the size comparison counts on")
    parser.add_argument("--size-rounds", type=int, default=3, help="rounds of the size comparison (default 3)")
    parser.add_argument("--redis", action="store_true", help="also LMDB against Redis, through the daemon")
    parser.add_argument("--ab", metavar="PYTHON", help="only this: another install (that venv's python) against "
                        "this one, and this one with the score and customer limits, loaded in turns")
    parser.add_argument("--windows", action="store_true", help="only this: subjects with full windows against "
                        "fresh ones (with --redis: on both backends)")
    parser.add_argument("--full", type=int, default=100, help=f"--windows: subjects with {FULL:,} events each")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    opts = parser.parse_args()
    levels = [int(c) for c in opts.clients.split(",")]
    if opts.duration <= 0 or opts.duration > 60 or min(levels) < 1 or max(levels) > 256 or opts.tiny < opts.active \
            or opts.subjects < opts.active or min(opts.rounds, opts.size_rounds, opts.keys, opts.active) < 1:
        parser.error("need 0 < --duration <= 60, 1..256 clients, --active <= --tiny and <= --subjects")
    if opts.redis and not (shutil.which("redis-server") and importlib.util.find_spec("redis")):
        parser.error("--redis needs redis-server on PATH and redis-py in this venv")
    if opts.ab and not os.access(os.path.join(os.path.dirname(opts.ab), "eximhook"), os.X_OK):
        parser.error(f"--ab: no eximhook beside {opts.ab}")
    where, version = benchlib.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="eximhook-bench-serve-", dir="/var/tmp"))
    if opts.windows or opts.ab:  # only this comparison
        compare, show, name = ((compare_windows, print_windows, "windows") if opts.windows
                               else (compare_versions, print_versions, "versions"))
        try:
            cmp = compare(work, opts)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        after = benchlib.fingerprint(where)
        print(f"eximhook {version}" + ("" if after == version else f"; CHANGED during the run to {after}"))
        show(cmp, opts)
        if opts.json:
            with open(opts.json, "w") as f:
                json.dump({"eximhook": version, "duration": opts.duration, name: cmp}, f, indent=1)
        return 0
    daemons: list[BenchDaemon] = []
    out: dict[str, Any] = {"eximhook": version, "duration": opts.duration}
    try:
        print(f"eximhook {version} from {where}; work dir {work} (disk)", file=sys.stderr)
        main_d = BenchDaemon(work, "main")
        daemons.append(main_d.start())
        runs: dict[tuple[str, int], list[LoadResult]] = {}
        for rnd in range(opts.rounds):
            for clients in levels:
                for op in OPS:
                    runs.setdefault((op, clients), []).append(run_load(main_d, op, list(range(opts.keys)), clients,
                                                                       opts))
            print(f"  load round {rnd + 1}/{opts.rounds} done", file=sys.stderr, flush=True)
        main_stats = {f"{op} x{c}": summarize(r) for (op, c), r in runs.items()}
        stopped = main_d.stop()
        sizes, fill_s, stores = {}, {}, {}
        for name, n in (("tiny", opts.tiny), ("big", opts.subjects)):
            d = BenchDaemon(work, name, budget="4G")  # both within it: the B-tree's depth, not the budget's trim
            fill_s[name] = fill(str(d.store), n)
            sizes[name] = store_size(str(d.store), n)
            print(f"  filled {name}: {n:,} subjects in {fill_s[name]:.1f}s", file=sys.stderr, flush=True)
            daemons.append(d.start())
            stores[name] = d
        active = {"tiny": [i * opts.tiny // opts.active for i in range(opts.active)],
                  "big": [i * opts.subjects // opts.active for i in range(opts.active)]}
        cmp_runs: dict[tuple[str, int], list[LoadResult]] = {}
        for rnd in range(opts.size_rounds):
            for clients in (8, 1):
                for name in (("tiny", "big") if rnd % 2 == 0 else ("big", "tiny")):
                    cmp_runs.setdefault((name, clients), []).append(
                        run_load(stores[name], "record-invalid", active[name], clients, opts))
            print(f"  size round {rnd + 1}/{opts.size_rounds} done", file=sys.stderr, flush=True)
        cmp_stats = {f"{name} x{c}": summarize(r) for (name, c), r in cmp_runs.items()}
        backends = compare_backends(work, opts) if opts.redis else None
    finally:
        for d in daemons:
            d.stop()
        shutil.rmtree(work, ignore_errors=True)

    after = benchlib.fingerprint(where)
    print(f"eximhook {version}" + ("" if after == version else f"; CHANGED during the run to {after}"))
    print(f"eximhook serve alone: {opts.duration:g}s per run; ops/s median of {opts.rounds} rounds, latencies over "
          f"all calls; CPU in % of one core (this machine has {os.cpu_count()}); daemon exit {stopped}\n")
    print(table(HEADERS, [row(op, c, main_stats[f"{op} x{c}"]) for c in levels for op in OPS]))
    print(f"\nrecord-invalid on {opts.active:,} subjects of a tiny and a big store, {opts.size_rounds} rounds, "
          "taking turns")
    rows = [row(f"{name} ({sizes[name]['subjects']:,})", c, cmp_stats[f"{name} x{c}"])
            for c in (8, 1) for name in ("tiny", "big")]
    print(table(["store", *HEADERS[1:]], rows))
    print("\nstore size after the fill (before the load); pages: LMDB's, live ones and those on its free list")
    print(table(["store", "subjects", "fill s", "data.mdb bytes", "du bytes", "B/subject", "B/subject (du)",
                 "live B/subject", "pages", "free pages", "counters depth"],
                [[name, f"{s['subjects']:,}", f"{fill_s[name]:.1f}", f"{s['size']:,}", f"{s['du']:,}",
                  f"{s['size'] / s['subjects']:.0f}", f"{s['du'] / s['subjects']:.0f}",
                  f"{s['live_pages'] * s['psize'] / s['subjects']:.0f}", f"{s['pages']:,}", f"{s['free_pages']:,}",
                  s["depth"]] for name, s in sizes.items()]))
    print("\ntargets")
    ri8 = main_stats[f"record-invalid x{8}"] if 8 in levels else None
    verdicts = []
    if ri8:
        verdicts.append(("record-invalid x8 >= 10,000 ops/s", ri8["ops_s"] >= 10_000, f"{ri8['ops_s']:,.0f}/s = "
                         f"{ri8['ops_s'] / 10_000:.2f}x the target"))
        verdicts.append(("record-invalid x8 p99 <= 2 ms", ri8["p99_ms"] <= 2, f"{ri8['p99_ms']:.3f} ms"))
    for c in (8, 1):
        tiny, big = cmp_stats[f"tiny x{c}"], cmp_stats[f"big x{c}"]
        ratio = big["p50_ms"] / tiny["p50_ms"]
        verdicts.append((f"big store p50 within 1.2x of tiny, {c} client(s)", ratio <= 1.2,
                         f"{ratio:.2f}x (p99 {big['p99_ms'] / tiny['p99_ms']:.2f}x, ops/s "
                         f"{big['ops_s'] / tiny['ops_s']:.2f}x)"))
    big_s = sizes["big"]
    verdicts.append(("<= 300 bytes per subject (allocated)", big_s["du"] / big_s["subjects"] <= 300,
                     f"{big_s['du'] / big_s['subjects']:.0f} B (file size {big_s['size'] / big_s['subjects']:.0f} B)"))
    for what, ok, detail in verdicts:
        print(f"  {'met   ' if ok else 'MISSED'} {what}: {detail}")
    counted_once = print_backends(backends, opts) if backends else True
    if opts.json:
        out.update(load=main_stats, size_compare=cmp_stats, sizes=sizes, fill_seconds=fill_s,
                   targets=[{"target": w, "met": ok, "detail": d} for w, ok, d in verdicts], backends=backends)
        with open(opts.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if counted_once else 1


if __name__ == "__main__":
    sys.exit(main())
