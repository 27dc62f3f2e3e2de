-- wrk script for bench/serving.py: POSTs the JSON body read from the file named after `--`, and prints one JSON
-- line of results (throughput, latency percentiles in microseconds, errors) when the run is done.
--
--   wrk -t1 -c16 -d20s -s bench/serving_wrk.lua http://127.0.0.1:8080/v2/models/rf/infer -- /tmp/body.json

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function init(args)
   local path = args[1]
   if path == nil then
      error("serving_wrk.lua: give the body file after --")
   end
   local fh = assert(io.open(path, "rb"))
   wrk.body = fh:read("*a")
   fh:close()
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '{"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
      '"max_us": %d, "mean_us": %.1f, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
      '"status_errors": %d, "timeouts": %d}\n',
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      e.connect, e.read, e.write, e.status, e.timeout))
end
