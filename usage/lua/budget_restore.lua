-- Hold again a reservation Redis lost (it restarted empty, or a failover lost the last writes)
-- while its request is in flight. KEYS: a shard's reservations and reservation expiry, then
-- counter keys, all under the shard's hash tag. ARGV: request id, amount, expiry ms.
-- A reservation Redis still has, or whose request has settled, is left alone. Returns 1 if held.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
local data = ARGV[2]
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBY', KEYS[i], 'r', tonumber(ARGV[2]))
    data = data .. ' ' .. KEYS[i]
  end
end
redis.call('HSET', KEYS[1], ARGV[1], data)
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[1])
return 1
