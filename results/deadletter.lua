-- Records one dead letter and forgets those older than the results' TTL.
-- KEYS[1] index: sorted set of job ids by dead-letter time (ms)
-- KEYS[2] records: hash job id -> DeadLetter JSON
-- ARGV[1] job id, ARGV[2] time (ms), ARGV[3] record JSON,
-- ARGV[4] cutoff (ms): older entries are dropped, ARGV[5] TTL (ms)
local old = redis.call("ZRANGE", KEYS[1], "-inf", "(" .. ARGV[4], "BYSCORE", "LIMIT", 0, 1000)
if #old > 0 then
  redis.call("ZREM", KEYS[1], unpack(old))
  redis.call("HDEL", KEYS[2], unpack(old))
end
redis.call("ZADD", KEYS[1], ARGV[2], ARGV[1])
redis.call("HSET", KEYS[2], ARGV[1], ARGV[3])
redis.call("PEXPIRE", KEYS[1], ARGV[5])
redis.call("PEXPIRE", KEYS[2], ARGV[5])
return 1
