-- Lease the calls of one due-index bucket whose webhook events are due. KEYS: the bucket.
-- ARGV: now ms, lease ms, limit. Each claimed call's score becomes now + lease: another
-- node takes it only once that lease has run out (this node died meanwhile). Returns
-- {call id, lease score, ...}: the lease score is what webhook_reschedule.lua compares,
-- so that an event added meanwhile (its ZADD moves the score) is never released unsent.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local lease = tonumber(ARGV[1]) + tonumber(ARGV[2])
local claimed = {}
for _, call_id in ipairs(due) do
  redis.call('ZADD', KEYS[1], lease, call_id)
  claimed[#claimed + 1] = call_id
  claimed[#claimed + 1] = tostring(lease)
end
return claimed
