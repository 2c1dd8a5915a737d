-- Delete tasks of one asynq queue that have not started, as asynq v0.26's
-- deleteTaskCmd (internal/rdb/inspect.go) does one task at a time, but
-- with one pass over the pending list for all of them (asynq runs an
-- LREM, a scan of the whole list, per task).
-- KEYS[1] the queue's pending list; KEYS[2] its set of groups;
-- KEYS[3..] the tasks' keys.
-- ARGV[1] the queue's key prefix; ARGV[2] its group key prefix;
-- ARGV[3..] the task ids, in KEYS' order.
-- Returns per task: 1 deleted, 0 no such task, -1 active (left alone).
local out = {}
local pending = {}
local npending = 0
for i = 3, #KEYS do
  local id = ARGV[i]
  local state, group, unique_key = unpack(redis.call('HMGET', KEYS[i], 'state', 'group', 'unique_key'))
  if not state then
    out[i - 2] = 0
  elseif state == 'active' then
    out[i - 2] = -1
  else
    if state == 'pending' then
      pending[id] = true
      npending = npending + 1
    elseif state == 'aggregating' then
      redis.call('ZREM', ARGV[2] .. group, id)
      if redis.call('ZCARD', ARGV[2] .. group) == 0 then
        redis.call('SREM', KEYS[2], group)
      end
    else
      redis.call('ZREM', ARGV[1] .. state, id)
    end
    if unique_key and unique_key ~= '' and redis.call('GET', unique_key) == id then
      redis.call('DEL', unique_key)
    end
    redis.call('DEL', KEYS[i])
    out[i - 2] = 1
  end
end
if npending > 0 then
  local all = redis.call('LRANGE', KEYS[1], 0, -1)
  local keep = {}
  for _, v in ipairs(all) do
    if not pending[v] then
      keep[#keep + 1] = v
    end
  end
  redis.call('DEL', KEYS[1])
  for j = 1, #keep, 4096 do
    redis.call('RPUSH', KEYS[1], unpack(keep, j, math.min(j + 4095, #keep)))
  end
end
return out
