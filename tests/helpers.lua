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

function H.now()
    ffi.cdef "double lja_now(void);"
    return require("lj-async.shim").C.lja_now()
end

-- Run a shell command; returns its output and whether it exited 0.
function H.sh(cmd)
    local f = io.popen("(" .. cmd .. ") 2>&1; echo \"__status=$?\"")
    local out = f:read("*a")
    f:close()
    local status = tonumber(out:match("__status=(%d+)%s*$"))
    return (out:gsub("__status=%d+%s*$", "")), status == 0
end

return H
