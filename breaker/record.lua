-- record.lua: the verdict of a call the breaker allowed.
--
-- KEYS[1]  state hash (see allow.lua)
-- KEYS[2]  sorted set of failure instants (score = ms) in the rolling window
-- ARGV[1]  now (ms)
-- ARGV[2]  outcome: failure | success | abandon
-- ARGV[3]  probe token ('' when the call was not the probe)
-- ARGV[4]  failures that open the breaker
-- ARGV[5]  window (ms)
-- ARGV[6]  open interval (ms)
-- ARGV[7]  key ttl (ms), garbage collection only
-- ARGV[8]  a member unique to this failure
--
-- Returns {from, to, failures}: the transition this call made ('' '' for
-- none) and the failures counted in the window.
local now = tonumber(ARGV[1])
local outcome = ARGV[2]
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then
  if outcome ~= 'failure' then
    return {'', '', 0}
  end
  -- Rolling window: failures in (now - window, now]. Older ones leave the
  -- set one by one as time passes, never all at once at a bucket boundary.
  redis.call('ZADD', KEYS[2], now, ARGV[8])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]))
  local n = redis.call('ZCARD', KEYS[2])
  if n >= tonumber(ARGV[4]) then
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + tonumber(ARGV[6]), 'opened_at', now,
      'lease_until', 0, 'lease_token', '')
    redis.call('HINCRBY', KEYS[1], 'trips', 1)
    redis.call('PEXPIRE', KEYS[1], ARGV[7])
    return {'closed', 'open', n}
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  return {'', '', n}
end
if state == 'half_open' and ARGV[3] ~= '' and ARGV[3] == redis.call('HGET', KEYS[1], 'lease_token') then
  if outcome == 'success' then
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'state', 'closed', 'open_until', 0, 'lease_until', 0, 'lease_token', '', 'closed_at', now)
    redis.call('PEXPIRE', KEYS[1], ARGV[7])
    return {'half_open', 'closed', 0}
  end
  if outcome == 'failure' then
    redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + tonumber(ARGV[6]), 'opened_at', now,
      'lease_until', 0, 'lease_token', '')
    redis.call('PEXPIRE', KEYS[1], ARGV[7])
    return {'half_open', 'open', 0}
  end
  -- abandon: the probe made no call after all (shutdown, budget wait);
  -- the next caller probes.
  redis.call('HSET', KEYS[1], 'lease_until', 0, 'lease_token', '')
  return {'', '', 0}
end
-- Open, or half-open and not the probe: calls admitted before the breaker
-- opened change nothing.
return {'', '', 0}
