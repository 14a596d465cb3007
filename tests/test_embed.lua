-- lj-async inside C programs that embed LuaJIT (README "Build, load,
-- install"): tests/embed_host.c linked to the shared libluajit, and linked
-- statically with its symbols exported.  tests/tests.cmake builds them
-- against the LuaJIT under test when its headers are there, and lists them
-- in LJA_EMBED_HOSTS; a host not built is skipped.
local lu = require "luaunit"
local H = require "tests.helpers"

local build = os.getenv("LJA_BUILD_DIR") or "build"
local built = " " .. (os.getenv("LJA_EMBED_HOSTS") or "") .. " "

local function run_host(name)
    lu.skipIf(not built:find(" " .. name .. " ", 1, true),
        name .. " was not built: no LuaJIT headers and library found (tests/tests.cmake)")
    local out, ok = H.sh(build .. "/" .. name .. " tests/embed_script.lua")
    lu.assertTrue(ok, out)
    -- The host's LuaJIT is the one under test, not another on the system.
    lu.assertStrContains(out, "embedded ok in " .. H.luajit_flavour())
end

TestEmbed = {}

function TestEmbed:setUp()
    H.skip_without_fork(lu)
end

function TestEmbed:test_c_host_with_shared_libluajit()
    run_host("embed_host_shared")
end

function TestEmbed:test_c_host_static_with_exported_symbols()
    run_host("embed_host_static")
end

H.run(lu)
