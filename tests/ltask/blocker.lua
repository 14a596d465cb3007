-- An exclusive service that blocks its thread in C.
local ffi = require "ffi"
pcall(ffi.cdef, "int usleep(unsigned int usec);")
local S = {}
function S.block(ms)
    ffi.C.usleep(ms * 1000)
    return true
end
return S
