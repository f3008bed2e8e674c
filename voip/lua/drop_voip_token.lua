-- Drop a device's push token that its platform called invalid (APNs: the VoIP token;
-- FCM: the registration token), unless the device registered it (again) after the
-- platform's verdict. KEYS: the user's devices hash.
-- ARGV: device id, the token that was refused, the verdict's timestamp in ms ("" when the
--       reason condemns the token whatever its age), now_ms, the record's field that holds
--       the token ("voip_token" when absent, as before Android).
-- Returns 1 if the token was dropped.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local field = ARGV[5] or 'voip_token'
if field ~= 'voip_token' and field ~= 'fcm_token' then
  return redis.error_reply('drop_voip_token: unknown token field')
end
local device = cjson.decode(raw)
if device[field] ~= ARGV[2] then
  return 0  -- already replaced by a new token
end
if ARGV[3] ~= '' and tonumber(device.token_registered_at) >= tonumber(ARGV[3]) then
  return 0  -- registered again after the verdict: keep it
end
device[field] = cjson.null
device.token_dropped_at = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(device))
return 1
