-- Accept a digest (nonce, nc) pair once, on every node (RFC 7616 §3.4: nc counts up).
-- KEYS[1] = the nonce's key; ARGV[1] = nc (integer > 0); ARGV[2] = seconds to remember.
-- The key keeps the highest count accepted; its lifetime starts at the first use, and
-- outlasts the nonce's own validity, so a count can never be replayed while it would pass.
-- Returns 1 when the count is new and higher than any before, 0 for a replay.
local nc = tonumber(ARGV[1])
local last = redis.call('GET', KEYS[1])
if last and nc <= tonumber(last) then
  return 0
end
if last then
  redis.call('SET', KEYS[1], nc, 'KEEPTTL')
else
  redis.call('SET', KEYS[1], nc, 'EX', ARGV[2])
end
return 1
