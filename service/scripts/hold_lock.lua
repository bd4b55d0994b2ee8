-- Take a lock if it is free, or refresh it if it is already ours (compare-and-refresh), never
-- someone else's.
-- KEYS[1]: the lock.
-- ARGV[1]: our holder name; ARGV[2]: its TTL, s.
-- Returns 1 if we hold it now, 0 if another holder has it.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) and 1 or 0
