-- lj-async.transfer_slow: the slow path of lj-async.transfer (see there):
-- special values, functions and their upvalues, tables nested past
-- string.buffer's depth, and the errors that name what cannot cross.
-- lj-async.transfer loads it when a message first needs it and calls what
-- this returns with what the two share (its buffers, metatables, kinds and
-- reference lists); that gives back the slow encode and decode.
local buffer = require "string.buffer"
local clear = require "table.clear"

local type, select, pcall, error, next, tostring, tonumber = type, select, pcall, error, next, tostring, tonumber
local setmetatable, getmetatable = setmetatable, getmetatable
local string_dump, getupvalue, getinfo = string.dump, debug.getupvalue, debug.getinfo
local setupvalue, upvalueid, upvaluejoin = debug.setupvalue, debug.upvalueid, debug.upvaluejoin
local band, rshift = bit.band, bit.rshift

-- lj-async.transfer's, set by the function this returns (FFI() loads the
-- FFI once a value needs it).
local FFI, enc, dec, SPECIAL, NODE, SIMPLE, kinds_by_ctype, kinds_by_name
local exported, exported_kinds, anchors, imported, imported_kinds, release_all

-- How a cdata of a ctype crosses: "copy" (what string.buffer encodes:
-- int64_t, uint64_t, complex; asking it keeps both paths to one rule),
-- "address" (pointers, arrays, structs and references, as LuaJIT converts
-- them for a void * parameter), or false.
local CT_STRUCT, CT_PTR, CT_ARRAY, CT_TYPEDEF, CT_ATTRIB = 1, 2, 3, 7, 8
local cdata_class = {}
local function classify(id, v)
    local c = cdata_class[id]
    if c == nil then
        local raw, t = id
        repeat   -- through attributes and typedefs to the type itself
            local info = FFI().typeinfo(raw).info
            t, raw = rshift(info, 28), band(info, 0xffff)
        until t ~= CT_ATTRIB and t ~= CT_TYPEDEF
        if pcall(buffer.encode, v) then
            c = "copy"
        elseif (t == CT_PTR or t == CT_ARRAY or t == CT_STRUCT) and pcall(FFI().cast, "void *", v) then
            c = "address"
        else
            c = false
        end
        cdata_class[id] = c
    end
    return c
end

local function where(path, k)
    if type(k) == "string" and k:match("^[%a_][%w_]*$") then return path .. "." .. k end
    return path .. "[" .. tostring(k) .. "]"
end

-- The path of the value under keys[1..d] of `base`: an argument number
-- (0 or less: lj-async's own value before the arguments, the code to run),
-- or { base, keys, d } for the value there, with key = true for a table
-- used as a key there, or up = name for an upvalue of the function there.
-- Built for errors only.
local function path_of(base, keys, d)
    local path
    if type(base) == "number" then
        path = base > 0 and "argument " .. base or ""
    else
        path = path_of(base[1], base[2], base[3])
        if base.key then
            path = where(path, "<key>")
        elseif base.up then
            path = (path == "" and "" or path .. ", ") .. "upvalue '" .. base.up .. "'"
        end
    end
    for i = 1, d do path = where(path, keys[i]) end
    return path
end

local function cannot(what, path)
    error("lj-async: cannot send " .. what .. (path == "" and "" or " (" .. path .. ")"), 0)
end

-- Values that cross by name: value -> { module } or { module, field }, for
-- package.loaded's modules that a receiver can require (the standard
-- library, package.preload, package.path and package.cpath; a receiver has
-- its sender's paths) and their fields.  Of _G, only C functions (print,
-- pairs...): other globals are the user's, copied as any value.
local names, loaded_seen, loaded_count   -- the table; package.loaded as it was built from
local STANDARD = { "_G", "string", "table", "math", "io", "os", "coroutine", "debug", "package",
    "bit", "jit", "ffi" }
local NAMED = { table = true, ["function"] = true, userdata = true }

local function requirable(name)
    if package.preload[name] then return true end
    for _, path in ipairs { package.path, package.cpath } do
        if type(path) == "string" and package.searchpath(name, path) then return true end
    end
    local root = name:match("^([^.]+)%.")   -- the all-in-one loader
    return root ~= nil and type(package.cpath) == "string" and package.searchpath(root, package.cpath) ~= nil
end

local function build_names()
    local loaded = package.loaded
    local t, snapshot, count, order = {}, {}, 0, {}
    for _, name in ipairs(STANDARD) do
        if loaded[name] ~= nil then order[#order + 1], snapshot[name] = name, loaded[name] end
    end
    for name, v in next, loaded do
        count = count + 1
        if snapshot[name] == nil then
            snapshot[name] = v
            if type(name) == "string" and NAMED[type(v)] and requirable(name) then order[#order + 1] = name end
        end
    end
    for _, name in ipairs(order) do
        local v = loaded[name]
        if t[v] == nil then t[v] = { name } end
    end
    for _, name in ipairs(order) do
        local m = loaded[name]
        if type(m) == "table" then
            for k, v in next, m do
                if type(k) == "string" and t[v] == nil and NAMED[type(v)]
                    and (m ~= _G or (type(v) == "function" and getinfo(v, "S").what == "C")) then
                    t[v] = { name, k }
                end
            end
        end
    end
    names, loaded_seen, loaded_count = t, snapshot, count
end

-- The names table, rebuilt if package.loaded has changed since; checked
-- once per message.
local names_checked
local function names_table()
    if names_checked then return names end
    names_checked = true
    if names then
        local n = 0
        for name, v in next, package.loaded do
            if loaded_seen[name] ~= v then n = -1 break end
            n = n + 1
        end
        if n ~= loaded_count then names = nil end
    end
    if not names then build_names() end
    return names
end

-- The slow path's message: what each slot is, the stand-in of each value
-- already met, and the parts of deep tables.
local specials, memo, nodes
-- The tables being copied (a table met again among them is a cycle).
local seen = {}
-- Tables that a function captured while they were being copied in place:
-- the encode starts again and copies them as nodes of their own, which
-- the function can refer to (a cycle through a function is no cycle).
local promote
local RESTART = {}
-- While a message with functions is encoded: each upvalue met (upvalueid
-- -> slot * 256 + index: those of a function have indexes below 256), and
-- how deep in upvalues the encode is (by name applies there).
local upvalues, up_depth = nil, 0

local copy_table

local function add_node(t)
    nodes = nodes or {}
    nodes[#nodes + 1] = t
    return setmetatable({ #nodes }, NODE)
end

local function add_special(v, slot)
    specials[#specials + 1] = slot
    local s = setmetatable({ #specials }, SPECIAL)
    memo[v] = s
    return s
end

-- A table captured by a function: its stand-in, a node of the message (one
-- per table: functions that capture one table share it there).
local function node_of(t, base)
    local s = memo[t]
    if s then return s end
    if seen[t] then
        if promote and promote[t] then cannot("a table with a cycle", path_of(base, nil, 0)) end
        promote = promote or {}
        promote[t] = true
        error(RESTART, 0)
    end
    local copy = {}
    s = add_node(copy)
    memo[t] = s
    copy_table(t, base, copy)
    return s
end

local stand_in

-- Puts in slot (number n) the values of function f's upvalues, as
-- { [index] = value }, and the upvalues f shares with a function met
-- before, as { index, slot, index, ... }.  f was at `base`.
local function capture(f, slot, n, base, keys, d, key)
    if key then base, keys, d = { base, keys, d, key = true }, nil, 0 end
    local ups, joins = {}, nil
    up_depth = up_depth + 1
    for i = 1, 255 do
        local name, x = getupvalue(f, i)
        if name == nil then break end
        local id = upvalueid(f, i)
        upvalues = upvalues or {}
        local other = upvalues[id]
        if other then
            joins = joins or {}
            joins[#joins + 1], joins[#joins + 2], joins[#joins + 3] = i, rshift(other, 8), band(other, 255)
        else
            upvalues[id] = n * 256 + i
            if not SIMPLE[type(x)] then
                local s, what = memo[x], nil
                if s then
                    x = s
                elseif type(x) == "table" then
                    local named = names_table()[x]
                    x = named and add_special(x, { "name", named[1], named[2] })
                        or node_of(x, { base, keys, d, up = name })
                else
                    local at = { base, keys, d, up = name }
                    s, what = stand_in(x, at, nil, 0)
                    if s == nil then cannot(what, path_of(at, nil, 0)) end
                    x = s
                end
            end
            ups[i] = x
        end
    end
    up_depth = up_depth - 1
    slot[3], slot[4] = ups, joins
end

-- A special value's stand-in (an int64 or complex cdata: itself), or nil
-- and what the value is when it cannot cross.  It was at keys[1..d] of
-- base (a key there if `key`), for the paths of a function's upvalues.
function stand_in(v, base, keys, d, key)
    local s = memo[v]
    if s then return s end
    local tv, slot = type(v)
    if up_depth > 0 and (tv == "function" or tv == "userdata") then
        local named = names_table()[v]
        if named then return add_special(v, { "name", named[1], named[2] }) end
    end
    if tv == "function" then
        local ok, bc = pcall(string_dump, v)
        if not ok then
            if getinfo(v, "S").what == "C" then return nil, "a C function" end
            return nil, "a function that string.dump refuses (" .. tostring(bc) .. ")"
        end
        slot = { "function", bc }
        if getupvalue(v, 1) then   -- in place first: it may be among its upvalues
            s = add_special(v, slot)
            capture(v, slot, #specials, base, keys, d, key)
            return s
        end
    elseif tv == "cdata" then
        local typeof, cast = FFI().typeof, FFI().cast
        local id = tonumber(typeof(v))
        local kind = kinds_by_ctype[id]
        if kind then
            local oid, ref = kind.export(v)
            exported[#exported + 1] = ref
            exported_kinds[#exported] = kind
            slot = { "object", kind.module, kind.name, oid }
        else
            local class = classify(id, v)
            if class == "copy" then return v end
            if not class then return nil, "a cdata of type " .. tostring(typeof(v)):match("^ctype<(.*)>$") end
            anchors[#anchors + 1] = v
            slot = { "pointer", cast("uintptr_t", cast("void *", v)) }
        end
    else
        return nil, tv == "thread" and "a coroutine" or "a " .. tv
    end
    return add_special(v, slot)
end

-- string.buffer refuses tables nested past 100 levels, a recursion bound.
-- The slow path copies tables with a stack of its own, and every CUT levels
-- sends the rest apart, as a node of the message: any depth crosses.
local CUT = 64
local SIMPLE_KEY = { number = true, string = true, boolean = true }

-- A copy of table `root` (into `copy` if given) with stand-ins for special
-- values; raises on what cannot cross.  `base` names root (see path_of).
-- Frame d of the stack is frames[f+1..f+3], f = 3(d-1): a table being
-- copied, its copy and its level within its node; keys[d] is the key being
-- copied.
function copy_table(root, base, copy)
    if seen[root] then cannot("a table with a cycle", path_of(base, nil, 0)) end
    seen[root] = true
    copy = copy or {}
    local frames, keys = { root, copy, 1 }, {}
    local d, f = 1, 0   -- f: frame d's offset in frames
    while d > 0 do
        local src, dst = frames[f + 1], frames[f + 2]
        local k, x = next(src, keys[d])
        if k == nil then
            seen[src] = nil
            frames[f + 1], frames[f + 2] = nil, nil
            d, f = d - 1, f - 3
        else
            keys[d] = k
            local tk = type(k)
            if tk == "table" then
                local at = { base, keys, d - 1, key = true }
                k = promote and promote[k] and node_of(k, at) or add_node(copy_table(k, at))
            elseif not SIMPLE_KEY[tk] then
                local s, what = stand_in(k, base, keys, d - 1, true)
                if s == nil then cannot(what .. " as a table key", path_of(base, keys, d - 1)) end
                k = s
            end
            local tx = type(x)
            local named = up_depth > 0 and tx == "table" and names_table()[x]
            if named then   -- a module inside a captured table: by name
                dst[k] = memo[x] or add_special(x, { "name", named[1], named[2] })
            elseif tx == "table" then
                if seen[x] then cannot("a table with a cycle", path_of(base, keys, d)) end
                if promote and promote[x] then
                    dst[k] = node_of(x, { base, keys, d })
                else
                    seen[x] = true
                    local t, level = {}, frames[f + 3] + 1
                    if level > CUT then
                        dst[k], level = add_node(t), 1
                    else
                        dst[k] = t
                    end
                    d, f = d + 1, f + 3
                    frames[f + 1], frames[f + 2], frames[f + 3], keys[d] = x, t, level, nil
                end
            elseif SIMPLE[tx] then
                dst[k] = x
            else
                local s, what = stand_in(x, base, keys, d)
                if s == nil then cannot(what, path_of(base, keys, d)) end
                dst[k] = s
            end
        end
    end
    return copy
end

local function convert(v, arg)
    if type(v) == "table" then
        if promote and promote[v] then return node_of(v, arg) end
        return copy_table(v, arg)
    end
    local s, what = stand_in(v, arg, nil, 0)
    if s == nil then cannot(what, path_of(arg, nil, 0)) end
    return s
end

local function encode_slow(hidden, n, ...)
    enc:encode(-n - 1)
    for i = 1, n do
        local v = select(i, ...)
        if not SIMPLE[type(v)] then v = convert(v, i - hidden) end
        enc:encode(v)
    end
    enc:encode(specials):encode(nodes or false)
end

local function encode_special(hidden, level, n, ...)
    local ok, err
    repeat
        specials, memo, names_checked = {}, {}, false
        ok, err = pcall(encode_slow, hidden, n, ...)
        specials, memo, nodes, upvalues, up_depth = nil, nil, nil, nil, 0
        if not ok then
            release_all(exported, exported_kinds)
            clear(anchors)
            seen = {}
            enc:reset()
        end
    until err ~= RESTART
    promote = nil
    if not ok then error(err, level) end
end

-- While a slow-path message is rebuilt: its special values and its nodes.
local made, parts

local function make(s)
    local tag = s[1]
    if tag == "function" then return assert(load(s[2])) end   -- its upvalues: set_upvalues
    if tag == "pointer" then return FFI().cast("void *", s[2]) end
    if tag == "name" then
        local m = require(s[2])
        if s[3] == nil then return m end
        local v = type(m) == "table" and m[s[3]] or nil
        if v == nil then error("lj-async: module '" .. s[2] .. "' has no field '" .. s[3] .. "' here", 0) end
        return v
    end
    local kind = kinds_by_name[s[3]]
    if not kind then
        require(s[2])   -- the module that defines the kind registers it
        kind = kinds_by_name[s[3]]
    end
    local obj, ref = kind.import(s[4])
    imported[#imported + 1] = ref
    imported_kinds[#imported] = kind
    return obj
end

-- Every table in a slow-path message that has a metatable is a stand-in.
local function restore(x, mt)
    if mt == SPECIAL then return made[x[1]] end
    return parts[x[1]]
end

-- Puts values for the stand-ins of t in place, keys too; nodes are
-- rebuilt on their own, so this goes no deeper than CUT levels.
local function rebuild(t)
    local moved
    for k, x in next, t do
        if type(x) == "table" then
            local mt = getmetatable(x)
            if mt then t[k] = restore(x, mt) else rebuild(x) end
        end
        if type(k) == "table" then   -- a key may change only after the walk
            moved = moved or {}
            moved[#moved + 1] = k
        end
    end
    if moved then
        for i = 1, #moved do
            local k = moved[i]
            local x = t[k]
            t[k] = nil
            t[restore(k, getmetatable(k))] = x
        end
    end
end

-- Gives the functions of a message their upvalues, once every special
-- value and node is made, then joins those they shared (see capture).
local function set_upvalues(specials)
    local joined
    for i = 1, #specials do
        local s = specials[i]
        local ups = s[1] == "function" and s[3]
        if ups then
            local f = made[i]
            rebuild(ups)
            for j, x in next, ups do setupvalue(f, j, x) end
            joined = joined or s[4]
        end
    end
    if not joined then return end
    for i = 1, #specials do
        local s, joins = specials[i], specials[i][4]
        if s[1] == "function" and joins then
            for k = 1, #joins, 3 do upvaluejoin(made[i], joins[k], made[joins[k + 1]], joins[k + 2]) end
        end
    end
end

local function decode_special(n)
    local vals = {}
    for i = 1, n do vals[i] = dec:decode() end
    local specials = dec:decode()
    made, parts = {}, dec:decode()
    for i = 1, #specials do made[i] = make(specials[i]) end
    if parts then
        for i = 1, #parts do rebuild(parts[i]) end
    end
    set_upvalues(specials)
    for i = 1, n do
        local v = vals[i]
        if type(v) == "table" then
            local mt = getmetatable(v)
            if mt then vals[i] = restore(v, mt) else rebuild(v) end
        end
    end
    made, parts = nil, nil
    return n, unpack(vals, 1, n)
end

return function(t)
    FFI, enc, dec, SPECIAL, NODE, SIMPLE = t.FFI, t.enc, t.dec, t.SPECIAL, t.NODE, t.SIMPLE
    kinds_by_ctype, kinds_by_name = t.kinds_by_ctype, t.kinds_by_name
    exported, exported_kinds, anchors = t.exported, t.exported_kinds, t.anchors
    imported, imported_kinds, release_all = t.imported, t.imported_kinds, t.release_all
    return encode_special, decode_special, classify
end
