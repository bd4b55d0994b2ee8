-- Move up to ARGV[1] entries from the head of the outbox to the tail of a dispatcher's in-flight
-- list, in order: each entry is in exactly one of the two lists at any moment.
-- KEYS[1]: the outbox; KEYS[2]: the in-flight list.
-- ARGV[1]: the most entries to move.
-- Returns the entries moved, in order (empty when the outbox was empty).

local taken = {}
for i = 1, tonumber(ARGV[1]) do
  local entry = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not entry then break end
  taken[i] = entry
end
return taken
