-- budget.lua: the fleet-wide request+token budget of one (account, model).
--
-- Two token buckets (requests, tokens) live in one hash, KEYS[1]. Levels are
-- kept in units of 1/60000 so that a per-minute limit L refills exactly L
-- units per millisecond: every quantity is an integer, every wait is exact.
--
-- Hash fields:
--   r, t          requests / tokens available, in units of 1/60000
--   ts            time of the last refill (ms); never moves backwards
--   cd            fleet-wide cooldown until (ms), set after a 429
--   cq, cr, ct, ce  the head-of-line claim: ticket, requests and tokens it
--                 waits for, and when the claim expires (ms)
--
-- ARGV: op, now_ms, req_cap, req_rate, tok_cap, tok_rate, then per op:
--   reserve   need_r, need_t, ticket ('' = no claim), claim_max_ms, grace_ms
--             -> {ok, wait_ms, r, t}
--   reconcile refund_t, server_r (-1 unknown), server_t (-1 unknown)
--             -> {r, t}
--   cooldown  until_ms -> {cd}
--   usage     -> {r, t, cd, cr, ct, ce}   (read only)
-- A cap of 0 means the dimension is unlimited: it is neither checked nor
-- charged. The time is always an argument: the script never calls TIME.

local key = KEYS[1]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local rcap, rrate = tonumber(ARGV[3]), tonumber(ARGV[4])
local tcap, trate = tonumber(ARGV[5]), tonumber(ARGV[6])

local h = redis.call('HMGET', key, 'r', 't', 'ts', 'cd', 'cq', 'cr', 'ct', 'ce')
local ts = tonumber(h[3]) or now
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
if ts < now then ts = now end

local function refill(stored, cap, rate)
  if cap <= 0 then return 0 end
  local v = tonumber(stored)
  if v == nil then return cap end
  v = v + elapsed * rate
  if v > cap then v = cap end
  return v
end

local r = refill(h[1], rcap, rrate)
local t = refill(h[2], tcap, trate)
local cd = tonumber(h[4]) or 0
local cq = h[5] or ''
local cr, ct, ce = tonumber(h[6]) or 0, tonumber(h[7]) or 0, tonumber(h[8]) or 0
if ce <= now then cq, cr, ct, ce = '', 0, 0, 0 end
if cd <= now then cd = 0 end

-- wait_for returns the ms until level reaches need at rate, 0 if it has.
local function wait_for(level, need, cap, rate)
  if cap <= 0 or need <= level then return 0 end
  return math.ceil((need - level) / rate)
end

local function store()
  redis.call('HSET', key, 'r', r, 't', t, 'ts', ts, 'cd', cd, 'cq', cq, 'cr', cr, 'ct', ct, 'ce', ce)
  -- An idle budget refills to full within one fill time; keep it twice
  -- that, and at least as long as a cooldown or claim it carries.
  local ttl = 0
  if rcap > 0 then ttl = math.max(ttl, 2 * math.ceil(rcap / rrate)) end
  if tcap > 0 then ttl = math.max(ttl, 2 * math.ceil(tcap / trate)) end
  ttl = math.max(ttl, cd - now, ce - now) + 1000
  redis.call('PEXPIRE', key, ttl)
end

if op == 'reserve' then
  local nr, nt = tonumber(ARGV[7]), tonumber(ARGV[8])
  local ticket = ARGV[9]
  local claim_max, grace = tonumber(ARGV[10]), tonumber(ARGV[11])
  local mine = ticket ~= '' and cq == ticket
  -- Another caller's live claim reserves what it waits for: take only what
  -- leaves the claim's need in the bucket.
  local er, et = nr, nt
  if cq ~= '' and not mine then er, et = nr + cr, nt + ct end
  local wait = math.max(wait_for(r, er, rcap, rrate), wait_for(t, et, tcap, trate))
  -- Waits count from the caller's now, even when its clock lags ts.
  if wait > 0 then wait = wait + ts - now end
  if cd > now then wait = math.max(wait, cd - now) end
  if wait == 0 then
    if rcap > 0 then r = r - nr end
    if tcap > 0 then t = t - nt end
    if mine then cq, cr, ct, ce = '', 0, 0, 0 end
    store()
    return {1, 0, r, t}
  end
  if ticket ~= '' and (cq == '' or mine) then
    if wait <= claim_max then
      cq, cr, ct, ce = ticket, nr, nt, now + wait + grace
    elseif mine then
      cq, cr, ct, ce = '', 0, 0, 0
    end
  end
  store()
  return {0, wait, r, t}
elseif op == 'reconcile' then
  local refund, sr, st = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  if tcap > 0 and refund > 0 then t = math.min(tcap, t + refund) end
  if rcap > 0 and sr >= 0 and sr < r then r = sr end
  if tcap > 0 and st >= 0 and st < t then t = st end
  store()
  return {r, t}
elseif op == 'cooldown' then
  local until_ms = tonumber(ARGV[7])
  if until_ms > now and until_ms > cd then cd = until_ms end
  store()
  return {cd}
elseif op == 'usage' then
  return {r, t, cd, cr, ct, ce}
end
return redis.error_reply('budget.lua: unknown op ' .. tostring(op))
