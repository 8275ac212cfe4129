"""The types of the conftest fixtures that are functions, for the tests' annotations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .daemon import Daemon

Run = Callable[..., tuple[int, str, str]]  # the ``cli`` fixture: (exit code, stdout, stderr)
Serve = Callable[[Path], Daemon]  # the ``serve`` fixture
