-- set_policy: set or clear a SKU's sale policy, creating the SKU if needed.
-- Policy changes do not move stock, so they bump no version and emit no event.
--
-- KEYS: 1 SKU hash
-- ARGV: 1 max per account, 2 sale opens at (ms since the epoch),
--       3 sale closes at (ms), 4 hold TTL (seconds); each one of
--       '' (leave as is), '-' (clear) or an integer
-- Returns JSON: {outcome='ok', max, open, close, ttl} (cleared fields absent)
-- Error replies: none on valid input.

local fields = {'max', 'open', 'close', 'ttl'}
for i, field in ipairs(fields) do
  local v = ARGV[i]
  if v == '-' then
    redis.call('HDEL', KEYS[1], field)
  elseif v ~= '' then
    redis.call('HSET', KEYS[1], field, v)
  end
end
if redis.call('HEXISTS', KEYS[1], 'ver') == 0 then redis.call('HSET', KEYS[1], 'ver', 0) end
local reply = {outcome = 'ok'}
local values = redis.call('HMGET', KEYS[1], unpack(fields))
for i, field in ipairs(fields) do
  if values[i] then reply[field] = tonumber(values[i]) end
end
return cjson.encode(reply)
