"""What eximhook keeps in Redis, as the backend reads it back (``redis``): each value is
checked before it is used, and one that is not what eximhook writes is an
``Undecodable`` error naming its key, never a crash deeper in."""

from __future__ import annotations

import json

from ..errors import EximhookError, Exit
from ..model.ratelimit import Window, unpacked

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def prefix(obj: dict[str, Any]) -> str:
    """``obj`` as JSON without its closing brace: the script adds the fields it knows."""
    return json.dumps(obj)[:-1]


def decoded(raw: bytes | str, valid: Callable[[dict[str, Any]], bool], what: str) -> tuple[dict[str, Any] | None, str]:
    """The JSON object ``raw`` if ``valid``, or None and why not."""
    try:
        value = json.loads(raw)
    except ValueError as exc:  # not UTF-8 (UnicodeDecodeError), or not JSON
        return None, f"not JSON: {exc}"
    if isinstance(value, dict) and valid(value):
        return value, ""
    return None, f"not {what}"


def is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def is_subject(record: dict[str, Any]) -> bool:
    return isinstance(record.get("ns"), str) and isinstance(record.get("key"), str)


def is_notification(entry: dict[str, Any]) -> bool:
    """What ``claim`` and the relay that sends it read of an outbox entry."""
    block = entry.get("block")
    return (is_number(entry.get("ts")) and isinstance(entry.get("node"), str) and isinstance(entry.get("kind"), str)
            and isinstance(block, dict) and is_subject(block))


def is_exemption(record: dict[str, Any]) -> bool:
    return (isinstance(record.get("ns"), str) and isinstance(record.get("pattern"), str)
            and is_number(record.get("since")))


def is_lifted(record: dict[str, Any]) -> bool:
    return is_subject(record) and is_number(record.get("since"))


class Replayed(Exception):
    """A count sent again (the same ``Event.once``) that Redis has counted already."""


class Undecodable(EximhookError):
    """A value in Redis that is not what eximhook writes there (corrupt, or another
    program's): ``key`` (and hash ``field``) holds ``raw``."""

    exit_code = Exit.UNAVAILABLE

    def __init__(self, key: bytes, field: bytes | str | None, raw: bytes | str, why: str) -> None:
        self.key, self.field, self.raw = key, field, raw
        where = key.decode("utf-8", "surrogateescape") + ("" if field is None else f" field {field!r}")
        super().__init__(f"{where} in Redis is not what eximhook writes there ({why}): {raw[:200]!r}"
                         + (f" ({len(raw)} bytes)" if len(raw) > 200 else ""))


def window(exported: list[Any]) -> Window:
    """A window as ``redis_lua.COUNTERS`` exports it: its events as the strings it keeps."""
    period, times, weights, crossed, crossed_limit, tags, total, bad = exported
    w = Window(float(period), crossed=int(crossed), crossed_limit=int(crossed_limit), total=int(total), bad=int(bad))
    w.times, w.weights, w.tags = unpacked("d", times), unpacked("I", weights), unpacked("Q", tags)
    return w
