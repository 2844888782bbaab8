// tinyslm deltanet: the Gated DeltaNet linear-attention layers of Qwen3.5.
//
// A layer projects its normed input to a mix of [q: nK x d | k: nK x d | v: nV x d] channels
// (attn_qkv), a gate z (attn_gate, nV x d) and two scalars per V head (ssm_beta, ssm_alpha).
// The mix goes through a depthwise causal convolution of width L (ssm_conv1d) and SiLU; q and
// k are L2-normalised per head. Each V head h keeps a d x d state S (K/Q head h % nK: the
// heads are tiled, not interleaved) updated per token by the gated delta rule:
//
//   beta = sigmoid(b_h),  g = softplus(a_h + dt_bias_h) * A_h    (A_h = ssm_a = -exp(A_log))
//   S = exp(g) S;   S += k (beta (v - S^T k))^T;   o = S^T q / sqrt(d)
//
// and the output rms_norm(o) * ssm_norm * silu(z) of all heads goes through ssm_out.
// S is stored with the value index major: M[j][i] = S[i][j], so S^T k is a row-wise dot.
//
// The per-sequence state of one layer is the last L - 1 rows of the mix (before the
// convolution) followed by the nV states, all F32 (DeltaNetShape::state_floats).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core.hpp"
#include "ops.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

// The sizes of a DeltaNet layer (qwen35.ssm.* keys).
struct DeltaNetShape {
  int64_t d_state = 0;    // ssm.state_size: head size of q, k and v
  int64_t n_k_heads = 0;  // ssm.group_count
  int64_t n_v_heads = 0;  // ssm.time_step_rank
  int64_t d_conv = 0;     // ssm.conv_kernel: convolution width L

  int64_t key_dim() const { return n_k_heads * d_state; }
  int64_t value_dim() const { return n_v_heads * d_state; }
  int64_t channels() const { return 2 * key_dim() + value_dim(); }
  int64_t conv_state_floats() const { return (d_conv - 1) * channels(); }
  int64_t state_floats() const { return conv_state_floats() + n_v_heads * d_state * d_state; }
  // One projected row: [mix | z | beta | alpha].
  int64_t proj_width() const { return channels() + value_dim() + 2 * n_v_heads; }
};

inline constexpr int64_t kDeltaNetMaxState = 1024;  // largest ssm.state_size accepted

namespace detail {

inline float dn_sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline float dn_softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

// Channels [c0, c1) of the convolution + SiLU: mix rows (stride ld) -> out rows (stride ldo);
// state holds the L - 1 mix rows before the chunk (updated to the last L - 1 rows).
inline void dn_conv_channels(const float* mix, int64_t ld, int64_t n, int64_t C, int64_t L, const float* w,
                             float* state, float* out, int64_t ldo, int64_t c0, int64_t c1) {
  const int64_t S = L - 1;
  for (int64_t t = 0; t < n; ++t) {
    float* y = out + t * ldo;
    for (int64_t ch = c0; ch < c1; ++ch) y[ch] = 0.0f;
    for (int64_t k = 0; k < L; ++k) {
      const int64_t j = t - S + k;
      const float* u = j < 0 ? state + (S + j) * C : mix + j * ld;
      for (int64_t ch = c0; ch < c1; ++ch) y[ch] += w[ch * L + k] * u[ch];
    }
    for (int64_t ch = c0; ch < c1; ++ch) y[ch] = y[ch] / (1.0f + std::exp(-y[ch]));
  }
  for (int64_t r = 0; r < S; ++r) {  // increasing rows: row r reads old row r + n, not yet written
    const int64_t j = r + n - S;
    const float* src = j < 0 ? state + (r + n) * C : mix + j * ld;
    std::memcpy(state + r * C + c0, src + c0, static_cast<size_t>(c1 - c0) * sizeof(float));
  }
}

// x / max(||x||, eps), as ggml_l2_norm.
inline void dn_l2_norm(float* x, int64_t n, float eps) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  const float scale = 1.0f / std::fmax(std::sqrt(static_cast<float>(sum)), eps);
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

}  // namespace detail

// The causal convolution and SiLU of a chunk of n mix rows (see dn_conv_channels); w is the
// kernel [channels][L].
inline void delta_net_conv(const DeltaNetShape& s, const float* mix, int64_t ld, int64_t n, const float* w,
                           float* conv_state, float* out, int64_t ldo, const ParallelFor& par) {
  const int64_t C = s.channels();
  if (n < 4) {
    detail::dn_conv_channels(mix, ld, n, C, s.d_conv, w, conv_state, out, ldo, 0, C);
    return;
  }
  par([&](int t, int nt) {
    int64_t c0, c1;
    ParallelFor::split(C, t, nt, 16, &c0, &c1);
    if (c1 > c0) detail::dn_conv_channels(mix, ld, n, C, s.d_conv, w, conv_state, out, ldo, c0, c1);
  });
}

// Per token of a projected row: q and k heads L2-normalised in the convolved row `qkv`, and
// the gates: beta[h] = sigmoid, g[h] = softplus(alpha + dt_bias) * A, written over the raw
// beta and alpha of the projected row `ba` ([beta nV | alpha nV]).
inline void delta_net_prepare(const DeltaNetShape& s, float* qkv, float* ba, const float* dt_bias, const float* a,
                              float eps) {
  const int64_t d = s.d_state;
  for (int64_t h = 0; h < 2 * s.n_k_heads; ++h) detail::dn_l2_norm(qkv + h * d, d, eps);
  for (int64_t h = 0; h < s.n_v_heads; ++h) {
    ba[h] = detail::dn_sigmoid(ba[h]);
    float& g = ba[s.n_v_heads + h];
    g = detail::dn_softplus(g + dt_bias[h]) * a[h];
  }
}

// The gated delta rule of V head h over n tokens, one at a time: qkv rows (stride ld, q and k
// normalised), gates rows ba (stride ldb, as delta_net_prepare leaves them), state M (d x d,
// value index major). The head's output replaces its v in the qkv rows. The dot products of
// all rows of M at once (ops' SIMD row dots): S^T k = decay (M k) before the update.
inline void delta_net_recurrence(const DeltaNetShape& s, int64_t h, float* qkv, int64_t ld, const float* ba,
                                 int64_t ldb, int64_t n, float* M) {
  const int64_t d = s.d_state, hk = h % s.n_k_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t t = 0; t < n; ++t) {
    const float* q = qkv + t * ld + hk * d;
    const float* k = q + s.key_dim();
    float* v = qkv + t * ld + 2 * s.key_dim() + h * d;
    const float beta = ba[t * ldb + h], decay = std::exp(ba[t * ldb + s.n_v_heads + h]);
    float u[kDeltaNetMaxState];  // M k, then the deltas beta (v - decay M k)
    ops::detail::scores_rows(k, M, d, d, u);
    for (int64_t j = 0; j < d; ++j) u[j] = beta * (v[j] - decay * u[j]);
    for (int64_t j = 0; j < d; ++j) {
      float* row = M + j * d;
      for (int64_t i = 0; i < d; ++i) row[i] = row[i] * decay + k[i] * u[j];
    }
    ops::detail::scores_rows(q, M, d, d, v);
    for (int64_t j = 0; j < d; ++j) v[j] *= scale;
  }
}

// Chunked form of the same rule for prefill: a chunk of T tokens at once with matrix
// products. With G_t the cumulative log-decay inside the chunk (Gamma_t = exp(G_t)) and S0 the
// state before it, the deltas u_t = beta_t (v_t - S'_t^T k_t) solve the unit lower-triangular
// system (I + L) U = diag(beta) (V - diag(Gamma) K S0), L[t][s] = beta_t e^{G_t - G_s} k_t.k_s
// (s < t); then o_t = Gamma_t S0^T q_t + sum_{s <= t} e^{G_t - G_s} (q_t.k_s) u_s and
// S = Gamma_T S0 + sum_s e^{G_T - G_s} k_s u_s^T. Every exponent is <= 0 (g <= 0): no overflow.
inline constexpr int64_t kDeltaNetChunk = 64;
inline constexpr int64_t kDeltaNetChunkMin = 8;  // fewer tokens run the token-by-token rule

// Scratch floats delta_net_chunked needs (per thread).
inline int64_t delta_net_scratch_floats(const DeltaNetShape& s) {
  const int64_t T = kDeltaNetChunk;
  return 2 * T * T + 3 * T * s.d_state + T;
}

namespace detail {

inline void dn_axpy(float* y, const float* x, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// One chunk of T <= kDeltaNetChunk tokens of V head h (arguments as delta_net_recurrence).
inline void dn_chunk(const DeltaNetShape& s, int64_t h, float* qkv, int64_t ld, const float* ba, int64_t ldb,
                     int64_t T, float* M, float* scratch) {
  const int64_t d = s.d_state, hk = h % s.n_k_heads, TC = kDeltaNetChunk;
  float* KK = scratch;          // L, then (I + L)'s solve is in place on U
  float* QK = KK + TC * TC;     // e^{G_t - G_s} q_t.k_s
  float* U = QK + TC * TC;      // T x d deltas
  float* O = U + TC * d;        // T x d outputs
  float* Kc = O + TC * d;       // the chunk's keys, contiguous
  float* G = Kc + TC * d;       // cumulative log-decay
  const auto q = [&](int64_t t) { return qkv + t * ld + hk * d; };
  const auto k = [&](int64_t t) { return Kc + t * d; };
  const auto v = [&](int64_t t) { return qkv + t * ld + 2 * s.key_dim() + h * d; };
  float acc = 0.0f;
  for (int64_t t = 0; t < T; ++t) {
    G[t] = acc += ba[t * ldb + s.n_v_heads + h];
    std::memcpy(Kc + t * d, qkv + t * ld + s.key_dim() + hk * d, static_cast<size_t>(d) * sizeof(float));
  }
  for (int64_t t = 0; t < T; ++t) {  // U = diag(beta) (V - diag(Gamma) K S0); O = diag(Gamma) Q S0
    const float beta = ba[t * ldb + h], gamma = std::exp(G[t]);
    ops::detail::scores_rows(k(t), M, d, d, U + t * d);
    ops::detail::scores_rows(q(t), M, d, d, O + t * d);
    for (int64_t j = 0; j < d; ++j) {
      U[t * d + j] = beta * (v(t)[j] - gamma * U[t * d + j]);
      O[t * d + j] *= gamma;
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    const float beta = ba[t * ldb + h];
    ops::detail::scores_rows(q(t), Kc, d, t + 1, QK + t * TC);
    ops::detail::scores_rows(k(t), Kc, d, t, KK + t * TC);
    for (int64_t u = 0; u <= t; ++u) {
      const float e = std::exp(G[t] - G[u]);
      QK[t * TC + u] *= e;
      if (u < t) KK[t * TC + u] *= beta * e;
    }
  }
  for (int64_t t = 1; t < T; ++t)  // forward substitution: rows of U in order
    for (int64_t u = 0; u < t; ++u) dn_axpy(U + t * d, U + u * d, -KK[t * TC + u], d);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t u = 0; u <= t; ++u) dn_axpy(O + t * d, U + u * d, QK[t * TC + u], d);
    for (int64_t j = 0; j < d; ++j) v(t)[j] = O[t * d + j] * scale;
  }
  const float gamma_T = std::exp(G[T - 1]);
  for (int64_t t = 0; t < T; ++t) G[t] = std::exp(G[T - 1] - G[t]);  // e^{G_T - G_s}
  for (int64_t j = 0; j < d; ++j) {
    float* row = M + j * d;
    for (int64_t i = 0; i < d; ++i) row[i] *= gamma_T;
    for (int64_t t = 0; t < T; ++t) dn_axpy(row, k(t), G[t] * U[t * d + j], d);
  }
}

}  // namespace detail

// The delta rule of V head h over n tokens in chunks of kDeltaNetChunk (same arguments and
// result as delta_net_recurrence, up to rounding); scratch: delta_net_scratch_floats.
inline void delta_net_chunked(const DeltaNetShape& s, int64_t h, float* qkv, int64_t ld, const float* ba, int64_t ldb,
                              int64_t n, float* M, float* scratch) {
  for (int64_t t0 = 0; t0 < n; t0 += kDeltaNetChunk) {
    const int64_t T = std::min(kDeltaNetChunk, n - t0);
    detail::dn_chunk(s, h, qkv + t0 * ld, ld, ba + t0 * ldb, ldb, T, M, scratch);
  }
}

// out = rms_norm(o) * w * silu(z) per V head (w: d values shared by the heads). out may alias o.
inline void delta_net_gated_norm(const DeltaNetShape& s, const float* o, const float* w, const float* z, float* out,
                                 float eps) {
  const int64_t d = s.d_state;
  for (int64_t h = 0; h < s.n_v_heads; ++h) {
    const float* x = o + h * d;
    double sum = 0.0;
    for (int64_t i = 0; i < d; ++i) sum += static_cast<double>(x[i]) * x[i];
    const float scale = 1.0f / std::sqrt(static_cast<float>(sum / static_cast<double>(d)) + eps);
    for (int64_t i = 0; i < d; ++i) {
      const float g = z[h * d + i];
      out[h * d + i] = (x[i] * scale) * w[i] * (g / (1.0f + std::exp(-g)));
    }
  }
}

// qwen35's gated attention layers: attn_q gives per head [query (hd) | gate (hd)]. Splits
// one row `raw` (2 n_head hd values) into q and gate (n_head hd each).
inline void split_query_gate(const float* raw, int64_t n_head, int64_t hd, float* q, float* gate) {
  for (int64_t h = 0; h < n_head; ++h) {
    std::memcpy(q + h * hd, raw + 2 * h * hd, static_cast<size_t>(hd) * sizeof(float));
    std::memcpy(gate + h * hd, raw + 2 * h * hd + hd, static_cast<size_t>(hd) * sizeof(float));
  }
}

// att *= sigmoid(gate), n values: the attention output before attn_output.
inline void apply_output_gate(float* att, const float* gate, int64_t n) {
  for (int64_t i = 0; i < n; ++i) att[i] *= detail::dn_sigmoid(gate[i]);
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
