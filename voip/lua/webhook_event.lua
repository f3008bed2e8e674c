-- An event about a call that changes no state (push.failed), into the call's outbox.
-- KEYS: call hash, the call's outbox. ARGV: event type, now ms, extra fields (JSON
-- object), outbox ttl seconds. Returns 1, or 0 for a call that is gone.
local raw = redis.call('HGETALL', KEYS[1])
if #raw == 0 then
  return 0
end
local call = {}
for i = 1, #raw, 2 do
  call[raw[i]] = raw[i + 1]
end
local seq = redis.call('HINCRBY', KEYS[1], 'webhook_seq', 1)
local event = {seq = seq, type = ARGV[1], at = tonumber(ARGV[2]), call = call}
for name, value in pairs(cjson.decode(ARGV[3])) do event[name] = value end
redis.call('RPUSH', KEYS[2], cjson.encode(event))
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
