-- lj-async.shim_find: finds the C shim for lj-async.shim and checks that
-- it is the release these modules need (README "Build, load, install"), in
-- the first state only: states made by lj-async.vm are told its path.
local function exists(path)
    local f = io.open(path, "rb")
    if f then f:close() end
    return f ~= nil
end

local function module_root()
    local src = debug.getinfo(1, "S").source
    if src:sub(1, 1) ~= "@" then return nil end
    local dir = src:sub(2):match("^(.*)[/\\]lj%-async[/\\]shim_find%.lua$")
    if dir == nil and src:match("^@lj%-async[/\\]shim_find%.lua$") then dir = "." end
    return dir
end

-- The shim's path and where it was found, or nil and the places searched.
local function search(C_NAME)
    local env = os.getenv("LJ_ASYNC_LIB")
    if env and env ~= "" then return env, "LJ_ASYNC_LIB" end
    local path, tried = package.searchpath(C_NAME, package.cpath)
    if path then return path, "package.cpath" end
    local searched = { "$LJ_ASYNC_LIB (not set)" }
    for p in tried:gmatch("no file '([^']*)'") do searched[#searched + 1] = "package.cpath: " .. p end
    local root = module_root()
    if root then
        for _, p in ipairs { root .. "/" .. C_NAME .. ".so", root .. "/build/" .. C_NAME .. ".so" } do
            if exists(p) then return p, "next to the modules" end
            searched[#searched + 1] = "next to the modules: " .. p
        end
    end
    return nil, searched
end

local M = {}

-- The shim's path and where it was found; raises (at the line that
-- required lj-async.shim) with the places searched.
function M.find(C_NAME)
    local path, found = search(C_NAME)
    if not path then
        error("lj-async: cannot find the C shim '" .. C_NAME .. ".so'; searched:\n\t"
            .. table.concat(found, "\n\t") .. "\nSet LJ_ASYNC_LIB to its path, add its directory to "
            .. "package.cpath, or build it: cmake -S . -B build && cmake --build build", 3)
    end
    return path, found
end

-- The modules and the shim must come from one release: an old shim first
-- on package.cpath would otherwise fail later, at its first missing
-- symbol.  Raises as find does.
function M.check(lib, path, found, shim)
    local expected = ("ABI %d (lj-async %s) for the modules in %s"):format(shim.ABI, shim.VERSION, module_root() or "?")
    local has, abi_version = pcall(function() return lib.lja_abi_version end)
    if not has then
        error(("lj-async: '%s' (from %s) is not the C shim these modules need: it has no "
            .. "lja_abi_version (an lj-async shim from before 0.1.0, or another library); expected %s")
            :format(path, found, expected), 3)
    end
    local abi = abi_version()
    if abi ~= shim.ABI then
        error(("lj-async: the C shim '%s' (from %s) is lj-async %s (ABI %d); expected %s")
            :format(path, found, require("ffi").string(lib.lja_version()), abi, expected), 3)
    end
end

return M
