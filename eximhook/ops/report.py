"""How close subjects are to their limits: for ``show``, ``list --would-block`` and
``top``, so limits are chosen from counts rather than guessed (seed 004)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config.load import Config
from ..storage.counters import Counter, Counters
from ..storage.store import decode_subject_key


def windows(cfg: Config, ns: str, key: str | None, name: str, counter: Counter, now: float,
            since: float) -> list[dict[str, Any]]:
    """Each window of counter ``name`` configured for the subject (its override, if it
    has one): the count now, the peak since ``since`` (by day) and the limit."""
    policy = cfg.policy(ns, name, key)
    out = []
    for limit, period in policy.windows if policy else ():
        w = counter.window(period)
        peak, day = w.peak(since)
        out.append({"limit": limit, "period": period, "count": w.count(now), "peak": peak,
                    "peak_day": day * 86400 if peak else None, "mode": policy.mode if policy else None})
    return out


def subject(cfg: Config, get: Callable[[str, str, str], Counter], ns: str, key: str, now: float,
            since: float) -> dict[str, Any]:
    """Every counter of one subject (``get(ns, key, name)``: this relay's, or Redis's):
    total, evidence and windows."""
    out = {}
    for name in cfg.policies.get(ns, {}):
        c = get(ns, key, name)
        out[name] = {"total": c.total, "evidence": c.recent, "ips": c.ips,
                     "windows": windows(cfg, ns, key, name, c, now, since)}
    return out


def top(cfg: Config, counters: Counters, name: str, now: float, since: float, ns: str | None = None,
        limit: int = 20) -> list[dict[str, Any]]:
    """The subjects with the highest peak against their limit in counter ``name``."""
    rows = []
    for sk, counter in counters.all_of(name):
        subject_ns, key = decode_subject_key(sk)
        if ns is not None and subject_ns != ns:
            continue
        ws = windows(cfg, subject_ns, key, name, counter, now, since)
        if not ws or not any(w["peak"] or w["count"] for w in ws):
            continue
        score = max(w["peak"] / w["limit"] for w in ws)
        rows.append({"ns": subject_ns, "key": key, "counter": name, "total": counter.total, "windows": ws,
                     "score": score})
    rows.sort(key=lambda r: (-r["score"], -r["total"], r["ns"], r["key"] or ""))
    return rows[:limit]
