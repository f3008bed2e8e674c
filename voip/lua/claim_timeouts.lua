-- Lease the ring timeouts that are due. KEYS: the deadline set. ARGV: now_ms, lease_ms, limit.
-- A leased entry comes back after lease_ms if the node that took it dies before firing
-- it; the transition's own state check makes sure a timeout fires once.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, call_id in ipairs(due) do
  redis.call('ZADD', KEYS[1], until_ms, call_id)
end
return due
