"""Small helpers shared by the benchmarks: statistics, tables, a tmpfs mount, the repo on sys.path."""

from __future__ import annotations

import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # for tests.support.harness; last, so that eximhook is the installed one
    sys.path.append(str(ROOT))


def readsocket(path: str, request: bytes, timeout: float = 10) -> bytes:
    """One call as Exim's ${readsocket} makes it: the request, our side shut, the answer
    read until the daemon closes."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(64):
            reply += chunk
    return reply


def installed_eximhook() -> str:
    """Where eximhook is imported from; exits unless it is a regular install (what Exim and the daemon run),
    not the work tree."""
    import eximhook

    where = os.path.dirname(os.path.abspath(eximhook.__file__))
    if "site-packages" not in where:
        sys.exit(f"eximhook is imported from {where}: run this with the venv's python after `pip install .`")
    return where


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile (p in 0..100) of ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


def spread(values: Sequence[float]) -> str:
    """(max - min) / median, as a percentage: how much the rounds disagree."""
    if len(values) < 2:
        return "-"
    return f"{(max(values) - min(values)) / statistics.median(values) * 100:.0f}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  ") -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                        enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def no_panic(servers: Mapping[str, Any]) -> None:
    """Stop a benchmark whose Exim wrote to its paniclog: its figures would time a failure."""
    for name, server in servers.items():
        if server.log("panic"):
            raise SystemExit(f"{name}: Exim wrote to its paniclog: {server.log('panic')}")


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("run this as root: it starts Exim daemons and mounts tmpfs")


def start() -> tuple[str, str]:
    """What every benchmark does first: as root, with the installed eximhook; returns where
    it is and its fingerprint (compared again at the end: nothing reinstalled it meanwhile)."""
    require_root()
    where = installed_eximhook()
    return where, fingerprint(where)


@contextmanager
def tmpfs(enabled: bool, size: str = "2g") -> Iterator[str | None]:
    """A tmpfs mounted on a new temp dir (None when not ``enabled``); unmounted and removed after."""
    if not enabled:
        yield None
        return
    where = tempfile.mkdtemp(prefix="eximhook-bench-tmpfs-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", where], check=True)
    try:
        yield where
    finally:
        proc = subprocess.run(["umount", where], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            subprocess.run(["umount", "-l", where], check=False)
            print(f"warning: umount {where}: {proc.stderr.strip()} (lazily unmounted)", file=sys.stderr)
        shutil.rmtree(where, ignore_errors=True)


def fingerprint(where: str) -> str:
    """A short hash of the installed package's sources, and whether they match git HEAD's eximhook/: another
    `pip install` during a run would mix two versions in one table."""
    import hashlib

    files = sorted(Path(where).rglob("*.py"))
    if not files:
        return "(no eximhook sources installed: a pip install in progress?)"
    digest = hashlib.sha256()
    differs: list[str] = []
    for path in files:
        rel = path.relative_to(where).as_posix()
        data = path.read_bytes()
        digest.update(rel.encode() + b"\0" + data)
        head = subprocess.run(["git", "-C", str(ROOT), "show", f"HEAD:eximhook/{rel}"], capture_output=True,
                              check=False)
        if head.returncode != 0 or head.stdout != data:
            differs.append(rel)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    same = f"= git HEAD {commit}" if not differs else f"differs from git HEAD {commit} in {', '.join(differs)}"
    return f"sha256:{digest.hexdigest()[:12]} ({same})"
