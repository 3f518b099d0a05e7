-- Mirrors gateway.routing.breaker_transition(PROBE). KEYS[1]: the breaker hash.
-- ARGV: now, probe_timeout_s, ttl_ms. Returns 1 if this caller won the probe.
local st = redis.call('HGET', KEYS[1], 'state')
local deadline
if st == 'open' then
  deadline = tonumber(redis.call('HGET', KEYS[1], 'opened_until') or '0')
elseif st == 'half_open' then
  deadline = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
else
  return 0
end
local now = tonumber(ARGV[1])
if now < deadline then return 0 end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_until', now + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
