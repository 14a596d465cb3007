file(REMOVE_RECURSE
  "ljasync.pdb"
  "ljasync.so"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/ljasync.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
