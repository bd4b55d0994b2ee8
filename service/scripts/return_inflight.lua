-- Put a dead dispatcher's in-flight entries back at the head of the outbox, in their order, so
-- they go before anything that arrived since; none lost, none doubled.
-- KEYS[1]: the in-flight list; KEYS[2]: the outbox.
-- ARGV: none.
-- Returns how many entries were moved.

local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do n = n + 1 end
return n
