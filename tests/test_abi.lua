-- csrc/ljasync.h is the ABI's single source: every lja_ declaration that a
-- Lua file gives ffi.cdef must match it, and the error codes must agree.
local lu = require "luaunit"
local ffi = require "ffi"
local H = require "tests.helpers"

local function read(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end

local function normalize(decl)
    decl = decl:gsub("/%*.-%*/", ""):gsub("LJA_API", ""):gsub("%s+", " ")
    decl = decl:gsub(" ?([%*%(%),{};=]) ?", "%1")
    return (decl:gsub("^ ", ""):gsub(" $", ""))
end

-- Top-level declarations of a C text (split at ';' outside braces).
local function declarations(text)
    local out, depth, start = {}, 0, 1
    text = text:gsub("/%*.-%*/", ""):gsub("//[^\n]*", ""):gsub("#[^\n]*", "")
    for i = 1, #text do
        local c = text:sub(i, i)
        if c == "{" then depth = depth + 1
        elseif c == "}" then depth = depth - 1
        elseif c == ";" and depth == 0 then
            local d = normalize(text:sub(start, i))
            if d ~= ";" then out[#out + 1] = d end
            start = i + 1
        end
    end
    return out
end

local function header_decls()
    local text = read("csrc/ljasync.h")
    text = text:gsub('extern "C" {', ""):gsub("\n}\n", "\n")
    local set = {}
    for _, d in ipairs(declarations(text)) do set[d] = true end
    return set
end

local function lua_cdefs(path)
    local text, out = read(path), {}
    for _, body in text:gmatch("ffi%.cdef%s*%[(=*)%[(.-)%]%1%]") do out[#out + 1] = body end
    for body in text:gmatch('ffi%.cdef%s*%(?%s*"([^"]*)"') do out[#out + 1] = body end
    return out
end

local function files()
    local list = {}
    for _, dir in ipairs { "lj-async", "ltask", "tests", "bench", "examples" } do
        for _, name in ipairs(H.listdir(dir)) do
            if name:match("%.lua$") then list[#list + 1] = dir .. "/" .. name end
        end
    end
    return list
end

TestAbi = {}

function TestAbi:test_lua_declarations_match_the_header()
    local header = header_decls()
    local checked = 0
    for _, file in ipairs(files()) do
        for _, body in ipairs(lua_cdefs(file)) do
            for _, d in ipairs(declarations(body)) do
                if d:match("lja_") and not d:match("lja_test") and not d:match("ljabench") then
                    checked = checked + 1
                    lu.assertTrue(header[d], file .. ": not in csrc/ljasync.h as written: " .. d)
                end
            end
        end
    end
    lu.assertTrue(checked > 30, "only " .. checked .. " declarations found")
end

-- The LJA_ constants of a C text's enums: name -> value as written.
local function enum_constants(text)
    local out = {}
    text = text:gsub("/%*.-%*/", ""):gsub("//[^\n]*", "")
    for body in text:gmatch("enum%s*[%w_]*%s*(%b{})") do
        for name, value in body:gmatch("(LJA_[%w_]+)%s*=%s*([^,}]+)") do
            out[name] = (value:gsub("%s+", ""))
        end
    end
    return out
end

-- Enum values drift as easily as functions: every LJA_ constant a Lua file
-- declares must be the header's, with the header's value.
function TestAbi:test_lua_constants_match_the_header()
    local header = enum_constants(read("csrc/ljasync.h"))
    local checked = 0
    for _, file in ipairs(files()) do
        for _, body in ipairs(lua_cdefs(file)) do
            for name, value in pairs(enum_constants(body)) do
                checked = checked + 1
                lu.assertNotNil(header[name], file .. ": " .. name .. " is not in csrc/ljasync.h")
                lu.assertEquals(value, header[name], file .. ": " .. name)
            end
        end
    end
    lu.assertTrue(checked > 20, "only " .. checked .. " constants found")
end

function TestAbi:test_error_codes_agree()
    local S = require("lj-async.shim").C
    local text = read("csrc/ljasync.h")
    local n = 0
    for name, value in text:gmatch("(LJA_E?[A-Z]+) = (%-?%d+)") do
        lu.assertEquals(S[name], tonumber(value), name)
        n = n + 1
    end
    lu.assertEquals(n, 9)
    ffi.cdef "const char *lja_strerror(int err);"
    lu.assertEquals(ffi.string(S.lja_strerror(S.LJA_ETIMEDOUT)), "timeout")
end

os.exit(lu.LuaUnit.run())
