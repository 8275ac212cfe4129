"""The mirror files, read back by the real Exim: every key written must be found by
the very lookups the seeds and the snippets use, and no key can add a line."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eximhook.engine import core
from eximhook.model.subjects import key_bytes, normalize
from eximhook.storage import mirror
from eximhook.storage.counters import Counters
from eximhook.storage.store import Store

from .conftest import exim_expand, needs_exim


def exim_key(key: str) -> str:
    """``key`` as an Exim expression, so nothing in it is interpreted by Exim."""
    return "${base64d:" + base64.b64encode(key_bytes(key)).decode() + "}"


def lookup(kind: str, key: str, path: Path) -> str:
    return exim_expand(f"${{lookup{{{exim_key(key)}}}{kind}{{{path}}}{{yes}}{{no}}}}")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "store"))


@pytest.fixture
def counters(store: Store) -> Counters:
    return Counters(store.path)


def test_rewrite_writes_every_file(store: Store, counters: Counters, tmp_path: Path) -> None:
    core.block(store, counters, str(tmp_path), "auth", "bob", 1.0, by="test", note=None, notify=False)
    core.block(store, counters, str(tmp_path), "relay", "192.0.2.7", 1.0, by="test", note=None, notify=False)
    assert (tmp_path / "blocked_authenticated_users").read_bytes().endswith(b'\n"bob"\n')
    assert (tmp_path / "blocked_relay_users").read_bytes().endswith(b'\n"192.0.2.7"\n')
    assert (tmp_path / mirror.CDB_FILE).exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p], "no temp file left behind"
    core.unblock(store, counters, str(tmp_path), "auth", "bob", 2.0, by="test")
    assert b'"bob"' not in (tmp_path / "blocked_authenticated_users").read_bytes()


def test_files_exist_empty_before_any_block(store: Store, tmp_path: Path) -> None:
    # lsearch on a missing file is a 451 for every RCPT: the files must always exist
    assert mirror.rewrite(store, str(tmp_path)) == {
        "blocked_authenticated_users": 0, "blocked_relay_users": 0, mirror.CDB_FILE: 0}
    assert all(os.path.exists(p) for p in mirror.mirror_paths(str(tmp_path)))


def test_too_long_for_lsearch_goes_to_cdb_only(store: Store, counters: Counters, tmp_path: Path) -> None:
    long_key = "k" * 5000
    core.block(store, counters, str(tmp_path), "auth", long_key, 1.0, by="test", note=None, notify=False)
    text = (tmp_path / "blocked_authenticated_users").read_bytes()
    assert b"1 key(s) too long for lsearch" in text and long_key.encode() not in text


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
        store.block(core.block_record("auth", key, 1.0, by="test", reason="manual"), 1.0, notify=False)
    mirror.rewrite(store, str(tmp))
    lsearch_file = tmp / "blocked_authenticated_users"
    lines = lsearch_file.read_bytes().split(b"\n")
    assert len([x for x in lines if x and not x.startswith(b"#")]) == len(blocked), "one line per key"
    for key in blocked:
        assert lookup("lsearch", key, lsearch_file) == "yes"
        assert exim_expand(f"${{lookup{{auth:{exim_key(key)}}}cdb{{{tmp / mirror.CDB_FILE}}}{{yes}}{{no}}}}") == "yes"
    assert lookup("lsearch", other, lsearch_file) == "no"
    store.close()
