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
-- Idempotency-Key "<BENCH_RUN>-<thread>-<n>". Pacing and the summary: paced.lua.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local paced = dofile(here .. "paced.lua")

local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
end

local users, bodies = {}, {}
local n, i, sent = 0, 0, 0
local host, run = nil, nil

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

if paced.period_ms() > 0 then
   delay = paced.delay_hook(paced.period_ms())
end

done = paced.done
