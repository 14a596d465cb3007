-- An exclusive service whose file returns no handlers: its open server
-- keeps it alive; it echoes one line, closes the server, and so ends.
local asio = require "lj-async.asio"
local ch = ...
local srv
srv = assert(asio.server("127.0.0.1", 0, function(con)
    asio.spawn_light_thread(function()
        con:write((con:read_line(5) or "?") .. "\n")
        con:close()
        srv:close()
    end)
end))
ch:send(srv:port())
