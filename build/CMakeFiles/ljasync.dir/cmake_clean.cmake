file(REMOVE_RECURSE
  "CMakeFiles/ljasync.dir/csrc/atomic.c.o"
  "CMakeFiles/ljasync.dir/csrc/atomic.c.o.d"
  "CMakeFiles/ljasync.dir/csrc/clock.c.o"
  "CMakeFiles/ljasync.dir/csrc/clock.c.o.d"
  "CMakeFiles/ljasync.dir/csrc/error.c.o"
  "CMakeFiles/ljasync.dir/csrc/error.c.o.d"
  "CMakeFiles/ljasync.dir/csrc/gate.c.o"
  "CMakeFiles/ljasync.dir/csrc/gate.c.o.d"
  "CMakeFiles/ljasync.dir/csrc/lua.c.o"
  "CMakeFiles/ljasync.dir/csrc/lua.c.o.d"
  "CMakeFiles/ljasync.dir/csrc/thread.c.o"
  "CMakeFiles/ljasync.dir/csrc/thread.c.o.d"
  "ljasync.pdb"
  "ljasync.so"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/ljasync.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
