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
--   lr, lt        the provider's limits per minute (x-ratelimit-limit-*),
--                 used when lower than the configured ones
--   kr, kp        the provider's bucket capacity as its headers prove it
--                 (max of remaining + the request's own charge), units;
--                 tokens in kp (kt in the script): the field was kt while
--                 a token proof counted the calibrated charge, which could
--                 overstate it, so a proof made then is not carried over
--   nr, nt, ne    running sums of requests and tokens charged, and of the
--                 tokens estimated before the calibration factor, units
--   f             the calibration factor: provider tokens per estimated
--                 token (absent = 1)
--   nz            running sum of the estimates of calls the provider
--                 refused (estimated, never charged), units
--   or, ot, oe, oz  the last provider reading used for calibration:
--                 remaining tokens (units), its reservation time, ne and
--                 nz then
--   sc, se, sn, sa  calibration evidence, decayed with half-life
--                 ARGV[10]: provider-charged and estimated units, pairs,
--                 time of the last decay
--
-- ARGV: op, now_ms, rpm, tpm, burst_requests, burst_tokens (0 = default:
-- window_ms of the rate, at least the provider's proven capacity and one
-- request; never above a minute), transit_ms, window_ms, then per op:
--   reserve   need_r, need_t, ticket ('' = no claim), claim_max_ms, grace_ms
--             -> {ok, wait_ms, r, t, nr, nt, ne, charged_t}
--   reconcile refund_t, server_r, server_t, limit_r, limit_t (-1 unknown),
--             nr_at, nt_at, ne_at, at_ms, charged_t (0 unknown), refused,
--             factor_min, factor_max, halflife_ms, min_pairs, estimate_t,
--             dead_band, down_trust
--             -> {r, t}
--   cooldown  until_ms -> {cd}
--   usage     -> {r, t, cd, cr, ct, ce, rcap, tcap, rrate, trate, f*1e6}
-- A limit of 0 means the dimension is unlimited: it is neither checked nor
-- charged. The time is always an argument: the script never calls TIME.

local U = 60000
local key = KEYS[1]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local rpm, tpm = tonumber(ARGV[3]), tonumber(ARGV[4])
local rburst, tburst = tonumber(ARGV[5]), tonumber(ARGV[6])
local transit, window = tonumber(ARGV[7]), tonumber(ARGV[8])

local h = redis.call('HMGET', key, 'r', 't', 'ts', 'cd', 'cq', 'cr', 'ct', 'ce',
  'lr', 'lt', 'kr', 'kp', 'nr', 'nt', 'ne', 'f', 'or', 'ot', 'oe', 'sc', 'se', 'sn', 'sa', 'nz', 'oz')
local ts = tonumber(h[3]) or now
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
if ts < now then ts = now end
local lr, lt = tonumber(h[9]) or 0, tonumber(h[10]) or 0
local kr, kt = tonumber(h[11]) or 0, tonumber(h[12]) or 0
local nr, nt, ne = tonumber(h[13]) or 0, tonumber(h[14]) or 0, tonumber(h[15]) or 0
local f = tonumber(h[16]) or 1
local o_r, o_t, o_e = tonumber(h[17]), tonumber(h[18]), tonumber(h[19])
local sc, se, sn, sa = tonumber(h[20]) or 0, tonumber(h[21]) or 0, tonumber(h[22]) or 0, tonumber(h[23]) or now
local nz, o_z = tonumber(h[24]) or 0, tonumber(h[25])

-- rate returns the effective per-minute limit: the configured one, or the
-- provider's when it is lower.
local function rate(configured, learned)
  if configured <= 0 then return 0 end
  if learned > 0 and learned < configured then return learned end
  return configured
end

-- capof returns a bucket's capacity in units, less the transit headroom.
local function capof(rt, burst, proven, isreq)
  if rt <= 0 then return 0 end
  local cap
  if burst > 0 then
    cap = burst * U
  else
    cap = math.max(rt * window, proven, U)
    cap = math.min(cap, math.max(rt * U, U))
  end
  local head = rt * transit
  if isreq then head = math.min(head, cap - U) else head = math.min(head, math.floor(cap / 2)) end
  if head < 0 then head = 0 end
  return cap - head
end

local rrate, trate = rate(rpm, lr), rate(tpm, lt)
local rcap, tcap = capof(rrate, rburst, kr, true), capof(trate, tburst, kt, false)

-- A default-burst budget with no provider reading yet starts at half its
-- capacity (slow start); the first readings confirm what remains.
local function refill(stored, cap, rt, burst)
  if cap <= 0 then return 0 end
  local v = tonumber(stored)
  if v == nil then
    if burst > 0 then return cap end
    return math.floor(cap / 2)
  end
  v = v + elapsed * rt
  if v > cap then v = cap end
  return v
end

local r = refill(h[1], rcap, rrate, rburst)
local t = refill(h[2], tcap, trate, tburst)
local cd = tonumber(h[4]) or 0
local cq = h[5] or ''
local cr, ct, ce = tonumber(h[6]) or 0, tonumber(h[7]) or 0, tonumber(h[8]) or 0
if ce <= now then cq, cr, ct, ce = '', 0, 0, 0 end
if cd <= now then cd = 0 end

-- wait_for returns the ms until level reaches need at rate, 0 if it has.
local function wait_for(level, need, cap, rt)
  if cap <= 0 or need <= level then return 0 end
  return math.ceil((need - level) / rt)
end

local function store()
  redis.call('HSET', key, 'r', r, 't', t, 'ts', ts, 'cd', cd, 'cq', cq, 'cr', cr, 'ct', ct, 'ce', ce,
    'lr', lr, 'lt', lt, 'kr', kr, 'kp', kt, 'nr', nr, 'nt', nt, 'ne', ne, 'f', f,
    'sc', sc, 'se', se, 'sn', sn, 'sa', sa, 'nz', nz)
  if o_r ~= nil then
    redis.call('HSET', key, 'or', o_r, 'ot', o_t, 'oe', o_e, 'oz', o_z)
  else
    redis.call('HDEL', key, 'or', 'ot', 'oe', 'oz')
  end
  -- An idle budget refills to full within one fill time; keep it twice
  -- that (at least a minute, so calibration outlives short pauses), and at
  -- least as long as a cooldown or claim it carries.
  local ttl = 60000
  if rcap > 0 then ttl = math.max(ttl, 2 * math.ceil(rcap / rrate)) end
  if tcap > 0 then ttl = math.max(ttl, 2 * math.ceil(tcap / trate)) end
  ttl = math.max(ttl, cd - now, ce - now) + 1000
  redis.call('PEXPIRE', key, ttl)
end

-- The running sums restart before they lose integer precision; readings
-- taken before a restart are then ignored.
local SUM_MAX = 2 ^ 52

if op == 'reserve' then
  local need_r, raw_t = tonumber(ARGV[9]), tonumber(ARGV[10])
  local need_t = math.ceil(raw_t * f)
  local ticket = ARGV[11]
  local claim_max, grace = tonumber(ARGV[12]), tonumber(ARGV[13])
  local mine = ticket ~= '' and cq == ticket
  -- A default burst never refuses a cost above it: such a cost waits for a
  -- full bucket and leaves it in debt.
  local chk_r, chk_t = need_r, need_t
  if rburst <= 0 then chk_r = math.min(chk_r, rcap) end
  if tburst <= 0 then chk_t = math.min(chk_t, tcap) end
  -- Another caller's live claim reserves what it waits for: take only what
  -- leaves the claim's need in the bucket.
  local er, et = chk_r, chk_t
  if cq ~= '' and not mine then er, et = chk_r + cr, chk_t + ct end
  local wait = math.max(wait_for(r, er, rcap, rrate), wait_for(t, et, tcap, trate))
  -- Waits count from the caller's now, even when its clock lags ts.
  if wait > 0 then wait = wait + ts - now end
  if cd > now then wait = math.max(wait, cd - now) end
  if wait == 0 then
    if rcap > 0 then r = r - need_r end
    if tcap > 0 then t = t - need_t end
    if mine then cq, cr, ct, ce = '', 0, 0, 0 end
    if nt > SUM_MAX or ne > SUM_MAX or nr > SUM_MAX or nz > SUM_MAX then nr, nt, ne, nz, o_r, o_t, o_e, o_z = 0, 0, 0, 0, nil, nil, nil, nil end
    nr, nt, ne = nr + need_r, nt + need_t, ne + raw_t
    store()
    return {1, 0, r, t, nr, nt, ne, need_t}
  end
  if ticket ~= '' and (cq == '' or mine) then
    if wait <= claim_max then
      cq, cr, ct, ce = ticket, chk_r, chk_t, now + wait + grace
    elseif mine then
      cq, cr, ct, ce = '', 0, 0, 0
    end
  end
  store()
  return {0, wait, r, t, 0, 0, 0, 0}
elseif op == 'reconcile' then
  local refund, sr, st = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
  local limr, limt = tonumber(ARGV[12]), tonumber(ARGV[13])
  local nr_at, nt_at, ne_at, at = tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17])
  local charged, refused = tonumber(ARGV[18]), ARGV[19] == '1'
  local fmin, fmax, half, minpairs = tonumber(ARGV[20]), tonumber(ARGV[21]), tonumber(ARGV[22]), tonumber(ARGV[23])
  local raw, band, downtrust = tonumber(ARGV[24]), tonumber(ARGV[25]), tonumber(ARGV[26])
  local known = nt_at > 0 and at > 0 and nt_at <= nt and nr_at <= nr and ne_at <= ne

  -- The provider's limits: the lower one applies from now on.
  if limr > 0 then lr = limr end
  if limt > 0 then lt = limt end
  rrate, trate = rate(rpm, lr), rate(tpm, lt)
  -- What the provider's bucket provably holds: remaining + this request.
  if sr >= 0 then
    local own = U
    if refused then own = 0 end
    kr = math.max(kr, sr + own)
  end
  if st >= 0 then
    -- The provider charged this request by its own count, which the fleet
    -- knows only as an estimate: take the smaller of the estimate and its
    -- calibrated charge, so that a factor learned too high proves no
    -- larger bucket than the provider has (a larger kt would let readings
    -- of a capped bucket into the calibration and raise the factor more).
    -- A provider counting less than the estimate while the factor stays
    -- above its ratio (a downward correction is taken only in part, or
    -- falls in the dead band) still overstates by (factor - ratio) x this
    -- request's estimate, a few tokens, once per reading, never growing.
    local own = charged
    if raw > 0 and raw < own then own = raw end
    if refused then own = 0 end
    kt = math.max(kt, st + own)
  end
  rcap, tcap = capof(rrate, rburst, kr, true), capof(trate, tburst, kt, false)
  if r > rcap then r = rcap end
  if t > tcap then t = tcap end

  if tcap > 0 and refund > 0 then t = math.min(tcap, t + refund) end

  -- Adopt the provider's view. With the running sums, the reading is
  -- carried to now: what was charged after this request is subtracted and
  -- the refill since it added. Lower: adopt it. Higher (more room than the
  -- budget believed: a larger provider bucket, a slow start): adopt it
  -- less one transit's worth, for calls on their way that it missed.
  local function adopt(level, cap, reading, sum, sum_at, rt)
    if cap <= 0 or reading < 0 then return level end
    if not known then
      if reading < level then return reading end
      return level
    end
    -- The provider read its bucket when the call arrived, up to one
    -- transit after the reservation: count the refill from then.
    local view = reading - (sum - sum_at) + rt * math.max(0, now - at - transit)
    if view < level then return view end
    -- Raise only while the provider's bucket is at least a quarter full:
    -- in steady state calls reserved before this one may still be on
    -- their way, and a raise would spend them twice.
    view = math.min(cap, view - rt * transit)
    if view > level and view >= cap / 4 then return view end
    return level
  end
  r = adopt(r, rcap, sr, nr, nr_at, rrate)
  t = adopt(t, tcap, st, nt, nt_at, trate)

  -- Calibration: between two readings in reservation order, the provider
  -- charged reading_before + refill - reading_after; the fleet estimated
  -- the difference of ne, less what it estimated for calls the provider
  -- refused (nz: estimated, not charged). Their ratio, over decayed
  -- evidence, is f. A refusal whose estimate is unknown breaks the chain
  -- of readings instead.
  if refused then
    if known then nz = nz + raw else o_r, o_t, o_e, o_z = nil, nil, nil, nil end
  end
  if known and st >= 0 and not refused and tpm > 0 then
    local prate = tpm
    if lt > 0 then prate = lt end
    if o_r ~= nil and ne_at > o_e then
      local dt = math.max(0, at - o_t)
      local before = o_r + prate * dt
      -- A reading whose bucket may have filled in between says nothing.
      if before <= kt and dt <= half then
        local d = 0.5 ^ (math.max(0, at - sa) / half)
        sc, se, sn, sa = sc * d + (before - st), se * d + (ne_at - o_e) - (nz - (o_z or 0)), sn * d + 1, math.max(sa, at)
        if sn >= minpairs and se > 0 then
          f = sc / se
          -- Below 1 the fleet would spend more than it estimates, and an
          -- error costs 429s: take only part of a downward correction.
          if f < 1 then f = 1 - (1 - f) * downtrust end
          f = math.min(fmax, math.max(fmin, f))
          -- Within the dead band the estimate is taken as exact: the
          -- readings' timing noise is not chased.
          if math.abs(f - 1) <= band then f = 1 end
        end
      end
    end
    if o_r == nil or ne_at > o_e then o_r, o_t, o_e, o_z = st, at, ne_at, nz end
  end
  store()
  return {r, t}
elseif op == 'cooldown' then
  local until_ms = tonumber(ARGV[9])
  if until_ms > now and until_ms > cd then cd = until_ms end
  store()
  return {cd}
elseif op == 'usage' then
  return {r, t, cd, cr, ct, ce, rcap, tcap, rrate, trate, math.floor(f * 1000000 + 0.5)}
end
return redis.error_reply('budget.lua: unknown op ' .. tostring(op))
