"""The end-to-end area's fixtures."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support import harness as h
from ..support.redis_server import RedisServer


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """This test's own redis-server, as the Exim user (the daemons run as it and the
    socket is 0700); the test may stop it and start it again on the same socket."""
    where = Path(tempfile.mkdtemp(prefix="ehredis-e2e-"))
    exim = pwd.getpwnam(h.EXIM_USER)
    os.chown(where, exim.pw_uid, exim.pw_gid)
    server = RedisServer(where, user=h.EXIM_USER).start()
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(where, ignore_errors=True)
