-- lj-async.callback: a C function pointer that any thread may call, running
-- a Lua function in states of its own.  From the repository root:
--   luajit examples/callback.lua
local ffi = require "ffi"
local CallbackFactory = require "lj-async.callback"

ffi.cdef [[
typedef uint64_t pthread_t;
int pthread_create(pthread_t *thread, const void *attr, void *(*start)(void *), void *arg);
int pthread_join(pthread_t thread, void **retval);
void qsort(void *base, size_t n, size_t size, int (*compar)(const void *, const void *));
]]

-- 1. Threads that C creates (pthread_create) call Lua.  With states = 4, up
--    to four of them run the callback at once; `setup` runs a factory once
--    in each state (upvalues would cross too, as copies).
local Start = CallbackFactory("void *(*)(void *)")
local square_plus = Start(function(offset)
    local ffi = require "ffi"
    return function(arg)
        local n = tonumber(ffi.cast("intptr_t", arg))
        return ffi.cast("void *", n * n + offset)
    end
end, { setup = true, args = { 1000 }, states = 4 })

local tids = ffi.new("pthread_t[4]")
for i = 0, 3 do
    assert(ffi.C.pthread_create(tids + i, nil, square_plus:funcptr(), ffi.cast("void *", i + 1)) == 0)
end
local ret = ffi.new("void *[1]")
for i = 0, 3 do
    ffi.C.pthread_join(tids[i], ret)
    print(("C thread %d: the callback returned %d"):format(i + 1, tonumber(ffi.cast("intptr_t", ret[0]))))
end
square_plus:free()

-- 2. Any C API that takes a function pointer: libc's qsort with a Lua comparator.
local Compare = CallbackFactory("int (*)(const void *, const void *)")
local descending = Compare(function(a, b)
    local ffi = require "ffi"
    a, b = ffi.cast("const int *", a)[0], ffi.cast("const int *", b)[0]
    return a < b and 1 or a > b and -1 or 0
end)
local xs = ffi.new("int[6]", { 3, 1, 4, 1, 5, 9 })
ffi.C.qsort(xs, 6, ffi.sizeof("int"), descending:funcptr())
local sorted = {}
for i = 0, 5 do sorted[#sorted + 1] = xs[i] end
print("qsort with a Lua comparator: " .. table.concat(sorted, " "))

-- 3. An error never unwinds into C: the call returns zero and last_error() tells.
local Half = CallbackFactory("int (*)(int)")
local half = Half(function(n)
    if n % 2 == 1 then error("odd number " .. n) end
    return n / 2
end)
local fp = half:funcptr()
print("half(10) = " .. fp(10))
print("half(7) = " .. fp(7) .. ", last_error: " .. half:last_error():match("[^\n]*"))
print("(the error and its traceback also went to stderr)")
descending:free()
half:free()
