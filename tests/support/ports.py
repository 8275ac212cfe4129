"""Free TCP ports on loopback, for the servers the tests start."""

from __future__ import annotations

import socket


def free_port(*hosts: str) -> int:
    """A TCP port nothing uses now on 127.0.0.1 and on each of ``hosts`` (loopback
    addresses a test listens on: the kernel picks a port free on 127.0.0.1 alone, and an
    earlier test's connection from 127.0.0.3 may hold it there)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError(f"no port free on 127.0.0.1 and {', '.join(hosts)}")
