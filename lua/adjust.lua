-- adjust: add a signed delta to one location's on-hand count (a receipt,
-- shrinkage, correction or return), refusing a delta that would leave fewer
-- holdable units than are held.
--
-- KEYS: the partition convention (prelude) with one SKU, then 6 the
--   operation record
-- ARGV: the partition convention, then 6 location, 7 delta (non-zero
--   integer), 8 reason, 9 reference ('' = none), 10 operation record TTL (ms),
--   11 actor (the operator's account id), 12 request id
-- Returns the partition convention's array with one item, whose reply is JSON:
--   {outcome='ok', sku=<SKU hash as a flat array>}
--   | unknown_sku | unknown_location | insufficient_stock {available, reserved}
--   or the text sku_recovering (the SKU is fenced, prelude)
-- Error replies: none on valid input.

local done = replay_op(KEYS[6])
if done then return done end
local ctx = open_partition()
local s = sku_state(ctx, 1)
-- Refused without keeping the operation: a retry after the rebuild applies it.
if s.fenced then return {0, {FENCED}} end
local function reply(r) return op_reply(ctx, KEYS[6], ARGV[10], r) end
if not s.exists then return reply({outcome = 'unknown_sku'}) end
local loc = ARGV[6]
local l = s.locs[loc]
if not l then return reply({outcome = 'unknown_location'}) end
local delta = tonumber(ARGV[7])
if l.oh + delta - l.ss + l.bo < l.rs then
  return reply({outcome = 'insufficient_stock', available = available(l), reserved = l.rs})
end
l.oh = l.oh + delta
commit(ctx, s, 'adjusted', loc, staff_tail(ARGV[7], ARGV[8], ARGV[9], ARGV[11], ARGV[12]),
  STAFF_LAYOUT)
return reply({outcome = 'ok', sku = flat_sku(s)})
