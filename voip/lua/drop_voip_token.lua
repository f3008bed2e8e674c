-- Drop a device's VoIP token that APNs called invalid, unless the device registered it
-- (again) after APNs's verdict. KEYS: the user's devices hash.
-- ARGV: device id, the token that was refused, APNs's timestamp in ms ("" when the
--       reason condemns the token whatever its age), now_ms.
-- Returns 1 if the token was dropped.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local device = cjson.decode(raw)
if device.voip_token ~= ARGV[2] then
  return 0  -- already replaced by a new token
end
if ARGV[3] ~= '' and tonumber(device.token_registered_at) >= tonumber(ARGV[3]) then
  return 0  -- registered again after APNs's verdict: keep it
end
device.voip_token = cjson.null
device.token_dropped_at = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(device))
return 1
