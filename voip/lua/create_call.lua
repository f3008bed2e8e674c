-- Create a call if its id is free. KEYS: call hash, timeline, pushes hash; the call's
-- history record (optional).
-- ARGV: fields (JSON object), first timeline entry (JSON), ttl seconds,
--       operators' channel ("" for none), call id, pushes (JSON {device: JSON}),
--       the callee's sharded bus channel and the call.incoming envelope ("" for none;
--       on a cluster the store publishes it itself, the channel being in another slot),
--       this attempt's id (also among the fields),
--       webhooks: "" off, or JSON {"ttl": outbox seconds} (docs/webhooks.md).
-- Webhooks: KEYS[5] the call's outbox; call.created goes into it in this same step (the
-- store adds the call to the due index in the same round trip).
-- A client that lost the connection under this script resends it (redis-py does, on a
-- dropped connection): the call it finds is then its own, and that is a success, not a
-- taken id. Returns 1 created (now or by this same attempt), 0 the id is taken.
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'attempt') == ARGV[9] then
    return 1
  end
  return 0
end
local fields = cjson.decode(ARGV[1])
local flat = {}
for name, value in pairs(fields) do
  flat[#flat + 1] = name
  flat[#flat + 1] = tostring(value)
end
redis.call('HSET', KEYS[1], unpack(flat))
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
-- Which devices get an invite push, so that whichever node ends the call can cancel them.
local pushes = cjson.decode(ARGV[6])
local flat_pushes = {}
for device, target in pairs(pushes) do
  flat_pushes[#flat_pushes + 1] = device
  flat_pushes[#flat_pushes + 1] = target
end
if #flat_pushes > 0 then
  redis.call('HSET', KEYS[3], unpack(flat_pushes))
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], '{"call_id":"' .. ARGV[5] .. '","entry":' .. ARGV[2] .. '}')
end
if ARGV[7] ~= '' then
  redis.call('SPUBLISH', ARGV[7], ARGV[8])
end
-- Call history (KEYS[4], stores/history.py): the call as its parties' histories show it,
-- written with its state, kept the call's own history retention.
if KEYS[4] and tonumber(fields.history_retention or 0) > 0 then
  local record = {}
  for _, name in ipairs({'state', 'caller_user', 'callee_user', 'created_at', 'refused'}) do
    if fields[name] ~= nil then record[name] = tostring(fields[name]) end
  end
  redis.call('SET', KEYS[4], cjson.encode(record), 'EX', fields.history_retention)
end
if ARGV[10] and ARGV[10] ~= '' then
  local spec = cjson.decode(ARGV[10])
  local call = {}
  for name, value in pairs(fields) do call[name] = tostring(value) end
  local seq = redis.call('HINCRBY', KEYS[1], 'webhook_seq', 1)
  redis.call('RPUSH', KEYS[5], cjson.encode({
    seq = seq, type = 'call.created', at = tonumber(fields.created_at), call = call,
  }))
  redis.call('EXPIRE', KEYS[5], spec.ttl)
end
return 1
