-- The side-by-side probe's hold (HMGET, HINCRBY, a 5-field HSET with PEXPIRE
-- of its record, a 5-pair XADD), applied once per reservation id in
-- ARGV[4..]: what batching alone saves on the probe's own work.
-- KEYS: 1 inventory hash (stock, reserved), 2 event stream.
-- ARGV: 1 qty, 2 record TTL (ms), 3 stream max length, 4.. reservation ids.
local qty = tonumber(ARGV[1])
local out = {}
for i = 4, #ARGV do
  local rid = ARGV[i]
  local v = redis.call('HMGET', KEYS[1], 'stock', 'reserved')
  local stock, reserved = tonumber(v[1]), tonumber(v[2]) or 0
  if stock - reserved < qty then
    out[#out + 1] = 0
  else
    local nr = redis.call('HINCRBY', KEYS[1], 'reserved', qty)
    local record = 'res:{hot}:' .. rid
    redis.call('HSET', record, 'sku', KEYS[1], 'qty', qty, 'user', 'u' .. i, 'id', rid, 'state', 'held')
    redis.call('PEXPIRE', record, ARGV[2])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'ev', 'reserved', 'res', rid,
      'sku', KEYS[1], 'qty', qty, 'user', 'u' .. i)
    out[#out + 1] = stock - nr
  end
end
return out
