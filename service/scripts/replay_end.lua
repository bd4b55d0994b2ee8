-- Give a replay's slot up, only while it is still this replay's.
-- KEYS[1]: the replay marker (a hash {id, left}).
-- ARGV[1]: the replay id.
-- Returns 1 if the slot was released, 0 if it was not this replay's.

if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
