-- An exclusive service running an lj-async.asio line echo server on a free
-- port, which answers ltask calls as it serves.
local ltask = require "ltask"
local asio = require "lj-async.asio"

local served = 0
local srv = assert(asio.server("127.0.0.1", 0, function(con)
    asio.spawn_light_thread(function()
        while true do
            local line = con:read_line()
            if not line then break end
            if line == "quit" then ltask.quit() end   -- the service ends from a light thread
            served = served + 1
            con:write(line .. "\n")
        end
        con:close()
    end)
end))

local S = {}

function S.port()
    return srv:port()
end

function S.served()
    return served
end

-- The loop is the service's: run, run_once and stop raise.
function S.run_raises()
    local r = {}
    for _, name in ipairs { "run", "run_once", "stop" } do
        local ok, err = pcall(asio[name])
        r[name] = not ok and tostring(err)
    end
    return r
end

-- Waiting in an accept handler raises, as outside services.
function S.wait_in_accept()
    local err
    local s2 = assert(asio.server("127.0.0.1", 0, function(con)
        local ok, e = pcall(con.read, con, 1)
        err = not ok and tostring(e)
        con:close()
    end))
    local c = assert(asio.connect("127.0.0.1", s2:port(), 5))
    local _, cerr = c:read(1, 5)
    c:close()
    s2:close()
    return err, cerr
end

function S.quit()
    ltask.quit()
    return true
end

return S
