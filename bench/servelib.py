"""For bench/serve.py: an `eximhook serve` process with its own temp config, and a load of client processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib  # noqa: F401 (puts the repository on sys.path for tests.support)

from tests.support import harness as h

# Limits that never trip. The exact window keeps up to LIMIT timestamps per subject, but
# the load spreads its events over --keys subjects, so none holds more than a few dozen.
HUGE = 1_000_000_000


class BenchDaemon(h.Daemon):
    """``eximhook --config DIR/eximhook.toml serve --allow-root``, everything in DIR.

    With ``redis_url`` it counts and checks in that Redis (``[store] backend = "redis"``). With
    ``closed`` a request the daemon could not answer in time gets the fallback token ``1`` (``[hooks]``
    closed): the load counts it as an error, where the open fallback's ``0`` would pass for an answer.
    ``python``: run by another venv's interpreter (``Daemon``); ``extra``: TOML added to the config;
    ``budget``: ``[store] counters_budget`` (a store filled with a million subjects needs more than the default,
    or the daemon spends the measurement forgetting them)."""

    def __init__(self, work: Path, name: str, *, redis_url: str | None = None, closed: bool = False,
                 python: str | None = None, extra: str = "", budget: str | None = None) -> None:
        self.name = name
        self.dir = work / name
        self.dir.mkdir()
        self.store = self.dir / "store"
        self.logfile = self.dir / "eximhook.log"
        conf = self.dir / "eximhook.toml"
        backend = f'backend = "redis"\nredis_url = "{redis_url}"\nnode = "bench"\n' if redis_url else ""
        backend += f'counters_budget = "{budget}"\n' if budget else ""
        limits = "".join(f'[limits.{ns}]\nlimit = {HUGE}\nperiod = "1h"\n' for ns in ("auth", "relay"))
        hooks = '[hooks]\ncheck = "closed"\nrecord = "closed"\n' if closed else ""
        conf.write_text(f'[store]\npath = "{self.store}"\nmirror_dir = "{self.dir}"\n{backend}{limits}{hooks}'
                        f'[notify]\nsendmail = ["/bin/true"]\n[log]\nfile = "{self.logfile}"\n'
                        f'[serve]\nsocket = "{self.dir / "eximhook.sock"}"\n{extra}')
        super().__init__(conf, python=python)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (clock ticks: 10 ms resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class LoadResult:
    ops: int
    seconds: float
    errors: int
    latencies: array[float]
    client_cpu: float
    daemon_cpu: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _client(path: str, reqs: list[bytes], expect: bytes, offset: int, duration: float, barrier: Any,
            results: Any) -> None:
    """One client process: ${readsocket}'s calls, back to back, for ``duration`` seconds."""
    lat: array[float] = array("d")
    errors, n, i = 0, len(reqs), offset
    max_calls = int(duration * 200_000)  # bounded in count as well as in time
    barrier.wait(timeout=60)
    perf = time.perf_counter
    cpu0, start = time.process_time(), perf()
    deadline = start + duration
    while len(lat) + errors < max_calls:
        t0 = perf()
        if t0 >= deadline:
            break
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.connect(path)
            s.sendall(reqs[i % n])
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(64):
                reply += chunk
        except OSError:
            reply = None
        finally:
            s.close()
        if reply == expect:
            lat.append(perf() - t0)
        else:
            errors += 1
        i += 1
    results.put((lat.tobytes(), errors, time.process_time() - cpu0, start, perf()))


def load(path: str, reqs: list[bytes], expect: bytes, clients: int, duration: float) -> LoadResult:
    """``clients`` processes (forked) call the daemon on ``path`` for ``duration`` seconds, starting together."""
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(clients + 1), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(path, reqs, expect, k * len(reqs) // clients, duration, barrier,
                                               results), daemon=True) for k in range(clients)]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=60)
        got = [results.get(timeout=duration + 60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    lat: array[float] = array("d")
    for data, *_ in got:
        lat.frombytes(data)
    return LoadResult(ops=len(lat), seconds=max(g[4] for g in got) - min(g[3] for g in got),
                      errors=sum(g[1] for g in got), latencies=lat, client_cpu=sum(g[2] for g in got))
