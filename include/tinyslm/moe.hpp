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
// This header uses only core, gguf, quant, kernels and ops; it needs nothing from model.hpp.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "core.hpp"
#include "gguf.hpp"
#include "kernels.hpp"
#include "ops.hpp"
#include "quant.hpp"

namespace tinyslm {
inline namespace v0 {

enum class MoeGating : uint8_t {
  softmax,  // GGUF expert_gating_func 1
  sigmoid,  // GGUF expert_gating_func 2
};

// Everything the MoE step needs besides the weights. n_expert == 0 means a dense model.
struct MoeConfig {
  int64_t n_expert = 0;       // <arch>.expert_count
  int64_t n_expert_used = 0;  // <arch>.expert_used_count (k)
  int64_t expert_ff = 0;      // rows of each expert's gate/up matrices
  MoeGating gating = MoeGating::softmax;
  bool norm_weights = false;  // renormalise the k selected weights to sum 1
  float weights_scale = 1.0f; // multiplies the selected weights (1 = none)
  bool shared_expert = false; // ffn_{gate,up,down}_shexp present
  int64_t shared_ff = 0;
  bool shared_gated = false;  // shared expert scaled by sigmoid(ffn_gate_inp_shexp . x)

  bool enabled() const { return n_expert > 0; }
};

// Per-family defaults, as llama.cpp builds these graphs: every family gates with a softmax;
// llama-with-experts (Mixtral) and qwen3moe renormalise the top-k weights (for Mixtral this
// equals a softmax over the k selected logits), qwen2moe and olmoe use the raw probabilities.
struct MoeArchInfo {
  const char* name;
  bool norm_weights;
  bool ff_from_expert_key;   // expert_feed_forward_length, else feed_forward_length / k;
                             // false: feed_forward_length is the expert width
  bool shared_expert;        // the family has a shared expert (required)
  bool shared_gated;
};

inline constexpr MoeArchInfo kMoeArchTable[] = {
    // name        norm   ff key  shared gated
    {"llama",     true,  false,  false, false},
    {"qwen2moe",  false, true,   true,  true},
    {"qwen3moe",  true,  true,   false, false},
    {"olmoe",     false, false,  false, false},
};

inline const MoeArchInfo* find_moe_arch(std::string_view name) {
  for (const auto& a : kMoeArchTable)
    if (name == a.name) return &a;
  return nullptr;
}

// Experts above this count are refused (llama.cpp's limit).
inline constexpr int64_t kMoeMaxExperts = 512;

namespace detail {

inline Expected<int64_t> moe_int_key(const GgufFile& f, const std::string& key, int64_t fallback) {
  if (!f.contains(key)) return fallback;
  auto v = f.get<int64_t>(key);
  if (!v) return v.error();
  return *v;
}

}  // namespace detail

// Reads the MoE hyper-parameters of a file. A file without `<arch>.expert_count` (or with 0)
// gives a disabled config. The keys expert_gating_func, expert_weights_norm and
// expert_weights_scale override the family defaults when present (converters do not write
// them for these four families; llama.cpp then uses the defaults above).
inline Expected<MoeConfig> read_moe_config(const GgufFile& f) {
  MoeConfig c;
  auto arch_v = f.get<std::string>("general.architecture");
  if (!arch_v) return arch_v.error();
  const std::string& a = *arch_v;
  auto n_expert = detail::moe_int_key(f, a + ".expert_count", 0);
  if (!n_expert) return n_expert.error();
  auto n_used = detail::moe_int_key(f, a + ".expert_used_count", 0);
  if (!n_used) return n_used.error();
  if (*n_expert == 0) {
    if (*n_used != 0)
      return make_error(Errc::invalid_format, f.name() + ": expert_used_count " + std::to_string(*n_used) +
                                                  " without experts");
    return c;
  }
  const MoeArchInfo* info = find_moe_arch(a);
  if (!info)
    return make_error(Errc::unsupported, f.name() + ": mixture of experts for architecture '" + a +
                                             "' is not supported (supported: llama/mixtral, qwen2moe, "
                                             "qwen3moe, olmoe)");
  if (*n_expert < 0 || *n_expert > kMoeMaxExperts || *n_used <= 0 || *n_used > *n_expert)
    return make_error(Errc::invalid_format, f.name() + ": bad expert counts (expert_count " +
                                                std::to_string(*n_expert) + ", expert_used_count " +
                                                std::to_string(*n_used) + ")");
  c.n_expert = *n_expert;
  c.n_expert_used = *n_used;

  auto n_ff = detail::moe_int_key(f, a + ".feed_forward_length", 0);
  if (!n_ff) return n_ff.error();
  auto ff_key = detail::moe_int_key(f, a + ".expert_feed_forward_length", 0);
  if (!ff_key) return ff_key.error();
  // qwen2moe/qwen3moe: expert_feed_forward_length, else feed_forward_length / k; llama and
  // olmoe: feed_forward_length is the expert width (llama.cpp does not read the expert key).
  if (info->ff_from_expert_key) c.expert_ff = *ff_key > 0 ? *ff_key : *n_ff / c.n_expert_used;
  else c.expert_ff = *n_ff;

  auto sh = detail::moe_int_key(f, a + ".expert_shared_feed_forward_length", 0);
  if (!sh) return sh.error();
  // Only the families whose graph has a shared expert get one (llama.cpp's llama graph ignores
  // ffn_*_shexp tensors and the shared-length key).
  c.shared_expert = info->shared_expert;
  c.shared_gated = info->shared_gated;
  if (c.shared_expert) c.shared_ff = *sh > 0 ? *sh : *n_ff;
  if (c.expert_ff <= 0 || c.expert_ff > (int64_t{1} << 22) || (c.shared_expert && (c.shared_ff <= 0 || c.shared_ff > (int64_t{1} << 22))))
    return make_error(Errc::invalid_format, f.name() + ": bad expert feed-forward length (" +
                                                std::to_string(c.expert_ff) + ", shared " +
                                                std::to_string(c.shared_ff) + ")");

  c.norm_weights = info->norm_weights;
  if (f.contains(a + ".expert_weights_norm")) {
    auto v = f.get<bool>(a + ".expert_weights_norm");
    if (!v) return v.error();
    c.norm_weights = *v;
  }
  auto scale = f.get_or<float>(a + ".expert_weights_scale", 0.0f);
  if (!scale) return scale.error();
  if (!std::isfinite(*scale))
    return make_error(Errc::invalid_format, f.name() + ": expert_weights_scale is not finite");
  c.weights_scale = *scale == 0.0f ? 1.0f : *scale;
  auto gating = detail::moe_int_key(f, a + ".expert_gating_func", 0);
  if (!gating) return gating.error();
  switch (*gating) {
    case 0:  // none: the family default
    case 1: c.gating = MoeGating::softmax; break;
    case 2: c.gating = MoeGating::sigmoid; break;
    default:
      return make_error(Errc::unsupported, f.name() + ": expert_gating_func " + std::to_string(*gating) +
                                               " is not supported (1 = softmax, 2 = sigmoid)");
  }
  return c;
}

// ---------------------------------------------------------------------------------------
// Weights

// A stacked expert tensor [cols, rows, n_expert]: n_expert matrices of `rows` rows of `cols`.
struct MoeExperts {
  TensorType type = TensorType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t n_expert = 0;
  uint64_t row_bytes = 0;

  explicit operator bool() const { return data != nullptr; }
  uint64_t expert_bytes() const { return row_bytes * static_cast<uint64_t>(rows); }
  MatrixRef expert(int64_t e) const { return {type, data + static_cast<uint64_t>(e) * expert_bytes(), rows, cols}; }
  // Rows [r0, r1) of expert e.
  MatrixRef expert_rows(int64_t e, int64_t r0, int64_t r1) const {
    return {type, data + static_cast<uint64_t>(e) * expert_bytes() + static_cast<uint64_t>(r0) * row_bytes,
            r1 - r0, cols};
  }
};

// One MoE layer's tensors. Absent shared-expert tensors have data == nullptr.
struct MoeLayerWeights {
  MatrixRef router{TensorType::F32, nullptr, 0, 0};           // ffn_gate_inp: n_expert rows of n_embd
  MoeExperts gate, up, down;                                   // gate/up: expert_ff x n_embd; down: n_embd x expert_ff
  MatrixRef shared_gate{TensorType::F32, nullptr, 0, 0};      // ffn_gate_shexp: shared_ff x n_embd
  MatrixRef shared_up{TensorType::F32, nullptr, 0, 0};
  MatrixRef shared_down{TensorType::F32, nullptr, 0, 0};      // n_embd x shared_ff
  MatrixRef shared_gate_inp{TensorType::F32, nullptr, 0, 0};  // ffn_gate_inp_shexp: 1 x n_embd

  int64_t n_embd() const { return router.cols; }
};

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

namespace detail {

// "[a, b, c]" (built by appending: GCC 12 warns falsely on "[" + std::string temporaries).
inline std::string moe_shape(std::initializer_list<int64_t> dims) {
  std::string s = "[";
  for (int64_t d : dims) {
    if (s.size() > 1) s += ", ";
    s += std::to_string(d);
  }
  s += "]";
  return s;
}

struct MoeBinder {
  const GgufFile& f;

  Error missing(const std::string& name) const {
    return make_error(Errc::not_found, f.name() + ": missing tensor '" + name + "' (mixture-of-experts layer)");
  }
  Error bad_shape(const GgufTensorInfo& t, const std::string& want) const {
    return make_error(Errc::invalid_format, f.name() + ": tensor '" + std::string(t.name) + "' has shape " +
                                                t.shape_string() + ", expected " + want);
  }
  Status check_type(const GgufTensorInfo& t, int64_t cols) const {
    if (!matmul_supports(t.type))
      return make_error(Errc::unsupported, f.name() + ": tensor '" + std::string(t.name) + "' has type " +
                                               tensor_type_name(t.type) + ", which is not supported for matrices");
    if (cols % static_cast<int64_t>(tensor_type_info(t.type).block_size) != 0)
      return make_error(Errc::invalid_format, f.name() + ": tensor '" + std::string(t.name) + "' has rows of " +
                                                  std::to_string(cols) + " values, not a multiple of the " +
                                                  tensor_type_name(t.type) + " block");
    return {};
  }

  // A matrix of `rows` rows of `cols` values; a 1-D tensor counts as one row when rows == 1.
  Status matrix(const std::string& name, int64_t cols, int64_t rows, bool required, MatrixRef* out) const {
    const GgufTensorInfo* t = f.find_tensor(name);
    if (!t) return required ? Status(missing(name)) : Status();
    const bool ok = static_cast<int64_t>(t->ne[0]) == cols &&
                    ((t->n_dims == 2 && static_cast<int64_t>(t->ne[1]) == rows) || (t->n_dims == 1 && rows == 1));
    if (!ok) return bad_shape(*t, moe_shape({cols, rows}));
    if (auto st = check_type(*t, cols); !st) return st;
    *out = MatrixRef{t->type, t->data, rows, cols};
    return {};
  }

  Status experts(const std::string& name, int64_t cols, int64_t rows, int64_t n_expert, MoeExperts* out) const {
    const GgufTensorInfo* t = f.find_tensor(name);
    if (!t) return missing(name);
    if (t->n_dims != 3 || static_cast<int64_t>(t->ne[0]) != cols || static_cast<int64_t>(t->ne[1]) != rows ||
        static_cast<int64_t>(t->ne[2]) != n_expert)
      return bad_shape(*t, moe_shape({cols, rows, n_expert}));
    if (auto st = check_type(*t, cols); !st) return st;
    uint64_t rb = 0;
    if (!tensor_row_bytes(t->type, static_cast<uint64_t>(cols), &rb) ||
        rb * static_cast<uint64_t>(rows) * static_cast<uint64_t>(n_expert) != t->n_bytes)
      return make_error(Errc::invalid_format, f.name() + ": tensor '" + name + "' has an inconsistent byte size");
    *out = MoeExperts{t->type, t->data, rows, cols, n_expert, rb};
    return {};
  }
};

}  // namespace detail

// Binds layer il's router, experts and shared expert (tensor names as llama.cpp writes them)
// and checks every shape against the config and n_embd.
inline Expected<MoeLayerWeights> bind_moe_layer(const GgufFile& f, const MoeConfig& cfg, int64_t il, int64_t n_embd) {
  if (!cfg.enabled()) return make_error(Errc::invalid_argument, "bind_moe_layer: the config has no experts");
  if (n_embd <= 0) return make_error(Errc::invalid_argument, "bind_moe_layer: n_embd must be positive");
  detail::MoeBinder b{f};
  const std::string p = "blk." + std::to_string(il) + ".";
  const int64_t E = n_embd, F = cfg.expert_ff, X = cfg.n_expert;
  MoeLayerWeights w;
  Status st;
  if (st = b.matrix(p + "ffn_gate_inp.weight", E, X, true, &w.router); !st) return st.error();
  if (st = b.experts(p + "ffn_gate_exps.weight", E, F, X, &w.gate); !st) return st.error();
  if (st = b.experts(p + "ffn_up_exps.weight", E, F, X, &w.up); !st) return st.error();
  if (st = b.experts(p + "ffn_down_exps.weight", F, E, X, &w.down); !st) return st.error();
  if (cfg.shared_expert) {
    const int64_t S = cfg.shared_ff;
    if (st = b.matrix(p + "ffn_gate_shexp.weight", E, S, true, &w.shared_gate); !st) return st.error();
    if (st = b.matrix(p + "ffn_up_shexp.weight", E, S, true, &w.shared_up); !st) return st.error();
    if (st = b.matrix(p + "ffn_down_shexp.weight", S, E, true, &w.shared_down); !st) return st.error();
    if (st = b.matrix(p + "ffn_gate_inp_shexp.weight", E, 1, cfg.shared_gated, &w.shared_gate_inp); !st)
      return st.error();
  }
  return w;
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
    const int64_t k = cfg.n_expert_used, X = cfg.n_expert, E = n_embd;
    const int64_t ff = std::max(cfg.expert_ff, cfg.shared_expert ? cfg.shared_ff : int64_t{0});
    const int64_t rows = std::max(max_tokens, k + 1);  // decode keeps k + 1 slots in the same buffers
    const int64_t sel = max_tokens * k;
    const auto sz = [](int64_t a, int64_t b) { return static_cast<size_t>(a * b); };
    const bool ok = logits_.allocate(sz(max_tokens, X)) && ids_.allocate(sz(sel, 1)) && wts_.allocate(sz(sel, 1)) &&
                    count_.allocate(sz(X + 1, 1)) && start_.allocate(sz(X + 1, 1)) &&
                    list_tok_.allocate(sz(sel, 1)) && list_w_.allocate(sz(sel, 1)) &&
                    shgate_.allocate(sz(max_tokens, 1)) && xg_.allocate(sz(max_tokens, E)) && g_.allocate(sz(rows, ff)) &&
                    u_.allocate(sz(rows, ff)) && d_.allocate(sz(rows, E)) && slot_.allocate(sz(k + 1, 1));
    if (!ok) return make_error(Errc::out_of_memory, "moe scratch: allocation failed");
    if (auto st = mm_.reserve(max_tokens, std::max(E, ff)); !st) return st;
    thread_mm_ = std::vector<MatmulScratch>(static_cast<size_t>(2 * n_threads));
    for (auto& s : thread_mm_)
      if (auto st = s.reserve(1, std::max(E, ff)); !st) return st;
    cfg_ = cfg;
    n_embd_ = E;
    max_tokens_ = max_tokens;
    ff_ = ff;
    return {};
  }

  int64_t max_tokens() const { return max_tokens_; }
  int n_threads() const { return static_cast<int>(thread_mm_.size() / 2); }
  // After moe_ffn: the experts chosen for token i (k ids, by decreasing weight) and weights.
  const int32_t* selected(int64_t i) const { return ids_.data() + i * cfg_.n_expert_used; }
  const float* selected_weights(int64_t i) const { return wts_.data() + i * cfg_.n_expert_used; }

 private:
  friend Status moe_ffn(const MoeConfig&, const MoeLayerWeights&, const float*, int64_t, float*, MoeScratch&,
                        const ParallelFor&, MoeStats*, int64_t);
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
  std::vector<MatmulScratch> thread_mm_;  // two per thread (decode)
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

// g = gate . x and u = up . x for n rows of x (dense outputs, gate.rows wide), quantizing x
// once when both matrices take the same activation format.
inline Status moe_gate_up(const MatrixRef& gate, const MatrixRef& up, const float* x, int64_t n, float* g, float* u,
                          MatmulScratch& ms, const ParallelFor& par) {
  if (auto st = quantize_activations(gate.type, x, n, gate.cols, ms, par); !st) return st;
  if (auto st = matmul_quantized(gate, n, g, gate.rows, ms, par); !st) return st;
  if (activation_type_for(up.type) != activation_type_for(gate.type))
    if (auto st = quantize_activations(up.type, x, n, up.cols, ms, par); !st) return st;
  return matmul_quantized(up, n, u, up.rows, ms, par);
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
  if (par.n_threads > n_threads)
    return make_error(Errc::invalid_argument, "moe_ffn: " + std::to_string(par.n_threads) +
                                                  " threads, scratch reserved for " + std::to_string(n_threads));
  return {};
}

}  // namespace detail

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
  const int64_t E = w.n_embd(), X = cfg.n_expert, k = cfg.n_expert_used, F = cfg.expert_ff;
  const int64_t SF = cfg.shared_expert ? cfg.shared_ff : 0;
  const int64_t ldg = s.ff_;  // row stride of g_/u_ in decode
  const ParallelFor inline_par{};
  uint64_t* counts = stats ? stats->layer_counts(layer) : nullptr;
  if (stats && (!counts || stats->n_expert() != X))
    return make_error(Errc::invalid_argument, "moe_ffn: routing statistics not sized for layer " + std::to_string(layer));

  // 1. Router logits (and the shared expert's gate logit), then top-k per token.
  const ParallelFor& rpar = n == 1 ? inline_par : par;
  if (auto st = matmul(w.router, x, n, s.logits_.data(), X, s.mm_, rpar); !st) return Error(st.error()).context("ffn_gate_inp");
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

  float* g = s.g_.data();
  float* u = s.u_.data();
  float* d = s.d_.data();

  if (n == 1) {
    // 2a. Decode. Slots in ascending expert id (the accumulation order), shared expert last.
    int32_t* slot = s.slot_.data();
    for (int64_t j = 0; j < k; ++j) slot[j] = static_cast<int32_t>(j);
    const int32_t* ids = s.ids_.data();
    std::sort(slot, slot + k, [&](int32_t a, int32_t b) { return ids[a] < ids[b]; });
    const int64_t n_slots = k + (cfg.shared_expert ? 1 : 0);
    Status err;  // first failure seen by any thread (matmul fails only on bad shapes)
    std::atomic<int> failed{0};
    auto fail = [&](Status st) {
      if (failed.exchange(1) == 0) err = std::move(st);
    };
    // Gate and up rows of every slot, split over the threads; SwiGLU on each thread's rows.
    par([&](int t, int nt) {
      // x quantized once per activation format on this thread (gate and up usually share one).
      MatmulScratch* ms = s.thread_mm_.data() + 2 * t;
      int held[2] = {-1, -1};
      int next = 0;
      auto acts = [&](TensorType wt, MatmulScratch** found) -> Status {
        const int fmt = static_cast<int>(activation_type_for(wt));
        for (int i = 0; i < 2; ++i)
          if (held[i] == fmt) {
            *found = &ms[i];
            return {};
          }
        const int i = next;
        next ^= 1;
        held[i] = -1;
        if (auto st = quantize_activations(wt, x, 1, E, ms[i], inline_par); !st) return st;
        held[i] = fmt;
        *found = &ms[i];
        return {};
      };
      for (int64_t j = 0; j < n_slots; ++j) {
        const bool shared = j == k;
        const int64_t rows = shared ? SF : F;
        int64_t b, e;
        ParallelFor::split(rows, t, nt, kMatmulRowGrain, &b, &e);
        if (b >= e) continue;
        float* gj = g + j * ldg;
        float* uj = u + j * ldg;
        MatrixRef wg, wu;
        if (shared) {
          wg = detail::moe_rows(w.shared_gate, b, e);
          wu = detail::moe_rows(w.shared_up, b, e);
        } else {
          const int32_t ex = ids[j];
          wg = w.gate.expert_rows(ex, b, e);
          wu = w.up.expert_rows(ex, b, e);
        }
        MatmulScratch* a = nullptr;
        if (auto st = acts(wg.type, &a); !st) return fail(std::move(st));
        if (auto st = matmul_quantized(wg, 1, gj + b, e - b, *a, inline_par); !st) return fail(std::move(st));
        if (auto st = acts(wu.type, &a); !st) return fail(std::move(st));
        if (auto st = matmul_quantized(wu, 1, uj + b, e - b, *a, inline_par); !st) return fail(std::move(st));
        ops::silu_mul(gj + b, uj + b, gj + b, e - b);
      }
    });
    if (failed.load()) return err;
    // Down rows of every slot, then each thread mixes its rows of the output.
    par([&](int t, int nt) {
      MatmulScratch& ms = s.thread_mm_[static_cast<size_t>(2 * t)];
      int64_t b, e;
      ParallelFor::split(E, t, nt, kMatmulRowGrain, &b, &e);
      if (b >= e) return;
      for (int64_t j = 0; j < n_slots; ++j) {
        const bool shared = j == k;
        MatrixRef wd;
        if (shared) {
          wd = detail::moe_rows(w.shared_down, b, e);
        } else {
          wd = w.down.expert_rows(ids[j], b, e);
        }
        if (auto st = matmul(wd, g + j * ldg, 1, d + j * E + b, e - b, ms, inline_par); !st) return fail(std::move(st));
      }
      std::fill(out + b, out + e, 0.0f);
      for (int64_t q = 0; q < k; ++q) {
        const int32_t j = slot[q];
        detail::moe_axpy(out + b, s.wts_[static_cast<size_t>(j)], d + j * E + b, e - b);
      }
      if (cfg.shared_expert) detail::moe_axpy(out + b, s.shgate_[0], d + k * E + b, e - b);
    });
    if (failed.load()) return err;
    return {};
  }

  // 2b. Prefill. Group the (token, slot) pairs by expert: counting sort, tokens in order.
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

  auto for_rows = [&](int64_t rows, auto&& fn) {
    par([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(rows, t, nt, 1, &b, &e);
      for (int64_t i = b; i < e; ++i) fn(i);
    });
  };
  std::memset(out, 0, static_cast<size_t>(n * E) * sizeof(float));
  float* xg = s.xg_.data();
  // Each expert with tokens: gather its rows, gate/up GEMMs, SwiGLU, down GEMM, weighted
  // scatter-add. Experts in ascending id, so every token accumulates in that order.
  for (int64_t e = 0; e < X; ++e) {
    const int64_t m = cnt[e];
    if (m == 0) continue;
    const int32_t* toks = s.list_tok_.data() + start[e];
    const float* we = s.list_w_.data() + start[e];
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(xg + i * E, x + static_cast<int64_t>(toks[i]) * E, static_cast<size_t>(E) * sizeof(float));
    if (auto st = detail::moe_gate_up(w.gate.expert(e), w.up.expert(e), xg, m, g, u, s.mm_, par); !st)
      return Error(st.error()).context("ffn_gate_exps / ffn_up_exps");
    for_rows(m, [&](int64_t i) { ops::silu_mul(g + i * F, u + i * F, g + i * F, F); });
    if (auto st = matmul(w.down.expert(e), g, m, d, E, s.mm_, par); !st) return Error(st.error()).context("ffn_down_exps");
    for_rows(m, [&](int64_t i) { detail::moe_axpy(out + static_cast<int64_t>(toks[i]) * E, we[i], d + i * E, E); });
  }
  // The shared expert over all tokens.
  if (cfg.shared_expert) {
    if (auto st = detail::moe_gate_up(w.shared_gate, w.shared_up, x, n, g, u, s.mm_, par); !st)
      return Error(st.error()).context("ffn_gate_shexp / ffn_up_shexp");
    for_rows(n, [&](int64_t i) { ops::silu_mul(g + i * SF, u + i * SF, g + i * SF, SF); });
    if (auto st = matmul(w.shared_down, g, n, d, E, s.mm_, par); !st) return Error(st.error()).context("ffn_down_shexp");
    for_rows(n, [&](int64_t i) { detail::moe_axpy(out + i * E, s.shgate_[static_cast<size_t>(i)], d + i * E, E); });
  }
  return {};
}

}  // namespace v0
}  // namespace tinyslm
