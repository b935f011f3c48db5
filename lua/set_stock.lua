-- set_stock: set one location's counts (on hand, safety stock, low-stock
-- threshold, backorder limit), creating the SKU and the location if needed.
-- `reserved` is untouched; counts that would leave fewer holdable units than
-- are held are refused, so no admin write can oversell.
--
-- KEYS: the partition convention (prelude) with one SKU, then 6 the
--   operation record
-- ARGV: the partition convention, then 6 location, 7 on hand (integer >= 0),
--   8 safety stock (>= 0), 9 low-stock threshold (>= 0), 10 backorder limit
--   (>= 0), 11 expected version ('' = any), 12 operation record TTL (ms),
--   13 actor (the operator's account id), 14 request id
-- Returns the partition convention's array with one item, whose reply is JSON:
--   {outcome='ok', sku=<SKU hash as a flat array>}
--   | version_mismatch {version} | insufficient_stock {available, reserved}
--   or the text sku_recovering (the SKU is fenced, prelude)
-- Error replies: none on valid input.

local done = replay_op(KEYS[6])
if done then return done end
local ctx = open_partition()
local s = sku_state(ctx, 1)
-- Refused without keeping the operation: a retry after the rebuild applies it.
if s.fenced then return {0, {FENCED}} end
local function reply(r) return op_reply(ctx, KEYS[6], ARGV[12], r) end
if ARGV[11] ~= '' and tonumber(ARGV[11]) ~= s.ver then
  return reply({outcome = 'version_mismatch', version = s.ver})
end
local loc = ARGV[6]
local l = s.locs[loc] or add_loc(s, loc)
local oh, ss, lt, bo = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
if oh - ss + bo < l.rs then
  return reply({outcome = 'insufficient_stock', available = available(l), reserved = l.rs})
end
local delta = oh - l.oh
l.oh, l.ss, l.lt, l.bo = oh, ss, lt, bo
commit(ctx, s, 'stock_set', loc, staff_tail(tostring(delta), nil, nil, ARGV[13], ARGV[14]),
  STAFF_LAYOUT)
return reply({outcome = 'ok', sku = flat_sku(s)})
