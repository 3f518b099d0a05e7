-- Reserve an amount in every budget counter, or in none, after reaping expired reservations.
-- KEYS: RESERVATIONS, RESERVATION_EXPIRY, counter keys... ARGV: request id, amount, now ms,
-- reservation ttl ms, reservations to reap at most, then per counter key: limit units, key ttl s.
-- Returns {1} reserved, {0, i} no room in counter i, {-1, i} counter i not seeded.
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[5]))
for _, id in ipairs(expired) do
  local data = redis.call('HGET', KEYS[1], id)
  if data then
    local held = nil
    for word in string.gmatch(data, '%S+') do
      if held == nil then held = tonumber(word)
      elseif redis.call('EXISTS', word) == 1 then
        if redis.call('HINCRBY', word, 'r', -held) < 0 then redis.call('HSET', word, 'r', 0) end
      end
    end
    redis.call('HDEL', KEYS[1], id)
  end
  redis.call('ZREM', KEYS[2], id)
end
local amount = tonumber(ARGV[2])
for i = 3, #KEYS do
  local row = redis.call('HMGET', KEYS[i], 's', 'r')
  if not row[1] then return {-1, i - 2} end
  local limit = tonumber(ARGV[6 + (i - 3) * 2])
  if tonumber(row[1]) + tonumber(row[2] or 0) + amount > limit then return {0, i - 2} end
end
local data = ARGV[2]
for i = 3, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'r', amount)
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[7 + (i - 3) * 2]))
  data = data .. ' ' .. KEYS[i]
end
redis.call('HSET', KEYS[1], ARGV[1], data)
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
return {1}
