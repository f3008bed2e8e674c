-- Lease the due ring timeouts of one bucket. KEYS: the bucket's deadline set, its lease.
-- ARGV: now_ms, lease_ms, limit, this node, bucket lease ms.
-- The bucket's lease keeps other nodes off it for a tick, so that nodes spread over the
-- buckets rather than all polling the same one. A leased entry comes back after lease_ms
-- if the node that took it dies before firing it; the transition's own state check makes
-- sure a timeout fires once.
if not redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[5]) then
  if redis.call('GET', KEYS[2]) ~= ARGV[4] then
    return {}
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, call_id in ipairs(due) do
  redis.call('ZADD', KEYS[1], until_ms, call_id)
end
return due
