// tinyslm kernels, hwy paths (filled in below; the scalar reference is kernels_scalar.hpp).
#pragma once

#include "kernels_scalar.hpp"
