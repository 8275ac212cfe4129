"""eximhook stats: the figures from the store (and the queue), and the same figures as
a Prometheus text file that the library's own parser reads back."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from eximhook.backends.lmdb import LmdbBackend
from eximhook.model.policy import Policy
from eximhook.model.records import Event
from eximhook.storage.counters import Counters
from eximhook.storage.store import Store

from ..support.fixtures import Run


def test_stats_and_the_prometheus_file_agree(cli: Run, tmp_path: Path) -> None:
    for i in range(6):  # LIMIT 5: the 6th blocks bob (invalid)
        cli("record-invalid", "auth", "bob", "--rcpt", f"n{i}@x")
    cli("block", "relay", "192.0.2.9", "--no-notify", "--reason", "phished")
    with Store(str(tmp_path / "store")) as store, Counters(str(tmp_path / "store")) as counters:
        shadow = Policy("recipients", ((2, 3600.0),), "shadow")
        for i in range(3):
            LmdbBackend(store, counters).record(Event("auth", "carol", shadow, weight=1), 100.0 + i)
    prom = tmp_path / "eximhook.prom"
    code, out, _ = cli("stats", "--json", "--prometheus", str(prom))
    assert code == 0
    figures = json.loads(out)
    assert figures["blocks"] == [{"ns": "auth", "counter": "invalid", "count": 1},
                                 {"ns": "relay", "counter": "manual", "count": 1}]
    assert figures["trips_total"] == [{"ns": "auth", "counter": "invalid", "count": 1}], "manual blocks are no trips"
    assert figures["would_block"] == [{"ns": "auth", "counter": "recipients", "count": 1}]
    assert figures["trips_last_hour"] == 1 and figures["notifications"]["queued"] == 1
    assert oct(prom.stat().st_mode & 0o777) == oct(0o644)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(prom.read_text()) for s in family.samples}
    assert samples[("eximhook_blocks", (("counter", "invalid"), ("ns", "auth")))] == 1
    assert samples[("eximhook_blocks", (("counter", "manual"), ("ns", "relay")))] == 1
    assert samples[("eximhook_trips_total", (("counter", "invalid"), ("ns", "auth")))] == 1
    assert samples[("eximhook_would_block", (("counter", "recipients"), ("ns", "auth")))] == 1
    assert samples[("eximhook_trips_last_1h", ())] == figures["trips_last_hour"]
    assert samples[("eximhook_notifications_pending", (("state", "queued"),))] == 1
    assert samples[("eximhook_notifications_sent_total", ())] == figures["notifications"]["sent_total"]
    if "frozen" in figures:
        assert samples[("eximhook_frozen_messages", (("by", "eximhook"),))] == figures["frozen"]["by_eximhook"]
    code, text, _ = cli("stats")
    assert code == 0 and ["blocked", "now", "relay", "manual", "1"] in [line.split() for line in text.splitlines()]
    assert "1 queued" in text
