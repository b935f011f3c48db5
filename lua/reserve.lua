-- reserve: hold `qty` units of one SKU for one account, atomically.
--
-- Expires the SKU's overdue holds first, so a hold past its deadline never
-- blocks a new reservation; then checks the idempotency record, the sale
-- window, the per-account cap and the stock, and picks a location when none
-- is given (the one with the most available units that can serve the whole
-- quantity; failing that, the one with the most backorder room).
--
-- KEYS:
--   1 SKU hash                  2 SKU holds (zset)         3 SKU accounts (hash)
--   4 reservation record (the new id's)                    5 idempotency record
--   6 partition due index (zset) 7 partition event stream
-- ARGV:
--   1 reservation id (string, carries the partition)
--   2 account id (string)        3 qty (integer >= 1)
--   4 location ('' = choose)     5 default hold TTL (ms, >= 1000)
--   6 '1' when KEYS[5] is in use (client sent an Idempotency-Key), else '0'
--   7 request fingerprint (string)
--   8 idempotency record TTL (ms)
--   9 lazy expiry batch (integer >= 1)
--  10 stream max length (approximate trim)
--  11 record retention after the hold's deadline (ms)
--  12 stock channel (sharded pub/sub)   13 sku
-- Returns JSON {reply = <outcome>, events = [...]} (see `encode` in the
-- prelude), where the outcome is an object with `outcome`:
--   held {reservation_id, sku, location, qty, expires_at_ms, backorder, stream_id, replayed}
--   insufficient_stock {available, holdable, version, next_expiry_ms}
--     (holdable: units the whole SKU could still hold, backorders included;
--     next_expiry_ms: the earliest remaining hold deadline, absent when none)
--   purchase_limit {limit, already}
--   sale_not_open {opens_at_ms} | sale_closed | unknown_sku | unknown_location
--   idempotency_key_reused
-- `events` lists the stream entries this call appended (lazy expiries too).
-- Error replies: none on valid input (the gateway validates ARGV first).

local rid, account, qty, want_loc = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local keyed = ARGV[6] == '1'
local ctx = {sku = ARGV[13], holds = KEYS[2], accounts = KEYS[3], due = KEYS[6],
  events = KEYS[7], channel = ARGV[12], maxlen = ARGV[10], now = now_ms()}

local function held_reply(rec, replayed)
  return {outcome = 'held', reservation_id = rec.rid, sku = rec.sku, location = rec.loc,
    qty = tonumber(rec.qty), expires_at_ms = tonumber(rec.exp), backorder = rec.bo == '1',
    stream_id = rec.sid, replayed = replayed}
end

if keyed then
  local stored = redis.call('GET', KEYS[5])
  if stored then
    local rec = cjson.decode(stored)
    if rec.fp ~= ARGV[7] then return encode(ctx, {outcome = 'idempotency_key_reused'}) end
    rec.reply.replayed = true
    return encode(ctx, rec.reply)
  end
end

-- The reservation id is this request's own: an existing record means the
-- client library re-sent this very command after a dropped connection.
local prior = load_record(KEYS[4])
if prior then return encode(ctx, held_reply(prior, false)) end

local s = load_sku(KEYS[1])
if not s then return encode(ctx, {outcome = 'unknown_sku'}) end
if want_loc ~= '' and not s.locs[want_loc] then
  return encode(ctx, {outcome = 'unknown_location'})
end

-- Returns a refusal, or nil and the chosen location and backorder flag.
local function decide()
  local p = s.policy
  if p.open and ctx.now < p.open then return {outcome = 'sale_not_open', opens_at_ms = p.open} end
  if p.close and ctx.now >= p.close then return {outcome = 'sale_closed'} end
  if p.max then
    local already = tonumber(redis.call('HGET', ctx.accounts, account) or '0')
    if already + qty > p.max then
      return {outcome = 'purchase_limit', limit = p.max, already = already}
    end
  end
  if want_loc ~= '' then
    local l = s.locs[want_loc]
    if free(l) >= qty then return nil, want_loc, 0 end
    if room(l) >= qty then return nil, want_loc, 1 end
    return {outcome = 'insufficient_stock', available = available(l)}
  end
  local best, best_free, best_room, best_room_units = nil, -1, nil, -1
  for _, name in ipairs(s.names) do
    local l = s.locs[name]
    if free(l) >= qty and free(l) > best_free then best, best_free = name, free(l) end
    if room(l) >= qty and room(l) > best_room_units then best_room, best_room_units = name, room(l) end
  end
  if best then return nil, best, 0 end
  if best_room then return nil, best_room, 1 end
  local avail = totals(s)
  return {outcome = 'insufficient_stock', available = avail}
end

expire_overdue(ctx, s, tonumber(ARGV[9]))
local refusal, loc, bo = decide()
if refusal and redis.call('ZCOUNT', ctx.holds, '-inf', ctx.now) > 0 then
  -- More overdue holds than one batch: they must not cause a refusal.
  expire_overdue(ctx, s, -1)
  refusal, loc, bo = decide()
end
if refusal then
  if refusal.outcome == 'insufficient_stock' then
    -- What a gateway needs to answer "sold out" locally, and for how long.
    local _, holdable = totals(s)
    refusal.holdable, refusal.version = holdable, s.ver
    local first = redis.call('ZRANGE', ctx.holds, 0, 0, 'WITHSCORES')
    refusal.next_expiry_ms = tonumber(first[2])
  end
  finish(ctx, s)
  return encode(ctx, refusal)
end

local l = s.locs[loc]
l.rs = l.rs + qty
local ttl_ms = s.policy.ttl and s.policy.ttl * 1000 or tonumber(ARGV[5])
local exp = ctx.now + ttl_ms
redis.call('ZADD', ctx.holds, exp, hold_member(rid, loc, qty, bo, account))
account_add(ctx, account, qty)
if not ctx.holds_changed then
  -- Nothing expired in this call: the SKU's earliest deadline is the older
  -- one or this hold's, which ZADD LT keeps without reading the holds set.
  redis.call('ZADD', ctx.due, 'LT', exp, ctx.sku)
end
local sid = commit(ctx, s, 'reserved', loc, {'rid', rid, 'acct', account, 'qty', qty, 'bo', bo,
  'exp', exp, 'created', ctx.now})
redis.call('HSET', KEYS[4], 'rid', rid, 'sku', ctx.sku, 'loc', loc, 'acct', account, 'qty', qty,
  'state', 'held', 'exp', exp, 'bo', bo, 'created', ctx.now, 'sid', sid)
redis.call('PEXPIRE', KEYS[4], ttl_ms + tonumber(ARGV[11]))
finish(ctx, s)

local reply = held_reply({rid = rid, sku = ctx.sku, loc = loc, qty = qty, exp = exp,
  bo = tostring(bo), sid = sid}, false)
if keyed then
  redis.call('SET', KEYS[5], cjson.encode({fp = ARGV[7], reply = reply}), 'PX', ARGV[8])
end
return encode(ctx, reply)
