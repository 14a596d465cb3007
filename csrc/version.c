/* version.c: what lj-async/shim.lua checks when it loads the shim. */
#include "ljasync.h"

int lja_abi_version(void)
{
    return LJA_ABI_VERSION;
}

const char *lja_version(void)
{
    return LJA_VERSION; /* CMakeLists.txt passes its project version */
}
