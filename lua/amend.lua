-- amend: change one live hold of a partition. `extend` moves its deadline,
-- `shrink` gives part of it back, `release` gives it all back for an
-- operator, `void` gives it all back for a cart that failed, and when the
-- reservation has no record yet leaves a tombstone (prelude), so a reserve
-- command for that id that arrives late holds nothing.
--
-- Every change is journaled in the third event layout (prelude): extend as
-- `extended` (exp the new deadline), the others as `released` with the
-- units given back as qty and what is still held as `held`.
--
-- KEYS: the partition convention (prelude) with one SKU, then 6 the
--   reservation record
-- ARGV: the partition convention (n = 1), then from 6:
--   6 action ('extend' | 'shrink' | 'release' | 'void'),
--   7 reservation id, 8 account id ('' = any: an operator),
--   9 record retention after the hold ends (ms),
--   10 extend: seconds from now (>= 1); shrink: the new quantity (>= 1);
--      otherwise ignored,
--   11 extend: the longest a hold may last from its creation (ms),
--   12 reason, 13 actor, 14 request id, 15 cart id (each '' = none)
-- Returns the partition convention's array with one packed reply:
--   ok|<reservation record, its state read as its status> | not_found |
--   reservation_<status> (a hold no longer live) |
--   hold_limit|<latest deadline allowed, ms> | qty_not_smaller|<held qty> |
--   sku_recovering (the SKU is fenced, prelude).
-- Error replies: none on valid input.

local ctx = open_partition()
local a, key = ctx.arg, KEYS[ctx.key]
local action, rid, account, retention = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
local value, hold_max_ms = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
local change = {reason = ARGV[a + 6], actor = ARGV[a + 7], req = ARGV[a + 8], cart = ARGV[a + 9]}

-- A tombstone lives as long as any record would: past every late command.
local function tombstone(s)
  save_record(key, {rid = rid, sku = s.name, loc = '', acct = account, qty = '0', state = VOID,
    exp = '0', bo = '0', created = ctx.now_s, sid = ''}, retention)
end

-- Gives `qty` of the hold back; `left` units stay held (0: the hold ends).
local function give_back(s, rec, member, qty, left)
  local l = s.locs[rec.loc] or add_loc(s, rec.loc)
  redis.call('ZREM', s.holds, member)
  s.holds_changed = true
  l.rs = l.rs - qty
  account_add(s, rec.acct, -qty)
  local left_s = int_text(left)
  if left > 0 then
    redis.call('ZADD', s.holds, rec.exp, hold_member(rec.rid, rec.loc, left_s, rec.bo, rec.acct))
  end
  rec.sid = commit(ctx, s, 'released', rec.loc, change_tail(rec.rid, rec.acct, int_text(qty),
    rec.bo, rec.exp, rec.created or '', left_s, change), CHANGE_LAYOUT)
  if left > 0 then
    rec.qty = left_s
    save_record(key, rec, tonumber(rec.exp) - ctx.now + retention)
  else
    rec.state = 'released'
    save_record(key, rec, retention)
  end
end

local function extend(s, rec, member)
  local deadline = ctx.now + value * 1000
  local latest = (tonumber(rec.created or '') or ctx.now) + hold_max_ms
  if deadline > latest then return 'hold_limit|' .. int_text(latest) end
  rec.exp = int_text(deadline)
  redis.call('ZADD', s.holds, rec.exp, member)
  s.holds_changed = true
  -- The counts do not change, but the event needs the location's.
  if not s.locs[rec.loc] then add_loc(s, rec.loc) end
  rec.sid = commit(ctx, s, 'extended', rec.loc, change_tail(rec.rid, rec.acct, rec.qty, rec.bo,
    rec.exp, rec.created or '', rec.qty, change), CHANGE_LAYOUT)
  save_record(key, rec, deadline - ctx.now + retention)
  return nil
end

local function amend()
  local s = sku_state(ctx, 1)
  if s.fenced then return FENCED end
  local rec = load_record(key)
  if not rec then
    if action == 'void' then tombstone(s) end
    return 'not_found'
  end
  if rec.state == VOID or (account ~= '' and rec.acct ~= account) then return 'not_found' end
  local member = hold_member(rec.rid, rec.loc, rec.qty, rec.bo or '0', rec.acct)
  rec.bo = rec.bo or '0'
  local status = record_status(rec, ctx.now)
  if status == 'expired' and redis.call('ZREM', s.holds, member) == 1 then
    expire_hold(ctx, s, member, rec.exp)
  end
  if status ~= 'held' then return 'reservation_' .. status end
  local qty = tonumber(rec.qty)
  if action == 'extend' then
    local refusal = extend(s, rec, member)
    if refusal then return refusal end
  elseif action == 'shrink' then
    if value >= qty then return 'qty_not_smaller|' .. rec.qty end
    give_back(s, rec, member, qty - value, value)
  else
    give_back(s, rec, member, qty, 0)
  end
  return record_reply(rec, ctx.now)
end

return run_requests(ctx, 1, amend)
