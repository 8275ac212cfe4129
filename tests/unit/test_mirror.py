"""The mirror files Exim reads: every file written, empty before any block, a key too
long for lsearch in the cdb file only. (Read back by the real Exim: e2e/test_mirror.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from eximhook.engine import actions
from eximhook.storage import mirror
from eximhook.storage.counters import Counters
from eximhook.storage.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "store"))


@pytest.fixture
def counters(store: Store) -> Counters:
    return Counters(store.path)


def test_rewrite_writes_every_file(store: Store, counters: Counters, tmp_path: Path) -> None:
    actions.block(store, counters, str(tmp_path), "auth", "bob", 1.0, by="test", note=None, notify=False)
    actions.block(store, counters, str(tmp_path), "relay", "192.0.2.7", 1.0, by="test", note=None, notify=False)
    assert (tmp_path / "blocked_authenticated_users").read_bytes().endswith(b'\n"bob"\n')
    assert (tmp_path / "blocked_relay_users").read_bytes().endswith(b'\n"192.0.2.7"\n')
    assert (tmp_path / mirror.CDB_FILE).exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p], "no temp file left behind"
    actions.unblock(store, counters, str(tmp_path), "auth", "bob", 2.0, by="test")
    assert b'"bob"' not in (tmp_path / "blocked_authenticated_users").read_bytes()


def test_files_exist_empty_before_any_block(store: Store, tmp_path: Path) -> None:
    # lsearch on a missing file is a 451 for every RCPT: the files must always exist
    assert mirror.rewrite(store, str(tmp_path)) == {
        "blocked_authenticated_users": 0, "blocked_relay_users": 0, mirror.CDB_FILE: 0}
    assert all(os.path.exists(p) for p in mirror.mirror_paths(str(tmp_path)))


def test_too_long_for_lsearch_goes_to_cdb_only(store: Store, counters: Counters, tmp_path: Path) -> None:
    long_key = "k" * 5000
    actions.block(store, counters, str(tmp_path), "auth", long_key, 1.0, by="test", note=None, notify=False)
    text = (tmp_path / "blocked_authenticated_users").read_bytes()
    assert b"1 key(s) too long for lsearch" in text and long_key.encode() not in text
