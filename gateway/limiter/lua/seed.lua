-- seed.lua: add what one replica admitted in the last window to its window buckets, when it
-- rejoins Redis after an outage (a restarted Redis is empty; see gateway/limiter/failover.py).
-- Additive, so every replica adds its own part; slots already out of the window are skipped.
-- Time and window arithmetic: common.lua (prepended; Redis TIME unless ARGV[1] carries one).
-- KEYS: window buckets, all in one hash slot (the {prefix} hash tag).
-- ARGV: now_ms|"", then per key: slot_ms, span, n, then n pairs of slot, amount.
-- Returns the number of slots added.

local at, added = 2, 0
for i, key in ipairs(KEYS) do
  local slot_ms, span, n = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  at = at + 3
  local _, cur, first = advance(key, slot_ms, span)
  local before = added
  for _ = 1, n do
    local slot, amount = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
    at = at + 2
    if slot >= first and slot <= cur and amount > 0 then
      redis.call('HINCRBY', key, slot, amount)
      redis.call('HINCRBY', key, 't', amount)
      added = added + 1
    end
  end
  if added > before then
    redis.call('HSETNX', key, 'o', first)
    redis.call('PEXPIRE', key, (span + 1) * slot_ms)
  end
end
return added
