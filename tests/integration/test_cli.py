"""The installed ``eximhook`` as a process: an admin command into a closed pipe is quiet."""

from __future__ import annotations

from pathlib import Path


def test_show_into_a_closed_pipe_is_quiet(config: Path) -> None:
    """`eximhook show ... | head -1`: the reader goes away; no traceback, no error."""
    import subprocess
    import sys

    from ..support.paths import EXIMHOOK

    for i in range(6):  # long evidence: more output than a pipe holds, so the writer meets EPIPE
        subprocess.run([sys.executable, EXIMHOOK, "--config", str(config), "record-invalid", "auth", "bob",
                        "--rcpt", f"n{i}@" + "x" * 15000], capture_output=True, check=False)
    out = subprocess.run(f"{sys.executable} {EXIMHOOK} --config {config} show auth bob | head -1",
                         shell=True, capture_output=True, text=True, check=False)
    assert out.stdout.startswith("auth bob: user bob blocked because has sent mail to 6 invalid recipients")
    assert out.stdout.count("\n") == 1 and out.stderr == ""
