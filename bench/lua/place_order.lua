-- wrk script for `make bench-order`: POST /shopping/cart/checkout/entries (place_order) for many users.
--
-- Environment (read once per wrk thread):
--   BENCH_REQUESTS  file of requests, one per line: "<user id>\t<JSON body>" (bench/orderbench.py writes it;
--                   each body carries the expected_total the user was quoted, so every order is accepted)
--   BENCH_HOST      Host header value, e.g. 127.0.0.1:29230
--   BENCH_RUN       prefix of every Idempotency-Key of this wrk run (one per run: keys never repeat, so every
--                   request places a new order; orderbench.py counts the run's orders by this prefix)
--   BENCH_RATE      total request rate in req/s across all threads; 0 or unset = as fast as possible
--   BENCH_THREADS   wrk -t (to split BENCH_RATE between threads; default 1)
--   BENCH_SUMMARY   file the done() hook writes its JSON summary to (optional)
--
-- Requests cycle through the users in order; each carries X-User-Id, X-Platform: app and a fresh
-- Idempotency-Key "<BENCH_RUN>-<thread>-<n>". Pacing as in calc_price.lua: one schedule of send slots
-- 1/rate apart on the monotonic clock, taken by whichever connection is free (open loop).

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")
local function now_ms()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
   return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
end

local users, bodies = {}, {}
local n, i, sent = 0, 0, 0
local host, run = nil, nil
local period_ms = 0
local next_slot = nil

function init(args)
   local path = os.getenv("BENCH_REQUESTS") or error("BENCH_REQUESTS is not set")
   host = os.getenv("BENCH_HOST") or error("BENCH_HOST is not set")
   run = os.getenv("BENCH_RUN") or error("BENCH_RUN is not set")
   for line in io.lines(path) do
      local user, body = line:match("^(%d+)\t(.+)$")
      if user then
         users[#users + 1] = user
         bodies[#bodies + 1] = body
      end
   end
   n = #users
   if n == 0 then error("no requests in " .. path) end
   i = (thread_index or 0) % n
   local rate = tonumber(os.getenv("BENCH_RATE") or "0") or 0
   local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1") or 1
   if rate > 0 then
      period_ms = 1000 * nthreads / rate
   end
end

function request()
   i = i + 1
   if i > n then i = 1 end
   sent = sent + 1
   return wrk.format("POST", "/shopping/cart/checkout/entries", {
      ["Host"] = host,
      ["Content-Type"] = "application/json",
      ["X-User-Id"] = users[i],
      ["X-Platform"] = "app",
      ["Idempotency-Key"] = string.format("%s-%d-%d", run, thread_index or 0, sent),
   }, bodies[i])
end

if (tonumber(os.getenv("BENCH_RATE") or "0") or 0) > 0 then
   function delay()
      local now = now_ms()
      if next_slot == nil then next_slot = now end
      local slot = next_slot
      next_slot = next_slot + period_ms
      local wait = slot - now
      if wait <= 0 then return 0 end
      return math.floor(wait + 0.5)
   end
end

function done(summary, latency, requests_)
   local out = os.getenv("BENCH_SUMMARY")
   local secs = summary.duration / 1e6
   local e = summary.errors
   local line = string.format(
      '{"requests": %d, "duration_s": %.3f, "rate": %.1f, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_ms": {"min": %.3f, "mean": %.3f, "max": %.3f, "stdev": %.3f, ' ..
      '"p50": %.3f, "p90": %.3f, "p99": %.3f, "p999": %.3f}}',
      summary.requests, secs, summary.requests / secs, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min / 1000, latency.mean / 1000, latency.max / 1000, latency.stdev / 1000,
      latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency:percentile(99.9) / 1000)
   if out and out ~= "" then
      local f = assert(io.open(out, "w"))
      f:write(line, "\n")
      f:close()
   end
   io.write("summary: ", line, "\n")
end
