// tinyslm moe: the mixture-of-experts feed-forward step (mixtral, qwen2moe, qwen3moe, olmoe).
//
//   logits = ffn_gate_inp . x                       (one per expert)
//   p      = softmax(logits) or sigmoid(logits)
//   top-k experts by p (ties: the lower expert id wins), weights w_j = p[e_j]
//   optionally w_j /= sum_j w_j, optionally w_j *= weights_scale
//   out    = sum_j w_j * down_e(silu(gate_e . x) * up_e . x)
//          + [sigmoid(ffn_gate_inp_shexp . x)] * down_s(silu(gate_s . x) * up_s . x)
//
// Expert weights are the stacked 3-D tensors ffn_{gate,up,down}_exps; expert e's matrix is
// the slice at byte offset e * rows * row_bytes, so a token reads only its experts' rows.
// Decode (one token) splits the rows of every selected expert over the threads, two parallel
// regions per layer. Prefill groups the batch's tokens by expert: each expert with at least
// one token runs one GEMM over the rows routed to it, so its weights are read once per batch.
//
// Both paths add the experts' contributions to a token in ascending expert id, then the
// shared expert, with the same arithmetic, so a batch gives what token-by-token decoding
// gives up to the difference between the GEMM and GEMV kernels: none with the scalar
// kernels; with the SIMD ones their summation order (~1e-7), which can move an activation
// across an 8-bit rounding boundary before the down projection.
//
// The configuration (MoeConfig) and the weights (MoeLayerWeights) are read and bound by the
// model layer; this header routes and evaluates.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "core.hpp"
#include "kernels.hpp"
#include "model.hpp"
#include "ops.hpp"
#include "quant.hpp"
#include "threads.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

// Weight bytes one decode step of this layer's FFN reads: the router, the k selected
// experts' gate, up and down matrices, and the shared expert (for the bench's "bytes read
// per token" against the model's active-parameter size).
inline uint64_t moe_decode_bytes(const MoeConfig& cfg, const MoeLayerWeights& w) {
  auto bytes = [](const MatrixRef& m) -> uint64_t {
    uint64_t rb = 0;
    if (!m.data || !tensor_row_bytes(m.type, static_cast<uint64_t>(m.cols), &rb)) return 0;
    return rb * static_cast<uint64_t>(m.rows);
  };
  uint64_t n = bytes(w.router);
  n += static_cast<uint64_t>(cfg.n_expert_used) * (w.gate.expert_bytes() + w.up.expert_bytes() + w.down.expert_bytes());
  n += bytes(w.shared_gate) + bytes(w.shared_up) + bytes(w.shared_down) + bytes(w.shared_gate_inp);
  return n;
}

// ---------------------------------------------------------------------------------------
// Router

// Routes one token: `logits` (n_expert values) become the gating probabilities in place;
// ids[0..k) receive the selected experts by decreasing probability (equal probabilities: the
// lower id first) and weights[0..k) their final weights.
inline void moe_select(const MoeConfig& cfg, float* logits, int32_t* ids, float* weights) {
  const int64_t n = cfg.n_expert, k = cfg.n_expert_used;
  float* p = logits;
  if (cfg.gating == MoeGating::softmax) {
    ops::softmax(p, n);
  } else {
    for (int64_t e = 0; e < n; ++e) p[e] = 1.0f / (1.0f + std::exp(-p[e]));
  }
  // Insertion into a sorted list of k; a strict comparison keeps earlier (lower) ids ahead.
  int64_t count = 0;
  for (int64_t e = 0; e < n; ++e) {
    const float v = p[e];
    if (count == k && !(v > p[ids[k - 1]])) continue;
    int64_t pos = count < k ? count++ : k - 1;
    while (pos > 0 && v > p[ids[pos - 1]]) {
      ids[pos] = ids[pos - 1];
      --pos;
    }
    ids[pos] = static_cast<int32_t>(e);
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    weights[j] = p[ids[j]];
    sum += weights[j];
  }
  if (cfg.norm_weights) {
    // The sum is kept at or above the smallest normal fp16 (as llama.cpp clamps it).
    const float s = sum < 6.103515625e-5f ? 6.103515625e-5f : sum;
    for (int64_t j = 0; j < k; ++j) weights[j] /= s;
  }
  if (cfg.weights_scale != 1.0f)
    for (int64_t j = 0; j < k; ++j) weights[j] *= cfg.weights_scale;
}

// ---------------------------------------------------------------------------------------
// Routing statistics

// How often each expert of each layer was selected (one count per token and selected expert).
class MoeStats {
 public:
  void init(int64_t n_layer, int64_t n_expert) {
    n_layer_ = n_layer;
    n_expert_ = n_expert;
    counts_.assign(static_cast<size_t>(n_layer * n_expert), 0);
  }
  void reset() { std::fill(counts_.begin(), counts_.end(), uint64_t{0}); }
  int64_t n_layer() const { return n_layer_; }
  int64_t n_expert() const { return n_expert_; }
  uint64_t count(int64_t layer, int64_t expert) const {
    return counts_[static_cast<size_t>(layer * n_expert_ + expert)];
  }
  // All selections of one layer (n_tokens * k after n_tokens tokens).
  uint64_t layer_total(int64_t layer) const {
    uint64_t s = 0;
    for (int64_t e = 0; e < n_expert_; ++e) s += count(layer, e);
    return s;
  }
  // Row of n_expert counters of one layer, or nullptr when the layer is out of range.
  uint64_t* layer_counts(int64_t layer) {
    if (layer < 0 || layer >= n_layer_) return nullptr;
    return counts_.data() + layer * n_expert_;
  }

 private:
  int64_t n_layer_ = 0, n_expert_ = 0;
  std::vector<uint64_t> counts_;
};

// ---------------------------------------------------------------------------------------
// Scratch

// The buffers of the MoE step, in values: what reserve() allocates, and what memory_estimate
// counts through the forward layer's plan.
struct MoeScratchSizes {
  int64_t logits = 0;        // router logits: max_tokens x n_expert
  int64_t sel = 0;           // selections (ids, weights, per-expert lists): max_tokens x k each
  int64_t experts1 = 0;      // per-expert counts and starts: n_expert + 1 each
  int64_t tokens = 0;        // shared-expert gate: one per token
  int64_t xg = 0;            // gathered rows of one expert: max_tokens x n_embd
  int64_t ff = 0;            // widest expert (routed or shared): the row stride of the gate / up outputs
  int64_t gu = 0;            // gate / up outputs: rows x ff each (decode keeps k + 1 slots)
  int64_t d = 0;             // down outputs: rows x n_embd
  int64_t slots = 0;         // decode slots: k + 1
  int64_t mm_rows = 0;       // the batch's matmul scratch: rows x cols
  int64_t mm_cols = 0;
  int64_t thread_mm = 0;     // decode: one single-row matmul scratch of mm_cols per thread

  int64_t floats() const { return logits + 2 * sel + tokens + xg + 2 * gu + d; }  // wts, list_w
  int64_t ints() const { return 2 * sel + 2 * experts1 + slots; }                 // ids, list_tok
};

inline MoeScratchSizes moe_scratch_sizes(const MoeConfig& cfg, int64_t n_embd, int64_t max_tokens, int n_threads) {
  const int64_t k = cfg.n_expert_used, X = cfg.n_expert, E = n_embd;
  const int64_t ff = std::max(cfg.expert_ff, cfg.shared_expert ? cfg.shared_ff : int64_t{0});
  const int64_t rows = std::max(max_tokens, k + 1);
  MoeScratchSizes z;
  z.logits = max_tokens * X;
  z.sel = max_tokens * k;
  z.experts1 = X + 1;
  z.tokens = max_tokens;
  z.xg = max_tokens * E;
  z.ff = ff;
  z.gu = rows * ff;
  z.d = rows * E;
  z.slots = k + 1;
  z.mm_rows = max_tokens;
  z.mm_cols = std::max(E, ff);
  z.thread_mm = n_threads;
  return z;
}

class MoeScratch;
inline Status moe_ffn(const MoeConfig& cfg, const MoeLayerWeights& w, const float* x, int64_t n, float* out,
                      MoeScratch& s, const ParallelFor& par, MoeStats* stats = nullptr, int64_t layer = 0);

// Every buffer the MoE step uses, sized once by reserve(); moe_ffn never allocates.
class MoeScratch {
 public:
  Status reserve(const MoeConfig& cfg, int64_t n_embd, int64_t max_tokens, int n_threads) {
    if (!cfg.enabled() || n_embd <= 0 || max_tokens <= 0 || n_threads <= 0 || cfg.n_expert_used <= 0 ||
        cfg.n_expert_used > cfg.n_expert || cfg.expert_ff <= 0)
      return make_error(Errc::invalid_argument, "moe scratch: bad sizes");
    const MoeScratchSizes z = moe_scratch_sizes(cfg, n_embd, max_tokens, n_threads);
    const auto sz = [](int64_t a) { return static_cast<size_t>(a); };
    const bool ok = logits_.allocate(sz(z.logits)) && ids_.allocate(sz(z.sel)) && wts_.allocate(sz(z.sel)) &&
                    count_.allocate(sz(z.experts1)) && start_.allocate(sz(z.experts1)) &&
                    list_tok_.allocate(sz(z.sel)) && list_w_.allocate(sz(z.sel)) && shgate_.allocate(sz(z.tokens)) &&
                    xg_.allocate(sz(z.xg)) && g_.allocate(sz(z.gu)) && u_.allocate(sz(z.gu)) && d_.allocate(sz(z.d)) &&
                    slot_.allocate(sz(z.slots));
    if (!ok) return make_error(Errc::out_of_memory, "moe scratch: allocation failed");
    if (auto st = mm_.reserve(z.mm_rows, z.mm_cols); !st) return st;
    thread_mm_ = std::vector<MatmulScratch>(static_cast<size_t>(z.thread_mm));
    for (auto& t : thread_mm_)
      if (auto st = t.reserve(1, z.mm_cols); !st) return st;
    outs_.reserve(static_cast<size_t>(2 * z.slots));
    cfg_ = cfg;
    n_embd_ = n_embd;
    max_tokens_ = max_tokens;
    ff_ = z.ff;
    return {};
  }

  int64_t max_tokens() const { return max_tokens_; }
  int n_threads() const { return static_cast<int>(thread_mm_.size()); }
  // After moe_ffn: the experts chosen for token i (k ids, by decreasing weight) and weights.
  const int32_t* selected(int64_t i) const { return ids_.data() + i * cfg_.n_expert_used; }
  const float* selected_weights(int64_t i) const { return wts_.data() + i * cfg_.n_expert_used; }

 private:
  friend Status moe_ffn(const MoeConfig&, const MoeLayerWeights&, const float*, int64_t, float*, MoeScratch&,
                        const ParallelFor&, MoeStats*, int64_t);
  friend struct MoeStep;
  MoeConfig cfg_;
  int64_t n_embd_ = 0, max_tokens_ = 0, ff_ = 0;
  AlignedBuffer<float> logits_;    // [max_tokens][n_expert]
  AlignedBuffer<int32_t> ids_;     // [max_tokens][k]
  AlignedBuffer<float> wts_;       // [max_tokens][k]
  AlignedBuffer<int32_t> count_;   // tokens per expert
  AlignedBuffer<int32_t> start_;   // first entry of each expert in list_*
  AlignedBuffer<int32_t> list_tok_;
  AlignedBuffer<float> list_w_;
  AlignedBuffer<float> shgate_;    // shared-expert gate per token
  AlignedBuffer<float> xg_;        // gathered input rows of one expert
  AlignedBuffer<float> g_, u_;     // gate / up outputs (activations land in g_)
  AlignedBuffer<float> d_;         // down outputs
  AlignedBuffer<int32_t> slot_;    // decode: selection slots in ascending expert id
  MatmulScratch mm_;
  std::vector<MatmulScratch> thread_mm_;  // decode: one per thread for the down projections
  std::vector<MatmulOut> outs_;            // decode: the gate/up products of every slot
};

namespace detail {

// y += a * x: the one place contributions are accumulated (decode and prefill share it, so
// both round the same way).
inline void moe_axpy(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

inline float moe_sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

inline int64_t moe_row_bytes(const MatrixRef& m) {
  uint64_t rb = 0;
  if (!tensor_row_bytes(m.type, static_cast<uint64_t>(m.cols), &rb)) return 0;
  return static_cast<int64_t>(rb);
}

// Rows [r0, r1) of a matrix.
inline MatrixRef moe_rows(const MatrixRef& m, int64_t r0, int64_t r1) {
  return {m.type, m.data + r0 * moe_row_bytes(m), r1 - r0, m.cols};
}

inline Status moe_check_weights(const MoeConfig& cfg, const MoeLayerWeights& w, int64_t E) {
  if (w.router.rows != cfg.n_expert || w.gate.n_expert != cfg.n_expert || w.gate.rows != cfg.expert_ff ||
      w.gate.cols != E || w.up.n_expert != cfg.n_expert || w.up.rows != cfg.expert_ff || w.up.cols != E ||
      w.down.n_expert != cfg.n_expert || w.down.rows != E || w.down.cols != cfg.expert_ff)
    return make_error(Errc::invalid_argument, "moe_ffn: weight shapes do not match the config");
  for (const MoeExperts* x3 : {&w.gate, &w.up, &w.down}) {
    if (!matmul_supports(x3->type))
      return make_error(Errc::unsupported, std::string("moe_ffn: expert weight type ") + tensor_type_name(x3->type) +
                                               " is not supported");
    uint64_t rb = 0;
    if (!tensor_row_bytes(x3->type, static_cast<uint64_t>(x3->cols), &rb) || rb != x3->row_bytes)
      return make_error(Errc::invalid_argument, "moe_ffn: expert row size does not match the weight type");
  }
  if (cfg.shared_expert &&
      (!w.shared_gate.data || !w.shared_up.data || !w.shared_down.data || w.shared_gate.rows != cfg.shared_ff ||
       w.shared_up.rows != cfg.shared_ff || w.shared_down.cols != cfg.shared_ff || w.shared_down.rows != E ||
       (cfg.shared_gated && !w.shared_gate_inp.data)))
    return make_error(Errc::invalid_argument, "moe_ffn: shared expert weights missing or mis-shaped");
  return {};
}

inline Status moe_check(const MoeConfig& cfg, const MoeLayerWeights& w, const float* x, int64_t n, const float* out,
                        int64_t max_tokens, const MoeConfig& reserved, int64_t n_embd,
                        int64_t reserved_ff, const ParallelFor& par, int n_threads) {
  if (n < 0) return make_error(Errc::invalid_argument, "moe_ffn: negative token count");
  if (n > max_tokens)
    return make_error(Errc::invalid_argument, "moe_ffn: " + std::to_string(n) + " tokens, scratch reserved for " +
                                                  std::to_string(max_tokens));
  if (!x || !out) return make_error(Errc::invalid_argument, "moe_ffn: null pointer");
  if (!w.router.data || !w.gate || !w.up || !w.down)
    return make_error(Errc::invalid_argument, "moe_ffn: layer weights are not bound");
  const int64_t E = w.n_embd();
  if (E != n_embd || cfg.n_expert != reserved.n_expert || cfg.n_expert_used != reserved.n_expert_used ||
      cfg.expert_ff > reserved_ff || (cfg.shared_expert && cfg.shared_ff > reserved_ff))
    return make_error(Errc::invalid_argument, "moe_ffn: config does not match the reserved scratch");
  if (auto st = moe_check_weights(cfg, w, E); !st) return st;
  if (par.n_threads > n_threads)
    return make_error(Errc::invalid_argument, "moe_ffn: " + std::to_string(par.n_threads) +
                                                  " threads, scratch reserved for " + std::to_string(n_threads));
  return {};
}

}  // namespace detail

// One call of the MoE step: the router, then the decode or the prefill path.
struct MoeStep {
  const MoeConfig& cfg;
  const MoeLayerWeights& w;
  const float* x;
  int64_t n;
  float* out;
  MoeScratch& s;
  const ParallelFor& par;

  int64_t E() const { return w.n_embd(); }

  // Router logits (and the shared expert's gate), then the top-k of every token.
  Status route(uint64_t* counts) {
    const int64_t X = cfg.n_expert, k = cfg.n_expert_used;
    const ParallelFor inline_par{};
    const ParallelFor& rpar = n == 1 ? inline_par : par;
    if (auto st = matmul(w.router, x, n, s.logits_.data(), X, s.mm_, rpar); !st)
      return Error(st.error()).context("ffn_gate_inp");
    if (cfg.shared_expert && cfg.shared_gated) {
      if (auto st = matmul(w.shared_gate_inp, x, n, s.shgate_.data(), 1, s.mm_, rpar); !st)
        return Error(st.error()).context("ffn_gate_inp_shexp");
      for (int64_t i = 0; i < n; ++i) s.shgate_[static_cast<size_t>(i)] = detail::moe_sigmoid(s.shgate_[static_cast<size_t>(i)]);
    } else {
      for (int64_t i = 0; i < n; ++i) s.shgate_[static_cast<size_t>(i)] = 1.0f;
    }
    for (int64_t i = 0; i < n; ++i) {
      moe_select(cfg, s.logits_.data() + i * X, s.ids_.data() + i * k, s.wts_.data() + i * k);
      if (counts)
        for (int64_t j = 0; j < k; ++j) ++counts[s.ids_[static_cast<size_t>(i * k + j)]];
    }
    return {};
  }

  // Decode: the gate and up rows of every selected expert (and the shared one) in one
  // matmul_many; then each thread computes its rows of every down projection and mixes them
  // in ascending expert id, the shared expert last.
  Status decode() {
    const int64_t k = cfg.n_expert_used, F = cfg.expert_ff, SF = cfg.shared_expert ? cfg.shared_ff : 0;
    const int64_t ldg = s.ff_, Ed = E(), n_slots = k + (cfg.shared_expert ? 1 : 0);
    const int32_t* ids = s.ids_.data();
    int32_t* slot = s.slot_.data();
    for (int64_t j = 0; j < k; ++j) slot[j] = static_cast<int32_t>(j);
    std::sort(slot, slot + k, [&](int32_t a, int32_t b) { return ids[a] < ids[b]; });
    float* g = s.g_.data();
    float* u = s.u_.data();
    float* d = s.d_.data();
    s.outs_.clear();
    for (int64_t j = 0; j < k; ++j) {
      s.outs_.push_back({w.gate.expert(ids[j]), g + j * ldg, F, "ffn_gate_exps"});
      s.outs_.push_back({w.up.expert(ids[j]), u + j * ldg, F, "ffn_up_exps"});
    }
    if (cfg.shared_expert) {
      s.outs_.push_back({w.shared_gate, g + k * ldg, SF, "ffn_gate_shexp"});
      s.outs_.push_back({w.shared_up, u + k * ldg, SF, "ffn_up_shexp"});
    }
    if (auto st = matmul_many(s.outs_, x, 1, s.mm_, par); !st) return st;
    for (int64_t j = 0; j < n_slots; ++j) {
      const int64_t rows = j == k ? SF : F;
      ops::silu_mul(g + j * ldg, u + j * ldg, g + j * ldg, rows);
    }
    Status err;  // first failure seen by any thread (matmul fails only on bad shapes)
    std::atomic<int> failed{0};
    par([&](int t, int nt) {
      MatmulScratch& ms = s.thread_mm_[static_cast<size_t>(t)];
      int64_t b, e;
      ParallelFor::split(Ed, t, nt, kMatmulRowGrain, &b, &e);
      if (b >= e) return;
      for (int64_t j = 0; j < n_slots; ++j) {
        const MatrixRef wd = j == k ? detail::moe_rows(w.shared_down, b, e) : w.down.expert_rows(ids[j], b, e);
        if (auto st = matmul(wd, g + j * ldg, 1, d + j * Ed + b, e - b, ms, ParallelFor{}); !st) {
          if (failed.exchange(1) == 0) err = std::move(st);
          return;
        }
      }
      std::fill(out + b, out + e, 0.0f);
      for (int64_t q = 0; q < k; ++q) {
        const int32_t j = slot[q];
        detail::moe_axpy(out + b, s.wts_[static_cast<size_t>(j)], d + j * Ed + b, e - b);
      }
      if (cfg.shared_expert) detail::moe_axpy(out + b, s.shgate_[0], d + k * Ed + b, e - b);
    });
    return failed.load() ? err : Status();
  }

  // Groups the (token, slot) pairs by expert: counting sort, tokens in order.
  void group_by_expert() {
    const int64_t X = cfg.n_expert, k = cfg.n_expert_used;
    int32_t* cnt = s.count_.data();
    int32_t* start = s.start_.data();
    std::fill(cnt, cnt + X, 0);
    for (int64_t i = 0; i < n * k; ++i) ++cnt[s.ids_[static_cast<size_t>(i)]];
    start[0] = 0;
    for (int64_t e = 0; e < X; ++e) start[e + 1] = start[e] + cnt[e];
    std::fill(cnt, cnt + X, 0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < k; ++j) {
        const int32_t e = s.ids_[static_cast<size_t>(i * k + j)];
        const int32_t at = start[e] + cnt[e]++;
        s.list_tok_[static_cast<size_t>(at)] = static_cast<int32_t>(i);
        s.list_w_[static_cast<size_t>(at)] = s.wts_[static_cast<size_t>(i * k + j)];
      }
  }

  template <class Fn>
  void for_rows(int64_t rows, Fn&& fn) {
    par([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(rows, t, nt, 1, &b, &e);
      for (int64_t i = b; i < e; ++i) fn(i);
    });
  }

  // One expert's SwiGLU FFN over m rows of `in`: the down outputs land in d_.
  Status expert_ffn(const MatrixRef& gate, const MatrixRef& up, const MatrixRef& down, const float* in, int64_t m,
                    const char* names) {
    float* g = s.g_.data();
    float* u = s.u_.data();
    const int64_t F = gate.rows;
    const MatmulOut gu[2] = {{gate, g, F, {}}, {up, u, F, {}}};
    if (auto st = matmul_many(gu, in, m, s.mm_, par); !st) return Error(st.error()).context(names);
    for_rows(m, [&](int64_t i) { ops::silu_mul(g + i * F, u + i * F, g + i * F, F); });
    if (auto st = matmul(down, g, m, s.d_.data(), E(), s.mm_, par); !st) return Error(st.error()).context(names);
    return {};
  }

  // Prefill: each expert with tokens runs one GEMM over its gathered rows (experts in
  // ascending id, so every token accumulates in that order), then the shared expert.
  Status prefill() {
    group_by_expert();
    const int64_t Ed = E();
    std::memset(out, 0, static_cast<size_t>(n * Ed) * sizeof(float));
    float* xg = s.xg_.data();
    const float* d = s.d_.data();
    for (int64_t e = 0; e < cfg.n_expert; ++e) {
      const int64_t m = s.count_[static_cast<size_t>(e)];
      if (m == 0) continue;
      const int32_t* toks = s.list_tok_.data() + s.start_[static_cast<size_t>(e)];
      const float* we = s.list_w_.data() + s.start_[static_cast<size_t>(e)];
      for (int64_t i = 0; i < m; ++i)
        std::memcpy(xg + i * Ed, x + static_cast<int64_t>(toks[i]) * Ed, static_cast<size_t>(Ed) * sizeof(float));
      if (auto st = expert_ffn(w.gate.expert(e), w.up.expert(e), w.down.expert(e), xg, m,
                               "ffn_gate_exps / ffn_up_exps / ffn_down_exps");
          !st)
        return st;
      for_rows(m, [&](int64_t i) { detail::moe_axpy(out + static_cast<int64_t>(toks[i]) * Ed, we[i], d + i * Ed, Ed); });
    }
    if (cfg.shared_expert) {
      if (auto st = expert_ffn(w.shared_gate, w.shared_up, w.shared_down, x, n,
                               "ffn_gate_shexp / ffn_up_shexp / ffn_down_shexp");
          !st)
        return st;
      for_rows(n, [&](int64_t i) { detail::moe_axpy(out + i * Ed, s.shgate_[static_cast<size_t>(i)], d + i * Ed, Ed); });
    }
    return {};
  }
};

// The MoE feed-forward step for n tokens: x is n rows of n_embd (the normalised FFN input),
// out receives n rows of n_embd (the FFN output, to be added to the residual by the caller;
// must not alias x). When stats is given, stats->layer_counts(layer) gains one count per
// token and selected expert. Same result for any thread count.
inline Status moe_ffn(const MoeConfig& cfg, const MoeLayerWeights& w, const float* x, int64_t n, float* out,
                      MoeScratch& s, const ParallelFor& par, MoeStats* stats, int64_t layer) {
  if (auto st = detail::moe_check(cfg, w, x, n, out, s.max_tokens_, s.cfg_, s.n_embd_, s.ff_, par, s.n_threads());
      !st)
    return st;
  if (n == 0) return {};
  uint64_t* counts = stats ? stats->layer_counts(layer) : nullptr;
  if (stats && (!counts || stats->n_expert() != cfg.n_expert))
    return make_error(Errc::invalid_argument, "moe_ffn: routing statistics not sized for layer " + std::to_string(layer));
  MoeStep step{cfg, w, x, n, out, s, par};
  if (auto st = step.route(counts); !st) return st;
  return n == 1 ? step.decode() : step.prefill();
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
