-- admit.lua: admit one request against all of its buckets atomically, all or nothing.
-- The specification is gateway/limiter/core.py; gateway/limiter/memory.py is the reference
-- this script must match step for step (a property test checks it).
-- Time and the window arithmetic: common.lua, prepended to this script when it is loaded.
-- KEYS: one per bucket, all in one hash slot (the {prefix} hash tag).
-- ARGV: now_ms|"", member, ngroups, size of each group (group 1: the common charges; each
--   further group one alternative), then 5 numbers per bucket: kind, limit, cost, a, b
--   (window: a = slot_ms, b = span; period: a = 1 day | 2 month; leases: a = ttl_ms), then
--   the number of watched window buckets and their indices (the queue's forecast reads them).
-- Returns {1, alternative (0: none), now_ms, remaining of the first common bucket (-1: none
--   or a lease bucket)} or {0, wait_ms (-1: never), bucket index, now_ms, what the bucket holds
--   when it is a day or month budget (-1: another kind), then the span slots of each watched
--   window, oldest first}.

local member = ARGV[2]
local ngroups = tonumber(ARGV[3])
local LEASE_HINT = 250

local function month_start_days(index)  -- days since the epoch of a month's first day
  local y, m = math.floor(index / 12), index % 12 + 1
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5)
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function period_end(kind)
  local day = math.floor(now / DAY)
  if kind == 1 then return (day + 1) * DAY end
  return month_start_days(days_to_month(day) + 1) * DAY
end

local function window_wait(key, limit, cost, slot_ms, span)
  local total, cur, first = advance(key, slot_ms, span)
  if total + cost <= limit then return 0 end
  local fields = {}
  for s = first, cur do fields[#fields + 1] = s end
  local amounts = redis.call('HMGET', key, unpack(fields))
  local need, freed = total + cost - limit, 0
  for i, s in ipairs(fields) do
    freed = freed + (tonumber(amounts[i]) or 0)
    if freed >= need then return (s + span) * slot_ms - now end
  end
  return redis.error_reply('window bucket inconsistent: ' .. key)
end

local function wait_for(key, kind, limit, cost, a, b)
  if cost > limit then
    if kind == 1 then advance(key, a, b) end
    return -1
  end
  if kind == 1 then return window_wait(key, limit, cost, a, b) end
  if kind == 2 then
    local v = redis.call('HMGET', key, 'p', 't')
    local used = (tonumber(v[1]) == period_at(now, a)) and (tonumber(v[2]) or 0) or 0
    if used + cost <= limit then return 0 end
    return period_end(a) - now
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) + cost <= limit then return 0 end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return math.max(1, math.min(LEASE_HINT, tonumber(oldest[2]) - now))
end

local function add(key, kind, cost, a, b)
  if kind == 1 then
    local cur = math.floor(now / a)
    redis.call('HINCRBY', key, cur, cost)
    redis.call('HINCRBY', key, 't', cost)
    redis.call('HSETNX', key, 'o', cur - b + 1)
    redis.call('PEXPIRE', key, (b + 1) * a)
  elseif kind == 2 then
    local p = period_at(now, a)
    local v = redis.call('HMGET', key, 'p', 't')
    local used = (tonumber(v[1]) == p) and (tonumber(v[2]) or 0) or 0
    redis.call('HSET', key, 'p', p, 't', used + cost)
    redis.call('PEXPIRE', key, period_end(a) - now + DAY)
  else
    redis.call('ZADD', key, now + a, member)
    redis.call('PEXPIRE', key, a)
  end
end

-- Evaluate every group: 0 when all its buckets fit, else its longest wait (-1 never).
local sizes, starts, index = {}, {}, 1
for g = 1, ngroups do
  sizes[g] = tonumber(ARGV[3 + g])
  starts[g] = index
  index = index + sizes[g]
end
local base = 3 + ngroups

local function spec(i)
  local o = base + (i - 1) * 5
  return tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]),
    tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5])
end

local function group_wait(g)
  local worst, blocker = 0, 0
  for i = starts[g], starts[g] + sizes[g] - 1 do
    local kind, limit, cost, a, b = spec(i)
    local w = wait_for(KEYS[i], kind, limit, cost, a, b)
    if w ~= 0 and (worst == 0 or w == -1 or (worst ~= -1 and w > worst)) then
      worst, blocker = w, i
    end
  end
  return worst, blocker
end

local common_wait, common_blocker = group_wait(1)
local chosen, alt_waits, alt_blocker = 0, {}, 0
for g = 2, ngroups do
  local w, b = group_wait(g)
  if w == 0 then chosen = g - 1 break end
  alt_waits[#alt_waits + 1] = w
  if alt_blocker == 0 then alt_blocker = b end
end

if common_wait == 0 and (chosen > 0 or ngroups == 1) then
  local last = chosen > 0 and starts[chosen + 1] + sizes[chosen + 1] - 1 or sizes[1]
  for i = 1, sizes[1] do
    local kind, _, cost, a, b = spec(i)
    add(KEYS[i], kind, cost, a, b)
  end
  if chosen > 0 then
    for i = starts[chosen + 1], last do
      local kind, _, cost, a, b = spec(i)
      add(KEYS[i], kind, cost, a, b)
    end
  end
  -- what the first common charge (the tenant's budget) has left, for RateLimit headers
  local remaining = -1
  if sizes[1] > 0 then
    local kind, limit = spec(1)
    if kind ~= 3 then
      local used = tonumber(redis.call('HGET', KEYS[1], 't')) or 0
      remaining = math.max(0, limit - used)
    end
  end
  return {1, chosen, now, remaining}
end

local wait = common_wait
if ngroups > 1 and chosen == 0 then
  local best = -1
  for _, w in ipairs(alt_waits) do
    if w ~= -1 and (best == -1 or w < best) then best = w end
  end
  if common_wait == -1 or best == -1 then wait = -1 else wait = math.max(common_wait, best) end
end
local blocker = common_wait ~= 0 and common_blocker or alt_blocker
local used = -1
do
  local kind, _, _, a = spec(blocker)
  if kind == 2 then
    local v = redis.call('HMGET', KEYS[blocker], 'p', 't')
    used = (tonumber(v[1]) == period_at(now, a)) and (tonumber(v[2]) or 0) or 0
  end
end
local reply = {0, wait, blocker, now, used}
local watch = base + (index - 1) * 5 + 1
for w = 1, tonumber(ARGV[watch]) or 0 do
  local i = tonumber(ARGV[watch + w])
  local _, _, _, slot_ms, span = spec(i)
  local _, cur, first = advance(KEYS[i], slot_ms, span)
  local fields = {}
  for s = first, cur do fields[#fields + 1] = s end
  local amounts = redis.call('HMGET', KEYS[i], unpack(fields))
  for j = 1, #fields do reply[#reply + 1] = tonumber(amounts[j]) or 0 end
end
return reply
