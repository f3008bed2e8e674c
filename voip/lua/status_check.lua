-- The call-status endpoint's one round trip: read what the verdict needs and put the
-- check on the timeline. KEYS: call hash, timeline.
-- ARGV: user ("" when a capability already proved the device), device ("" for none),
--       now_ms, node, via, operators' channel ("" for none), call id.
-- Returns nil for an unknown call and for a stranger alike: neither learns more.
-- Returns 0, recording nothing, when a participant names a device that is not theirs
-- in this call. Otherwise: state, caller_user, callee_user, caller_device,
-- answered_by_device, ring_deadline, ended_at, and the asker's party.
local f = redis.call('HMGET', KEYS[1], 'state', 'caller_user', 'callee_user',
  'caller_device', 'answered_by_device', 'ring_deadline', 'ended_at')
if not f[1] then
  return nil
end
local user, device = ARGV[1], ARGV[2]
-- A capability goes only to a callee device that the call was pushed to.
local party = 'callee'
if user ~= '' then
  if user == f[2] then
    party = 'caller'
  elseif user ~= f[3] then
    return nil
  end
  -- A token names a user, not a device: a device_id must be one of that user's
  -- devices in this call. The caller's is the one that placed it; the callee's are
  -- those it was offered to (the created entry's targets) and the one that answered.
  if device ~= '' then
    local mine = false
    if party == 'caller' then
      mine = device == f[4]
    elseif device == f[5] then
      mine = true
    else
      local created = redis.call('LINDEX', KEYS[2], 0)
      if created then
        local targets = cjson.decode(created).targets
        if type(targets) == 'table' then
          for _, target in ipairs(targets) do
            if target == device then
              mine = true
              break
            end
          end
        end
      end
    end
    if not mine then
      return 0
    end
  end
end
f[8] = party
-- Every check is counted; only the first ones go on the timeline, so an app that polls
-- cannot grow a call's timeline for the whole retention period.
if redis.call('HINCRBY', KEYS[1], 'status_checks', 1) > 50 then
  return f
end
local entry = {at = tonumber(ARGV[3]), event = 'status_check', state = f[1],
  node = ARGV[4], via = ARGV[5], party = party}
if device ~= '' then entry.device = device end
if f[7] then entry.late_ms = tonumber(ARGV[3]) - tonumber(f[7]) end  -- asked after the call ended
local encoded = cjson.encode(entry)
redis.call('RPUSH', KEYS[2], encoded)
if ARGV[6] ~= '' then
  redis.call('PUBLISH', ARGV[6], '{"call_id":"' .. ARGV[7] .. '","entry":' .. encoded .. '}')
end
return f
