-- wrk script: replay prepared callbacks (one "path<TAB>body" per line), each thread its own share.
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  local file, nthreads = args[1], tonumber(args[2])
  reqs, idx = {}, 0
  local i = 0
  for line in io.lines(file) do
    if i % nthreads == tid then
      local path, body = line:match("([^\t]+)\t(.*)")
      reqs[#reqs + 1] = wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
    end
    i = i + 1
  end
end

function request()
  idx = idx % #reqs + 1
  return reqs[idx]
end
