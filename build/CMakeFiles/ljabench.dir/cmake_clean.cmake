file(REMOVE_RECURSE
  "CMakeFiles/ljabench.dir/bench/native.c.o"
  "CMakeFiles/ljabench.dir/bench/native.c.o.d"
  "ljabench.pdb"
  "ljabench.so"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/ljabench.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
