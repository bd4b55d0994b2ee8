-- Take a subscription's replay slot if no replay is pending: one at a time per subscription.
-- KEYS[1]: the replay marker (a hash {id, left}).
-- ARGV[1]: the replay id; ARGV[2]: the marker's expiry, s.
-- Returns 1 if this replay now holds the slot, 0 if another one is pending.

if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'left', -1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
