-- Turn a reservation into spend. KEYS: a shard's reservations and reservation expiry, then
-- counter keys, all under the shard's hash tag (usage.budgets_redis.Shard).
-- ARGV: request id, cost units, and '1' to do nothing unless Redis still holds the reservation
-- (a settlement replayed after an outage, which may have reached Redis after all). Otherwise a
-- reaped (expired) reservation holds nothing any more; only the spend is added. Returns the
-- units the reservation held.
local data = redis.call('HGET', KEYS[1], ARGV[1])
local held = 0
if data then held = tonumber(string.match(data, '^%S+'))
elseif ARGV[3] == '1' then return 0 end
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    -- never below 0: a copy re-seeded meanwhile does not hold this reservation
    if redis.call('HINCRBY', KEYS[i], 'r', -held) < 0 then redis.call('HSET', KEYS[i], 'r', 0) end
    redis.call('HINCRBY', KEYS[i], 's', tonumber(ARGV[2]))
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return held
