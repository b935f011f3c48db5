-- rate_limit: one step of a rate limit shared by every gateway instance.
--
-- GCRA (generic cell rate algorithm): the key holds the theoretical arrival
-- time (TAT) of the next request, in microseconds since the epoch. A request
-- is allowed when, after it, TAT is at most `burst` intervals ahead of now;
-- it then moves TAT on by one interval. The key expires once the budget is
-- full again, so idle accounts cost no memory. Time is Redis's own (TIME),
-- the same for every instance.
--
-- KEYS:
--   1 the limited key (string holding the TAT; absent = full budget)
-- ARGV:
--   1 emission interval (integer microseconds >= 1: 1e6 / per_second)
--   2 burst (integer >= 1)
-- Returns {allowed (1 or 0), remaining (integer >= 0),
--          retry_after_us (0 when allowed), reset_us (until the budget is full)}
-- Error replies: none on valid input.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
local window = burst * interval
if ahead > window then
  return {0, 0, ahead - window, tat - now}
end
-- %.0f: tostring() would print microseconds since the epoch in exponent form.
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000) + 1)
return {1, math.floor((window - ahead) / interval), 0, ahead}
