-- confirm: turn the caller's live hold into a sale (on hand and reserved both
-- drop by its quantity). Confirming again answers the same 200; a released or
-- expired reservation answers reservation_released / reservation_expired.
--
-- KEYS, ARGV and the reply: see `settle` in prelude.lua.
-- Error replies: none on valid input.
return settle('confirmed')
