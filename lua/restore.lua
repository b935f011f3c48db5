-- restore: rewrite one SKU's state from the Postgres journal after Redis lost
-- it (`flashgate rebuild`). Refuses when the SKU changed since the caller
-- looked, so a rebuild never overwrites a write it did not see.
--
-- KEYS: 1 SKU hash, 2 SKU holds, 3 SKU accounts, 4 partition due index,
--       5.. one reservation record per entry of `records`, in order
-- ARGV: 1 JSON document:
--   {expect = <version the caller saw, -1 when the SKU was absent>,
--    ver = <version to restore>, sku = <sku>,
--    locs = [{loc, oh, rs, ss, lt, bl}], policy = {max, open, close, ttl},
--    records = [{rid, loc, acct, qty, state, exp, bo, created, sid, ttl_ms}]}
-- Held records become holds again (an overdue one is expired, with its event,
-- by the next script that touches the SKU); held and confirmed records count
-- towards the account caps; a record is rewritten only when ttl_ms > 0.
-- Returns JSON: {outcome='ok', holds} | {outcome='changed', version}
-- Error replies: none on valid input.

local doc = cjson.decode(ARGV[1])
local current = redis.call('HGET', KEYS[1], 'ver')
local seen = current and tonumber(current) or -1
if seen ~= doc.expect then
  return cjson.encode({outcome = 'changed', version = seen})
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'ver', doc.ver)
for _, l in ipairs(doc.locs) do
  local p = 'l:' .. l.loc .. ':'
  redis.call('HSET', KEYS[1], p .. 'oh', l.oh, p .. 'rs', l.rs, p .. 'ss', l.ss,
    p .. 'lt', l.lt, p .. 'bo', l.bl)
end
for _, field in ipairs({'max', 'open', 'close', 'ttl'}) do
  local v = doc.policy[field]
  if type(v) == 'number' then redis.call('HSET', KEYS[1], field, v) end
end
local ctx = {sku = doc.sku, holds = KEYS[2], accounts = KEYS[3], due = KEYS[4]}
local holds = 0
for i, r in ipairs(doc.records) do
  local key = KEYS[4 + i]
  if r.ttl_ms > 0 then
    redis.call('DEL', key)
    redis.call('HSET', key, 'rid', r.rid, 'sku', doc.sku, 'loc', r.loc, 'acct', r.acct,
      'qty', r.qty, 'state', r.state, 'exp', r.exp, 'bo', r.bo, 'created', r.created,
      'sid', r.sid)
    redis.call('PEXPIRE', key, r.ttl_ms)
  end
  if r.state == 'held' then
    redis.call('ZADD', ctx.holds, r.exp, hold_member(r.rid, r.loc, r.qty, r.bo, r.acct))
    holds = holds + 1
  end
  if r.state == 'held' or r.state == 'confirmed' then account_add(ctx, r.acct, r.qty) end
end
refresh_due(ctx)
return cjson.encode({outcome = 'ok', holds = holds})
