-- wrk script for `make bench-price` / `make bench-shadow`: POST /shopping/cal_price/v4_4 for many users.
--
-- Environment (read once per wrk thread):
--   BENCH_REQUESTS  file of requests, one per line: "<user id>\t<JSON body>" (bench/pricebench.py writes it)
--   BENCH_HOST      Host header value, e.g. 127.0.0.1:29210 (wrk.format with a headers table adds none)
--   BENCH_RATE      total request rate in req/s across all threads; 0 or unset = as fast as possible
--   BENCH_THREADS   wrk -t (to split BENCH_RATE between threads; default 1)
--   BENCH_SUMMARY   file the done() hook writes its JSON summary to (optional)
--
-- Requests cycle through the users in order (thread i starts at user i), so every user's cart is
-- priced equally often. Each request carries X-User-Id: <user id>. Pacing and the summary: paced.lua.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local paced = dofile(here .. "paced.lua")

local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
end

local requests = {}
local n = 0
local i = 0

function init(args)
   local path = os.getenv("BENCH_REQUESTS") or error("BENCH_REQUESTS is not set")
   local host = os.getenv("BENCH_HOST") or error("BENCH_HOST is not set")
   for line in io.lines(path) do
      local user, body = line:match("^(%d+)\t(.+)$")
      if user then
         requests[#requests + 1] = wrk.format("POST", "/shopping/cal_price/v4_4", {
            ["Host"] = host,
            ["Content-Type"] = "application/json",
            ["X-User-Id"] = user,
         }, body)
      end
   end
   n = #requests
   if n == 0 then error("no requests in " .. path) end
   i = (thread_index or 0) % n
end

function request()
   i = i + 1
   if i > n then i = 1 end
   return requests[i]
end

if paced.period_ms() > 0 then
   delay = paced.delay_hook(paced.period_ms())
end

done = paced.done
