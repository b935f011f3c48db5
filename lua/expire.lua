-- expire: give back one SKU's overdue holds, at most a batch per call (the
-- sweeper calls it for the SKUs the partition's due index names).
--
-- KEYS, ARGV: the partition convention (prelude) with one SKU; nothing more.
-- Returns the partition convention's array with one item, whose reply is the
--   number of holds expired (as text).
-- Error replies: none.

local ctx = open_partition()
return run_requests(ctx, 1, function()
  -- Reading the SKU expires one batch of its overdue holds.
  local s = sku_state(ctx, 1)
  -- A fenced SKU keeps its holds until restore rewrites them.
  if s.fenced then return '0' end
  -- Refresh the due index even when nothing was due: it may name a SKU
  -- whose holds all ended another way.
  s.holds_changed = true
  return tostring((#ctx.ev - 1) / 2)
end)
