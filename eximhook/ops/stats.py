"""``eximhook stats``: what eximhook holds and has done, for people, scripts and
Prometheus (node_exporter's textfile collector).

Everything comes from the store (blocks, would-blocks, the outbox, the audit log) and
the queue (frozen messages); nothing here counts anything. Run from a timer, never on
a hook's path: ``prometheus_client`` alone costs ~45 ms to import.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from typing import Any

from ..errors import EximError
from ..exim.queue import Exim
from ..storage.store import Store


def why(record: dict[str, Any]) -> str:
    """A block's cause as one word: the counter that tripped, or ``manual``."""
    if record.get("reason") != "limit":
        return str(record.get("reason") or "manual")
    return str(record.get("counter") or "invalid")  # blocks made before counters had names


def collect(store: Store, exim: Exim | None, now: float | None = None) -> dict[str, Any]:
    """The figures, as ``stats --json`` prints them. ``exim`` None: leave the queue out."""
    now = time.time() if now is None else now
    blocks = Tally((b["ns"], why(b)) for b in store.blocks())
    shadows = Tally((r["ns"], r["counter"]) for r in store.shadows())
    trips: Tally[tuple[str, str]] = Tally()
    recent = {"1h": 0, "24h": 0}
    notified = failed = 0
    for event in store.history():
        if event["event"] == "blocked" and event.get("by") == "eximhook":
            trips[event["ns"], why(event)] += 1
            recent["1h"] += now - event["ts"] <= 3600
            recent["24h"] += now - event["ts"] <= 86400
        notified += event["event"] == "notified"
        failed += event["event"] == "notify-failed"
    outbox = Tally(i["state"] if now >= i.get("hold_until", 0) else "held" for i in store.outbox())
    out: dict[str, Any] = {
        "blocks": _rows(blocks, "counter"), "would_block": _rows(shadows, "counter"),
        "trips_total": _rows(trips, "counter"), "trips_last_hour": recent["1h"], "trips_last_day": recent["24h"],
        "notifications": {"queued": outbox["queued"], "held": outbox["held"], "sending": outbox["sending"],
                          "sent_total": notified, "failed_total": failed},
    }
    if exim is not None:
        try:
            frozen = [m for m in (exim.message(i) for i in exim.ids(True)) if m is not None]
        except (EximError, OSError) as exc:  # the rest is still worth having: say what is missing
            out["frozen_error"] = str(exc)
        else:
            out["frozen"] = {"total": len(frozen), "by_eximhook": sum(m.frozen_by_us for m in frozen)}
    return out


def _rows(tally: Tally[tuple[str, str]], name: str) -> list[dict[str, Any]]:
    return [{"ns": ns, name: what, "count": n} for (ns, what), n in sorted(tally.items())]


def prometheus(figures: dict[str, Any], path: str) -> None:
    """Write ``figures`` as a Prometheus text file, atomically (the library writes a
    temporary file and renames it), readable by node_exporter."""
    import os

    from prometheus_client import CollectorRegistry, write_to_textfile
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    families: list[Any] = []

    def gauge(name: str, doc: str, rows: list[dict[str, Any]], label: str) -> None:
        g = GaugeMetricFamily(name, doc, labels=["ns", label])
        for row in rows:
            g.add_metric([row["ns"], row[label]], row["count"])
        families.append(g)

    gauge("eximhook_blocks", "Subjects blocked now, by namespace and cause", figures["blocks"], "counter")
    gauge("eximhook_would_block", "Would-block records (shadow mode), by namespace and counter",
          figures["would_block"], "counter")
    trips = CounterMetricFamily("eximhook_trips", "Blocks eximhook made, by namespace and counter",
                                labels=["ns", "counter"])
    for row in figures["trips_total"]:
        trips.add_metric([row["ns"], row["counter"]], row["count"])
    families.append(trips)
    for window, key in (("1h", "trips_last_hour"), ("24h", "trips_last_day")):
        families.append(GaugeMetricFamily(f"eximhook_trips_last_{window}", f"Blocks eximhook made in the last {window}",
                                          value=figures[key]))
    n = figures["notifications"]
    queue = GaugeMetricFamily("eximhook_notifications_pending", "Notifications not sent yet, by state",
                              labels=["state"])
    for state in ("queued", "held", "sending"):
        queue.add_metric([state], n[state])
    families.append(queue)
    families.append(CounterMetricFamily("eximhook_notifications_sent", "Notifications sent", value=n["sent_total"]))
    families.append(CounterMetricFamily("eximhook_notifications_failed", "Failed attempts to send a notification",
                                        value=n["failed_total"]))
    if "frozen" in figures:
        frozen = GaugeMetricFamily("eximhook_frozen_messages", "Frozen messages in Exim's queue", labels=["by"])
        frozen.add_metric(["eximhook"], figures["frozen"]["by_eximhook"])
        frozen.add_metric(["other"], figures["frozen"]["total"] - figures["frozen"]["by_eximhook"])
        families.append(frozen)

    class _Figures:
        def collect(self) -> list[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Figures())
    write_to_textfile(path, registry)
    os.chmod(path, 0o644)  # node_exporter runs as its own user
