// tinyslm conv: the gated short causal convolution of LFM2's convolution layers.
//
// A layer projects its input to three chunks b, c, x of n_embd values (in_proj), runs a
// depthwise causal convolution of width L over u = b * x along the sequence, gates the result
// with c and projects it back (out_proj):
//
//   y[t][ch] = c[t][ch] * sum_{k < L} w[ch][k] * u[t - (L - 1) + k][ch]
//
// The values of u before the chunk come from the sequence's state: the last L - 1 rows of u.
// A chunk of n tokens runs in one pass (each thread owns a range of channels for all tokens),
// so prefill is batched like the matmuls around it.
#pragma once

#include <cstdint>
#include <cstring>

#include "core.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace detail {

// Channels [c0, c1) of the chunk: u = b * x in place of b, then y, then the new state.
inline void short_conv_channels(float* bcx, int64_t ld, int64_t n, int64_t E, int64_t L, const float* w,
                                float* state, float* out, int64_t ldo, int64_t c0, int64_t c1) {
  for (int64_t t = 0; t < n; ++t) {
    float* b = bcx + t * ld;
    const float* x = b + 2 * E;
    for (int64_t ch = c0; ch < c1; ++ch) b[ch] *= x[ch];
  }
  const int64_t S = L - 1;  // state rows
  for (int64_t t = 0; t < n; ++t) {
    float* y = out + t * ldo;
    for (int64_t ch = c0; ch < c1; ++ch) y[ch] = 0.0f;
    for (int64_t k = 0; k < L; ++k) {
      const int64_t j = t - S + k;  // the input row tap k reads
      const float* u = j < 0 ? state + (S + j) * E : bcx + j * ld;
      for (int64_t ch = c0; ch < c1; ++ch) y[ch] += w[ch * L + k] * u[ch];
    }
    const float* gate = bcx + t * ld + E;
    for (int64_t ch = c0; ch < c1; ++ch) y[ch] *= gate[ch];
  }
  // The new state: the last S rows of [state; u], in increasing row order (row r reads row
  // r + n of the old state, not yet overwritten).
  for (int64_t r = 0; r < S; ++r) {
    const int64_t j = r + n - S;  // row of u, or of the old state when negative
    const float* src = j < 0 ? state + (r + n) * E : bcx + j * ld;
    std::memcpy(state + r * E + c0, src + c0, static_cast<size_t>(c1 - c0) * sizeof(float));
  }
}

}  // namespace detail

// The convolution of one chunk: bcx holds n rows of [b | c | x] (n_embd each, row stride ld;
// b is overwritten), w the kernel [n_embd][L], state the (L - 1) x n_embd rows of u before the
// chunk (updated), out receives n rows of y (stride ldo).
inline void short_conv(float* bcx, int64_t ld, int64_t n, int64_t n_embd, int64_t L, const float* w, float* state,
                       float* out, int64_t ldo, const ParallelFor& par) {
  if (n < 4) {
    detail::short_conv_channels(bcx, ld, n, n_embd, L, w, state, out, ldo, 0, n_embd);
    return;
  }
  par([&](int t, int nt) {
    int64_t c0, c1;
    ParallelFor::split(n_embd, t, nt, 16, &c0, &c1);
    if (c1 > c0) detail::short_conv_channels(bcx, ld, n, n_embd, L, w, state, out, ldo, c0, c1);
  });
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
