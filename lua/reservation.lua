-- reservation: read one reservation with its derived status (a hold past its
-- deadline reads as expired), by Redis time like every other script. It
-- touches no SKU, so it does not follow the partition convention.
--
-- KEYS: 1 reservation record
-- ARGV: 1 account id ('' = any: the caller is an admin)
-- Returns packed text: ok|<reservation record, its state read as its status>
--   | not_found (a tombstone, prelude, reads as not_found).
-- Error replies: none.

local rec = load_record(KEYS[1])
if not rec or rec.state == VOID or (ARGV[1] ~= '' and rec.acct ~= ARGV[1]) then
  return 'not_found'
end
local t = redis.call('TIME')
return record_reply(rec, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
