"""What contrib/install.sh leaves on the machine (CI runs it before the tests): eximhook
on root's PATH, the snippets of this checkout where README includes them from, a
logrotate entry, and no policy-rc.d of its own (one left behind would keep every later
apt-get upgrade from restarting services, Exim included)."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

from .conftest import needs_root

pytestmark = needs_root

ROOT = Path(__file__).resolve().parent.parent


def test_no_policy_rc_d_of_ours_is_left_behind() -> None:
    path = Path("/usr/sbin/policy-rc.d")
    assert "eximhook install.sh" in (ROOT / "contrib" / "install.sh").read_text(), "the mark this test looks for"
    assert not path.exists() or "eximhook install.sh" not in path.read_text()


def test_eximhook_is_on_roots_path() -> None:
    link = Path("/usr/local/sbin/eximhook")
    assert link.is_symlink() and os.readlink(link) == "/opt/eximhook/bin/eximhook"


def test_the_snippets_are_this_checkouts() -> None:
    installed = Path("/usr/share/eximhook/exim-snippets")
    ours = sorted(p.name for p in (ROOT / "exim-snippets").iterdir())
    assert sorted(p.name for p in installed.iterdir()) == ours, "no stale file, no nested copy"
    _, mismatch, errors = filecmp.cmpfiles(ROOT / "exim-snippets", installed, ours, shallow=False)
    assert (mismatch, errors) == ([], []), "run contrib/install.sh again: the installed snippets are older"


def test_logrotate_entry() -> None:
    entry = Path("/etc/logrotate.d/eximhook")
    assert entry.read_text() == (ROOT / "contrib" / "eximhook.logrotate").read_text()
