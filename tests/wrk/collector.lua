-- wrk script for the collector's load test (tests/integration/test_collector_load.py):
-- POST /v1/events, each request a JSON array of BATCH view events with unique event ids
-- (thread, request, position), visitors spread over many keys, so every request is split
-- over the topic's partitions. Prints one line "RESULT {json}" at the end.
local batch = tonumber(os.getenv("RIPPLE_WRK_BATCH") or "100")
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  counter = 0
  accepted = 0
  refused = 0
  ts = string.format("%.0f", os.time() * 1000)
end

function request()
  counter = counter + 1
  local parts = {}
  for i = 1, batch do
    parts[i] = '{"type":"view","event_id":"w' .. id .. "-" .. counter .. "-" .. i .. '","ts":' .. ts ..
      ',"creator_id":"cr-' .. (i % 50) .. '","content_id":"p-' .. i .. '","visitor_id":"vis-' ..
      ((counter * batch + i) % 10007) .. '"}'
  end
  return wrk.format(nil, nil, nil, "[" .. table.concat(parts, ",") .. "]")
end

function response(status, headers, body)
  if status == 202 then
    accepted = accepted + (tonumber(string.match(body, '"accepted":(%d+)')) or 0)
  else
    refused = refused + 1
  end
end

function done(summary, latency, requests)
  local ok, bad = 0, 0
  for _, thread in ipairs(threads) do
    ok = ok + thread:get("accepted")
    bad = bad + thread:get("refused")
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"accepted":%d,"not_202":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.0f}}\n',
    summary.requests, summary.duration, summary.bytes, ok, bad,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
