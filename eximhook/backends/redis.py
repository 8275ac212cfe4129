"""The shared backend: counters and blocks of several relays in one Redis (issue 13).

Only the daemon and the admin commands import this (and redis-py): a ``${run}`` hook
never does (``bench/redis_hook.py``: ~0.1 s per fork for the import alone).

One server-side Lua script (``_RECORD``, run by EVALSHA, loaded again on NOSCRIPT)
counts an event in the subject's windows, decides the trip, and writes the block
record, its audit event and its outbox entry: Redis runs a script alone, so two relays
recording at the same moment make exactly one block and one notification.

Key layout (``S``: ``store.subject_key``, the same bytes LMDB uses; all keys of one
subject share the hash tag ``{S}``: Redis Cluster puts them in one slot):
  eximhook:{S}:c:COUNTER   msgpack (cmsgpack) of the counter: total, windows (period,
                           event times and weights, the last crossing), evidence, IPs
  eximhook:{S}:block       JSON block record, as LMDB stores it
  eximhook:{S}:shadow      hash COUNTER NUL LIMIT NUL PERIOD -> JSON would-block record
  eximhook:blocks          set of the blocked subjects' S (to list them)
  eximhook:generation      how many times the set of blocks changed (for the mirrors)
  eximhook:audit           list of JSON events; eximhook:audit:seq their numbers
  eximhook:outbox          hash SEQ (20 digits) -> JSON notification; eximhook:outbox:seq
A script that makes a block publishes its JSON record on the channel eximhook:blocked
(``serve.shared`` copies it into each relay's store and mirror files).
The last five are not a subject's: a script that blocks touches them too, so in a Redis
Cluster (not supported yet) they would have to move into the subject's slot. A single
Redis, with or without Sentinel, runs the script as one step.

JSON and evidence: Python encodes every string (``json.dumps``, ASCII only, so any
bytes survive as escapes) and the script only joins those pieces; numbers it writes are
integers. Times travel as ``repr`` strings, exact both ways.
"""

from __future__ import annotations

import json

from ..counters import Counter, Tally, Window
from ..periods import format_period
from ..store import Outcome, subject_key
from .base import Backend, Event

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..config import StoreConfig
    from .base import Exempt
    from .connect import Client

_COMMON = r"""
local CAP = 1024
local function floordiv(x, y)  -- Python's float //, exactly (CPython float_divmod)
  local mod = math.fmod(x, y)
  local div = (x - mod) / y
  if mod ~= 0 and ((y < 0) ~= (mod < 0)) then div = div - 1 end
  local fl = math.floor(div)
  if div - fl > 0.5 then fl = fl + 1 end
  return fl
end
local function load(key)
  local raw = redis.call('GET', key)
  if raw then return cmsgpack.unpack(raw) end
  return {total = 0, windows = {}, recent = {}, ips = {}}
end
local function export_window(w)
  local times = {}
  for j = 1, #w.times do times[j] = string.format('%.17g', w.times[j]) end
  return {string.format('%.17g', w.period), times, w.weights, w.crossed, w.crossed_limit}
end
"""

# ratelimit.record, in Lua: the same window, the same compaction past CAP, the same
# crossing (counters.Counters.event); then core.settle's decision and Store.block/shadow.
_RECORD = _COMMON + r"""
local function bisect_right(a, x)
  local lo, hi = 1, #a + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if x < a[mid] then hi = mid else lo = mid + 1 end
  end
  return lo
end
local function compact(times, weights, slot)
  local ot, ow, last = {}, {}, nil
  for j = 1, #times do
    local n = floordiv(times[j], slot)
    if n == last then ow[#ow] = ow[#ow] + weights[j]
    else ot[#ot + 1] = times[j]; ow[#ow + 1] = weights[j]; last = n end
  end
  return ot, ow
end
local function append(list, item, keep)
  list[#list + 1] = item
  local out = {}
  for j = math.max(1, #list - keep + 1), #list do out[#out + 1] = list[j] end
  return out
end

local now = tonumber(ARGV[1])
local weight = tonumber(ARGV[2])
local evidence, ip = ARGV[3], ARGV[4]
local keep_evidence, keep_ips = tonumber(ARGV[5]), tonumber(ARGV[6])
local enforce, notify = ARGV[7] == 'enforce', ARGV[8] == '1'
local sk, outbox_prefix, nwin = ARGV[9], ARGV[10], tonumber(ARGV[11])
local channel = ARGV[12 + 5 * nwin]

local c = load(KEYS[1])
local windows, counts, over = {}, {}, -1
for i = 1, nwin do
  local limit, period = tonumber(ARGV[7 + 5 * i]), tonumber(ARGV[8 + 5 * i])
  local w = {period = period, times = {}, weights = {}, crossed = 0, crossed_limit = 0}
  for _, old in ipairs(c.windows) do
    if old.period == period then w = old; break end
  end
  local t = now
  if #w.times > 0 and t < w.times[#w.times] then t = w.times[#w.times] end
  local times, weights = {}, {}
  for j = bisect_right(w.times, t - period), #w.times do
    times[#times + 1] = w.times[j]; weights[#weights + 1] = w.weights[j]
  end
  times[#times + 1] = t; weights[#weights + 1] = weight
  if #times > CAP then times, weights = compact(times, weights, period / (CAP / 2)) end
  local count = 0
  for j = 1, #weights do count = count + weights[j] end
  w.times, w.weights = times, weights
  if count > limit and count - weight <= limit then w.crossed, w.crossed_limit = count, limit end
  windows[i], counts[i] = w, count
  if count > limit and over < 0 then over = i end
end
c.windows = windows
c.total = c.total + weight
if evidence ~= '' then c.recent = append(c.recent, evidence, keep_evidence) end
if ip ~= '' then
  local ips = {}
  for _, x in ipairs(c.ips) do if x ~= ip then ips[#ips + 1] = x end end
  c.ips = append(ips, ip, keep_ips)
end
redis.call('SET', KEYS[1], cmsgpack.pack(c))

local exported = {}
for i = 1, nwin do exported[i] = export_window(windows[i]) end
local blocked = redis.call('EXISTS', KEYS[2])
local state = {c.total, counts, exported, c.recent, c.ips}
if over < 0 then return {-1, blocked, 0, 0, 0, state} end

local limit, w = tonumber(ARGV[7 + 5 * over]), windows[over]
local count = counts[over]
if w.crossed_limit == limit and limit < w.crossed and w.crossed <= count then count = w.crossed end
if enforce and blocked == 1 then return {over - 1, 1, 0, 0, count, state} end
local record = ARGV[9 + 5 * over] .. string.format(', "count": %d, "total": %d, "ips": [', count, c.total)
  .. table.concat(c.ips, ', ') .. '], "rcpts": [' .. table.concat(c.recent, ', ') .. ']}'
if enforce then
  redis.call('SET', KEYS[2], record)
  redis.call('SADD', KEYS[9], sk)
  redis.call('INCR', KEYS[8])
  redis.call('PUBLISH', channel, record)
else
  if redis.call('HSETNX', KEYS[3], ARGV[11 + 5 * over], record) == 0 then
    return {over - 1, blocked, 0, 0, count, state}
  end
end
local seq = redis.call('INCR', KEYS[5])
local tail = string.format(', "seq": %d}', seq)
if not enforce then tail = string.format(', "count": %d', count) .. tail end  -- as Store.shadow's event
redis.call('RPUSH', KEYS[4], ARGV[10 + 5 * over] .. tail)
if enforce or notify then
  seq = redis.call('INCR', KEYS[7])
  redis.call('HSET', KEYS[6], string.format('%020d', seq),
             outbox_prefix .. ', "block": ' .. record .. string.format(', "seq": %d}', seq))
end
if enforce then return {over - 1, 1, 1, 0, count, state} end
return {over - 1, blocked, 0, 1, count, state}
"""

# Store.block: the record unless one exists, its audit event, its outbox entry.
_BLOCK = r"""
if redis.call('SET', KEYS[1], ARGV[1], 'NX') == false then return 0 end
redis.call('SADD', KEYS[7], ARGV[4])
redis.call('INCR', KEYS[6])
redis.call('PUBLISH', ARGV[5], ARGV[1])
local seq = redis.call('INCR', KEYS[3])
redis.call('RPUSH', KEYS[2], ARGV[2] .. string.format(', "seq": %d}', seq))
if ARGV[3] ~= '' then
  seq = redis.call('INCR', KEYS[5])
  redis.call('HSET', KEYS[4], string.format('%020d', seq),
             ARGV[3] .. ', "block": ' .. ARGV[1] .. string.format(', "seq": %d}', seq))
end
return 1
"""

_UNBLOCK = r"""
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('SREM', KEYS[5], ARGV[2])
redis.call('INCR', KEYS[4])
local seq = redis.call('INCR', KEYS[3])
redis.call('RPUSH', KEYS[2], ARGV[1] .. string.format(', "seq": %d}', seq))
return 1
"""

_COUNTER = _COMMON + r"""
local c = load(KEYS[1])
local windows = {}
for i, w in ipairs(c.windows) do windows[i] = export_window(w) end
return {c.total, windows, c.recent, c.ips}
"""


def _prefix(obj: dict[str, Any]) -> str:
    """``obj`` as JSON without its closing brace: the script adds the fields it knows."""
    return json.dumps(obj)[:-1]


class RedisBackend(Backend):
    name = "redis"

    def __init__(self, client: Client, prefix: str = "eximhook") -> None:
        self.client = client
        self.prefix = prefix.encode()
        self._record = client.register_script(_RECORD)  # EVALSHA; on NOSCRIPT, loaded again
        self._block = client.register_script(_BLOCK)
        self._unblock = client.register_script(_UNBLOCK)
        self._counter = client.register_script(_COUNTER)
        p = self.prefix
        self.k_blocks, self.k_generation = p + b":blocks", p + b":generation"
        self.k_audit, self.k_audit_seq = p + b":audit", p + b":audit:seq"
        self.k_outbox, self.k_outbox_seq = p + b":outbox", p + b":outbox:seq"
        self.channel = p + b":blocked"

    @classmethod
    def open(cls, url: str, prefix: str = "eximhook", timeout: float = 2.0) -> RedisBackend:
        """``redis://host:port/db``, ``rediss://`` (TLS) or ``unix:///path/to/socket``."""
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout), prefix)

    @classmethod
    def from_config(cls, store: StoreConfig, prefix: str = "eximhook") -> RedisBackend:
        """The Redis ``[store]`` names: ``redis_url``, through ``redis_sentinels``, or a
        ``redis_cluster`` (``connect.client``); ``redis_timeout`` bounds each call."""
        from .connect import client

        return cls(client(store), prefix)

    def _key(self, sk: bytes, what: bytes) -> bytes:
        # everything after the tag is one of a few fixed suffixes without "}": whatever
        # bytes S holds, the last "}:" splits a key, so two subjects never share one
        return self.prefix + b":{" + sk + b"}:" + what

    def record(self, event: Event, now: float, *, hold: float = 0.0, notify_shadow: bool = False,
               exempt: Exempt | None = None) -> tuple[Tally, Outcome]:
        ns, key, policy = event.ns, event.key, event.policy
        sk = subject_key(ns, key)
        why_not = None
        if exempt and exempt.get(ns):
            from ..exempt import first

            found = first(ns, key, exempt[ns])
            why_not = None if found is None else f"{found[0]}: {found[1]}"
        enforce = policy.enforced and why_not is None
        kind = "blocked" if enforce else "would-block"
        outbox = _prefix({"ts": now, "kind": kind, "state": "queued", "attempts": 0,
                          "hold_until": now + hold if enforce else now})
        args: list[Any] = [repr(now), event.weight, json.dumps(event.evidence) if event.evidence else "",
                           json.dumps(event.ip) if event.ip else "", event.keep_evidence, event.keep_ips,
                           "enforce" if enforce else "shadow", int(notify_shadow and why_not is None), sk, outbox,
                           len(policy.windows)]
        for limit, period in policy.windows:
            record = {"ns": ns, "key": key, "since": now, "by": "eximhook", "reason": "limit", "note": None,
                      "counter": policy.name, "limit": limit, "period": period, "period_text": format_period(period)}
            if enforce:
                audit = {"ts": now, "event": "blocked", "ns": ns, "key": key, "by": "eximhook", "reason": "limit",
                         "note": None, "counter": policy.name}
            else:
                record["exempt"] = why_not
                audit = {"ts": now, "event": "would-block", "ns": ns, "key": key, "by": "eximhook",
                         "counter": policy.name, "limit": limit, "period": period, "exempt": why_not}
            field = f"{policy.name}\0{limit}\0{period!r}".encode()
            args += [limit, repr(period), _prefix(record), _prefix(audit), field]
        args.append(self.channel)
        keys = [self._key(sk, b"c:" + policy.name.encode()), self._key(sk, b"block"), self._key(sk, b"shadow"),
                self.k_audit, self.k_audit_seq, self.k_outbox, self.k_outbox_seq, self.k_generation, self.k_blocks]
        over, blocked, tripped, shadowed, count, state = self._record(keys=keys, args=args)
        total, counts, windows, recent, ips = state
        counter = Counter(int(total), [_window(w) for w in windows], [json.loads(x) for x in recent],
                          [json.loads(x) for x in ips])
        tally = Tally(ns, key, policy, counter, [int(n) for n in counts], int(over))
        if over < 0:
            count = max(tally.counts, default=0)
        return tally, Outcome(bool(blocked), bool(tripped), int(count), int(total), shadowed=bool(shadowed),
                              exempt=why_not if over >= 0 else None)

    def is_blocked(self, ns: str, key: str) -> bool:
        return bool(self.client.exists(self._key(subject_key(ns, key), b"block")))

    def get_block(self, ns: str, key: str) -> dict[str, Any] | None:
        data = self.client.get(self._key(subject_key(ns, key), b"block"))
        return None if data is None else dict(json.loads(data))

    def blocks(self, ns: str | None = None) -> list[dict[str, Any]]:
        sks = sorted(self.client.smembers(self.k_blocks))
        out = []
        for sk in sks:
            assert isinstance(sk, bytes)  # a client without decode_responses
            data = self.client.get(self._key(sk, b"block"))
            if data is not None:
                record = json.loads(data)
                if ns is None or record["ns"] == ns:
                    out.append(record)
        return out

    def block(self, record: dict[str, Any], now: float, *, notify: bool = True, hold: float = 0.0) -> bool:
        sk = subject_key(record["ns"], record["key"])
        audit = _prefix({"ts": now, "event": "blocked", "ns": record["ns"], "key": record["key"], "by": record["by"],
                         "reason": record["reason"], "note": record.get("note"), "counter": record.get("counter")})
        outbox = _prefix({"ts": now, "kind": "blocked", "state": "queued", "attempts": 0,
                          "hold_until": now + hold}) if notify else ""
        keys = [self._key(sk, b"block"), self.k_audit, self.k_audit_seq, self.k_outbox, self.k_outbox_seq,
                self.k_generation, self.k_blocks]
        return bool(self._block(keys=keys, args=[json.dumps(record), audit, outbox, sk, self.channel]))

    def unblock(self, ns: str, key: str, now: float, by: str, *, event: str = "unblocked") -> bool:
        sk = subject_key(ns, key)
        audit = _prefix({"ts": now, "event": event, "ns": ns, "key": key, "by": by})
        keys = [self._key(sk, b"block"), self.k_audit, self.k_audit_seq, self.k_generation, self.k_blocks]
        return bool(self._unblock(keys=keys, args=[audit, sk]))

    def counter(self, ns: str, key: str, name: str = "invalid") -> Counter:
        total, windows, recent, ips = self._counter(keys=[self._key(subject_key(ns, key), b"c:" + name.encode())])
        return Counter(int(total), [_window(w) for w in windows], [json.loads(x) for x in recent],
                       [json.loads(x) for x in ips])

    def reset(self, ns: str, key: str, names: tuple[str, ...] | None = None) -> None:
        from ..policy import COUNTERS

        sk = subject_key(ns, key)
        self.client.delete(*(self._key(sk, b"c:" + name.encode()) for name in names or COUNTERS))

    def shadows(self, ns: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        if ns is not None and key is not None:
            hashes = [self._key(subject_key(ns, key), b"shadow")]
        else:
            hashes = list(self.client.scan_iter(match=self.prefix + b":{*}:shadow", count=1000))
        out = [json.loads(v) for h in hashes for v in self.client.hvals(h)]
        return [r for r in out if (ns is None or r["ns"] == ns) and (key is None or r["key"] == key)]

    def clear_shadows(self, ns: str, key: str) -> int:
        h = self._key(subject_key(ns, key), b"shadow")
        pipe = self.client.pipeline(transaction=True)  # MULTI/EXEC: the count is of what was deleted
        pipe.hlen(h)
        pipe.delete(h)
        return int(pipe.execute()[0])

    def history(self, ns: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        events = [json.loads(e) for e in self.client.lrange(self.k_audit, 0, -1)]
        return [e for e in events if ns is None or (e.get("ns") == ns and e.get("key") == key)]

    def outbox(self) -> list[dict[str, Any]]:
        items = self.client.hgetall(self.k_outbox)
        return [json.loads(items[k]) for k in sorted(items)]

    def close(self) -> None:
        self.client.close()


def _window(exported: list[Any]) -> Window:
    period, times, weights, crossed, crossed_limit = exported
    return Window(float(period), [float(t) for t in times], [int(w) for w in weights], [], int(crossed),
                  int(crossed_limit))
