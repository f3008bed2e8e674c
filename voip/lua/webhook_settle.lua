-- Record what a delivery round did and let go of the call. KEYS: the call's delivery lock,
-- cursors, outbox, call hash. ARGV: this taker's token, cursor fields (JSON object), ttl s.
-- Returns {events in the outbox now, the call's state or ""}: what came in meanwhile.
local fields = cjson.decode(ARGV[2])
local flat = {}
for name, value in pairs(fields) do
  flat[#flat + 1] = name
  flat[#flat + 1] = tostring(value)
end
if #flat > 0 then
  redis.call('HSET', KEYS[2], unpack(flat))
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return {redis.call('LLEN', KEYS[3]), redis.call('HGET', KEYS[4], 'state') or ''}
