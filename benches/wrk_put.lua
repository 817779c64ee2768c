-- Durable single-key PUTs to distinct keys, for wrk:
--   wrk -t2 -c64 -d10s -s benches/wrk_put.lua https://127.0.0.1:18443 -- TOKEN
-- The optional TOKEN is sent as a bearer token (nodes with --auth).
local made = 0
function setup(thread)
  made = made + 1
  thread:set("tid", made)
end

function init(args)
  token = args[1]
  n = 0
  body = string.rep("v", 100)
end

function request()
  n = n + 1
  local headers = {}
  if token then
    headers["Authorization"] = "Bearer " .. token
  end
  return wrk.format("PUT", "/kv/wrk/" .. os.time() .. "/" .. tid .. "/" .. n, headers, body)
end
