"""The mainlog watcher of issue 11 on the arrival lines a real Exim writes."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from eximhook.relaytest.logline import parse_line

from ..support.harness import DOMAIN
from ..support.paths import EXIM
from ..support.waiting import wait_for


def has_ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.e2e
@pytest.mark.skipif(not os.path.exists(EXIM), reason="needs exim4")
def test_real_exim_lines(tmp_path: Path) -> None:
    """Hostile senders, Message-IDs and subjects over real SMTP: every arrival line
    Exim writes names the connecting address."""
    import smtplib

    from ..support.harness import Exim

    work = Path(tempfile.mkdtemp(prefix="eximhook-watch-"))
    exim = Exim(work, users=["alice"]).setup()
    exim.conf.write_text(exim.conf.read_text().replace(
        "log_selector = +subject +received_recipients",
        "log_selector = +subject +received_recipients +incoming_port +incoming_interface +pid +millisec"))
    sources = [("127.0.0.1", "127.0.0.1"), *([("::1", "::1")] if has_ipv6_loopback() else [])]
    try:
        exim.start()
        for n, (source, expected) in enumerate(sources * 2):
            with smtplib.SMTP(expected, exim.port, source_address=(source, 0), timeout=30) as smtp:
                smtp.ehlo("[10.0.0.1]" if n % 2 else "client.example")
                sender = f'"x) [10.0.0.{n}]:25 H=[10.0.0.9]"@{DOMAIN}'
                smtp.sendmail(sender, [f"alice@{DOMAIN}"],
                              (b"Message-ID: <\"a) [10.0.0.5] P=esmtp\"@x>\r\nSubject: H=(y) [10.0.0.6] \"\\\r\n"
                               b"\r\nhi\r\n"))

        def arrivals() -> list[bytes]:
            lines = [line for line in (work / "log" / "mainlog").read_bytes().splitlines() if b" <= " in line]
            return lines if len(lines) == 2 * len(sources) else []

        lines = wait_for("the arrivals", arrivals)
    finally:
        exim.stop()
        shutil.rmtree(work, ignore_errors=True)
    assert isinstance(lines, list)
    assert [parse_line(line) for line in lines] == [ip for _, ip in sources * 2], lines
