"""How long a relay takes to send Redis what it counted alone while Redis was down.

A daemon on the Redis backend (``[store] backend = "redis"``, its own redis-server on a Unix socket in a temp
dir, no persistence, stopped by its pid), then, each round: redis-server stopped; --counts record-invalid
requests sent to the daemon (over --keys users), which counts them alone and journals each; redis-server
started again (empty: it kept nothing); the time from its first answer to the daemon's log line saying it
answers again and how many counts it sent (the sync thread tries Redis every second, so up to a second of
that is the wait for its next try; the line itself says how long the reconciliation took, where the daemon
says so). Then every count must be in Redis once: the users' counters add up to --counts.

    /opt/eximhook/bin/python bench/redis_catchup.py [--counts 2600] [--rounds 3]

As root, with eximhook installed non-editable in the venv, redis-py in it and redis-server on PATH. Run with
another install's interpreter to measure that install (the daemon is the one beside the interpreter).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import median, readsocket, table
from servelib import BenchDaemon

KEY = "user{:07d}@example.net"
ANSWERS = re.compile(r"answers again: (\d+) block\(s\) made here and (\d+) count\(s\) sent to it(?: in ([\d.]+) s)?")


def wait_for(what: str, found: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not found():  # type: ignore[operator]
        if time.monotonic() > deadline:
            sys.exit(f"no {what} within {timeout:g}s")
        time.sleep(0.005)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, default=2600, help="counts made alone per round (default 2,600)")
    parser.add_argument("--keys", type=int, default=100, help="users they are spread over (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    opts = parser.parse_args()
    if min(opts.counts, opts.keys, opts.rounds) < 1:
        parser.error("need positive numbers")
    from eximhook.serve import protocol
    from tests.support.redis_server import RedisServer

    where, version = benchlib.start()
    work = Path(tempfile.mkdtemp(prefix="eximhook-bench-catchup-", dir="/var/tmp"))
    redis = RedisServer(work / "redis-server")
    rows, seen = [], 0
    try:
        redis.start()
        d = BenchDaemon(work, "relay", redis_url=redis.url)
        d.start()
        for rnd in range(opts.rounds):
            redis.stop()
            for i in range(opts.counts):
                request = protocol.encode("record-invalid", "auth", KEY.format(i % opts.keys),
                                          rcpt=f"n{rnd}.{i}@example.com")
                if readsocket(str(d.socket), request) != b"0":
                    sys.exit(f"round {rnd + 1}: request {i} not answered 0; log: {d.log()}")
            redis.start()
            began = time.monotonic()
            wait_for("catch-up line", lambda n=seen: len(ANSWERS.findall(d.logfile.read_text(errors="replace"))) > n)
            took = time.monotonic() - began
            match = ANSWERS.findall(d.logfile.read_text(errors="replace"))[seen]
            seen += 1
            from eximhook.backends.redis import RedisBackend

            with RedisBackend.open(redis.url) as backend:
                counted = sum(backend.counter("auth", KEY.format(k)).total for k in range(opts.keys))
            rows.append((rnd + 1, int(match[1]), took, float(match[2]) if match[2] else None, counted))
            print(f"  round {rnd + 1}: {match[1]} sent, line after {took:.2f}s, {counted} in Redis", file=sys.stderr)
        stopped = d.stop()
    finally:
        redis.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"eximhook {version} from {where}: {opts.counts:,} counts made alone a round over {opts.keys} users; "
          f"daemon exit {stopped}\n")
    print(table(["round", "counts sent", "Redis up to the line, s", "reconciliation (its log), s", "in Redis"],
                [[r, f"{n:,}", f"{t:.2f}", "-" if s is None else f"{s:.2f}", f"{c:,}"] for r, n, t, s, c in rows]))
    exact = all(n == opts.counts and c == opts.counts for _, n, _, _, c in rows)
    took = median([t for _, _, t, _, _ in rows])
    print(f"\n  {'every count sent once' if exact else 'COUNT MISMATCH'}; median {took:.2f}s from Redis up to the "
          f"line (target: caught up within 1 s of {opts.counts:,}, plus the sync thread's next try, up to 1 s)")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
