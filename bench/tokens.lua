-- wrk script for `make bench`: one token per request (bearer, or DPoP with a proof), read from
-- files bench.py writes (one token or proof per line). Run with one thread (-t1).
--   repeat FILE          the first token of FILE on every request
--   pool FILE            the next token of FILE on every request; at the end it starts over
--                        and counts a wrap (reported, so a reused token never goes unnoticed)
--   mix VALID INVALID    alternately the first token of VALID and the next token of INVALID
--   dpop TOKEN PROOFS    `Authorization: DPoP <first token of TOKEN>` and `DPoP: <next proof of
--                        PROOFS>` on every request; PROOFS wraps and counts like a pool (a
--                        wrapped proof is a replay: bench.py reports every wrap as a problem)
--   headers FILE         the same headers on every request, one `Name: value` a line (a
--                        browser session's `Host` and `Cookie`, bench/login_arms.py)
-- done() prints one line "BENCH {json}" with the counts and the latency distribution (µs).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local mode, pool, fixed, sent, dpop_authorization
tokens_used, wraps = 0, 0

local function first_line(path)
  local file = assert(io.open(path, "r"))
  local line = file:read("*l")
  file:close()
  return assert(line, path .. " is empty")
end

local function request_for(token)
  return wrk.format("GET", "/", { ["Authorization"] = "Bearer " .. token })
end

local function next_pooled()
  local line = pool:read("*l")
  if not line then
    wraps = wraps + 1
    pool:seek("set", 0)
    line = assert(pool:read("*l"), "token pool is empty")
  end
  tokens_used = tokens_used + 1
  return line
end

local function dpop_request(proof)
  return wrk.format("GET", "/", { ["Authorization"] = dpop_authorization, ["DPoP"] = proof })
end

function init(args)
  mode = args[1]
  sent = 0
  if mode == "repeat" then
    fixed = request_for(first_line(args[2]))
  elseif mode == "pool" then
    pool = assert(io.open(args[2], "r"))
  elseif mode == "mix" then
    fixed = request_for(first_line(args[2]))
    pool = assert(io.open(args[3], "r"))
  elseif mode == "headers" then
    local headers = {}
    for line in io.lines(args[2]) do
      local name, value = line:match("^([^:]+):%s*(.*)$")
      if name then
        headers[name] = value
      end
    end
    fixed = wrk.format("GET", "/", headers)
  elseif mode == "dpop" then
    dpop_authorization = "DPoP " .. first_line(args[2])
    pool = assert(io.open(args[3], "r"))
  else
    error("unknown mode: " .. tostring(mode))
  end
end

function request()
  sent = sent + 1
  if mode == "repeat" or mode == "headers" or (mode == "mix" and sent % 2 == 1) then
    return fixed
  end
  if mode == "dpop" then
    return dpop_request(next_pooled())
  end
  return request_for(next_pooled())
end

function done(summary, latency, requests)
  local used, wrapped = 0, 0
  for _, thread in ipairs(threads) do
    used = used + (thread:get("tokens_used") or 0)
    wrapped = wrapped + (thread:get("wraps") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "non_2xx": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "pool_tokens_used": %d, "pool_wraps": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, used, wrapped))
end
