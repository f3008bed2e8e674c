-- A push's answer, in one round trip: on the call's timeline (published to operators);
-- for a cancellation APNs accepted, when, for that device, for as long as the call is
-- kept; for an invite, the call as it is now and when APNs accepted a cancellation for
-- the device (the invite may have displaced it in APNs's store); for an invite the
-- platform refused, the device out of the call's invite pushes: nothing is held for it,
-- so nothing needs cancelling.
-- KEYS: timeline, call hash, the call's cancellations hash, the call's invite pushes.
-- ARGV: entry (JSON), operators' channel ("" for none), call id,
--       cancelled device ("" for none), cancelled at (ms), seconds to keep the
--       cancellation when the call has no expiry (it always has one; a safety net),
--       device to read back for ("" for none), device whose invite was refused ("" for none).
-- Returns 0 without a read-back, else {the call hash as a flat list, cancelled at or nil}.
redis.call('RPUSH', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], '{"call_id":"' .. ARGV[3] .. '","entry":' .. ARGV[1] .. '}')
end
if ARGV[4] ~= '' then
  local ttl = redis.call('TTL', KEYS[2])
  if ttl < 0 then
    ttl = tonumber(ARGV[6])
  end
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
  redis.call('EXPIRE', KEYS[3], ttl)
end
if ARGV[8] ~= '' then
  redis.call('HDEL', KEYS[4], ARGV[8])
end
if ARGV[7] == '' then
  return 0
end
return {redis.call('HGETALL', KEYS[2]), redis.call('HGET', KEYS[3], ARGV[7])}
