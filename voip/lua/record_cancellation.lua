-- Record when APNs accepted a cancellation push for a device, for as long as the call is
-- kept. KEYS: the call's cancellations hash, the call hash. ARGV: device id, at (ms),
-- seconds to keep it when the call has no expiry (it always has one; a safety net).
local ttl = redis.call('TTL', KEYS[2])
if ttl < 0 then
  ttl = tonumber(ARGV[3])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ttl)
return ttl
