-- prune.lua: drop the window's fields that no longer count, and keep the
-- window's expiry. Each process runs it the first time it counts a call in
-- a new bucket (about once a second per model), so the window hash holds
-- little more than its buckets whatever the traffic.
--
-- KEYS[1]  window hash (see allow.lua)
-- ARGV[1]  now (ms)
-- ARGV[2]  bucket width (ms)
-- ARGV[3]  buckets in the window
-- ARGV[4]  buckets ahead of now still counted (the processes' clock skew)
-- ARGV[5]  key ttl (ms), garbage collection only
--
-- A field counts while its bucket n is in the window or a little ahead:
-- now // width - buckets < n <= now // width + ahead. Any other field —
-- an older bucket, one too far ahead (a window whose width changed with
-- the config), the ring layout of earlier versions — is removed.
-- Returns the number of fields removed.
local bucket = math.floor(tonumber(ARGV[1]) / tonumber(ARGV[2]))
local low, high = bucket - tonumber(ARGV[3]), bucket + tonumber(ARGV[4])
local stale = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  local kind, n = string.sub(f, 1, 1), tonumber(string.sub(f, 2))
  if not n or n <= low or n > high or (kind ~= 'c' and kind ~= 'f') then
    stale[#stale + 1] = f
  end
end
for i = 1, #stale, 1000 do
  redis.call('HDEL', KEYS[1], unpack(stale, i, math.min(i + 999, #stale)))
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return #stale
