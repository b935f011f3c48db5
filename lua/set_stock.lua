-- set_stock: set one location's counts (on hand, safety stock, low-stock
-- threshold, backorder limit), creating the SKU and the location if needed.
-- `reserved` is untouched; counts that would leave fewer holdable units than
-- are held are refused, so no admin write can oversell.
--
-- KEYS: 1 SKU hash, 2 SKU holds, 3 SKU accounts, 4 partition due index,
--       5 partition event stream, 6 operation record
-- ARGV: 1 location, 2 on hand (integer >= 0), 3 safety stock (>= 0),
--       4 low-stock threshold (>= 0), 5 backorder limit (>= 0),
--       6 expected version ('' = any), 7 lazy expiry batch, 8 stream max length,
--       9 stock channel, 10 operation record TTL (ms), 11 sku
-- Returns JSON {reply, events} (`encode` in the prelude), where reply is
--   {outcome='ok', sku=<SKU hash as a flat array>}
--   | version_mismatch {version} | insufficient_stock {available, reserved}
-- Error replies: none on valid input.

local done = replay_op(KEYS[6])
if done then return done end
local ctx = {sku = ARGV[11], holds = KEYS[2], accounts = KEYS[3], due = KEYS[4],
  events = KEYS[5], channel = ARGV[9], maxlen = ARGV[8], now = now_ms()}
local s = load_sku(KEYS[1]) or new_sku(KEYS[1])
local function reply(r) return op_reply(ctx, s, KEYS[6], ARGV[10], r) end
expire_overdue(ctx, s, tonumber(ARGV[7]))
if ARGV[6] ~= '' and tonumber(ARGV[6]) ~= s.ver then
  return reply({outcome = 'version_mismatch', version = s.ver})
end
local loc = ARGV[1]
local l = s.locs[loc] or add_loc(s, loc)
local oh, ss, lt, bo = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if oh - ss + bo < l.rs then
  return reply({outcome = 'insufficient_stock', available = available(l), reserved = l.rs})
end
local delta = oh - l.oh
l.oh, l.ss, l.lt, l.bo = oh, ss, lt, bo
commit(ctx, s, 'stock_set', loc, {'delta', delta})
return reply({outcome = 'ok', sku = redis.call('HGETALL', KEYS[1])})
