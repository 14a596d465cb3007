-- A service whose file waits (sleeps `cs`) before it returns its handlers.
-- It first has `relay` (an echo service) call it and send to it, so that
-- both reach it while its file still runs.
local ltask = require "ltask"
local relay, cs = ...
ltask.send(relay, "later", ltask.self(), "echo", "early")
ltask.send(relay, "post", ltask.self(), "note", "sent early")
ltask.sleep(cs)
local S, notes = {}, {}
function S.echo(...) return ... end
function S.note(v) notes[#notes + 1] = v end
function S.notes() return notes end
return S
