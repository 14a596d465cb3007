-- The README's lj-async.callback section: real C libraries call a callback from their own threads
-- while this state keeps running JIT-compiled code.  Every result counted.
local lu = require "luaunit"
local ffi = require "ffi"
local CallbackFactory = require "lj-async.callback"
local H = require "tests.helpers"

ffi.cdef [[
int64_t lja_atomic_load(const int64_t *p);
typedef unsigned long lja_test_pthread_t;
int pthread_create(lja_test_pthread_t *t, const void *attr, void *(*fn)(void *), void *arg);
int pthread_join(lja_test_pthread_t t, void **ret);
]]
local S = require("lj-async.shim").C

local function new_shared(n)
    return ffi.new("int64_t[?]", n + 1)
end

-- Spin JIT work here until n calls were counted (or 30 s pass).
local function await(shared, n)
    local spins = 0
    local deadline = H.now() + 30
    while S.lja_atomic_load(shared) < n and H.now() < deadline do
        spins = spins + 1
        H.spin(0.001)
    end
    return spins
end

local function assert_all_done(shared, n)
    lu.assertEquals(tonumber(S.lja_atomic_load(shared)), n)
    for i = 0, n - 1 do
        lu.assertEquals(tonumber(shared[1 + i]), i * 10 + 1, "job " .. i)
    end
end

local function recorder_callback(ctype, shared, states, adapt, cdef)
    local T = CallbackFactory(ctype, cdef)
    return T(adapt, { setup = true, args = { ffi.cast("void *", shared) }, states = states })
end

-- N parallel curl processes; their answers, once all are in.
local function curl_in_parallel(port, n)
    local out = os.tmpname()
    -- curl runs without the sanitizer runtime that LD_PRELOAD gives this process
    os.execute(("env -u LD_PRELOAD sh -c 'seq 0 %d | xargs -P %d -I{} curl -s --max-time 20 http://127.0.0.1:%d/{} > %s; echo done >> %s' < /dev/null > /dev/null 2>&1 &")
        :format(n - 1, n, port, out, out))
    local deadline = H.now() + 60
    local text = ""
    while H.now() < deadline do
        H.spin(0.01)
        local f = io.open(out)
        text = f and f:read("*a") or ""
        if f then f:close() end
        if text:match("done\n$") then break end
    end
    os.remove(out)
    return text
end

-- Where no process can be forked (TSan): n lj-async threads, each one
-- blocking HTTP/1.0 GET over a plain socket.
local function get_from_threads(port, n)
    local Thread = require "lj-async.thread"
    local threads = {}
    for i = 0, n - 1 do
        threads[#threads + 1] = Thread.new(function(port, path)
            local ffi = require "ffi"
            ffi.cdef [[
            struct lja_test_sockaddr { uint16_t family, port; uint32_t addr; char zero[8]; };
            int socket(int domain, int type, int protocol);
            int connect(int fd, const struct lja_test_sockaddr *addr, unsigned len);
            long send(int fd, const char *buf, size_t len, int flags);
            long recv(int fd, char *buf, size_t len, int flags);
            int close(int fd);
            ]]
            local fd = ffi.C.socket(2, 1, 0)   -- AF_INET, SOCK_STREAM
            local sa = ffi.new("struct lja_test_sockaddr", 2, bit.rshift(bit.bswap(port), 16), bit.bswap(0x7f000001))
            assert(ffi.C.connect(fd, sa, ffi.sizeof(sa)) == 0, "connect failed")
            local req = "GET " .. path .. " HTTP/1.0\r\n\r\n"
            ffi.C.send(fd, req, #req, 0)
            local buf, parts = ffi.new("char[4096]"), {}
            while true do
                local got = ffi.C.recv(fd, buf, 4096, 0)
                if got <= 0 then break end
                parts[#parts + 1] = ffi.string(buf, got)
            end
            ffi.C.close(fd)
            return (table.concat(parts):match("\r\n\r\n(.*)$"))
        end, port, "/" .. i)
    end
    H.spin(0.05)
    local parts = {}
    for _, t in ipairs(threads) do
        local ok, body = t:join(60)
        parts[#parts + 1] = ok and body or ""
    end
    return table.concat(parts)
end

TestForeign = {}

function TestForeign:test_pthread_create()
    local N = 64
    local shared = new_shared(N)
    local cb = recorder_callback("void *(*)(void *)", shared, 2, function(shared)
        local record = (require "tests.foreign_jobs")(shared)
        return function(i) record(i) return nil end
    end)
    local tids = ffi.new("lja_test_pthread_t[?]", N)
    for i = 0, N - 1 do
        lu.assertEquals(ffi.C.pthread_create(tids + i, nil, cb:funcptr(), ffi.cast("void *", i)), 0)
    end
    lu.assertTrue(await(shared, N) >= 0)
    for i = 0, N - 1 do ffi.C.pthread_join(tids[i], nil) end
    assert_all_done(shared, N)
    cb:free()
end

function TestForeign:test_libuv_queue_work()
    local uv = assert(H.load_lib("uv", "libuv.so.1"), "libuv is not installed (libuv1-dev)")
    local work_t = "typedef struct { void *data; char rest[120]; } lja_test_uv_work_t;"
    ffi.cdef(work_t)
    ffi.cdef [[
    typedef struct uv_loop_s uv_loop_t;
    uv_loop_t *uv_default_loop(void);
    size_t uv_req_size(int type);
    int uv_queue_work(uv_loop_t *loop, lja_test_uv_work_t *req,
                      void (*work_cb)(lja_test_uv_work_t *), void (*after_cb)(lja_test_uv_work_t *, int));
    int uv_run(uv_loop_t *loop, int mode);
    ]]
    lu.assertTrue(uv.uv_req_size(7) <= ffi.sizeof("lja_test_uv_work_t"))  -- UV_WORK
    local N = 200
    local shared = new_shared(N)
    local cb = recorder_callback("void (*)(lja_test_uv_work_t *)", shared, 4, function(shared)
        local record = (require "tests.foreign_jobs")(shared)
        return function(req)
            local ffi = require "ffi"
            record(req.data)
        end
    end, work_t)
    local reqs = ffi.new("lja_test_uv_work_t[?]", N)
    local loop = uv.uv_default_loop()
    for i = 0, N - 1 do
        reqs[i].data = ffi.cast("void *", i)
        lu.assertEquals(uv.uv_queue_work(loop, reqs + i, cb:funcptr(), nil), 0)
    end
    local deadline = H.now() + 30
    while S.lja_atomic_load(shared) < N and H.now() < deadline do
        uv.uv_run(loop, 2)   -- UV_RUN_NOWAIT
        H.spin(0.001)
    end
    uv.uv_run(loop, 0)
    assert_all_done(shared, N)
    cb:free()
end

function TestForeign:test_glib_thread_pool()
    local glib = assert(H.load_lib("glib-2.0", "libglib-2.0.so.0"), "GLib is not installed (libglib2.0-dev)")
    ffi.cdef [[
    typedef struct _GThreadPool GThreadPool;
    GThreadPool *g_thread_pool_new(void (*func)(void *data, void *user_data), void *user_data,
                                   int max_threads, int exclusive, void **error);
    int g_thread_pool_push(GThreadPool *pool, void *data, void **error);
    void g_thread_pool_free(GThreadPool *pool, int immediate, int wait);
    ]]
    local N = 200
    local shared = new_shared(N + 1)   -- job i is stored as i + 1
    local cb = recorder_callback("void (*)(void *, void *)", shared, 2, function(shared)
        local record = (require "tests.foreign_jobs")(shared)
        return function(data) record(data) end
    end)
    local pool = glib.g_thread_pool_new(cb:funcptr(), nil, 4, 0, nil)
    lu.assertNotNil(pool)
    for i = 0, N - 1 do
        -- GLib's pools take non-NULL data: job i travels as i + 1
        lu.assertEquals(glib.g_thread_pool_push(pool, ffi.cast("void *", i + 1), nil), 1)
    end
    await(shared, N)
    glib.g_thread_pool_free(pool, 0, 1)
    lu.assertEquals(tonumber(S.lja_atomic_load(shared)), N)
    for i = 0, N - 1 do
        lu.assertEquals(tonumber(shared[2 + i]), (i + 1) * 10 + 1, "job " .. i)
    end
    cb:free()
end

-- An MHD_AccessHandlerCallback: answers "hello <url>" and counts the call,
-- except that for /<bad> it returns `bad_result` instead of MHD's status.
local function mhd_handler(bad, bad_result)
    local T = CallbackFactory("int (*)(void *, struct MHD_Connection *, const char *, const char *, "
        .. "const char *, const char *, size_t *, void **)", [[
    struct MHD_Connection; struct MHD_Response;
    struct MHD_Response *MHD_create_response_from_buffer(size_t size, void *buffer, int mode);
    int MHD_queue_response(struct MHD_Connection *connection, unsigned int status, struct MHD_Response *response);
    void MHD_destroy_response(struct MHD_Response *response);
    int64_t lja_atomic_add(int64_t *p, int64_t d);
    ]])
    local counter = ffi.new("int64_t[1]")
    local cb = T(function(counter, bad, bad_result)
        local ffi = require "ffi"
        local mhd = ffi.load("microhttpd")
        local S = require("lj-async.shim").C
        counter = ffi.cast("int64_t *", counter)
        return function(cls, conn, url, method)
            url = ffi.string(url)
            if url == "/" .. tostring(bad) then return bad_result end
            local body = "hello " .. url .. "\n"
            local resp = mhd.MHD_create_response_from_buffer(#body, ffi.cast("void *", body), 2)
            local rc = mhd.MHD_queue_response(conn, 200, resp)
            mhd.MHD_destroy_response(resp)
            S.lja_atomic_add(counter, 1)
            return rc
        end
    end, { setup = true, args = { ffi.cast("void *", counter), bad, bad_result }, states = 4 })
    return cb, counter
end

-- Serves requests /0 .. /n-1 with the handler on libmicrohttpd's threads
-- (one per connection); the set of the requests that were answered.
local function mhd_serve(handler, n)
    local mhd = assert(H.load_lib("microhttpd", "libmicrohttpd.so.12"), "libmicrohttpd is not installed")
    pcall(ffi.cdef, [[
    struct MHD_Daemon; struct MHD_Connection; struct MHD_Response;
    struct MHD_Daemon *MHD_start_daemon(unsigned int flags, uint16_t port, void *apc, void *apc_cls,
                                        void *dh, void *dh_cls, ...);
    void MHD_stop_daemon(struct MHD_Daemon *daemon);
    ]])
    local daemon, port
    for _ = 1, 20 do
        port = math.random(20000, 60000)
        daemon = mhd.MHD_start_daemon(4 + 8, port, nil, nil, ffi.cast("void *", handler:funcptr()), nil,
            ffi.new("int", 0))  -- THREAD_PER_CONNECTION | INTERNAL_POLLING_THREAD, OPTION_END
        if daemon ~= nil then break end
    end
    lu.assertNotNil(daemon, "cannot start libmicrohttpd")
    -- this state keeps running JIT code while the connections are answered
    local text
    if H.can_fork then
        text = curl_in_parallel(port, n)
    else
        text = get_from_threads(port, n)
    end
    mhd.MHD_stop_daemon(daemon)
    local seen = {}
    for i in text:gmatch("hello /(%d+)\n") do seen[tonumber(i)] = true end
    return seen
end

function TestForeign:test_libmicrohttpd_thread_per_connection()
    local N = 100
    local cb, counter = mhd_handler()
    local seen = mhd_serve(cb, N)
    for i = 0, N - 1 do lu.assertTrue(seen[i], "no answer for request " .. i) end
    lu.assertEquals(tonumber(S.lja_atomic_load(counter)), N)
    cb:free()
end

function TestForeign:test_libmicrohttpd_bad_result()
    -- The handler of /3 returns what its int cannot take, on libmicrohttpd's
    -- thread: MHD gets 0 (MHD_NO: it drops that connection) and the others
    -- are answered.
    local N = 20
    for _, case in ipairs({ { "200" }, { {} }, {} }) do   -- a string, a table, no value
        local bad_result = case[1]
        local cb, counter = mhd_handler(3, bad_result)
        local seen = mhd_serve(cb, N)
        for i = 0, N - 1 do lu.assertEquals(seen[i], i ~= 3 or nil, "request " .. i) end
        lu.assertEquals(tonumber(S.lja_atomic_load(counter)), N - 1)
        lu.assertStrContains(cb:last_error() or "nil", "cannot convert '" .. type(bad_result) .. "' to 'int'")
        cb:free()
    end
end

os.exit(lu.LuaUnit.run())
