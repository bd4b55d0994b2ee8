-- Renew a lease only while it is still ours (it may have lapsed during a Redis outage and been
-- taken by another worker since, or been handed over in a write).
-- KEYS[1]: the lease.
-- ARGV[1]: our token; ARGV[2]: its new TTL, ms.
-- Returns 1 if renewed, 0 if it is no longer ours.

if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
