-- reserve: hold units for a batch of requests of one partition, atomically,
-- each exactly as if it were sent alone, in the order given.
--
-- Per SKU of the batch, once: expires its overdue holds (one batch of them;
-- all of them before a refusal that they could have caused), so a hold past
-- its deadline never blocks a new reservation. Per request: checks the
-- idempotency record, the sale window, the per-account cap and the stock,
-- and picks a location when none is given (the one with the most available
-- units that can serve the whole quantity; failing that, the one with the
-- most backorder room).
--
-- KEYS: the partition convention (prelude), then per request j (0-based,
--   m requests): 3n+3+j its reservation record (the request's new id); then
--   the idempotency record of each request that carries an
--   Idempotency-Key, in request order; then, for each request that carries
--   a waiting-room admission, in request order, its SKU's room tickets and
--   outstanding admissions (lua/room.lua)
-- ARGV: the partition convention, then from 5+n:
--   default hold TTL (ms, >= 1000), idempotency record TTL (ms),
--   record retention after the hold's deadline (ms),
--   then 9 per request: reservation id (string, carries the partition),
--   SKU index (1..n), account id, qty (integer >= 1), location ('' = choose),
--   request fingerprint when the client sent an Idempotency-Key ('' = none),
--   cart id when the hold is a cart's line ('' = none: the event then says
--   which cart, in the third layout), waiting-room ticket whose admission the
--   request carries ('' = none), '1' when the account's cap was already
--   counted in its home bucket (a stock bucket's hold that spilled over from
--   it: the cap is not checked here) or 
-- Returns the partition convention's array, one packed reply per request:
--   held|<reservation record>       (a new hold, or this very request re-sent)
--   replayed|<reservation record>   (the hold an earlier Idempotency-Key made)
--   insufficient_stock|available|holdable|version|next_expiry_ms
--     (holdable: units the whole SKU could still hold, backorders included;
--     next_expiry_ms: the earliest remaining hold deadline, empty when none)
--   purchase_limit|limit|already
--   sale_not_open|opens_at_ms | sale_closed | unknown_sku | unknown_location
--   idempotency_key_reused | sku_recovering (the SKU is fenced, prelude)
--   voided (a cart rolled this line back before it arrived: a tombstone)
--   bucketed|<partitions> (the SKU's stock lives in buckets, prelude `bk`)
--   admission_required (the SKU has a waiting room, and the request carries
--   no admission of this account that is unused and unexpired; a hold uses
--   its admission up)
-- A request's item lists the stream entries it appended (lazy expiries too).
-- Idempotency record: `<fingerprint>\n<reservation record>` (JSON
-- `{fp, reply}` when written by an older gateway; still read).
-- Error replies: none on valid input (the gateway validates ARGV first).

local ctx = open_partition()
local a, k = ctx.arg, ctx.key
local default_ttl, idem_ttl, retention = tonumber(ARGV[a]), ARGV[a + 1], tonumber(ARGV[a + 2])
local first_arg = a + 3
local count = (#ARGV - first_arg + 1) / 9

-- Every request's reservation id is its own: an existing record means the
-- client library re-sent this very command after a dropped connection.
local prior = redis.call('MGET', unpack(KEYS, k, k + count - 1))
-- The next keyed request's idempotency record.
local next_idem = k + count
-- The next admission-carrying request's room keys: after every idempotency
-- record.
local next_adm = next_idem
for i = 1, count do
  if ARGV[a + 3 + 9 * (i - 1) + 5] ~= '' then next_adm = next_adm + 1 end
end

-- Whether the request may hold in a SKU with a waiting room: its admission
-- is this account's, admitted, unused and unexpired.
local function admitted(req, room_keys)
  if not room_keys then return false end
  local deadline = tonumber(redis.call('ZSCORE', room_keys.admissions, req.ticket))
  if not deadline or deadline <= ctx.now then return false end
  local v = redis.call('HGET', room_keys.tickets, req.ticket)
  if not v then return false end
  local t = decode_ticket(v)
  return t.acct == req.account and t.state == 'admitted'
end

-- A hold used the admission up.
local function use_admission(req, room_keys)
  local t = decode_ticket(redis.call('HGET', room_keys.tickets, req.ticket))
  t.state = 'used'
  redis.call('HSET', room_keys.tickets, req.ticket, encode_ticket(t))
  redis.call('ZREM', room_keys.admissions, req.ticket)
end

-- The reservation record an idempotency record answers with, and the
-- fingerprint of the body that made it.
local function idempotent_hold(stored, account)
  local fp, record = string.match(stored, '^([^\n]*)\n(.*)$')
  if fp then return fp, record end
  local old = cjson.decode(stored)
  local r = old.reply
  return old.fp, encode_record({rid = r.reservation_id, sku = r.sku, loc = r.location,
    acct = account, qty = tostring(r.qty), state = 'held', exp = tostring(r.expires_at_ms),
    bo = r.backorder and '1' or '0', created = '', sid = r.stream_id})
end

-- Returns a refusal (its packed fields, outcome first), or nil and the chosen location and backorder flag.
local function decide(s, req)
  local p = s.policy
  if p.open and ctx.now < p.open then return {'sale_not_open', p.open} end
  if p.close and ctx.now >= p.close then return {'sale_closed'} end
  if p.max and not req.claimed then
    local already = account_units(s, req.account)
    if already + req.qty > p.max then
      return {'purchase_limit', p.max, already}
    end
  end
  if req.loc ~= '' then
    local l = s.locs[req.loc]
    if free(l) >= req.qty then return nil, req.loc, 0 end
    if room(l) >= req.qty then return nil, req.loc, 1 end
    return {'insufficient_stock', available(l)}
  end
  local best, best_free, best_room, best_room_units = nil, -1, nil, -1
  for _, name in ipairs(s.names) do
    local l = s.locs[name]
    if free(l) >= req.qty and free(l) > best_free then best, best_free = name, free(l) end
    if room(l) >= req.qty and room(l) > best_room_units then
      best_room, best_room_units = name, room(l)
    end
  end
  if best then return nil, best, 0 end
  if best_room then return nil, best_room, 1 end
  local avail = totals(s)
  return {'insufficient_stock', avail}
end

-- Every hold of one SKU in one call has the same deadline: it is worked out,
-- and formatted, once.
local function deadline(s)
  if not s.exp then
    local ttl_ms = s.policy.ttl and s.policy.ttl * 1000 or default_ttl
    s.exp = ctx.now + ttl_ms
    s.exp_s = tostring(s.exp)
    s.record_ttl_s = tostring(ttl_ms + retention)
  end
  return s.exp, s.exp_s
end

-- Holds the units and returns the new reservation record.
local function hold(s, req, loc, backorder, record_key)
  local bo = backorder == 1 and '1' or '0'
  local l = s.locs[loc]
  l.rs = l.rs + req.qty
  local exp, exp_s = deadline(s)
  local n = #s.new_holds
  s.new_holds[n + 1] = exp_s
  s.new_holds[n + 2] = hold_member(req.rid, loc, req.qty_s, bo, req.account)
  s.first_new = exp
  account_add(s, req.account, req.qty)
  local sid
  if req.cart == '' then
    sid = commit(ctx, s, 'reserved', loc,
      hold_tail(req.rid, req.account, req.qty_s, bo, exp_s, ctx.now_s))
  else
    sid = commit(ctx, s, 'reserved', loc, change_tail(req.rid, req.account, req.qty_s, bo,
      exp_s, ctx.now_s, req.qty_s, {cart = req.cart}), CHANGE_LAYOUT)
  end
  local record = req.rid .. '|' .. s.name .. '|' .. loc .. '|' .. req.account .. '|' .. req.qty_s
    .. '|held|' .. exp_s .. '|' .. bo .. '|' .. ctx.now_s .. '|' .. sid
  redis.call('SET', record_key, record, 'PX', s.record_ttl_s)
  return record
end

local function reserve(_, i)
  local base = first_arg + 9 * (i - 1)
  local req = {rid = ARGV[base], sku = tonumber(ARGV[base + 1]), account = ARGV[base + 2],
    qty = tonumber(ARGV[base + 3]), qty_s = ARGV[base + 3], loc = ARGV[base + 4],
    fp = ARGV[base + 5], cart = ARGV[base + 6], ticket = ARGV[base + 7],
    claimed = ARGV[base + 8] ~= ''}
  local room_keys
  if req.ticket ~= '' then
    room_keys = {tickets = KEYS[next_adm], admissions = KEYS[next_adm + 1]}
    next_adm = next_adm + 2
  end
  req.keyed = req.fp ~= ''
  local record_key, idem_key = KEYS[k + i - 1], nil
  if req.keyed then
    idem_key = KEYS[next_idem]
    next_idem = next_idem + 1
    local stored = redis.call('GET', idem_key)
    if stored then
      local fp, record = idempotent_hold(stored, req.account)
      if fp ~= req.fp then return 'idempotency_key_reused' end
      return 'replayed|' .. record
    end
  end
  if prior[i] then
    if decode_record(prior[i]).state == VOID then return 'voided' end
    return 'held|' .. prior[i]
  end
  local s = sku_state(ctx, req.sku)
  if s.fenced then return FENCED end
  if not s.exists then return 'unknown_sku' end
  if s.buckets then return 'bucketed|' .. s.buckets end
  if req.loc ~= '' and not s.locs[req.loc] then return 'unknown_location' end
  local room = s.policy.wra ~= nil
  if room and not admitted(req, room_keys) then return 'admission_required' end
  local refusal, loc, bo = decide(s, req)
  if refusal and s.more_overdue then
    -- More overdue holds than one batch: they must not cause a refusal.
    expire_overdue(ctx, s, -1)
    refusal, loc, bo = decide(s, req)
  end
  if refusal then
    if refusal[1] == 'insufficient_stock' then
      -- What a gateway needs to answer "sold out" locally, and for how long.
      local _, holdable = totals(s)
      refusal[3], refusal[4], refusal[5] = holdable, s.ver, first_deadline(s) or ''
    end
    return table.concat(refusal, '|')
  end
  local record = hold(s, req, loc, bo, record_key)
  if room then use_admission(req, room_keys) end
  if req.keyed then
    redis.call('SET', idem_key, req.fp .. '\n' .. record, 'PX', idem_ttl)
  end
  return 'held|' .. record
end

return run_requests(ctx, count, reserve)
