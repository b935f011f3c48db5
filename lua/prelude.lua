-- prelude: helpers shared by every flashgate script.
--
-- The script registry (src/redis/scripts.rs) prepends this file to each script
-- in lua/ before SCRIPT LOAD, so these functions are locals of every script.
-- Nothing here invents a key name: every key arrives through the `ctx` table,
-- which a script fills from its own KEYS.
--
-- SKU hash (KEYS of the caller), fields:
--   ver                       version, bumped by every stock mutation, never reused
--   max, open, close, ttl     policy: per-account cap (units), sale window (ms since
--                             the epoch), hold TTL (seconds); absent when unset
--   l:<loc>:oh                on hand (may be negative: units owed to backorders)
--   l:<loc>:rs                reserved (units held)
--   l:<loc>:ss, l:<loc>:lt    safety stock, low-stock threshold
--   l:<loc>:bo                backorder limit
-- Holds sorted set: member `<rid>|<loc>|<qty>|<backorder 0/1>|<account>`, score
-- = deadline in ms. Accounts hash: account -> units held or confirmed.
-- Reservation record hash: rid sku loc acct qty state exp bo created sid.
--
-- Invariant kept by every script, per location: rs <= oh - ss + bo.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function new_sku(key)
  return {key = key, ver = 0, locs = {}, names = {}, policy = {}}
end

-- Registers a location with zero counts; the caller sorts `names`.
local function new_loc(s, loc)
  local l = {oh = 0, rs = 0, ss = 0, lt = 0, bo = 0}
  s.locs[loc] = l
  s.names[#s.names + 1] = loc
  return l
end

local function add_loc(s, loc)
  local l = new_loc(s, loc)
  table.sort(s.names)
  return l
end

-- Reads a SKU hash into a table; nil when the SKU does not exist.
local function load_sku(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local s = new_sku(key)
  for i = 1, #flat, 2 do
    local field, value = flat[i], tonumber(flat[i + 1])
    local loc, attr = string.match(field, '^l:(.+):(%l%l)$')
    if loc then
      local l = s.locs[loc] or new_loc(s, loc)
      l[attr] = value
    elseif field == 'ver' then
      s.ver = value
    else
      s.policy[field] = value
    end
  end
  table.sort(s.names)
  return s
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

local function save_loc(s, loc)
  local l = s.locs[loc]
  local p = 'l:' .. loc .. ':'
  redis.call('HSET', s.key, 'ver', s.ver, p .. 'oh', l.oh, p .. 'rs', l.rs,
    p .. 'ss', l.ss, p .. 'lt', l.lt, p .. 'bo', l.bo)
end

-- Bumps the version, writes the location, and appends one event to the
-- partition stream (the journal's outbox). Every event carries the location's
-- counts after the change, so any single event can set `stock_levels`. The
-- event is also kept in `ctx.out`, which `encode` adds to the script's reply
-- for the gateway's journal queue. Returns the stream entry id.
--
-- Stream entry fields: kind sku loc ver oh rs ss lt bl ts, then for a
-- reservation's events rid acct qty bo exp [created], for stock_set and
-- adjusted delta [reason ref].
local function commit(ctx, s, kind, loc, fields)
  s.ver = s.ver + 1
  save_loc(s, loc)
  local l = s.locs[loc]
  local entry = {'kind', kind, 'sku', ctx.sku, 'loc', loc, 'ver', tostring(s.ver),
    'oh', tostring(l.oh), 'rs', tostring(l.rs), 'ss', tostring(l.ss), 'lt', tostring(l.lt),
    'bl', tostring(l.bo), 'ts', tostring(ctx.now)}
  for i = 1, #fields do entry[#entry + 1] = tostring(fields[i]) end
  ctx.last_id = redis.call('XADD', ctx.events, 'MAXLEN', '~', ctx.maxlen, '*', unpack(entry))
  ctx.out = ctx.out or {}
  ctx.out[#ctx.out + 1] = {ctx.last_id, entry}
  ctx.changed = true
  -- The invariant every hold must keep. Checked after the write, so a flaw
  -- in a decision above is reported (the `oversold` metric) instead of
  -- passing silently.
  if kind == 'reserved' and room(l) < 0 then ctx.oversold = (ctx.oversold or 0) + 1 end
  return ctx.last_id
end

-- Encodes a mutating script's reply: {reply = <outcome object>, events =
-- [[stream id, [field, value, ...]], ...], oversold = n}, events absent when
-- none were appended (cjson would encode an empty table as an object) and
-- oversold absent unless a hold broke the invariant in `commit`.
local function encode(ctx, reply)
  return cjson.encode({reply = reply, events = ctx.out, oversold = ctx.oversold})
end

local function hold_member(rid, loc, qty, bo, acct)
  return rid .. '|' .. loc .. '|' .. qty .. '|' .. bo .. '|' .. acct
end

local function account_add(ctx, acct, delta)
  if redis.call('HINCRBY', ctx.accounts, acct, delta) <= 0 then
    redis.call('HDEL', ctx.accounts, acct)
  end
end

-- Gives back the units of one hold that is past its deadline `exp`. The
-- caller has already removed the member from the holds set.
local function expire_hold(ctx, s, member, exp)
  local rid, loc, qty, bo, acct = string.match(member, '^([^|]+)|([^|]+)|(%d+)|([01])|(.+)$')
  qty = tonumber(qty)
  local l = s.locs[loc] or add_loc(s, loc)
  l.rs = l.rs - qty
  account_add(ctx, acct, -qty)
  ctx.holds_changed = true
  commit(ctx, s, 'expired', loc, {'rid', rid, 'acct', acct, 'qty', qty, 'bo', bo, 'exp', exp})
end

-- Expires up to `limit` overdue holds of this SKU (all of them when limit < 0).
local function expire_overdue(ctx, s, limit)
  local due = redis.call('ZRANGEBYSCORE', ctx.holds, '-inf', ctx.now, 'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #due, 2 do
    redis.call('ZREM', ctx.holds, due[i])
    expire_hold(ctx, s, due[i], due[i + 1])
  end
  return #due / 2
end

-- Keeps the partition's due index (sku -> earliest hold deadline) in step with
-- the SKU's holds, so the sweeper finds it.
local function refresh_due(ctx)
  local first = redis.call('ZRANGE', ctx.holds, 0, 0, 'WITHSCORES')
  if first[1] then
    redis.call('ZADD', ctx.due, first[2], ctx.sku)
  else
    redis.call('ZREM', ctx.due, ctx.sku)
  end
end

-- Ends a mutating script: refreshes the due index and announces the new stock.
local function finish(ctx, s)
  if ctx.holds_changed then refresh_due(ctx) end
  if ctx.changed then
    local avail, holdable = totals(s)
    redis.call('SPUBLISH', ctx.channel, ctx.sku .. '|' .. s.ver .. '|' .. avail .. '|' .. holdable)
  end
end

local function load_record(key)
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

local function record_reply(rec, now, outcome)
  return {outcome = outcome, reservation_id = rec.rid, sku = rec.sku, location = rec.loc,
    qty = tonumber(rec.qty), status = record_status(rec, now), expires_at_ms = tonumber(rec.exp),
    account_id = rec.acct, backorder = rec.bo == '1', stream_id = rec.sid}
end

-- Admin mutations carry an operation id so that a command re-sent by the
-- client library after a dropped connection is answered, not applied twice
-- (and without events: the first run journaled them).
local function replay_op(key)
  local done = redis.call('GET', key)
  if done then return '{"reply":' .. done .. '}' end
  return nil
end

-- Ends an admin mutation: finishes the script and keeps its reply under the
-- operation id for a re-sent command.
local function op_reply(ctx, s, key, ttl_ms, reply)
  finish(ctx, s)
  redis.call('SET', key, cjson.encode(reply), 'PX', ttl_ms)
  return encode(ctx, reply)
end

-- Confirm and release share one shape: load the caller's reservation, give
-- back overdue holds (this one's included), then move a live hold to `target`
-- ('confirmed' or 'released'). Repeating the same transition answers the same.
--
-- KEYS: 1 SKU hash, 2 SKU holds, 3 SKU accounts, 4 reservation record,
--       5 partition due index, 6 partition event stream
-- ARGV: 1 account id, 2 lazy expiry batch, 3 stream max length,
--       4 record retention (ms), 5 stock channel, 6 sku
-- Returns JSON {reply, events} (`encode`), where reply is
--   {outcome='ok', <reservation>} | not_found |
--   reservation_<status> (the status that forbids the transition).
local function settle(target)
  local ctx = {sku = ARGV[6], holds = KEYS[2], accounts = KEYS[3], due = KEYS[5],
    events = KEYS[6], channel = ARGV[5], maxlen = ARGV[3], now = now_ms()}
  local rec = load_record(KEYS[4])
  if not rec or rec.acct ~= ARGV[1] then return encode(ctx, {outcome = 'not_found'}) end
  local s = load_sku(KEYS[1]) or new_sku(KEYS[1])
  expire_overdue(ctx, s, tonumber(ARGV[2]))
  local member = hold_member(rec.rid, rec.loc, rec.qty, rec.bo, rec.acct)
  local status = record_status(rec, ctx.now)
  if status == 'expired' and redis.call('ZREM', ctx.holds, member) == 1 then
    expire_hold(ctx, s, member, rec.exp)
  end
  if status == 'held' then
    local qty = tonumber(rec.qty)
    local l = s.locs[rec.loc] or add_loc(s, rec.loc)
    redis.call('ZREM', ctx.holds, member)
    ctx.holds_changed = true
    l.rs = l.rs - qty
    if target == 'confirmed' then
      l.oh = l.oh - qty
    else
      account_add(ctx, rec.acct, -qty)
    end
    rec.sid = commit(ctx, s, target, rec.loc, {'rid', rec.rid, 'acct', rec.acct, 'qty', qty,
      'bo', rec.bo, 'exp', rec.exp, 'created', rec.created})
    rec.state = target
    status = target
    redis.call('HSET', KEYS[4], 'state', target, 'sid', rec.sid)
    redis.call('PEXPIRE', KEYS[4], ARGV[4])
  end
  finish(ctx, s)
  if status == target then return encode(ctx, record_reply(rec, ctx.now, 'ok')) end
  return encode(ctx, {outcome = 'reservation_' .. status})
end
