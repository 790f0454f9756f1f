-- settle.lua: correct an admitted request's charges to its real usage, release its leases.
-- The specification is gateway/limiter/core.py; gateway/limiter/memory.py (settle_now) is the
-- reference this script must match. Time: Redis TIME unless ARGV[1] carries one (tests only).
-- KEYS: the buckets the admission charged, in the order admit.lua charged them.
-- ARGV: now_ms|"", member, admitted_ms, then 4 numbers per bucket: kind, a, b, delta
--   (delta: real cost minus reserved cost for token charges, 0 for request counts).
-- Returns the number of buckets touched.

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local member, admitted = ARGV[2], tonumber(ARGV[3])
local DAY = 86400000

local function days_to_month(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  return (yoe + era * 400 + (m <= 2 and 1 or 0)) * 12 + m - 1
end

local function period_of(at, kind)
  local day = math.floor(at / DAY)
  if kind == 1 then return day end
  return days_to_month(day)
end

local function correct_window(key, slot_ms, span, delta)
  local cur = math.floor(now / slot_ms)
  local first = cur - span + 1
  local v = redis.call('HMGET', key, 't', 'o')
  local total, oldest = tonumber(v[1]) or 0, tonumber(v[2])
  if oldest and oldest < first then
    if first - oldest >= span then
      redis.call('DEL', key)
      total = 0
    else
      for s = oldest, first - 1 do
        local amount = redis.call('HGET', key, s)
        if amount then
          total = total - tonumber(amount)
          redis.call('HDEL', key, s)
        end
      end
      redis.call('HSET', key, 't', total, 'o', first)
    end
  end
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

local n = (#ARGV - 3) / 4
for i = 1, n do
  local o = 3 + (i - 1) * 4
  local kind, a, b, delta = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]),
    tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4])
  local key = KEYS[i]
  if kind == 3 then
    redis.call('ZREM', key, member)
  elseif delta ~= 0 and kind == 2 then
    local v = redis.call('HMGET', key, 'p', 't')
    local current = period_of(now, a)
    if current == period_of(admitted, a) and tonumber(v[1]) == current then
      redis.call('HSET', key, 't', math.max(0, (tonumber(v[2]) or 0) + delta))
    end
  elseif delta ~= 0 then
    correct_window(key, a, b, delta)
  end
end
return n
