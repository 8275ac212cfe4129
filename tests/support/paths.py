"""Where the checkout and the programs under test are."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout
SNIPPETS = ROOT / "exim-snippets"  # the checkout's; each Exim includes its own copy (harness.Exim.snippets)
EXIM = "/usr/sbin/exim4"
EXIPICK = "/usr/sbin/exipick"
EXIM_USER = "Debian-exim"
# The installed launcher, as Exim runs it: VENV/bin/python3 -IS VENV/bin/eximhook
EXIMHOOK = os.path.join(os.path.dirname(sys.executable), "eximhook")
