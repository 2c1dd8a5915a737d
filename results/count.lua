-- Count a job's final status in its batch, idempotently: re-running it (a
-- retried command, a redelivered job) changes nothing.
-- KEYS[1] batch hash (counters); KEYS[2] batch status hash (job id -> status)
-- ARGV[1] job id; ARGV[2] status ("succeeded" or "failed"); ARGV[3] TTL ms.
-- Returns 1 when a counter moved, 0 otherwise.
local prev = redis.call('HGET', KEYS[2], ARGV[1])
if prev == ARGV[2] or prev == 'succeeded' then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if prev then
  redis.call('HINCRBY', KEYS[1], prev, -1)
end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
