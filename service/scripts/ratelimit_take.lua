-- A sliding-window rate limit: trim the log to the window, count, and record this use only when
-- under the limit, with Redis' own clock, so concurrent web processes cannot both take the last
-- slot and skewed clocks share one window.
-- KEYS[1]: the log (a sorted set of use times, in ms).
-- ARGV[1]: the limit; ARGV[2]: the window, ms; ARGV[3]: a unique member for this use.
-- Returns {1, 0} with the use recorded, or {0, ms until the oldest use leaves the window}.

local limit, window, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2]) + window - now}
end
redis.call('ZADD', KEYS[1], now, member)
redis.call('PEXPIRE', KEYS[1], window)
return {1, 0}
