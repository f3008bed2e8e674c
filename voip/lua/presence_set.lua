-- Mark devices present on a node until an expiry, and drop the user's entries that have
-- expired (a node that died holds nothing here for long). KEYS: the user's presence hash
-- (device -> "<node>|<expires ms>"). ARGV: now ms, then device and value pairs.
local now = tonumber(ARGV[1])
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local expires = tonumber(string.match(entries[i + 1], '|(%d+)$'))
  if expires == nil or expires <= now then
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 0
