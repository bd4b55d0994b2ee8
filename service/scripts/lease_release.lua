-- Release a lease only while it is still ours (see lease_renew.lua).
-- KEYS[1]: the lease.
-- ARGV[1]: our token.
-- Returns 1 if released, 0 if it was no longer ours.

if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
