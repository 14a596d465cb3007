/* error.c: messages for the shim's error codes. */
#include "ljasync.h"

const char *lja_strerror(int err)
{
    switch (err) {
    case LJA_OK: return "ok";
    case LJA_ETIMEDOUT: return "timeout";
    case LJA_ENOMEM: return "out of memory";
    case LJA_EINVAL: return "invalid argument";
    case LJA_EAGAIN: return "not available now";
    case LJA_ESYS: return "system error";
    case LJA_ECLOSED: return "closed";
    case LJA_EBUSY: return "busy";
    case LJA_ENOTFOUND: return "not found";
    default: return "unknown error";
    }
}
