local S, total = {}, 0
function S.inc(v) return v + 1 end
function S.add(i) total = total + i end
function S.total() return total end
return S
