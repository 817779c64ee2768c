-- Durable single-key PUTs to distinct keys, for wrk:
--   wrk -t2 -c64 -d10s -s benches/wrk_put.lua https://127.0.0.1:18443 -- TOKEN
-- The optional TOKEN is sent as a bearer token (nodes with --auth). Each wrk
-- thread writes its own key range; keys never repeat within or across runs.
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  token = args[1]
  math.randomseed(os.time() + tid)
  run = math.random(1, 1000000000)
  n = 0
  body = string.rep("v", 100)
end

function request()
  n = n + 1
  local headers = {}
  if token then
    headers["Authorization"] = "Bearer " .. token
  end
  return wrk.format("PUT", "/kv/wrk-" .. run .. "-" .. tid .. "-" .. n, headers, body)
end
