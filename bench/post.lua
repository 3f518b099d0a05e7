-- wrk script for the benchmark: POST one JSON body, count the requests actually started ("sent",
-- which includes those cut off when the run ends) and print a machine-readable summary line.
--
-- Environment: BENCH_PATH, BENCH_BODY, BENCH_HEADERS ("name: value" lines),
-- BENCH_LIMIT (optional: stop after this many responses, touching BENCH_LIMIT_FILE so the
-- caller can end wrk, whose main thread otherwise sleeps for the whole -d), BENCH_DELAY_MS
-- (optional: each connection waits this long before each request, so the load is paced
-- rather than as fast as the server answers; latency is still timed from the sending).

local path = os.getenv("BENCH_PATH") or "/"
local body = os.getenv("BENCH_BODY") or "{}"
local header_text = os.getenv("BENCH_HEADERS") or ""
local limit = tonumber(os.getenv("BENCH_LIMIT") or "0") or 0
local limit_file = os.getenv("BENCH_LIMIT_FILE")
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0") or 0

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local req
sent = 0
responses = 0

function init(args)
   local headers = {["Content-Type"] = "application/json"}
   for line in string.gmatch(header_text, "[^\n]+") do
      local name, value = string.match(line, "^%s*([^:]+):%s*(.-)%s*$")
      if name then headers[name] = value end
   end
   req = wrk.format("POST", path, headers, body)
end

function request()
   sent = sent + 1
   return req
end

if delay_ms > 0 then
   function delay()
      return delay_ms
   end
end

if limit > 0 then
   function response(status, headers, body)
      responses = responses + 1
      if responses == limit then
         if limit_file then
            local f = io.open(limit_file, "w")
            if f then f:write("done"); f:close() end
         end
         wrk.thread:stop()
      end
   end
end

function done(summary, latency, requests)
   local total_sent = 0
   for _, t in ipairs(threads) do
      total_sent = total_sent + (t:get("sent") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"sent":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
      summary.requests, summary.duration, summary.bytes, total_sent,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean))
end
