-- settle: confirm or release a batch of the callers' live holds of one
-- partition, in order, each exactly as if it were sent alone. Confirming
-- turns the hold into a sale (on hand and reserved both drop by its
-- quantity); releasing gives the units back (reserved and the account's
-- count drop). Repeating the same transition answers the same; a hold that
-- reached another end answers reservation_<that status>.
--
-- KEYS: the partition convention (prelude), then per request j (0-based):
--   3n+3+j the reservation record
-- ARGV: the partition convention, then from 5+n: record retention (ms),
--   then 3 per request: SKU index (1..n), account id,
--   target ('confirmed' or 'released')
-- Returns the partition convention's array, one packed reply per request:
--   ok|<reservation record, its state read as its status> | not_found |
--   reservation_<status> (the status that forbids the transition) |
--   sku_recovering (the SKU is fenced, prelude).
-- Error replies: none on valid input.

local ctx = open_partition()
local a, k = ctx.arg, ctx.key
local retention = ARGV[a]
local first_arg = a + 1
local count = (#ARGV - first_arg + 1) / 3

local function settle(_, i)
  local base = first_arg + 3 * (i - 1)
  local account, target = ARGV[base + 1], ARGV[base + 2]
  local key = KEYS[k + i - 1]
  local rec = load_record(key)
  if not rec or rec.acct ~= account or rec.state == VOID then return 'not_found' end
  local s = sku_state(ctx, tonumber(ARGV[base]))
  if s.fenced then return FENCED end
  local member = hold_member(rec.rid, rec.loc, rec.qty, rec.bo, rec.acct)
  local status = record_status(rec, ctx.now)
  if status == 'expired' and redis.call('ZREM', s.holds, member) == 1 then
    expire_hold(ctx, s, member, rec.exp)
  end
  if status == 'held' then
    local qty = tonumber(rec.qty)
    local l = s.locs[rec.loc] or add_loc(s, rec.loc)
    redis.call('ZREM', s.holds, member)
    s.holds_changed = true
    l.rs = l.rs - qty
    if target == 'confirmed' then
      l.oh = l.oh - qty
    else
      account_add(s, rec.acct, -qty)
    end
    rec.sid = commit(ctx, s, target, rec.loc,
      hold_tail(rec.rid, rec.acct, rec.qty, rec.bo or '0', rec.exp, rec.created or ''))
    rec.state = target
    status = target
    save_record(key, rec, retention)
  end
  if status == target then return record_reply(rec, ctx.now) end
  return 'reservation_' .. status
end

return run_requests(ctx, count, settle)
