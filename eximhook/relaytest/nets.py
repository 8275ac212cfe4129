"""``blocked.nets``: the flat file of open relays that Exim's RCPT ACL reads as a host
list (``hosts = /path``) and support staff read by eye.

Exim opens and scans a host-list file each time the condition runs (``match.c``: no
handle kept, no result cached), so a host eximhook adds is refused at the very next
RCPT, also in a session that was open before (seed 003: "cut them off in
mid-session"). Admins keep their own lines in the file (hosts and networks, anything a
host list takes); eximhook owns only the lines between its two marker lines, which it
rewrites from the table's BLOCK hosts, under a file lock, to a temp file renamed over
the old one, so Exim never reads half a file. Everything outside the markers is kept
byte for byte.
"""

from __future__ import annotations

import ipaddress
import os
import time

from ..errors import FileError, UnsafePath
from ..perms import Locked, read_file, replace_files
from ..storage.store import Store
from . import table

BEGIN = b"# BEGIN eximhook relaytest: open relays its probes found; rewritten by eximhook, edits here are lost\n"
END = b"# END eximhook relaytest (add your own lines above or below)\n"
LOCK_FILE = "blocked-nets.lock"  # in the store directory, beside mirror.lock


def section(blocked: list[dict[str, object]]) -> bytes:
    """eximhook's lines: one host each, with a comment (Exim ignores it) for support staff."""
    lines = []
    for r in sorted(blocked, key=lambda r: ipaddress.ip_address(str(r["ip"])).packed):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(float(str(r.get("blocked_at", 0)))))
        lines.append(f"{r['ip']}  # open relay: probe {r.get('returned_probe', '?')} came back {stamp}\n".encode())
    return BEGIN + b"".join(lines) + END


def merge(current: bytes | None, ours: bytes) -> bytes:
    """``current`` with eximhook's section replaced by ``ours`` (appended if it has none)."""
    if not current:
        return ours
    end = _last_line(current, END)
    begin = _last_line(current[:end], BEGIN) if end >= 0 else -1
    if begin >= 0:
        return current[:begin] + ours + current[end + len(END):]
    return current + (b"" if current.endswith(b"\n") else b"\n") + ours


def _last_line(data: bytes, line: bytes) -> int:
    """Where the last whole line ``line`` of ``data`` starts; -1 if there is none."""
    at = data.rfind(line)
    while at > 0 and data[at - 1:at] != b"\n":
        at = data.rfind(line, 0, at + len(line) - 1)
    return at


def sync(store: Store, path: str, timeout: float = 10.0) -> bool:
    """Make eximhook's section show the table's BLOCK hosts; True if the file changed.
    The table is read inside the lock, so the last writer also read the newest state."""
    lock_path = os.path.join(store.path, LOCK_FILE)
    try:
        with Locked(lock_path, timeout, store.owner):
            blocked = [r for r in table.records(store) if r["status"] == table.BLOCK]
            try:
                # not through a link the Exim user put in the spool: root would copy
                # the file it points at into this 0644 one (Dir.open refuses it)
                current: bytes | None = read_file(path)
            except FileNotFoundError:
                current = None
            data = merge(current, section(blocked))
            if data == current:
                return False
            # 0644: Exim reads it as its own user, support staff as theirs
            replace_files([(path, data)], store.owner, mode=0o644)
            return True
    except TimeoutError as exc:
        raise FileError(f"could not lock {lock_path} within {timeout:g}s: another rewrite of {path} holds it") from exc
    except OSError as exc:
        raise FileError(f"cannot write {exc.filename or path} ([relaytest] blocked_nets): {exc.strerror}") from exc


def listed(path: str, ip: str) -> list[str]:
    """The lines of the file that list ``ip`` (itself or a network holding it), ours and
    the admin's; lines that are no address or network (host names, ``!`` exceptions) are
    not looked at."""
    addr = ipaddress.ip_address(ip)
    found = []
    try:
        lines = read_file(path).decode("utf-8", "replace").splitlines()
    except (OSError, UnsafePath):
        return []
    for line in lines:
        item = line.partition("#")[0].strip()
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            continue
        if net.version == addr.version and addr in net:
            found.append(line)
    return found
