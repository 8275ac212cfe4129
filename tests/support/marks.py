"""Skip marks for what a machine may lack. CI (CI=true) has Exim, root, redis-server and
rspamd (install.sh --dev): there these tests must run, never skip."""

from __future__ import annotations

import os

import pytest

from .paths import EXIM
from .redis_server import REDIS_SERVER
from .rspamd_server import RSPAMD

CI = os.environ.get("CI") == "true"
needs_exim = pytest.mark.skipif(not CI and not os.path.exists(EXIM), reason="needs exim4-daemon-heavy")
needs_root = pytest.mark.skipif(not CI and os.geteuid() != 0, reason="needs root (to become the Exim user)")
needs_redis = pytest.mark.skipif(not CI and not os.path.exists(REDIS_SERVER), reason="needs redis-server")
needs_rspamd = pytest.mark.skipif(not CI and not os.path.exists(RSPAMD), reason="needs rspamd")
