"""A config with open-relay probing on, and the signing key and clock its tests share."""

from __future__ import annotations

from pathlib import Path

from .config import write_config

KEY = b"k" * 32  # the signing key written to [relaytest] key_file
NOW = 1_700_000_000.0  # the injected clock
DAY = 86400.0


def relaytest_config(tmp_path: Path, **extra: object) -> Path:
    """A config in ``tmp_path`` probing 192.0.2.0/24 and 2001:db8::/32; ``extra`` go into [relaytest]."""
    key = tmp_path / "relaytest.key"
    key.write_bytes(KEY + b"\n")
    key.chmod(0o640)
    rt = {"networks": ["192.0.2.0/24", "2001:db8::/32"], "key_file": str(key), "mailbox": "relaytest@mx.example",
          "abuse": "abuse@example.net", **extra}
    return write_config(tmp_path, settings={f"relaytest.{k}": v for k, v in rt.items()})
