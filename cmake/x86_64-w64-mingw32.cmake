# Cross-compiling toolchain for 64-bit Windows (Debian's mingw-w64, the POSIX thread model,
# which std::thread needs); tests run under wine (CMAKE_CROSSCOMPILING_EMULATOR). Programs
# are linked statically, so no MinGW DLL has to be found at run time.
#   cmake -S . -B build-windows -DCMAKE_TOOLCHAIN_FILE=cmake/x86_64-w64-mingw32.cmake
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

set(TINYSLM_MINGW_PREFIX x86_64-w64-mingw32- CACHE STRING "Prefix of the cross tools")
set(CMAKE_C_COMPILER ${TINYSLM_MINGW_PREFIX}gcc-posix)
set(CMAKE_CXX_COMPILER ${TINYSLM_MINGW_PREFIX}g++-posix)
set(CMAKE_RC_COMPILER ${TINYSLM_MINGW_PREFIX}windres)
set(CMAKE_EXE_LINKER_FLAGS_INIT -static)
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-static-libgcc -static-libstdc++")

set(CMAKE_FIND_ROOT_PATH /usr/x86_64-w64-mingw32)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
# Header-only packages (doctest) come from the host.
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

find_program(TINYSLM_WINE NAMES wine64 wine PATHS /usr/lib/wine)
if(TINYSLM_WINE)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${TINYSLM_WINE})
endif()

# Debian's doctest config points at /usr/include, which holds glibc's headers too.
set(doctest_DIR ${CMAKE_CURRENT_LIST_DIR}/doctest-header-only CACHE PATH "doctest for the Windows cross build")
