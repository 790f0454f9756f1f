-- common.lua: the prelude of admit.lua and settle.lua (prepended to each when loaded, so
-- each still runs as one script): the time, calendar periods, and sliding the window.
-- Time: Redis TIME, so replicas with skewed clocks agree; ARGV[1] may carry a time in ms
-- instead (tests only; the gateway always sends "").

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local DAY = 86400000

local function days_to_month(days)  -- UTC civil month index (year * 12 + month - 1)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return y * 12 + m - 1
end

local function period_at(at, kind)  -- 1: the UTC day, 2: the UTC month
  local day = math.floor(at / DAY)
  if kind == 1 then return day end
  return days_to_month(day)
end

-- Drop the slots that left the window; returns the total still counted and the current slot.
local function advance(key, slot_ms, span)
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
  return total, cur, first
end
