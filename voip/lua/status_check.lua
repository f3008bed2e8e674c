-- The call-status endpoint's one round trip: read what the verdict needs and put the
-- check on the timeline. KEYS: call hash, timeline.
-- ARGV: user ("" when a capability already proved the device), device, now_ms, node, via,
--       operators' channel ("" for none), call id.
-- Returns nil for an unknown call and for a stranger alike: neither learns more.
local f = redis.call('HMGET', KEYS[1], 'state', 'caller_user', 'callee_user',
  'caller_device', 'answered_by_device', 'ring_deadline', 'ended_at')
if not f[1] then
  return nil
end
local user = ARGV[1]
if user ~= '' and user ~= f[2] and user ~= f[3] then
  return nil
end
-- Every check is counted; only the first ones go on the timeline, so an app that polls
-- cannot grow a call's timeline for the whole retention period.
if redis.call('HINCRBY', KEYS[1], 'status_checks', 1) > 50 then
  return f
end
local entry = {at = tonumber(ARGV[3]), event = 'status_check', state = f[1],
  node = ARGV[4], via = ARGV[5]}
if ARGV[2] ~= '' then entry.device = ARGV[2] end
if f[7] then entry.late_ms = tonumber(ARGV[3]) - tonumber(f[7]) end  -- asked after the call ended
local encoded = cjson.encode(entry)
redis.call('RPUSH', KEYS[2], encoded)
if ARGV[6] ~= '' then
  redis.call('PUBLISH', ARGV[6], '{"call_id":"' .. ARGV[7] .. '","entry":' .. encoded .. '}')
end
return f
