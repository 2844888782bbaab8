# doctest for a cross build whose compiler must not see the host's /usr/include (where Debian
# puts doctest, next to glibc's headers): a directory that holds only doctest's headers.
# Used by cmake/x86_64-w64-mingw32.cmake through doctest_DIR.
find_path(TINYSLM_DOCTEST_HOST_DIR doctest/doctest.h PATHS /usr/include /usr/local/include NO_CMAKE_FIND_ROOT_PATH)
if(NOT TINYSLM_DOCTEST_HOST_DIR)
  set(doctest_FOUND FALSE)
  return()
endif()
set(_tinyslm_doctest_dir ${CMAKE_BINARY_DIR}/doctest-only)
file(MAKE_DIRECTORY ${_tinyslm_doctest_dir})
file(CREATE_LINK ${TINYSLM_DOCTEST_HOST_DIR}/doctest ${_tinyslm_doctest_dir}/doctest SYMBOLIC)
if(NOT TARGET doctest::doctest)
  add_library(doctest::doctest INTERFACE IMPORTED)
  set_target_properties(doctest::doctest PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${_tinyslm_doctest_dir})
endif()
set(doctest_FOUND TRUE)
