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
local M = {}

local POLL = " __lja_poll() "
local PREFIX = "local __lja_poll = ...; "

local OPENS = { ["function"] = true, ["if"] = true, ["do"] = true, ["repeat"] = true }
local CLOSES = { ["end"] = true, ["until"] = true }

-- The end of a long bracket ([[, [==[) opening at i, or nil.
local function long_bracket_end(src, i)
    local eq = src:match("^%[(=*)%[", i)
    if not eq then return nil end
    local _, e = src:find("]" .. eq .. "]", i + #eq + 2, true)
    return e or #src
end

-- Returns the instrumented source.  `src` must be valid Lua (check it with
-- load first): on invalid input the result is invalid too, not unsafe.
function M.instrument(src)
    local out, n = {}, 0
    local function emit(s) n = n + 1; out[n] = s end
    local i, len = 1, #src
    local depth = 0
    local pending = {}         -- block depths of while/for headers awaiting their do
    local in_params = false    -- after `function`, before its `)`
    local last = 1
    local prev = ""            -- the last character of the last token
    local function flush(upto) emit(src:sub(last, upto)); last = upto + 1 end
    if src:sub(1, 1) == "#" then i = (src:find("\n", 1, true) or len) end   -- shebang line
    while i <= len do
        local c = src:sub(i, i)
        if c == "-" and src:sub(i + 1, i + 1) == "-" then
            i = (long_bracket_end(src, i + 2) or src:find("\n", i, true) or len) + 1
        elseif c == "\"" or c == "'" then
            local j = i + 1
            while j <= len do
                local d = src:sub(j, j)
                if d == "\\" then j = j + 2
                elseif d == c then break
                else j = j + 1 end
            end
            i = j + 1
            prev = c
        elseif c == "[" and long_bracket_end(src, i) then
            i = long_bracket_end(src, i) + 1
            prev = "]"
        elseif c:match("[%a_]") then
            local word = src:match("^[%w_]+", i)
            local wend = i + #word - 1
            local is_field = prev == "." or prev == ":"
            if not is_field then
                if word == "while" or word == "for" then
                    pending[#pending + 1] = depth
                elseif word == "do" then
                    if pending[#pending] == depth then
                        pending[#pending] = nil
                        flush(wend)
                        emit(POLL)
                    end
                    depth = depth + 1
                elseif word == "repeat" then
                    depth = depth + 1
                    flush(wend)
                    emit(POLL)
                elseif word == "goto" then
                    flush(i - 1)
                    emit(POLL)
                elseif word == "function" then
                    depth = depth + 1
                    in_params = true
                elseif OPENS[word] then
                    depth = depth + 1
                elseif CLOSES[word] then
                    depth = depth - 1
                end
            end
            i = wend + 1
            prev = "a"
        elseif c:match("%d") or (c == "." and src:sub(i + 1, i + 1):match("%d")) then
            i = i + #src:match("^[%w_%.]+", i)   -- numbers, hex, exponents (and their signs below)
            while src:sub(i - 1, i - 1):match("[eEpP]") and src:sub(i, i):match("[%+%-]") do
                i = i + 1 + #(src:match("^[%w_%.]*", i + 1))
            end
            prev = "0"
        elseif c == ")" and in_params then
            in_params = false
            flush(i)
            emit(POLL)
            i = i + 1
            prev = ")"
        else
            -- `..` ends a token like any operator: a word after it is no field
            if c == "." and src:sub(i + 1, i + 1) == "." then
                prev = "~"
                i = i + 2
            else
                if not c:match("%s") then prev = c end
                i = i + 1
            end
        end
    end
    flush(len)
    return PREFIX .. table.concat(out)
end

return M
