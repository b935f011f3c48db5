-- room: a SKU's waiting room, inventory-aware. Takes a ticket (one per
-- account), or reads one; either way first admits what may be admitted now:
--   - admissions past their deadline expire (their tickets read `expired`);
--   - nothing before the sale opens;
--   - then up to the token bucket's whole tokens (`admit_per_second`, a
--     burst of one second's worth), never more outstanding admissions than
--     units the SKU can still hold, in ticket order.
-- Ticket order: a ticket taken before the sale opens gets a random place
-- among those (the gateway draws it), all ahead of every ticket taken after
-- it, which queue first come first served. A waiting ticket reads
-- `sold_out` while the SKU has nothing holdable and no hold that could
-- come back; admission resumes when units do. The reserve script consumes
-- an admission (lua/reserve.lua).
--
-- KEYS: the partition convention (prelude) with one SKU, then 6 the queue
--   (sorted set: ticket -> order), 7 the tickets (hash: ticket ->
--   `acct|state|order|admission deadline ms`; state `waiting`, `admitted`,
--   `used` or `expired`), 8 the accounts (hash: account -> ticket), 9 the
--   outstanding admissions (sorted set: ticket -> deadline ms), 10 the token
--   bucket (hash: tokens, at, seq)
-- ARGV: the partition convention (n = 1), then 6 action ('take' | 'read'),
--   7 account id, 8 ticket id (take: the new ticket's, used unless the
--   account has one; read: the ticket asked for), 9 random order for a
--   ticket taken before the sale opens (integer in [0, 1e12))
-- Returns the partition convention's array with one packed reply:
--   ticket|<ticket>|<status>|<position or admission deadline ms>|<admit per
--   second> | not_found | no_room (the SKU has no waiting room) |
--   unknown_sku | sku_recovering (fenced, prelude)
--   status: waiting (with its 1-based position), admitted (with the
--   admission's deadline; `used` once a reservation used it), expired,
--   sold_out.
-- Error replies: none on valid input.

local ctx = open_partition()
local a = ctx.arg
local queue, tickets, accounts, admissions, bucket = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local action, account, ticket, draw = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
-- Tickets taken after the sale opens queue behind every earlier one.
local AFTER_OPENING = 1e12

-- Admissions past their deadline end; their tickets read expired.
local function expire_admissions()
  local gone = redis.call('ZRANGEBYSCORE', admissions, '-inf', ctx.now)
  for _, id in ipairs(gone) do
    local v = redis.call('HGET', tickets, id)
    if v then
      local t = decode_ticket(v)
      if t.state == 'admitted' then
        t.state = 'expired'
        redis.call('HSET', tickets, id, encode_ticket(t))
      end
    end
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', admissions, '-inf', ctx.now) end
end

local function admit(s, rate, ttl_s)
  expire_admissions()
  if s.policy.open and ctx.now < s.policy.open then return end
  local state = redis.call('HMGET', bucket, 'tokens', 'at')
  local tokens, at = tonumber(state[1]), tonumber(state[2])
  if not tokens then tokens, at = rate, ctx.now end
  tokens = math.min(rate, tokens + (ctx.now - at) * rate / 1000)
  local _, holdable = totals(s)
  local room = holdable - redis.call('ZCARD', admissions)
  local n = math.min(math.floor(tokens), room)
  if n > 0 then
    local next_ones = redis.call('ZPOPMIN', queue, n)
    local deadline = ctx.now + ttl_s * 1000
    for i = 1, #next_ones, 2 do
      local id = next_ones[i]
      local t = decode_ticket(redis.call('HGET', tickets, id))
      t.state, t.deadline = 'admitted', int_text(deadline)
      redis.call('HSET', tickets, id, encode_ticket(t))
      redis.call('ZADD', admissions, deadline, id)
      tokens = tokens - 1
    end
  end
  redis.call('HSET', bucket, 'tokens', tostring(tokens), 'at', ctx.now_s)
end

local function status(s, id, t, rate)
  if t.state == 'admitted' or t.state == 'used' then
    return 'ticket|' .. id .. '|' .. t.state .. '|' .. t.deadline .. '|' .. rate
  end
  if t.state == 'expired' then return 'ticket|' .. id .. '|expired||' .. rate end
  local _, holdable = totals(s)
  if holdable <= 0 and redis.call('ZCARD', s.holds) == 0 then
    return 'ticket|' .. id .. '|sold_out||' .. rate
  end
  local rank = redis.call('ZRANK', queue, id)
  return 'ticket|' .. id .. '|waiting|' .. (rank and rank + 1 or '') .. '|' .. rate
end

local function run()
  local s = sku_state(ctx, 1)
  if s.fenced then return FENCED end
  if not s.exists then return 'unknown_sku' end
  local rate, ttl_s = s.policy.wra, s.policy.wrt
  if not rate or not ttl_s then return 'no_room' end
  if action == 'take' then
    local mine = redis.call('HGET', accounts, account)
    if mine then
      ticket = mine
    else
      local order
      if s.policy.open and ctx.now < s.policy.open then
        order = draw
      else
        order = int_text(AFTER_OPENING + redis.call('HINCRBY', bucket, 'seq', 1))
      end
      redis.call('HSET', tickets, ticket, encode_ticket({acct = account, state = 'waiting',
        order = order, deadline = ''}))
      redis.call('HSET', accounts, account, ticket)
      redis.call('ZADD', queue, order, ticket)
    end
  end
  local v = redis.call('HGET', tickets, ticket)
  if not v then return 'not_found' end
  local t = decode_ticket(v)
  if t.acct ~= account then return 'not_found' end
  admit(s, rate, ttl_s)
  return status(s, ticket, decode_ticket(redis.call('HGET', tickets, ticket)), int_text(rate))
end

return run_requests(ctx, 1, run)
