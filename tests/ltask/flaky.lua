-- Fails to start when its first argument says so.
if ... then error("flaky fails as asked") end
return { echo = function(...) return ... end }
