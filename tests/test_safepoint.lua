-- lj-async.safepoint: the instrumenter reads Lua the way LuaJIT does.  Its
-- output is checked against LuaJIT's own parser, on tricky snippets and on
-- every .lua file of this repository and of the installed Lua packages: it
-- compiles, every function keeps its lines, and every loop of the compiled
-- bytecode runs a poll.
local lu = require "luaunit"
local safepoint = require "lj-async.safepoint"
local jutil = require "jit.util"
local bcnames = require("jit.vmdef").bcnames
local H = require "tests.helpers"

local band, shr = bit.band, bit.rshift
local funcbc, funcinfo, funck, funcuvname = jutil.funcbc, jutil.funcinfo, jutil.funck, jutil.funcuvname

-- The prototypes of f and of all functions nested in it, in one order.
local function protos(f, out)
    out = out or {}
    out[#out + 1] = f
    for i = -1, -funcinfo(f).gcconsts, -1 do
        local k = funck(f, i)
        if type(k) == "proto" then protos(k, out) end
    end
    return out
end

local function opname(ins)
    local o = band(ins, 0xff)
    return (bcnames:sub(o * 6 + 1, o * 6 + 6):gsub(" ", ""))
end

-- Whether the instruction at pc reads the poll: in the main chunk the
-- prefix's local is slot 0, which nothing else can name; in a nested
-- function it is the upvalue of that name.
local function is_poll(p, main, pc)
    local ins = funcbc(p, pc)
    if not ins then return false end
    local op, d = opname(ins), shr(ins, 16)
    if main then return op == "MOV" and d == 0 end
    return op == "UGET" and funcuvname(p, d) == "__lja_poll"
end

-- Problems of the instrumented prototype p against the original q (nil:
-- none): same lines, a poll in the range of every backward jump (every
-- loop: while, repeat, for, goto) and at a nested function's entry.
local function check_proto(p, q, main)
    local pi, qi = funcinfo(p), funcinfo(q)
    if pi.linedefined ~= qi.linedefined or pi.lastlinedefined ~= qi.lastlinedefined then
        return ("function at line %d-%d is at %d-%d once instrumented"):format(
            qi.linedefined, qi.lastlinedefined, pi.linedefined, pi.lastlinedefined)
    end
    local lines = {}
    for pc = 1, pi.bytecodes - 1 do
        local line = funcinfo(p, pc).currentline
        if line < qi.linedefined or (not main and line > qi.lastlinedefined) then
            return ("an instruction of the function at line %d is on line %d"):format(qi.linedefined, line)
        end
        lines[line] = true
    end
    for pc = 1, qi.bytecodes - 1 do
        local line = funcinfo(q, pc).currentline
        if not lines[line] then return "no instruction is left on line " .. line end
    end
    if not main and not (is_poll(p, false, 1) or is_poll(p, false, 2)) then
        return ("the function at line %d does not poll on entry"):format(qi.linedefined)
    end
    for pc = 1, pi.bytecodes - 1 do
        local ins, m = funcbc(p, pc)
        if band(m, 15 * 128) == 13 * 128 then   -- a jump
            local target = pc + shr(ins, 16) - 0x7fff
            if target <= pc then
                local polled = false
                for at = target, pc do polled = polled or is_poll(p, main, at) end
                if not polled then
                    return ("the loop on line %d has no poll"):format(funcinfo(p, pc).currentline)
                end
            end
        end
    end
end

-- Problems of instrumenting src (nil: none); nil, "skip" when LuaJIT
-- itself does not compile src.
local function check(src, name)
    local q = load(src, "=" .. name)
    if not q then return nil, "skip" end
    local p, err = load(safepoint.instrument(src), "=" .. name)
    if not p then return "the instrumented source does not compile: " .. err end
    local ps, qs = protos(p), protos(q)
    if #ps ~= #qs then return ("%d functions, %d once instrumented"):format(#qs, #ps) end
    for i = 1, #ps do
        local problem = check_proto(ps[i], qs[i], i == 1)
        if problem then return problem end
    end
end

TestSafepoint = {}

-- Tokens the old lexer misread, and every other kind LuaJIT knows.
local SNIPPETS = {
    varargs_then_keyword = "local x = ... while x do x = false end",
    varargs_in_table = "local t = {...} for i = 1, #t do end",
    varargs_concat = "local s = ... .. 'x' repeat s = nil until not s",
    concat_then_keyword = "local s = 'a'..'b' while false do end",
    field_chain = "local t = { a = { b = 1 } } local x = t.a.b for k in pairs(t) do end",
    method = "local t = {} function t.a(...) end function t:b(x) end t:b(1) while false do end",
    numbers = "local a, b, c, d, e = 0x1p4, 1e-3, .5, 3., 0x.8p1 while false do end",
    number_suffixes = "local a, b, c = 0x10LL, 1ULL, 12i while false do end",
    hex_e_is_a_digit = "local a = 0x1e+1 while a > 100 do end",
    number_concat = "local s = 1 .. 2 while false do end",
    escapes = [[local s = "\"while\" \\" .. '\'' .. "\x41\u{48}\65" while false do end]],
    escape_z = "local s = \"a\\z\n   while\" while false do end",
    escaped_newline = "local s = \"a\\\nwhile do\" while false do end",
    escaped_crlf = "local s = \"a\\\r\nwhile do\" .. 'b\\\n\rdo' while false do end",
    escape_z_crlf = "local s = \"a\\z \r\n\t while\" while false do end",
    long_strings = "local s = [==[ ]] while ]=] ]==] .. [[\nfor]] while false do end",
    long_comments = "--[[ while ]] --[==[ ]] ]=] do\n]==] while false do end -- for",
    comment_at_eof = "while false do end -- for",
    index_with_long_string = "local t = {} t[ [[k]] ] = 1 local f = print f[[while]] while false do end",
    cr_line_ends = "-- comment\rlocal x = 1\r\nwhile false do end\n\rrepeat until true",
    utf8_names = "local \195\169while = 1 while \195\169while do \195\169while = false end",
    shebang = "#!/usr/bin/env luajit\nwhile false do end",
    bom_shebang = "\239\187\191#!/usr/bin/env luajit\nwhile false do end",
    bom = "\239\187\191while false do end",
    goto_loop = "local n = 0 ::top:: n = n + 1 if n < 3 then goto top end",
    goto_continue = "for i = 1, 3 do if i == 2 then goto continue end ::continue:: end",
    goto_as_name = "local goto = 1 goto = goto + 1 local t = { goto = goto } t.goto = 2 while false do end",
    goto_as_value = "local goto, y = 1 x = goto y = 1 while false do end",
    goto_field_value = "local t = { goto = 1 } x = t.goto y = 2 while false do end",
    goto_after_statement = "local x = 1 goto skip x = 2 ::skip:: while false do end",
    functions_in_headers = "for i = 1, (function() return 1 end)() do end "
        .. "while (function() do end return false end)() do end",
    nested_loops = "for i = 1, 2 do for j = 1, 2 do while false do repeat until true end end end",
    closures_in_loops = "local fs = {} for i = 1, 3 do local y = i fs[i] = function() return y end end",
    semicolons = "local a; while false do local b; end; local c;",
    keyword_like_names = "local endx, whiley, dofoo = 1, 2, 3 while false do end",
    comparison_ops = "local a = 1 ~= 2 and 1 <= 2 and 2 >= 1 and 1 == 1 while not a do end",
}

function TestSafepoint:test_tricky_tokens()
    local failed = {}
    for name, src in pairs(SNIPPETS) do
        lu.assertNotNil(load(src), name .. " is valid Lua")
        local problem = check(src, name)
        if problem then failed[#failed + 1] = name .. ": " .. problem .. "\n" .. safepoint.instrument(src) end
    end
    table.sort(failed)
    lu.assertEquals(failed, {})
end

-- A spinning chunk stops at its poll, whatever precedes the loop.
function TestSafepoint:test_spins_stop()
    local results = {}
    for name, src in pairs {
        varargs = "local x = ... while true do end",
        varargs_call = "local n = select('#', ...) while true do end",
        goto_loop = "::a:: goto a",
        recursion = "local function f() return f() end return f()",
    } do
        local polls = 0
        local f = assert(load(safepoint.instrument(src)))
        -- Bounded: interpreted, a count hook ends it if no poll does.
        jit.off(f, true)
        debug.sethook(function() error("no poll stopped it", 0) end, "", 1e7)
        local ok, err = pcall(f, function()
            polls = polls + 1
            if polls == 1000 then error("stopped", 0) end
        end)
        debug.sethook()
        results[name] = ok and "ended" or err
    end
    lu.assertEquals(results, { varargs = "stopped", varargs_call = "stopped", goto_loop = "stopped", recursion = "stopped" })
end

-- The .lua files under dir (recursively, skipping build trees and hidden
-- directories) into list.
local function lua_files(dir, list, depth)
    for _, name in ipairs(H.listdir(dir)) do
        local path = dir .. "/" .. name
        if name:match("%.lua$") then
            list[#list + 1] = path
        elseif not name:match("^%.") and not name:match("^build") and depth < 8 then
            lua_files(path, list, depth + 1)
        end
    end
    return list
end

function TestSafepoint:test_corpus()
    local files = lua_files(".", {}, 0)
    local own = #files
    for _, dir in ipairs { "/usr/share/lua", "/usr/local/share/lua", "/usr/share/doc" } do
        for _, name in ipairs(H.listdir(dir)) do
            if not name:match("^%.") and (dir ~= "/usr/share/doc" or name:match("lua")) then
                lua_files(dir .. "/" .. name, files, 1)
            end
        end
    end
    for _, name in ipairs(H.listdir("/usr/share")) do
        if name:match("^luajit") then lua_files("/usr/share/" .. name, files, 1) end
    end
    local t0, checked, failed = H.now(), 0, {}
    for _, path in ipairs(files) do
        local src = H.read(path)
        if src then
            local problem, skip = check(src, path)
            if not skip then checked = checked + 1 end
            if problem then failed[#failed + 1] = path .. ": " .. problem end
        end
    end
    lu.assertEquals(failed, {})
    lu.assertTrue(own > 40 and checked >= own, ("%d of %d files checked"):format(checked, #files))
    print(("\n  %d files checked (%d skipped: not LuaJIT syntax) in %.2f s"):format(
        checked, #files - checked, H.now() - t0))
end

os.exit(lu.LuaUnit.run())
