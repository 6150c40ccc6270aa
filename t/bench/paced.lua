-- wrk script for t/bench/run.sh: GETs the URL given to wrk, each
-- connection waiting BENCH_DELAY_MS (default 10) ms before each request,
-- for a steady load of about connections * 1000 / BENCH_DELAY_MS
-- requests per second that leaves the CPU mostly idle, so that the
-- latency percentiles show stalls of the event loop rather than queueing.

local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "") or 10

function delay()
  return delay_ms
end
