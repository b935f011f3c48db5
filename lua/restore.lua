-- restore: rewrite one SKU's state from the Postgres journal after Redis lost
-- it (`flashgate rebuild`). Refuses when the SKU changed since the caller
-- looked, so a rebuild never overwrites a write it did not see.
--
-- KEYS: the partition convention (prelude) with one SKU, then from 6 one
--   reservation record per entry of `records`, in order, then the SKU's
--   claims hash (lua/bucket.lua)
-- ARGV: the partition convention, then 6 a JSON document:
--   {expect = <version the caller saw, -1 when the SKU was absent>,
--    ver = <version to restore>,
--    locs = [{loc, oh, rs, ss, lt, bl}], policy = {max, open, close, ttl, wra, wrt, seller,
--    bk (the layout of a bucketed SKU)},
--    records = [{rid, loc, acct, qty, state, exp, bo, created, sid, ttl_ms}],
--    claims = [{id, acct, qty}] (a stock bucket: the held and confirmed units
--    of accounts whose home it is, held in its other buckets)}
-- Held records become holds again (an overdue one is expired, with its event,
-- by the next script that touches the SKU); held and confirmed records count
-- towards the account caps; a record is rewritten only when ttl_ms > 0.
-- Returns JSON: {outcome='ok', holds} | {outcome='changed', version}
-- Error replies: none on valid input.

local ctx = open_partition()
local sku = ctx.skus[1]
local doc = cjson.decode(ARGV[6])
local current = redis.call('HGET', sku.key, 'ver')
local seen = current and tonumber(current) or -1
if seen ~= doc.expect then
  return cjson.encode({outcome = 'changed', version = seen})
end
local claims_key = KEYS[6 + #doc.records]
redis.call('DEL', sku.key, sku.holds, sku.accounts, claims_key)
redis.call('HSET', sku.key, 'ver', doc.ver)
for _, l in ipairs(doc.locs) do
  local p = 'l:' .. l.loc .. ':'
  redis.call('HSET', sku.key, p .. 'oh', l.oh, p .. 'rs', l.rs, p .. 'ss', l.ss,
    p .. 'lt', l.lt, p .. 'bo', l.bl)
end
for _, field in ipairs({'max', 'open', 'close', 'ttl', 'wra', 'wrt'}) do
  local v = doc.policy[field]
  if type(v) == 'number' then redis.call('HSET', sku.key, field, v) end
end
if type(doc.policy.seller) == 'string' then
  redis.call('HSET', sku.key, 'seller', doc.policy.seller)
end
if type(doc.policy.bk) == 'string' then
  redis.call('HSET', sku.key, 'bk', doc.policy.bk)
end
local holds = 0
for i, r in ipairs(doc.records) do
  if r.ttl_ms > 0 then
    save_record(KEYS[5 + i], {rid = r.rid, sku = sku.name, loc = r.loc, acct = r.acct,
      qty = r.qty, state = r.state, exp = r.exp, bo = r.bo, created = r.created, sid = r.sid},
      r.ttl_ms)
  end
  if r.state == 'held' then
    redis.call('ZADD', sku.holds, r.exp, hold_member(r.rid, r.loc, r.qty, r.bo, r.acct))
    holds = holds + 1
  end
  if r.state == 'held' or r.state == 'confirmed' then
    redis.call('HINCRBY', sku.accounts, r.acct, r.qty)
  end
end
for _, c in ipairs(doc.claims or {}) do
  redis.call('HINCRBY', sku.accounts, c.acct, c.qty)
  redis.call('HSET', claims_key, c.id, c.acct .. '|' .. c.qty)
end
refresh_due(ctx, sku)
return cjson.encode({outcome = 'ok', holds = holds})
