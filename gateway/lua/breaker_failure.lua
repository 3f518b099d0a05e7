-- Mirrors gateway.routing.breaker_transition(FAILURE). KEYS[1]: the breaker hash.
-- ARGV: now, error_class, failure_threshold, cooldown_s, max_cooldown_s, ttl_ms.
-- Returns the consecutive failure count.
local st = redis.call('HGET', KEYS[1], 'state') or 'closed'
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0') + 1
redis.call('HSET', KEYS[1], 'state', st, 'failures', failures, 'last_error', ARGV[2],
           'last_error_at', ARGV[1])
local cooldown
if st == 'closed' and failures >= tonumber(ARGV[3]) then
  cooldown = tonumber(ARGV[4])
elseif st == 'half_open' then
  local previous = tonumber(redis.call('HGET', KEYS[1], 'cooldown') or '0')
  cooldown = math.min(math.max(previous * 2, tonumber(ARGV[4])), tonumber(ARGV[5]))
end
if cooldown then
  redis.call('HSET', KEYS[1], 'state', 'open', 'cooldown', cooldown,
             'opened_until', tonumber(ARGV[1]) + cooldown, 'probe_until', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return failures
