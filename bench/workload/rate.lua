-- wrk script of the benchmark's web load: WL_DELAY_MS between requests on
-- each connection (rate ~ connections * 1000 / WL_DELAY_MS), a path mix of
-- the page, a JSON API and a 64 KiB asset.
local delay_ms = tonumber(os.getenv("WL_DELAY_MS") or "100") or 100
local paths = { "/", "/", "/", "/api/items.json", "/api/items.json", "/asset.bin" }
local n = 0

request = function()
  n = n + 1
  return wrk.format("GET", paths[(n % #paths) + 1])
end

delay = function()
  return delay_ms
end
