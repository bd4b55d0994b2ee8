-- Record attempted deliveries, their next deadlines, and whatever must commit with them (retry
-- jobs, failure-run deletes, the release of their outbox entries) in one atomic call: a crash
-- never records an attempt without its follow-up, nor the reverse.
-- A delivery not stored yet (a fan-out's first attempt) is written only if no other attempt was
-- recorded first (SET NX), and then joins its subscription's index.
-- KEYS[1]: the due set; then per delivery i, a record of 2 keys from KEYS[2i]:
--   the delivery's key, its subscription's delivery index ('' for none).
-- ARGV[1]: the log TTL, s; ARGV[2]: n, the number of deliveries; then per delivery i, a record
--   of 4 values from ARGV[4i - 1]: its id, its JSON, the due score of its next attempt ('' when
--   final), '1' if not stored yet (else '0'); then, from ARGV[4n + 3], commands spelled for
--   run_spelled.
-- Returns n.
-- #include run_spelled

local KEY_STRIDE, ARG_STRIDE, FIRST_ARG = 2, 4, 3
local ttl, n = ARGV[1], tonumber(ARGV[2])
local done, due = {}, {}
for i = 1, n do
  local k = KEY_STRIDE * i
  local key, index = KEYS[k], KEYS[k + 1]
  local a = FIRST_ARG + ARG_STRIDE * (i - 1)
  local id, json, score, first = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3] == '1'
  local wrote = true
  if first then
    wrote = redis.call('SET', key, json, 'NX', 'EX', ttl)
    if wrote and index ~= '' then
      redis.call('ZADD', index, 0, id)
      redis.call('EXPIRE', index, ttl)
    end
  else
    redis.call('SET', key, json, 'EX', ttl)
    if score == '' then done[#done + 1] = id end
  end
  if wrote and score ~= '' then
    due[#due + 1] = score
    due[#due + 1] = id
  end
end
-- Chunked: Lua's stack is finite.
for j = 1, #done, 1000 do redis.call('ZREM', KEYS[1], unpack(done, j, math.min(j + 999, #done))) end
for j = 1, #due, 2000 do redis.call('ZADD', KEYS[1], unpack(due, j, math.min(j + 1999, #due))) end
run_spelled(FIRST_ARG + ARG_STRIDE * n)
return n
