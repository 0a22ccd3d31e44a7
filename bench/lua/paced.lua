-- Shared by the wrk scripts of bench-price, bench-shadow and bench-order (loaded with dofile from the
-- script's own folder): the open-loop pacing and the JSON summary their done() hooks write.
--
-- Pacing (BENCH_RATE > 0): wrk has no rate option, but calls delay() before every request and waits
-- that many milliseconds. Each thread keeps one schedule of send slots, 1/rate apart, on the
-- monotonic clock (LuaJIT ffi → clock_gettime); a connection that becomes free takes the next slot
-- and waits until it. Slots do not depend on response times, so the offered load is an open-loop
-- rate as long as a connection is free when a slot comes (use more connections than
-- rate × p99 needs); if all are busy the slot is taken late and the schedule catches up, i.e.
-- queueing in the server would show up as a lower achieved rate, not as extra latency in the
-- reported figures (wrk times each request from its write to the last byte of its response).
-- wrk timers have 1 ms resolution, so a request leaves within ~1 ms of its slot.

local ffi = require("ffi")
pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")

local M = {}

function M.now_ms()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
   return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

-- The rate this thread should send at (BENCH_RATE split over BENCH_THREADS), as ms between slots; 0 = unpaced.
function M.period_ms()
   local rate = tonumber(os.getenv("BENCH_RATE") or "0") or 0
   local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1") or 1
   if rate > 0 then return 1000 * nthreads / rate end
   return 0
end

-- A delay() hook for wrk keeping one schedule of slots `period_ms` apart.
function M.delay_hook(period_ms)
   local next_slot = nil
   return function()
      local now = M.now_ms()
      if next_slot == nil then next_slot = now end
      local slot = next_slot
      next_slot = next_slot + period_ms
      local wait = slot - now
      if wait <= 0 then return 0 end
      return math.floor(wait + 0.5)
   end
end

-- The done() hook: one JSON line of counts and latency percentiles (ms) to BENCH_SUMMARY and stdout.
function M.done(summary, latency, requests_)
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

return M
