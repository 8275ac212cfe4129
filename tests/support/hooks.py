"""The installed eximhook as a real process, as Exim and the admin run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .paths import EXIMHOOK


def hook(config: Path, *args: str, user: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """Run the installed hook as a real process, as Exim would (optionally as the Exim
    user, with an empty environment), stdout and stderr merged as in ``$value``."""
    argv = [sys.executable, "-IS", EXIMHOOK, "--config", str(config), *args]
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv]
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={}, timeout=timeout,
                          cwd="/", check=False)


def outbox_drained(config: Path) -> bool:
    """No notification to the abuse desk is left in the outbox (queued, held or being
    sent): another cannot come without a new event. Wait for this, then count the mail."""
    listed = subprocess.run([sys.executable, "-IS", EXIMHOOK, "--config", str(config), "list", "--json"],
                            capture_output=True, env={}, cwd="/", timeout=30, check=True)
    return all(b["notification"] is None for b in json.loads(listed.stdout))
