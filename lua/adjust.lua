-- adjust: add a signed delta to one location's on-hand count (a receipt,
-- shrinkage, correction or return), refusing a delta that would leave fewer
-- holdable units than are held.
--
-- KEYS: 1 SKU hash, 2 SKU holds, 3 SKU accounts, 4 partition due index,
--       5 partition event stream, 6 operation record
-- ARGV: 1 location, 2 delta (non-zero integer), 3 reason, 4 reference ('' = none),
--       5 lazy expiry batch, 6 stream max length, 7 stock channel,
--       8 operation record TTL (ms), 9 sku
-- Returns JSON {reply, events} (`encode` in the prelude), where reply is
--   {outcome='ok', sku=<SKU hash as a flat array>}
--   | unknown_sku | unknown_location | insufficient_stock {available, reserved}
-- Error replies: none on valid input.

local done = replay_op(KEYS[6])
if done then return done end
local ctx = {sku = ARGV[9], holds = KEYS[2], accounts = KEYS[3], due = KEYS[4],
  events = KEYS[5], channel = ARGV[7], maxlen = ARGV[6], now = now_ms()}
local s = load_sku(KEYS[1])
if not s then return encode(ctx, {outcome = 'unknown_sku'}) end
local loc = ARGV[1]
local l = s.locs[loc]
if not l then return encode(ctx, {outcome = 'unknown_location'}) end
local function reply(r) return op_reply(ctx, s, KEYS[6], ARGV[8], r) end

expire_overdue(ctx, s, tonumber(ARGV[5]))
local delta = tonumber(ARGV[2])
if l.oh + delta - l.ss + l.bo < l.rs then
  return reply({outcome = 'insufficient_stock', available = available(l), reserved = l.rs})
end
l.oh = l.oh + delta
commit(ctx, s, 'adjusted', loc, {'delta', delta, 'reason', ARGV[3], 'ref', ARGV[4]})
return reply({outcome = 'ok', sku = redis.call('HGETALL', KEYS[1])})
