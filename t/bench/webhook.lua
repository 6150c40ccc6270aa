-- wrk script for the ngx_http_dato_module benchmarks (t/bench/run.sh).
--
-- POSTs DatoCMS webhook bodies (entity_type "item", event_type "update",
-- about 1.2 KB, the shape DatoCMS sends) to the URL given to wrk.
--
--   wrk ... -s webhook.lua URL -- pool  [SEED]
--       entity.id drawn at random from a fixed pool of 100 valid record
--       IDs (50 base64url, 50 decimal): per-batch dedup keeps API calls low
--   every request has a webhook_call_id of its own, as DatoCMS's do
--   wrk ... -s webhook.lua URL -- fresh PREFIX
--       a new decimal ID for every request: PREFIX (1..99999) * 10^9
--       + thread number * 10^8 + a per-thread counter; unique per run as
--       long as PREFIX differs between runs and a thread sends < 10^8
--   env BENCH_DELAY_MS=N: wait N ms before each request on a connection
--       (wrk's delay()), for a steady flow of about
--       connections * 1000 / N requests per second.  Without it the
--       script defines no delay(), which would cost wrk a timer per request.
--

local mode, prefix
local counter = 0
local pool = {}
-- "tid" (1, 2, ...) is a global that setup() gives each thread
local thread_count = 0

local headers = { ["Content-Type"] = "application/json" }

-- a DatoCMS webhook; %s is the record ID
local template = '{"site_id":"124833","webhook_id":"31274",'
  .. '"environment":"main","is_environment_primary":true,'
  .. '"entity_type":"item","event_type":"update",'
  .. '"entity":{"id":"%s","type":"item",'
  .. '"attributes":{"title":"Hello from the benchmark",'
  .. '"slug":"hello-from-the-benchmark",'
  .. '"lead":"A short paragraph of text, as editors write them, so that the'
  .. ' body has the size of a real webhook and the parser has something to'
  .. ' walk through before it reaches the fields it needs.",'
  .. '"seo":{"title":"Hello","description":"From the benchmark",'
  .. '"image":null,"twitter_card":"summary","no_index":false}},'
  .. '"relationships":{"item_type":{"data":{"type":"item_type","id":"2079393"}},'
  .. '"creator":{"data":{"type":"account","id":"87234"}}},'
  .. '"meta":{"created_at":"2024-05-14T09:12:03.551+00:00",'
  .. '"updated_at":"2024-05-14T09:15:42.000+00:00","published_at":null,'
  .. '"publication_scheduled_at":null,"unpublishing_scheduled_at":null,'
  .. '"first_published_at":null,"is_valid":true,'
  .. '"is_current_version_valid":true,"is_published_version_valid":true,'
  .. '"status":"draft","current_version":"KnN0WoQJTQWYbm4Ro3T8Hg",'
  .. '"stage":null}},'
  .. '"related_entities":[],"webhook_call_id":"%s",'
  .. '"event_triggered_at":"2024-05-14T09:15:42.000Z",'
  .. '"attempted_auto_retries_count":0}'

local b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local last = { "A", "Q", "g", "w" }

-- a valid 22-char base64url record ID (16 bytes: the last char's low
-- 4 bits are 0), deterministic in i
local function b64_id(i)
  local t = {}
  local x = i * 7919 + 17
  for k = 1, 21 do
    x = (x * 1103515245 + 12345) % 2147483648
    local v = math.floor(x / 65536) % 64
    t[k] = b64:sub(v + 1, v + 1)
  end
  t[22] = last[(i % 4) + 1]
  return table.concat(t)
end

-- each request a call of its own, as DatoCMS numbers them: the module's
-- replay guard answers a webhook_call_id it has seen without queueing
local function body(id)
  counter = counter + 1
  local call = string.format("%.0f", (tid or 0) * 1e9 + counter)
  return string.format(template, id, call)
end

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end

function init(args)
  mode = args[1] or "pool"
  if mode == "pool" then
    math.randomseed(tonumber(args[2] or "1") + (tid or 0) * 7)
    for i = 1, 100 do
      local id
      if i <= 50 then
        id = b64_id(i)
      else
        id = tostring(43012900 + i)
      end
      pool[i] = id
    end
  elseif mode == "fresh" then
    prefix = tonumber(args[2] or "1")
    if prefix < 1 or prefix > 99999 then
      error("fresh: PREFIX must be 1..99999")
    end
  else
    error("mode must be pool or fresh")
  end
end

local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if delay_ms and delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function request()
  if mode == "pool" then
    return wrk.format("POST", nil, headers, body(pool[math.random(1, 100)]))
  end
  local id = string.format("%.0f", prefix * 1e9 + (tid or 0) * 1e8
                                   + counter + 1)
  return wrk.format("POST", nil, headers, body(id))
end
