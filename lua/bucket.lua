-- bucket: the operations on one stock bucket (or on the SKU that owns
-- buckets) that are not holds: the layout, account caps claimed for holds in
-- other buckets, and the two steps of moving units between buckets.
--
-- A SKU with `buckets: K > 1` keeps its stock in K buckets (prelude `bk`).
-- An account's cap is counted in its home bucket's accounts hash: a hold
-- there counts itself, and a hold that spills over to another bucket first
-- claims its units at home (`claim`), is held there without a cap check
-- (lua/reserve.lua, `claimed`), and gives the claim back when it is
-- released or expires, or keeps it for good when confirmed (`unclaim`).
--
-- A transfer moves `qty` units of one location (and, when a SKU's own
-- stock moves into its buckets, a share of its settings) from a bucket to another in
-- two steps, each atomic in its own slot: `withdraw` takes them off the
-- source's on hand and records the transfer there as pending; `deposit`
-- adds them to the destination once (it keeps the transfer id); `complete`
-- marks the source's record done. Between the steps the units are in
-- transit: counted in neither bucket, recorded in the source's pending set,
-- from which anyone finishes the transfer (deposit, then complete). Each
-- step is journaled as an `adjusted` event of its bucket (reason
-- `transfer_out` / `transfer_in`, reference `transfer:<id>:<other bucket>`).
--
-- KEYS: the partition convention (prelude) with one SKU, then 6 the SKU's
--   claims hash (claim id -> `acct|qty|claimed at ms`; `acct|qty` when a
--   rebuild restored it), 7 the partition's pending
--   transfers (sorted set: transfer id scored by when it was withdrawn), 8
--   the transfer's record in this slot (`out:` in the source:
--   `<destination>|<location>|<qty>|<source>|<ss>|<lt>|<bo>` while pending,
--   `done` after;
--   `in:` in the destination)
-- ARGV: the partition convention, then 6 operation, and per operation:
--   layout:   7 bucket partitions (comma separated); sets `bk` on a SKU with
--             no holds (the caller then gives each bucket the policy, and
--             moves the SKU's own stock into them with transfers)
--   policy:   7 the owner SKU's policy as JSON {max, open, close, ttl}; a
--             bucket takes it (creating its hash, version 0, when needed)
--   claim:    7 account, 8 claim id, 9 qty
--   unclaim:  7 claim id, 8 'give' (units back to the account) or 'keep'
--   withdraw: 7 location, 8 qty, 9 transfer id, 10 destination bucket,
--             11 record TTL (ms), 12 actor, 13-15 the safety stock,
--             low-stock threshold and backorder limit that go with the units
--             (a SKU's own stock moving into its buckets; 0 otherwise)
--   deposit:  the same, 10 being the source bucket
--   complete: 7 transfer id, 8 record TTL (ms)
-- Returns the partition convention's array with one item, whose reply is text:
--   layout:   ok | holds | bucketed
--   policy:   ok
--   claim:    claimed | uncapped (no cap: nothing to count) |
--             purchase_limit|limit|already
--   unclaim:  ok | none (no such claim: given or kept already)
--   withdraw: withdrawn (now or before) | done (completed before) |
--             insufficient_stock|free | unknown_location
--   deposit:  deposited (now or before)
--   complete: ok
--   or sku_recovering (the SKU is fenced, prelude)

local ctx = open_partition()
local s = sku_state(ctx, 1)
local op = ARGV[6]
local function answer(text)
  ctx.ev[1] = text
  finish(ctx)
  return {ctx.oversold, ctx.ev}
end
if s.fenced and op ~= 'unclaim' then return answer(FENCED) end

-- A transfer step's event: an operator-layout adjustment of `delta` units.
local function journal_step(loc, delta, reason, id, other, actor)
  commit(ctx, s, 'adjusted', loc,
    staff_tail(int_text(delta), reason, 'transfer:' .. id .. ':' .. other, actor, id), STAFF_LAYOUT)
end

if op == 'layout' then
  if s.buckets then return answer('bucketed') end
  if redis.call('ZCARD', s.holds) > 0 then return answer('holds') end
  for _, name in ipairs(s.names) do
    if s.locs[name].rs ~= 0 then return answer('holds') end
  end
  redis.call('HSET', s.key, 'bk', ARGV[7])
  if not s.exists then redis.call('HSET', s.key, 'ver', 0) end
  return answer('ok')
elseif op == 'policy' then
  local p = cjson.decode(ARGV[7])
  for _, field in ipairs({'max', 'open', 'close', 'ttl'}) do
    if p[field] then
      redis.call('HSET', s.key, field, p[field])
    else
      redis.call('HDEL', s.key, field)
    end
  end
  if not s.exists then redis.call('HSET', s.key, 'ver', s.ver) end
  return answer('ok')
elseif op == 'claim' then
  local acct, id, qty = ARGV[7], ARGV[8], tonumber(ARGV[9])
  if redis.call('HEXISTS', KEYS[6], id) == 1 then return answer('claimed') end
  local max = s.policy.max
  if not max then return answer('uncapped') end
  local already = account_units(s, acct)
  if already + qty > max then return answer('purchase_limit|' .. max .. '|' .. already) end
  account_add(s, acct, qty)
  redis.call('HSET', KEYS[6], id, acct .. '|' .. qty .. '|' .. ctx.now_s)
  return answer('claimed')
elseif op == 'unclaim' then
  local id = ARGV[7]
  local v = redis.call('HGET', KEYS[6], id)
  if not v then return answer('none') end
  redis.call('HDEL', KEYS[6], id)
  if ARGV[8] == 'give' then
    local acct, qty = string.match(v, '^([^|]*)|(%d+)')
    account_add(s, acct, -tonumber(qty))
  end
  return answer('ok')
elseif op == 'withdraw' then
  local loc, qty, id, dst = ARGV[7], tonumber(ARGV[8]), ARGV[9], ARGV[10]
  local ss, lt, bo = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
  local rec = redis.call('GET', KEYS[8])
  if rec == 'done' then return answer('done') end
  if rec then return answer('withdrawn') end
  local l = s.locs[loc]
  if not l then return answer('unknown_location') end
  -- The units that go must not be held, and what stays must still cover
  -- what is held: the settings that go with them come off too.
  if l.ss < ss or l.lt < lt or l.bo < bo or (l.oh - qty) - (l.ss - ss) + (l.bo - bo) < l.rs
    or qty - ss > free(l) then
    return answer('insufficient_stock|' .. math.max(0, free(l)))
  end
  l.oh, l.ss, l.lt, l.bo = l.oh - qty, l.ss - ss, l.lt - lt, l.bo - bo
  journal_step(loc, -qty, 'transfer_out', id, dst, ARGV[12])
  redis.call('SET', KEYS[8], table.concat({dst, loc, qty, s.name, ss, lt, bo}, '|'), 'PX', ARGV[11])
  redis.call('ZADD', KEYS[7], ctx.now, id)
  return answer('withdrawn')
elseif op == 'deposit' then
  local loc, qty, id, src = ARGV[7], tonumber(ARGV[8]), ARGV[9], ARGV[10]
  if redis.call('EXISTS', KEYS[8]) == 1 then return answer('deposited') end
  local l = s.locs[loc] or add_loc(s, loc)
  l.oh = l.oh + qty
  l.ss, l.lt, l.bo = l.ss + tonumber(ARGV[13]), l.lt + tonumber(ARGV[14]), l.bo + tonumber(ARGV[15])
  journal_step(loc, qty, 'transfer_in', id, src, ARGV[12])
  redis.call('SET', KEYS[8], src, 'PX', ARGV[11])
  if not s.exists then redis.call('HSET', s.key, 'ver', s.ver) end
  return answer('deposited')
elseif op == 'complete' then
  local id = ARGV[7]
  redis.call('SET', KEYS[8], 'done', 'PX', ARGV[8])
  redis.call('ZREM', KEYS[7], id)
  return answer('ok')
end
return redis.error_reply('bucket: unknown operation ' .. tostring(op))
