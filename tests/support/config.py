"""An eximhook config for a test, in its tmp_path."""

from __future__ import annotations

import json
from pathlib import Path


def write_config(tmp_path: Path, extra: str = "", limit: int = 5, sendmail: str | None = None,
                 settings: dict[str, object] | None = None) -> Path:
    """A config in ``tmp_path``; ``settings`` ("section.key": value) go into their tables."""
    sections: dict[str, dict[str, str]] = {
        "store": {"path": f'"{tmp_path}/store"', "mirror_dir": f'"{tmp_path}/mirror"'},
        "limits.auth": {"limit": str(limit), "period": '"1h"'},
        "limits.relay": {"limit": str(limit), "period": '"1h"'},
        "notify": {"to": '"abuse@example.net"', "sendmail": f"[{sendmail or chr(34) + '/bin/true' + chr(34)}]"},
        "log": {"file": f'"{tmp_path}/eximhook.log"'},
        "serve": {"socket": f'"{tmp_path}/eximhook.sock"'},
        # everything here runs as root, in pytest's private tmp_path: the Exim user
        # could not even enter it (tests of that user's view set exim.user back)
        "exim": {"user": '"root"'},
    }
    for dotted, value in (settings or {}).items():
        section, _, key = dotted.rpartition(".")
        sections.setdefault(section, {})[key] = toml_value(value)
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in table.items())
                   for name, table in sections.items())
    (tmp_path / "mirror").mkdir(exist_ok=True)
    path = tmp_path / "eximhook.toml"
    path.write_text(text + extra)
    return path


def toml_value(value: object) -> str:
    """JSON's strings, numbers and lists are TOML's too; a table is written inline."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def redis_config(tmp_path: Path, **store: object) -> Path:
    """A config in ``tmp_path`` on the Redis backend; ``store`` go into [store]."""
    return write_config(tmp_path, settings={"store.backend": "redis", **{f"store.{k}": v for k, v in store.items()}})
