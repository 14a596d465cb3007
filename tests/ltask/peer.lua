-- One of many services that send to each other (the 1,000-service test).
local ltask = require "ltask"
local S = {}
local received, sum = 0, 0
function S.hit(v) received, sum = received + 1, sum + v end
function S.fire(peers, rounds, me)
    for r = 1, rounds do
        for i = 1, #peers do ltask.send(peers[i], "hit", me * 1000 + r) end
    end
    return true
end
function S.totals() return received, sum end
return S
