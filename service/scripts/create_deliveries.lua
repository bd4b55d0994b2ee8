-- Create a fan-out's deliveries if absent (SET NX on ids derived from event and target, so
-- creating them twice yields the same deliveries), with their due entries and index entries, in
-- one call (one command for the client to pack, however many deliveries).
-- KEYS[1]: the due set; then per delivery i, a record of 2 keys from KEYS[2i]:
--   the delivery's key, its subscription's delivery index ('' for none).
-- ARGV[1]: the log TTL, s; ARGV[2]: the due score of created deliveries; then per delivery i, a
--   record of 2 values from ARGV[2i + 1]: its id, its JSON.
-- Returns, per delivery in order, 1 if created, 0 if it existed (left as it was).

local ttl, score = ARGV[1], ARGV[2]
local created, due = {}, {}
for i = 1, (#KEYS - 1) / 2 do
  local key, index = KEYS[2 * i], KEYS[2 * i + 1]
  local id, json = ARGV[2 * i + 1], ARGV[2 * i + 2]
  if redis.call('SET', key, json, 'NX', 'EX', ttl) then
    created[i] = 1
    due[#due + 1] = score
    due[#due + 1] = id
  else
    created[i] = 0
  end
  if index ~= '' then
    redis.call('ZADD', index, 0, id)
    redis.call('EXPIRE', index, ttl)
  end
end
-- Chunked: Lua's stack is finite.
for j = 1, #due, 2000 do redis.call('ZADD', KEYS[1], unpack(due, j, math.min(j + 1999, #due))) end
return created
