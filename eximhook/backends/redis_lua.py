"""The Lua scripts of the Redis backend (``redis.RedisBackend``): each runs in Redis as
one step, and touches only the keys it is given, all of one subject (one slot).

JSON and evidence: Python encodes every string (``json.dumps``, ASCII only, so any
bytes survive as escapes) and a script only joins those pieces; numbers it writes are
integers. Times travel as ``repr`` strings (``%.17g`` back), exact both ways.

No script decodes JSON. A key or evidence may hold any byte (a failed AUTH's user name
is raw bytes); Python keeps a byte that is not UTF-8 as a lone surrogate, which
``json.dumps`` writes as ``\\udcXX``, and Lua's cjson refuses that escape ("invalid
unicode escape code"): one such entry made a script fail for every entry beside it
(issue 21). Escaping such bytes some other way would change what every reader of these
values (admin commands, other relays, older versions) finds in them, and msgpack would
change their format; so they stay JSON as LMDB stores them, which Lua only carries as
ASCII bytes, and what a script would decide from an entry's fields Python decides
(``RedisBackend.claim``), leaving the script the one step that must be atomic.
"""

_COMMON = r"""
local CAP, U32 = 1024, 4294967295
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
-- a window's events are three strings, as the LMDB counters keep them (model.counter):
-- times ('<d'), weights ('<I4'), tags ('<I8', a distinct or ratio counter's), with the
-- sums of the weights and of the bad events' beside them (ratelimit.Window)
local function export_window(w)
  return {string.format('%.17g', w.period), w.times, w.weights, w.crossed, w.crossed_limit, w.tags, w.sum, w.bad}
end
"""

# ratelimit.add, in Lua: the same window, the same compaction past CAP, the same
# crossing (counters.Counters.event); then backends.lmdb.settle's decision and Store.block/shadow.
# As in Python, a count takes off only the events that left (each leaves once) and
# copies the strings whole: its cost does not grow with the window.
# KEYS: the subject's counter, block, shadow, audit, outbox, seq, and the key that
# marks the count done (A's once: the relay's id for it; '' for none).
RECORD = _COMMON + r"""
local function time_at(w, j) return (struct.unpack('<d', w.times, 8 * j - 7)) end
local function weight_at(w, j) return (struct.unpack('<I4', w.weights, 4 * j - 3)) end
local function tag_at(w, j) return (struct.unpack('<I8', w.tags, 8 * j - 7)) end
local function cut(w, first, last)  -- keep events first..last (1-based)
  w.times = string.sub(w.times, 8 * first - 7, 8 * last)
  w.weights = string.sub(w.weights, 4 * first - 3, 4 * last)
  if #w.tags > 0 then w.tags = string.sub(w.tags, 8 * first - 7, 8 * last) end
end
local function push(w, t, weight, tag)
  w.times = w.times .. struct.pack('<d', t)
  w.weights = w.weights .. struct.pack('<I4', weight)
  if tag then w.tags = w.tags .. struct.pack('<I8', tag) end
end
-- ratelimit.expire: the events out of (now - period, now] off the window and its sums;
-- the time to count at (a clock that steps back counts at the newest seen)
local function expire(w, now)
  local n = #w.times / 8
  if n > 0 and now < time_at(w, n) then now = time_at(w, n) end
  local lo, hi, edge = 1, n + 1, now - w.period
  while lo < hi do  -- bisect_right
    local mid = math.floor((lo + hi) / 2)
    if edge < time_at(w, mid) then hi = mid else lo = mid + 1 end
  end
  if lo > 1 then
    for j = 1, lo - 1 do
      local x = weight_at(w, j)
      w.sum = w.sum - x
      if w.bad ~= 0 and tag_at(w, j) == 1 then w.bad = w.bad - x end
    end
    cut(w, lo, n)
  end
  return now
end
-- ratelimit.compact: each slot's events merged into its first (of the same tag)
local function compact(w, slot)
  local tagged = #w.tags > 0
  local ot, ow, ox, first, last = {}, {}, {}, {}, nil
  for j = 1, #w.times / 8 do
    local t, x = time_at(w, j), weight_at(w, j)
    local flag = tagged and tag_at(w, j) or 0
    local k = floordiv(t, slot)
    if k ~= last then first, last = {}, k end
    local at = first[flag]
    if at then ow[at] = math.min(ow[at] + x, U32)
    else ot[#ot + 1] = t; ow[#ow + 1] = x; ox[#ox + 1] = flag; first[flag] = #ot end
  end
  local pt, pw, px, sum, bad = {}, {}, {}, 0, 0
  for j = 1, #ot do
    pt[j] = struct.pack('<d', ot[j]); pw[j] = struct.pack('<I4', ow[j]); sum = sum + ow[j]
    if tagged then
      px[j] = struct.pack('<I8', ox[j])
      if ox[j] == 1 then bad = bad + ow[j] end
    end
  end
  w.times, w.weights, w.tags, w.sum = table.concat(pt), table.concat(pw), table.concat(px), sum
  if w.bad ~= 0 then w.bad = bad end
end
-- ratelimit.judge: the percentage of bad events (rounded down), and whether it is
-- over the limit with at least the minimum counted
local function judge(total, bad, limit, minimum)
  if total == 0 then return 0, false end
  return math.floor(bad * 100 / total), total >= minimum and bad * 100 > limit * total
end
local function append(list, item, keep)
  list[#list + 1] = item
  local out = {}
  for j = math.max(1, #list - keep + 1), #list do out[#out + 1] = list[j] end
  return out
end

-- one argument, a JSON array of the script's arguments: redis-py packs one string, not
-- thirty (ASCII strings and numbers only, so cjson reads it whatever the keys hold)
local A = cjson.decode(ARGV[1])
local now = tonumber(A[1])
local weight = tonumber(A[2])
local evidence, ip = A[3], A[4]
local keep_evidence, keep_ips = tonumber(A[5]), tonumber(A[6])
local enforce, notify = A[7] == 'enforce', A[8] == 1
local node, outbox_prefix, nwin = A[9], A[10], tonumber(A[11])
local channel, ttl, once = A[12 + 5 * nwin], tonumber(A[13 + 5 * nwin]), A[14 + 5 * nwin]
-- how the counter adds up (policy.Kind.adds), a ratio's minimum, the event's tags
local adds, minimum = A[16 + 5 * nwin], tonumber(A[17 + 5 * nwin])
local new, fresh = {}, {}
for j = 18 + 5 * nwin, #A do
  local x = tonumber(A[j])
  if not fresh[x] then fresh[x] = true; new[#new + 1] = x end
end

-- a relay whose call timed out counts the event alone and sends it again later with
-- the same id: counted once, whether or not Redis ran the first call after all
if once ~= '' and not redis.call('SET', KEYS[7], 1, 'NX', 'PX', tonumber(A[15 + 5 * nwin])) then
  return {-2}
end
local c = load(KEYS[1])
local windows, counts, over = {}, {}, -1
for i = 1, nwin do
  local limit, period = tonumber(A[7 + 5 * i]), tonumber(A[8 + 5 * i])
  local w = {period = period, times = '', weights = '', tags = '', sum = 0, bad = 0, crossed = 0, crossed_limit = 0}
  for _, old in ipairs(c.windows) do
    if old.period == period then w = old; break end
  end
  local t = expire(w, now)
  local count, is_over, crossed
  if adds == 'distinct' then  -- ratelimit._distinct
    local before = #w.times / 8
    for _, x in ipairs(new) do
      local packed = struct.pack('<I8', x)
      local at = string.find(w.tags, packed, 1, true)
      while at and (at - 1) % 8 ~= 0 do at = string.find(w.tags, packed, at + 1, true) end
      if at then
        local j = (at + 7) / 8
        w.times = string.sub(w.times, 1, 8 * j - 8) .. string.sub(w.times, 8 * j + 1)
        w.weights = string.sub(w.weights, 1, 4 * j - 4) .. string.sub(w.weights, 4 * j + 1)
        w.tags = string.sub(w.tags, 1, 8 * j - 8) .. string.sub(w.tags, 8 * j + 1)
      end
    end
    for _, x in ipairs(new) do push(w, t, 1, x) end
    local n, keep = #w.times / 8, math.min(limit + 1, CAP)
    if n > keep then cut(w, n - keep + 1, n) end
    w.sum = #w.times / 8
    count = w.sum
    is_over = count > limit
    crossed = is_over and before <= limit
  elseif adds == 'ratio' then
    local _, was = judge(w.sum, w.bad, limit, minimum)
    local bad = (new[1] or 0) ~= 0
    push(w, t, weight, bad and 1 or 0)
    w.sum = w.sum + weight
    if bad then w.bad = w.bad + weight end
    if #w.times / 8 > CAP then compact(w, period / (CAP / 4)) end
    count, is_over = judge(w.sum, w.bad, limit, minimum)
    crossed = is_over and not was
  else
    push(w, t, weight, nil)
    w.sum = w.sum + weight
    if #w.times / 8 > CAP then compact(w, period / (CAP / 2)) end
    count = w.sum
    is_over = count > limit
    crossed = is_over and count - weight <= limit
  end
  if crossed then w.crossed, w.crossed_limit = count, limit end
  windows[i], counts[i] = w, count
  if is_over and over < 0 then over = i end
end
c.windows = windows
c.total = c.total + weight
if evidence ~= '' then  -- a distinct counter's evidence names values: each once, the newest last
  local kept = c.recent
  if adds == 'distinct' then
    kept = {}
    for _, x in ipairs(c.recent) do if x ~= evidence then kept[#kept + 1] = x end end
  end
  c.recent = append(kept, evidence, keep_evidence)
end
if ip ~= '' then
  local ips = {}
  for _, x in ipairs(c.ips) do if x ~= ip then ips[#ips + 1] = x end end
  c.ips = append(ips, ip, keep_ips)
end
redis.call('SET', KEYS[1], cmsgpack.pack(c), 'PX', ttl)

-- no window's events in the reply: a count's cost must not grow with its window
local crossings = {}
for i = 1, nwin do crossings[i] = {windows[i].crossed, windows[i].crossed_limit} end
local blocked = redis.call('EXISTS', KEYS[2])
local shown = over >= 0  -- the evidence, for a record only: a count under its limits has none to make
local state = {c.total, counts, crossings, shown and c.recent or {}, shown and c.ips or {}}
if over < 0 then return {-1, blocked, 0, 0, 0, state, 0} end

local limit, w = tonumber(A[7 + 5 * over]), windows[over]
local count = counts[over]
if w.crossed_limit == limit and limit < w.crossed and w.crossed <= count then count = w.crossed end
if enforce and blocked == 1 then return {over - 1, 1, 0, 0, count, state, 0} end
local record = A[9 + 5 * over] .. string.format(', "count": %d, "total": %d, "ips": [', count, c.total)
  .. table.concat(c.ips, ', ') .. '], "rcpts": [' .. table.concat(c.recent, ', ') .. ']}'
if enforce then
  redis.call('SET', KEYS[2], record)
  redis.call('PUBLISH', channel, '{"op": "block", "node": ' .. node .. ', "record": ' .. record .. '}')
else
  if redis.call('HSETNX', KEYS[3], A[11 + 5 * over], record) == 0 then
    return {over - 1, blocked, 0, 0, count, state, 0}
  end
end
local seq = redis.call('INCR', KEYS[6])
local tail = string.format(', "seq": %d}', seq)
if not enforce then tail = string.format(', "count": %d', count) .. tail end  -- as Store.shadow's event
redis.call('RPUSH', KEYS[4], A[10 + 5 * over] .. tail)
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
BLOCK = r"""
if redis.call('SET', KEYS[1], ARGV[1], 'NX') == false then return -1 end
redis.call('PUBLISH', ARGV[4], ARGV[5] .. ARGV[1] .. '}')
local seq = redis.call('INCR', KEYS[4])
redis.call('RPUSH', KEYS[2], ARGV[2] .. string.format(', "seq": %d}', seq))
if ARGV[3] == '' then return 0 end
seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[3], seq, ARGV[3] .. ', "block": ' .. ARGV[1] .. string.format(', "seq": %d}', seq))
return seq
"""

# engine.actions.unblock: the block lifted with its audit event and published, the would-block
# records and the counters (KEYS[6..]) cleared: 1. With would-block records and no
# block, those and the counters cleared: 2. Neither: nothing changed, 0.
# The lifted record stays a while (ARGV[4] s) as a tombstone: a relay that missed the
# message tells a lifted block from one this Redis lost (a failover, a flush).
# KEYS: the subject's block, audit, seq, shadow, lifted, counters...
UNBLOCK = r"""
local record = redis.call('GET', KEYS[1])
local shadows = redis.call('DEL', KEYS[4])
if not record and shadows == 0 then return 0 end
redis.call('DEL', KEYS[1])
for i = 6, #KEYS do redis.call('DEL', KEYS[i]) end
if not record then return 2 end
redis.call('SET', KEYS[5], record, 'EX', ARGV[4])
local seq = redis.call('INCR', KEYS[3])
redis.call('RPUSH', KEYS[2], ARGV[1] .. string.format(', "seq": %d}', seq))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

# RedisBackend.claim: one notification off the subject's outbox (KEYS[1]) if it is still
# the entry the relay read there (ARGV[2], compared as bytes): the relay whose call
# deletes it sends it. Which ones to claim (their age, their relay) Python decides: see
# the docstring above for why no script decodes an entry.
CLAIM = r"""
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

# RedisBackend.clear_shadows: the subject's would-block records (KEYS[1]) deleted, and
# how many there were. A script, not MULTI: redis-py's cluster client has MULTI only
# from 6.1, and Debian 12 ships 4.3.4.
CLEAR = r"""
local n = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
"""

# RedisBackend.counters_of: each of the subject's counters KEYS, as COUNTER exports one.
COUNTERS = _COMMON + r"""
local out = {}
for k = 1, #KEYS do
  local c = load(KEYS[k])
  local windows = {}
  for i, w in ipairs(c.windows) do windows[i] = export_window(w) end
  out[k] = {c.total, windows, c.recent, c.ips}
end
return out
"""

# RedisBackend.settle, for a tally no script counted (the combined score): RECORD's
# would-block step alone. KEYS: the subject's shadow, audit, outbox, seq. ARGV: the
# shadow field, the record, the audit event and outbox entry without their closing
# brace, whether to queue the entry.
SHADOW = r"""
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return -1 end
local seq = redis.call('INCR', KEYS[4])
redis.call('RPUSH', KEYS[2], ARGV[3] .. string.format(', "seq": %d}', seq))
if ARGV[5] ~= '1' then return 0 end
seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[3], seq, ARGV[4] .. ', "block": ' .. ARGV[2] .. string.format(', "seq": %d}', seq))
return seq
"""

# RedisBackend.learn: a network a user sent mail from, known until ARGV[2] (a time),
# into the user's hash KEYS[1] (network -> until), the later time kept; then only the
# ARGV[3] known longest stay, and the hash expires when the last of them is no longer
# known (a whole-second time, rounded up). Times compare as numbers, as Python's do.
LEARN = r"""
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '')
if old == nil or tonumber(ARGV[2]) > old then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
local entries = redis.call('HGETALL', KEYS[1])
local kept, last = #entries / 2, 0
while kept > tonumber(ARGV[3]) do
  local first, at = nil, nil
  for i = 1, #entries, 2 do
    local t = tonumber(entries[i + 1]) or -1
    if entries[i] and (at == nil or t < at) then first, at = i, t end
  end
  redis.call('HDEL', KEYS[1], entries[first])
  entries[first] = false
  kept = kept - 1
end
for i = 1, #entries, 2 do
  local t = tonumber(entries[i + 1])
  if entries[i] and t and t > last then last = t end
end
redis.call('EXPIREAT', KEYS[1], math.ceil(last))
"""
