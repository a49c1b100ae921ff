-- wrk script for rkms benchmarks. Environment:
--   BENCH_MODE = "fixed" | "existing" | "new" | "zipf" | "uniform"
--   BENCH_IDS  = how many ids to pick from ("existing": uniform over
--                bench/0 .. bench/N-1; "zipf": Zipf over zipf/1 .. zipf/N,
--                zipf/1 the most popular; "uniform": uniform over the
--                same zipf/1 .. zipf/N)
--   BENCH_ZIPF_S = the Zipf exponent (default 1.1)
--   BENCH_DELAY_MS = pause per request per connection (0 = closed loop)
--   BENCH_TAG = unique per run: names the "new" ids and seeds the draws
--   BENCH_TOKEN = when set, every request carries "Authorization: Bearer …"
-- Prints one machine-readable RESULT line at the end.

local mode = os.getenv("BENCH_MODE") or "fixed"
local ids = tonumber(os.getenv("BENCH_IDS") or "1000")
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local token = os.getenv("BENCH_TOKEN") or ""
local zipf_s = tonumber(os.getenv("BENCH_ZIPF_S") or "1.1")
local threads = {}
local counter = 0

-- BENCH_TAG is unique per wrk run (the harness sets it): setup() runs
-- before any seeding, so math.random alone would give every run the same
-- "new" ids, and runs after the first would read keys the first created.
local run_tag = os.getenv("BENCH_TAG") or tostring(os.time())

local function hash(text)
  local h = 5381
  for i = 1, #text do
    h = (h * 33 + text:byte(i)) % 2147483647
  end
  return h
end

function setup(thread)
  -- Each thread gets its own id prefix and random seed; with a shared seed
  -- the threads would ask for the same ids in lockstep, and rkms's
  -- single-flight would merge their requests.
  thread:set("tag", run_tag .. "-t" .. #threads)
  thread:set("seed", hash(run_tag) + #threads * 7919)
  table.insert(threads, thread)
end

-- Zipf sampling with a precomputed table, so that a request costs a
-- 16-step binary search at most: the 65,536 most popular ranks (90% of
-- the requests at s = 1.1 over 1,000,000 ids) from their exact
-- cumulative distribution, the rest from the continuous power law over
-- the tail (one pow per tail draw). Building the table takes a few ms.
local HEAD = 65536
local head_cdf, head_n, p_head, tail_a, tail_span, one_minus_s

local function zipf_prepare(n, s)
  head_n = math.min(HEAD, n)
  head_cdf = {}
  local acc = 0
  for k = 1, head_n do
    acc = acc + k ^ -s
    head_cdf[k] = acc
  end
  one_minus_s = 1 - s
  tail_a = (head_n + 0.5) ^ one_minus_s
  local tail_b = (n + 0.5) ^ one_minus_s
  tail_span = tail_b - tail_a
  local tail_mass = tail_span / one_minus_s
  if n <= head_n then tail_mass = 0 end
  for k = 1, head_n do
    head_cdf[k] = head_cdf[k] / acc
  end
  p_head = acc / (acc + tail_mass)
end

local function zipf_draw()
  local u = math.random()
  if u < p_head then
    local v = u / p_head
    local lo, hi = 1, head_n
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if head_cdf[mid] < v then lo = mid + 1 else hi = mid end
    end
    return lo
  end
  local v = (u - p_head) / (1 - p_head)
  local x = (tail_a + v * tail_span) ^ (1 / one_minus_s)
  local rank = math.floor(x + 0.5)
  if rank <= head_n then rank = head_n + 1 end
  if rank > ids then rank = ids end
  return rank
end

function init(args)
  tag = tag or "t"
  math.randomseed(seed or os.time())
  if mode == "zipf" then
    zipf_prepare(ids, zipf_s)
  end
  if token ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
end

function request()
  if mode == "existing" then
    return wrk.format("GET", "/key?id=bench%2F" .. math.random(0, ids - 1))
  elseif mode == "zipf" then
    return wrk.format("GET", "/key?id=zipf%2F" .. zipf_draw())
  elseif mode == "uniform" then
    return wrk.format("GET", "/key?id=zipf%2F" .. math.random(1, ids))
  elseif mode == "new" then
    -- A random number first spreads the new ids over the key space, as
    -- real ids (UUIDs, order numbers) and Zipf's first touches are: in the
    -- store's index they land anywhere, not appended at one end.
    counter = counter + 1
    return wrk.format("GET", "/key?id=new%2F" .. math.random(0, 999999999) .. "%2F" .. tag .. "%2F" .. counter)
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
