-- Remove jobs from a batch's index and shrink its total by the number that
-- were in it, in one step (a re-sent command changes nothing).
-- KEYS[1] batch hash (counters); KEYS[2] batch jobs sorted set
-- ARGV: job ids.
local removed = redis.call('ZREM', KEYS[2], unpack(ARGV))
if removed > 0 then
  redis.call('HINCRBY', KEYS[1], 'total', -removed)
end
return removed
