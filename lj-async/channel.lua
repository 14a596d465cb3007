-- lj-async.channel: MPMC channels of messages between any threads and
-- states (README: lj-async.channel).  A message is one or more values, encoded in the
-- sender's state (outside any lock) and queued in the shim
-- (csrc/channel.c).  Expected failures return nil, err ("timeout",
-- "closed"); bad arguments and values that cannot cross raise errors.
-- In a cancelled lj-async thread a wait returns at once and, unless it got
-- its message, raises the cancel (check_cancel).
local shim = require "lj-async.shim"
local ffi = require "ffi"
local object = require "lj-async.object"
local transfer = require "lj-async.transfer"

ffi.cdef [[
typedef struct lja_channel lja_channel;
typedef struct lja_msg lja_msg;
lja_channel *lja_channel_new(int64_t capacity);
int lja_channel_send(lja_channel *ch, const char *data, size_t len,
                     void *const *objs, int nobjs, double timeout);
enum { LJA_MSG_INLINE = 48 };
int lja_channel_recv_into(lja_channel *ch, lja_msg **msg, char *buf, size_t *len,
                          double timeout);
int lja_channel_select(lja_channel *const *chs, int n, int *index, lja_msg **msg,
                       char *buf, size_t *len, double timeout);
void lja_channel_close(lja_channel *ch);
int64_t lja_channel_len(lja_channel *ch);
const char *lja_msg_data(lja_msg *msg, size_t *len);
void lja_msg_free(lja_msg *msg);
]]

local C = shim.C
local select, error, type = select, error, type
local encode_at, decode = transfer.encode_at, transfer.decode
local timeout_arg, check_cancel = shim.timeout_arg, shim.check_cancel
local LJA_OK, LJA_ETIMEDOUT, LJA_ECLOSED = C.LJA_OK, C.LJA_ETIMEDOUT, C.LJA_ECLOSED
local send_c, recv_c, msg_data, msg_free = C.lja_channel_send, C.lja_channel_recv_into, C.lja_msg_data, C.lja_msg_free

local M = {}
M._VERSION = shim.VERSION
local Channel = {}
local wrap = object.define("channel", "lj-async.channel", C.LJA_KIND_CHANNEL, "struct lja_channel", Channel)

local objs_array, forget_exported = transfer.objs_array, transfer.forget_exported

-- A message of one number is its 8 bytes after the byte NUMBER, which no
-- encoded message starts with (its first value is always the count, a
-- number): the commonest message skips string.buffer at both ends.
local NUMBER = 1
local number_ct = ffi.typeof("struct __attribute__((packed)) { char tag; double v; }")
local number_ptr = ffi.typeof("$ *", number_ct)
local number_out = number_ct(NUMBER)
local number_bytes, number_len = ffi.cast("const char *", number_out), ffi.sizeof(number_ct)

-- Encode and send; returns the shim's code.  The message's object
-- references go with it, sent or not.  Raises at `level` (counted from the
-- public method) on a value that cannot cross.
local function send(ch, timeout, level, n, v, ...)
    if n == 0 or v == nil then error("lj-async: a message's first value must not be nil", level + 1) end
    if n == 1 and type(v) == "number" then
        number_out.v = v
        return send_c(ch, number_bytes, number_len, nil, 0, timeout)
    end
    local p, len = encode_at(level + 1, 0, n, v, ...)   -- raises on what cannot cross
    local objs, nobjs = objs_array()
    if nobjs > 0 then forget_exported() end   -- the message holds them now
    return send_c(ch, p, len, objs, nobjs, timeout)
end

function Channel:send(...)
    local rc = send(self, -1, 2, select("#", ...), ...)
    if rc == LJA_ETIMEDOUT then check_cancel() end
    if rc == LJA_ECLOSED then error("lj-async: send on a closed channel", 2) end
    if rc ~= LJA_OK then error("lj-async: send failed: " .. shim.strerror(rc), 2) end
end

function Channel:send_timeout(timeout, ...)
    local rc = send(self, timeout_arg(timeout, 2), 2, select("#", ...), ...)
    if rc == LJA_OK then return true end
    if rc == LJA_ETIMEDOUT then
        check_cancel()
        return nil, "timeout"
    end
    if rc == LJA_ECLOSED then return nil, "closed" end
    error("lj-async: send failed: " .. shim.strerror(rc), 2)
end

local msg_out = ffi.new("lja_msg *[1]")
local len_out = ffi.new("size_t[1]")
-- Where a small message without objects is copied (lja_channel_recv_into).
local inline = ffi.new("char[?]", C.LJA_MSG_INLINE)

local function free_after(msg, n, ...)
    msg_free(msg)
    return ...
end

local function values(n, ...)
    return ...
end

-- The values of a received message: the one in `inline`, or msg (freed).
local function open(msg)
    if msg == nil then
        if inline[0] == NUMBER then return ffi.cast(number_ptr, inline).v end
        return values(decode(inline, len_out[0]))
    end
    local p = msg_data(msg, len_out)
    if p[0] == NUMBER then
        local v = ffi.cast(number_ptr, p).v
        msg_free(msg)
        return v
    end
    return free_after(msg, decode(p, len_out[0]))
end

function Channel:recv(timeout)
    local rc = recv_c(self, msg_out, inline, len_out, timeout_arg(timeout, 2))
    if rc == LJA_OK then return open(msg_out[0]) end
    if rc == LJA_ETIMEDOUT then
        check_cancel()
        return nil, "timeout"
    end
    return nil, "closed"
end

function Channel:try_recv()
    return self:recv(0)
end

Channel.close = C.lja_channel_close

function Channel:len()
    return tonumber(C.lja_channel_len(self))
end

Channel.id = object.id

local MAX_CAPACITY = 2 ^ 53

function M.new(capacity)
    if capacity ~= nil and not (type(capacity) == "number" and capacity >= 1 and capacity <= MAX_CAPACITY
            and capacity % 1 == 0) then
        error("lj-async: channel.new: the capacity must be an integer from 1 to 2^53 (nil: unbounded), got "
            .. (type(capacity) == "number" and tostring(capacity) or type(capacity)), 2)
    end
    local ch = wrap(C.lja_channel_new(capacity or 0))
    if ch == nil then error("lj-async: cannot make a channel (out of memory)", 2) end
    return ch
end

function M.get(id)
    local ch, err = object.find(wrap, C.LJA_KIND_CHANNEL, "channel", id)
    if ch == nil then error(err, 2) end
    return ch
end

local index_out = ffi.new("int[1]")
local channel_ct = ffi.typeof("struct lja_channel *")

-- Receives from the first of the channels with a message: ch, values... .
-- A closed, drained channel is ready too: ch, nil, "closed".
function M.select(chs, timeout)
    if type(chs) ~= "table" or #chs == 0 then
        error("lj-async: select takes a non-empty list of channels", 2)
    end
    local n = #chs
    local arr = ffi.new("lja_channel *[?]", n)
    for i = 1, n do
        if not ffi.istype(channel_ct, chs[i]) then error("lj-async: select: item " .. i .. " is not a channel", 2) end
        arr[i - 1] = chs[i]
    end
    local rc = C.lja_channel_select(arr, n, index_out, msg_out, inline, len_out, timeout_arg(timeout, 2))
    if rc == LJA_ETIMEDOUT then
        check_cancel()
        return nil, "timeout"
    end
    local ch = chs[index_out[0] + 1]
    if rc == LJA_ECLOSED then return ch, nil, "closed" end
    if rc ~= LJA_OK then error("lj-async: select failed: " .. shim.strerror(rc), 2) end
    return ch, open(msg_out[0])
end

return M
