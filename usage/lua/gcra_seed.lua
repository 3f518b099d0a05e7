-- Write back the backlogs a process kept while Redis was unreachable (usage.ratelimits).
-- KEYS: theoretical arrival times (ms). ARGV: backlog ms per key. Each key becomes the later
-- of what Redis holds and now + backlog: a Redis that restarted empty continues from the
-- process's state instead of a full bucket, and one that kept its data learns the outage.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  local seeded = now + tonumber(ARGV[i])
  if seeded > tat then
    redis.call('SET', KEYS[i], tostring(seeded), 'PX', math.ceil(seeded - now) + 60000)
  end
end
return #KEYS
