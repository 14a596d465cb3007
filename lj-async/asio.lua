-- lj-async.asio: TCP in light threads on one event loop per lua_State
-- (README, "lj-async.asio"), after LuaAsio.
--
-- The loop is Linux epoll reached through the FFI.  Light threads are
-- coroutines (kept and reused once finished).  Every socket is registered
-- once, edge-triggered, for input and output; an operation tries its
-- syscall first and waits only when the kernel has nothing (EAGAIN) or a
-- short read showed the socket drained.  Timers sit in a binary heap; the
-- loop's timerfd is armed to the next one whenever control goes back to the
-- caller, so that fd() is readable exactly when run_once(0) has work.
-- Channels wake the loop through an eventfd that the shim signals at each
-- send (lja_channel_watch_fd); names are resolved by getaddrinfo on an
-- lj-async thread, never on the loop.
--
-- A runtime that runs the state's coroutines itself (ltask, in an
-- exclusive service) puts a driver in package.loaded["lj-async.asio.driver"]
-- before this module loads: then waits suspend and resume through it, any
-- of its coroutines may wait, spawn_light_thread is its spawn, and it runs
-- the loop (driver.attach gets the eventfd to signal, a pump and a close);
-- run, run_once and stop raise.  This module knows no such runtime by name.
local ffi = require "ffi"
local bit = require "bit"
local buffer = require "string.buffer"
local shim = require "lj-async.shim"
local channel = require "lj-async.channel"
require "lj-async.object"   -- declares lja_object_retain and lja_object_release

ffi.cdef [[
int lja_channel_watch_fd(lja_channel *ch, int fd, int on);
double lja_now(void);
]]

ffi.cdef [[
typedef struct { int64_t sec; long nsec; } asio_timespec;
typedef struct { asio_timespec interval, value; } asio_itimerspec;
typedef struct { const void *base; size_t len; } asio_iovec;
typedef struct {
    void *name; uint32_t namelen; asio_iovec *iov; size_t iovlen;
    void *control; size_t controllen; int flags;
} asio_msghdr;
typedef struct { uint16_t family; uint16_t port; uint8_t addr[4]; uint8_t zero[8]; } asio_sockaddr_in;
typedef struct { uint16_t family; uint16_t port; uint32_t flowinfo; uint8_t addr[16];
                 uint32_t scope_id; } asio_sockaddr_in6;
typedef struct { uint16_t family; uint8_t data[126]; } asio_sockaddr_storage;
int asio_epoll_create1(int flags) __asm__("epoll_create1");
int asio_epoll_ctl(int epfd, int op, int fd, void *event) __asm__("epoll_ctl");
int asio_epoll_wait(int epfd, void *events, int maxevents, int timeout) __asm__("epoll_wait");
int asio_timerfd_create(int clockid, int flags) __asm__("timerfd_create");
int asio_timerfd_settime(int fd, int flags, const asio_itimerspec *new, asio_itimerspec *old) __asm__("timerfd_settime");
int asio_eventfd(unsigned int initval, int flags) __asm__("eventfd");
int asio_socket(int domain, int type, int protocol) __asm__("socket");
int asio_bind(int fd, const void *addr, uint32_t len) __asm__("bind");
int asio_listen(int fd, int backlog) __asm__("listen");
int asio_accept4(int fd, void *addr, uint32_t *len, int flags) __asm__("accept4");
int asio_connect(int fd, const void *addr, uint32_t len) __asm__("connect");
int asio_recv(int fd, void *buf, size_t len, int flags) __asm__("recv");
int asio_send(int fd, const void *buf, size_t len, int flags) __asm__("send");
int asio_sendmsg(int fd, const asio_msghdr *msg, int flags) __asm__("sendmsg");
int asio_read(int fd, void *buf, size_t len) __asm__("read");
int asio_shutdown(int fd, int how) __asm__("shutdown");
int asio_close(int fd) __asm__("close");
int asio_setsockopt(int fd, int level, int name, const void *val, uint32_t len) __asm__("setsockopt");
int asio_getsockopt(int fd, int level, int name, void *val, uint32_t *len) __asm__("getsockopt");
int asio_getsockname(int fd, void *addr, uint32_t *len) __asm__("getsockname");
int asio_getpeername(int fd, void *addr, uint32_t *len) __asm__("getpeername");
int asio_inet_pton(int af, const char *src, void *dst) __asm__("inet_pton");
const char *asio_inet_ntop(int af, const void *src, char *dst, uint32_t size) __asm__("inet_ntop");
const char *asio_strerror(int errnum) __asm__("strerror");
const unsigned char *asio_memmem(const void *h, size_t hl, const void *n, size_t nl) __asm__("memmem");
]]
-- epoll_event is packed on x86-64 only; the data union is read as the fd.
if ffi.arch == "x64" then
    ffi.cdef "typedef struct { uint32_t events; int32_t fd; uint32_t pad; } __attribute__((packed)) asio_epoll_event;"
else
    ffi.cdef "typedef struct { uint32_t events; uint32_t pad0; int32_t fd; uint32_t pad; } asio_epoll_event;"
end

local C, S = ffi.C, shim.C
local band, bor = bit.band, bit.bor
local type, tostring, tonumber, error, select, setmetatable, pairs, next, unpack =
    type, tostring, tonumber, error, select, setmetatable, pairs, next, unpack
local co_create, co_resume, co_yield, co_running =
    coroutine.create, coroutine.resume, coroutine.yield, coroutine.running
local floor, ceil, min, max = math.floor, math.ceil, math.min, math.max
local ffi_errno, ffi_string, ffi_cast, ffi_istype = ffi.errno, ffi.string, ffi.cast, ffi.istype
local recv_c, send_c, sendmsg_c, epoll_wait, memmem =
    C.asio_recv, C.asio_send, C.asio_sendmsg, C.asio_epoll_wait, C.asio_memmem
local now = S.lja_now

-- Linux constants (x86-64 and arm64 share these).
local AF_INET, AF_INET6, SOCK_STREAM = 2, 10, 1
local SOCK_NONBLOCK, SOCK_CLOEXEC = 0x800, 0x80000
local SOL_SOCKET, SO_REUSEADDR, SO_ERROR, SO_SNDBUF, SO_RCVBUF, SO_KEEPALIVE, SO_REUSEPORT = 1, 2, 4, 7, 8, 9, 15
local IPPROTO_TCP, TCP_NODELAY, IPPROTO_IPV6, IPV6_V6ONLY = 6, 1, 41, 26
local MSG_NOSIGNAL = 0x4000
local EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLRDHUP, EPOLLET = 0x1, 0x4, 0x8, 0x10, 0x2000, 0x80000000
local EPOLL_CTL_ADD = 1
local CLOCK_MONOTONIC, TFD_TIMER_ABSTIME = 1, 1
local EAGAIN, EINTR, EINPROGRESS, EMFILE, ENFILE, ENOBUFS, ENOMEM =
    11, 4, 115, 24, 23, 105, 12
local SHUT = { read = 0, write = 1, both = 2 }

local READ_CHUNK = 16384   -- bytes asked of each recv
local MAX_EVENTS = 256
local IOV_MAX = 64         -- iovecs per sendmsg
local IDLE_MAX = 1024      -- finished coroutines kept for reuse
local PAUSE = 0.1          -- accept pause when out of descriptors (s)

local M = {}

-- { suspend = f() -> v, resume = f(co, v), spawn = f(fn, ...), attach = f(efd, pump, close) }
local driver = package.loaded["lj-async.asio.driver"]
local suspend = driver and driver.suspend or co_yield

local TIMEOUT, CLOSED = "timeout", "closed"   -- why a wait ended

local function sys_error(e)
    return (ffi_string(C.asio_strerror(e)):lower())
end

-- ---- The loop's descriptors, released when the state closes ------------
-- (EPOLL_, TFD_ and EFD_CLOEXEC and NONBLOCK have the SOCK_ values)
local epfd = C.asio_epoll_create1(SOCK_CLOEXEC)
if epfd < 0 then error("lj-async.asio: epoll_create1: " .. sys_error(ffi_errno())) end
local tfd = C.asio_timerfd_create(CLOCK_MONOTONIC, bor(SOCK_NONBLOCK, SOCK_CLOEXEC))
local efd = C.asio_eventfd(0, bor(SOCK_NONBLOCK, SOCK_CLOEXEC))
if tfd < 0 or efd < 0 then error("lj-async.asio: timerfd/eventfd: " .. sys_error(ffi_errno())) end

local ev1 = ffi.new("asio_epoll_event")
local function epoll_add(fd, events)
    ev1.events, ev1.fd = events, fd
    return C.asio_epoll_ctl(epfd, EPOLL_CTL_ADD, fd, ev1)
end
epoll_add(tfd, EPOLLIN)              -- level-triggered: readable until run_once reads it
epoll_add(efd, bor(EPOLLIN, EPOLLET)) -- each channel signal is an edge; never read

-- Channels being waited on: address -> { ch =, ptr =, q = { [lt] = lt } }.
-- Each holds a reference to its channel, so the teardown may unwatch it
-- whatever order the state's finalizers run in.
local chwatch = {}

local servers = {}   -- fd -> open server (the loop holds them)

local loop_open = true
local function close_loop()
    if not loop_open then return end
    loop_open = false
    for fd in pairs(servers) do C.asio_close(fd) end
    for _, w in pairs(chwatch) do
        S.lja_channel_watch_fd(w.ptr, efd, 0)
        S.lja_object_release(w.ptr)
    end
    C.asio_close(tfd)
    C.asio_close(efd)
    C.asio_close(epfd)
end
M._loop = ffi.gc(ffi.new("int[1]"), close_loop)

-- ---- Light threads -------------------------------------------------------
local LightThread = {}
LightThread.__index = LightThread

local current          -- the running light thread
local live = 0         -- light threads not finished
local in_run = false   -- inside run/run_once
local stopping = false
local ready, nready, spare_ready = {}, 0, {}   -- pairs lt, value
local idle, nidle = {}, 0                       -- parked coroutines

-- Timers: a binary heap of { t =, lt = } or { t =, fn =, arg = }; each
-- entry knows its index (i), so a wait that ends early takes its timer out
-- at once (a server with long timeouts would otherwise pile them up).
local heap, nheap = {}, 0

local function sift_up(i, e)
    local t = e.t
    while i > 1 do
        local p = floor(i / 2)
        local pe = heap[p]
        if pe.t <= t then break end
        heap[i], pe.i = pe, i
        i = p
    end
    heap[i], e.i = e, i
end

local function sift_down(i, e)
    local t = e.t
    while true do
        local c = i * 2
        if c > nheap then break end
        local ce = heap[c]
        if c < nheap and heap[c + 1].t < ce.t then
            c = c + 1
            ce = heap[c]
        end
        if ce.t >= t then break end
        heap[i], ce.i = ce, i
        i = c
    end
    heap[i], e.i = e, i
end

local function heap_push(e)
    nheap = nheap + 1
    sift_up(nheap, e)
    return e
end

local function heap_remove(e)
    local i, last = e.i, heap[nheap]
    if not i then return end
    heap[nheap] = nil
    nheap = nheap - 1
    e.i = nil
    if last ~= e then
        if i > 1 and heap[floor(i / 2)].t > last.t then
            sift_up(i, last)
        else
            sift_down(i, last)
        end
    end
end

local function first_timer()
    if nheap > 0 then return heap[1].t end
    return nil
end

-- With a driver, a waiter is the record of the driver's coroutine that
-- waits (by_co), or a light thread while it runs on one.
local by_co = setmetatable({}, { __mode = "k" })

local function resume(lt, v)
    if driver then return driver.resume(lt.co, v) end
    local prev = current
    current = lt
    local ok, err = co_resume(lt.co, v)
    current = prev
    if not ok then io.stderr:write("lj-async.asio: internal error: ", tostring(err), "\n") end
end

-- A waiting light thread is registered in at most one table (tab[key] =
-- lt) and one timer.  Whoever wakes it first removes both, so it is
-- resumed once.
local function unregister(lt)
    local tab = lt.wtab
    if tab then
        tab[lt.wkey] = nil
        lt.wtab = nil
    end
    local tm = lt.tm
    if tm then
        heap_remove(tm)
        lt.tm = nil
    end
end

local function enqueue(lt, v)
    unregister(lt)
    ready[nready + 1], ready[nready + 2] = lt, v
    nready = nready + 2
end

local function wait(tab, key, deadline)
    local lt = current
    if driver then lt = by_co[co_running()] end
    if tab then
        tab[key] = lt
        lt.wtab, lt.wkey = tab, key
    end
    if deadline then lt.tm = heap_push({ t = deadline, lt = lt }) end
    return suspend()
end

-- The driver's coroutine running now, as a waiter; nil outside them.
local function driven()
    local co, main = co_running()
    if co == nil or main then return nil end
    local lt = by_co[co]
    if not lt then
        lt = { co = co }
        by_co[co] = lt
    end
    return lt
end

-- The light thread calling a waiting function, or an error at the caller.
local function need_lt(what)
    if driver then
        local lt = driven()
        if lt then return lt end
        error("lj-async.asio: " .. what .. " waits, so it must be called in a coroutine of the service "
            .. "(a handler, a fork, a light thread), not in the loop's callbacks", 3)
    end
    local lt = current
    if lt == nil or co_running() ~= lt.co then
        error("lj-async.asio: " .. what .. " waits, so it must be called in a light thread "
            .. "(asio.spawn_light_thread)", 3)
    end
    return lt
end

local function deadline_of(timeout, level)
    if timeout == nil then return nil end
    if type(timeout) ~= "number" or timeout ~= timeout then
        error("lj-async.asio: a timeout is a number of seconds or nil", level + 1)
    end
    return now() + max(timeout, 0)
end

local function traceback(e)
    return debug.traceback(tostring(e), 2)
end

local DONE_EMPTY = { n = 1, true }

local function finish(lt, ok, ...)
    live = live - 1
    lt.done = true
    lt.co = nil
    if ok then
        local n = select("#", ...)
        lt.res = n == 0 and DONE_EMPTY or { n = n + 1, true, ... }
    else
        local err = ...
        io.stderr:write("lj-async.asio: light thread failed: ", tostring(err), "\n")
        lt.res = { n = 2, nil, err }
    end
    local joiners = lt.joiners
    if joiners then
        for _, j in pairs(joiners) do enqueue(j, nil) end
    end
end

local function run_one(lt, fn, ...)
    return finish(lt, xpcall(fn, traceback, ...))
end

-- A coroutine runs one light thread after another; between them it holds
-- nothing (its arguments come from the yield, in a fresh call frame).
local function worker()
    local co = co_running()
    while true do
        run_one(co_yield())
        if nidle >= IDLE_MAX then return end
        nidle = nidle + 1
        idle[nidle] = co
    end
end

local sync_fd   -- defined with the loop

-- A light thread on a coroutine of the driver's.
local function run_driven(lt, fn, ...)
    local co = co_running()
    lt.co = co
    by_co[co] = lt
    finish(lt, xpcall(fn, traceback, ...))
    by_co[co] = nil
end

function M.spawn_light_thread(fn, ...)
    if type(fn) ~= "function" then
        error("lj-async.asio: spawn_light_thread takes a function, got " .. type(fn), 2)
    end
    if driver then
        local lt = setmetatable({}, LightThread)
        live = live + 1
        driver.spawn(run_driven, lt, fn, ...)
        return lt
    end
    local co
    if nidle > 0 then
        co = idle[nidle]
        idle[nidle] = nil
        nidle = nidle - 1
    else
        co = co_create(worker)
        co_resume(co)
    end
    local lt = setmetatable({ co = co }, LightThread)
    live = live + 1
    local prev = current
    current = lt
    local ok, err = co_resume(co, lt, fn, ...)
    current = prev
    if not ok then io.stderr:write("lj-async.asio: internal error: ", tostring(err), "\n") end
    if not in_run then sync_fd() end
    return lt
end
M.spawn = M.spawn_light_thread

function LightThread:join(timeout)
    if not self.done then
        local lt = need_lt("join")
        if lt == self then error("lj-async.asio: a light thread cannot join itself", 2) end
        local deadline = deadline_of(timeout, 2)
        local joiners = self.joiners
        if not joiners then
            joiners = {}
            self.joiners = joiners
        end
        if wait(joiners, lt, deadline) == TIMEOUT then return false, "timeout" end
    end
    local res = self.res
    return unpack(res, 1, res.n)
end

function M.sleep(seconds)
    if type(seconds) ~= "number" or seconds ~= seconds then
        error("lj-async.asio: sleep takes a number of seconds", 2)
    end
    local lt = need_lt("sleep")
    if seconds <= 0 then
        enqueue(lt, nil)   -- after every light thread ready now
        suspend()
        return
    end
    wait(nil, nil, now() + seconds)
end

function M.now()
    return now()
end

-- ---- Connections ---------------------------------------------------------
local rwait, wwait = {}, {}                        -- fd -> waiting light thread
local conns = setmetatable({}, { __mode = "v" })   -- fd -> connection
local nservers = 0

local Conn = {}
Conn.__index = Conn

local int_out = ffi.new("int[1]")
local len_out = ffi.new("uint32_t[1]")
local ss = ffi.new("asio_sockaddr_storage")
local ntop_buf = ffi.new("char[64]")

local function setopt(fd, level, name, v)
    int_out[0] = v
    return C.asio_setsockopt(fd, level, name, int_out, 4)
end

-- The fd's collector: a connection dropped unclosed closes its socket.
local function gc_close(cell)
    local fd = cell[0]
    if fd >= 0 then
        cell[0] = -1
        C.asio_close(fd)
    end
end

local function new_conn(fd)
    epoll_add(fd, bor(EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLET))
    setopt(fd, IPPROTO_TCP, TCP_NODELAY, 1)
    local c = setmetatable({
        fd = fd, buf = buffer.new(), rready = true, wready = true,
        cell = ffi.gc(ffi.new("int[1]", fd), gc_close),
    }, Conn)
    conns[fd] = c
    return c
end

local function close_fd(c)
    local fd = c.fd
    c.closed = true
    local lt = rwait[fd]
    if lt then enqueue(lt, CLOSED) end
    lt = wwait[fd]
    if lt then enqueue(lt, CLOSED) end
    conns[fd] = nil
    c.cell[0] = -1
    C.asio_close(fd)
    c.buf:free()   -- what was buffered goes too: reads now give "closed"
end

-- Reads more into the buffer: nil, or why not ("timeout", "eof", "closed",
-- or the system's message).
local function fill(c, deadline)
    local fd, buf = c.fd, c.buf
    while true do
        if c.closed then return CLOSED end
        if c.eof then return "eof" end
        if c.rready then
            local p, avail = buf:reserve(READ_CHUNK)
            local n = recv_c(fd, p, avail, 0)
            if n > 0 then
                buf:commit(n)
                -- a short read drained the socket: the next data is an edge
                if n < avail and not c.rhup then c.rready = false end
                return nil
            elseif n == 0 then
                c.eof = true
                return "eof"
            else
                local e = ffi_errno()
                if e == EAGAIN then
                    c.rready = false
                elseif e ~= EINTR then
                    return sys_error(e)
                end
            end
        else
            if rwait[fd] then return "busy" end
            if wait(rwait, fd, deadline) == TIMEOUT then return TIMEOUT end
        end
    end
end

-- The end of a read that failed: nil, err [, partial].
local function read_failed(c, err)
    if err == "eof" then
        local buf = c.buf
        if #buf > 0 then return nil, CLOSED, buf:get() end
        return nil, CLOSED, ""
    elseif err ~= TIMEOUT and err ~= CLOSED and err ~= "busy" then
        close_fd(c)
    end
    return nil, err
end

local function check_size(n, what, level)
    if type(n) ~= "number" or n < 0 or n % 1 ~= 0 then
        error("lj-async.asio: " .. what .. " must be a non-negative integer", level + 1)
    end
end

local function read_deadline(c, timeout)
    if timeout == nil then timeout = c.rto end
    return deadline_of(timeout, 3)
end

function Conn:read(n, timeout)
    check_size(n, "read's size", 2)
    need_lt("read")
    local buf = self.buf
    if #buf >= n then return buf:get(n) end
    if self.closed then return nil, CLOSED end
    local deadline = read_deadline(self, timeout)
    repeat
        local err = fill(self, deadline)
        if err then return read_failed(self, err) end
    until #buf >= n
    return buf:get(n)
end

function Conn:read_some(maxn, timeout)
    if maxn == nil then maxn = 65536 end
    check_size(maxn, "read_some's max", 2)
    need_lt("read_some")
    local buf = self.buf
    if #buf == 0 then
        if self.closed then return nil, CLOSED end
        local err = fill(self, read_deadline(self, timeout))
        if err then
            if err == "eof" then return nil, CLOSED end
            return read_failed(self, err)
        end
    end
    return buf:get(min(maxn, #buf))
end

function Conn:read_until(delim, maxn, timeout)
    if type(delim) ~= "string" or #delim == 0 then
        error("lj-async.asio: read_until's delimiter must be a non-empty string", 2)
    end
    if maxn == nil then maxn = 65536 end
    check_size(maxn, "read_until's max", 2)
    need_lt("read_until")
    local buf, dl = self.buf, #delim
    local from, deadline = 0, false
    while true do
        local p, len = buf:ref()
        if len - from >= dl then
            local hit = memmem(p + from, len - from, delim, dl)
            if hit ~= nil then
                local at = hit - p
                if at > maxn then return nil, "too long" end
                local s = buf:get(at)
                buf:skip(dl)
                return s
            end
            from = len - dl + 1
        end
        if len > maxn + dl - 1 then return nil, "too long" end
        if self.closed then return nil, CLOSED end
        if deadline == false then deadline = read_deadline(self, timeout) end
        local err = fill(self, deadline)
        if err then return read_failed(self, err) end
    end
end

function Conn:read_line(maxn, timeout)
    local line, err, partial = self:read_until("\n", maxn, timeout)
    if not line then return nil, err, partial end
    if line:byte(-1) == 13 then line = line:sub(1, -2) end
    return line
end

-- Waits for the socket to take more: nil or why not.
local function wait_writable(c, deadline)
    if c.closed then return CLOSED end
    if wwait[c.fd] then return "busy" end
    local r = wait(wwait, c.fd, deadline)
    if r == TIMEOUT then return TIMEOUT end
    if c.closed or c.wshut then return CLOSED end   -- closed, or shut for writing
    return nil
end

local function write_failed(c, err, sent)
    if err ~= TIMEOUT and err ~= CLOSED and err ~= "busy" then close_fd(c) end
    return nil, err, sent
end

local char_p = ffi.typeof("const char *")
local iov = ffi.new("asio_iovec[?]", IOV_MAX)
local msg = ffi.new("asio_msghdr")
msg.iov = iov

local function write_string(c, data, deadline)
    local fd, len, off = c.fd, #data, 0
    while true do
        if c.wready then
            local n = send_c(fd, off == 0 and data or ffi_cast(char_p, data) + off, len - off, MSG_NOSIGNAL)
            if n >= 0 then
                off = off + n
                if off >= len then return true end
                c.wready = false
            else
                local e = ffi_errno()
                if e == EAGAIN then
                    c.wready = false
                elseif e ~= EINTR then
                    return write_failed(c, sys_error(e), off)
                end
            end
        else
            local err = wait_writable(c, deadline)
            if err then return write_failed(c, err, off) end
            c.wready = true
        end
    end
end

-- An array of strings goes out by sendmsg, IOV_MAX pieces at a time.
local function write_array(c, data, deadline)
    local fd, count = c.fd, #data
    local total = 0
    for i = 1, count do
        local s = data[i]
        if type(s) ~= "string" then
            error("lj-async.asio: write: item " .. i .. " of the array is a " .. type(s) .. ", not a string", 3)
        end
        total = total + #s
    end
    local i, off, sent = 1, 0, 0   -- next piece, bytes of it already sent
    while sent < total do
        if c.wready then
            local k, j = 0, i
            while j <= count and k < IOV_MAX do
                local s = data[j]
                local o = j == i and off or 0
                if #s > o then
                    iov[k].base = ffi_cast(char_p, s) + o
                    iov[k].len = #s - o
                    k = k + 1
                end
                j = j + 1
            end
            msg.iovlen = k
            local n = sendmsg_c(fd, msg, MSG_NOSIGNAL)
            if n >= 0 then
                sent = sent + n
                while n > 0 do
                    local rest = #data[i] - off
                    if n >= rest then
                        n, i, off = n - rest, i + 1, 0
                    else
                        off, n = off + n, 0
                        c.wready = false
                    end
                end
            else
                local e = ffi_errno()
                if e == EAGAIN then
                    c.wready = false
                elseif e ~= EINTR then
                    return write_failed(c, sys_error(e), sent)
                end
            end
        else
            local err = wait_writable(c, deadline)
            if err then return write_failed(c, err, sent) end
            c.wready = true
        end
    end
    return true
end

function Conn:write(data, timeout)
    local td = type(data)
    if td ~= "string" and td ~= "table" then
        error("lj-async.asio: write takes a string or an array of strings, got " .. td, 2)
    end
    need_lt("write")
    if self.closed or self.wshut then return nil, CLOSED, 0 end
    if wwait[self.fd] then return nil, "busy", 0 end
    if timeout == nil then timeout = self.wto end
    local deadline = deadline_of(timeout, 2)
    if td == "string" then return write_string(self, data, deadline) end
    return write_array(self, data, deadline)
end

function Conn:settimeouts(rto, wto)
    deadline_of(rto, 2)
    deadline_of(wto, 2)
    self.rto, self.wto = rto, wto
end

function Conn:shutdown(how)
    how = how or "write"
    local h = SHUT[how]
    if not h then error("lj-async.asio: shutdown takes \"write\", \"read\" or \"both\"", 2) end
    if self.closed then return nil, CLOSED end
    if C.asio_shutdown(self.fd, h) ~= 0 then return nil, sys_error(ffi_errno()) end
    if h ~= 0 then
        self.wshut = true
        local lt = wwait[self.fd]
        if lt then enqueue(lt, CLOSED) end
    end
    return true
end

function Conn:close(grace)
    if self.closed then return true end
    if grace ~= nil then
        local deadline = deadline_of(grace, 2)
        need_lt("close(grace)")
        -- Half-close, then drain until the peer closes: the peer reads all we
        -- sent and a clean end, where a close with unread input sends a reset.
        if C.asio_shutdown(self.fd, 1) == 0 then
            self.wshut = true
            local buf = self.buf
            while not self.closed do
                buf:reset()
                if fill(self, deadline) then break end
            end
        end
    end
    if not self.closed then close_fd(self) end
    if not in_run then sync_fd() end
    return true
end

local function sockaddr_ip(sa)
    local fam = sa.family
    if fam == AF_INET then
        local a = ffi_cast("asio_sockaddr_in *", sa)
        C.asio_inet_ntop(AF_INET, a.addr, ntop_buf, 64)
        return ffi_string(ntop_buf), bit.bswap(bit.lshift(a.port, 16)), "inet"
    elseif fam == AF_INET6 then
        local a = ffi_cast("asio_sockaddr_in6 *", sa)
        C.asio_inet_ntop(AF_INET6, a.addr, ntop_buf, 64)
        return ffi_string(ntop_buf), bit.bswap(bit.lshift(a.port, 16)), "inet6"
    end
    return nil, "unknown address family"
end

local function name_of(fd, fn)
    if fd < 0 then return nil, CLOSED end
    len_out[0] = ffi.sizeof(ss)
    if fn(fd, ss, len_out) ~= 0 then return nil, sys_error(ffi_errno()) end
    return sockaddr_ip(ss)
end

function Conn:getpeername()
    return name_of(self.closed and -1 or self.fd, C.asio_getpeername)
end

function Conn:getsockname()
    return name_of(self.closed and -1 or self.fd, C.asio_getsockname)
end

local OPTIONS = {
    nodelay = { IPPROTO_TCP, TCP_NODELAY, "boolean" },
    keepalive = { SOL_SOCKET, SO_KEEPALIVE, "boolean" },
    sndbuf = { SOL_SOCKET, SO_SNDBUF, "number" },
    rcvbuf = { SOL_SOCKET, SO_RCVBUF, "number" },
}

function Conn:setoption(name, value)
    local o = OPTIONS[name]
    if not o then error("lj-async.asio: unknown option " .. tostring(name), 2) end
    if type(value) ~= o[3] then error("lj-async.asio: option " .. name .. " takes a " .. o[3], 2) end
    if self.closed then return nil, CLOSED end
    local v = value
    if o[3] == "boolean" then v = value and 1 or 0 end
    if setopt(self.fd, o[1], o[2], v) ~= 0 then return nil, sys_error(ffi_errno()) end
    return true
end

-- ---- Addresses -----------------------------------------------------------
-- An IP literal as a sockaddr: sa, len, family; nil if host is no literal.
local function literal(host, port)
    local a4 = ffi.new("asio_sockaddr_in")
    if C.asio_inet_pton(AF_INET, host, a4.addr) == 1 then
        a4.family, a4.port = AF_INET, bit.rshift(bit.bswap(port), 16)
        return a4, ffi.sizeof(a4), AF_INET
    end
    local a6 = ffi.new("asio_sockaddr_in6")
    if C.asio_inet_pton(AF_INET6, host, a6.addr) == 1 then
        a6.family, a6.port = AF_INET6, bit.rshift(bit.bswap(port), 16)
        return a6, ffi.sizeof(a6), AF_INET6
    end
    return nil
end

local function port_arg(port, level)
    local p = tonumber(port)
    if (type(port) ~= "number" and type(port) ~= "string") or not p or p < 0 or p > 65535 or p % 1 ~= 0 then
        error("lj-async.asio: a port is a number or numeric string from 0 to 65535, got "
            .. tostring(port), level + 1)
    end
    return p
end

local function host_arg(host, level)
    if type(host) ~= "string" or host == "" then
        error("lj-async.asio: a host is a non-empty string (an IP address or a name)", level + 1)
    end
end

-- Runs in a thread of its own (no upvalues): getaddrinfo blocks.
local function resolver(host, ch)
    local ffi = require "ffi"
    ffi.cdef [[
    struct asio_addrinfo { int flags, family, socktype, protocol; uint32_t addrlen;
        void *addr; char *canonname; struct asio_addrinfo *next; };
    int getaddrinfo(const char *node, const char *service, const struct asio_addrinfo *hints,
                    struct asio_addrinfo **res);
    void freeaddrinfo(struct asio_addrinfo *res);
    const char *gai_strerror(int err);
    const char *inet_ntop(int af, const void *src, char *dst, uint32_t size);
    ]]
    local hints = ffi.new("struct asio_addrinfo")
    hints.socktype = 1
    local res = ffi.new("struct asio_addrinfo *[1]")
    local rc = ffi.C.getaddrinfo(host, nil, hints, res)
    if rc ~= 0 then
        -- EAI_NONAME, EAI_AGAIN (no DNS), EAI_FAIL, EAI_NODATA
        if rc == -2 or rc == -3 or rc == -4 or rc == -5 then
            ch:send(false, "host not found")
        else
            ch:send(false, ffi.string(ffi.C.gai_strerror(rc)):lower())
        end
        return
    end
    local list, seen, buf = {}, {}, ffi.new("char[64]")
    local ai = res[0]
    while ai ~= nil do
        local fam = ai.family
        local p = ffi.cast("uint8_t *", ai.addr)
        local ip = ffi.C.inet_ntop(fam, p + (fam == 2 and 4 or 8), buf, 64)
        if ip ~= nil then
            ip = ffi.string(ip)
            if not seen[ip] then
                seen[ip] = true
                list[#list + 1] = ip
            end
        end
        ai = ai.next
    end
    ffi.C.freeaddrinfo(res[0])
    ch:send(list)
end

local Thread
local function resolve(host, deadline)
    if literal(host, 0) then return { host } end
    Thread = Thread or require "lj-async.thread"
    local ch = channel.new()
    local t = Thread.new(resolver, host, ch)
    t:destroy()   -- it runs on, detached; a reply nobody waits for is dropped
    local list, err = M.recv(ch, deadline and max(deadline - now(), 0))
    if list == nil then return nil, err end   -- timeout
    if not list then return nil, err end
    return list
end

function M.resolve(host)
    host_arg(host, 2)
    need_lt("resolve")
    return resolve(host, nil)
end

function M.connect(host, port, timeout)
    host_arg(host, 2)
    port = port_arg(port, 2)
    need_lt("connect")
    local deadline = deadline_of(timeout, 2)
    local ips, err = resolve(host, deadline)
    if not ips then return nil, err end
    for _, ip in ipairs(ips) do
        local sa, salen, fam = literal(ip, port)
        local fd = C.asio_socket(fam, bor(SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC), 0)
        if fd < 0 then return nil, sys_error(ffi_errno()) end
        local rc = C.asio_connect(fd, sa, salen)
        local e = rc == 0 and 0 or ffi_errno()
        -- registered after connect: a socket not yet connecting polls as
        -- writable, which would end the wait at once
        local c = new_conn(fd)
        if e == EINPROGRESS then
            local werr = wait_writable(c, deadline)
            if werr then
                close_fd(c)
                return nil, werr
            end
            len_out[0] = 4
            C.asio_getsockopt(fd, SOL_SOCKET, SO_ERROR, int_out, len_out)
            e = int_out[0]
        end
        if e == 0 then return c end
        err = sys_error(e)
        close_fd(c)
    end
    return nil, err
end

-- ---- Servers -------------------------------------------------------------
local Server = {}
Server.__index = Server

local log_error = function(what, err)
    io.stderr:write("lj-async.asio: ", what, ": ", tostring(err), "\n")
end

local accept_all

local function resume_accepting(srv)
    srv.pause = nil
    accept_all(srv)
end

function accept_all(srv)
    local lfd = srv.fd
    while srv.fd do
        local fd = C.asio_accept4(lfd, nil, nil, bor(SOCK_NONBLOCK, SOCK_CLOEXEC))
        if fd < 0 then
            local e = ffi_errno()
            if e == EAGAIN then return end
            if e == EMFILE or e == ENFILE or e == ENOBUFS or e == ENOMEM then
                -- Out of descriptors: the pending connections stay in the
                -- backlog; try again later instead of spinning on the edge.
                if not srv.pause then
                    srv.pause = heap_push({ t = now() + PAUSE, fn = resume_accepting, arg = srv })
                end
                return
            end
            -- ECONNABORTED and the like: that one is gone, go on
        else
            local c = new_conn(fd)
            local prev = current
            current = nil   -- the handler runs outside light threads
            local ok, err = xpcall(srv.handler, traceback, c)
            current = prev
            if not ok then
                log_error("accept handler failed", err)
                close_fd(c)
            end
        end
    end
end

function M.server(host, port, handler, opts)
    host_arg(host, 2)
    port = port_arg(port, 2)
    if type(handler) ~= "function" then
        error("lj-async.asio: server's accept handler must be a function", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then error("lj-async.asio: server's options must be a table", 2) end
    opts = opts or {}
    local backlog = opts.backlog or 1024
    if type(backlog) ~= "number" or backlog < 1 then error("lj-async.asio: backlog must be a positive number", 2) end
    if host == "localhost" then host = "127.0.0.1" elseif host == "*" then host = "0.0.0.0" end
    local sa, salen, fam = literal(host, port)
    if not sa then error("lj-async.asio: server's host must be an IP address, got " .. host, 2) end
    local fd = C.asio_socket(fam, bor(SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC), 0)
    if fd < 0 then return nil, sys_error(ffi_errno()) end
    setopt(fd, SOL_SOCKET, SO_REUSEADDR, 1)
    if opts.reuseport then setopt(fd, SOL_SOCKET, SO_REUSEPORT, 1) end
    if C.asio_bind(fd, sa, salen) ~= 0 or C.asio_listen(fd, backlog) ~= 0 then
        local err = sys_error(ffi_errno())
        C.asio_close(fd)
        return nil, err
    end
    local srv = setmetatable({ fd = fd, handler = handler }, Server)
    srv.host, srv.port_ = name_of(fd, C.asio_getsockname)
    servers[fd] = srv
    nservers = nservers + 1
    epoll_add(fd, bor(EPOLLIN, EPOLLET))
    accept_all(srv)   -- none yet; keeps the edge logic in one place
    return srv
end

function Server:port()
    return self.port_
end

function Server:getsockname()
    return name_of(self.fd or -1, C.asio_getsockname)
end

function Server:close()
    local fd = self.fd
    if fd then
        self.fd = nil
        if self.pause then
            heap_remove(self.pause)
            self.pause = nil
        end
        servers[fd] = nil
        nservers = nservers - 1
        C.asio_close(fd)
    end
    return true
end

-- ---- Channels ------------------------------------------------------------
local channel_ct = ffi.typeof("struct lja_channel *")

local function chan_key(ch)
    return tonumber(ffi_cast("uintptr_t", ch))
end

local recv_after

-- A watch whose waiters are gone stays on until the loop's turn ends
-- (unwatch_idle): a light thread that receives again in the same turn, as
-- in a ping-pong with a thread, keeps it, and no trip takes the channel's
-- lock twice to watch and unwatch, which under load queues the sender
-- (its signal wakes the loop while it holds that lock).
local idle_watches = {}

local function unwatch_if_idle(key, w)
    if next(w.q) == nil and chwatch[key] == w then idle_watches[key] = w end
end

local function unwatch_idle()
    for key, w in pairs(idle_watches) do
        idle_watches[key] = nil
        if next(w.q) == nil and chwatch[key] == w then
            chwatch[key] = nil
            S.lja_channel_watch_fd(w.ptr, efd, 0)
            S.lja_object_release(w.ptr)
        end
    end
end

-- The deadline passed: a message that came with it is still taken.
local function last_look(v, ...)
    if v ~= nil then return v, ... end
    if (...) == CLOSED then return nil, CLOSED end
    return nil, TIMEOUT
end

local function wait_channel(ch, deadline, key, w)
    local r = wait(w.q, current, deadline)
    unwatch_if_idle(key, w)
    if r == TIMEOUT then return last_look(ch:recv(0)) end
    return recv_after(ch, deadline, ch:recv(0))
end

-- A message sent or the channel closed before the watch began signalled
-- nothing: one more look once it is on.
local function after_watch(ch, deadline, key, w, v, ...)
    if v ~= nil or (...) == CLOSED then
        unwatch_if_idle(key, w)
        return v, ...
    end
    return wait_channel(ch, deadline, key, w)
end

function recv_after(ch, deadline, v, ...)
    if v ~= nil then return v, ... end
    if (...) == CLOSED then return nil, CLOSED end
    if deadline and now() >= deadline then return nil, TIMEOUT end
    local key = chan_key(ch)
    local w = chwatch[key]
    if w then return wait_channel(ch, deadline, key, w) end
    local ptr = ffi_cast("void *", ch)
    S.lja_object_retain(ptr)
    S.lja_channel_watch_fd(ch, efd, 1)
    w = { ch = ch, ptr = ptr, q = {} }
    chwatch[key] = w
    return after_watch(ch, deadline, key, w, ch:recv(0))
end

local function on_channel_signal()
    for _, w in pairs(chwatch) do
        -- as many waiters as there are messages; all of them when none
        -- (the channel may have closed)
        local k = tonumber(w.ch:len())
        for _, lt in pairs(w.q) do
            if k == 1 then
                enqueue(lt, nil)
                break
            end
            enqueue(lt, nil)
            k = k - 1
        end
    end
end

function M.recv(ch, timeout)
    if not ffi_istype(channel_ct, ch) then error("lj-async.asio: recv takes a channel", 2) end
    need_lt("recv")
    return recv_after(ch, deadline_of(timeout, 2), ch:recv(0))
end

-- ---- The loop --------------------------------------------------------------
local events = ffi.new("asio_epoll_event[?]", MAX_EVENTS)
local tbuf = ffi.new("uint64_t[1]")
local its = ffi.new("asio_itimerspec")
local armed = false   -- what the timerfd is set to (absolute seconds), or false

-- Arms the timerfd for what will be due: ready light threads now, else the
-- first timer; called before control goes back to the caller.
function sync_fd()
    local want = false
    if nready > 0 then
        want = 1e-9
    else
        want = first_timer() or false
    end
    if want ~= armed then
        if want then
            local s = floor(want)
            its.value.sec, its.value.nsec = s, (want - s) * 1e9
        else
            its.value.sec, its.value.nsec = 0, 0
        end
        C.asio_timerfd_settime(tfd, TFD_TIMER_ABSTIME, its, nil)
        armed = want
    end
end

local function run_ready()
    local q, n = ready, nready
    ready, nready, spare_ready = spare_ready, 0, q
    for i = 1, n, 2 do
        local lt, v = q[i], q[i + 1]
        q[i], q[i + 1] = nil, nil
        resume(lt, v)
    end
end

local function run_timers()
    local t = now()
    while nheap > 0 and heap[1].t <= t do
        local e = heap[1]
        heap_remove(e)
        local lt = e.lt
        if lt then
            lt.tm = nil
            local tab = lt.wtab
            if tab then
                tab[lt.wkey] = nil
                lt.wtab = nil
            end
            resume(lt, TIMEOUT)
        elseif e.fn then
            e.fn(e.arg)
        end
    end
end

local IN_BITS = bor(EPOLLIN, EPOLLRDHUP, EPOLLHUP, EPOLLERR)
local HUP_BITS = bor(EPOLLRDHUP, EPOLLHUP, EPOLLERR)
local OUT_BITS = bor(EPOLLOUT, EPOLLHUP, EPOLLERR)

-- Waits up to `timeout` seconds (< 0: until something happens) for
-- events, and handles them and the timers due.
local function poll(timeout)
    unwatch_idle()
    local ms
    if nready > 0 or stopping then
        ms = 0
    else
        local t = first_timer()
        if t then
            local d = max(t - now(), 0)
            if timeout < 0 or d < timeout then timeout = d end
        end
        ms = timeout < 0 and -1 or ceil(timeout * 1000)
    end
    local n = epoll_wait(epfd, events, MAX_EVENTS, ms)
    for i = 0, n - 1 do
        local e = events[i]
        local fd, ev = e.fd, e.events
        local c = conns[fd]
        if c then
            if band(ev, IN_BITS) ~= 0 then
                c.rready = true
                if band(ev, HUP_BITS) ~= 0 then c.rhup = true end
                local lt = rwait[fd]
                if lt then
                    rwait[fd] = nil
                    unregister(lt)
                    resume(lt, nil)
                end
            end
            if band(ev, OUT_BITS) ~= 0 then
                local lt = wwait[fd]
                if lt then
                    wwait[fd] = nil
                    unregister(lt)
                    resume(lt, nil)
                end
            end
        elseif fd == efd then
            on_channel_signal()
        elseif fd == tfd then
            C.asio_read(tfd, tbuf, 8)
            armed = false
        else
            local srv = servers[fd]
            if srv and not srv.pause then accept_all(srv) end
        end
    end
    if nheap > 0 then run_timers() end
end

local function check_top(what)
    if driver then
        error("lj-async.asio: " .. what .. ": in an ltask service the service's thread runs the loop", 3)
    end
    if current ~= nil then error("lj-async.asio: " .. what .. " inside a light thread", 3) end
    if in_run then error("lj-async.asio: " .. what .. " while the loop runs", 3) end
end

function M.run(timeout)
    check_top("run")
    local deadline = deadline_of(timeout, 2)
    in_run, stopping = true, false
    local ok, err = true, nil
    while true do
        if nready > 0 then run_ready() end
        if stopping then break end
        if live == 0 and nservers == 0 and nready == 0 then break end
        local wait_s = -1
        if deadline then
            wait_s = deadline - now()
            if wait_s <= 0 then
                ok, err = false, TIMEOUT
                break
            end
        end
        poll(wait_s)
    end
    in_run, stopping = false, false
    unwatch_idle()
    sync_fd()
    return ok, err
end

function M.run_once(timeout)
    check_top("run_once")
    if timeout ~= nil then deadline_of(timeout, 2) end
    in_run = true
    if nready > 0 then run_ready() end
    poll(timeout or 0)
    if nready > 0 then run_ready() end
    in_run, stopping = false, false
    unwatch_idle()
    sync_fd()
    return live > 0 or nservers > 0
end

function M.stop()
    if driver then check_top("stop") end
    stopping = true
end

-- The driver runs the loop: pump(block) runs what is ready and handles the
-- events (waiting for one if `block`), and says whether light threads or
-- servers remain and whether more is ready; close closes every socket and
-- the loop (the service is gone).
if driver then
    driver.attach(efd, function(block)
        in_run = true
        if nready > 0 then run_ready() end
        poll(block and -1 or 0)
        if nready > 0 then run_ready() end
        in_run = false
        return live > 0 or nservers > 0, nready > 0
    end, function()
        -- the port first: a peer that sees its connection end finds it refused
        for _, srv in pairs(servers) do srv:close() end
        for _, c in pairs(conns) do close_fd(c) end
        close_loop()
    end)
end


-- ---- Many threads, one port ----------------------------------------------
-- asio.serve starts threads whose states each run a loop with their own
-- SO_REUSEPORT listener: the kernel spreads connections over them.

-- A serving thread's function (no upvalues: it crosses as bytecode).
local function serve_main(...)
    return require("lj-async.asio")._serve_thread(...)
end

function M._serve_thread(host, port, code, setup, args, ctl, ready, backlog)
    -- a function with upvalues arrives as itself, else as bytecode or source
    local loaded, handler, err = pcall(require("lj-async.transfer").load_code, code, "=(handler)")
    if not loaded then handler, err = nil, handler end
    if handler and setup then
        local ok, h = pcall(handler, unpack(args, 1, table.maxn(args)))
        handler, err = type(h) == "function" and h, ok and "the setup returned a " .. type(h) or tostring(h)
    end
    if not handler then
        ready:send(false, "asio.serve: " .. tostring(err))
        return false
    end
    local active = {}   -- connections being served
    local function serve_one(con)
        active[con] = true
        local ok, herr = xpcall(handler, traceback, con)
        active[con] = nil
        con:close()
        if not ok then log_error("asio.serve handler failed", herr) end
    end
    local srv
    srv, err = M.server(host, port, function(con) M.spawn(serve_one, con) end,
        { reuseport = true, backlog = backlog })
    if not srv then
        ready:send(false, err)
        return false
    end
    ready:send(srv:port())
    M.spawn(function()
        local grace = M.recv(ctl)
        srv:close()
        local deadline = now() + (grace or 0)
        while next(active) and now() < deadline do M.sleep(0.01) end
        for con in pairs(active) do con:close() end
        -- handlers that still wait after their connection closed are left
        deadline = now() + 1
        while live > 1 and now() < deadline do M.sleep(0.01) end
        M.stop()
    end)
    M.run()
    return true
end

local Group = {}
Group.__index = Group

local function start_wait(ready)
    local p, err = ready:recv(60)
    if p == nil then return nil, "asio.serve: a thread did not start (" .. tostring(err) .. ")" end
    if not p then return nil, err end
    return p
end

function M.serve(opts)
    if type(opts) ~= "table" then error("lj-async.asio: serve takes a table of options", 2) end
    Thread = Thread or require "lj-async.thread"
    local transfer = require "lj-async.transfer"
    local host = opts.host or "0.0.0.0"
    host_arg(host, 2)
    local port = port_arg(opts.port or 0, 2)
    local threads = opts.threads or Thread.cpu_count()
    if type(threads) ~= "number" or threads < 1 or threads % 1 ~= 0 then
        error("lj-async.asio: serve's threads must be a positive integer", 2)
    end
    if opts.handler == nil then error("lj-async.asio: serve needs a handler", 2) end
    local code = transfer.code_of(opts.handler, 2)
    local args = opts.args or {}
    if type(args) ~= "table" then error("lj-async.asio: serve's args must be a table (a list)", 2) end
    local backlog = opts.backlog or 1024
    if type(backlog) ~= "number" or backlog < 1 then error("lj-async.asio: backlog must be a positive number", 2) end
    local ctl, ready = channel.new(), channel.new()
    local group = setmetatable({ list = {}, ctl = ctl }, Group)
    local function start(p)
        local ok, t = pcall(Thread.new, serve_main, host, p, code, not not opts.setup, args, ctl, ready, backlog)
        if not ok then
            group:stop()
            error(t, 3)
        end
        group.list[#group.list + 1] = t
    end
    start(port)
    local p, err = start_wait(ready)
    if not p then
        group:stop()
        return nil, err
    end
    group.port_ = p
    for _ = 2, threads do start(p) end
    for _ = 2, threads do
        local q, qerr = start_wait(ready)
        if not q then
            group:stop()
            return nil, qerr
        end
    end
    return group
end

function Group:port()
    return self.port_
end

function Group:stop(grace)
    if grace ~= nil and (type(grace) ~= "number" or grace ~= grace) then
        error("lj-async.asio: stop's grace is a number of seconds", 2)
    end
    if self.stopped then return true end
    self.stopped = true
    for _ = 1, #self.list do self.ctl:send(grace or 0) end
    for _, t in ipairs(self.list) do
        t:join()
        t:destroy()
    end
    return true
end

function M.fd()
    return epfd
end

return M
