"""The queue listed by the real Exim: ``exim -bpi`` where it has it, else exipick."""

from __future__ import annotations

import subprocess

import pytest

from eximhook.exim.queue import Exim

from ..support import harness as h
from ..support.marks import needs_exim, needs_root


@pytest.mark.e2e
@needs_exim
@needs_root
def test_the_queue_is_listed_by_exim_itself_where_it_can() -> None:
    """Two messages held in a real Exim's queue, one frozen: listed frozen and not, the
    same as exipick lists them. Where the binary takes -bpi (4.97 and later) exipick is
    not run at all (here: not there); on 4.96 it is."""
    server = h.make(["bob"])
    try:
        server.setup().start()
        for subject in ("one", "two"):  # remote.example's port is closed: each stays queued
            assert server.send([f"someone@{h.REMOTE}"], source=h.RELAY_CLIENT, subject=subject) == {}
        h.wait_for("two queued", lambda: len(server.queue()) == 2)
        frozen, other = server.queue()
        server.exim("-Mf", frozen)
        takes_bpi = subprocess.run([h.EXIM, "-C", str(server.conf), "-bpi"], capture_output=True).returncode == 0
        exim = Exim(h.EXIM, str(server.conf), h.EXIPICK if not takes_bpi else "/nonexistent/exipick", 30)
        assert exim.lists_ids() is takes_bpi
        assert [m.id for m in exim.queued(frozen=True)] == exim.ids(True) == server.queue(frozen=True) == [frozen]
        assert [m.id for m in exim.queued(frozen=False)] == exim.ids(False) == server.queue(frozen=False) == [other]
        assert [m.subject for m in exim.queued(frozen=True)] == [m.subject for m in exim.messages_of(
            [("sender", f"bob@{h.DOMAIN}")], frozen=True)["sender", f"bob@{h.DOMAIN}"]]
    finally:
        h.cleanup(server)
