-- adapt.lua: record an upstream throttle for one pool: its quota factor falls to target x the
-- share of the configured quota the pool's window holds (at least decrease x the current
-- factor), never above the current factor, at most once per cooldown. The arithmetic is
-- gateway/limiter/adaptive.py (Aimd); this is its only second copy. Time and the window:
-- common.lua, prepended when it is loaded (Redis TIME, so every replica shares one clock).
-- KEYS[1]: the hash of learned factors ({prefix}:adapt); KEYS[2], if given: the pool's tokens
--   per minute window (same hash slot).
-- ARGV: now_ms|"", pool key, decrease, recovery per second, floor, cooldown seconds, target,
--   hold seconds, then for KEYS[2] its configured limit, slot_ms and span.
-- Returns the stored "factor,since" after the update.

local at = now / 1000
local pool = ARGV[2]
local decrease, recovery = tonumber(ARGV[3]), tonumber(ARGV[4])
local floor, cooldown = tonumber(ARGV[5]), tonumber(ARGV[6])
local target, hold = tonumber(ARGV[7]), tonumber(ARGV[8])

local stored = redis.call('HGET', KEYS[1], pool)
local current = 1.0
if stored then
  local comma = string.find(stored, ',', 1, true)
  local factor, since = tonumber(string.sub(stored, 1, comma - 1)), tonumber(string.sub(stored, comma + 1))
  if at - since < cooldown then return stored end
  current = math.min(1.0, factor + recovery * math.max(0, at - since - hold))
end
local factor = current * decrease
if KEYS[2] then
  local used = advance(KEYS[2], tonumber(ARGV[10]), tonumber(ARGV[11])) / tonumber(ARGV[9])
  factor = math.min(current, math.max(used, factor) * target)
end
local value = string.format('%.6f,%.6f', math.max(floor, factor), at)
redis.call('HSET', KEYS[1], pool, value)
redis.call('EXPIRE', KEYS[1], 86400)
return value
