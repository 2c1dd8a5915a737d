-- Save a job's result idempotently.
-- KEYS[1] result key; ARGV[1] result JSON; ARGV[2] status of the new result
-- ("succeeded" or "failed"); ARGV[3] TTL in milliseconds.
-- Returns "created", "kept" (a success is already stored: never replaced),
-- or "replaced:<previous status>".
local prev = redis.call('GET', KEYS[1])
if not prev then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 'created'
end
local ok, old = pcall(cjson.decode, prev)
local oldStatus = ''
if ok and type(old) == 'table' and old['status'] then oldStatus = old['status'] end
if oldStatus == 'succeeded' then
  return 'kept'
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 'replaced:' .. oldStatus
