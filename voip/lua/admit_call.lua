-- Admit a new call for a callee, or say why not. KEYS: the callee's ringing calls (zset:
-- call id -> ring deadline ms), the callee's recent call starts (zset: call id -> ms).
-- ARGV: call id, now ms, ring deadline ms, max ringing at once, max starts per minute.
-- Returns {"ok", 0}, {"callee_busy", 0} or {"rate_limited", seconds until a start frees}.
local now = tonumber(ARGV[2])
local deadline = tonumber(ARGV[3])
-- A call whose deadline has passed no longer rings, even if its end was never recorded.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return {'callee_busy', 0}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60000)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  -- Within 1..60: nodes' clocks, and starts stamped just before this one, may run ahead of `now`.
  local wait = math.ceil((tonumber(oldest[2]) + 60000 - now) / 1000)
  return {'rate_limited', math.max(1, math.min(60, wait))}
end
redis.call('ZADD', KEYS[1], deadline, ARGV[1])
local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(latest[2]) + 1000)
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[2], 60000)
return {'ok', 0}
