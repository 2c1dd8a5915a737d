-- peek.lua: the worker's gate read of a breaker, batched in one pipeline
-- with the job's other reads. It never makes a transition and never takes
-- the probe: a breaker that is not closed is left to allow.lua.
--
-- KEYS[1]  state hash (see allow.lua)
-- KEYS[2]  window hash (see allow.lua)
-- ARGV[1]  now (ms)
-- ARGV[2]  key ttl (ms)
-- ARGV[3]  bucket width (ms)
-- ARGV[4]  buckets in the window
--
-- Returns {closed, streak}: closed is 1 when the call is allowed (and
-- counted in the current bucket, exactly as allow.lua counts it), 0 when
-- the caller must ask allow.lua; streak is the failures in a row so far.
local h = redis.call('HMGET', KEYS[1], 'state', 'streak')
if h[1] and h[1] ~= 'closed' then
  return {0, 0}
end
local now = tonumber(ARGV[1])
local bucket = math.floor(now / tonumber(ARGV[3]))
local slot = bucket % tonumber(ARGV[4])
if tonumber(redis.call('HGET', KEYS[2], 'b' .. slot)) == bucket then
  redis.call('HINCRBY', KEYS[2], 'c' .. slot, 1)
else
  redis.call('HSET', KEYS[2], 'b' .. slot, bucket, 'c' .. slot, 1, 'f' .. slot, 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return {1, tonumber(h[2]) or 0}
