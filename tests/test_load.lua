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

-- Loaded by a Lua without LuaJIT's FFI (Debian's luarocks installs rocks
-- for lua5.1 too), every public module says what it needs.
function TestLoad:test_puc_lua_is_told_it_needs_luajit()
    local _, has = H.sh("command -v lua5.1")
    lu.skipIf(not has, "lua5.1 is not installed")
    for _, name in ipairs { "lj-async.thread", "lj-async.callback", "lj-async.sync", "lj-async.channel",
                            "lj-async.state", "lj-async.pool", "ltask", "ltask.bootstrap" } do
        local out, ok = H.sh("LUA_PATH='./?.lua;./?/init.lua;;' lua5.1 -e 'require \"" .. name .. "\"'")
        lu.assertFalse(ok, name)
        lu.assertStrContains(out, "lj-async needs LuaJIT 2.1", false, name .. ": " .. out)
        lu.assertStrContains(out, "Lua 5.1", false, name .. ": " .. out)
        lu.assertNotStrContains(out, "not found", false, name .. ": " .. out)
    end
end

-- A shared library built from C source, named ljasync.so in a new directory.
local function fake_shim(source)
    local dir = H.tmpdir()
    local f = assert(io.open(dir .. "/fake.c", "w"))
    f:write(source)
    f:close()
    local out, ok = H.sh(("env -u LD_PRELOAD gcc -shared -fPIC -o %s/ljasync.so %s/fake.c"):format(dir, dir))
    assert(ok, out)
    return dir
end

local function load_thread(env)
    return H.sh(env .. " " .. luajit .. " -e 'require \"lj-async.thread\"'")
end

-- An old shim (from before the version check: it lacks the newer symbols)
-- found first on package.cpath fails at load, naming where it was found
-- and what was expected, not later with "undefined symbol".
function TestLoad:test_old_shim_first_on_cpath_fails_at_load()
    local shim = require "lj-async.shim"
    local dir = fake_shim('const char *lja_strerror(int err) { return "old"; }\n')
    local out, ok = load_thread(("env -u LJ_ASYNC_LIB LUA_CPATH='%s/?.so;;'"):format(dir))
    H.sh("rm -rf " .. dir)
    lu.assertFalse(ok)
    lu.assertStrContains(out, dir .. "/ljasync.so")
    lu.assertStrContains(out, "package.cpath")
    lu.assertStrContains(out, "lja_abi_version")
    lu.assertStrContains(out, ("ABI %d (lj-async %s)"):format(shim.ABI, shim.VERSION))
    lu.assertNotStrContains(out, "undefined symbol")
end

-- A shim of another ABI named by LJ_ASYNC_LIB: both versions are told.
function TestLoad:test_shim_of_another_abi_fails_at_load()
    local shim = require "lj-async.shim"
    local dir = fake_shim('const char *lja_strerror(int err) { return "x"; }\n'
        .. 'int lja_abi_version(void) { return 999; }\nconst char *lja_version(void) { return "9.9.9"; }\n')
    local out, ok = load_thread(("LJ_ASYNC_LIB=%s/ljasync.so"):format(dir))
    H.sh("rm -rf " .. dir)
    lu.assertFalse(ok)
    lu.assertStrContains(out, dir .. "/ljasync.so")
    lu.assertStrContains(out, "LJ_ASYNC_LIB")
    lu.assertStrContains(out, "lj-async 9.9.9 (ABI 999)")
    lu.assertStrContains(out, ("ABI %d (lj-async %s)"):format(shim.ABI, shim.VERSION))
end

-- LJ_ASYNC_LIB naming another library altogether.
function TestLoad:test_lj_async_lib_naming_another_library()
    local out, ok = load_thread("LJ_ASYNC_LIB=libc.so.6")
    lu.assertFalse(ok)
    lu.assertStrContains(out, "'libc.so.6' (from LJ_ASYNC_LIB)")
    lu.assertStrContains(out, "lja_abi_version")
    lu.assertNotStrContains(out, "undefined symbol")
end

-- No shim anywhere: the message lists every place searched.
function TestLoad:test_missing_shim_lists_the_paths_searched()
    local dir = H.tmpdir()
    H.sh(("cp -r lj-async %s/"):format(dir))
    local out, ok = H.sh(("cd %s && env -u LJ_ASYNC_LIB LUA_PATH='%s/?.lua;;' LUA_CPATH='/nonexistent/?.so' %s -e 'require \"lj-async.thread\"'")
        :format(dir, dir, luajit))
    H.sh("rm -rf " .. dir)
    lu.assertFalse(ok)
    lu.assertStrContains(out, "cannot find the C shim")
    lu.assertStrContains(out, "LJ_ASYNC_LIB (not set)")
    lu.assertStrContains(out, "/nonexistent/ljasync.so")
    lu.assertStrContains(out, dir .. "/ljasync.so")
    lu.assertStrContains(out, dir .. "/build/ljasync.so")
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
