-- Register jobs in a batch, idempotently.
-- KEYS[1] batch hash (counters); KEYS[2] batch jobs sorted set
-- ARGV[1] TTL ms; ARGV[2] created_at; then pairs of (line, job id).
-- Adds the jobs not yet registered and grows "total" by their number, in one
-- step, so a re-sent command or a re-submitted file never inflates it.
local added = 0
for i = 3, #ARGV, 2 do
  added = added + redis.call('ZADD', KEYS[2], 'NX', ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBY', KEYS[1], 'total', added)
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return added
