"""The shared backend: counters and blocks of several relays in one Redis (issue 13).

Only the daemon and the admin commands import this (and redis-py): a ``${run}`` hook
never does (``bench/redis_hook.py``: ~0.1 s per fork for the import alone).

One server-side Lua script (``_RECORD``, run by EVALSHA, loaded again on NOSCRIPT)
counts an event in the subject's windows, decides the trip, and writes the block
record, its audit event and its outbox entry: Redis runs a script alone, so two relays
recording at the same moment make exactly one block and one notification.

Key layout (``S``: ``store.subject_key``, the same bytes LMDB uses). Every key a script
touches is one subject's, and all of them share the hash tag ``{S}``, so each script
touches one slot and runs unchanged on Redis Cluster:
  eximhook:{S}:c:COUNTER   msgpack (cmsgpack) of the counter: total, windows (period,
                           event times and weights, the last crossing), evidence, IPs;
                           it expires at twice its longest window
  eximhook:{S}:block       JSON block record, as LMDB stores it, plus the relay ("node")
  eximhook:{S}:shadow      hash COUNTER NUL LIMIT NUL PERIOD -> JSON would-block record
  eximhook:{S}:audit       list of JSON events, numbered by eximhook:{S}:seq
  eximhook:{S}:outbox      hash SEQ -> JSON notification not yet taken by a relay
  eximhook:{S}:replayed    the counts made while Redis was down, sent once (expiring)
  eximhook:{S}:lifted      the block record last lifted, for TOMBSTONE seconds
  eximhook:exempt          hash NS NUL PATTERN -> JSON exemption (admin commands only)
Lists across subjects (blocks, history, outbox) SCAN for them: admin commands and the
daemons' periodic comparison, never a request.

Changes are published on eximhook:changes as JSON, ``{"op": "block", "node": N,
"record": R}`` by the script that blocks and ``{"op": "unblock", ...}`` by the one that
lifts, ``{"op": "exempt"}`` by exemption changes: each relay's daemon follows them
(``serve.shared``).

Notifications: the script that blocks queues one in the subject's outbox, naming the
relay ("node") whose request made it. That relay copies it into its own store's outbox
(which mails it, as for a local block) and then ``take``s it off; one that stopped in
between claims its own at restart, and any relay claims one nobody took in a minute
(``claim``): each is deleted by exactly one relay's script.

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
# KEYS: the subject's counter, block, shadow, audit, outbox, seq, replayed.
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
local node, outbox_prefix, nwin = ARGV[9], ARGV[10], tonumber(ARGV[11])
local channel, ttl, replay = ARGV[12 + 5 * nwin], tonumber(ARGV[13 + 5 * nwin]), ARGV[14 + 5 * nwin]

if replay ~= '' then  -- a count a relay made while Redis was down, sent again: once
  if redis.call('HSETNX', KEYS[7], replay, 1) == 0 then return {-2} end
  redis.call('PEXPIRE', KEYS[7], ttl)
end
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
redis.call('SET', KEYS[1], cmsgpack.pack(c), 'PX', ttl)

local exported = {}
for i = 1, nwin do exported[i] = export_window(windows[i]) end
local blocked = redis.call('EXISTS', KEYS[2])
local state = {c.total, counts, exported, c.recent, c.ips}
if over < 0 then return {-1, blocked, 0, 0, 0, state, 0} end

local limit, w = tonumber(ARGV[7 + 5 * over]), windows[over]
local count = counts[over]
if w.crossed_limit == limit and limit < w.crossed and w.crossed <= count then count = w.crossed end
if enforce and blocked == 1 then return {over - 1, 1, 0, 0, count, state, 0} end
local record = ARGV[9 + 5 * over] .. string.format(', "count": %d, "total": %d, "ips": [', count, c.total)
  .. table.concat(c.ips, ', ') .. '], "rcpts": [' .. table.concat(c.recent, ', ') .. ']}'
if enforce then
  redis.call('SET', KEYS[2], record)
  redis.call('PUBLISH', channel, '{"op": "block", "node": ' .. node .. ', "record": ' .. record .. '}')
else
  if redis.call('HSETNX', KEYS[3], ARGV[11 + 5 * over], record) == 0 then
    return {over - 1, blocked, 0, 0, count, state, 0}
  end
end
local seq = redis.call('INCR', KEYS[6])
local tail = string.format(', "seq": %d}', seq)
if not enforce then tail = string.format(', "count": %d', count) .. tail end  -- as Store.shadow's event
redis.call('RPUSH', KEYS[4], ARGV[10 + 5 * over] .. tail)
local queued = 0
if enforce or notify then
  queued = redis.call('INCR', KEYS[6])
  redis.call('HSET', KEYS[5], queued, outbox_prefix .. ', "block": ' .. record .. string.format(', "seq": %d}', queued))
end
if enforce then return {over - 1, 1, 1, 0, count, state, queued} end
return {over - 1, blocked, 0, 1, count, state, queued}
"""

# Store.block: the record unless one exists, its audit event, its outbox entry.
# KEYS: the subject's block, audit, outbox, seq.
_BLOCK = r"""
if redis.call('SET', KEYS[1], ARGV[1], 'NX') == false then return -1 end
redis.call('PUBLISH', ARGV[4], ARGV[5] .. ARGV[1] .. '}')
local seq = redis.call('INCR', KEYS[4])
redis.call('RPUSH', KEYS[2], ARGV[2] .. string.format(', "seq": %d}', seq))
if ARGV[3] == '' then return 0 end
seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[3], seq, ARGV[3] .. ', "block": ' .. ARGV[1] .. string.format(', "seq": %d}', seq))
return seq
"""

# core.unblock: the block (if any) lifted with its audit event and published, the
# would-block records and the counters (KEYS[6..]) cleared; 1 if there was a block.
# The lifted record stays a while (ARGV[4] s) as a tombstone: a relay that missed the
# message tells a lifted block from one this Redis lost (a failover, a flush).
# KEYS: the subject's block, audit, seq, shadow, lifted, counters...
_UNBLOCK = r"""
local record = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[4])
for i = 6, #KEYS do redis.call('DEL', KEYS[i]) end
if not record then return 0 end
redis.call('SET', KEYS[5], record, 'EX', ARGV[4])
local seq = redis.call('INCR', KEYS[3])
redis.call('RPUSH', KEYS[2], ARGV[1] .. string.format(', "seq": %d}', seq))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

# The notifications of one subject that a relay takes over: those its own requests
# queued more than ARGV[3] seconds ago (it stopped before taking them), and any older
# than ARGV[4] (the relay that queued them is down). Each goes to the one relay whose
# call deletes it.
_CLAIM = r"""
local out, items, now = {}, redis.call('HGETALL', KEYS[1]), tonumber(ARGV[2])
for i = 1, #items, 2 do
  local entry = cjson.decode(items[i + 1])
  local age = now - entry.ts
  if (entry.node == ARGV[1] and age >= tonumber(ARGV[3])) or age >= tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[1], items[i])
    out[#out + 1] = items[i + 1]
  end
end
return out
"""

_COUNTER = _COMMON + r"""
local c = load(KEYS[1])
local windows = {}
for i, w in ipairs(c.windows) do windows[i] = export_window(w) end
return {c.total, windows, c.recent, c.ips}
"""


# How long Redis remembers a lifted block: a relay cut off for longer than this and
# holding a copy of it would take the block for lost and put it back.
TOMBSTONE = 7 * 86400


def _prefix(obj: dict[str, Any]) -> str:
    """``obj`` as JSON without its closing brace: the script adds the fields it knows."""
    return json.dumps(obj)[:-1]


class RedisBackend(Backend):
    name = "redis"

    def __init__(self, client: Client, prefix: str = "eximhook", node: str = "eximhook") -> None:
        self.client, self.node = client, node
        self.prefix = prefix.encode()
        self._record = client.register_script(_RECORD)  # EVALSHA; on NOSCRIPT, loaded again
        self._block = client.register_script(_BLOCK)
        self._unblock = client.register_script(_UNBLOCK)
        self._claim = client.register_script(_CLAIM)
        self._counter = client.register_script(_COUNTER)
        self.channel = self.prefix + b":changes"
        self.k_exempt = self.prefix + b":exempt"

    @classmethod
    def open(cls, url: str, prefix: str = "eximhook", timeout: float = 2.0, node: str = "eximhook") -> RedisBackend:
        """``redis://host:port/db``, ``rediss://`` (TLS) or ``unix:///path/to/socket``."""
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout), prefix, node)

    @classmethod
    def from_config(cls, store: StoreConfig, prefix: str = "eximhook") -> RedisBackend:
        """The Redis ``[store]`` names: ``redis_url``, through ``redis_sentinels``, or a
        ``redis_cluster`` (``connect.client``); ``redis_timeout`` bounds each call."""
        from .connect import client

        return cls(client(store), prefix, store.node)

    def _key(self, sk: bytes, what: bytes) -> bytes:
        # everything after the tag is one of a few fixed suffixes without "}": whatever
        # bytes S holds, the last "}:" splits a key, so two subjects never share one; and
        # Redis Cluster hashes what lies between "{" and the first "}" after it, the same
        # bytes in every key of a subject (S starts with its namespace, never with "}")
        return self.prefix + b":{" + sk + b"}:" + what

    def _keys(self, ns: str, key: str, *what: bytes) -> list[bytes]:
        sk = subject_key(ns, key)
        return [self._key(sk, w) for w in what]

    def _scan(self, what: bytes) -> list[bytes]:
        """Every subject's key ``what`` (SCAN: on every node of a Redis Cluster)."""
        return sorted(self.client.scan_iter(match=self.prefix + b":{*}:" + what, count=1000))

    def record(self, event: Event, now: float, *, hold: float = 0.0, notify_shadow: bool = False,
               exempt: Exempt | None = None, replay: str = "") -> tuple[Tally, Outcome]:
        ns, key, policy = event.ns, event.key, event.policy
        why_not = None
        if exempt and exempt.get(ns):
            from ..exempt import first

            found = first(ns, key, exempt[ns])
            why_not = None if found is None else f"{found[0]}: {found[1]}"
        enforce = policy.enforced and why_not is None
        kind = "blocked" if enforce else "would-block"
        outbox = _prefix({"ts": now, "kind": kind, "state": "queued", "attempts": 0, "node": self.node,
                          "hold_until": now + hold if enforce else now})
        args: list[Any] = [repr(now), event.weight, json.dumps(event.evidence) if event.evidence else "",
                           json.dumps(event.ip) if event.ip else "", event.keep_evidence, event.keep_ips,
                           "enforce" if enforce else "shadow", int(notify_shadow and why_not is None),
                           json.dumps(self.node), outbox, len(policy.windows)]
        for limit, period in policy.windows:
            record = {"ns": ns, "key": key, "since": now, "by": "eximhook", "reason": "limit", "note": None,
                      "counter": policy.name, "limit": limit, "period": period, "period_text": format_period(period),
                      "node": self.node}
            if enforce:
                audit = {"ts": now, "event": "blocked", "ns": ns, "key": key, "by": "eximhook", "reason": "limit",
                         "note": None, "counter": policy.name, "node": self.node}
            else:
                record["exempt"] = why_not
                audit = {"ts": now, "event": "would-block", "ns": ns, "key": key, "by": "eximhook",
                         "counter": policy.name, "limit": limit, "period": period, "exempt": why_not,
                         "node": self.node}
            field = f"{policy.name}\0{limit}\0{period!r}".encode()
            args += [limit, repr(period), _prefix(record), _prefix(audit), field]
        # a counter outlives its longest window twice over, then Redis drops it
        ttl = max(1000, int(2000 * max((p for _, p in policy.windows), default=0.5)))
        args += [self.channel, ttl, replay]
        keys = self._keys(ns, key, b"c:" + policy.name.encode(), b"block", b"shadow", b"audit", b"outbox", b"seq",
                          b"replayed")
        result = self._record(keys=keys, args=args)
        if result[0] == -2:
            raise Replayed(f"{ns} {key!r}: counted already ({replay})")
        over, blocked, tripped, shadowed, count, state, queued = result
        total, counts, windows, recent, ips = state
        counter = Counter(int(total), [_window(w) for w in windows], [json.loads(x) for x in recent],
                          [json.loads(x) for x in ips])
        tally = Tally(ns, key, policy, counter, [int(n) for n in counts], int(over))
        if over < 0:
            count = max(tally.counts, default=0)
        return tally, Outcome(bool(blocked), bool(tripped), int(count), int(total), shadowed=bool(shadowed),
                              exempt=why_not if over >= 0 else None, queued=int(queued))

    def is_blocked(self, ns: str, key: str) -> bool:
        return bool(self.client.exists(self._key(subject_key(ns, key), b"block")))

    def get_block(self, ns: str, key: str) -> dict[str, Any] | None:
        data = self.client.get(self._key(subject_key(ns, key), b"block"))
        return None if data is None else dict(json.loads(data))

    def blocks(self, ns: str | None = None) -> list[dict[str, Any]]:
        out = []
        for k in self._scan(b"block"):
            data = self.client.get(k)
            if data is not None:  # else lifted since the scan
                record = json.loads(data)
                if ns is None or record["ns"] == ns:
                    out.append(record)
        return out

    def block(self, record: dict[str, Any], now: float, *, notify: bool = True, hold: float = 0.0) -> bool:
        return self.block_queued(record, now, notify=notify, hold=hold) >= 0

    def block_queued(self, record: dict[str, Any], now: float, *, notify: bool = True, hold: float = 0.0) -> int:
        """``block``, answering -1 if the subject was blocked already, else the number
        of its notification in the subject's outbox (0: none), for ``take``."""
        record = {**record, "node": record.get("node") or self.node}
        audit = _prefix({"ts": now, "event": "blocked", "ns": record["ns"], "key": record["key"], "by": record["by"],
                         "reason": record["reason"], "note": record.get("note"), "counter": record.get("counter"),
                         "node": self.node})
        outbox = _prefix({"ts": now, "kind": "blocked", "state": "queued", "attempts": 0, "node": self.node,
                          "hold_until": now + hold}) if notify else ""
        keys = self._keys(record["ns"], record["key"], b"block", b"audit", b"outbox", b"seq")
        message = f'{{"op": "block", "node": {json.dumps(self.node)}, "record": '
        return int(self._block(keys=keys, args=[json.dumps(record), audit, outbox, self.channel, message]))

    def unblock(self, ns: str, key: str, now: float, by: str, *, event: str = "unblocked") -> bool:
        """Lift the block and clear the subject's would-block records and counters (as
        ``core.unblock`` does), in one step; published, so every relay lifts its copy."""
        from ..policy import COUNTERS

        audit = _prefix({"ts": now, "event": event, "ns": ns, "key": key, "by": by, "node": self.node})
        message = json.dumps({"op": "unblock", "node": self.node, "ns": ns, "key": key, "by": by, "event": event})
        keys = self._keys(ns, key, b"block", b"audit", b"seq", b"shadow", b"lifted",
                          *(b"c:" + n.encode() for n in COUNTERS))
        return bool(self._unblock(keys=keys, args=[audit, self.channel, message, TOMBSTONE]))

    def lifted(self, ns: str, key: str) -> dict[str, Any] | None:
        """The subject's block record last lifted here (for ``TOMBSTONE`` seconds)."""
        data = self.client.get(self._key(subject_key(ns, key), b"lifted"))
        return None if data is None else dict(json.loads(data))

    def take(self, ns: str, key: str, queued: int) -> bool:
        """The notification ``queued`` is this relay's to send (its own store has it): off
        the shared outbox; False if another relay claimed it first, or Redis did not
        answer (then this relay's next ``claim`` finds it, and its store has it)."""
        import redis

        try:
            return bool(self.client.hdel(self._key(subject_key(ns, key), b"outbox"), queued))
        except redis.RedisError:
            return False

    def claim(self, now: float, *, mine_after: float, orphan_after: float) -> list[dict[str, Any]]:
        """The notifications this relay now sends: its own not taken after ``mine_after``
        seconds, and any no relay took in ``orphan_after``; each claimed by one relay."""
        return [json.loads(item) for k in self._scan(b"outbox")
                for item in self._claim(keys=[k], args=[self.node, repr(now), repr(mine_after), repr(orphan_after)])]

    def counter(self, ns: str, key: str, name: str = "invalid") -> Counter:
        total, windows, recent, ips = self._counter(keys=[self._key(subject_key(ns, key), b"c:" + name.encode())])
        return Counter(int(total), [_window(w) for w in windows], [json.loads(x) for x in recent],
                       [json.loads(x) for x in ips])

    def reset(self, ns: str, key: str, names: tuple[str, ...] | None = None) -> None:
        from ..policy import COUNTERS

        self.client.delete(*self._keys(ns, key, *(b"c:" + name.encode() for name in names or COUNTERS)))

    def shadows(self, ns: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        hashes = self._keys(ns, key, b"shadow") if ns is not None and key is not None else self._scan(b"shadow")
        out = [json.loads(v) for h in hashes for v in self.client.hvals(h)]
        return [r for r in out if (ns is None or r["ns"] == ns) and (key is None or r["key"] == key)]

    def clear_shadows(self, ns: str, key: str) -> int:
        (h,) = self._keys(ns, key, b"shadow")
        pipe = self.client.pipeline(transaction=True)  # MULTI/EXEC: the count is of what was deleted
        pipe.hlen(h)
        pipe.delete(h)
        return int(pipe.execute()[0])

    def history(self, ns: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        """Oldest first; each subject numbers its own events (``seq``): a Redis Cluster
        has no one counter every script could touch."""
        lists = self._keys(ns, key, b"audit") if ns is not None and key is not None else self._scan(b"audit")
        events = [json.loads(e) for k in lists for e in self.client.lrange(k, 0, -1)]
        return sorted(events, key=lambda e: (e["ts"], e["seq"]))

    def outbox(self) -> list[dict[str, Any]]:
        items = [json.loads(v) for k in self._scan(b"outbox") for v in self.client.hvals(k)]
        return sorted(items, key=lambda e: (e["ts"], e["seq"]))

    def exemptions(self) -> list[dict[str, Any]]:
        """The admin's exemptions (``eximhook exempt add``), every relay's."""
        return sorted((json.loads(v) for v in self.client.hvals(self.k_exempt)), key=lambda r: r["since"])

    def exempt(self, record: dict[str, Any]) -> bool:
        """Add the exemption ``record`` (as ``Store.exempt``); False if that pattern is
        exempt already. Published: each relay copies it into its store."""
        field = record["ns"].encode() + b"\0" + record["pattern"].encode("utf-8", "surrogateescape")
        if not self.client.hsetnx(self.k_exempt, field, json.dumps(record)):
            return False
        self.client.publish(self.channel, json.dumps({"op": "exempt", "node": self.node}))
        return True

    def unexempt(self, ns: str, pattern: str) -> bool:
        field = ns.encode() + b"\0" + pattern.encode("utf-8", "surrogateescape")
        if not self.client.hdel(self.k_exempt, field):
            return False
        self.client.publish(self.channel, json.dumps({"op": "exempt", "node": self.node}))
        return True

    def close(self) -> None:
        self.client.close()


class Replayed(Exception):
    """A count sent again (``record(replay=...)``) that Redis has counted already."""


def _window(exported: list[Any]) -> Window:
    period, times, weights, crossed, crossed_limit = exported
    return Window(float(period), [float(t) for t in times], [int(w) for w in weights], [], int(crossed),
                  int(crossed_limit))
