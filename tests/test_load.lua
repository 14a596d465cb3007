-- SPEC section 0: finding the shim, installing, and embedding.
local lu = require "luaunit"
local H = require "tests.helpers"

local build = os.getenv("LJA_BUILD_DIR") or "build"
local luajit = "luajit"
local probe = [[local T = require "lj-async.thread"; local ok, v = T(function() return 7 end):join(10); assert(ok and v == 7); ]]
    .. [[assert(require("lj-async.pool").new(1):submit("return 2") == 2); require "ltask.bootstrap"; ]]
    .. [[assert(io.open((package.searchpath("ltask.core", package.path):gsub("core%.lua$", "init.lua")))); print("ok")]]

local function exists(p)
    local f = io.open(p)
    if f then f:close() end
    return f ~= nil
end

-- An installed tree in LuaRocks' usual layout works from another directory
-- with nothing else set; the tree is removed afterwards.
local function assert_tree_works(tree)
    local out, ok = H.sh(("cd /tmp && env -u LJ_ASYNC_LIB LUA_PATH='%s/share/lua/5.1/?.lua;;' LUA_CPATH='%s/lib/lua/5.1/?.so;;' %s -e '%s'")
        :format(tree, tree, luajit, probe))
    H.sh("rm -rf " .. tree)
    lu.assertTrue(ok, out)
    lu.assertStrContains(out, "ok")
end

TestLoad = {}

function TestLoad:setUp()
    H.skip_without_fork(lu)
end

function TestLoad:test_repository_root_without_environment()
    -- From the root, the shim is found next to the modules, in build/.
    lu.assertTrue(exists("build/ljasync.so"), "run the normal build first (cmake -S . -B build)")
    local out, ok = H.sh("env -u LJ_ASYNC_LIB -u LUA_PATH -u LUA_CPATH " .. luajit .. " -e '" .. probe .. "'")
    lu.assertTrue(ok, out)
    lu.assertStrContains(out, "ok")
end

function TestLoad:test_explicit_override_first()
    local out, ok = H.sh("LJ_ASYNC_LIB=/nonexistent/ljasync.so " .. luajit .. " -e 'require \"lj-async.thread\"'")
    lu.assertFalse(ok)
    lu.assertStrContains(out, "/nonexistent/ljasync.so")
end

function TestLoad:test_install_layout()
    local prefix = os.tmpname()
    os.remove(prefix)
    local out, ok = H.sh(("env -u LD_PRELOAD cmake --install %s --prefix %s"):format(build, prefix))
    lu.assertTrue(ok, out)
    lu.assertTrue(exists(prefix .. "/lib/lua/5.1/ljasync.so"))
    lu.assertTrue(exists(prefix .. "/share/lua/5.1/lj-async/thread.lua"))
    assert_tree_works(prefix)
end

function TestLoad:test_rockspec()
    local tree = os.tmpname()
    os.remove(tree)
    local out, ok = H.sh("env -u LD_PRELOAD luarocks make --tree " .. tree .. " lj-async-scm-1.rockspec")
    lu.assertTrue(ok, out)
    assert_tree_works(tree)
end

local function run_host(name)
    local host = build .. "/" .. name
    lu.assertTrue(exists(host), host .. " was not built")
    local out, ok = H.sh(host .. " tests/embed_script.lua")
    lu.assertTrue(ok, out)
    lu.assertStrContains(out, "embedded ok")
end

function TestLoad:test_embedded_in_c_host_shared_libluajit()
    run_host("embed_host_shared")
end

function TestLoad:test_embedded_in_c_host_static_exported()
    run_host("embed_host_static")
end

os.exit(lu.LuaUnit.run())
