-- A function crossing states: encode+decode of a message holding one
-- function (lj-async.transfer, as a channel or a thread's arguments do it),
-- with 3 upvalues (a number, a table, string.format by name) beside the
-- same function without upvalues.
local transfer = require "lj-async.transfer"
local B = require "bench.common"

local function rate(f, n)
    return function()
        local encode, decode = transfer.encode, transfer.decode
        local t0 = B.now()
        for _ = 1, n do
            local p, len = encode(1, f)
            local _, g = decode(p, len)
            if g == nil then error("lost") end
        end
        return n / (B.now() - t0)
    end
end

local plain = function(x, y) return ("%d %s"):format(x * 2, y) end
local scale, names, format = 2, { "a", "b" }, string.format
local closure = function(x, i) return format("%d %s", x * scale, names[i]) end

return function()
    assert(select(2, transfer.decode(transfer.encode(1, plain)))(1, "a") == "2 a")
    local without = B.median(rate(plain, 100000))
    local with = pcall(transfer.encode, 1, closure) and B.median(rate(closure, 100000))
    return {
        { "function, 3 upvalues: encode+decode", with or 0, "fns/s", "no upvalues", without, "" },
    }
end
