"""Hostile keys through the real hook process: spaces, quotes, ':', newlines,
kilobytes, non-UTF-8. Each call prints one token and nothing else, and the mirror
file keeps one line per key."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eximhook.model.evidence import cut
from eximhook.model.subjects import lsearch_line, normalize

from ..support.config import write_config
from ..support.paths import EXIMHOOK

ATTACKS = [
    b"a b", b"'quote'", b'"dq"', b"x:y", b"line\nbreak", b"cr\r\nX-Injected: 1", b"$(touch /tmp/pwned)",
    b"`id`", b"; rm -rf /", b"\xff\xfe\xfd", b"k" * 10240, b"--ip", b"\\x41",
]


def run_hook(config: Path, *args: bytes) -> tuple[int, bytes]:
    import subprocess

    argv = [sys.executable.encode(), b"-IS", EXIMHOOK.encode(), b"--config", str(config).encode(), *args]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={}, check=False)
    return proc.returncode, proc.stdout


@pytest.mark.parametrize("raw", ATTACKS, ids=lambda b: repr(b[:20]))
def test_attack_keys(tmp_path: Path, raw: bytes) -> None:
    config = write_config(tmp_path, limit=1)
    assert run_hook(config, b"record-invalid", b"auth", raw, b"--rcpt", raw) == (0, b"0")
    assert run_hook(config, b"record-invalid", b"auth", raw) == (0, b"1")
    assert run_hook(config, b"check-blocked", b"auth", raw) == (0, b"1")
    listed = (tmp_path / "mirror" / "blocked_authenticated_users").read_bytes().split(b"\n")
    fits = lsearch_line(normalize("auth", raw.decode("utf-8", "surrogateescape"))) is not None
    assert len([x for x in listed if x and not x.startswith(b"#")]) == (1 if fits else 0)
    assert not os.path.exists("/tmp/pwned")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=1, max_size=3000).filter(lambda b: b"\0" not in b))
def test_any_bytes(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    tmp = tmp_path_factory.mktemp("h")
    config = write_config(tmp, limit=1)
    assert run_hook(config, b"record-invalid", b"relay", raw) == (0, b"0")
    assert run_hook(config, b"record-invalid", b"relay", raw, b"--ip", raw) == (0, b"1")
    code, out = run_hook(config, b"list", b"--json")
    assert code == 0 and len(json.loads(out)) == 1


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=300, max_size=20000).filter(lambda b: b"\0" not in b))
def test_the_hook_keeps_evidence_cut(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    """Through the ${run} hook as through the daemon: a recipient of any length and
    bytes is kept as its first EVIDENCE_BYTES, marked (issue 21); so is the block."""
    config = write_config(tmp_path_factory.mktemp("h"), limit=1)
    for answer in (b"0", b"1"):
        assert run_hook(config, b"record-invalid", b"auth", b"bob", b"--rcpt", raw, b"--ip", raw) == (0, answer)
    code, out = run_hook(config, b"show", b"--json", b"auth", b"bob")
    shown, text = json.loads(out), raw.decode("utf-8", "surrogateescape")
    assert code == 0 and shown["counter"]["rcpts"] == [cut(text)] * 2 and shown["counter"]["ips"] == [cut(text)]
    assert shown["block"]["rcpts"] == [cut(text)] * 2 and len(cut(text).encode("utf-8", "surrogateescape")) <= 256
