-- adapt.lua: record an upstream throttle for one pool: multiplicative decrease of its quota
-- factor, at most once per cooldown. The arithmetic is gateway/limiter/adaptive.py (Aimd);
-- this is its only second copy. Time: Redis TIME, so every replica shares one clock.
-- KEYS[1]: the hash of learned factors ({prefix}:adapt). ARGV: pool key, decrease,
--   recovery per second, floor, cooldown seconds.
-- Returns the stored "factor,since" after the update.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local pool = ARGV[1]
local decrease, recovery = tonumber(ARGV[2]), tonumber(ARGV[3])
local floor, cooldown = tonumber(ARGV[4]), tonumber(ARGV[5])

local stored = redis.call('HGET', KEYS[1], pool)
local factor, since = 1.0, nil
if stored then
  local comma = string.find(stored, ',', 1, true)
  factor, since = tonumber(string.sub(stored, 1, comma - 1)), tonumber(string.sub(stored, comma + 1))
  if now - since < cooldown then return stored end
  factor = math.min(1.0, factor + recovery * math.max(0, now - since))
end
local value = string.format('%.6f,%.6f', math.max(floor, factor * decrease), now)
redis.call('HSET', KEYS[1], pool, value)
redis.call('EXPIRE', KEYS[1], 86400)
return value
