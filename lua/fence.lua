-- fence: mark one SKU fenced once Redis is found to lack writes the journal
-- has (a failover rolled them back), so that no script sells from the stale
-- state until restore rewrites it from the journal (see `fence` in prelude).
-- Checked against the journal's version here, atomically, so a SKU that is
-- in fact current is never fenced.
--
-- KEYS, ARGV: the partition convention (prelude) with one SKU, then ARGV 6
--   the SKU's version in the journal (integer >= 0), 7 now (ms since the
--   epoch, recorded as the fence's value)
-- Returns text: fenced|<version in Redis> (fenced now) |
--   already|<version in Redis> (fenced before, by this or another instance) |
--   current|<version in Redis> (as new as the journal or newer: nothing to
--   fence) | absent (Redis does not know the SKU: nothing can be sold from it)
-- Error replies: none on valid input.

local key = KEYS[3]
local state = redis.call('HMGET', key, 'ver', 'fence')
if not state[1] then return 'absent' end
local version = tonumber(state[1])
if state[2] then return 'already|' .. state[1] end
if version >= tonumber(ARGV[6]) then return 'current|' .. state[1] end
redis.call('HSET', key, 'fence', ARGV[7])
return 'fenced|' .. state[1]
