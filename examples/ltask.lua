-- ltask: many Lua services on a few OS threads, with cloudwu/ltask's API.
-- The services are the files in examples/ltask/.  From the repository root:
--   luajit examples/ltask.lua
local boot = require "ltask.bootstrap"

local ctx = boot.start {
    worker = 2,                              -- OS threads running the services
    service_path = "examples/ltask/?.lua",
    root = "root",                           -- the first service; when it quits, all do
    args = { 3 },                            -- root's file gets these as `...`
}
print("ltask: all services have quit:", boot.wait(ctx, 30))
