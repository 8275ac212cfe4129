"""eximhook.toml(5): every section and key of the config, with its type and default from
the config's definitions (the dataclasses of ``config``, the validators of ``config.values``,
the ``[limits]`` defaults of ``policy``), and what it means from the comments of the
example file (``example``): contrib/eximhook.toml, which the package installs as the
conffile, so that those words are written once.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from typing import Any

from .. import __version__
from ..config import DEFAULT_PATH, ENV_VAR, hookcache
from ..config import limits as _limits
from ..config import values as v
from ..config.load import _SECTIONS, Config
from ..model.policy import COUNTERS, MODES, UNITS, Policy
from ..model.subjects import NAMESPACES
from ..periods import format_period
from . import example
from .roff import bold, escape, italic, item, literal, paragraph, request, title

# What each validator of config.values accepts, as the page names the key's type.
TYPES: dict[Any, str] = {
    v.text: "text",
    v.abs_path: "absolute path",
    v.opt_abs_path: 'absolute path, or "" (unset)',
    v.opt_path: 'absolute path, or ""',
    v.socket_path: "absolute path of a Unix socket, at most 107 bytes",
    v.owner: '"user" or "user:group", both existing',
    v.positive_int: "whole number, at least 1",
    v.count: "whole number, 0 or more",
    v.map_size: f"bytes, at least {v.MIN_MAP_SIZE}",
    v.budget: f'size: bytes, or a number and a unit K, M, G or T ("256M", "1G"); at least {v.MIN_MAP_SIZE} bytes',
    v.size_kib: 'size: KiB, or a number and a unit K, M, G or T ("500M", "2G")',
    v.seconds: "seconds, above 0",
    v.period: 'duration: seconds, or numbers with a unit s, m, h, d or w ("90s", "1h30m", "2d")',
    v.period_or_off: 'duration ("6h", "2d"), or "0": off',
    v.factor: "number, at least 1",
    v.fraction: "number from 0 up to, not including, 1",
    v.boolean: "true or false",
    v.fail_policy: '"open" or "closed"',
    v.mode: " or ".join(json.dumps(m) for m in MODES),
    v.backend: '"lmdb" or "redis"',
    v.argv: "list of strings: a command (an absolute path) and its arguments",
    v.ipv4_prefix: "prefix length, 1 to 32",
    v.ipv6_prefix: "prefix length, 1 to 128",
    v.port: "TCP port, 1 to 65535",
    v.networks: 'list of networks in CIDR notation ("192.0.2.0/24", "2001:db8::/32")',
    v.opt_address: 'mail address, or ""',
    v.redis_url: 'URL, redis://, rediss:// or unix://, or "" (unset)',
    v.sentinels: 'list of "host:port" strings',
    v.owner_patterns: 'table of NS = "address pattern"',
}


def eximhook_toml_5(example_text: str, date: str) -> str:
    """The page of the config file: its keys, types and defaults from the config's
    definitions, what they mean from ``example_text`` (contrib/eximhook.toml)."""
    ex = example.parse(example_text)
    lines = [title("eximhook.toml", "5", date, f"eximhook {__version__}", "File Formats Manual"),
             request("SH", "NAME"), "eximhook.toml \\- the configuration of eximhook",
             request("SH", "SYNOPSIS"), escape(DEFAULT_PATH),
             request("SH", "DESCRIPTION"),
             *paragraph(f"eximhook(8) reads one TOML file: the one --config names, else ${ENV_VAR}, else "
                        f"{DEFAULT_PATH}. A key left out has its default, a key or section that does not "
                        "exist is an error."),
             *paragraph(ex.header),
             request("SH", "SECTIONS")]
    written = set()
    for name in [*ex.tables, *_SECTIONS]:
        top = name.split(".")[0]
        if top in written:
            continue
        written.add(top)
        if top == "limits":
            lines += _limits_section(ex)
        elif top in ("exempt", "overrides"):
            lines += _pattern_section(ex, top)
        elif top in _SECTIONS:
            lines += _section(ex, top, _SECTIONS[top])
    lines += [request("SH", "FILES"), *item(bold(DEFAULT_PATH), "The configuration."),
              *item(bold(hookcache.cache_path(DEFAULT_PATH)),
                    escape("The hooks' cache of it, refreshed by eximhook check-config and every admin command.")),
              request("SH", "SEE ALSO"), ".BR eximhook (8),", ".BR exim4 (8)"]
    return "\n".join(lines) + "\n"


def _about(table: example.Table | None) -> list[str]:
    """A table's own comment, then the paragraphs that introduce it, each a paragraph."""
    return [line for text in ((table.comment, table.prose) if table else ()) if text for line in paragraph(text)]


def _section(ex: example.Example, name: str, cls: Any) -> list[str]:
    table = ex.tables.get(name)
    lines = [request("SS", f"[{name}]"), *_about(table)]
    for f in fields(cls):
        key = f.metadata["toml"] or f.name
        lines += key_entry(key, f.default, f.metadata["parse"], table.keys.get(key) if table else None)
    return lines


def key_entry(key: str, default: Any, parse: Any, written: example.Key | None) -> list[str]:
    """One key: its default (as TOML), type, and what the example file says of it. A key the
    example leaves commented out shows that example instead of a default that may not be
    one to write down (``[store] node`` is the host name)."""
    shown = written is None or written.active
    if default is None:
        tag = f"{bold(key)} (unset)"
    elif default is MISSING or not shown:
        tag = bold(key)
    else:
        tag = f"{bold(key)} = {escape(toml_literal(default, parse))}"
    body = [italic(TYPES[parse])] if parse in TYPES else []
    if written is not None and written.comment:
        body += [".br", escape(written.comment)] if body else [escape(written.comment)]
    if written is not None and not shown and example.is_value(written.value):
        body += [".br", f"Example: {escape(f'{key} = {written.value}')}"]
    return item(tag, *body)


def toml_literal(value: Any, parse: Any) -> str:
    """``value``, a default as the config holds it, written as TOML that ``parse`` reads back."""
    if parse in (v.period, v.period_or_off):
        return json.dumps(format_period(value) if value else "0")
    if parse is v.budget:
        for unit, size in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20)):
            if value % size == 0:
                return json.dumps(f"{value // size}{unit}")
    if parse is v.sentinels:
        value = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in value]
    if parse is v.owner_patterns:
        return "{" + ", ".join(f"{ns} = {json.dumps(p)}" for ns, p in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_literal(item, None) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


def _limits_section(ex: example.Example) -> list[str]:
    table = ex.tables.get("limits")
    counters = ", ".join(f"{c} ({UNITS[c]})" for c in COUNTERS)
    lines = [request("SS", "[limits]"), *_about(table),
             *paragraph(f"NS is one of {', '.join(NAMESPACES)}; COUNTER one of {counters}.")]
    written = table.keys if table else {}
    lines += key_entry("mode", None, v.mode, written.get("mode"))
    lines += key_entry("notify_shadow", Config.notify_shadow, v.boolean, written.get("notify_shadow"))
    defaults = _limits.default_policies()
    for ns in NAMESPACES:
        for counter in COUNTERS:
            policy = defaults[ns].get(counter)
            names = [f"limits.{ns}.{counter}", *([f"limits.{ns}"] if counter == "invalid" else [])]
            name = next((n for n in reversed(names) if n in ex.tables), names[0])
            if policy is None and name not in ex.tables:
                continue  # counted nowhere unless set, and the example does not suggest it
            setting = "off unless set" if policy is None else limit_setting(policy)
            about = ex.tables[name].comment if name in ex.tables else ""
            lines += item(bold(f"[{name}]"), escape(setting), ".br", escape(about))
    return lines


def limit_setting(policy: Policy) -> str:
    """A counter's table as TOML keys: ``limit = 100, period = "1h", mode = "enforce"``;
    a ratio's with its ``minimum``, the combined score's without a period."""
    windows, mode = policy.windows, policy.mode
    if policy.adds == "score":
        return f"limit = {windows[0][0]}, mode = {json.dumps(mode)}"
    extra = f", minimum = {policy.minimum}" if policy.adds == "ratio" else ""
    if len(windows) == 1:
        (limit, period), = windows
        return f"limit = {limit}, period = {json.dumps(format_period(period))}{extra}, mode = {json.dumps(mode)}"
    listed = ", ".join(f"{{limit = {lim}, period = {json.dumps(format_period(p))}}}" for lim, p in windows)
    return f"windows = [{listed}]{extra}, mode = {json.dumps(mode)}"


def _pattern_section(ex: example.Example, top: str) -> list[str]:
    """``[exempt]`` and ``[overrides...]``: tables named by the admin's patterns, so
    described by the example file's words and shown by its (commented) example."""
    tables = {name: t for name, t in ex.tables.items() if name.split(".")[0] == top}
    heading = "[exempt]" if top == "exempt" else '[overrides.NS."PATTERN".COUNTER]'
    keys = ("NS, one of " + ", ".join(NAMESPACES) if top == "exempt"
            else "limit, period, windows and mode, as in [limits]")
    lines = [request("SS", heading), *paragraph(" ".join(t.prose for t in tables.values() if t.prose)),
             *paragraph(f"Keys: {keys}.")]
    shown = [line for name, t in tables.items() for line in (f"[{name}]", *t.lines())]
    return lines + ([*paragraph("Example:"), *literal(shown)] if shown else [])
