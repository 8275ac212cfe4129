"""The hooks' view of the config, from a cache that costs microseconds to read.

A hook is a fresh interpreter per Exim call, and parsing TOML into the dataclasses of
``config`` costs ~28 ms of imports, three times the interpreter's own start. So the
plain values hooks need (``Config.hook_settings``) are cached with ``marshal`` beside
the config file as ``.NAME.cache``, stamped with the file's inode, size and mtime.
A stale or missing cache is rebuilt by whoever can write it: root's admin commands
always, a hook when the config directory is writable. A hook that cannot write it
still gets correct settings, just ~28 ms slower (and logs why).
"""

from __future__ import annotations

import marshal
import os

from ..errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_FORMAT = 7  # bump when hook_settings() changes shape
def cache_path(path: str) -> str:
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{tail}.cache")


def _stamp(path: str) -> tuple[int, ...]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    return (_FORMAT, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def hook_settings(path: str) -> tuple[dict[str, Any], bool]:
    """The settings for ``path`` and whether they came from a fresh cache."""
    stamp = _stamp(path)
    try:
        with open(cache_path(path), "rb") as f:
            cached_stamp, settings = marshal.load(f)
        if cached_stamp == stamp and isinstance(settings, dict):
            return settings, True
    except (OSError, EOFError, ValueError, TypeError):
        pass
    from .load import load

    settings = load(path).hook_settings()
    write_cache(path, stamp, settings)
    return settings, False


def write_cache(path: str, stamp: tuple[int, ...] | None, settings: dict[str, Any]) -> bool:
    """Atomically (temp file + rename) store ``settings``; False if not allowed to."""
    target = cache_path(path)
    tmp = f"{target}.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # the Exim user reads what root writes
            marshal.dump((stamp or _stamp(path), settings), f)
        os.replace(tmp, target)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
    return True
