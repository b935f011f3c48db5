-- expire: give back one SKU's overdue holds, at most a batch per call (the
-- sweeper calls it for the SKUs the partition's due index names).
--
-- KEYS: 1 SKU hash, 2 SKU holds, 3 SKU accounts, 4 partition due index,
--       5 partition event stream
-- ARGV: 1 batch (integer >= 1), 2 stream max length, 3 stock channel, 4 sku
-- Returns JSON {reply = {expired = <n>}, events} (`encode` in the prelude).
-- Error replies: none.

local ctx = {sku = ARGV[4], holds = KEYS[2], accounts = KEYS[3], due = KEYS[4],
  events = KEYS[5], channel = ARGV[3], maxlen = ARGV[2], now = now_ms()}
local s = load_sku(KEYS[1]) or new_sku(KEYS[1])
local n = expire_overdue(ctx, s, tonumber(ARGV[1]))
ctx.holds_changed = true
finish(ctx, s)
return encode(ctx, {expired = n})
