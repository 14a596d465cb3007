-- parent.lua's child: its file sends to its parent and, when asked, calls it.
local ltask = require "ltask"
local parent, call = ...
ltask.send(parent, "note", call and "second" or "first")
local greeting = call and ltask.call(parent, "hello", "child")
return { greeting = function() return greeting end }
