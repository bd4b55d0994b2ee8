-- Restart a delivery (manual retry, replay) only if no attempt is in flight and nobody saved it
-- since it was read: a concurrent attempt's save is never overwritten with a stale copy.
-- KEYS[1]: the delivery; KEYS[2]: the due set; KEYS[3]: the lease of its next attempt.
-- ARGV[1]: the delivery as read; ARGV[2]: as restarted; ARGV[3]: the log TTL, s;
--   ARGV[4]: its due score; ARGV[5]: its id.
-- Returns -1 if an attempt is in flight, 0 if it changed since it was read (nothing written),
--   1 if restarted.

local key, due, lease = KEYS[1], KEYS[2], KEYS[3]
local read, restarted, ttl, score, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('EXISTS', lease) == 1 then return -1 end
if redis.call('GET', key) ~= read then return 0 end
redis.call('SET', key, restarted, 'EX', ttl)
redis.call('ZADD', due, score, id)
return 1
