-- Durable single-key PUTs to distinct keys, for wrk:
--   wrk -t2 -c64 -d10s -s benches/wrk_put.lua http://127.0.0.1:8080
-- Each wrk thread writes its own key range; keys never repeat within a run.
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  math.randomseed(os.time() + tid)
  run = math.random(1, 1000000000)
  n = 0
  body = string.rep("v", 100)
end

function request()
  n = n + 1
  return wrk.format("PUT", "/kv/wrk-" .. run .. "-" .. tid .. "-" .. n, nil, body)
end
