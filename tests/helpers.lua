-- Shared by the test files: run from the repository root (ctest does).
local ffi = require "ffi"

local H = {}

-- Load the first of several shared-library names, or nil.
function H.load_lib(...)
    for i = 1, select("#", ...) do
        local ok, lib = pcall(ffi.load, (select(i, ...)))
        if ok then return lib end
    end
    return nil
end

-- Busy JIT-compiled work for the calling state while others run.
function H.spin(seconds, poll)
    local Thread = require "lj-async.thread"
    ffi.cdef "double lja_now(void);"
    local C = require("lj-async.shim").C
    local deadline = C.lja_now() + seconds
    local x = 0
    while C.lja_now() < deadline do
        for i = 1, 10000 do x = x + i % 7 end
        if poll and poll() then break end
    end
    return x
end

-- Declared once: each ffi.cdef adds ctypes, and a loop that asked the
-- time 65,000 times filled LuaJIT's table of them ("table overflow").
local now_c
function H.now()
    if not now_c then
        pcall(ffi.cdef, "double lja_now(void);")
        now_c = require("lj-async.shim").C.lja_now
    end
    return now_c()
end

-- Under ThreadSanitizer a LuaJIT process cannot fork (the child crashes),
-- so tests that run other programs say so and skip there.
H.can_fork = os.getenv("LJA_SANITIZE") ~= "thread"

function H.skip_without_fork(lu)
    lu.skipIf(not H.can_fork, "ThreadSanitizer build: LuaJIT cannot fork a subprocess under TSan")
end

-- The entries of a directory (no subprocess: works under every sanitizer).
function H.listdir(dir)
    pcall(ffi.cdef, [[
    typedef struct lja_test_dirent { uint64_t ino; int64_t off; unsigned short reclen;
                                     unsigned char type; char name[256]; } lja_test_dirent;
    void *opendir(const char *name);
    lja_test_dirent *readdir(void *dir);
    int closedir(void *dir);
    ]])
    local d = ffi.C.opendir(dir)
    if d == nil then return {} end
    local names = {}
    while true do
        local e = ffi.C.readdir(d)
        if e == nil then break end
        names[#names + 1] = ffi.string(e.name)
    end
    ffi.C.closedir(d)
    table.sort(names)
    return names
end

-- Whether an lj-async object with this id still exists anywhere.
function H.object_alive(id)
    pcall(ffi.cdef, "void *lja_object_get(uint64_t id, int kind); void lja_object_release(void *obj);")
    local S = require("lj-async.shim").C
    local p = S.lja_object_get(id, 0)
    if p == nil then return false end
    S.lja_object_release(p)
    return true
end

-- Collects garbage until the object is gone (true) or 5 s pass (false).
function H.eventually_gone(id)
    local Thread = require "lj-async.thread"
    local deadline = H.now() + 5
    while H.object_alive(id) and H.now() < deadline do
        collectgarbage()
        Thread.sleep(0.01)
    end
    return not H.object_alive(id)
end

-- Resident memory of this process, in MiB.
function H.rss_mib()
    local f = assert(io.open("/proc/self/statm"))
    local pages = tonumber(f:read("*a"):match("^%d+%s+(%d+)"))
    f:close()
    return pages * 4096 / 2 ^ 20
end

-- Runs round() `warmup` times, then `rounds` times, and fails unless the
-- resident memory grew less than limit_mib over the latter (8 times that
-- under the sanitizers: ASan's quarantine keeps freed memory for a while,
-- TSan's allocator and shadow take longer to settle).
function H.assert_memory_settles(lu, round, warmup, rounds, limit_mib, what)
    if (os.getenv("LJA_SANITIZE") or "") ~= "" then limit_mib = limit_mib * 8 end
    for _ = 1, warmup do round() end
    local before = H.rss_mib()
    for _ = 1, rounds do round() end
    local grown = H.rss_mib() - before
    lu.assertTrue(grown < limit_mib, ("RSS grew %.1f MiB over %s"):format(grown, what))
end

-- Runs f, a function written on one line that makes one call, and returns
-- the error it raised and the position that error must begin with, f's
-- line ("tests/test_x.lua:12:"): lj-async's errors blame their caller.
function H.raised_at(f)
    local ok, err = pcall(f)
    assert(not ok, "no error was raised")
    local info = debug.getinfo(f, "S")
    return tostring(err), info.short_src .. ":" .. info.linedefined .. ":"
end

-- Run a shell command; returns its output and whether it exited 0.
function H.sh(cmd)
    local f = io.popen("(" .. cmd .. ") 2>&1; echo \"__status=$?\"")
    local out = f:read("*a")
    f:close()
    local status = tonumber(out:match("__status=(%d+)%s*$"))
    return (out:gsub("__status=%d+%s*$", "")), status == 0
end

-- A new empty directory under /tmp; the caller removes it (H.sh("rm -rf " .. dir)).
function H.tmpdir()
    local out, ok = H.sh("mktemp -d /tmp/lja-test.XXXXXX")
    assert(ok, out)
    return (out:gsub("%s+$", ""))
end

-- ctest's SKIP_RETURN_CODE (tests/tests.cmake): a file whose every test was
-- skipped reports itself skipped, not passed.
H.SKIP = 77

-- Runs the file's LuaUnit tests and exits: the failure count, or H.SKIP
-- when every test was skipped.
function H.run(lu)
    local runner = lu.LuaUnit.new()
    local failed = runner:runSuite()
    if failed == 0 and runner.result.runCount == 0 and runner.result.skippedCount > 0 then
        os.exit(H.SKIP)
    end
    os.exit(failed)
end

-- The running LuaJIT's version and flavour.  OpenResty's luajit2 gives the
-- same jit.version as LuaJIT's own 2.1 but has builtin modules of its own.
function H.luajit_flavour()
    local openresty = package.preload["thread.exdata"] or package.loaded["thread.exdata"]
    return jit.version .. " (" .. (openresty and "OpenResty's luajit2" or "upstream LuaJIT") .. ")"
end

-- A whole file's contents, or nil if it cannot be opened.
function H.read(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return s
end

return H
