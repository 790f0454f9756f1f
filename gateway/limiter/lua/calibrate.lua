-- calibrate.lua: the input-estimate calibration histograms of gateway/calibration.py, shared by
-- every replica. Adds one replica's samples to the current time slot, drops slots past the
-- retention, and returns every histogram, so the quantile is computed in Python (the one
-- copy of that arithmetic). Time: common.lua (Redis TIME, so replicas with skewed clocks
-- agree on slots; ARGV[1] may carry a time in ms, tests only).
-- KEYS[i]: one hash per (model, body family), fields "<slot>:<bin>" -> sample count.
-- ARGV: now_ms|"", slot_ms, retain_slots, then per key: n, then n pairs of bin, count.
-- Returns {current slot, flat field/value list of KEYS[1], of KEYS[2], ...}.

local slot_ms, retain = tonumber(ARGV[2]), tonumber(ARGV[3])
local slot = math.floor(now / slot_ms)
local out = {slot}
local a = 4
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, n do
    redis.call('HINCRBY', key, slot .. ':' .. ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  local flat = redis.call('HGETALL', key)
  local keep = {}
  for j = 1, #flat, 2 do
    if tonumber(string.match(flat[j], '^(-?%d+):')) <= slot - retain then
      redis.call('HDEL', key, flat[j])
    else
      keep[#keep + 1] = flat[j]
      keep[#keep + 1] = flat[j + 1]
    end
  end
  if n > 0 then
    redis.call('PEXPIRE', key, retain * slot_ms)
  end
  out[#out + 1] = keep
end
return out
