// tinyslm: run small language models from GGUF files on the CPU.
// This umbrella header includes every layer, lowest first (see DESIGN.md).
#pragma once

#include "tinyslm/core.hpp"
#include "tinyslm/gguf.hpp"
#include "tinyslm/quant.hpp"
#include "tinyslm/quantize_model.hpp"
#include "tinyslm/kernels_scalar.hpp"
#include "tinyslm/kernels_avx2.hpp"
#include "tinyslm/kernels_avx512.hpp"
#include "tinyslm/kernels_neon.hpp"
#include "tinyslm/kernels_hwy.hpp"
#include "tinyslm/kernels.hpp"
#include "tinyslm/ops.hpp"
#include "tinyslm/threads.hpp"
#include "tinyslm/model.hpp"
#include "tinyslm/kv.hpp"
#include "tinyslm/moe.hpp"
#include "tinyslm/forward.hpp"
#include "tinyslm/tokenizer.hpp"
#include "tinyslm/chat.hpp"
#include "tinyslm/sampler.hpp"
#include "tinyslm/session.hpp"
