-- Record something a participant's device did that does not move the call (it rang,
-- it relayed a signal), after checking that it is theirs. KEYS: call hash, timeline.
-- ARGV: user, device, timeline entry (JSON, "" for none), required state ("" for any live
--       state), field to set once ("" for none), now_ms, "1" if only the callee may,
--       operators' channel ("" for none), call id,
--       webhooks: "" off, or JSON {"ttl": outbox seconds, "type": event type}: the event
--       goes into the outbox (KEYS[3]) when the
--       once-field was set now (the first device that rang: call.ringing).
-- Returns {"ok", call JSON, 1 if the once-field was set now else 0} or {"err", code}:
-- not_callee for the caller's devices where only the callee's may.
local raw = redis.call('HGETALL', KEYS[1])
if #raw == 0 then
  return {'err', 'unknown_call'}
end
local call = {}
for i = 1, #raw, 2 do
  call[raw[i]] = raw[i + 1]
end
local user, device = ARGV[1], ARGV[2]
if user == call.caller_user then
  if ARGV[7] == '1' then return {'err', 'not_callee'} end
  if device ~= call.caller_device then return {'err', 'not_in_call'} end
elseif user == call.callee_user then
  if call.state == 'answered' and device ~= call.answered_by_device then
    return {'err', 'not_in_call'}
  end
else
  return {'err', 'unknown_call'}
end
local required = ARGV[4]
if required ~= '' and call.state ~= required then
  return {'err', 'invalid_state'}
end
if required == '' and call.state ~= 'ringing' and call.state ~= 'answered' then
  return {'err', 'invalid_state'}
end
local first = 0
if ARGV[5] ~= '' then
  first = redis.call('HSETNX', KEYS[1], ARGV[5], ARGV[6])
end
if ARGV[3] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[3])
  if ARGV[8] ~= '' then
    redis.call('PUBLISH', ARGV[8], '{"call_id":"' .. ARGV[9] .. '","entry":' .. ARGV[3] .. '}')
  end
end
if first == 1 and ARGV[10] and ARGV[10] ~= '' then
  local spec = cjson.decode(ARGV[10])
  call[ARGV[5]] = ARGV[6]
  local seq = redis.call('HINCRBY', KEYS[1], 'webhook_seq', 1)
  redis.call('RPUSH', KEYS[3], cjson.encode({seq = seq, type = spec.type, at = tonumber(ARGV[6]), call = call}))
  redis.call('EXPIRE', KEYS[3], spec.ttl)
end
return {'ok', cjson.encode(call), first}
