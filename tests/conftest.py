"""Fixtures every area shares: a config in tmp_path, the CLI in-process, daemons stopped
by pid at teardown, a sendmail stand-in. Helpers that are no fixture live in
tests/support/; the fixtures of one area in its own conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from eximhook.cli import main

from .support.config import write_config
from .support.daemon import Daemon
from .support.fixtures import Run, Serve
from .support.mailbox import STAND_IN
from .support.paths import EXIMHOOK, ROOT


def pytest_sessionstart(session: pytest.Session) -> None:
    """The hooks run from the installed copy (as Exim runs them): refuse to test a
    stale one, which would pass or fail for code that is not in this checkout."""
    probe = [sys.executable, "-I", "-c", "import eximhook, os; print(os.path.dirname(eximhook.__file__))"]
    installed = Path(subprocess.run(probe, capture_output=True, text=True, cwd="/", check=False).stdout.strip())
    here = ROOT / "eximhook"
    ours = [p.relative_to(here) for p in [*here.rglob("*.py"), *here.glob("*.tmpl")]]  # the subpackages too
    stale = [str(p) for p in ours
             if not (installed / p).is_file() or (installed / p).read_bytes() != (here / p).read_bytes()]
    if stale or not os.path.exists(EXIMHOOK):
        pytest.exit(f"the eximhook installed for {sys.executable} is not this checkout ({', '.join(stale) or EXIMHOOK}"
                    " differs): run `bash contrib/install.sh --dev` (or pip install .)", returncode=4)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def cli(config: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``eximhook --config CONFIG ARGS...`` in-process: (exit code, stdout, stderr)."""

    def run(*args: str, config_path: Path | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--config", str(config_path or config), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start ``eximhook serve`` on a config; every daemon started is stopped at teardown,
    whatever the test did (a failed assert must not leave one running)."""
    started: list[Daemon] = []

    def start(config: Path) -> Daemon:
        started.append(Daemon(config).start())
        return started[-1]

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def mailbox(tmp_path: Path) -> Path:
    """A sendmail stand-in (support/mailbox.py) in tmp_path; read it with ``sent``/``messages``."""
    box = tmp_path / "sendmail"
    (box / "out").mkdir(parents=True)
    script = box / "sendmail.sh"
    script.write_text(STAND_IN.format(dir=box))
    script.chmod(0o755)
    return box
