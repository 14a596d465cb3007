-- An exclusive service that talks to tests/ltask/asio_echo.lua over TCP,
-- mixing lj-async.asio's waits and ltask's in its coroutines.
local ltask = require "ltask"
local asio = require "lj-async.asio"

local S = {}

-- n lines through the echo server, calling it and sleeping between them.
function S.talk(port, srv, n)
    local con = assert(asio.connect("127.0.0.1", port, 5))
    local got, counts = {}, {}
    for i = 1, n do
        assert(con:write(i .. "\n"))
        if i % 10 == 0 then ltask.sleep(1) end
        got[i] = tonumber((assert(con:read_line(5))))
        counts[i] = ltask.call(srv, "served")
    end
    -- a light thread (an ltask fork) mixes them too; the handler joins it
    local lt = asio.spawn_light_thread(function()
        assert(con:write("lt\n"))
        asio.sleep(0.01)
        local line = con:read_line(5)
        return line, ltask.call(srv, "served")
    end)
    local joined = { lt:join(5) }
    con:close()
    return { got = got, counts = counts, joined = joined }
end

local held

-- A connection kept open, with a line echoed (so the server accepted it).
function S.hold(port)
    held = assert(asio.connect("127.0.0.1", port, 5))
    assert(held:write("x\n"))
    return held:read_line(5)
end

-- Asks the server to quit through the held connection (it echoes that
-- line still: a quit takes effect when the light thread next waits).
function S.say_quit()
    assert(held:write("quit\n"))
    return held:read_line(5) == "quit"
end

-- After the server quit or was killed: the held connection ends, the port
-- refuses.
function S.after(port)
    local t0 = asio.now()
    local line, err = held:read_line(5)
    local ended = asio.now() - t0
    local con, cerr = asio.connect("127.0.0.1", port, 2)
    if con then con:close() end
    return { line = line, err = err, ended = ended, connect = cerr }
end

return S
