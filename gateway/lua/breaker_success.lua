-- Mirrors gateway.routing.breaker_transition(SUCCESS). KEYS[1]: the breaker hash. ARGV: ttl_ms.
-- A missing key is a closed, clean breaker, so the common case writes nothing.
local st = redis.call('HGET', KEYS[1], 'state')
if st == 'half_open' then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'cooldown', 0,
             'opened_until', 0, 'probe_until', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
elseif st == 'closed' and redis.call('HGET', KEYS[1], 'failures') ~= '0' then
  redis.call('HSET', KEYS[1], 'failures', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 0
