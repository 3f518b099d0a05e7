-- Reserve an amount in every budget counter, or in none, after reaping expired reservations.
-- KEYS: one shard's reservations, reservation expiry, epoch, intents, intent expiry, then the
-- counter keys (usage.budgets_redis.Shard): all under the shard's hash tag, so that the keys
-- named in the reservations' data, which the reaping below touches, are in the same slot.
-- ARGV: request id, amount, now ms, reservation ttl ms, reservations to reap at most, the
-- caller's epoch ('' for any), sync interval ms, the request's intent ('' for none) and its
-- expiry ms (usage.intents: written with the reservation, in the same round trip), then per
-- counter key: limit units, key ttl s.
-- Returns {1, epoch} reserved; {0, i} no room in counter i; {-1, i} counter i must be synced
-- from the database first (not seeded, or database reservations last read a sync interval
-- ago); {-2} Redis has no epoch (it restarted empty: set one); {-3, epoch} the epoch is not the
-- caller's (Redis restarted, or failed over, since the caller's last reservation, and may have
-- lost its data: restore them first). The epoch returned is "<the shard's epoch>/<replid>".
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
local epoch = redis.call('GET', KEYS[3])
if not epoch then return {-2} end
-- The master's replication id is part of the epoch: a replica promoted by a failover starts a
-- new one, and may lack the dead master's last writes (replication is asynchronous), so each
-- process holds its reservations here again, as after a restart.
local replication = redis.call('INFO', 'replication')
epoch = epoch .. '/' .. (string.match(replication, 'master_replid:(%w+)') or '')
if ARGV[6] ~= '' and ARGV[6] ~= epoch then return {-3, epoch} end
local now = tonumber(ARGV[3])
local amount = tonumber(ARGV[2])
for i = 6, #KEYS do
  local row = redis.call('HMGET', KEYS[i], 's', 'r', 'd', 't')
  if not row[1] then return {-1, i - 5} end
  local held_there = tonumber(row[3] or 0)
  if held_there > 0 and now - tonumber(row[4] or 0) >= tonumber(ARGV[7]) then
    return {-1, i - 5}
  end
  local limit = tonumber(ARGV[10 + (i - 6) * 2])
  if tonumber(row[1]) + tonumber(row[2] or 0) + held_there + amount > limit then
    return {0, i - 5}
  end
end
local data = ARGV[2]
for i = 6, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'r', amount)
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[11 + (i - 6) * 2]))
  data = data .. ' ' .. KEYS[i]
end
redis.call('HSET', KEYS[1], ARGV[1], data)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[8])
  redis.call('ZADD', KEYS[5], tonumber(ARGV[9]), ARGV[1])
end
return {1, epoch}
