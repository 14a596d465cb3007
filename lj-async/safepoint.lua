-- lj-async.safepoint: makes Lua source stoppable when it runs as compiled
-- traces (lj-async.pool's timeouts and cancel).
--
-- LuaJIT runs no hooks inside compiled traces, and it hoists a plain load
-- of a flag out of a loop; a real C call cannot be hoisted.  instrument()
-- adds a call of the chunk's first argument, the poll function, at the top
-- of every loop body (while, for, repeat), before every goto, and at the
-- entry of every function (recursion).  Nothing is added on a new line, so
-- line numbers in errors stay those of the source.  The cost is one C call
-- per loop iteration and per function call (a few ns in a trace).
--
-- Functions of an instrumented chunk reach the poll through an upvalue
-- named NAME.  Such a function may still cross states (a job's result):
-- the poll is a field of this module, so it crosses by name and is the
-- receiver's own (lj-async.transfer).
local ffi = require "ffi"
local shim = require "lj-async.shim"
local C = shim.C

ffi.cdef [[
int lja_thread_checkpoint(void);
]]

local byte, find, match, sub = string.byte, string.find, string.match, string.sub
local error, concat = error, table.concat
local thread_poll_c, checkpoint_c = C.lja_thread_poll, C.lja_thread_checkpoint
local CANCELLED = shim.CANCELLED

local M = {}

local NAME = "__lja_poll"
local POLL = " " .. NAME .. "() "
local PREFIX = "local " .. NAME .. " = ...; "
-- A thread's chunk keeps its arguments: it takes this state's poll itself.
local PREFIX_THREAD = "local " .. NAME .. " = require('lj-async.safepoint').poll; "

-- The poll of a state that runs no job nor thread: nothing to stop.  A
-- pool worker's job state sets its own (lj-async.pool).
local function no_poll() end

-- The poll of a thread's state: pauses there while the thread is paused,
-- raises once it is cancelled (README: lj-async.thread).
local function thread_poll()
    if thread_poll_c() ~= 0 and checkpoint_c() ~= 0 then error(CANCELLED, 0) end
end

M.poll = no_poll

-- Called once by the runtime of thread states (lj-async.thread).
function M.for_threads()
    M.poll = thread_poll
end

-- The lexer reads tokens as LuaJIT's does (lj_lex.c): identifier bytes are
-- ASCII letters, digits, '_' and every byte >= 0x80; a number runs on over
-- identifier bytes and '.', and over a sign after 'e' ('p' in hex).
local IDENT, SPACE = {}, {}
for b = 0, 255 do
    IDENT[b] = b >= 128 or b == 95 or (b >= 48 and b <= 57) or (b >= 65 and b <= 90) or (b >= 97 and b <= 122)
end
for _, b in ipairs { 9, 10, 11, 12, 13, 32 } do SPACE[b] = true end
local KEYWORDS = {}
for w in ([[and break do else elseif end false for function if in local nil not or
            repeat return then true until while]]):gmatch("%a+") do KEYWORDS[w] = true end
-- `goto` is a name in LuaJIT (without its Lua 5.2 option) unless a
-- statement starts with it and a name follows: these tokens end a
-- statement or open a block, so a `goto` after one starts a statement.
local ENDS_STATEMENT = {
    name = true, number = true, string = true, [")"] = true, ["]"] = true, ["}"] = true,
    [";"] = true, ["..."] = true, ["end"] = true, ["true"] = true, ["false"] = true, ["nil"] = true,
    ["break"] = true, ["do"] = true, ["then"] = true, ["else"] = true, ["repeat"] = true,
}

-- The end of a long bracket ([[, [==[) opening at i, or nil.
local function long_bracket_end(src, i)
    local eq = match(src, "^%[(=*)%[", i)
    if not eq then return nil end
    local _, e = find(src, "]" .. eq .. "]", i + #eq + 2, true)
    return e or #src
end

local function line_end(src, i)
    return (find(src, "[\r\n]", i) or #src + 1) - 1
end

-- The next token at or after i: its kind ("name", "number", "string", a
-- keyword or an operator, nil at the end), first and last index.
local function token(src, i)
    while true do
        local c = byte(src, i)
        if c == nil then return nil, i, i end
        if SPACE[c] then
            i = i + 1
        elseif c == 45 and byte(src, i + 1) == 45 then   -- "--": a comment
            i = (long_bracket_end(src, i + 2) or line_end(src, i)) + 1
        else
            break
        end
    end
    local c = byte(src, i)
    if IDENT[c] and not (c >= 48 and c <= 57) then
        local j = i
        while IDENT[byte(src, j + 1)] do j = j + 1 end
        local word = sub(src, i, j)
        return KEYWORDS[word] and word or "name", i, j
    elseif (c >= 48 and c <= 57) or (c == 46 and (byte(src, i + 1) or 0) >= 48 and (byte(src, i + 1) or 0) <= 57) then
        local j = c == 46 and i + 1 or i
        local last, xp = byte(src, j), 101   -- 'e'
        if last == 48 and bit.bor(byte(src, j + 1) or 0, 32) == 120 then xp = 112 end   -- "0x": 'p'
        while true do
            local d = byte(src, j + 1)
            if d and (IDENT[d] or d == 46 or ((d == 43 or d == 45) and bit.bor(last, 32) == xp)) then
                last, j = d, j + 1
            else
                return "number", i, j
            end
        end
    elseif c == 34 or c == 39 then   -- a quoted string
        local j = i + 1
        while true do
            local d = byte(src, j)
            if d == nil or d == c or d == 10 or d == 13 then return "string", i, j end
            if d == 92 then   -- an escape: "\z" skips white space, "\" a line end (\r\n, \n\r)
                d = byte(src, j + 1)
                if d == 122 then
                    j = j + 2
                    while SPACE[byte(src, j)] do j = j + 1 end
                elseif (d == 10 and byte(src, j + 2) == 13) or (d == 13 and byte(src, j + 2) == 10) then
                    j = j + 3
                else
                    j = j + 2
                end
            else
                j = j + 1
            end
        end
    elseif c == 91 then   -- '['
        local e = long_bracket_end(src, i)
        if e then return "string", i, e end
        return "[", i, i
    elseif c == 46 then   -- '.', "..", "..."
        if byte(src, i + 1) ~= 46 then return ".", i, i end
        if byte(src, i + 2) == 46 then return "...", i, i + 2 end
        return "..", i, i + 1
    elseif c == 58 and byte(src, i + 1) == 58 then
        return "::", i, i + 1
    end
    local two = sub(src, i, i + 1)
    if two == "==" or two == "~=" or two == "<=" or two == ">=" then return two, i, i + 1 end
    return sub(src, i, i), i, i
end

-- Returns the instrumented source, a chunk called with the poll as its
-- first argument, or, for a thread, one that takes this state's poll and
-- keeps its arguments.  `src` must be valid Lua (check it with load first):
-- on invalid input the result is invalid too, not unsafe.
function M.instrument(src, for_thread)
    local out, n, last = { for_thread and PREFIX_THREAD or PREFIX }, 1, 1
    local function emit_poll(after)
        out[n + 1], out[n + 2], n, last = sub(src, last, after), POLL, n + 2, after + 1
    end
    local i = 1
    -- LuaJIT skips a UTF-8 byte order mark, then a first line starting
    -- with '#'; behind the prefix, that line becomes a comment.
    if sub(src, 1, 3) == "\239\187\191" then i, last = 4, 4 end
    if byte(src, i) == 35 then
        out[2], n = "--", 2
        i = line_end(src, i) + 1
    end
    local depth = 0
    local pending = {}         -- block depths of while/for headers awaiting their do
    local in_params = false    -- after `function`, before its `)`
    local in_label = false     -- between the `::` of a label
    local prev = ";"           -- the kind of the last token
    while true do
        local kind, s, e = token(src, i)
        if kind == nil then break end
        if kind == "while" or kind == "for" then
            pending[#pending + 1] = depth
        elseif kind == "do" then
            if pending[#pending] == depth then
                pending[#pending] = nil
                emit_poll(e)
            end
            depth = depth + 1
        elseif kind == "repeat" then
            depth = depth + 1
            emit_poll(e)
        elseif kind == "function" then
            depth = depth + 1
            in_params = true
        elseif kind == "if" then
            depth = depth + 1
        elseif kind == "end" or kind == "until" then
            depth = depth - 1
        elseif kind == ")" and in_params then
            in_params = false
            emit_poll(e)
        elseif kind == "name" and ENDS_STATEMENT[prev] and sub(src, s, e) == "goto"
            and token(src, e + 1) == "name" then
            emit_poll(s - 1)
        elseif kind == "::" then
            in_label = not in_label
            if not in_label then kind = ";" end   -- a label ends like a statement
        end
        prev, i = kind, e + 1
    end
    out[n + 1] = sub(src, last)
    return concat(out)
end

return M
