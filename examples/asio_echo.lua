-- An echo server on asio.serve: one port served by one loop per CPU, each
-- thread with its own SO_REUSEPORT listener.  Then a client in this state's
-- own loop talks to it.  From the repository root, after the build:
--   luajit examples/asio_echo.lua
local asio = require "lj-async.asio"

local group = assert(asio.serve {
    host = "127.0.0.1", port = 0,   -- 0: a free port, shared by every thread
    -- A factory (setup = true) runs once in each thread with `args` and
    -- returns the handler; the handler runs in a light thread per
    -- connection, which is closed when it returns.
    setup = true, args = { "echo: " },
    handler = function(prefix)
        return function(con)
            con:settimeouts(10, 10)   -- idle clients go after 10 s
            while true do
                local line, err = con:read_line()
                if not line then return end           -- "closed", "timeout", ...
                if not con:write({ prefix, line, "\n" }) then return end
            end
        end
    end,
})
print("serving on port " .. group:port())

asio.spawn(function()
    local con = assert(asio.connect("localhost", group:port(), 5))
    for _, word in ipairs { "one", "two", "three" } do
        con:write(word .. "\n")
        print(con:read_line())
    end
    con:close()
end)
asio.run()
group:stop(1)   -- stop accepting, give open connections 1 s, join the threads
