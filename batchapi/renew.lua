-- Renew a batch lock if this server still holds it.
-- KEYS[1] lock key; ARGV[1] the holder's token; ARGV[2] TTL in milliseconds.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
