-- wrk script for rkms benchmarks. Environment:
--   BENCH_MODE = "fixed" | "existing" | "new"
--   BENCH_IDS  = how many existing ids to pick from ("existing")
--   BENCH_DELAY_MS = pause per request per connection (0 = closed loop)
-- Prints one machine-readable RESULT line at the end.

local mode = os.getenv("BENCH_MODE") or "fixed"
local ids = tonumber(os.getenv("BENCH_IDS") or "1000")
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local threads = {}
local counter = 0

function setup(thread)
  -- Each thread gets its own id prefix and random seed; with a shared seed
  -- the threads would ask for the same ids in lockstep, and rkms's
  -- single-flight would merge their requests.
  thread:set("tag", "t" .. #threads .. "-" .. tostring(math.random(1, 1000000000)))
  thread:set("seed", #threads * 7919 + math.random(1, 1000000))
  table.insert(threads, thread)
end

function init(args)
  tag = tag or "t"
  math.randomseed(os.time() + (seed or 0))
end

function request()
  if mode == "existing" then
    return wrk.format("GET", "/key?id=bench%2F" .. math.random(0, ids - 1))
  elseif mode == "new" then
    counter = counter + 1
    return wrk.format("GET", "/key?id=new%2F" .. tag .. "%2F" .. counter)
  end
  return wrk.format("GET", "/key?id=bench%2F1")
end

if pause > 0 then
  function delay()
    return pause
  end
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    "RESULT {\"requests\": %d, \"duration_us\": %d, \"errors\": %d, \"p50_us\": %d, \"p99_us\": %d, \"p999_us\": %d}\n",
    summary.requests, summary.duration, errors,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
