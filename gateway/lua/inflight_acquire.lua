-- Take an in-flight slot. KEYS[1]: the provider's ZSET of lease tokens scored by expiry (Redis
-- server time, ms, so hosts' clocks need not agree). Expired tokens are purged before counting,
-- so a crashed holder's slot comes back after the lease TTL, and the key itself expires once its
-- last lease would have. ARGV: cap (0: none), token, ttl_ms. Returns 1 when the slot was granted.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local cap = tonumber(ARGV[1])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
