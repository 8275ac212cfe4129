"""The suite again on Debian 13 "trixie" (Exim 4.98, Python 3.13, Redis 8): the same
tests, with trixie's Exim and Redis, in a system made by debootstrap, from the install
contrib/install.sh --dev makes there (the locked versions, a venv of Python 3.13)."""

from __future__ import annotations

import re

import pytest

from ..support.marks import needs_root
from .chroot import Chroot

# a system made by debootstrap, then the whole suite in it (2400 s of its own)
pytestmark = [pytest.mark.release, needs_root, pytest.mark.timeout(4800)]


def test_the_suite_passes_on_trixie(trixie_dev: Chroot) -> None:
    done = trixie_dev.run("cd /srv/eximhook && exim4 -bV | head -1 && /opt/eximhook/bin/python -V && "
                          "/opt/eximhook/bin/python -m pytest -m 'not release' -q -p no:cacheprovider 2>&1",
                          check=False, timeout=2400)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    print(done.stdout[:200], summary)
    assert done.returncode == 0, done.stdout[-12000:]
    assert re.search(r"Exim version 4\.9[89]", done.stdout) and "Python 3.13" in done.stdout, done.stdout[:300]
