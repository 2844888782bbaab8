// The C API (include/tinyslm.h) as a library: the one translation unit that defines
// TINYSLM_C_IMPLEMENTATION. CMake's tinyslm_c and meson's tinyslm_c build it as a shared library.
#define TINYSLM_C_IMPLEMENTATION
#include "tinyslm.h"
