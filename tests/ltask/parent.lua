-- Spawns two children that talk to it while its file still runs: the first
-- sends to it while the file waits in spawn; the second (spawned by a
-- fork) sends and calls while the file sleeps.
local ltask = require "ltask"
local cs = ...
local S, notes = {}, {}
ltask.spawn("child", ltask.self(), false)
local second
ltask.fork(function() second = ltask.spawn("child", ltask.self(), true) end)
ltask.sleep(cs)
function S.note(v) notes[#notes + 1] = v end
function S.hello(who) return "hello " .. who end
function S.report() return notes, second and ltask.call(second, "greeting") end
return S
