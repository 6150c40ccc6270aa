-- The baseline of "make bench" measurement 8 (t/bench/bench.pl): a webhook
-- batcher written the plain way with lua-nginx-module (Debian's
-- libnginx-mod-http-lua, which ships ngx.semaphore through lua-resty-core
-- but no cjson, hence the pattern match for entity.id).
--
--   init_worker_by_lua_block { require("lua_batcher").configure(HOST, PORT, TOKEN) }
--   location = /hook-job { content_by_lua_block { require("lua_batcher").handle() } }
--
-- Each worker keeps its own pending batch.  The first webhook of a window
-- starts a 200 ms ngx.timer; when it fires, ONE bulk publish call carries
-- the batch's IDs (at most 200: a full batch closes, and the next webhook
-- opens a new window) over a keep-alive ngx.socket.tcp connection, and the
-- webhooks waiting on the batch's ngx.semaphore are answered with the job
-- ID, as the module's "dato_publish_wait job" does.  No rate limiting and
-- no retries: the baseline is the batching itself.

local semaphore = require "ngx.semaphore"

local _M = {}

local WINDOW = 0.2          -- s, from a batch's first webhook to its call
local MAX_IDS = 200         -- DatoCMS's limit per bulk call
local WAIT = 7              -- s, the longest a webhook waits (as dato_publish_timeout)

local host, port, token = "127.0.0.1", 80, "test-token"
local current               -- the batch taking IDs now, or nil

function _M.configure(h, p, t)
  host, port, token = h, tonumber(p), t
end

-- one bulk publish call; returns status, job ID (or nil, error)
local function publish(ids)
  local items = {}
  for i, id in ipairs(ids) do
    items[i] = '{"type":"item","id":"' .. id .. '"}'
  end
  local body = '{"data":{"type":"item_bulk_publish_operation","relationships":'
    .. '{"items":{"data":[' .. table.concat(items, ",") .. ']}}}}'
  local sock = ngx.socket.tcp()
  sock:settimeout(10000)
  local ok, err = sock:connect(host, port)
  if not ok then return nil, "connect: " .. err end
  local req = "POST /items/bulk/publish HTTP/1.1\r\nHost: " .. host .. ":" .. port
    .. "\r\nAuthorization: Bearer " .. token
    .. "\r\nAccept: application/json\r\nX-Api-Version: 3"
    .. "\r\nContent-Type: application/vnd.api+json\r\nContent-Length: " .. #body
    .. "\r\n\r\n" .. body
  local _, serr = sock:send(req)
  if serr then sock:close(); return nil, "send: " .. serr end
  local line, rerr = sock:receive("*l")
  if not line then sock:close(); return nil, "status line: " .. rerr end
  local status = tonumber(line:match("^HTTP/1%.%d (%d%d%d)"))
  local len, close = 0, false
  while true do
    local h, herr = sock:receive("*l")
    if not h then sock:close(); return nil, "headers: " .. herr end
    if h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    if name then
      name = name:lower()
      if name == "content-length" then len = tonumber(value) or 0
      elseif name == "connection" and value:lower() == "close" then close = true end
    end
  end
  local resp = ""
  if len > 0 then
    local b, berr = sock:receive(len)
    if not b then sock:close(); return nil, "body: " .. berr end
    resp = b
  end
  if close then sock:close() else sock:setkeepalive(60000, 8) end
  if status ~= 202 then return status, nil, "answered " .. tostring(status) end
  return status, resp:match('"id"%s*:%s*"(%d+)"')
end

local function flush(premature, batch)
  if current == batch then current = nil end
  local status, job, err = publish(batch.ids)
  batch.status, batch.job = status, job
  if not job then
    ngx.log(ngx.ERR, "bulk publish of ", #batch.ids, " IDs failed: ", err or "no job ID")
  end
  batch.done = true
  batch.sema:post(batch.waiting)
end

function _M.handle()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  local id = body and body:match('"entity"%s*:%s*{%s*"id"%s*:%s*"([^"]+)"')
  if not id then
    ngx.status = 422
    ngx.header["Content-Type"] = "application/json"
    ngx.say('{"error":"no entity.id"}')
    return
  end
  local b = current
  if not b then
    b = { ids = {}, seen = {}, waiting = 0, sema = semaphore.new(0) }
    local ok, err = ngx.timer.at(WINDOW, flush, b)
    if not ok then
      ngx.log(ngx.ERR, "timer: ", err)
      return ngx.exit(500)
    end
    current = b
  end
  if not b.seen[id] then
    b.seen[id] = true
    b.ids[#b.ids + 1] = id
    if #b.ids >= MAX_IDS then current = nil end   -- full: the next one opens a window
  end
  b.waiting = b.waiting + 1
  local ok = b.done or b.sema:wait(WAIT)
  ngx.header["Content-Type"] = "application/json"
  if ok and b.job then
    ngx.status = 202
    ngx.say('{"data":[{"type":"job","id":"', b.job, '"}],"meta":{"records":1,"status":"accepted"}}')
  elseif ok then
    ngx.status = 502
    ngx.say('{"data":[],"meta":{"records":1,"status":"failed"}}')
  else
    b.waiting = b.waiting - 1
    ngx.status = 202
    ngx.say('{"data":[],"meta":{"records":1,"status":"queued"}}')
  end
end

return _M
