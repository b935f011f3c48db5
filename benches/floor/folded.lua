-- slim.lua with every per-hold write folded into per-call writes: the records
-- as fields of one hash (one HSET), the events as one stream entry (one
-- XADD); per hold only the account's HINCRBY remains.
local t = redis.call('TIME')
local now = t[1] .. string.sub(t[2] .. '000', 1, 3)
local c = redis.call('HMGET', KEYS[1], 'oh', 'rs', 'ver')
local oh, rs, ver = tonumber(c[1]), tonumber(c[2]) or 0, tonumber(c[3]) or 0
local exp = tostring(tonumber(now) + 600000)
local holds, out, evs, recs = {}, {}, {}, {}
for i = 2, #ARGV, 2 do
  local rid, acct = ARGV[i], ARGV[i + 1]
  if oh - rs >= 1 then
    rs = rs + 1; ver = ver + 1
    redis.call('HINCRBY', KEYS[3], acct, 1)
    local e = 'reserved|S|default|' .. ver .. '|' .. oh .. '|' .. rs .. '|' .. now .. '|' .. rid .. '|' .. acct .. '|1|' .. exp
    evs[#evs + 1] = e
    recs[#recs + 1] = rid; recs[#recs + 1] = e
    holds[#holds + 1] = exp; holds[#holds + 1] = rid
    out[#out + 1] = 'held'
  else out[#out + 1] = 'out' end
end
if #recs > 0 then
  redis.call('HSET', 'rec:{hot}:' .. string.sub(now, 1, 7), unpack(recs))
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], '*', 'e', table.concat(evs, '\n'))
  redis.call('ZADD', KEYS[2], unpack(holds))
end
redis.call('HSET', KEYS[1], 'rs', rs, 'ver', ver)
redis.call('SPUBLISH', 'stock:{hot}', 'S|' .. ver)
return out
