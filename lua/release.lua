-- release: give the caller's live hold back (reserved and the account's count
-- drop by its quantity). Releasing again answers the same 200; a confirmed or
-- expired reservation answers reservation_confirmed / reservation_expired.
--
-- KEYS, ARGV and the reply: see `settle` in prelude.lua.
-- Error replies: none on valid input.
return settle('released')
