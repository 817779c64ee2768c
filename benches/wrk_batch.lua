-- Durable POST /kv batches of distinct keys, for wrk:
--   wrk -t2 -c32 -d10s -s benches/wrk_batch.lua http://127.0.0.1:8080 -- [TOKEN] [KEYS] [VALUE_BYTES]
-- Each request writes KEYS keys (default 100) of VALUE_BYTES bytes (default
-- 256); writes/s = requests/s × KEYS. TOKEN ("-" for none) is sent as a
-- bearer token. Keys never repeat within or across runs.
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  if args[1] and args[1] ~= "-" then
    token = args[1]
  end
  keys = tonumber(args[2] or "100")
  value = string.rep("v", tonumber(args[3] or "256"))
  math.randomseed(os.time() + tid)
  run = math.random(1, 1000000000)
  n = 0
end

function request()
  local parts = {}
  for i = 1, keys do
    n = n + 1
    parts[i] = '{"key":"wrkb-' .. run .. "-" .. tid .. "-" .. n .. '","value":"' .. value .. '"}'
  end
  local headers = { ["content-type"] = "application/json" }
  if token then
    headers["Authorization"] = "Bearer " .. token
  end
  return wrk.format("POST", "/kv", headers, '{"writes":[' .. table.concat(parts, ",") .. "]}")
end

