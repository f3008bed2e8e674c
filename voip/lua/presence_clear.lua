-- A device left this node: drop its entry if this node still holds it (the device may
-- have reconnected to another node meanwhile), and any expired entry of the user's.
-- KEYS: the user's presence hash. ARGV: device, node, now ms.
local now = tonumber(ARGV[3])
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local device, value = entries[i], entries[i + 1]
  local node, expires = string.match(value, '^(.*)|(%d+)$')
  if (device == ARGV[1] and node == ARGV[2]) or expires == nil or tonumber(expires) <= now then
    redis.call('HDEL', KEYS[1], device)
  end
end
return 0
