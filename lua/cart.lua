-- cart: a cart's record, and its place in the due index a sweep reads to
-- take over carts whose gateway stopped driving them (src/service/carts.rs
-- has the protocol). The record lives in the cart's own partition, apart
-- from its lines; this script only moves it between statuses, atomically,
-- so that one driver (the placing request, a confirm, a release, or the
-- recovery sweep) wins each step. It touches no stock.
--
-- Record (a hash): acct, status, fp (the request's fingerprint), created
-- (ms), exp (ms, the cart's deadline once held), lines and failed (JSON the
-- gateway writes and reads; this script never parses them).
--
-- KEYS: 1 the cart record, 2 the cart partition's due index (sorted set:
--   cart id -> ms since the epoch when a sweep may take the cart over)
-- ARGV: 1 action, 2 cart id, 3 account id ('' = any: the sweep), then
--   open: 4 record TTL (ms), 5 due (ms from now), then field/value pairs of
--     the new record (status among them)
--   move: 4 statuses it may leave (comma-separated), 5 status to enter,
--     6 record TTL (ms), 7 due (ms from now; '' = out of the due index),
--     8 refuse with too_late when fewer ms than this remain before exp
--     ('' = never), then field/value pairs to set
--   read: nothing more
--   forget: takes the cart out of the due index (a sweep has finished it)
-- Returns an array: the outcome, then the record's field/value pairs as
--   they are after the call:
--   open: created | exists;  read: ok | not_found (no pairs);  forget: ok
--   move: ok (moved, or already in the status to enter) | conflict (in
--     another status) | too_late (held past, or too near, its deadline) |
--     not_found
-- Error replies: none on valid input.

local record, due = KEYS[1], KEYS[2]
local action, id, account = ARGV[1], ARGV[2], ARGV[3]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function answer(outcome)
  local out = {outcome}
  local flat = redis.call('HGETALL', record)
  for i = 1, #flat do out[i + 1] = flat[i] end
  return out
end

-- The owner's record, or nil (another account's reads as absent).
local function status_of()
  local status, acct = unpack(redis.call('HMGET', record, 'status', 'acct'))
  if not status or (account ~= '' and acct ~= account) then return nil end
  return status
end

local function set_due(now, ms)
  if ms == '' then
    redis.call('ZREM', due, id)
  else
    redis.call('ZADD', due, now + tonumber(ms), id)
  end
end

if action == 'open' then
  if redis.call('EXISTS', record) == 1 then return answer('exists') end
  redis.call('HSET', record, unpack(ARGV, 6))
  redis.call('PEXPIRE', record, ARGV[4])
  set_due(now_ms(), ARGV[5])
  return answer('created')
end

if action == 'forget' then
  redis.call('ZREM', due, id)
  return {'ok'}
end

if action == 'read' then
  if not status_of() then return {'not_found'} end
  return answer('ok')
end

-- move
local status = status_of()
if not status then return {'not_found'} end
local to = ARGV[5]
if status == to then return answer('ok') end
local allowed = false
for from in string.gmatch(ARGV[4], '[^,]+') do
  if from == status then allowed = true end
end
if not allowed then return answer('conflict') end
local now = now_ms()
if ARGV[8] ~= '' then
  local exp = tonumber(redis.call('HGET', record, 'exp') or '0')
  if exp - now < tonumber(ARGV[8]) then return answer('too_late') end
end
if #ARGV >= 9 then redis.call('HSET', record, unpack(ARGV, 9)) end
redis.call('HSET', record, 'status', to)
redis.call('PEXPIRE', record, ARGV[6])
set_due(now, ARGV[7])
return answer('ok')
