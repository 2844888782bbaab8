// tinyslm model: hyper-parameters from GGUF metadata, the table of per-architecture
// differences, the per-layer plan, and the weights bound to the mapped tensors.
//
// Every supported family is one row of kArchTable, read into one plain struct (HParams) whose
// fields the forward pass branches on: norm kind, RoPE style, QK-norm, biases, post-norms,
// soft-capping, sliding window, embedding scale, expert routing. There are no subclasses per
// architecture and no comparisons of architecture names outside the table lookup.
// HParams::layers is the per-layer plan: what each layer is (its kind, head counts and sizes,
// sliding or global attention, which RoPE table, which layer's KV it uses, dense FFN or MoE).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core.hpp"
#include "deltanet.hpp"
#include "gguf.hpp"
#include "kernels.hpp"
#include "quant.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

enum class RopeStyle : uint8_t {
  normal,  // rotate adjacent pairs (x[2i], x[2i+1]): llama
  neox,    // rotate halves (x[i], x[i + n_rot/2]): qwen, gemma, phi3
};

enum class FfnActivation : uint8_t {
  silu,       // SwiGLU: silu(gate) * up
  gelu_tanh,  // GeGLU with the tanh approximation of GELU (gemma family)
};

enum class QkNorm : uint8_t {
  none,
  per_head,  // one weight of head_dim values shared by every head (qwen3, gemma3)
  whole,     // one weight over the whole Q (or K) projection (olmoe)
};

// Attention scale rule: what Q.K is multiplied by.
enum class AttnScale : uint8_t {
  head_dim,    // 1 / sqrt(head_dim_k)
  gemma_27b,   // as head_dim, except 1 / sqrt(n_embd / n_head) for the 27B variant (its layer count)
};

enum class MoeGating : uint8_t {
  softmax,  // GGUF expert_gating_func 1
  sigmoid,  // GGUF expert_gating_func 2
};

// Expert routing of a family, as llama.cpp builds these graphs: every family gates with a
// softmax; llama-with-experts (Mixtral) and qwen3moe renormalise the top-k weights (for
// Mixtral this equals a softmax over the k selected logits), qwen2moe and olmoe use the raw
// probabilities.
struct MoeArch {
  bool allowed;              // files of this family may have experts
  bool norm_weights;
  bool ff_from_expert_key;   // expert_feed_forward_length, else feed_forward_length / k;
                             // false: feed_forward_length is the expert width
  bool shared_expert;        // the family has a shared expert (required)
  bool shared_gated;         // shared expert scaled by sigmoid(ffn_gate_inp_shexp . x)
};

// What differs between families beyond what the metadata says. One row per architecture.
struct ArchInfo {
  const char* name;
  RopeStyle rope;
  FfnActivation activation;
  bool embed_scale;         // multiply token embeddings by sqrt(n_embd) (gemma)
  bool scale_q;             // apply the attention scale to Q before attention (gemma, phi3)
  QkNorm qk_norm;           // RMS norm of Q and K before RoPE
  bool qkv_bias;            // attn_{q,k,v}.bias required (qwen2); optional elsewhere
  bool post_norms;          // RMS norm on the attention and FFN outputs before the residual add
  bool fused_qkv;           // one attn_qkv matrix (phi3)
  bool fused_gate_up;       // ffn_up holds [gate; up] with 2*n_ff rows (phi3)
  int swa_period;           // every n-th layer is global, the others sliding (0 = no SWA)
  bool swa_needs_key;       // sliding only when attention.sliding_window is present
  bool swa_plain_rope;      // sliding layers keep RoPE base 10000 without scaling (gemma3)
  float attn_softcap;       // attention soft-cap when the key is absent; 0: the family never caps
  float final_softcap;      // logit soft-cap when the key is absent
  AttnScale attn_scale;
  int64_t n_layer_27b;      // with AttnScale::gemma_27b: the 27B variant's layer count
  MoeArch moe;
  // Hybrid and 2026 families (trailing, so the rows above keep their defaults).
  int nope_period = 0;      // layers with (il + 1) % nope_period == 0 run without RoPE (smollm3: 4)
  bool conv_layers = false; // per-layer head_count_kv, 0 = a short-convolution layer (lfm2)
  const char* output_norm_name = "output_norm.weight";
  bool delta_net = false;   // Gated DeltaNet layers (deltanet.hpp) between gated attention layers (qwen35)
  const char* ffn_norm_name = "ffn_norm.weight";
};

namespace detail {
inline constexpr MoeArch kNoMoe{false, false, false, false, false};
}  // namespace detail

// The families this library runs.
inline constexpr ArchInfo kArchTable[] = {
    // name     rope               act                         emb    scq    qk-norm            bias   post   fqkv   fgu    swa  key    plain  acap   fcap   scale                  27B  moe: allowed norm ffkey shared gated
    {"llama",   RopeStyle::normal, FfnActivation::silu,      false, false, QkNorm::none,     false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  {true,  true,  false, false, false}},
    {"qwen2",   RopeStyle::neox,   FfnActivation::silu,      false, false, QkNorm::none,     true,  false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  detail::kNoMoe},
    {"qwen3",   RopeStyle::neox,   FfnActivation::silu,      false, false, QkNorm::per_head, false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  detail::kNoMoe},
    {"gemma",   RopeStyle::neox,   FfnActivation::gelu_tanh, true,  true,  QkNorm::none,     false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  detail::kNoMoe},
    {"gemma2",  RopeStyle::neox,   FfnActivation::gelu_tanh, true,  true,  QkNorm::none,     false, true,  false, false, 2,   false, false, 50.0f, 30.0f, AttnScale::gemma_27b, 46, detail::kNoMoe},
    {"gemma3",  RopeStyle::neox,   FfnActivation::gelu_tanh, true,  true,  QkNorm::per_head, false, true,  false, false, 6,   true,  true,  0.0f,  0.0f,  AttnScale::gemma_27b, 62, detail::kNoMoe},
    {"phi3",    RopeStyle::neox,   FfnActivation::silu,      false, true,  QkNorm::none,     false, false, true,  true,  0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  detail::kNoMoe},
    // Mixture-of-experts families: attention as their dense relatives, FFN in moe.hpp.
    {"qwen2moe", RopeStyle::neox,  FfnActivation::silu,      false, false, QkNorm::none,     true,  false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  {true,  false, true,  true,  true}},
    {"qwen3moe", RopeStyle::neox,  FfnActivation::silu,      false, false, QkNorm::per_head, false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  {true,  true,  true,  false, false}},
    {"olmoe",   RopeStyle::neox,   FfnActivation::silu,      false, false, QkNorm::whole,    false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  {true,  false, false, false, false}},
    // 2026 phone models: smollm3 drops RoPE on every 4th layer; lfm2 mixes short-convolution
    // layers (conv.hpp) with GQA attention and names its final norm token_embd_norm.
    {"smollm3", RopeStyle::normal, FfnActivation::silu,      false, false, QkNorm::none,     false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  detail::kNoMoe, 4},
    {"lfm2",    RopeStyle::neox,   FfnActivation::silu,      false, false, QkNorm::per_head, false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  detail::kNoMoe, 0, true, "token_embd_norm.weight"},
    // qwen35: DeltaNet layers with a gated attention layer every full_attention_interval; its
    // pre-FFN norm is named post_attention_norm; RoPE is interleaved multi-section (NEOX halves).
    {"qwen35",  RopeStyle::neox,   FfnActivation::silu,      false, false, QkNorm::per_head, false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  detail::kNoMoe, 0, false, "output_norm.weight", true, "post_attention_norm.weight"},
};

// Mixture-of-experts families whose routing this library does not implement: refused by name
// with a clearer message than "unsupported architecture".
inline constexpr std::string_view kRefusedMoeArchs[] = {
    "deepseek", "deepseek2", "granitemoe", "dbrx", "arctic", "jamba", "llama4", "gpt-oss",
};

inline const ArchInfo* find_arch(std::string_view name) {
  for (const auto& a : kArchTable)
    if (name == a.name) return &a;
  return nullptr;
}

inline bool is_unsupported_moe_arch(std::string_view name) {
  for (std::string_view r : kRefusedMoeArchs)
    if (name == r) return true;
  return false;
}

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

// Experts above this count are refused (llama.cpp's limit).
inline constexpr int64_t kMoeMaxExperts = 512;

enum class LayerKind : uint8_t {
  attention,   // self-attention over this layer's KV cache, then the FFN
  short_conv,  // gated short causal convolution with a per-sequence state (lfm2), then the FFN
  delta_net,   // Gated DeltaNet linear attention with a per-sequence state (qwen35), then the FFN
};

enum class FfnKind : uint8_t {
  dense,  // gate/up, gated activation, down
  moe,    // router and experts (moe.hpp)
};

// One layer of the forward pass, as the forward layer runs it.
struct LayerPlan {
  LayerKind kind = LayerKind::attention;
  FfnKind ffn = FfnKind::dense;
  int64_t n_head = 0, n_head_kv = 0;
  int64_t head_dim_k = 0, head_dim_v = 0;
  int64_t n_ff = 0;           // dense FFN width (0 for MoE layers)
  bool sliding = false;       // sliding-window attention (n_swa positions)
  bool rope = true;           // RoPE on Q and K
  uint8_t rope_table = 0;     // 0: the global angles (rope_base), 1: the sliding ones (rope_base_swa)
  int64_t kv_layer = 0;       // the KV cache slot this layer writes and reads (-1: none)
  bool attn_gate = false;     // Q projection is [query | gate] per head; output *= sigmoid(gate) (qwen35)

  int64_t q_dim() const { return n_head * head_dim_k; }
  int64_t k_dim() const { return n_head_kv * head_dim_k; }
  int64_t v_dim() const { return n_head_kv * head_dim_v; }
  int64_t attn_out_dim() const { return n_head * head_dim_v; }
};

// Every hyper-parameter the forward pass reads, for every family.
struct HParams {
  std::string arch_name;
  ArchInfo arch{};

  int64_t n_vocab = 0;
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim_k = 0;   // attention.key_length, else n_embd / n_head
  int64_t head_dim_v = 0;   // attention.value_length, else head_dim_k
  int64_t n_ff = 0;
  int64_t n_ctx_train = 0;
  int64_t n_rot = 0;        // rope.dimension_count, else head_dim_k
  float rms_eps = 1e-5f;

  // RoPE: theta_i = pos * freq_scale * base^(-2i/n_rot) / freq_factor[i]
  float rope_base = 10000.0f;
  float rope_freq_scale = 1.0f;      // 1 / rope.scaling.factor for linear scaling
  float rope_base_swa = 10000.0f;    // sliding-window layers (gemma2/3)
  float rope_freq_scale_swa = 1.0f;
  std::vector<float> rope_freq_factors;  // llama3 `rope_freqs.weight` (n_rot/2), may be empty

  float attn_scale = 1.0f;           // multiplies Q.K
  float attn_softcap = 0.0f;         // 0 = off; else scores = cap * tanh(scores / cap)
  float final_softcap = 0.0f;        // same on the logits
  float embed_scale = 1.0f;          // sqrt(n_embd) for gemma

  int64_t n_swa = 0;                 // sliding window (positions p - q < n_swa are visible)
  std::vector<uint8_t> layer_swa;    // per layer: 1 = sliding window, 0 = global

  int64_t n_expert = 0;              // > 0: MoE file
  MoeConfig moe;                     // its routing: read when the model binds its experts
                                     // (read_moe_config), after each layer's router is found

  std::vector<LayerPlan> layers;     // the per-layer plan (n_layer entries)
  std::vector<int64_t> layer_head_kv;  // per-layer head_count_kv of hybrid files (0 = conv layer)
  int64_t conv_kernel = 0;           // shortconv.l_cache: width L of the short convolution
  DeltaNetShape delta_net;           // qwen35 ssm.* sizes
  std::vector<uint8_t> layer_recurrent;  // qwen35: 1 = DeltaNet layer, 0 = gated attention
  std::vector<uint8_t> rope_pair_pos;    // multi-section RoPE: per pair, 0 = rotated by position 0

  // KV cache slots: one per layer that owns a cache.
  int64_t n_kv_layers() const {
    int64_t n = 0;
    for (const LayerPlan& l : layers) n = std::max(n, l.kv_layer + 1);
    return layers.empty() ? n_layer : n;
  }
  // Floats of layer il's per-sequence state (0: none).
  int64_t state_floats(int64_t il) const {
    const LayerPlan& l = layers[static_cast<size_t>(il)];
    if (l.kind == LayerKind::delta_net) return delta_net.state_floats();
    return l.kind == LayerKind::short_conv ? (conv_kernel - 1) * n_embd : 0;
  }

  int64_t q_dim() const { return n_head * head_dim_k; }
  int64_t k_dim() const { return n_head_kv * head_dim_k; }
  int64_t v_dim() const { return n_head_kv * head_dim_v; }
  bool is_swa(int64_t layer) const { return !layer_swa.empty() && layer_swa[layer] != 0; }
  bool any_swa() const { return !layer_swa.empty(); }
};

// A 2-D weight matrix in the mapped file: `rows` rows of `cols` values of `type`, no copy.
struct Weight {
  TensorType type = TensorType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  std::string_view name;

  explicit operator bool() const { return data != nullptr; }
  size_t row_bytes() const {
    const auto& info = tensor_type_info(type);
    return static_cast<size_t>(cols / info.block_size * info.block_bytes);
  }
  MatrixRef ref() const { return {type, data, rows, cols}; }
};

// A stacked expert tensor [cols, rows, n_expert]: n_expert matrices of `rows` rows of `cols`.
// Expert e's matrix is the slice at byte offset e * rows * row_bytes.
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

// Per-layer weights. Absent optional tensors are empty Weights / empty vectors.
struct LayerWeights {
  std::vector<float> attn_norm;
  Weight wq, wk, wv, wqkv;                // wqkv when the family fuses them (phi3)
  std::vector<float> bq, bk, bv;          // qwen2 biases (optional elsewhere)
  std::vector<float> q_norm, k_norm;      // QK-norm weights (per head, or whole projection)
  Weight wo;
  std::vector<float> bo;
  std::vector<float> post_attn_norm;      // gemma2/3
  std::vector<float> ffn_norm;
  // Dense FFN; empty in an MoE layer (moe == true), whose router and experts are `experts`.
  Weight ffn_gate, ffn_up, ffn_down;      // ffn_up holds [gate; up] when fused (phi3)
  bool moe = false;
  MoeLayerWeights experts;
  std::vector<float> post_ffn_norm;       // gemma2/3
  // Short-convolution layer (lfm2): in_proj (3 n_embd rows: b, c, x), kernel [n_embd][L], out_proj.
  Weight conv_in, conv_out;
  std::vector<float> conv_kernel;
  // Gated DeltaNet layer (qwen35): projections to [q|k|v] mix, z, beta, alpha; conv kernel
  // [channels][L], dt bias, A (= -exp(A_log)), the norm of the gated output (d values), ssm_out.
  Weight ssm_qkv, ssm_gate, ssm_beta, ssm_alpha, ssm_out;
  std::vector<float> ssm_conv, ssm_dt_bias, ssm_a, ssm_norm;
};

struct ModelWeights {
  Weight token_embd;
  std::vector<LayerWeights> layers;
  std::vector<float> output_norm;
  Weight output;                          // == token_embd when the embeddings are tied
  std::vector<float> output_bias;         // qwen2 (optional)
  bool tied_embeddings = false;
};

namespace detail {

// Reads `<arch>.<suffix>` as an integer; `fallback` when absent (required when fallback < 0).
inline Expected<int64_t> arch_int(const GgufFile& f, const std::string& arch, const char* suffix,
                                  int64_t fallback) {
  const std::string key = arch + "." + suffix;
  const GgufKv* kv = f.find(key);
  if (!kv) {
    if (fallback < 0)
      return make_error(Errc::not_found, f.name() + ": missing metadata key '" + key + "'");
    return fallback;
  }
  int64_t v = 0;
  if (kv->value.type() == GgufValueType::array) {
    // Per-layer arrays (e.g. head_count_kv): accepted when every layer has the same value.
    GgufArray a = kv->value.as_array();
    bool first = true, same = true;
    a.for_each([&](const GgufValue& e) {
      int64_t x = 0;
      if (!e.as_int64(&x)) same = false;
      if (first) v = x;
      else if (x != v) same = false;
      first = false;
      return same;
    });
    if (first || !same)
      return make_error(Errc::unsupported,
                        f.name() + ": metadata key '" + key + "' varies per layer (not supported)");
    return v;
  }
  if (!kv->value.is_integer() || !kv->value.as_int64(&v))
    return make_error(Errc::type_mismatch, f.name() + ": metadata key '" + key + "' is not an integer");
  return v;
}

inline Expected<float> arch_float(const GgufFile& f, const std::string& arch, const char* suffix,
                                  float fallback) {
  auto v = f.get_or<double>(arch + "." + suffix, static_cast<double>(fallback));
  if (!v) return v.error();
  return static_cast<float>(*v);
}

inline Expected<int64_t> moe_int_key(const GgufFile& f, const std::string& key, int64_t fallback) {
  if (!f.contains(key)) return fallback;
  auto v = f.get<int64_t>(key);
  if (!v) return v.error();
  return *v;
}

// "llama, qwen2, ..." from the table, for error messages.
inline std::string supported_arch_list() {
  std::string s;
  for (const auto& a : kArchTable) {
    if (!s.empty()) s += ", ";
    s += a.name;
  }
  return s;
}

#define TINYSLM_TRY_READ(dst, expr) \
  do {                              \
    auto v_ = (expr);               \
    if (!v_) return v_.error();     \
    dst = *v_;                      \
  } while (0)

// Expert widths: qwen2moe/qwen3moe read expert_feed_forward_length (else feed_forward_length
// / k); llama and olmoe: feed_forward_length is the expert width (llama.cpp does not read the
// expert key). Only families whose graph has a shared expert get one.
inline Status read_moe_widths(const GgufFile& f, const std::string& a, const MoeArch& info, MoeConfig& c) {
  int64_t n_ff = 0, ff_key = 0, sh = 0;
  TINYSLM_TRY_READ(n_ff, moe_int_key(f, a + ".feed_forward_length", 0));
  TINYSLM_TRY_READ(ff_key, moe_int_key(f, a + ".expert_feed_forward_length", 0));
  if (info.ff_from_expert_key) c.expert_ff = ff_key > 0 ? ff_key : n_ff / c.n_expert_used;
  else c.expert_ff = n_ff;
  TINYSLM_TRY_READ(sh, moe_int_key(f, a + ".expert_shared_feed_forward_length", 0));
  c.shared_expert = info.shared_expert;
  c.shared_gated = info.shared_gated;
  if (c.shared_expert) c.shared_ff = sh > 0 ? sh : n_ff;
  constexpr int64_t kMaxFf = int64_t{1} << 22;
  if (c.expert_ff <= 0 || c.expert_ff > kMaxFf || (c.shared_expert && (c.shared_ff <= 0 || c.shared_ff > kMaxFf)))
    return make_error(Errc::invalid_format, f.name() + ": bad expert feed-forward length (" +
                                                std::to_string(c.expert_ff) + ", shared " +
                                                std::to_string(c.shared_ff) + ")");
  return {};
}

// expert_weights_norm, expert_weights_scale and expert_gating_func override the family's
// defaults when present (converters do not write them for the supported families).
inline Status read_moe_overrides(const GgufFile& f, const std::string& a, MoeConfig& c) {
  if (f.contains(a + ".expert_weights_norm")) TINYSLM_TRY_READ(c.norm_weights, f.get<bool>(a + ".expert_weights_norm"));
  float scale = 0.0f;
  TINYSLM_TRY_READ(scale, f.get_or<float>(a + ".expert_weights_scale", 0.0f));
  if (!std::isfinite(scale))
    return make_error(Errc::invalid_format, f.name() + ": expert_weights_scale is not finite");
  c.weights_scale = scale == 0.0f ? 1.0f : scale;
  int64_t gating = 0;
  TINYSLM_TRY_READ(gating, moe_int_key(f, a + ".expert_gating_func", 0));
  switch (gating) {
    case 0:  // none: the family default
    case 1: c.gating = MoeGating::softmax; break;
    case 2: c.gating = MoeGating::sigmoid; break;
    default:
      return make_error(Errc::unsupported, f.name() + ": expert_gating_func " + std::to_string(gating) +
                                               " is not supported (1 = softmax, 2 = sigmoid)");
  }
  return {};
}

}  // namespace detail

// Reads the MoE hyper-parameters of a file. A file without `<arch>.expert_count` (or with 0)
// gives a disabled config; the family's routing defaults come from kArchTable.
inline Expected<MoeConfig> read_moe_config(const GgufFile& f) {
  MoeConfig c;
  auto arch_v = f.get<std::string>("general.architecture");
  if (!arch_v) return arch_v.error();
  const std::string& a = *arch_v;
  int64_t n_expert = 0, n_used = 0;
  TINYSLM_TRY_READ(n_expert, detail::moe_int_key(f, a + ".expert_count", 0));
  TINYSLM_TRY_READ(n_used, detail::moe_int_key(f, a + ".expert_used_count", 0));
  if (n_expert == 0) {
    if (n_used != 0)
      return make_error(Errc::invalid_format, f.name() + ": expert_used_count " + std::to_string(n_used) +
                                                  " without experts");
    return c;
  }
  const ArchInfo* info = find_arch(a);
  if (!info || !info->moe.allowed)
    return make_error(Errc::unsupported, f.name() + ": mixture of experts for architecture '" + a +
                                             "' is not supported (supported: llama/mixtral, qwen2moe, "
                                             "qwen3moe, olmoe)");
  if (n_expert < 0 || n_expert > kMoeMaxExperts || n_used <= 0 || n_used > n_expert)
    return make_error(Errc::invalid_format, f.name() + ": bad expert counts (expert_count " +
                                                std::to_string(n_expert) + ", expert_used_count " +
                                                std::to_string(n_used) + ")");
  c.n_expert = n_expert;
  c.n_expert_used = n_used;
  if (auto st = detail::read_moe_widths(f, a, info->moe, c); !st) return st.error();
  c.norm_weights = info->moe.norm_weights;
  if (auto st = detail::read_moe_overrides(f, a, c); !st) return st.error();
  return c;
}

namespace detail {

// Hybrid files (lfm2): head_count_kv per layer, 0 marking a short-convolution layer, and the
// convolution width. Returns the KV head count of the attention layers (all equal).
inline Expected<int64_t> read_layer_head_kv(const GgufFile& f, const std::string& a, HParams& hp) {
  const std::string key = a + ".attention.head_count_kv";
  const GgufKv* kv = f.find(key);
  if (!kv || kv->value.type() != GgufValueType::array)
    return make_error(Errc::invalid_format, f.name() + ": metadata key '" + key + "' must be a per-layer array");
  GgufArray arr = kv->value.as_array();
  if (static_cast<int64_t>(arr.size()) != hp.n_layer)
    return make_error(Errc::invalid_format, f.name() + ": '" + key + "' has " + std::to_string(arr.size()) +
                                                " entries for " + std::to_string(hp.n_layer) + " layers");
  hp.layer_head_kv.clear();
  arr.for_each([&](const GgufValue& e) {
    int64_t x = -1;
    if (!e.as_int64(&x)) x = -1;
    hp.layer_head_kv.push_back(x);
    return true;
  });
  int64_t heads = 0;
  for (int64_t x : hp.layer_head_kv) {
    if (x < 0 || x > hp.n_head || (x > 0 && hp.n_head % x != 0) || (x > 0 && heads > 0 && x != heads))
      return make_error(Errc::invalid_format, f.name() + ": '" + key + "' entry " + std::to_string(x) +
                                                  " is not 0 (convolution) or one KV head count dividing " +
                                                  std::to_string(hp.n_head) + " heads");
    if (x > 0) heads = x;
  }
  if (heads == 0)
    return make_error(Errc::unsupported, f.name() + ": '" + key + "' has no attention layer");
  TINYSLM_TRY_READ(hp.conv_kernel, arch_int(f, a, "shortconv.l_cache", -1));
  if (hp.conv_kernel < 2 || hp.conv_kernel > 64)
    return make_error(Errc::invalid_format, f.name() + ": metadata key '" + a + ".shortconv.l_cache' is " +
                                                std::to_string(hp.conv_kernel) + " (expected 2 to 64)");
  return heads;
}

// Sizes of the transformer: embedding, layers, heads, FFN, head sizes, RoPE dimensions.
inline Status read_sizes(const GgufFile& f, const std::string& a, HParams& hp) {
  TINYSLM_TRY_READ(hp.n_embd, arch_int(f, a, "embedding_length", -1));
  TINYSLM_TRY_READ(hp.n_layer, arch_int(f, a, "block_count", -1));
  TINYSLM_TRY_READ(hp.n_ff, arch_int(f, a, "feed_forward_length", -1));
  TINYSLM_TRY_READ(hp.n_head, arch_int(f, a, "attention.head_count", -1));
  if (hp.arch.conv_layers) TINYSLM_TRY_READ(hp.n_head_kv, read_layer_head_kv(f, a, hp));
  else TINYSLM_TRY_READ(hp.n_head_kv, arch_int(f, a, "attention.head_count_kv", hp.n_head));
  TINYSLM_TRY_READ(hp.n_ctx_train, arch_int(f, a, "context_length", 2048));
  if (hp.n_embd <= 0 || hp.n_layer <= 0 || hp.n_head <= 0 || hp.n_head_kv <= 0 || hp.n_ff <= 0 ||
      hp.n_head % hp.n_head_kv != 0 || hp.n_embd > (1 << 20) || hp.n_layer > 4096 ||
      hp.n_head > 4096 || hp.n_ff > (1 << 22))
    return make_error(Errc::invalid_format,
                      f.name() + ": inconsistent hyper-parameters (n_embd " +
                          std::to_string(hp.n_embd) + ", n_layer " + std::to_string(hp.n_layer) +
                          ", n_head " + std::to_string(hp.n_head) + ", n_head_kv " +
                          std::to_string(hp.n_head_kv) + ", n_ff " + std::to_string(hp.n_ff) + ")");
  TINYSLM_TRY_READ(hp.head_dim_k, arch_int(f, a, "attention.key_length", hp.n_embd / hp.n_head));
  TINYSLM_TRY_READ(hp.head_dim_v, arch_int(f, a, "attention.value_length", hp.head_dim_k));
  TINYSLM_TRY_READ(hp.n_rot, arch_int(f, a, "rope.dimension_count", hp.head_dim_k));
  if (hp.head_dim_k <= 0 || hp.head_dim_v <= 0 || hp.head_dim_k > 1024 || hp.head_dim_v > 1024 ||
      hp.n_rot <= 0 || hp.n_rot > hp.head_dim_k || hp.n_rot % 2 != 0)
    return make_error(Errc::invalid_format,
                      f.name() + ": bad head size (key " + std::to_string(hp.head_dim_k) +
                          ", value " + std::to_string(hp.head_dim_v) + ", rope dims " +
                          std::to_string(hp.n_rot) + ")");
  TINYSLM_TRY_READ(hp.rms_eps, arch_float(f, a, "attention.layer_norm_rms_epsilon", 1e-5f));
  return {};
}

// RoPE base and scaling: linear (a frequency scale) is applied, llama3 lives in rope_freqs;
// other kinds are refused clearly.
inline Status read_rope(const GgufFile& f, const std::string& a, HParams& hp) {
  TINYSLM_TRY_READ(hp.rope_base, arch_float(f, a, "rope.freq_base", 10000.0f));
  std::string scaling;
  TINYSLM_TRY_READ(scaling, f.get_or<std::string>(a + ".rope.scaling.type", "none"));
  float factor = 0.0f;
  TINYSLM_TRY_READ(factor, arch_float(f, a, "rope.scaling.factor", 0.0f));
  if (factor == 0.0f) TINYSLM_TRY_READ(factor, arch_float(f, a, "rope.scale_linear", 0.0f));
  if (scaling == "yarn" || scaling == "longrope")
    return make_error(Errc::unsupported, f.name() + ": RoPE scaling '" + scaling + "' is not supported yet");
  if (scaling != "none" && scaling != "linear" && scaling != "llama3")
    return make_error(Errc::unsupported, f.name() + ": unknown RoPE scaling '" + scaling + "'");
  hp.rope_freq_scale = (scaling == "none" || factor == 0.0f) ? 1.0f : 1.0f / factor;
  if (scaling == "llama3") hp.rope_freq_scale = 1.0f;
  hp.rope_base_swa = hp.rope_base;
  hp.rope_freq_scale_swa = hp.rope_freq_scale;
  return {};
}

// Which layers slide: an explicit per-layer pattern array, else a period (global when
// il % period == period - 1; period 0: all sliding).
inline Status read_swa_pattern(const GgufFile& f, const std::string& a, int64_t period, HParams& hp) {
  const GgufKv* pat = f.find(a + ".attention.sliding_window_pattern");
  hp.layer_swa.assign(static_cast<size_t>(hp.n_layer), 0);
  if (pat && pat->value.type() == GgufValueType::array) {
    GgufArray arr = pat->value.as_array();
    if (static_cast<int64_t>(arr.size()) != hp.n_layer)
      return make_error(Errc::invalid_format,
                        f.name() + ": sliding_window_pattern has " + std::to_string(arr.size()) +
                            " entries for " + std::to_string(hp.n_layer) + " layers");
    size_t i = 0;
    arr.for_each([&](const GgufValue& e) {
      int64_t x = 0;
      if (e.type() == GgufValueType::boolean) x = e.as_bool();
      else e.as_int64(&x);
      hp.layer_swa[i++] = x != 0;
      return true;
    });
    return {};
  }
  if (pat) TINYSLM_TRY_READ(period, arch_int(f, a, "attention.sliding_window_pattern", period));
  for (int64_t il = 0; il < hp.n_layer; ++il)
    hp.layer_swa[static_cast<size_t>(il)] = period == 0 || (il % period < period - 1);
  return {};
}

// Sliding-window attention (gemma2: every other layer; gemma3: 5 of every 6 layers).
inline Status read_swa(const GgufFile& f, const std::string& a, HParams& hp) {
  const ArchInfo& info = hp.arch;
  const bool has_key = f.contains(a + ".attention.sliding_window");
  if (info.swa_period == 0 || (!has_key && info.swa_needs_key)) return {};
  TINYSLM_TRY_READ(hp.n_swa, arch_int(f, a, "attention.sliding_window", 4096));
  if (auto st = read_swa_pattern(f, a, info.swa_period, hp); !st) return st;
  if (hp.n_swa <= 0) hp.layer_swa.clear();
  if (info.swa_plain_rope) {
    hp.rope_base_swa = 10000.0f;
    hp.rope_freq_scale_swa = 1.0f;
  }
  TINYSLM_TRY_READ(hp.rope_base_swa, arch_float(f, a, "rope.freq_base_swa", hp.rope_base_swa));
  return {};
}

// Soft-caps, the attention scale and the embedding scale.
inline Status read_scales(const GgufFile& f, const std::string& a, HParams& hp) {
  const ArchInfo& info = hp.arch;
  TINYSLM_TRY_READ(hp.attn_softcap, arch_float(f, a, "attn_logit_softcapping", info.attn_softcap));
  TINYSLM_TRY_READ(hp.final_softcap, arch_float(f, a, "final_logit_softcapping", info.final_softcap));
  if (info.attn_softcap == 0.0f) hp.attn_softcap = 0.0f;  // the family never caps attention scores
  const bool big = info.attn_scale == AttnScale::gemma_27b && hp.n_layer == info.n_layer_27b;
  hp.attn_scale = big ? 1.0f / std::sqrt(static_cast<float>(hp.n_embd / hp.n_head))
                      : 1.0f / std::sqrt(static_cast<float>(hp.head_dim_k));
  hp.embed_scale = info.embed_scale ? std::sqrt(static_cast<float>(hp.n_embd)) : 1.0f;
  return {};
}

// A per-layer or per-section integer array `<arch>.<suffix>` of exactly n entries.
inline Status arch_int_array(const GgufFile& f, const std::string& a, const char* suffix, size_t n,
                             std::vector<int64_t>* out) {
  const std::string key = a + "." + suffix;
  const GgufKv* kv = f.find(key);
  if (!kv) return make_error(Errc::not_found, f.name() + ": missing metadata key '" + key + "'");
  if (kv->value.type() != GgufValueType::array)
    return make_error(Errc::invalid_format, f.name() + ": metadata key '" + key + "' must be an array");
  GgufArray arr = kv->value.as_array();
  if (arr.size() != n)
    return make_error(Errc::invalid_format, f.name() + ": metadata key '" + key + "' has " +
                                                std::to_string(arr.size()) + " entries, expected " + std::to_string(n));
  out->clear();
  bool ok = true;
  arr.for_each([&](const GgufValue& e) {
    int64_t x = 0;
    if (e.type() == GgufValueType::boolean) x = e.as_bool();
    else if (!e.as_int64(&x)) ok = false;
    out->push_back(x);
    return ok;
  });
  if (!ok) return make_error(Errc::type_mismatch, f.name() + ": metadata key '" + key + "' holds non-integers");
  return {};
}

// Interleaved multi-section RoPE (qwen35): pair i of the n_rot / 2 belongs to section
// i % sum(sections) taken round-robin (t, h, w while each lasts); text tokens put their
// position in t, h and w and 0 in the fourth, so pairs of the fourth section do not rotate.
inline Status read_rope_sections(const GgufFile& f, const std::string& a, HParams& hp) {
  std::vector<int64_t> sec;
  if (auto st = arch_int_array(f, a, "rope.dimension_sections", 4, &sec); !st) return st;
  const int64_t total = sec[0] + sec[1] + sec[2] + sec[3];
  if (sec[0] < 0 || sec[1] < 0 || sec[2] < 0 || sec[3] < 0 || total <= 0 || total > hp.n_rot / 2)
    return make_error(Errc::invalid_format, f.name() + ": metadata key '" + a +
                                                ".rope.dimension_sections' does not fit rope.dimension_count " +
                                                std::to_string(hp.n_rot));
  hp.rope_pair_pos.assign(static_cast<size_t>(hp.n_rot / 2), 1);
  for (int64_t i = 0; i < hp.n_rot / 2; ++i) {
    const int64_t sector = i % total, r = sector % 3;
    const bool positioned = (r == 0 && sector < 3 * sec[0]) || (r == 1 && sector < 3 * sec[1]) ||
                            (r == 2 && sector < 3 * sec[2]);
    hp.rope_pair_pos[static_cast<size_t>(i)] = positioned;
  }
  return {};
}

// qwen35: the DeltaNet sizes, which layers are recurrent (attention.recurrent_layers, else
// every layer but each full_attention_interval-th), the RoPE sections.
inline Status read_delta_net(const GgufFile& f, const std::string& a, HParams& hp) {
  if (!hp.arch.delta_net) return {};
  DeltaNetShape& s = hp.delta_net;
  int64_t inner = 0, interval = 0, nextn = 0;
  // Multi-token-prediction blocks follow the main stack; the main pass never runs them.
  TINYSLM_TRY_READ(nextn, arch_int(f, a, "nextn_predict_layers", 0));
  if (nextn < 0 || nextn >= hp.n_layer)
    return make_error(Errc::invalid_format, f.name() + ": metadata key '" + a + ".nextn_predict_layers' is " +
                                                std::to_string(nextn) + " for " + std::to_string(hp.n_layer) + " blocks");
  hp.n_layer -= nextn;
  TINYSLM_TRY_READ(s.d_conv, arch_int(f, a, "ssm.conv_kernel", -1));
  TINYSLM_TRY_READ(s.d_state, arch_int(f, a, "ssm.state_size", -1));
  TINYSLM_TRY_READ(s.n_k_heads, arch_int(f, a, "ssm.group_count", -1));
  TINYSLM_TRY_READ(s.n_v_heads, arch_int(f, a, "ssm.time_step_rank", -1));
  TINYSLM_TRY_READ(inner, arch_int(f, a, "ssm.inner_size", -1));
  const auto bad = [&](const char* key, int64_t v, const char* want) {
    return make_error(Errc::invalid_format, f.name() + ": metadata key '" + a + "." + key + "' is " +
                                                std::to_string(v) + " (" + want + ")");
  };
  if (s.d_conv < 2 || s.d_conv > 64) return bad("ssm.conv_kernel", s.d_conv, "expected 2 to 64");
  if (s.d_state <= 0 || s.d_state > kDeltaNetMaxState) return bad("ssm.state_size", s.d_state, "expected 1 to 1024");
  if (s.n_k_heads <= 0 || s.n_k_heads > 1024) return bad("ssm.group_count", s.n_k_heads, "expected 1 to 1024");
  if (s.n_v_heads <= 0 || s.n_v_heads > 1024 || s.n_v_heads % s.n_k_heads != 0)
    return bad("ssm.time_step_rank", s.n_v_heads, "V heads: a multiple of ssm.group_count, at most 1024");
  if (inner != s.value_dim()) return bad("ssm.inner_size", inner, "expected time_step_rank x state_size");
  if (hp.head_dim_k != hp.head_dim_v)
    return make_error(Errc::invalid_format, f.name() + ": qwen35 attention needs key_length == value_length");
  if (f.contains(a + ".attention.recurrent_layers")) {
    std::vector<int64_t> rec;
    if (auto st = arch_int_array(f, a, "attention.recurrent_layers", static_cast<size_t>(hp.n_layer), &rec); !st)
      return st;
    hp.layer_recurrent.assign(rec.begin(), rec.end());
  } else {
    TINYSLM_TRY_READ(interval, arch_int(f, a, "full_attention_interval", 4));
    if (interval <= 0) return bad("full_attention_interval", interval, "expected a positive interval");
    for (int64_t il = 0; il < hp.n_layer; ++il) hp.layer_recurrent.push_back((il + 1) % interval != 0);
  }
  if (std::find(hp.layer_recurrent.begin(), hp.layer_recurrent.end(), 0) == hp.layer_recurrent.end())
    return make_error(Errc::unsupported, f.name() + ": '" + a + ".full_attention_interval' / '" + a +
                                             ".attention.recurrent_layers' leave no attention layer");
  return read_rope_sections(f, a, hp);
}

#undef TINYSLM_TRY_READ

// The per-layer plan. Every layer is attention + FFN today; head counts and sizes are
// uniform, each layer owns its KV slot, and sliding layers use the second RoPE table.
inline void build_layer_plan(HParams& hp) {
  hp.layers.assign(static_cast<size_t>(hp.n_layer), LayerPlan{});
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    LayerPlan& p = hp.layers[static_cast<size_t>(il)];
    p.kind = LayerKind::attention;
    p.ffn = hp.n_expert > 0 ? FfnKind::moe : FfnKind::dense;
    p.n_head = hp.n_head;
    p.n_head_kv = hp.n_head_kv;
    p.head_dim_k = hp.head_dim_k;
    p.head_dim_v = hp.head_dim_v;
    p.n_ff = p.ffn == FfnKind::dense ? hp.n_ff : 0;
    p.sliding = hp.is_swa(il);
    p.rope = hp.arch.nope_period <= 0 || (il + 1) % hp.arch.nope_period != 0;
    p.rope_table = p.sliding ? 1 : 0;
    p.kv_layer = il;
  }
  if (!hp.layer_recurrent.empty()) {  // DeltaNet layers have no KV; attention layers are gated
    int64_t slot = 0;
    for (int64_t il = 0; il < hp.n_layer; ++il) {
      LayerPlan& p = hp.layers[static_cast<size_t>(il)];
      const bool rec = hp.layer_recurrent[static_cast<size_t>(il)] != 0;
      p.kind = rec ? LayerKind::delta_net : LayerKind::attention;
      p.rope = !rec;
      p.kv_layer = rec ? -1 : slot++;
      p.attn_gate = !rec;
    }
    return;
  }
  if (hp.layer_head_kv.empty()) return;
  // Hybrid: convolution layers have no KV; attention layers take consecutive cache slots.
  int64_t slot = 0;
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    LayerPlan& p = hp.layers[static_cast<size_t>(il)];
    if (hp.layer_head_kv[static_cast<size_t>(il)] == 0) {
      p.kind = LayerKind::short_conv;
      p.n_head_kv = 0;
      p.rope = false;
      p.kv_layer = -1;
    } else {
      p.kv_layer = slot++;
    }
  }
}

}  // namespace detail

// Reads the hyper-parameters of a GGUF file; refuses unknown architectures and MoE families
// whose routing is not implemented.
inline Expected<HParams> read_hparams(const GgufFile& f) {
  HParams hp;
  auto arch = f.get<std::string>("general.architecture");
  if (!arch) return arch.error();
  hp.arch_name = *arch;
  const std::string& a = hp.arch_name;
  auto n_expert = detail::arch_int(f, a, "expert_count", 0);
  if (!n_expert) return n_expert.error();
  hp.n_expert = *n_expert;
  if (is_unsupported_moe_arch(a))
    return make_error(Errc::unsupported, f.name() + ": architecture '" + a +
                                             "' is a mixture of experts this library does not support");
  const ArchInfo* info = find_arch(a);
  if (!info)
    return make_error(Errc::unsupported, f.name() + ": unsupported architecture '" + a + "' (supported: " +
                                             detail::supported_arch_list() + ", mixtral as llama)");
  if (hp.n_expert > 0 && !info->moe.allowed)
    return make_error(Errc::unsupported, f.name() + ": experts in a '" + a + "' file are not supported");
  hp.arch = *info;
  for (auto step : {detail::read_sizes, detail::read_rope, detail::read_swa, detail::read_scales, detail::read_delta_net})
    if (auto st = step(f, a, hp); !st) return st.error();
  detail::build_layer_plan(hp);
  return hp;
}

// A loaded model: the mapped file, its hyper-parameters and its weights (pointers into the
// mapping; 1-D tensors such as norms and biases are converted to small float vectors).
// A Model is a handle: copies share one loaded file, and a Context or Session made from a
// Model holds a copy, so the weights stay mapped for as long as anything uses them.
class Model {
 public:
  static Expected<Model> open(const std::string& path, LoadMode mode = LoadMode::map) {
    auto f = GgufFile::open(path, mode);
    if (!f) return f.error();
    return from_gguf(std::move(*f));
  }
  static Expected<Model> from_gguf(GgufFile file);

  Model() = default;  // empty: assign the result of open() before use
  explicit operator bool() const { return s_ != nullptr; }

  const HParams& hparams() const { return s_->hp; }
  const ModelWeights& weights() const { return s_->w; }
  const GgufFile& gguf() const { return s_->file; }
  const std::string& name() const { return s_->file.name(); }
  // Total bytes of the weight tensors (for reports such as bench's "size" column).
  uint64_t weight_bytes() const {
    uint64_t n = 0;
    for (const auto& t : s_->file.tensors()) n += t.n_bytes;
    return n;
  }

 private:
  struct State {
    explicit State(GgufFile f) : file(std::move(f)) {}
    GgufFile file;
    HParams hp;
    ModelWeights w;
    Status bind();
  };
  std::shared_ptr<const State> s_;
};

namespace detail {

// "[a, b, c]" (built by appending: GCC 12 warns falsely on "[" + std::string temporaries).
inline std::string shape_text(std::initializer_list<int64_t> dims) {
  std::string s = "[";
  for (int64_t d : dims) {
    if (s.size() > 1) s += ", ";
    s += std::to_string(d);
  }
  s += "]";
  return s;
}

struct WeightBinder {
  const GgufFile& f;
  const std::string& arch;

  Error missing(const std::string& name) const {
    return make_error(Errc::not_found, f.name() + ": missing tensor '" + name +
                                           "' (needed by architecture '" + arch + "')");
  }
  Error bad_shape(const GgufTensorInfo& t, const std::string& want) const {
    return make_error(Errc::invalid_format, f.name() + ": tensor '" + std::string(t.name) +
                                                "' has shape " + t.shape_string() +
                                                ", expected " + want);
  }

  // A matrix with `cols` values per row and `rows` rows.
  Status matrix(const std::string& name, int64_t cols, int64_t rows, bool required, Weight* out) const {
    const GgufTensorInfo* t = f.find_tensor(name);
    if (!t) return required ? Status(missing(name)) : Status();
    if (t->n_dims != 2 || static_cast<int64_t>(t->ne[0]) != cols ||
        static_cast<int64_t>(t->ne[1]) != rows)
      return bad_shape(*t, shape_text({cols, rows}));
    if (!matmul_supports(t->type))
      return make_error(Errc::unsupported, f.name() + ": tensor '" + name + "' has type " +
                                               tensor_type_name(t->type) +
                                               ", which is not supported for matrices");
    *out = Weight{t->type, t->data, rows, cols, t->name};
    return {};
  }

  // A 1-D tensor of n values, converted to floats.
  Status vector(const std::string& name, int64_t n, bool required, std::vector<float>* out) const {
    const GgufTensorInfo* t = f.find_tensor(name);
    if (!t) return required ? Status(missing(name)) : Status();
    if (t->n_elements != static_cast<uint64_t>(n) || (t->n_dims != 1 && t->rows() != 1))
      return bad_shape(*t, shape_text({n}));
    out->resize(static_cast<size_t>(n));
    auto st = dequantize_row(t->type, t->data, out->data(), n);
    if (!st) return Error(st.error()).context(f.name() + ": tensor '" + name + "'");
    return {};
  }
};

// The expert tensors' binder: its own messages ("mixture-of-experts layer"), 1-D routers.
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
    if (!ok) return bad_shape(*t, shape_text({cols, rows}));
    if (auto st = check_type(*t, cols); !st) return st;
    *out = MatrixRef{t->type, t->data, rows, cols};
    return {};
  }

  Status experts(const std::string& name, int64_t cols, int64_t rows, int64_t n_expert, MoeExperts* out) const {
    const GgufTensorInfo* t = f.find_tensor(name);
    if (!t) return missing(name);
    if (t->n_dims != 3 || static_cast<int64_t>(t->ne[0]) != cols || static_cast<int64_t>(t->ne[1]) != rows ||
        static_cast<int64_t>(t->ne[2]) != n_expert)
      return bad_shape(*t, shape_text({cols, rows, n_expert}));
    if (auto st = check_type(*t, cols); !st) return st;
    uint64_t rb = 0;
    if (!tensor_row_bytes(t->type, static_cast<uint64_t>(cols), &rb) ||
        rb * static_cast<uint64_t>(rows) * static_cast<uint64_t>(n_expert) != t->n_bytes)
      return make_error(Errc::invalid_format, f.name() + ": tensor '" + name + "' has an inconsistent byte size");
    *out = MoeExperts{t->type, t->data, rows, cols, n_expert, rb};
    return {};
  }
};

inline std::string blk_name(int64_t il, const char* what) { return "blk." + std::to_string(il) + "." + what; }

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

namespace detail {

#define TINYSLM_BIND(call)     \
  do {                         \
    if (auto st_ = (call); !st_) return st_; \
  } while (0)

// Embeddings, output norm and head (tied to the embeddings when absent), RoPE factors.
inline Status bind_globals(const GgufFile& f, const WeightBinder& b, HParams& hp, ModelWeights& w) {
  const int64_t E = hp.n_embd;
  const GgufTensorInfo* te = f.find_tensor("token_embd.weight");
  if (!te) return b.missing("token_embd.weight");
  if (te->n_dims != 2 || static_cast<int64_t>(te->ne[0]) != E)
    return b.bad_shape(*te, std::string("[").append(std::to_string(E)).append(", n_vocab]"));
  hp.n_vocab = static_cast<int64_t>(te->ne[1]);
  TINYSLM_BIND(b.matrix("token_embd.weight", E, hp.n_vocab, true, &w.token_embd));
  TINYSLM_BIND(b.vector(hp.arch.output_norm_name, E, true, &w.output_norm));
  TINYSLM_BIND(b.matrix("output.weight", E, hp.n_vocab, false, &w.output));
  if (!w.output) {
    w.output = w.token_embd;
    w.tied_embeddings = true;
  }
  TINYSLM_BIND(b.vector("output.bias", hp.n_vocab, false, &w.output_bias));
  // Phi-3 LongRoPE stores per-layer long/short factor tables and an attention factor.
  if (f.find_tensor("rope_factors_long.weight") || f.find_tensor("blk.0.rope_factors_long.weight"))
    return make_error(Errc::unsupported, f.name() + ": LongRoPE (rope_factors_long/short) is not supported yet");
  // llama3-style RoPE frequency factors (one per rotated pair).
  TINYSLM_BIND(b.vector("rope_freqs.weight", hp.n_rot / 2, false, &hp.rope_freq_factors));
  return {};
}

// Norms, Q/K/V (or fused QKV), biases, QK-norm and output projection of one attention layer.
inline Status bind_attention(const GgufFile& f, const WeightBinder& b, const HParams& hp, int64_t il,
                             LayerWeights& L) {
  const LayerPlan& p = hp.layers[static_cast<size_t>(il)];
  const ArchInfo& ai = hp.arch;
  const int64_t E = hp.n_embd, Q = p.q_dim(), K = p.k_dim(), V = p.v_dim();
  TINYSLM_BIND(b.vector(blk_name(il, "attn_norm.weight"), E, true, &L.attn_norm));
  if (ai.fused_qkv && f.find_tensor(blk_name(il, "attn_qkv.weight"))) {
    TINYSLM_BIND(b.matrix(blk_name(il, "attn_qkv.weight"), E, Q + K + V, true, &L.wqkv));
  } else {
    TINYSLM_BIND(b.matrix(blk_name(il, "attn_q.weight"), E, p.attn_gate ? 2 * Q : Q, true, &L.wq));
    TINYSLM_BIND(b.matrix(blk_name(il, "attn_k.weight"), E, K, true, &L.wk));
    TINYSLM_BIND(b.matrix(blk_name(il, "attn_v.weight"), E, V, true, &L.wv));
  }
  TINYSLM_BIND(b.vector(blk_name(il, "attn_q.bias"), Q, ai.qkv_bias, &L.bq));
  TINYSLM_BIND(b.vector(blk_name(il, "attn_k.bias"), K, ai.qkv_bias, &L.bk));
  TINYSLM_BIND(b.vector(blk_name(il, "attn_v.bias"), V, ai.qkv_bias, &L.bv));
  const bool qkn = ai.qk_norm != QkNorm::none, whole = ai.qk_norm == QkNorm::whole;
  TINYSLM_BIND(b.vector(blk_name(il, "attn_q_norm.weight"), whole ? Q : p.head_dim_k, qkn, &L.q_norm));
  TINYSLM_BIND(b.vector(blk_name(il, "attn_k_norm.weight"), whole ? K : p.head_dim_k, qkn, &L.k_norm));
  TINYSLM_BIND(b.matrix(blk_name(il, "attn_output.weight"), p.attn_out_dim(), E, true, &L.wo));
  TINYSLM_BIND(b.vector(blk_name(il, "attn_output.bias"), E, false, &L.bo));
  if (std::string_view(ai.ffn_norm_name) != "post_attention_norm.weight")  // else it is the FFN's norm
    TINYSLM_BIND(b.vector(blk_name(il, "post_attention_norm.weight"), E, ai.post_norms, &L.post_attn_norm));
  return {};
}

// The norm, projections and kernel of a short-convolution layer; the kernel's shape must
// agree with shortconv.l_cache.
inline Status bind_short_conv(const GgufFile& f, const WeightBinder& b, const HParams& hp, int64_t il,
                              LayerWeights& L) {
  const int64_t E = hp.n_embd, K = hp.conv_kernel;
  TINYSLM_BIND(b.vector(blk_name(il, "attn_norm.weight"), E, true, &L.attn_norm));
  TINYSLM_BIND(b.matrix(blk_name(il, "shortconv.in_proj.weight"), E, 3 * E, true, &L.conv_in));
  TINYSLM_BIND(b.matrix(blk_name(il, "shortconv.out_proj.weight"), E, E, true, &L.conv_out));
  const std::string name = blk_name(il, "shortconv.conv.weight");
  const GgufTensorInfo* t = f.find_tensor(name);
  if (!t) return b.missing(name);
  if (t->n_dims != 2 || static_cast<int64_t>(t->ne[0]) != K || static_cast<int64_t>(t->ne[1]) != E)
    return make_error(Errc::invalid_format, f.name() + ": tensor '" + name + "' has shape " + t->shape_string() +
                                                ", expected " + shape_text({K, E}) + " (shortconv.l_cache " +
                                                std::to_string(K) + ", n_embd " + std::to_string(E) + ")");
  L.conv_kernel.resize(static_cast<size_t>(K * E));
  uint64_t rb = 0;
  if (!tensor_row_bytes(t->type, static_cast<uint64_t>(K), &rb) || rb * static_cast<uint64_t>(E) != t->n_bytes)
    return make_error(Errc::invalid_format, f.name() + ": tensor '" + name + "' has an unusable type or size");
  for (int64_t c = 0; c < E; ++c)
    if (auto st = dequantize_row(t->type, t->data + c * rb, L.conv_kernel.data() + c * K, K); !st)
      return Error(st.error()).context(f.name() + ": tensor '" + name + "'");
  return {};
}

// A small F32-converted tensor of exactly `rows` rows of `cols` values (a 1-D tensor when
// rows == 1), its expected shape named with the metadata keys it follows from.
inline Status small_tensor(const GgufFile& f, const std::string& name, int64_t cols, int64_t rows, const char* keys,
                           std::vector<float>* out) {
  const GgufTensorInfo* t = f.find_tensor(name);
  if (!t) return make_error(Errc::not_found, f.name() + ": missing tensor '" + name + "' (DeltaNet layer)");
  const bool shape_ok = static_cast<int64_t>(t->ne[0]) == cols &&
                        (rows == 1 ? t->n_elements == static_cast<uint64_t>(cols)
                                   : t->n_dims == 2 && static_cast<int64_t>(t->ne[1]) == rows);
  uint64_t rb = 0;
  if (!shape_ok || !tensor_row_bytes(t->type, static_cast<uint64_t>(cols), &rb) ||
      rb * static_cast<uint64_t>(rows) != t->n_bytes)
    return make_error(Errc::invalid_format, f.name() + ": tensor '" + name + "' has shape " + t->shape_string() +
                                                ", expected " + (rows == 1 ? shape_text({cols}) : shape_text({cols, rows})) +
                                                " (from " + keys + ")");
  out->resize(static_cast<size_t>(cols * rows));
  for (int64_t r = 0; r < rows; ++r)
    if (auto st = dequantize_row(t->type, t->data + r * rb, out->data() + r * cols, cols); !st)
      return Error(st.error()).context(f.name() + ": tensor '" + name + "'");
  return {};
}

// The tensors of a Gated DeltaNet layer; every shape must agree with the ssm.* keys (which
// size the per-sequence state).
inline Status bind_delta_net(const GgufFile& f, const WeightBinder& b, const HParams& hp, int64_t il,
                             LayerWeights& L) {
  const DeltaNetShape& s = hp.delta_net;
  const int64_t E = hp.n_embd, C = s.channels(), V = s.value_dim(), H = s.n_v_heads;
  TINYSLM_BIND(b.vector(blk_name(il, "attn_norm.weight"), E, true, &L.attn_norm));
  TINYSLM_BIND(b.matrix(blk_name(il, "attn_qkv.weight"), E, C, true, &L.ssm_qkv));
  TINYSLM_BIND(b.matrix(blk_name(il, "attn_gate.weight"), E, V, true, &L.ssm_gate));
  TINYSLM_BIND(b.matrix(blk_name(il, "ssm_beta.weight"), E, H, true, &L.ssm_beta));
  TINYSLM_BIND(b.matrix(blk_name(il, "ssm_alpha.weight"), E, H, true, &L.ssm_alpha));
  TINYSLM_BIND(b.matrix(blk_name(il, "ssm_out.weight"), V, E, true, &L.ssm_out));
  TINYSLM_BIND(small_tensor(f, blk_name(il, "ssm_conv1d.weight"), s.d_conv, C, "ssm.conv_kernel, ssm.state_size, "
               "ssm.group_count, ssm.time_step_rank", &L.ssm_conv));
  TINYSLM_BIND(small_tensor(f, blk_name(il, "ssm_dt.bias"), H, 1, "ssm.time_step_rank", &L.ssm_dt_bias));
  TINYSLM_BIND(small_tensor(f, blk_name(il, "ssm_a"), H, 1, "ssm.time_step_rank", &L.ssm_a));
  TINYSLM_BIND(small_tensor(f, blk_name(il, "ssm_norm.weight"), s.d_state, 1, "ssm.state_size", &L.ssm_norm));
  return {};
}

// The FFN norm and either the dense FFN or the router and experts of one layer.
inline Status bind_ffn(const GgufFile& f, const WeightBinder& b, HParams& hp, int64_t il, LayerWeights& L) {
  const LayerPlan& p = hp.layers[static_cast<size_t>(il)];
  const ArchInfo& ai = hp.arch;
  const int64_t E = hp.n_embd, F = p.n_ff;
  TINYSLM_BIND(b.vector(blk_name(il, ai.ffn_norm_name), E, true, &L.ffn_norm));
  const bool has_router = f.find_tensor(blk_name(il, "ffn_gate_inp.weight")) != nullptr;
  if (p.ffn == FfnKind::moe) {
    if (!has_router) return b.missing(blk_name(il, "ffn_gate_inp.weight"));
    if (!hp.moe.enabled()) {
      auto cfg = read_moe_config(f);
      if (!cfg) return cfg.error();
      hp.moe = *cfg;
    }
    auto lw = bind_moe_layer(f, hp.moe, il, E);
    if (!lw) return lw.error();
    L.experts = *lw;
    L.moe = true;
    // Post-FFN norms are not part of any MoE family's graph (none is bound, as before).
    return {};
  }
  if (has_router)
    return make_error(Errc::invalid_format, f.name() + ": layer " + std::to_string(il) +
                                                " has a router (ffn_gate_inp) but the file declares no experts");
  if (ai.fused_gate_up) {
    TINYSLM_BIND(b.matrix(blk_name(il, "ffn_up.weight"), E, 2 * F, true, &L.ffn_up));
  } else {
    TINYSLM_BIND(b.matrix(blk_name(il, "ffn_gate.weight"), E, F, true, &L.ffn_gate));
    TINYSLM_BIND(b.matrix(blk_name(il, "ffn_up.weight"), E, F, true, &L.ffn_up));
  }
  TINYSLM_BIND(b.matrix(blk_name(il, "ffn_down.weight"), F, E, true, &L.ffn_down));
  TINYSLM_BIND(b.vector(blk_name(il, "post_ffw_norm.weight"), E, ai.post_norms, &L.post_ffn_norm));
  return {};
}

}  // namespace detail

inline Expected<Model> Model::from_gguf(GgufFile file) {
  auto s = std::make_shared<State>(std::move(file));
  auto hp = read_hparams(s->file);
  if (!hp) return hp.error();
  s->hp = std::move(*hp);
  if (auto st = s->bind(); !st) return st.error();
  Model m;
  m.s_ = std::move(s);
  return m;
}

inline Status Model::State::bind() {
  detail::WeightBinder b{file, hp.arch_name};
  TINYSLM_BIND(detail::bind_globals(file, b, hp, w));
  w.layers.resize(static_cast<size_t>(hp.n_layer));
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    LayerWeights& L = w.layers[static_cast<size_t>(il)];
    if (hp.layers[static_cast<size_t>(il)].kind == LayerKind::short_conv)
      TINYSLM_BIND(detail::bind_short_conv(file, b, hp, il, L));
    else if (hp.layers[static_cast<size_t>(il)].kind == LayerKind::delta_net)
      TINYSLM_BIND(detail::bind_delta_net(file, b, hp, il, L));
    else
      TINYSLM_BIND(detail::bind_attention(file, b, hp, il, L));
    TINYSLM_BIND(detail::bind_ffn(file, b, hp, il, L));
  }
  return {};
}

#undef TINYSLM_BIND

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
