-- wrk script for "make bench" measurement 8 (t/bench/bench.pl): the
-- webhooks of webhook.lua (same arguments: pool [SEED] | fresh PREFIX),
-- and a count of the answers by kind, printed by done() as
--
--   BENCH_ANSWERS accepted A queued Q other O
--
-- accepted: 202 with a job ID ("status":"accepted"); queued: 202 without
-- one (dato_publish_timeout passed); other: any other status.

local here = (debug.getinfo(1, "S").source or ""):match("^@(.*/)") or "./"
dofile(here .. "webhook.lua")

local inner_setup = setup
local threads = {}

function setup(thread)
  inner_setup(thread)
  threads[#threads + 1] = thread
end

accepted, queued, other = 0, 0, 0

function response(status, headers, body)
  if status == 202 and body and body:find('"status":"accepted"', 1, true)
     and body:find('"type":"job"', 1, true) then
    accepted = accepted + 1
  elseif status == 202 then
    queued = queued + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local a, q, o = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + (t:get("accepted") or 0)
    q = q + (t:get("queued") or 0)
    o = o + (t:get("other") or 0)
  end
  io.write(string.format("BENCH_ANSWERS accepted %d queued %d other %d\n", a, q, o))
end
