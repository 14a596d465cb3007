-- Used inside callback states by test_foreign.lua: records job i's result.
return function(shared)
    local ffi = require "ffi"
    ffi.cdef "int64_t lja_atomic_add(int64_t *p, int64_t d);"
    local S = require("lj-async.shim").C
    shared = ffi.cast("int64_t *", shared)
    return function(i)
        i = tonumber(ffi.cast("intptr_t", i))
        local s = 0
        for k = 1, 1000 do s = s + (i * k) % 13 end  -- some JIT-able work
        shared[1 + i] = i * 10 + 1
        S.lja_atomic_add(shared, 1)
        return s
    end
end
