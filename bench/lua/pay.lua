-- wrk script for `make bench-pay`: one POST per line of a request file, each line used once.
--
-- Environment (read once per wrk thread):
--   BENCH_REQUESTS  file of requests, one per line: "<path>\t<user id or ->\t<JSON body>" (bench/paybench.py
--                   writes it: adyen_pay of one payable order per line, or one signed webhook body per line)
--   BENCH_HOST      Host header value, e.g. 127.0.0.1:29330
--   BENCH_RATE      total request rate in req/s across all threads; 0 or unset = as fast as possible
--   BENCH_THREADS   wrk -t (to split BENCH_RATE between threads; default 1)
--   BENCH_SUMMARY   file the done() hook writes its JSON summary to (optional)
--
-- Lines are taken in order. A line is never sent twice unless the file runs out (then it starts again:
-- a paid order answers 409, so paybench.py sizes the files to the run and reports any such answer).
-- Pacing and the summary: paced.lua.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local paced = dofile(here .. "paced.lua")

local paths, users, bodies = {}, {}, {}
local n, i = 0, 0
local host = nil

function init(args)
   local path = os.getenv("BENCH_REQUESTS") or error("BENCH_REQUESTS is not set")
   host = os.getenv("BENCH_HOST") or error("BENCH_HOST is not set")
   for line in io.lines(path) do
      local p, user, body = line:match("^([^\t]+)\t([^\t]+)\t(.+)$")
      if p then
         paths[#paths + 1] = p
         users[#users + 1] = user
         bodies[#bodies + 1] = body
      end
   end
   n = #paths
   if n == 0 then error("no requests in " .. path) end
end

function request()
   i = i + 1
   if i > n then i = 1 end
   local headers = {["Host"] = host, ["Content-Type"] = "application/json", ["X-Platform"] = "app"}
   if users[i] ~= "-" then headers["X-User-Id"] = users[i] end
   return wrk.format("POST", paths[i], headers, bodies[i])
end

if paced.period_ms() > 0 then
   delay = paced.delay_hook(paced.period_ms())
end

done = paced.done
