-- The README's Build, load, install section: finding the shim, installing, and embedding.
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

-- A copy of the source tree, as a rock holds it: LuaRocks builds in the
-- source directory (build.luarocks/), which must not be the checkout.
local function source_copy()
    local dir = H.tmpdir()
    local out, ok = H.sh(("tar -cf - --exclude='./build*' --exclude=./.git . | tar -xf - -C %s"):format(dir))
    assert(ok, out)
    return dir
end

-- The packaging tests build a shim of their own, never instrumented: they
-- run in the normal builds only.
local function skip_in_sanitizer_builds()
    lu.skipIf((os.getenv("LJA_SANITIZE") or "") ~= "", "packaging builds its own shim: tested in the normal builds")
end

local function luarocks(dir, tree, args)
    return H.sh(("cd %s && env -u LD_PRELOAD luarocks --tree %s %s"):format(dir, tree, args))
end

-- `luarocks make` installs the shim alone (no ljabench.so, no tests), and
-- `luarocks pack` of the installed rock gives a binary rock that installs
-- and works elsewhere.
function TestLoad:test_luarocks_make_and_pack()
    skip_in_sanitizer_builds()
    local src, tree, tree2 = source_copy(), H.tmpdir(), H.tmpdir()
    local out, ok = luarocks(src, tree, "make lj-async-scm-1.rockspec")
    lu.assertTrue(ok, out)
    lu.assertTrue(exists(src .. "/build.luarocks/ljasync.so"))
    lu.assertFalse(exists(src .. "/build.luarocks/ljabench.so"), "the bench library is built for an install")
    out, ok = luarocks(src, tree, "pack lj-async scm-1")
    lu.assertTrue(ok, out)
    local rock = out:match("Packed: (%S+%.rock)")
    lu.assertNotNil(rock, out)
    out, ok = luarocks(src, tree2, "install " .. rock)
    H.sh("rm -rf " .. src)
    lu.assertTrue(ok, out)
    assert_tree_works(tree)
    assert_tree_works(tree2)
end

-- `luarocks pack` of the rockspec fetches the source with git and packs a
-- source rock, from which `luarocks build` (what `luarocks install` does)
-- builds and installs.  A repository of the copy stands in for the real one.
function TestLoad:test_luarocks_source_rock()
    skip_in_sanitizer_builds()
    local src, work, tree = source_copy(), H.tmpdir(), H.tmpdir()
    local out, ok = H.sh(("cd %s && git init -q -b main && git add -A && "
        .. "git -c user.name=test -c user.email=test@localhost commit -qm source"):format(src))
    assert(ok, out)
    local f = assert(io.open(src .. "/lj-async-scm-1.rockspec"))
    local spec, n = f:read("*a"):gsub('url = "git%+https://[^"]*"', 'url = "git+file://' .. src .. '"')
    f:close()
    lu.assertEquals(n, 1, "lj-async-scm-1.rockspec has no git+https source.url")
    f = assert(io.open(work .. "/lj-async-scm-1.rockspec", "w"))
    f:write(spec)
    f:close()
    out, ok = luarocks(work, tree, "pack lj-async-scm-1.rockspec")
    lu.assertTrue(ok, out)
    lu.assertTrue(exists(work .. "/lj-async-scm-1.src.rock"), out)
    out, ok = luarocks(work, tree, "build lj-async-scm-1.src.rock")
    H.sh("rm -rf " .. src .. " " .. work)
    lu.assertTrue(ok, out)
    assert_tree_works(tree)
end

-- Runs a shell script in a mount namespace where LuaJIT's development files
-- (and, with `binary`, its executable) are hidden, as on a packager's
-- machine without libluajit-5.1-dev; returns its output and success.
local function without_luajit(binary, script)
    local _, can = H.sh("unshare -rm true")
    lu.skipIf(not can, "cannot make a mount namespace here (unshare -rm) to hide LuaJIT")
    -- Under /usr, /usr/local and the prefix of the LuaJIT under test.
    local prefix = H.sh("dirname $(dirname $(readlink -f $(command -v luajit)))"):gsub("%s+$", "")
    local globs = {}
    for _, p in ipairs { "/usr", "/usr/local", prefix } do
        for _, g in ipairs { "include/luajit-*", "lib/libluajit-5.1.*", "lib/*/libluajit-5.1.*",
                             "lib/pkgconfig/luajit.pc", "lib/*/pkgconfig/luajit.pc", "share/pkgconfig/luajit.pc" } do
            globs[#globs + 1] = p .. "/" .. g
        end
    end
    local hidden = H.sh("ls -d " .. table.concat(globs, " ") .. " 2>/dev/null"
        .. (binary and "; command -v luajit" or ""))
    local empty = H.tmpdir()
    local out, ok = H.sh(("env -u LD_PRELOAD unshare -rm sh -ec 'for p in %s; do\n"
        .. "if [ -d \"$p\" ]; then mount --bind %s \"$p\"; else mount --bind /dev/null \"$p\"; fi; done\n"
        .. "! test -e /usr/include/luajit-2.1/luajit.h && ! pkg-config --exists luajit\n%s'")
        :format(hidden:gsub("%s+", " "), empty, script))
    H.sh("rm -rf " .. empty)
    return out, ok
end

-- A packager builds the shim alone (as the rockspec does) with no LuaJIT
-- installed at all: no headers, library, pkg-config file or binary.
function TestLoad:test_shim_builds_without_luajit()
    skip_in_sanitizer_builds()
    local dir = H.tmpdir()
    local out, ok = without_luajit(true, ("! command -v luajit\ncmake -S . -B %s -DBUILD_TESTING=OFF\n"
        .. "cmake --build %s -j2"):format(dir, dir))
    local built, bench = exists(dir .. "/ljasync.so"), exists(dir .. "/ljabench.so")
    H.sh("rm -rf " .. dir)
    lu.assertTrue(ok, out)
    lu.assertTrue(built, out)
    lu.assertFalse(bench, "the bench library is built without BUILD_TESTING")
end

-- With the luajit binary but not its development files, the tests build
-- and the embedding test (which needs LuaJIT's headers) reports itself
-- skipped.
function TestLoad:test_tests_build_without_luajit_headers()
    skip_in_sanitizer_builds()
    local dir = H.tmpdir()
    local out, ok = without_luajit(false, ("cmake -S . -B %s\ncmake --build %s -j2\n"
        .. "cd %s && ctest -R test_embed --timeout 60"):format(dir, dir, dir))
    H.sh("rm -rf " .. dir)
    lu.assertTrue(ok, out)
    lu.assertStrContains(out, "test_embed (Skipped)")
end

-- Loaded by a Lua without LuaJIT's FFI (Debian's luarocks installs rocks
-- for lua5.1 too), every public module says what it needs.
function TestLoad:test_puc_lua_is_told_it_needs_luajit()
    local _, has = H.sh("command -v lua5.1")
    lu.skipIf(not has, "lua5.1 is not installed")
    for _, name in ipairs { "lj-async.thread", "lj-async.callback", "lj-async.sync", "lj-async.channel",
                            "lj-async.state", "lj-async.pool", "lj-async.shared", "ltask", "ltask.bootstrap" } do
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

H.run(lu)
