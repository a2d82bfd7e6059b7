-- wrk script for bench/load_bench.py.
-- Argument (after wrk's `--`): the file whose bytes to POST as JSON; none or "" for a plain GET. A file of
-- several lines holds one JSON body per line, POSTed in turn (compact JSON has no raw newlines).
-- When wrk is done, one line starting with "LOAD " carries the figures as JSON for the Python side,
-- with the latency distribution as 1000 quantiles (each standing for 0.1% of the requests), so that
-- several runs can be pooled.

local bodies, next_body = {}, 0

function init(args)
  if args[1] and args[1] ~= "" then
    local file = assert(io.open(args[1], "rb"))
    wrk.method = "POST"
    wrk.body = file:read("*a")
    wrk.headers["Content-Type"] = "application/json"
    file:close()
    for line in wrk.body:gmatch("[^\n]+") do
      bodies[#bodies + 1] = line
    end
  end
  if #bodies > 1 then  -- defined only then: wrk builds a request per call only when `request` exists
    request = function()
      next_body = next_body % #bodies + 1
      return wrk.format(nil, nil, nil, bodies[next_body])
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local quantiles = {}
  for i = 1, 1000 do
    quantiles[i] = string.format("%d", latency:percentile((i - 0.5) / 10))
  end
  io.write(string.format(
    'LOAD {"requests": %d, "seconds": %.6f, "socket_errors": %d, "http_errors": %d, "quantiles_us": [%s]}\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout, e.status,
    table.concat(quantiles, ",")))
end
