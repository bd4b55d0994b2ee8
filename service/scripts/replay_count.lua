-- Count a replay's batches down, and release its slot when none is left; only while the slot is
-- still this replay's (it may have expired and been taken by another).
-- KEYS[1]: the replay marker (a hash {id, left}).
-- ARGV[1]: the replay id; ARGV[2]: > 0, the replay has that many batches to run; 0, one batch ran.
-- Returns 1 if the marker was this replay's (counted, maybe released), 0 if not (nothing changed).

local id, batches = ARGV[1], tonumber(ARGV[2])
if redis.call('HGET', KEYS[1], 'id') ~= id then return 0 end
local left
if batches > 0 then
  left = batches
  redis.call('HSET', KEYS[1], 'left', left)
else
  left = redis.call('HINCRBY', KEYS[1], 'left', -1)
end
if left <= 0 then redis.call('DEL', KEYS[1]) end
return 1
