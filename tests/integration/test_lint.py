"""ruff and mypy --strict, so CI fails on either (they are installed with the [lint] extra)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from ..support.paths import ROOT

BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["ruff", "check", "eximhook", "bin/eximhook", "bench", "tests", "contrib", "debian/tests/story"],
                     id="ruff"),
        pytest.param(["mypy", "eximhook"], id="mypy"),
    ],
)
def test_clean(argv: list[str]) -> None:
    tool = shutil.which(argv[0], path=BIN)
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{argv[0]} is not installed: pip install .[lint]")
        pytest.skip(f"{argv[0]} not installed")
    proc = subprocess.run([tool, *argv[1:]], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
