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
  return {string.format('%.17g', w.period), times, w.weights, w.crossed, w.crossed_limit, w.tags or {}}
end
"""

# ratelimit.record, in Lua: the same window, the same compaction past CAP, the same
# crossing (counters.Counters.event); then backends.lmdb.settle's decision and Store.block/shadow.
# KEYS: the subject's counter, block, shadow, audit, outbox, seq, and the key that
# marks the count done (ARGV once: the relay's id for it; '' for none).
RECORD = _COMMON + r"""
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
-- ratelimit.judge_ratio: the percentage of bad events (rounded down), and whether it is
-- over the limit with at least the minimum counted
local function judge(weights, tags, first, limit, minimum)
  local total, bad = 0, 0
  for j = first, #weights do
    total = total + weights[j]
    if tags[j] ~= 0 then bad = bad + weights[j] end
  end
  if total == 0 then return 0, false end
  return math.floor(bad * 100 / total), total >= minimum and bad * 100 > limit * total
end
-- ratelimit.compact_tagged: per slot, one entry per tag
local function compact_tagged(times, weights, tags, slot)
  local ot, ow, ox, first, last = {}, {}, {}, {}, nil
  for j = 1, #times do
    local n = floordiv(times[j], slot)
    if n ~= last then first, last = {}, n end
    local at = first[tags[j]]
    if at then ow[at] = ow[at] + weights[j]
    else
      ot[#ot + 1] = times[j]; ow[#ow + 1] = weights[j]; ox[#ox + 1] = tags[j]; first[tags[j]] = #ot
    end
  end
  return ot, ow, ox
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
local channel, ttl, once = ARGV[12 + 5 * nwin], tonumber(ARGV[13 + 5 * nwin]), ARGV[14 + 5 * nwin]
-- how the counter adds up (policy.Kind.adds), a ratio's minimum, the event's tags
local adds, minimum = ARGV[16 + 5 * nwin], tonumber(ARGV[17 + 5 * nwin])
local new, fresh = {}, {}
for j = 18 + 5 * nwin, #ARGV do
  local x = tonumber(ARGV[j])
  if not fresh[x] then fresh[x] = true; new[#new + 1] = x end
end

-- a relay whose call timed out counts the event alone and sends it again later with
-- the same id: counted once, whether or not Redis ran the first call after all
if once ~= '' and not redis.call('SET', KEYS[7], 1, 'NX', 'PX', tonumber(ARGV[15 + 5 * nwin])) then
  return {-2}
end
local c = load(KEYS[1])
local windows, counts, over = {}, {}, -1
for i = 1, nwin do
  local limit, period = tonumber(ARGV[7 + 5 * i]), tonumber(ARGV[8 + 5 * i])
  local w = {period = period, times = {}, weights = {}, crossed = 0, crossed_limit = 0}
  for _, old in ipairs(c.windows) do
    if old.period == period then w = old; break end
  end
  local oldtags = w.tags or {}
  local t = now
  if #w.times > 0 and t < w.times[#w.times] then t = w.times[#w.times] end
  local times, weights, tags = {}, {}, {}
  local start = bisect_right(w.times, t - period)
  local count, is_over, crossed
  if adds == 'distinct' then  -- ratelimit.record_distinct
    local before = #w.times - start + 1
    for j = start, #w.times do
      if not fresh[oldtags[j]] then times[#times + 1] = w.times[j]; tags[#tags + 1] = oldtags[j] end
    end
    for _, x in ipairs(new) do times[#times + 1] = t; tags[#tags + 1] = x end
    local keep = math.min(limit + 1, CAP)
    if #times > keep then
      local kt, kx = {}, {}
      for j = #times - keep + 1, #times do kt[#kt + 1] = times[j]; kx[#kx + 1] = tags[j] end
      times, tags = kt, kx
    end
    for j = 1, #times do weights[j] = 1 end
    count = #times
    is_over = count > limit
    crossed = is_over and before <= limit
  elseif adds == 'ratio' then  -- ratelimit.record_ratio
    for j = start, #w.times do
      times[#times + 1] = w.times[j]; weights[#weights + 1] = w.weights[j]; tags[#tags + 1] = oldtags[j]
    end
    local _, was = judge(weights, tags, 1, limit, minimum)
    times[#times + 1] = t; weights[#weights + 1] = weight; tags[#tags + 1] = (new[1] or 0) ~= 0 and 1 or 0
    if #times > CAP then times, weights, tags = compact_tagged(times, weights, tags, period / (CAP / 4)) end
    count, is_over = judge(weights, tags, 1, limit, minimum)
    crossed = is_over and not was
  else
    for j = start, #w.times do
      times[#times + 1] = w.times[j]; weights[#weights + 1] = w.weights[j]
    end
    times[#times + 1] = t; weights[#weights + 1] = weight
    if #times > CAP then times, weights = compact(times, weights, period / (CAP / 2)) end
    count = 0
    for j = 1, #weights do count = count + weights[j] end
    is_over = count > limit
    crossed = is_over and count - weight <= limit
  end
  w.times, w.weights, w.tags = times, weights, tags
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
