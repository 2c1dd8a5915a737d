-- Delete tasks of one asynq queue that have not started, as asynq v0.26's
-- deleteTaskCmd (internal/rdb/inspect.go) does one task at a time, but
-- with one look through the pending list for all of them (asynq runs an
-- LREM, a scan of the whole list, per task).
-- KEYS[1] the queue's pending list; KEYS[2] its set of groups;
-- KEYS[3..] the tasks' keys.
-- ARGV[1] the queue's key prefix; ARGV[2] its group key prefix;
-- ARGV[3] a marker no task id equals; ARGV[4] the entries of the list
-- read at a time; ARGV[5..] the task ids, in KEYS' order from KEYS[3].
-- The state sets, group sets and unique keys are built from the prefixes
-- (as asynq's own scripts do): all share the queue's {hash tag}, so the
-- script stays on one Redis Cluster slot.
-- Returns per task: 1 deleted, 0 no such task, -1 left alone (active, or
-- a state this script does not know how to delete).
--
-- It reads everything first and writes only once it knows every write
-- succeeds: Redis does not roll a script back, so a failure half-way must
-- not leave a task's hash deleted with its id still queued. The pending
-- list is never rewritten: the removed ids' entries are overwritten with
-- the marker (LSET) and dropped by an LREM from each end, so AOF and
-- replicas see a few small commands, not the list. The look through the
-- list reads a page at a time from each end in turn and stops when every
-- pending task is found: about twice the largest distance from one of
-- them to its nearer end, rounded up to pages; the whole list at worst
-- (a task in the middle, or one whose hash says pending but whose id is
-- not queued), as each of asynq's LREMs reads it. Stopping early relies on
-- asynq queuing an id once (its enqueue refuses an id whose task exists):
-- asynq's LREM would remove a second entry of the id anywhere, this look
-- only one it meets.
local out, del = {}, {}
local pending, npending = {}, 0
for i = 3, #KEYS do
  local id = ARGV[i + 2]
  local state, group, unique_key = unpack(redis.call('HMGET', KEYS[i], 'state', 'group', 'unique_key'))
  if not state then
    out[i - 2] = 0
  elseif state == 'active' or (state == 'aggregating' and not group) then
    out[i - 2] = -1
  else
    out[i - 2] = 1
    del[#del + 1] = {key = KEYS[i], id = id, state = state, group = group, unique_key = unique_key}
    if state == 'pending' and not pending[id] then -- an id twice in ids is one task
      pending[id] = true
      npending = npending + 1
    end
  end
end
if npending > 0 then
  -- The ids are looked for a page at a time from both ends of the list
  -- (new tasks are pushed at the head, workers take from the tail), and
  -- the look stops once every one is found: a batch enqueued recently,
  -- or about to run, costs a pass over its own part of the list, not over
  -- the whole list.
  local page = tonumber(ARGV[4])
  local found, marked = 0, {0, 0} -- distinct ids found; entries marked from the head, the tail
  local head, tail = 0, redis.call('LLEN', KEYS[1]) - 1
  local function look(from, to, side)
    for i, v in ipairs(redis.call('LRANGE', KEYS[1], from, to)) do
      if pending[v] then
        if pending[v] == true then
          pending[v] = 'found'
          found = found + 1
        end
        redis.call('LSET', KEYS[1], from + i - 1, ARGV[3])
        marked[side] = marked[side] + 1
      end
    end
  end
  while found < npending and head <= tail do
    local to = math.min(head + page - 1, tail)
    look(head, to, 1)
    head = to + 1
    if found < npending and head <= tail then
      local from = math.max(tail - page + 1, head)
      look(from, tail, 2)
      tail = from - 1
    end
  end
  -- Every mark from the head lies before every mark from the tail: each
  -- LREM stops at the last of its own.
  if marked[1] > 0 then
    redis.call('LREM', KEYS[1], marked[1], ARGV[3])
  end
  if marked[2] > 0 then
    redis.call('LREM', KEYS[1], -marked[2], ARGV[3])
  end
end
for _, t in ipairs(del) do
  if t.state == 'aggregating' then
    redis.call('ZREM', ARGV[2] .. t.group, t.id)
    if redis.call('ZCARD', ARGV[2] .. t.group) == 0 then
      redis.call('SREM', KEYS[2], t.group)
    end
  elseif t.state ~= 'pending' then
    redis.call('ZREM', ARGV[1] .. t.state, t.id)
  end
  if t.unique_key and t.unique_key ~= '' and redis.call('GET', t.unique_key) == t.id then
    redis.call('DEL', t.unique_key)
  end
  redis.call('DEL', t.key)
end
return out
