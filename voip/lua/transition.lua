-- Move a call to its next state, atomically, if the actor may. KEYS: call hash, timeline,
-- the call's invite pushes (hash: device id -> address); the call's history record (optional).
-- ARGV: moves (JSON {party: {from: to}}), user, device, now_ms, node, action,
--       retention seconds (for a call that does not carry its own), note (JSON object
--       or ""), operators' channel ("" for none), call id, this attempt's id,
--       webhooks: "" off, or JSON {"ttl": outbox seconds, "reason"?: the event's reason}.
-- Webhooks (docs/webhooks.md): KEYS[5] the call's outbox. The event `call.<new state>`
-- goes into it in this same step (the store adds the call to the due index in the same
-- round trip).
-- The TTLs follow the call's own retention, set by the node that created it: a node with
-- other settings must not shorten or stretch another node's call.
-- The party is found here, from the call itself, so that a check and its move are one step.
-- Returns {"ok", previous state, call JSON} or {"err", code, call JSON or ""}; a call that
-- leaves ringing also gets the devices its invites went to: {"ok", "ringing", call JSON,
-- device ids}, so that ending it needs no read when they all know already.
local raw = redis.call('HGETALL', KEYS[1])
if #raw == 0 then
  return {'err', 'unknown_call', ''}
end
local call = {}
for i = 1, #raw, 2 do
  call[raw[i]] = raw[i + 1]
end
-- A resend of this very attempt (redis-py sends again after a dropped connection, the
-- cluster client after a failover) finds its own move done: it is answered as the first
-- send was, not refused as a move from the state it left.
if ARGV[11] and call.move_attempt == ARGV[11] then
  return {'ok', call.move_from, cjson.encode(call)}
end
local user, device = ARGV[2], ARGV[3]
local party = 'system'
if user ~= '' then
  if user == call.caller_user then
    party = 'caller'
  elseif user == call.callee_user then
    party = 'callee'
  else
    return {'err', 'unknown_call', ''}
  end
end
local moves = cjson.decode(ARGV[1])[party] or {}
local target = moves[call.state]
if not target then
  return {'err', 'invalid_state', cjson.encode(call)}
end
-- Only the device that placed the call, and once answered only the device that
-- answered, may move it; the user's other devices are bystanders.
if (party == 'caller' and device ~= call.caller_device)
    or (party == 'callee' and call.state == 'answered' and device ~= call.answered_by_device) then
  return {'err', 'not_in_call', cjson.encode(call)}
end
local now, previous = ARGV[4], call.state
local changes = {'state', target, 'move_attempt', ARGV[11], 'move_from', previous}
if target == 'answered' then
  changes[#changes + 1] = 'answered_by_device'
  changes[#changes + 1] = device
  changes[#changes + 1] = 'answered_at'
  changes[#changes + 1] = now
  call.answered_by_device, call.answered_at = device, now
else
  changes[#changes + 1] = 'ended_at'
  changes[#changes + 1] = now
  changes[#changes + 1] = 'ended_by'
  changes[#changes + 1] = party
  call.ended_at, call.ended_by = now, party
end
call.state = target
redis.call('HSET', KEYS[1], unpack(changes))
local entry = {
  at = tonumber(now), event = 'state', from = previous, to = target,
  action = ARGV[6], party = party, node = ARGV[5],
}
if device ~= '' then entry.device = device end
if ARGV[8] ~= '' then entry.note = cjson.decode(ARGV[8]) end
local encoded = cjson.encode(entry)
redis.call('RPUSH', KEYS[2], encoded)
if ARGV[9] ~= '' then
  redis.call('PUBLISH', ARGV[9], '{"call_id":"' .. ARGV[10] .. '","entry":' .. encoded .. '}')
end
local retention = tonumber(call.retention) or tonumber(ARGV[7])
if target ~= 'answered' then
  -- Final: the call stays queryable for the retention period, then goes.
  redis.call('EXPIRE', KEYS[1], retention)
  redis.call('EXPIRE', KEYS[2], retention)
else
  -- A call in progress must not expire under its talkers: a week, then retention.
  local ttl = 7 * 86400 + retention
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
-- Call history (KEYS[4], stores/history.py): the call as its parties' histories show it,
-- in the same step as its state, kept the call's own history retention from this change.
if KEYS[4] and tonumber(call.history_retention or 0) > 0 then
  local record = {}
  for _, name in ipairs({'state', 'caller_user', 'callee_user', 'created_at', 'answered_at',
                         'answered_by_device', 'ended_at', 'refused'}) do
    record[name] = call[name]
  end
  redis.call('SET', KEYS[4], cjson.encode(record), 'EX', call.history_retention)
end
if ARGV[12] and ARGV[12] ~= '' then
  local spec = cjson.decode(ARGV[12])
  local seq = redis.call('HINCRBY', KEYS[1], 'webhook_seq', 1)
  call.webhook_seq = tostring(seq)
  redis.call('RPUSH', KEYS[5], cjson.encode({
    seq = seq, type = 'call.' .. target, at = tonumber(now), reason = spec.reason, call = call,
  }))
  redis.call('EXPIRE', KEYS[5], spec.ttl)
end
if previous == 'ringing' then
  return {'ok', previous, cjson.encode(call), redis.call('HKEYS', KEYS[3])}
end
return {'ok', previous, cjson.encode(call)}
