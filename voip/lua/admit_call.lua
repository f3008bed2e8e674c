-- Admit a new call for a callee, or say why not. KEYS: the callee's ringing calls (zset:
-- call id -> ring deadline ms), the callee's recent call starts (zset: call id -> ms);
-- then, for call history and availability (stores/history.py; absent: neither): the
-- callee's history index (zset: call id -> start ms), availability (hash), answered calls
-- (zset: call id -> the longest it may stay answered, ms).
-- ARGV: call id, now ms, ring deadline ms, max ringing at once, max starts per minute;
--       history retention ms (with the history keys).
-- Returns {"ok", 0}, {"callee_busy", 0} or {"rate_limited", seconds until a start frees};
-- with the history keys also {"dnd", 0} (do-not-disturb) or {"busy", 0, call ids in
-- progress} (when_busy "reject" and an answered call): the call is counted as a start and
-- filed in the callee's history, rings nothing, and the caller records it as missed.
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
local unavailable, in_call = nil, {}
if KEYS[3] then
  -- Filed before the call exists (index first): no call is ever missing from its callee's
  -- history; an entry whose call never came to be is dropped when read.
  local retention = tonumber(ARGV[6])
  redis.call('ZADD', KEYS[3], 'NX', now, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - retention)
  redis.call('PEXPIRE', KEYS[3], retention)
  local dnd, until_ms, when_busy = unpack(redis.call('HMGET', KEYS[4], 'dnd', 'until', 'when_busy'))
  if dnd == '1' and (not until_ms or until_ms == '' or now < tonumber(until_ms)) then
    unavailable = 'dnd'
  elseif when_busy == 'reject' then
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
    in_call = redis.call('ZRANGE', KEYS[5], 0, -1)
    if #in_call > 0 then
      unavailable = 'busy'
    end
  end
end
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[2], 60000)
if unavailable then
  local reply = {unavailable, 0}
  for _, call_id in ipairs(in_call) do
    reply[#reply + 1] = call_id
  end
  return reply
end
redis.call('ZADD', KEYS[1], deadline, ARGV[1])
local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(latest[2]) + 1000)
return {'ok', 0}
