-- A device's last push, as the operators' API shows it. KEYS: the user's last-push hash.
-- ARGV: device id, the push's entry (JSON). A script, not HSET, so that it goes over the
-- same lean connection as record_push.lua (voip/redis_pipe.py takes only EVALSHA).
return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
