-- Seed a counter from the database, unless another caller did first.
-- KEYS[1]: a counter key. ARGV: spent units from the database, key ttl s.
if redis.call('HSETNX', KEYS[1], 's', ARGV[1]) == 1 then
  redis.call('HSETNX', KEYS[1], 'r', 0)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 1
