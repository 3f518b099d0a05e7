-- Write back a breaker a process kept while Redis was unreachable (gateway.routing_state).
-- KEYS[1]: the breaker hash. ARGV: state, failures, cooldown, opened_until, probe_until,
-- last_error ('' for none), last_error_at ('' for none), ttl_ms.
-- Written when Redis has no breaker there (it restarted empty, or the key expired), or has it
-- closed while the process saw it open or half-open during the outage. Returns 1 if written.
local st = redis.call('HGET', KEYS[1], 'state')
if st and (st ~= 'closed' or ARGV[1] == 'closed') then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'failures', ARGV[2], 'cooldown', ARGV[3],
           'opened_until', ARGV[4], 'probe_until', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'last_error', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'last_error_at', ARGV[7]) end
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return 1
