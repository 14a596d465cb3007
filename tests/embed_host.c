/* embed_host.c: a C program that embeds LuaJIT and runs a Lua file, as a
 * user's application would; lj-async must work inside it (README: Build, load, install). */
#include <stdio.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s script.lua\n", argv[0]);
        return 2;
    }
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    int rc = luaL_dofile(L, argv[1]);
    if (rc != 0)
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
    lua_close(L);
    return rc != 0;
}
