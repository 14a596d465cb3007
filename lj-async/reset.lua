-- lj-async.reset: puts a state's globals and standard library back the way
-- they were, so one state can serve many runs that must not see each other.
--
-- snapshot() records _G, every table it holds (the libraries), the package
-- tables and the string metatable, and returns restore(); restore() puts
-- each recorded table back in place (identity is kept, so the string
-- methods and package's loaders still see the tables they hold), and the
-- environments and type-wide metatables a run replaced, and returns
-- whether the state is fit to reuse: a run that loaded the FFI or a C module
-- changed what no restore can undo (ffi.cdef, registry entries).  If the
-- FFI was loaded before the snapshot, a run that declares C types
-- (ffi.cdef, ffi.metatype) or loads a library with it makes the state
-- unfit the same way.
local type, next, rawget, rawset, pairs, ipairs, pcall = type, next, rawget, rawset, pairs, ipairs, pcall
local getmetatable, setmetatable, getfenv, setfenv = getmetatable, setmetatable, getfenv, setfenv
local debug_getmetatable, debug_setmetatable, sethook = debug.getmetatable, debug.setmetatable, debug.sethook
-- getfenv of a C function gives the globals: the debug functions see its own.
local debug_getfenv, debug_setfenv = debug.getfenv, debug.setfenv
local io_set_input, io_set_output, collectgarbage = io.input, io.output, collectgarbage

local M = {}

-- Functions a runtime keeps from one run to the next (the pool's loaded
-- jobs), with the environment each had when kept.
local kept = setmetatable({}, { __mode = "k" })

-- Keeps f's current environment: every restore after a run that changed
-- it puts it back.  Returns f.
function M.keep_env(f)
    kept[f] = debug_getfenv(f)
    return f
end

local function copy(t)
    local c = {}
    for k, v in next, t do c[k] = v end
    return c
end

-- Replaces t[name], if there is one, by a function that calls mark() and
-- then the original.
local function watch(t, name, mark)
    local f = t and t[name]
    if f then
        t[name] = function(...)
            mark()
            return f(...)
        end
    end
end

function M.snapshot()
    local G = _G
    local loaded = package.loaded
    local foreign = false   -- set when a C module or the FFI was loaded

    -- Watch the C loaders and loadlib (package.loaders 3 and 4 are C).
    for i = 3, 4 do
        local loader = package.loaders[i]
        if loader then
            package.loaders[i] = function(...)
                local f = loader(...)
                if type(f) == "function" then foreign = true end
                return f
            end
        end
    end
    local function mark_foreign() foreign = true end
    watch(package, "loadlib", mark_foreign)
    -- A state whose own code loaded the FFI before the snapshot (ltask's
    -- services) stays reusable until a run declares C types or loads a
    -- library.
    local ffi = rawget(loaded, "ffi")
    for _, name in ipairs { "cdef", "load", "metatype" } do watch(ffi, name, mark_foreign) end

    -- Process-wide settings a run may change: their setters are watched, so
    -- that the restore touches them only after a run did.
    local touched = false
    local function mark_touched() touched = true end
    watch(io, "input", mark_touched)
    watch(io, "output", mark_touched)
    watch(debug, "sethook", mark_touched)
    watch(debug, "setmetatable", mark_touched)
    watch(G, "setfenv", mark_touched)
    watch(debug, "setfenv", mark_touched)
    watch(jit, "off", mark_touched)
    watch(G, "collectgarbage", mark_touched)

    local tables = { [G] = copy(G) }
    for _, v in next, G do
        if type(v) == "table" then tables[v] = copy(v) end
    end
    for _, t in ipairs { loaded, package.preload, package.loaders, getmetatable(""), ffi or nil } do
        tables[t] = copy(t)
    end
    -- The functions' environments: only those that are not the globals
    -- (a dozen of some two hundred) are kept; a restore checks them all.
    local metatables, envs = {}, {}
    for t, saved in pairs(tables) do
        metatables[t] = getmetatable(t) or false
        for _, v in next, saved do
            if type(v) == "function" then
                local env = debug_getfenv(v)
                if env ~= G then envs[v] = env end
            end
        end
    end
    local thread_env = getfenv(0)
    -- Values whose type-wide metatable a run could set with debug.setmetatable,
    -- and that metatable now (the string methods; the FFI's, when loaded).
    local typed = { "", 0, false, print, coroutine.create(print), ffi and ffi.new("char") }
    local typed_mt = {}
    for i = 1, #typed do typed_mt[i] = debug_getmetatable(typed[i]) or false end

    local io_input, io_output = io_set_input(), io_set_output()
    local jit_on = jit and jit.status()

    return function()
        local reusable = not foreign and rawget(loaded, "ffi") == ffi
        foreign = false
        for t, saved in pairs(tables) do
            local mt = metatables[t] or nil
            if getmetatable(t) ~= mt and not pcall(setmetatable, t, mt) then reusable = false end
            for k in next, t do
                if saved[k] == nil then rawset(t, k, nil) end
            end
            for k, v in next, saved do
                if rawget(t, k) ~= v then rawset(t, k, v) end
            end
        end
        if touched then
            touched = false
            sethook()
            -- Only where changed: setting a type's metatable flushes all traces.
            for i = 1, #typed do
                local mt = typed_mt[i] or nil
                if debug_getmetatable(typed[i]) ~= mt then debug_setmetatable(typed[i], mt) end
            end
            if debug_getmetatable(nil) ~= nil then debug_setmetatable(nil, nil) end
            io_set_input(io_input)
            io_set_output(io_output)
            if jit_on and not jit.status() then jit.on() end
            -- setfenv(0, t) changes the globals of all code loaded after it.
            if getfenv(0) ~= thread_env then setfenv(0, thread_env) end
            for _, saved in next, tables do
                for _, f in next, saved do
                    if type(f) == "function" then
                        local env = envs[f] or G
                        if debug_getfenv(f) ~= env then debug_setfenv(f, env) end
                    end
                end
            end
            for f, env in next, kept do
                if debug_getfenv(f) ~= env then debug_setfenv(f, env) end
            end
            collectgarbage("restart")
        end
        return reusable
    end
end

return M
