"""Hostile keys in-process: a NUL is a clear error. (Through the real hook process:
integration/test_hostile.py.)"""

from __future__ import annotations

from pathlib import Path

from eximhook.errors import Exit

from ..support.config import write_config


def test_nul_key_is_a_clear_error(cli: object, tmp_path: Path) -> None:
    from eximhook.cli import main

    config = write_config(tmp_path)
    assert main(["--config", str(config), "record-invalid", "auth", "a\0b"]) == Exit.DATAERR
    assert "key contains NUL" in (tmp_path / "eximhook.log").read_text()
