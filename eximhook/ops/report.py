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
        out.append({"limit": limit, "period": period, "count": w.count(now, policy), "peak": peak,
                    "peak_day": day * 86400 if peak else None, "mode": policy.mode if policy else None})
    return out


def subject(cfg: Config, get: Callable[[str, str, str], Counter], ns: str, key: str, now: float,
            since: float) -> dict[str, Any]:
    """Every counter of one subject (``get(ns, key, name)``: this relay's, or Redis's):
    total, evidence and windows; the combined score as a counter whose one window is the
    sum of the enforced counters' (``model.score``), its parts as the evidence."""
    from ..model import score

    out, found = {}, {}
    for name in cfg.policies.get(ns, {}):
        if name != "score":
            found[name] = c = get(ns, key, name)
            out[name] = {"total": c.total, "evidence": c.recent, "ips": c.ips,
                         "windows": windows(cfg, ns, key, name, c, now, since)}
    policy = cfg.policy(ns, "score", key)
    if policy is not None and policy.windows:
        policies = {name: p for name in found if (p := cfg.policy(ns, name, key)) is not None and p.windows}
        tally = score.tally(ns, key, policy, score.parts(policies, found, now))
        out["score"] = {"total": 0, "evidence": tally.counter.recent, "ips": [],
                        "windows": [{"limit": policy.windows[0][0], "period": 0.0, "count": tally.counts[0],
                                     "peak": 0, "peak_day": None, "mode": policy.mode}]}
    return out


def top(cfg: Config, counters: Counters, name: str, now: float, since: float, ns: str | None = None,
        limit: int = 20) -> list[dict[str, Any]]:
    """The subjects with the highest peak against their limit in counter ``name`` (the
    combined score: the highest now, ``top_score``)."""
    if name == "score":
        return top_score(cfg, counters, now, ns, limit)
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


def top_score(cfg: Config, counters: Counters, now: float, ns: str | None = None,
              limit: int = 20) -> list[dict[str, Any]]:
    """The subjects with the highest combined score now (``model.score``): every subject
    with a counter, its counters read in one pass of each."""
    from ..model import score
    from ..model.policy import COUNTED

    found: dict[bytes, dict[str, Counter]] = {}
    for name in COUNTED:
        for sk, counter in counters.all_of(name):
            found.setdefault(sk, {})[name] = counter
    rows: list[dict[str, Any]] = []
    for sk, of in found.items():
        subject_ns, key = decode_subject_key(sk)
        policy = cfg.policy(subject_ns, "score", key)
        if (ns is not None and subject_ns != ns) or policy is None or not policy.windows:
            continue
        policies = {n: p for n in of if (p := cfg.policy(subject_ns, n, key)) is not None and p.windows}
        tally = score.tally(subject_ns, key or "", policy, score.parts(policies, of, now))
        percent, most = tally.counts[0], policy.windows[0][0]
        if percent:
            w: dict[str, Any] = {"limit": most, "period": 0.0, "count": percent, "peak": percent, "peak_day": None,
                                 "mode": policy.mode, "parts": tally.counter.recent}
            rows.append({"ns": subject_ns, "key": key, "counter": "score", "total": 0, "windows": [w],
                         "score": percent / most})
    rows.sort(key=lambda r: (-r["score"], r["ns"], r["key"] or ""))
    return rows[:limit]
