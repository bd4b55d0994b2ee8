-- A task's transition, written only if the task still holds what was read: the task, its event,
-- its move between status indexes, its outbox entry, its entries in the live event logs, for a
-- finished task its retention TTL and its leaving the watchdog, and for a task that has just
-- succeeded its being due a stored copy; then any commands that commit with it (a job, a
-- watchdog entry). All of them or none, in one call: a writer that lost the race reads again and
-- decides again. The same writes service/cas.py's compare-and-set would make, named here instead
-- of spelled out with every call (the callback receiver's hot path). The live logs are written
-- here, not by a reader of the outbox, so a stream misses no event that was committed and sees
-- none that was not.
--
-- KEYS[1] the task, KEYS[2] its events, KEYS[3] the outbox, KEYS[4] the watchdog,
-- KEYS[5] the global event log, KEYS[6] the owner's event log (KEYS[5] again for no owner),
-- KEYS[7] the storage-due set,
-- KEYS[8..] (index left, index joined) pairs, one per index scope; none if the status stayed.
-- ARGV[1] the task as read, ARGV[2] the task as written, ARGV[3] the event, ARGV[4] the task id,
-- ARGV[5] the outbox entry, ARGV[6] seconds a finished task is kept ('': not finished),
-- ARGV[7] the owner ('': none), ARGV[8] the event id,
-- ARGV[9] the global log's cap, ARGV[10] the owner log's cap, ARGV[11] the owner log's TTL,
-- ARGV[12] when the task is due a storage try ('': it is not),
-- ARGV[13..] further commands as <argc> <arg>... (service/cas.py `spelled`).
-- Returns 1 if it wrote, 0 if the task had changed.
-- #include run_spelled

if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
for k = 8, #KEYS, 2 do
  redis.call('ZREM', KEYS[k], ARGV[4])
  redis.call('ZADD', KEYS[k + 1], 0, ARGV[4])
end
if ARGV[6] ~= '' then
  redis.call('ZREM', KEYS[4], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
redis.call('RPUSH', KEYS[3], ARGV[5])
if ARGV[12] ~= '' then
  redis.call('ZADD', KEYS[7], ARGV[12], ARGV[4])
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[9], '*', 'o', ARGV[7], 's', ARGV[4], 'i', ARGV[8])
if ARGV[7] ~= '' then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[10], '*', 's', ARGV[4], 'i', ARGV[8])
  redis.call('EXPIRE', KEYS[6], ARGV[11])
end
run_spelled(13)
return 1
