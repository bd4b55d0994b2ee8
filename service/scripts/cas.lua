-- Compare-and-set: run the given commands only if the guarded key still holds what was read,
-- all of them or none (a task's transition with its events, indexes, watchdog, outbox entry and
-- jobs; a subscription change; the poll chain; the one pending confirmation).
-- KEYS[1]: the guarded key.
-- ARGV[1]: the value it must still hold ('' = it must not exist); ARGV[2..]: commands, spelled.
-- Returns 1 if it ran them, 0 if the key had changed (nothing ran).
-- #include run_spelled

if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
run_spelled(2)
return 1
