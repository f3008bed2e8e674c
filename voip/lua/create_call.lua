-- Create a call if its id is free. KEYS: call hash, timeline.
-- ARGV: fields (JSON object), first timeline entry (JSON), ttl seconds,
--       operators' channel ("" for none), call id.
if redis.call('EXISTS', KEYS[1]) == 1 then
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
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], '{"call_id":"' .. ARGV[5] .. '","entry":' .. ARGV[2] .. '}')
end
return 1
