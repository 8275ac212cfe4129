"""The mirror files, read back by the real Exim: every key written must be found by
the very lookups the seeds and the snippets use, and no key can add a line."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eximhook.model.records import block_record
from eximhook.model.subjects import key_bytes, normalize
from eximhook.storage import mirror
from eximhook.storage.store import Store

from ..support.harness import exim_expand
from ..support.marks import needs_exim


def exim_key(key: str) -> str:
    """``key`` as an Exim expression, so nothing in it is interpreted by Exim."""
    return "${base64d:" + base64.b64encode(key_bytes(key)).decode() + "}"


def lookup(kind: str, key: str, path: Path) -> str:
    return exim_expand(f"${{lookup{{{exim_key(key)}}}{kind}{{{path}}}{{yes}}{{no}}}}")


hostile = st.binary(min_size=1, max_size=600).filter(lambda b: b"\0" not in b).map(
    lambda b: normalize("auth", b.decode("utf-8", "surrogateescape")))


@needs_exim
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(hostile, min_size=1, max_size=4, unique=True))
def test_exim_finds_exactly_the_blocked_keys(tmp_path_factory: pytest.TempPathFactory, keys: list[str]) -> None:
    tmp = tmp_path_factory.mktemp("m")
    store = Store(str(tmp / "store"))
    blocked, other = keys[:-1] or keys, keys[-1] + "-not-blocked"
    for key in blocked:
        store.block(block_record("auth", key, 1.0, by="test", reason="manual"), 1.0, notify=False)
    mirror.rewrite(store, str(tmp))
    lsearch_file = tmp / "blocked_authenticated_users"
    lines = lsearch_file.read_bytes().split(b"\n")
    assert len([x for x in lines if x and not x.startswith(b"#")]) == len(blocked), "one line per key"
    for key in blocked:
        assert lookup("lsearch", key, lsearch_file) == "yes"
        assert exim_expand(f"${{lookup{{auth:{exim_key(key)}}}cdb{{{tmp / mirror.CDB_FILE}}}{{yes}}{{no}}}}") == "yes"
    assert lookup("lsearch", other, lsearch_file) == "no"
    store.close()
