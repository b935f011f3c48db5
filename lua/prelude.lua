-- prelude: helpers shared by every flashgate script.
--
-- The script registry (src/redis/scripts.rs) prepends this file to each script
-- in lua/ before SCRIPT LOAD, so these functions are locals of every script.
-- Nothing here invents a key name: every key arrives through KEYS.
--
-- Calling convention of every script that acts on SKUs of one partition
-- (built by one Rust function, `Keys::partition_call`):
--   KEYS: 1 partition due index, 2 partition event stream,
--         then per SKU i (1..n): 3i SKU hash, 3i+1 holds, 3i+2 accounts;
--         the script's own keys start at 3n+3.
--   ARGV: 1 stream max length, 2 stock channel, 3 lazy expiry batch (>= 1),
--         4 SKU count n (>= 1), 5..4+n the SKU names;
--         the script's own arguments start at 5+n.
-- Such a script applies one or more requests in order and returns an array
--   {oversold, item_1, ..., item_m}, item_j = {reply, stream id, packed event, ...}
-- (oversold: how many holds broke the invariant below, always 0 unless a
-- decision is wrong; then, per request, its reply as text and the
-- `stream id, packed event` pairs of the entries it appended). A reply is
-- packed text (`outcome|field|...`) for the hot scripts (reserve, settle)
-- and JSON for the rest; each script's header gives its shape.
--
-- SKU hash fields:
--   ver                       version, bumped by every stock mutation, never reused
--   max, open, close, ttl     policy: per-account cap (units), sale window (ms since
--                             the epoch), hold TTL (seconds); absent when unset
--   wra, wrt                  policy: waiting room admissions per second, admission
--                             TTL (seconds); both present while the room is on
--   seller                    policy: the marketplace seller who owns the SKU (text)
--   bk                        the SKU's stock lives in buckets: their partitions, comma
--                             separated (each bucket is a SKU named `<sku>~<partition>`
--                             in that partition, with a copy of the policy); the SKU's
--                             own hash then holds no stock, and scripts that would hold
--                             or change its stock answer `bucketed|<bk>` instead
--   l:<loc>:oh                on hand (may be negative: units owed to backorders)
--   l:<loc>:rs                reserved (units held)
--   l:<loc>:ss, l:<loc>:lt    safety stock, low-stock threshold
--   l:<loc>:bo                backorder limit
--   fence                     present while the SKU is fenced: Redis lost writes the
--                             journal has (ms since the epoch when it was found); every
--                             script but restore refuses to change the SKU, and restore,
--                             rewriting the SKU from the journal, removes it
-- Holds sorted set: member `<rid>|<loc>|<qty>|<backorder 0/1>|<account>`, score
-- = deadline in ms. Accounts hash: account -> units held or confirmed.
-- Reservation record: a string `rid|sku|loc|acct|qty|state|exp|bo|created|sid`
-- (a hash with those fields when written by an older gateway; still read).
-- Event (the stream entry's one field `e`, and the reply's events):
--   kind|sku|loc|ver|oh|rs|ss|lt|bl|ts|rid|acct|qty|bo|exp|created|delta|reason|ref
--   (empty where a kind has no such value; `ref`, free text, comes last).
--   The last nine fields are the event's tail, built by `hold_tail` (and
--   `||||||delta|reason|ref` for a stock change journaled by an older
--   gateway). An operator's stock change is laid out with who made it:
--   v2|kind|sku|loc|ver|oh|rs|ss|lt|bl|ts|rid|acct|qty|bo|exp|created|delta|reason|actor|req|ref
--   (`staff_tail`; actor and request id never hold a bar).
--   A change of a live hold (extend, shrink, an operator's or a cart's release)
--   and a cart line's hold are laid out with what is still held and the cart:
--   v3|kind|sku|loc|ver|oh|rs|ss|lt|bl|ts|rid|acct|qty|bo|exp|created|delta|reason|actor|req|held|cart|ref
--   (`change_tail`; `qty` is the units the event moved, `held` what the
--   reservation holds after it).
-- A reservation record in state `void` is a tombstone: a cart rolled back a
-- line that had not been held (yet); a reservation command for that id that
-- arrives late holds nothing, and readers answer not_found.
--
-- Within one call, the SKU hash, the accounts hash, the new holds, the due
-- index and the stock announcement are written once per SKU, at `finish`;
-- reservation and idempotency records are written as each request is
-- applied, so a later request of the same call reads them.
--
-- Invariant kept by every script, per location: rs <= oh - ss + bo.

-- Numbers become text through printf("%.14g"), which costs more than most
-- commands: values that came in as text stay text (`now_s`, a location's
-- `str`), and counts are formatted once per change (`text`), as integers
-- (`int_text`: printf's integer path, not its floating-point one).
local function int_text(n) return string.format('%d', n) end

local function open_partition()
  local t = redis.call('TIME')
  local n = tonumber(ARGV[4])
  local ctx = {due = KEYS[1], events = KEYS[2], maxlen = ARGV[1], channel = ARGV[2],
    expiry_batch = tonumber(ARGV[3]),
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
    skus = {}, key = 3 * n + 3, arg = 5 + n, ev = {''}, oversold = 0}
  ctx.now_s = tostring(ctx.now)
  for i = 1, n do
    ctx.skus[i] = {name = ARGV[4 + i], key = KEYS[3 * i], holds = KEYS[3 * i + 1],
      accounts = KEYS[3 * i + 2]}
  end
  return ctx
end

-- A location count as text, formatted only when it changed since last time.
local function text(l, attr)
  local v = l[attr]
  if l.num[attr] ~= v then
    l.num[attr] = v
    l.str[attr] = int_text(v)
  end
  return l.str[attr]
end

-- Registers a location with zero counts; the caller sorts `names`.
local function new_loc(s, loc)
  local l = {oh = 0, rs = 0, ss = 0, lt = 0, bo = 0,
    num = {oh = 0, rs = 0, ss = 0, lt = 0, bo = 0},
    str = {oh = '0', rs = '0', ss = '0', lt = '0', bo = '0'}}
  s.locs[loc] = l
  s.names[#s.names + 1] = loc
  return l
end

local function add_loc(s, loc)
  local l = new_loc(s, loc)
  table.sort(s.names)
  return l
end

-- Units that can be sold now (negative while backorders are owed).
local function free(l) return l.oh - l.ss - l.rs end
-- Units that can still be held, backorders included.
local function room(l) return l.oh - l.ss + l.bo - l.rs end
local function available(l) return math.max(0, free(l)) end

local function totals(s)
  local avail, holdable = 0, 0
  for _, name in ipairs(s.names) do
    local l = s.locs[name]
    avail = avail + available(l)
    holdable = holdable + math.max(0, room(l))
  end
  return avail, holdable
end

local function hold_member(rid, loc, qty, bo, acct)
  return rid .. '|' .. loc .. '|' .. qty .. '|' .. bo .. '|' .. acct
end

-- The account's units (held or confirmed) as this call has left them.
local function account_units(s, acct)
  local base = s.acct_base[acct]
  if base == nil then
    base = tonumber(redis.call('HGET', s.accounts, acct) or '0')
    s.acct_base[acct] = base
  end
  return base + (s.acct_delta[acct] or 0)
end

local function account_add(s, acct, delta)
  s.acct_delta[acct] = (s.acct_delta[acct] or 0) + delta
end

-- The tail of a reservation's event: rid|acct|qty|bo|exp|created|||
local function hold_tail(rid, acct, qty, bo, exp, created)
  return rid .. '|' .. acct .. '|' .. qty .. '|' .. bo .. '|' .. exp .. '|' .. created .. '|||'
end

-- The tail of an operator's stock change, for `commit`'s second layout:
-- ||||||delta|reason|actor|req|ref
local function staff_tail(delta, reason, ref, actor, req)
  return '||||||' .. delta .. '|' .. (reason or '') .. '|' .. actor .. '|' .. req .. '|'
    .. (ref or '')
end

-- The mark ahead of an event in the second layout (`staff_tail`).
local STAFF_LAYOUT = 'v2|'

-- The tail of a hold's event in the third layout (`commit` with CHANGE_LAYOUT):
-- rid|acct|qty|bo|exp|created|delta|reason|actor|req|held|cart|ref. `c` names
-- the change: reason, actor, req, cart (each may be nil).
local function change_tail(rid, acct, qty, bo, exp, created, held, c)
  return rid .. '|' .. acct .. '|' .. qty .. '|' .. bo .. '|' .. exp .. '|' .. created .. '||'
    .. (c.reason or '') .. '|' .. (c.actor or '') .. '|' .. (c.req or '') .. '|' .. held .. '|'
    .. (c.cart or '') .. '|'
end

-- The mark ahead of an event in the third layout (`change_tail`).
local CHANGE_LAYOUT = 'v3|'

-- The state of a tombstone record (see the record line above).
local VOID = 'void'

-- Bumps the version and appends one event to the partition stream (the
-- journal's outbox); the location's counts after the change ride along, so
-- any single event can set `stock_levels`. The event also goes into the
-- current request's item (`ctx.ev`), for the gateway's journal queue.
-- Returns the stream entry id. `tail` is the event's last nine fields, or
-- eleven after `layout` STAFF_LAYOUT (nil: the first layout).
local function commit(ctx, s, kind, loc, tail, layout)
  s.ver = s.ver + 1
  s.dirty[loc] = true
  s.changed = true
  s.ver_s = int_text(s.ver)
  local l = s.locs[loc]
  local e = (layout or '') .. kind .. '|' .. s.name .. '|' .. loc .. '|' .. s.ver_s .. '|' .. text(l, 'oh') .. '|'
    .. text(l, 'rs') .. '|' .. text(l, 'ss') .. '|' .. text(l, 'lt') .. '|' .. text(l, 'bo')
    .. '|' .. ctx.now_s .. '|' .. tail
  local id = redis.call('XADD', ctx.events, 'MAXLEN', '~', ctx.maxlen, '*', 'e', e)
  local ev = ctx.ev
  ev[#ev + 1] = id
  ev[#ev + 1] = e
  -- The invariant every hold must keep. Checked after the change, so a flaw
  -- in a decision above is reported (the `oversold` metric) instead of
  -- passing silently.
  if kind == 'reserved' and room(l) < 0 then ctx.oversold = ctx.oversold + 1 end
  return id
end

-- Gives back the units of one hold that is past its deadline `exp`. The
-- caller has already removed the member from the holds set.
local function expire_hold(ctx, s, member, exp)
  local rid, loc, qty_s, bo, acct = string.match(member, '^([^|]+)|([^|]+)|(%d+)|([01])|(.+)$')
  local qty = tonumber(qty_s)
  local l = s.locs[loc] or add_loc(s, loc)
  l.rs = l.rs - qty
  account_add(s, acct, -qty)
  s.holds_changed = true
  commit(ctx, s, 'expired', loc, hold_tail(rid, acct, qty_s, bo, exp, ''))
end

-- Expires up to `limit` overdue holds of this SKU (all of them when limit < 0);
-- remembers whether more may be left.
local function expire_overdue(ctx, s, limit)
  local due = redis.call('ZRANGEBYSCORE', s.holds, '-inf', ctx.now, 'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #due, 2 do
    redis.call('ZREM', s.holds, due[i])
    expire_hold(ctx, s, due[i], due[i + 1])
  end
  s.more_overdue = limit >= 0 and #due / 2 >= limit
  return #due / 2
end

-- The state of SKU i of this call, read once (HGETALL) and lazily expired
-- once; a SKU that does not exist reads as empty with `exists = false`, a
-- fenced one (see `fence` above) with `fenced = true`, and its caller
-- answers FENCED without changing it.
local function sku_state(ctx, i)
  local s = ctx.skus[i]
  if s.ver then return s end
  s.ver, s.locs, s.names, s.policy = 0, {}, {}, {}
  s.dirty, s.acct_base, s.acct_delta, s.new_holds = {}, {}, {}, {}
  local flat = redis.call('HGETALL', s.key)
  s.exists = #flat > 0
  for j = 1, #flat, 2 do
    local field, raw = flat[j], flat[j + 1]
    local value = tonumber(raw)
    local loc, attr = string.match(field, '^l:(.+):(%l%l)$')
    if loc then
      local l = s.locs[loc] or new_loc(s, loc)
      l[attr] = value
      l.num[attr], l.str[attr] = value, raw
    elseif field == 'ver' then
      s.ver = value
    elseif field == 'fence' then
      s.fenced = true
    elseif field == 'bk' then
      s.buckets = raw
    else
      s.policy[field] = value
    end
  end
  table.sort(s.names)
  -- A fenced SKU's state is stale: nothing is derived from it, not even expiry.
  if s.exists and not s.fenced then expire_overdue(ctx, s, ctx.expiry_batch) end
  return s
end

-- The SKU as HGETALL would list its version and locations after this call.
local function flat_sku(s)
  local flat = {'ver', tostring(s.ver)}
  for _, name in ipairs(s.names) do
    local l, p = s.locs[name], 'l:' .. name .. ':'
    for _, attr in ipairs({'oh', 'rs', 'ss', 'lt', 'bo'}) do
      flat[#flat + 1] = p .. attr
      flat[#flat + 1] = tostring(l[attr])
    end
  end
  return flat
end

-- The earliest hold deadline of the SKU after this call; nil when none.
local function first_deadline(s)
  local first = tonumber(redis.call('ZRANGE', s.holds, 0, 0, 'WITHSCORES')[2])
  if s.first_new and (not first or s.first_new < first) then return s.first_new end
  return first
end

-- Sets the SKU's entry in the partition's due index to its earliest hold
-- deadline, or removes it when it holds nothing, so the sweeper finds it.
local function refresh_due(ctx, s)
  local first = redis.call('ZRANGE', s.holds, 0, 0, 'WITHSCORES')
  if first[1] then
    redis.call('ZADD', ctx.due, first[2], s.name)
  else
    redis.call('ZREM', ctx.due, s.name)
  end
end

-- Writes what the call changed of one SKU: counts and version, account
-- units, new holds, its entry in the due index, and one stock announcement.
local function flush_sku(ctx, s)
  for acct, d in pairs(s.acct_delta) do
    if d ~= 0 and redis.call('HINCRBY', s.accounts, acct, d) <= 0 then
      redis.call('HDEL', s.accounts, acct)
    end
  end
  if next(s.dirty) then
    local fields = {'ver', s.ver_s}
    for loc in pairs(s.dirty) do
      local l, p = s.locs[loc], 'l:' .. loc .. ':'
      for _, attr in ipairs({'oh', 'rs', 'ss', 'lt', 'bo'}) do
        fields[#fields + 1] = p .. attr
        fields[#fields + 1] = text(l, attr)
      end
    end
    redis.call('HSET', s.key, unpack(fields))
  end
  if #s.new_holds > 0 then redis.call('ZADD', s.holds, unpack(s.new_holds)) end
  if s.holds_changed then
    refresh_due(ctx, s)
  elseif s.first_new then
    -- Nothing left the holds set: the SKU's earliest deadline is the older
    -- one or the earliest new hold's, which ZADD LT keeps without a read.
    redis.call('ZADD', ctx.due, 'LT', s.first_new, s.name)
  end
  if s.changed then
    local avail, holdable = totals(s)
    redis.call('SPUBLISH', ctx.channel, s.name .. '|' .. s.ver_s .. '|' .. avail .. '|' .. holdable)
  end
end

-- The reply of every script asked to change a fenced SKU.
local FENCED = 'sku_recovering'

local function finish(ctx)
  for _, s in ipairs(ctx.skus) do
    if s.ver then flush_sku(ctx, s) end
  end
end

-- Runs `apply(ctx, i)` for each of `count` requests in order; each returns
-- its reply as text, which heads the request's item.
local function run_requests(ctx, count, apply)
  local out = {0}
  for i = 1, count do
    ctx.ev = {''}
    ctx.ev[1] = apply(ctx, i)
    out[i + 1] = ctx.ev
  end
  finish(ctx)
  out[1] = ctx.oversold
  return out
end

local function encode_record(rec)
  return rec.rid .. '|' .. rec.sku .. '|' .. rec.loc .. '|' .. rec.acct .. '|' .. rec.qty .. '|'
    .. rec.state .. '|' .. rec.exp .. '|' .. (rec.bo or '0') .. '|' .. (rec.created or '') .. '|'
    .. (rec.sid or '')
end

local function decode_record(v)
  local rid, sku, loc, acct, qty, state, exp, bo, created, sid = string.match(v,
    '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  return {rid = rid, sku = sku, loc = loc, acct = acct, qty = qty, state = state, exp = exp,
    bo = bo, created = created, sid = sid}
end

local function save_record(key, rec, ttl_ms)
  redis.call('SET', key, encode_record(rec), 'PX', ttl_ms)
end

-- A reservation record, or nil. Records written by an older gateway are
-- hashes: GET answers WRONGTYPE for them, and they are read as hashes.
local function load_record(key)
  local v = redis.pcall('GET', key)
  if type(v) == 'string' then return decode_record(v) end
  if type(v) ~= 'table' or not v.err then return nil end
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local rec = {}
  for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
  return rec
end

-- A hold whose deadline has passed reads as expired, whether or not a script
-- has given its units back yet.
local function record_status(rec, now)
  if rec.state == 'held' and tonumber(rec.exp) <= now then return 'expired' end
  return rec.state
end

-- The packed reply `ok|<record>` of a reservation, its state read as its
-- status at `now`.
local function record_reply(rec, now)
  local stored = rec.state
  rec.state = record_status(rec, now)
  local reply = 'ok|' .. encode_record(rec)
  rec.state = stored
  return reply
end

-- A waiting-room ticket (lua/room.lua): `acct|state|order|admission deadline`.
local function decode_ticket(v)
  local acct, state, order, deadline = string.match(v, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  return {acct = acct, state = state, order = order, deadline = deadline}
end

local function encode_ticket(t)
  return t.acct .. '|' .. t.state .. '|' .. t.order .. '|' .. t.deadline
end

-- Admin mutations carry an operation id so that a command re-sent by the
-- client library after a dropped connection is answered, not applied twice
-- (and without events: the first run journaled them).
local function replay_op(key)
  local done = redis.call('GET', key)
  if done then return {0, {done}} end
  return nil
end

-- Ends an admin mutation of one SKU: writes it, keeps its JSON reply under
-- the operation id for a re-sent command, and returns the partition
-- convention's array.
local function op_reply(ctx, key, ttl_ms, reply)
  local item = ctx.ev
  item[1] = cjson.encode(reply)
  finish(ctx)
  redis.call('SET', key, item[1], 'PX', ttl_ms)
  return {ctx.oversold, item}
end
