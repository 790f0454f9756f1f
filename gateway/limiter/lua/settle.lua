-- settle.lua: correct an admitted request's charges to its real usage, release its leases.
-- The specification is gateway/limiter/core.py; gateway/limiter/memory.py (settle_now) is the
-- reference this script must match. Time and window arithmetic: common.lua (prepended).
-- KEYS: the buckets the admission charged, in the order admit.lua charged them, then the
--   tally hashes (usage counters per tenant and model) this settlement adds to.
-- ARGV: now_ms|"", member, admitted_ms, number of buckets n, then 4 numbers per bucket: kind,
--   a, b, delta (delta: real cost minus reserved cost for token and spend charges, 0 for
--   request counts), then per tally hash: ttl_ms, number of fields, then field, increment.
-- Returns the number of buckets touched.

local member, admitted, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])

local function correct_window(key, slot_ms, span, delta)
  local total, cur = advance(key, slot_ms, span)
  local first = cur - span + 1
  local slot = math.floor(admitted / slot_ms)
  local old = slot > cur - span and tonumber(redis.call('HGET', key, slot)) or nil
  if old then
    local new = math.max(0, old + delta)
    redis.call('HSET', key, slot, new, 't', total + new - old)
  elseif delta > 0 then
    redis.call('HINCRBY', key, cur, delta)
    redis.call('HINCRBY', key, 't', delta)
    redis.call('HSETNX', key, 'o', first)
    redis.call('PEXPIRE', key, (span + 1) * slot_ms)
  end
end

for i = 1, n do
  local o = 4 + (i - 1) * 4
  local kind, a, b, delta = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]),
    tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4])
  local key = KEYS[i]
  if kind == 3 then
    redis.call('ZREM', key, member)
  elseif delta ~= 0 and kind == 2 then
    local v = redis.call('HMGET', key, 'p', 't')
    local current = period_at(now, a)
    if current == period_at(admitted, a) and tonumber(v[1]) == current then
      redis.call('HSET', key, 't', math.max(0, (tonumber(v[2]) or 0) + delta))
    end
  elseif delta ~= 0 then
    correct_window(key, a, b, delta)
  end
end

local o = 5 + n * 4
for k = n + 1, #KEYS do
  local ttl, fields = tonumber(ARGV[o]), tonumber(ARGV[o + 1])
  for f = 1, fields do
    redis.call('HINCRBY', KEYS[k], ARGV[o + 2 * f], ARGV[o + 2 * f + 1])
  end
  redis.call('PEXPIRE', KEYS[k], ttl)
  o = o + 2 + 2 * fields
end
return n
