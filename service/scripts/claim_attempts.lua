-- Claim the next attempt of each delivery: a lease key per (delivery, attempt number), SET NX,
-- so no attempt is made twice; each one won moves its deadline in the due set past the lease.
-- KEYS[1]: the due set; KEYS[2..]: one attempt lease per delivery.
-- ARGV[1]: the lease TTL, s; ARGV[2]: the due score of won deliveries; ARGV[3..]: the delivery
--   ids, in the order of their leases.
-- Returns, per delivery in order, 1 if this caller won its attempt, 0 if it was taken.

local ttl, score = ARGV[1], ARGV[2]
local won, due = {}, {}
for i = 1, #KEYS - 1 do
  local lease, id = KEYS[i + 1], ARGV[i + 2]
  if redis.call('SET', lease, '1', 'NX', 'EX', ttl) then
    won[i] = 1
    due[#due + 1] = score
    due[#due + 1] = id
  else
    won[i] = 0
  end
end
-- Chunked: Lua's stack is finite.
for j = 1, #due, 2000 do redis.call('ZADD', KEYS[1], unpack(due, j, math.min(j + 1999, #due))) end
return won
