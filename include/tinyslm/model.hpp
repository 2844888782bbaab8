// tinyslm model: hyper-parameters from GGUF metadata, the table of per-architecture
// differences, and the weights bound to the mapped tensors.
//
// Every supported family is described by one plain struct (HParams) whose fields the forward
// pass branches on: norm kind, RoPE style, QK-norm, biases, post-norms, soft-capping, sliding
// window, embedding scale. There are no subclasses per architecture.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core.hpp"
#include "gguf.hpp"
#include "kernels.hpp"
#include "quant.hpp"

namespace tinyslm {
inline namespace v0 {

enum class RopeStyle : uint8_t {
  normal,  // rotate adjacent pairs (x[2i], x[2i+1]): llama
  neox,    // rotate halves (x[i], x[i + n_rot/2]): qwen, gemma, phi3
};

enum class FfnActivation : uint8_t {
  silu,       // SwiGLU: silu(gate) * up
  gelu_tanh,  // GeGLU with the tanh approximation of GELU (gemma family)
};

// What differs between families beyond what the metadata says. One row per architecture.
struct ArchInfo {
  const char* name;
  RopeStyle rope;
  FfnActivation activation;
  bool embed_scale;         // multiply token embeddings by sqrt(n_embd) (gemma)
  bool scale_q;             // apply the attention scale to Q before attention (gemma, phi3)
  bool qk_norm;             // RMS norm of Q and K before RoPE: per head (qwen3, gemma3) or over
                            // the whole projection (olmoe; told apart by the weight's length)
  bool post_norms;          // RMS norm on the attention and FFN outputs before the residual add
  bool fused_qkv;           // one attn_qkv matrix (phi3)
  bool fused_gate_up;       // ffn_up holds [gate; up] with 2*n_ff rows (phi3)
  int default_swa_period;   // every n-th layer is global, the others sliding (0 = no SWA)
  bool swa_needs_key;       // sliding only when attention.sliding_window is present
};

// The dense families this library runs. Mixture-of-experts files are recognised and refused
// with a clear message until the moe layer lands.
inline constexpr ArchInfo kArchTable[] = {
    //  name      rope              act                         emb    scq    qkn    post   fqkv   fgu    swa sk
    {"llama",  RopeStyle::normal, FfnActivation::silu,      false, false, false, false, false, false, 0, false},
    {"qwen2",  RopeStyle::neox,   FfnActivation::silu,      false, false, false, false, false, false, 0, false},
    {"qwen3",  RopeStyle::neox,   FfnActivation::silu,      false, false, true,  false, false, false, 0, false},
    {"gemma",  RopeStyle::neox,   FfnActivation::gelu_tanh, true,  true,  false, false, false, false, 0, false},
    {"gemma2", RopeStyle::neox,   FfnActivation::gelu_tanh, true,  true,  false, true,  false, false, 2, false},
    {"gemma3", RopeStyle::neox,   FfnActivation::gelu_tanh, true,  true,  true,  true,  false, false, 6, true},
    {"phi3",   RopeStyle::neox,   FfnActivation::silu,      false, true,  false, false, true,  true,  0, false},
    // Mixture-of-experts families: attention as their dense relatives, FFN in moe.hpp.
    {"qwen2moe", RopeStyle::neox, FfnActivation::silu,      false, false, false, false, false, false, 0, false},
    {"qwen3moe", RopeStyle::neox, FfnActivation::silu,      false, false, true,  false, false, false, 0, false},
    {"olmoe",  RopeStyle::neox,   FfnActivation::silu,      false, false, true,  false, false, false, 0, false},
};

inline const ArchInfo* find_arch(std::string_view name) {
  for (const auto& a : kArchTable)
    if (name == a.name) return &a;
  return nullptr;
}

// Mixture-of-experts families whose routing this library does not implement.
inline bool is_unsupported_moe_arch(std::string_view name) {
  return name == "deepseek" || name == "deepseek2" || name == "granitemoe" || name == "dbrx" ||
         name == "arctic" || name == "jamba" || name == "llama4" || name == "gpt-oss";
}

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

  int64_t n_expert = 0;              // > 0: MoE file; its FFN weights are bound by the forward
                                     // layer (moe.hpp, read_moe_config / bind_moe_layer)

  int64_t q_dim() const { return n_head * head_dim_k; }
  int64_t k_dim() const { return n_head_kv * head_dim_k; }
  int64_t v_dim() const { return n_head_kv * head_dim_v; }
  bool is_swa(int64_t layer) const { return !layer_swa.empty() && layer_swa[layer] != 0; }
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
};

// Per-layer weights. Absent optional tensors are empty Weights / empty vectors.
struct LayerWeights {
  std::vector<float> attn_norm;
  Weight wq, wk, wv, wqkv;                // wqkv when the family fuses them (phi3)
  std::vector<float> bq, bk, bv;          // qwen2 biases (optional elsewhere)
  std::vector<float> q_norm, k_norm;      // per-head RMS norm weights (qwen3, gemma3)
  Weight wo;
  std::vector<float> bo;
  std::vector<float> post_attn_norm;      // gemma2/3
  std::vector<float> ffn_norm;
  // Dense FFN. In an MoE layer (moe == true) these stay empty: the forward layer binds the
  // router and experts (moe.hpp) and runs the MoE step in this FFN's place.
  Weight ffn_gate, ffn_up, ffn_down;      // ffn_up holds [gate; up] when fused (phi3)
  bool moe = false;
  std::vector<float> post_ffn_norm;       // gemma2/3
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

}  // namespace detail

// Reads the hyper-parameters of a GGUF file; refuses MoE and unknown architectures.
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
    return make_error(Errc::unsupported, f.name() + ": unsupported architecture '" + a +
                                             "' (supported: llama, qwen2, qwen3, gemma, gemma2, "
                                             "gemma3, phi3, qwen2moe, qwen3moe, olmoe, mixtral as llama)");
  if (hp.n_expert > 0 && (a == "gemma" || a == "gemma2" || a == "gemma3" || a == "phi3" || a == "qwen2" || a == "qwen3"))
    return make_error(Errc::unsupported, f.name() + ": experts in a '" + a + "' file are not supported");
  hp.arch = *info;

#define TINYSLM_READ_INT(field, suffix, fallback)                 \
  do {                                                            \
    auto v_ = detail::arch_int(f, a, suffix, fallback);           \
    if (!v_) return v_.error();                                   \
    hp.field = *v_;                                               \
  } while (0)
#define TINYSLM_READ_FLOAT(field, suffix, fallback)               \
  do {                                                            \
    auto v_ = detail::arch_float(f, a, suffix, fallback);         \
    if (!v_) return v_.error();                                   \
    hp.field = *v_;                                               \
  } while (0)

  TINYSLM_READ_INT(n_embd, "embedding_length", -1);
  TINYSLM_READ_INT(n_layer, "block_count", -1);
  TINYSLM_READ_INT(n_ff, "feed_forward_length", -1);
  TINYSLM_READ_INT(n_head, "attention.head_count", -1);
  TINYSLM_READ_INT(n_head_kv, "attention.head_count_kv", hp.n_head);
  TINYSLM_READ_INT(n_ctx_train, "context_length", 2048);
  if (hp.n_embd <= 0 || hp.n_layer <= 0 || hp.n_head <= 0 || hp.n_head_kv <= 0 || hp.n_ff <= 0 ||
      hp.n_head % hp.n_head_kv != 0 || hp.n_embd > (1 << 20) || hp.n_layer > 4096 ||
      hp.n_head > 4096 || hp.n_ff > (1 << 22))
    return make_error(Errc::invalid_format,
                      f.name() + ": inconsistent hyper-parameters (n_embd " +
                          std::to_string(hp.n_embd) + ", n_layer " + std::to_string(hp.n_layer) +
                          ", n_head " + std::to_string(hp.n_head) + ", n_head_kv " +
                          std::to_string(hp.n_head_kv) + ", n_ff " + std::to_string(hp.n_ff) + ")");
  TINYSLM_READ_INT(head_dim_k, "attention.key_length", hp.n_embd / hp.n_head);
  TINYSLM_READ_INT(head_dim_v, "attention.value_length", hp.head_dim_k);
  TINYSLM_READ_INT(n_rot, "rope.dimension_count", hp.head_dim_k);
  if (hp.head_dim_k <= 0 || hp.head_dim_v <= 0 || hp.head_dim_k > 1024 || hp.head_dim_v > 1024 ||
      hp.n_rot <= 0 || hp.n_rot > hp.head_dim_k || hp.n_rot % 2 != 0)
    return make_error(Errc::invalid_format,
                      f.name() + ": bad head size (key " + std::to_string(hp.head_dim_k) +
                          ", value " + std::to_string(hp.head_dim_v) + ", rope dims " +
                          std::to_string(hp.n_rot) + ")");
  TINYSLM_READ_FLOAT(rms_eps, "attention.layer_norm_rms_epsilon", 1e-5f);
  TINYSLM_READ_FLOAT(rope_base, "rope.freq_base", 10000.0f);

  // RoPE scaling: linear (a frequency scale) is applied; other kinds are refused clearly.
  auto scaling = f.get_or<std::string>(a + ".rope.scaling.type", "none");
  if (!scaling) return scaling.error();
  float factor = 0.0f;
  {
    auto fa = detail::arch_float(f, a, "rope.scaling.factor", 0.0f);
    if (!fa) return fa.error();
    factor = *fa;
    if (factor == 0.0f) {
      auto lin = detail::arch_float(f, a, "rope.scale_linear", 0.0f);
      if (!lin) return lin.error();
      factor = *lin;
    }
  }
  if (*scaling == "yarn" || *scaling == "longrope")
    return make_error(Errc::unsupported,
                      f.name() + ": RoPE scaling '" + *scaling + "' is not supported yet");
  if (*scaling != "none" && *scaling != "linear" && *scaling != "llama3")
    return make_error(Errc::unsupported, f.name() + ": unknown RoPE scaling '" + *scaling + "'");
  hp.rope_freq_scale = (*scaling == "none" || factor == 0.0f) ? 1.0f : 1.0f / factor;
  if (*scaling == "llama3") hp.rope_freq_scale = 1.0f;  // llama3 scaling lives in rope_freqs

  // Sliding-window attention (gemma2: every other layer; gemma3: 5 of every 6 layers).
  hp.rope_base_swa = hp.rope_base;
  hp.rope_freq_scale_swa = hp.rope_freq_scale;
  const bool has_swa_key = f.contains(a + ".attention.sliding_window");
  if (info->default_swa_period > 0 && (has_swa_key || !info->swa_needs_key)) {
    TINYSLM_READ_INT(n_swa, "attention.sliding_window", 4096);
    int64_t period = info->default_swa_period;
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
    } else {
      if (pat) {
        auto p = detail::arch_int(f, a, "attention.sliding_window_pattern", period);
        if (!p) return p.error();
        period = *p;
      } else {
        period = info->default_swa_period;
      }
      // Layer il is global when il % period == period - 1 (period 0: all sliding).
      for (int64_t il = 0; il < hp.n_layer; ++il)
        hp.layer_swa[static_cast<size_t>(il)] = period == 0 || (il % period < period - 1);
    }
    if (hp.n_swa <= 0) hp.layer_swa.clear();
    if (hp.arch_name == "gemma3") {
      hp.rope_base_swa = 10000.0f;  // gemma3's local layers keep the original base
      hp.rope_freq_scale_swa = 1.0f;
    }
    TINYSLM_READ_FLOAT(rope_base_swa, "rope.freq_base_swa", hp.rope_base_swa);
  }

  TINYSLM_READ_FLOAT(attn_softcap, "attn_logit_softcapping", 0.0f);
  TINYSLM_READ_FLOAT(final_softcap, "final_logit_softcapping", 0.0f);
  if (hp.arch_name == "gemma2") {
    if (!f.contains(a + ".attn_logit_softcapping")) hp.attn_softcap = 50.0f;
    if (!f.contains(a + ".final_logit_softcapping")) hp.final_softcap = 30.0f;
  } else {
    hp.attn_softcap = 0.0f;  // only gemma2 caps attention scores
  }
#undef TINYSLM_READ_INT
#undef TINYSLM_READ_FLOAT

  // Attention scale: 1/sqrt(head size); the 27B gemma2/3 use 1/sqrt(n_embd / n_head).
  const bool gemma_27b = (a == "gemma2" && hp.n_layer == 46) || (a == "gemma3" && hp.n_layer == 62);
  hp.attn_scale = gemma_27b ? 1.0f / std::sqrt(static_cast<float>(hp.n_embd / hp.n_head))
                            : 1.0f / std::sqrt(static_cast<float>(hp.head_dim_k));
  hp.embed_scale = info->embed_scale ? std::sqrt(static_cast<float>(hp.n_embd)) : 1.0f;
  return hp;
}

// A loaded model: the mapped file, its hyper-parameters and its weights (pointers into the
// mapping; 1-D tensors such as norms and biases are converted to small float vectors).
class Model {
 public:
  static Expected<Model> open(const std::string& path, LoadMode mode = LoadMode::map) {
    auto f = GgufFile::open(path, mode);
    if (!f) return f.error();
    return from_gguf(std::move(*f));
  }
  static Expected<Model> from_gguf(GgufFile file);

  Model(Model&&) = default;
  Model& operator=(Model&&) = default;

  const HParams& hparams() const { return hp_; }
  const ModelWeights& weights() const { return w_; }
  const GgufFile& gguf() const { return file_; }
  const std::string& name() const { return file_.name(); }
  // Total bytes of the weight tensors (for reports such as bench's "size" column).
  uint64_t weight_bytes() const {
    uint64_t n = 0;
    for (const auto& t : file_.tensors()) n += t.n_bytes;
    return n;
  }

 private:
  explicit Model(GgufFile file) : file_(std::move(file)) {}
  Status bind();

  GgufFile file_;
  HParams hp_;
  ModelWeights w_;
};

namespace detail {

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
    std::string want = "[";  // built by appending: GCC 12 warns falsely (-Wrestrict) on "lit" + string&&
    want.append(std::to_string(cols)).append(", ").append(std::to_string(rows)).append("]");
    if (t->n_dims != 2 || static_cast<int64_t>(t->ne[0]) != cols ||
        static_cast<int64_t>(t->ne[1]) != rows)
      return bad_shape(*t, want);
    if (!matmul_supports(t->type))
      return make_error(Errc::unsupported, f.name() + ": tensor '" + name + "' has type " +
                                               tensor_type_name(t->type) +
                                               ", which is not supported for matrices");
    out->type = t->type;
    out->data = t->data;
    out->rows = rows;
    out->cols = cols;
    out->name = t->name;
    return {};
  }

  // A 1-D tensor of n values, converted to floats.
  Status vector(const std::string& name, int64_t n, bool required, std::vector<float>* out) const {
    const GgufTensorInfo* t = f.find_tensor(name);
    if (!t) return required ? Status(missing(name)) : Status();
    if (t->n_elements != static_cast<uint64_t>(n) || (t->n_dims != 1 && t->rows() != 1))
      return bad_shape(*t, std::string("[").append(std::to_string(n)).append("]"));
    out->resize(static_cast<size_t>(n));
    auto st = dequantize_row(t->type, t->data, out->data(), n);
    if (!st) return Error(st.error()).context(f.name() + ": tensor '" + name + "'");
    return {};
  }
};

}  // namespace detail

inline Expected<Model> Model::from_gguf(GgufFile file) {
  Model m(std::move(file));
  auto hp = read_hparams(m.file_);
  if (!hp) return hp.error();
  m.hp_ = std::move(*hp);
  auto st = m.bind();
  if (!st) return st.error();
  return m;
}

inline Status Model::bind() {
  const GgufFile& f = file_;
  HParams& hp = hp_;
  detail::WeightBinder b{f, hp.arch_name};
  auto blk = [](int64_t il, const char* what) {
    return "blk." + std::to_string(il) + "." + what;
  };
  const int64_t E = hp.n_embd;

  // Token embeddings: their row count is the vocabulary size.
  const GgufTensorInfo* te = f.find_tensor("token_embd.weight");
  if (!te) return b.missing("token_embd.weight");
  if (te->n_dims != 2 || static_cast<int64_t>(te->ne[0]) != E)
    return b.bad_shape(*te, "[" + std::to_string(E) + ", n_vocab]");
  hp.n_vocab = static_cast<int64_t>(te->ne[1]);
  if (auto st = b.matrix("token_embd.weight", E, hp.n_vocab, true, &w_.token_embd); !st) return st;

  if (auto st = b.vector("output_norm.weight", E, true, &w_.output_norm); !st) return st;
  if (auto st = b.matrix("output.weight", E, hp.n_vocab, false, &w_.output); !st) return st;
  if (!w_.output) {
    w_.output = w_.token_embd;
    w_.tied_embeddings = true;
  }
  if (auto st = b.vector("output.bias", hp.n_vocab, false, &w_.output_bias); !st) return st;

  // Phi-3 LongRoPE stores per-layer long/short factor tables and an attention factor.
  if (f.find_tensor("rope_factors_long.weight") || f.find_tensor("blk.0.rope_factors_long.weight"))
    return make_error(Errc::unsupported, f.name() + ": LongRoPE (rope_factors_long/short) is not supported yet");

  // llama3-style RoPE frequency factors (one per rotated pair).
  if (auto st = b.vector("rope_freqs.weight", hp.n_rot / 2, false, &hp.rope_freq_factors); !st)
    return st;

  const int64_t Q = hp.q_dim(), K = hp.k_dim(), V = hp.v_dim(), F = hp.n_ff;
  const ArchInfo& ai = hp.arch;
  w_.layers.resize(static_cast<size_t>(hp.n_layer));
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    LayerWeights& L = w_.layers[static_cast<size_t>(il)];
    Status st;
#define TINYSLM_BIND(call) \
  if (st = (call); !st) return st
    TINYSLM_BIND(b.vector(blk(il, "attn_norm.weight"), E, true, &L.attn_norm));
    if (ai.fused_qkv && f.find_tensor(blk(il, "attn_qkv.weight"))) {
      TINYSLM_BIND(b.matrix(blk(il, "attn_qkv.weight"), E, Q + K + V, true, &L.wqkv));
    } else {
      TINYSLM_BIND(b.matrix(blk(il, "attn_q.weight"), E, Q, true, &L.wq));
      TINYSLM_BIND(b.matrix(blk(il, "attn_k.weight"), E, K, true, &L.wk));
      TINYSLM_BIND(b.matrix(blk(il, "attn_v.weight"), E, V, true, &L.wv));
    }
    const bool need_bias = hp.arch_name == "qwen2" || hp.arch_name == "qwen2moe";
    TINYSLM_BIND(b.vector(blk(il, "attn_q.bias"), Q, need_bias, &L.bq));
    TINYSLM_BIND(b.vector(blk(il, "attn_k.bias"), K, need_bias, &L.bk));
    TINYSLM_BIND(b.vector(blk(il, "attn_v.bias"), V, need_bias, &L.bv));
    const bool whole = hp.arch_name == "olmoe";  // norm over the whole projection
    TINYSLM_BIND(b.vector(blk(il, "attn_q_norm.weight"), whole ? Q : hp.head_dim_k, ai.qk_norm, &L.q_norm));
    TINYSLM_BIND(b.vector(blk(il, "attn_k_norm.weight"), whole ? K : hp.head_dim_k, ai.qk_norm, &L.k_norm));
    TINYSLM_BIND(b.matrix(blk(il, "attn_output.weight"), hp.n_head * hp.head_dim_v, E, true, &L.wo));
    TINYSLM_BIND(b.vector(blk(il, "attn_output.bias"), E, false, &L.bo));
    TINYSLM_BIND(b.vector(blk(il, "post_attention_norm.weight"), E, ai.post_norms, &L.post_attn_norm));
    TINYSLM_BIND(b.vector(blk(il, "ffn_norm.weight"), E, true, &L.ffn_norm));
    if (hp.n_expert > 0) {
      // The experts (ffn_*_exps, router, shared expert) are bound by the forward layer.
      if (!f.find_tensor(blk(il, "ffn_gate_inp.weight"))) return b.missing(blk(il, "ffn_gate_inp.weight"));
      L.moe = true;
      continue;
    }
    if (f.find_tensor(blk(il, "ffn_gate_inp.weight")))
      return make_error(Errc::invalid_format, f.name() + ": layer " + std::to_string(il) +
                                                  " has a router (ffn_gate_inp) but the file declares no experts");
    if (ai.fused_gate_up) {
      TINYSLM_BIND(b.matrix(blk(il, "ffn_up.weight"), E, 2 * F, true, &L.ffn_up));
    } else {
      TINYSLM_BIND(b.matrix(blk(il, "ffn_gate.weight"), E, F, true, &L.ffn_gate));
      TINYSLM_BIND(b.matrix(blk(il, "ffn_up.weight"), E, F, true, &L.ffn_up));
    }
    TINYSLM_BIND(b.matrix(blk(il, "ffn_down.weight"), F, E, true, &L.ffn_down));
    TINYSLM_BIND(b.vector(blk(il, "post_ffw_norm.weight"), E, ai.post_norms, &L.post_ffn_norm));
#undef TINYSLM_BIND
  }
  return {};
}

}  // namespace v0
}  // namespace tinyslm
