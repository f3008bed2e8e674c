-- After a delivery round: move the call in the due index, or drop it, only if its score is
-- still the lease this node claimed it with. An event added meanwhile moved the score to
-- its own time: the call stays due. KEYS: the bucket. ARGV: call id, lease score, the
-- next score ("" to drop the call: every event delivered, the call final).
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return 0
end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
