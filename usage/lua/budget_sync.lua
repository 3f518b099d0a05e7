-- Bring a counter's Redis copy up to the database: seed it when Redis has none, and never
-- leave it behind the spend the database has settled (some of it while Redis was unreachable).
-- KEYS[1]: a counter key. ARGV: spent units and reserved units in the database, now ms, key
-- ttl s. `s` becomes the larger of Redis's spend and the database's; `d` is what the database
-- holds reserved (reservations made there during an outage, until they settle), counted by
-- every reservation and read again after a sync interval while it is not 0; `t` is when.
local spent = tonumber(ARGV[1])
local s = tonumber(redis.call('HGET', KEYS[1], 's') or '-1')
if spent > s then redis.call('HSET', KEYS[1], 's', spent) end
redis.call('HSETNX', KEYS[1], 'r', 0)
redis.call('HSET', KEYS[1], 'd', ARGV[2], 't', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
