-- GCRA over several limits, all charged or none (usage.ratelimits.gcra_step, step for step).
-- KEYS: one theoretical arrival time (ms) per limit. ARGV: force (0/1), then per key
-- interval_ms, cost. Returns {0} when admitted, else {milliseconds to wait, index of the first
-- limit that refused}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[i * 2])
  local cost = tonumber(ARGV[i * 2 + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval * cost
  if new_tat < now then new_tat = now end
  if ARGV[1] == '0' and new_tat - now > 60000 then
    return {math.ceil(new_tat - now - 60000), i}
  end
  tats[i] = new_tat
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], tostring(tats[i]), 'PX', math.ceil(tats[i] - now) + 60000)
end
return {0}
