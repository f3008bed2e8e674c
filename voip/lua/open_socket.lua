-- Count a device WebSocket against its user's cap. KEYS: the user's sockets (zset:
-- "<device>|<socket id>" -> opened at, ms). ARGV: this socket, now ms, cap, key ttl seconds.
-- Returns the sockets to close, oldest first (never this one).
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if over <= 0 then
  return {}
end
local evicted = {}
for _, socket in ipairs(redis.call('ZRANGE', KEYS[1], 0, over)) do
  if socket ~= ARGV[1] and #evicted < over then
    evicted[#evicted + 1] = socket
  end
end
if #evicted > 0 then
  redis.call('ZREM', KEYS[1], unpack(evicted))
end
return evicted
