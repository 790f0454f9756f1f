-- One tenant write, as one step: compare-and-set on the tenant's revision, store or delete the
-- record, bump the version every replica polls, append the audit entry, keep the tombstones.
-- Uses no clock (times come from the admin call). Every key is in the {prefix} hash slot.
-- KEYS: 1 tenants hash, 2 version counter, 3 audit sorted set (score = version), 4 deleted set
-- ARGV: 1 tenant id, 2 expected revision (-1 any, 0 absent), 3 record JSON ("" deletes),
--       4 audit entry JSON (an object without "seq"), 5 audit entries kept
-- Returns {1, version} or {0, current revision}.
local current = redis.call('HGET', KEYS[1], ARGV[1])
local expect = tonumber(ARGV[2])
if expect >= 0 then
  local revision = 0
  if current then revision = tonumber(cjson.decode(current)['revision']) end
  if revision ~= expect then return {0, revision} end
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[4], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('SREM', KEYS[4], ARGV[1])
end
local version = redis.call('INCR', KEYS[2])
local entry = '{"seq":' .. version .. ',' .. string.sub(ARGV[4], 2)
redis.call('ZADD', KEYS[3], version, entry)
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[5]) + 1))
return {1, version}
