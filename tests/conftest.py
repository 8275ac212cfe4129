"""Shared fixtures: a config in tmp_path, the CLI in-process, hooks as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from eximhook.cli import main

from .e2e.harness import EXIM, EXIMHOOK


def write_config(tmp_path: Path, extra: str = "", limit: int = 5, sendmail: str | None = None) -> Path:
    sendmail_line = f"sendmail = [{sendmail}]\n" if sendmail else 'sendmail = ["/bin/true"]\n'
    text = (
        f'[store]\npath = "{tmp_path}/store"\nmirror_dir = "{tmp_path}/mirror"\n'
        f'[limits.auth]\nlimit = {limit}\nperiod = "1h"\n'
        f'[limits.relay]\nlimit = {limit}\nperiod = "1h"\n'
        f'[notify]\nto = "abuse@example.net"\n{sendmail_line}'
        f'[log]\nfile = "{tmp_path}/eximhook.log"\n'
        f"{extra}"
    )
    (tmp_path / "mirror").mkdir(exist_ok=True)
    path = tmp_path / "eximhook.toml"
    path.write_text(text)
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(config: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``eximhook --config CONFIG ARGS...`` in-process: (exit code, stdout, stderr)."""

    def run(*args: str, config_path: Path | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--config", str(config_path or config), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def hook(config: Path, *args: str, user: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """Run the installed hook as a real process, as Exim would (optionally as the Exim
    user, with an empty environment), stdout and stderr merged as in ``$value``."""
    argv = [sys.executable, "-IS", EXIMHOOK, "--config", str(config), *args]
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv]
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={}, timeout=timeout,
                          cwd="/", check=False)


def exim_expand(expression: str) -> str:
    """Expand ``expression`` with the real Exim (``exim -be``)."""
    proc = subprocess.run([EXIM, "-be"], input=expression.encode() + b"\n", capture_output=True, check=True)
    # -be prints "> " before each result and once more at the end of its input
    return proc.stdout.decode("utf-8", "replace").split("\n")[0].removeprefix("> ")


def pytest_sessionstart(session: pytest.Session) -> None:
    """The hooks run from the installed copy (as Exim runs them): refuse to test a
    stale one, which would pass or fail for code that is not in this checkout."""
    probe = [sys.executable, "-I", "-c", "import eximhook, os; print(os.path.dirname(eximhook.__file__))"]
    installed = Path(subprocess.run(probe, capture_output=True, text=True, cwd="/", check=False).stdout.strip())
    here = Path(__file__).resolve().parent.parent / "eximhook"
    stale = [p.name for p in here.glob("*.py") if not (installed / p.name).is_file()
             or (installed / p.name).read_bytes() != p.read_bytes()]
    if stale or not os.path.exists(EXIMHOOK):
        pytest.exit(f"the eximhook installed for {sys.executable} is not this checkout ({', '.join(stale) or EXIMHOOK}"
                    " differs): run `bash contrib/install.sh --dev` (or pip install .)", returncode=4)


# CI (CI=true) has Exim and root: there these tests must run, never skip.
_CI = os.environ.get("CI") == "true"
needs_exim = pytest.mark.skipif(not _CI and not os.path.exists(EXIM), reason="needs exim4-daemon-heavy")
needs_root = pytest.mark.skipif(not _CI and os.geteuid() != 0, reason="needs root (to become the Exim user)")
