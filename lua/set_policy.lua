-- set_policy: set or clear a SKU's sale policy, creating the SKU if needed.
-- Policy changes do not move stock, so they bump no version and emit no event.
--
-- KEYS, ARGV: the partition convention (prelude) with one SKU, then ARGV
--   6 max per account, 7 sale opens at (ms since the epoch), 8 sale closes
--   at (ms), 9 hold TTL (seconds); each one of '' (leave as is), '-' (clear)
--   or an integer; 10 seller: '' (leave as is), '-' (clear) or '=' followed
--   by the seller; 11 waiting room admissions per second, 12 admission TTL
--   (seconds), like 6-9
-- Returns JSON: {outcome='ok', max, open, close, ttl, wra, wrt, seller, ver, bk} (cleared
--   fields absent; ver: the SKU's version, which a policy change keeps)
--   or the text sku_recovering (the SKU is fenced, prelude)
-- Error replies: none on valid input.

local key = KEYS[3]
if redis.call('HEXISTS', key, 'fence') == 1 then return FENCED end
-- The numeric fields and the ARGV each comes in.
local fields = {'max', 'open', 'close', 'ttl', 'wra', 'wrt'}
local at = {6, 7, 8, 9, 11, 12}
for i, field in ipairs(fields) do
  local v = ARGV[at[i]]
  if v == '-' then
    redis.call('HDEL', key, field)
  elseif v ~= '' then
    redis.call('HSET', key, field, v)
  end
end
local seller = ARGV[10]
if seller == '-' then
  redis.call('HDEL', key, 'seller')
elseif seller ~= '' then
  redis.call('HSET', key, 'seller', string.sub(seller, 2))
end
if redis.call('HEXISTS', key, 'ver') == 0 then redis.call('HSET', key, 'ver', 0) end
local reply = {outcome = 'ok'}
local values = redis.call('HMGET', key, unpack(fields))
for i, field in ipairs(fields) do
  if values[i] then reply[field] = tonumber(values[i]) end
end
local now = redis.call('HMGET', key, 'seller', 'ver', 'bk')
reply.seller = now[1] or nil
reply.ver = tonumber(now[2])
reply.bk = now[3] or nil
return cjson.encode(reply)
