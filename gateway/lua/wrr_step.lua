-- One step of smooth weighted round-robin per level, mirroring gateway.routing.smooth_wrr_pick.
-- KEYS: the levels' hashes (route_id -> current weight). ARGV: ttl_ms, then per level n,
-- route_id, weight, ... sorted by route_id.
-- Returns per level the chosen route_id followed by the n new current weights.
local ttl = ARGV[1]
local pos = 2
local out = {}
for k = 1, #KEYS do
  local n = tonumber(ARGV[pos])
  pos = pos + 1
  local ids, ws, total = {}, {}, 0
  for i = 1, n do
    ids[i], ws[i] = ARGV[pos], tonumber(ARGV[pos + 1])
    total, pos = total + ws[i], pos + 2
  end
  local cur = redis.call('HMGET', KEYS[k], unpack(ids))
  local best = 1
  local vals = {}
  for i = 1, n do
    vals[i] = (tonumber(cur[i]) or 0) + ws[i]
    if vals[i] > vals[best] then best = i end
  end
  vals[best] = vals[best] - total
  local fields = {}
  for i = 1, n do
    fields[#fields + 1] = ids[i]
    fields[#fields + 1] = vals[i]
  end
  redis.call('HSET', KEYS[k], unpack(fields))
  redis.call('PEXPIRE', KEYS[k], ttl)
  out[#out + 1] = ids[best]
  for i = 1, n do out[#out + 1] = vals[i] end
end
return out
