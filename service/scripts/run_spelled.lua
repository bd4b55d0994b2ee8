-- Included (`-- #include run_spelled`) by scripts whose ARGV ends with commands spelled out by
-- `service.cas.spelled`: per command, its argument count, then the command and its arguments.
-- run_spelled(i) runs them in order, from ARGV[i] to the end of ARGV. Returns nothing.
local function run_spelled(i)
  while i <= #ARGV do
    local argc = tonumber(ARGV[i])
    redis.call(unpack(ARGV, i + 1, i + argc))
    i = i + argc + 1
  end
end
