-- The least a flashgate hold writes, batched: per call HMGET of the counters,
-- one ZADD of the batch's holds, one HSET of the counters, one SPUBLISH; per
-- hold one HINCRBY of its account, one SET of a packed record (with PX) and
-- one XADD of one packed field. KEYS: sku hash, holds, accounts, stream.
local t = redis.call('TIME')
local now = t[1] .. string.sub(t[2] .. '000', 1, 3)
local c = redis.call('HMGET', KEYS[1], 'oh', 'rs', 'ver')
local oh, rs, ver = tonumber(c[1]), tonumber(c[2]) or 0, tonumber(c[3]) or 0
local exp = tostring(tonumber(now) + 600000)
local holds, out = {}, {}
for i = 2, #ARGV, 2 do
  local rid, acct = ARGV[i], ARGV[i + 1]
  if oh - rs >= 1 then
    rs = rs + 1; ver = ver + 1
    redis.call('HINCRBY', KEYS[3], acct, 1)
    local e = 'reserved|S|default|' .. ver .. '|' .. oh .. '|' .. rs .. '|' .. now .. '|' .. rid .. '|' .. acct .. '|1|' .. exp
    local id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], '*', 'e', e)
    redis.call('SET', 'rec:{hot}:' .. rid, e .. '|' .. id, 'PX', 700000)
    holds[#holds + 1] = exp; holds[#holds + 1] = rid
    out[#out + 1] = 'held|' .. id
  else out[#out + 1] = 'out' end
end
if #holds > 0 then redis.call('ZADD', KEYS[2], unpack(holds)) end
redis.call('HSET', KEYS[1], 'rs', rs, 'ver', ver)
redis.call('SPUBLISH', 'stock:{hot}', 'S|' .. ver)
return out
