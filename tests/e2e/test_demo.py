"""README's demo (contrib/demo.py) runs, and shows what it says it shows: the spambot
caught without a process started, and seed 004's volume limit tripping at the message
that crosses it while bounces are measured in shadow mode."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ..support.marks import needs_exim, needs_root
from ..support.paths import ROOT

pytestmark = [pytest.mark.e2e, needs_exim, needs_root]


@pytest.mark.timeout(400)  # the demo has 300 s of its own
def test_the_demo() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "contrib" / "demo.py")], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = out.stdout
    assert "processes Exim started for 24 invalid recipients: 0" in text
    assert "1 notification(s)" in text and "Subject: user bob blocked" in text
    assert "message 2: 10 recipients so far: accepted" in text
    assert "message 3: 15 recipients so far: frozen" in text and "message 4: 20 recipients so far: frozen" in text
    assert "auth  carol" in text and "recipients>12/1h" in text
    assert "bounces>1/1h" in text and "alice blocked: 0 (shadow mode only records)" in text
