-- GCRA over several limits, all charged or none (usage.ratelimits.gcra_step, step for step).
-- KEYS: one theoretical arrival time (ms) per limit. ARGV: force (0/1), then per key
-- interval_ms, cost. Returns {0, 0, backlog ms per key after the charge} when admitted, else
-- {milliseconds to wait, index of the first limit that refused, backlog ms per key as it is}:
-- the backlogs are what each process keeps of the shared state for an outage.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tats = {}
local new_tats = {}
local refused = nil
for i = 1, #KEYS do
  local interval = tonumber(ARGV[i * 2])
  local cost = tonumber(ARGV[i * 2 + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  local new_tat = tat + interval * cost
  if new_tat < now then new_tat = now end
  if refused == nil and ARGV[1] == '0' and new_tat - now > 60000 then
    refused = {math.ceil(new_tat - now - 60000), i}
  end
  new_tats[i] = new_tat
end
local out
if refused then
  out = refused
else
  out = {0, 0}
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], tostring(new_tats[i]), 'PX', math.ceil(new_tats[i] - now) + 60000)
    tats[i] = new_tats[i]
  end
end
for i = 1, #KEYS do out[#out + 1] = tostring(tats[i] - now) end
return out
