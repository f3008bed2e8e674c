-- Take a call's webhook delivery: one node at a time delivers a call's events, so that
-- they reach each URL in order. KEYS: the call's delivery lock, outbox, cursors, call hash.
-- ARGV: this taker's token, lock ms. Returns 0 when another node holds the lock, else
-- {events (JSON, oldest first), cursors (flat hash), the call's state or ""}.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 0
end
return {
  redis.call('LRANGE', KEYS[2], 0, -1),
  redis.call('HGETALL', KEYS[3]),
  redis.call('HGET', KEYS[4], 'state') or '',
}
