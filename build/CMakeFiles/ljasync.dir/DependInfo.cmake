
# Consider dependencies only in project.
set(CMAKE_DEPENDS_IN_PROJECT_ONLY OFF)

# The set of languages for which implicit dependencies are needed:
set(CMAKE_DEPENDS_LANGUAGES
  )

# The set of dependency files which are needed:
set(CMAKE_DEPENDS_DEPENDENCY_FILES
  "/work/main/csrc/atomic.c" "CMakeFiles/ljasync.dir/csrc/atomic.c.o" "gcc" "CMakeFiles/ljasync.dir/csrc/atomic.c.o.d"
  "/work/main/csrc/clock.c" "CMakeFiles/ljasync.dir/csrc/clock.c.o" "gcc" "CMakeFiles/ljasync.dir/csrc/clock.c.o.d"
  "/work/main/csrc/error.c" "CMakeFiles/ljasync.dir/csrc/error.c.o" "gcc" "CMakeFiles/ljasync.dir/csrc/error.c.o.d"
  "/work/main/csrc/gate.c" "CMakeFiles/ljasync.dir/csrc/gate.c.o" "gcc" "CMakeFiles/ljasync.dir/csrc/gate.c.o.d"
  "/work/main/csrc/lua.c" "CMakeFiles/ljasync.dir/csrc/lua.c.o" "gcc" "CMakeFiles/ljasync.dir/csrc/lua.c.o.d"
  "/work/main/csrc/thread.c" "CMakeFiles/ljasync.dir/csrc/thread.c.o" "gcc" "CMakeFiles/ljasync.dir/csrc/thread.c.o.d"
  )

# Targets to which this target links.
set(CMAKE_TARGET_LINKED_INFO_FILES
  )

# Fortran module output directory.
set(CMAKE_Fortran_TARGET_MODULE_DIR "")
