-- record.lua: the verdict of a call the breaker allowed.
--
-- KEYS[1]  state hash (see allow.lua)
-- KEYS[2]  window hash (see allow.lua)
-- ARGV[1]  now (ms)
-- ARGV[2]  outcome: failure | success | abandon
-- ARGV[3]  probe token ('' when the call was not the probe)
-- ARGV[4]  consecutive failures that open the breaker
-- ARGV[5]  failure rate (percent) that opens it ...
-- ARGV[6]  ... once the window holds at least this many calls
-- ARGV[7]  open interval (ms)
-- ARGV[8]  key ttl (ms), garbage collection only
-- ARGV[9]  bucket width (ms)
-- ARGV[10] buckets in the window
-- ARGV[11] buckets ahead of now still counted (see prune.lua)
-- ARGV[12] '1' when the failure is excused from the failures in a row (a
--          timeout of a call that began before the model answered this
--          process, within the last bucket: see Permit.Started); it still
--          counts in the window
--
-- Returns {from, to, streak, calls, failures}: the transition this call
-- made ('' '' for none), the consecutive failures, and the calls and
-- failures in the window when a failure was counted.
local now = tonumber(ARGV[1])
local outcome = ARGV[2]

local function trip(reason)
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + tonumber(ARGV[7]), 'opened_at', now,
    'lease_until', 0, 'lease_token', '', 'reason', reason)
  redis.call('HDEL', KEYS[1], 'streak') -- an absent streak is 0
  redis.call('HINCRBY', KEYS[1], 'trips', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
end

local h = redis.call('HMGET', KEYS[1], 'state', 'lease_token', 'streak')
local state = h[1]
if not state or state == 'closed' then
  if outcome == 'success' then
    -- The upstream answered, so the failures in a row end here. Every
    -- answered call sends one (batched with its result's save): write
    -- only when there is a streak to end.
    if state and (tonumber(h[3]) or 0) ~= 0 then
      redis.call('HDEL', KEYS[1], 'streak')
    end
    return {'', '', 0, 0, 0}
  end
  if outcome ~= 'failure' then
    return {'', '', 0, 0, 0}
  end
  local width, buckets = tonumber(ARGV[9]), tonumber(ARGV[10])
  local bucket = math.floor(now / width)
  -- The call was counted when it was allowed, maybe in an earlier bucket.
  redis.call('HINCRBY', KEYS[2], 'f' .. string.format('%d', bucket), 1)
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
  local streak = tonumber(h[3]) or 0
  if ARGV[12] ~= '1' then
    streak = redis.call('HINCRBY', KEYS[1], 'streak', 1)
  end
  if not state then
    redis.call('HSET', KEYS[1], 'state', 'closed')
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  -- The rolling window: the buckets of the last `buckets` widths (and the
  -- few ahead of now a skewed clock counts in). Every other field is
  -- removed, as prune.lua does.
  local calls, failures = 0, 0
  local ring = redis.call('HGETALL', KEYS[2])
  local stale = {}
  for i = 1, #ring, 2 do
    local kind, n = string.sub(ring[i], 1, 1), tonumber(string.sub(ring[i], 2))
    if n and n > bucket - buckets and n <= bucket + tonumber(ARGV[11]) and (kind == 'c' or kind == 'f') then
      if kind == 'c' then
        calls = calls + tonumber(ring[i + 1])
      else
        failures = failures + tonumber(ring[i + 1])
      end
    else
      stale[#stale + 1] = ring[i]
    end
  end
  for i = 1, #stale, 1000 do
    redis.call('HDEL', KEYS[2], unpack(stale, i, math.min(i + 999, #stale)))
  end
  -- A failure of a call allowed before the window began still counts.
  if calls < failures then
    calls = failures
  end
  if streak >= tonumber(ARGV[4]) then
    trip('consecutive')
    return {'closed', 'open', streak, calls, failures}
  end
  if calls >= tonumber(ARGV[6]) and failures * 100 >= tonumber(ARGV[5]) * calls then
    trip('rate')
    return {'closed', 'open', streak, calls, failures}
  end
  return {'', '', streak, calls, failures}
end
if state == 'half_open' and ARGV[3] ~= '' and ARGV[3] == h[2] then
  if outcome == 'success' then
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'state', 'closed', 'open_until', 0, 'lease_until', 0, 'lease_token', '',
      'closed_at', now)
    redis.call('HDEL', KEYS[1], 'streak')
    redis.call('PEXPIRE', KEYS[1], ARGV[8])
    return {'half_open', 'closed', 0, 0, 0}
  end
  if outcome == 'failure' then
    redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + tonumber(ARGV[7]), 'opened_at', now,
      'lease_until', 0, 'lease_token', '', 'reason', 'probe')
    redis.call('PEXPIRE', KEYS[1], ARGV[8])
    return {'half_open', 'open', 0, 0, 0}
  end
  -- abandon: the probe made no call after all (shutdown, budget wait);
  -- the next caller probes.
  redis.call('HSET', KEYS[1], 'lease_until', 0, 'lease_token', '')
  return {'', '', 0, 0, 0}
end
-- Open, or half-open and not the probe: calls admitted before the breaker
-- opened change nothing.
return {'', '', 0, 0, 0}
