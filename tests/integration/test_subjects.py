"""Subject keys quoted for a shell: what quote writes, bash reads back unchanged."""

from __future__ import annotations

import subprocess

from hypothesis import given
from hypothesis import strategies as st

from eximhook.model.subjects import shell_quote


@given(st.binary(min_size=1, max_size=200).filter(lambda b: b"\0" not in b))
def test_shell_quote_round_trips_through_bash(raw: bytes) -> None:
    text = raw.decode("utf-8", "surrogateescape")
    out = subprocess.run(["bash", "-c", f"printf %s {shell_quote(text)}"], capture_output=True, check=True).stdout
    assert out == raw
