-- One version for the whole project: the modules' _VERSION, the shim's,
-- CMake's project version and the rockspecs agree; so do the ABI versions
-- of csrc/ljasync.h, the built shim and lj-async/shim.lua.
local lu = require "luaunit"
local ffi = require "ffi"
local H = require "tests.helpers"
local shim = require "lj-async.shim"

local function read(path)
    return assert(H.read(path), path)
end

-- A rockspec's fields (it is Lua assigning globals).
local function rockspec(path)
    local env = {}
    local chunk = assert(loadstring(read(path), "@" .. path))
    setfenv(chunk, env)()
    return env
end

local PROJECT = read("CMakeLists.txt"):match("project%(lj%-async VERSION ([%d.]+)")

TestVersion = {}

function TestVersion:test_shim_and_cmake_agree()
    lu.assertStrMatches(PROJECT, "%d+%.%d+%.%d+")
    lu.assertEquals(shim.VERSION, PROJECT)
    lu.assertEquals(ffi.string(shim.C.lja_version()), PROJECT)
end

function TestVersion:test_abi_versions_agree()
    lu.assertEquals(tonumber(read("csrc/ljasync.h"):match("#define LJA_ABI_VERSION (%d+)")), shim.ABI)
    lu.assertEquals(shim.C.lja_abi_version(), shim.ABI)
end

function TestVersion:test_every_public_module_has_the_version()
    package.path = "./?/init.lua;" .. package.path   -- ltask is ltask/init.lua
    for _, name in ipairs { "lj-async.thread", "lj-async.callback", "lj-async.sync", "lj-async.channel",
                            "lj-async.state", "lj-async.pool", "lj-async.shared", "ltask", "ltask.bootstrap" } do
        lu.assertEquals(require(name)._VERSION, PROJECT, name)
    end
end

-- The release rockspec is the development one with its version and tag.
function TestVersion:test_rockspecs_agree()
    local scm = rockspec("lj-async-scm-1.rockspec")
    local path = ("rockspecs/lj-async-%s-1.rockspec"):format(PROJECT)
    local release = rockspec(path)
    lu.assertEquals(release.version, PROJECT .. "-1")
    lu.assertEquals(release.source.tag, "v" .. PROJECT)
    lu.assertEquals(scm.version, "scm-1")
    lu.assertEquals(scm.source.branch, "main")
    scm.version, scm.source.branch, release.version, release.source.tag = nil, nil, nil, nil
    lu.assertEquals(release, scm, path .. " differs from lj-async-scm-1.rockspec beyond version and tag")
end

function TestVersion:test_changelog_has_the_version()
    lu.assertStrContains(read("CHANGELOG.md"), "\n## " .. PROJECT)
end

H.run(lu)
