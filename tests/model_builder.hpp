// Random-weight GGUF models of every architecture the library runs, written with GgufWriter:
// tiny ones for the tests (tiny_spec) and real shapes for examples/mkmodel.cpp.
//
// Weights are uniform with the variance of N(0, gain^2 / cols), seeded per tensor from its
// name (splitmix64), and generated and quantized while the file is written (GgufWriter's
// generated tensors), so a large model never sits in memory whole. Metadata keys and tensor
// names follow llama.cpp's converters, as model.hpp (read_hparams, Model::bind) and moe.hpp
// (read_moe_config, bind_moe_layer) read them. Keys and tensors are written in one fixed
// order: mkmodel's files are byte-for-byte what it wrote before it used this builder.
//
// No doctest here: examples/mkmodel.cpp includes this header.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "tinyslm.hpp"

namespace tinyslm_test {

using namespace tinyslm;

using tinyslm::QkNorm;  // RMSNorm of q and k: none, per head, whole projection (the library's enum)

// Where a matrix sits, for choosing its block type.
struct TensorRole {
  const std::string& role;  // "attn_q", "ffn_down", "output", "token_embd", ...
  int64_t layer;            // 0 for tensors outside the blocks
  int64_t cols;             // values per row
  bool is_output;           // the output head (or the tied embeddings that serve as one)
};

struct ModelSpec {
  std::string arch = "llama";
  int64_t n_embd = 256, n_layer = 2, n_head = 4, n_head_kv = 2, n_ff = 256, n_vocab = 128, n_ctx = 256;
  int64_t head_dim = 0;  // 0: n_embd / n_head, and no key_length / value_length keys
  float rope_base = 10000.0f, rms_eps = 1e-5f;
  bool tied = true;
  bool qkv_bias = false;     // attn_{q,k,v}.bias (qwen2, qwen2moe)
  bool llama3_rope = false;  // rope_freqs.weight with Llama 3's divisors
  QkNorm qk_norm = QkNorm::none;
  bool post_norms = false;   // post_attention_norm / post_ffw_norm (gemma2, gemma3)
  bool fused_qkv = false;    // attn_qkv (phi3)
  bool fused_gate_up = false;  // ffn_up holds [gate; up] (phi3)
  int64_t sliding_window = 0;  // > 0: <arch>.attention.sliding_window
  int64_t swa_pattern = 0;     // > 0: <arch>.attention.sliding_window_pattern
  float attn_softcap = 0.0f, final_softcap = 0.0f;  // > 0: written as keys
  // Mixture of experts (n_expert 0: dense). n_ff is then each expert's width.
  int64_t n_expert = 0, n_expert_used = 0;
  int64_t shared_ff = 0;     // > 0: a shared expert of this width, gated (qwen2moe)
  bool vocab = false;        // a SentencePiece-style vocabulary of n_vocab tokens
  // Hybrid (lfm2): head_count_kv per layer, 0 = a short-convolution layer of width conv_kernel.
  std::vector<int64_t> layer_head_kv;
  int64_t conv_kernel = 3;
  int64_t conv_kernel_key = 0;  // > 0: written as shortconv.l_cache instead (bad-input tests)
  std::string omit_tensor;      // a tensor not written (bad-input tests)
  // qwen35: Gated DeltaNet layers (head size dn_state, dn_k_heads / dn_v_heads, conv width
  // dn_conv) with a gated attention layer every full_attn_interval; rope_dims partial RoPE.
  int64_t dn_state = 0, dn_k_heads = 0, dn_v_heads = 0, dn_conv = 4, full_attn_interval = 4;
  int64_t rope_dims = 0;  // 0: the head size
  std::vector<int32_t> rope_sections;
  uint64_t seed = 42;
  TensorType type = TensorType::F16;  // every matrix, unless `pick` says otherwise
  std::function<TensorType(const TensorRole&)> pick;
  std::function<void(GgufWriter&)> general_meta;  // general.* keys after general.architecture

  int64_t head_size() const { return head_dim > 0 ? head_dim : n_embd / n_head; }
};

// One step of splitmix64 (small, fast, seeded, the same values on every platform); the tests'
// random data come from it.
inline uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

struct SplitMix {
  uint64_t s;
  uint64_t next() { return splitmix64(s); }
  // uniform in [-1, 1)
  float uniform() { return static_cast<float>(static_cast<int64_t>(next() >> 40) - (1 << 23)) * (1.0f / (1 << 23)); }
};

inline uint64_t hash_name(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// The type real downloads use when rows are not a whole number of `t`'s blocks.
inline TensorType fallback_type(TensorType t, int64_t cols) {
  const auto& info = tensor_type_info(t);
  if (cols % info.block_size == 0) return t;
  switch (t) {
    case TensorType::Q4_K: return cols % 32 == 0 ? TensorType::Q5_0 : TensorType::F16;
    case TensorType::Q5_K: return cols % 32 == 0 ? TensorType::Q5_1 : TensorType::F16;
    case TensorType::Q6_K: return cols % 32 == 0 ? TensorType::Q8_0 : TensorType::F16;
    default: return TensorType::F16;
  }
}

namespace detail {

class ModelWriter {
 public:
  ModelWriter(const ModelSpec& s, GgufWriter& w) : s_(s), w_(w) {}

  Status write() {
    write_hparams();
    if (s_.vocab) write_vocab();
    return write_tensors();
  }

 private:
  const ModelSpec& s_;
  GgufWriter& w_;
  Status st_;

  void u32(const std::string& suffix, int64_t v) { w_.set_u32(s_.arch + "." + suffix, static_cast<uint32_t>(v)); }

  void write_hparams() {
    const std::string& A = s_.arch;
    w_.set_string("general.architecture", A);
    if (s_.general_meta) s_.general_meta(w_);
    u32("context_length", s_.n_ctx);
    u32("embedding_length", s_.n_embd);
    u32("block_count", s_.n_layer);
    u32("feed_forward_length", s_.n_ff);
    u32("attention.head_count", s_.n_head);
    if (s_.layer_head_kv.empty()) {
      u32("attention.head_count_kv", s_.n_head_kv);
    } else {
      std::vector<int32_t> kv(s_.layer_head_kv.begin(), s_.layer_head_kv.end());
      w_.set_array<int32_t>(A + ".attention.head_count_kv", GgufValueType::i32, kv);
      u32("shortconv.l_cache", s_.conv_kernel_key > 0 ? s_.conv_kernel_key : s_.conv_kernel);
    }
    u32("rope.dimension_count", s_.rope_dims > 0 ? s_.rope_dims : s_.head_size());
    if (s_.dn_state > 0) {
      u32("ssm.conv_kernel", s_.dn_conv);
      u32("ssm.state_size", s_.dn_state);
      u32("ssm.group_count", s_.dn_k_heads);
      u32("ssm.time_step_rank", s_.dn_v_heads);
      u32("ssm.inner_size", s_.dn_v_heads * s_.dn_state);
      u32("full_attention_interval", s_.full_attn_interval);
      w_.set_array<int32_t>(A + ".rope.dimension_sections", GgufValueType::i32, s_.rope_sections);
    }
    w_.set_f32(A + ".rope.freq_base", s_.rope_base);
    w_.set_f32(A + ".attention.layer_norm_rms_epsilon", s_.rms_eps);
    u32("vocab_size", s_.n_vocab);
    if (s_.n_expert > 0) {
      u32("expert_count", s_.n_expert);
      u32("expert_used_count", s_.n_expert_used);
      if (A == "qwen3moe" || A == "qwen2moe") u32("expert_feed_forward_length", s_.n_ff);
      if (s_.shared_ff > 0) u32("expert_shared_feed_forward_length", s_.shared_ff);
    }
    if (s_.head_dim > 0) {
      u32("attention.key_length", s_.head_dim);
      u32("attention.value_length", s_.head_dim);
    }
    if (s_.sliding_window > 0) u32("attention.sliding_window", s_.sliding_window);
    if (s_.swa_pattern > 0) u32("attention.sliding_window_pattern", s_.swa_pattern);
    if (s_.attn_softcap > 0) w_.set_f32(A + ".attn_logit_softcapping", s_.attn_softcap);
    if (s_.final_softcap > 0) w_.set_f32(A + ".final_logit_softcapping", s_.final_softcap);
  }

  // Minimal SentencePiece vocabulary: <unk> <s> </s>, the 256 byte tokens, then filler pieces.
  void write_vocab() {
    std::vector<std::string> tokens;
    std::vector<float> scores;
    std::vector<int32_t> types;
    tokens.reserve(static_cast<size_t>(s_.n_vocab));
    const char* specials[3] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; ++i) {
      tokens.emplace_back(specials[i]);
      scores.push_back(0.0f);
      types.push_back(i == 0 ? 2 : 3);
    }
    for (int b = 0; b < 256 && static_cast<int64_t>(tokens.size()) < s_.n_vocab; ++b) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "<0x%02X>", b);
      tokens.emplace_back(buf);
      scores.push_back(0.0f);
      types.push_back(6);
    }
    for (int64_t i = static_cast<int64_t>(tokens.size()); i < s_.n_vocab; ++i) {
      std::string piece = "\xE2\x96\x81t";  // SentencePiece's word-start mark, then a name
      piece += std::to_string(i);
      tokens.push_back(std::move(piece));
      scores.push_back(-static_cast<float>(i));
      types.push_back(1);
    }
    w_.set_string("tokenizer.ggml.model", "llama");
    w_.set_array_strings("tokenizer.ggml.tokens", tokens);
    w_.set_array<float>("tokenizer.ggml.scores", GgufValueType::f32, scores);
    w_.set_array<int32_t>("tokenizer.ggml.token_type", GgufValueType::i32, types);
    w_.set_u32("tokenizer.ggml.unknown_token_id", 0);
    w_.set_u32("tokenizer.ggml.bos_token_id", 1);
    w_.set_u32("tokenizer.ggml.eos_token_id", 2);
    w_.set_bool("tokenizer.ggml.add_bos_token", true);
  }

  TensorType pick(const std::string& role, int64_t layer, int64_t cols, bool is_output) const {
    if (s_.pick) return s_.pick(TensorRole{role, layer, cols, is_output});
    return fallback_type(s_.type, cols);
  }

  // A matrix of `rows` x `cols` (n_mat > 0: a stack of n_mat of them, the experts'
  // [cols, rows, n_mat] layout). The first error is kept; later calls do nothing.
  void matrix(const std::string& name, int64_t cols, int64_t rows, TensorType t, float gain, int64_t n_mat = 0) {
    if (!st_ || name == s_.omit_tensor) return;
    const uint64_t shape[3] = {static_cast<uint64_t>(cols), static_cast<uint64_t>(rows), static_cast<uint64_t>(n_mat)};
    const uint64_t h = hash_name(name, s_.seed);
    const float amp = gain * std::sqrt(3.0f / static_cast<float>(cols));
    const int64_t all_rows = rows * std::max<int64_t>(1, n_mat);
    st_ = w_.add_tensor_generated(name, t, std::span<const uint64_t>(shape, n_mat > 0 ? 3 : 2),
                                  [=](uint8_t* dst, size_t bytes) {
                                    const size_t row_bytes = bytes / static_cast<size_t>(all_rows);
                                    std::vector<float> row(static_cast<size_t>(cols));
                                    SplitMix rng{h};
                                    for (int64_t r = 0; r < all_rows; ++r) {
                                      for (auto& v : row) v = amp * rng.uniform();
                                      (void)quantize_row(t, row.data(), dst + static_cast<size_t>(r) * row_bytes, cols);
                                    }
                                  });
  }
  void vector(const std::string& name, int64_t n, float center, float spread) {
    if (!st_ || name == s_.omit_tensor) return;
    std::vector<float> v(static_cast<size_t>(n));
    SplitMix rng{hash_name(name, s_.seed)};
    for (auto& x : v) x = center + spread * rng.uniform();
    const uint64_t shape[1] = {static_cast<uint64_t>(n)};
    st_ = w_.add_tensor(name, TensorType::F32, shape, v.data(), v.size() * 4);
  }

  // Llama 3's per-pair frequency divisors (factor 32, low 1, high 4, original context 8192).
  void llama3_rope_freqs() {
    const int64_t hd = s_.head_size();
    std::vector<float> ff(static_cast<size_t>(hd / 2));
    for (int64_t i = 0; i < hd / 2; ++i) {
      const double freq = std::pow(s_.rope_base, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
      const double wavelen = 2 * M_PI / freq, lo = 8192.0 / 1.0, hi = 8192.0 / 4.0;
      double f = 1.0;
      if (wavelen > lo) f = 32.0;
      else if (wavelen >= hi) {
        const double smooth = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
        f = 1.0 / ((1 - smooth) / 32.0 + smooth);
      }
      ff[static_cast<size_t>(i)] = static_cast<float>(f);
    }
    const uint64_t shape[1] = {static_cast<uint64_t>(hd / 2)};
    if (st_) st_ = w_.add_tensor("rope_freqs.weight", TensorType::F32, shape, ff.data(), ff.size() * 4);
  }

  void attention(const std::string& p, int64_t il) {
    const int64_t E = s_.n_embd, hd = s_.head_size(), Q = s_.n_head * hd, K = s_.n_head_kv * hd;
    vector(p + "attn_norm.weight", E, 1.0f, 0.1f);
    if (s_.fused_qkv) {
      matrix(p + "attn_qkv.weight", E, Q + 2 * K, pick("attn_qkv", il, E, false), 1.0f);
    } else {
      matrix(p + "attn_q.weight", E, s_.dn_state > 0 ? 2 * Q : Q, pick("attn_q", il, E, false), 1.0f);
      matrix(p + "attn_k.weight", E, K, pick("attn_k", il, E, false), 1.0f);
      matrix(p + "attn_v.weight", E, K, pick("attn_v", il, E, false), 1.0f);
    }
    if (s_.qkv_bias) {
      vector(p + "attn_q.bias", Q, 0.0f, 0.1f);
      vector(p + "attn_k.bias", K, 0.0f, 0.1f);
      vector(p + "attn_v.bias", K, 0.0f, 0.1f);
    }
    if (s_.qk_norm != QkNorm::none) {
      const bool whole = s_.qk_norm == QkNorm::whole;
      vector(p + "attn_q_norm.weight", whole ? Q : hd, 1.0f, 0.1f);
      vector(p + "attn_k_norm.weight", whole ? K : hd, 1.0f, 0.1f);
    }
    matrix(p + "attn_output.weight", Q, E, pick("attn_output", il, Q, false), 1.0f);
    if (s_.post_norms) vector(p + "post_attention_norm.weight", E, 1.0f, 0.1f);
  }

  // lfm2's short convolution: in_proj to [b | c | x], the F32 kernel [n_embd][L], out_proj.
  void short_conv(const std::string& p, int64_t il) {
    const int64_t E = s_.n_embd, L = s_.conv_kernel;
    vector(p + "attn_norm.weight", E, 1.0f, 0.1f);
    matrix(p + "shortconv.in_proj.weight", E, 3 * E, pick("shortconv_in", il, E, false), 1.0f);
    matrix(p + "shortconv.conv.weight", L, E, TensorType::F32, 1.0f);
    matrix(p + "shortconv.out_proj.weight", E, E, pick("shortconv_out", il, E, false), 1.0f);
  }

  // qwen35's Gated DeltaNet: [q | k | v] mix, z gate, beta and alpha rows, the F32 conv kernel
  // [channels][L], dt bias, A < 0, the gated norm, ssm_out.
  void delta_net(const std::string& p, int64_t il) {
    const int64_t E = s_.n_embd, d = s_.dn_state, H = s_.dn_v_heads, V = H * d, C = 2 * s_.dn_k_heads * d + V;
    vector(p + "attn_norm.weight", E, 1.0f, 0.1f);
    matrix(p + "attn_qkv.weight", E, C, pick("attn_qkv", il, E, false), 1.0f);
    matrix(p + "attn_gate.weight", E, V, pick("attn_gate", il, E, false), 1.0f);
    matrix(p + "ssm_beta.weight", E, H, pick("ssm_beta", il, E, false), 1.0f);
    matrix(p + "ssm_alpha.weight", E, H, pick("ssm_alpha", il, E, false), 1.0f);
    matrix(p + "ssm_conv1d.weight", s_.dn_conv, C, TensorType::F32, 1.0f);
    vector(p + "ssm_dt.bias", H, 0.0f, 0.5f);
    vector(p + "ssm_a", H, -1.0f, 0.5f);
    vector(p + "ssm_norm.weight", d, 1.0f, 0.1f);
    matrix(p + "ssm_out.weight", V, E, pick("ssm_out", il, V, false), 1.0f);
  }

  void ffn(const std::string& p, int64_t il) {
    const int64_t E = s_.n_embd, F = s_.n_ff;
    vector(p + (s_.dn_state > 0 ? "post_attention_norm.weight" : "ffn_norm.weight"), E, 1.0f, 0.1f);
    if (s_.n_expert > 0) {
      // The router stays F32 (as llama-quantize keeps it); a larger gain spreads its logits so
      // the top-k is not uniform.
      matrix(p + "ffn_gate_inp.weight", E, s_.n_expert, TensorType::F32, 4.0f);
      matrix(p + "ffn_gate_exps.weight", E, F, pick("ffn_gate", il, E, false), 1.0f, s_.n_expert);
      matrix(p + "ffn_up_exps.weight", E, F, pick("ffn_up", il, E, false), 1.0f, s_.n_expert);
      matrix(p + "ffn_down_exps.weight", F, E, pick("ffn_down", il, F, false), 1.0f, s_.n_expert);
      if (s_.shared_ff > 0) {
        const int64_t S = s_.shared_ff;
        vector(p + "ffn_gate_inp_shexp.weight", E, 0.0f, 0.5f);
        matrix(p + "ffn_gate_shexp.weight", E, S, pick("ffn_gate", il, E, false), 1.0f);
        matrix(p + "ffn_up_shexp.weight", E, S, pick("ffn_up", il, E, false), 1.0f);
        matrix(p + "ffn_down_shexp.weight", S, E, pick("ffn_down", il, S, false), 1.0f);
      }
      return;
    }
    if (s_.fused_gate_up) {
      matrix(p + "ffn_up.weight", E, 2 * F, pick("ffn_up", il, E, false), 1.0f);
    } else {
      matrix(p + "ffn_gate.weight", E, F, pick("ffn_gate", il, E, false), 1.0f);
      matrix(p + "ffn_up.weight", E, F, pick("ffn_up", il, E, false), 1.0f);
    }
    matrix(p + "ffn_down.weight", F, E, pick("ffn_down", il, F, false), 1.0f);
    if (s_.post_norms) vector(p + "post_ffw_norm.weight", E, 1.0f, 0.1f);
  }

  Status write_tensors() {
    const int64_t E = s_.n_embd;
    matrix("token_embd.weight", E, s_.n_vocab, pick("token_embd", 0, E, s_.tied), 1.0f);
    vector(s_.arch == "lfm2" ? "token_embd_norm.weight" : "output_norm.weight", E, 1.0f, 0.1f);
    if (!s_.tied) matrix("output.weight", E, s_.n_vocab, pick("output", 0, E, true), 3.0f);
    if (s_.llama3_rope) llama3_rope_freqs();
    for (int64_t il = 0; il < s_.n_layer && st_; ++il) {
      const std::string p = "blk." + std::to_string(il) + ".";
      const bool conv = !s_.layer_head_kv.empty() && s_.layer_head_kv[static_cast<size_t>(il)] == 0;
      const bool dn = s_.dn_state > 0 && (il + 1) % s_.full_attn_interval != 0;
      if (conv) short_conv(p, il);
      else if (dn) delta_net(p, il);
      else attention(p, il);
      ffn(p, il);
    }
    return st_;
  }
};

}  // namespace detail

// Adds the spec's metadata and tensors to `w` (tensors are generated when `w` writes).
inline Status build_model(const ModelSpec& spec, GgufWriter& w) { return detail::ModelWriter(spec, w).write(); }

// The whole file in memory (empty when the spec is invalid).
inline std::vector<uint8_t> model_bytes(const ModelSpec& spec) {
  GgufWriter w;
  if (!build_model(spec, w)) return {};
  return w.to_bytes();
}

// A model over `bytes`, which must outlive it.
inline Expected<Model> load_model(const std::vector<uint8_t>& bytes, const std::string& name = "tiny.gguf") {
  auto f = GgufFile::from_memory(bytes.data(), bytes.size(), name);
  if (!f) return f.error();
  return Model::from_gguf(std::move(*f));
}

// Every architecture the library runs, as the tiny test models below name them.
inline const std::vector<std::string>& tiny_archs() {
  static const std::vector<std::string> names = {"llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3",
                                                 "phi3", "qwen2moe", "qwen3moe", "olmoe", "mixtral",
                                                 "smollm3", "lfm2", "qwen35"};
  return names;
}

// A tiny model of one family with each of its distinguishing features switched on. Widths are
// multiples of 256 so every block type (K-quants included) fits every matrix; the sliding
// window (4) is shorter than the tests' sequences so it really cuts.
inline ModelSpec tiny_spec(const std::string& family, TensorType type, uint64_t seed = 7) {
  ModelSpec s;
  s.arch = family;
  s.type = type;
  s.seed = seed;
  s.rms_eps = 1e-6f;
  s.rope_base = 10000.0f;
  if (family == "llama") {
    s.tied = false;
    s.llama3_rope = true;
    s.rope_base = 500000.0f;
  } else if (family == "qwen2") {
    s.qkv_bias = true;
  } else if (family == "qwen3") {
    s.qk_norm = QkNorm::per_head;
    s.tied = false;
  } else if (family == "gemma") {
    s.n_head_kv = 1;
  } else if (family == "gemma2") {
    s.post_norms = true;
    s.sliding_window = 4;
    s.head_dim = 128;  // n_head * head_dim != n_embd, as in the real gemma2 files
  } else if (family == "gemma3") {
    s.qk_norm = QkNorm::per_head;
    s.post_norms = true;
    s.sliding_window = 4;
    s.swa_pattern = 2;  // layer 0 sliding, layer 1 global
  } else if (family == "phi3") {
    s.fused_qkv = true;
    s.fused_gate_up = true;
    s.n_head_kv = 4;
    s.tied = false;
  } else if (family == "qwen2moe") {
    s.qkv_bias = true;
    s.n_expert = 4;
    s.n_expert_used = 2;
    s.shared_ff = 256;
  } else if (family == "qwen3moe") {
    s.qk_norm = QkNorm::per_head;
    s.n_expert = 4;
    s.n_expert_used = 2;
    s.tied = false;
  } else if (family == "olmoe") {
    s.qk_norm = QkNorm::whole;
    s.n_expert = 4;
    s.n_expert_used = 2;
    s.n_head_kv = 4;
    s.tied = false;
  } else if (family == "smollm3") {  // layer 3 without RoPE
    s.n_layer = 4;
  } else if (family == "lfm2") {  // conv, attention, conv: the last layer's trimmed rows too
    s.n_layer = 3;
    s.layer_head_kv = {0, 2, 0};
    s.qk_norm = QkNorm::per_head;
  } else if (family == "qwen35") {  // DeltaNet, DeltaNet, DeltaNet, gated attention
    s.n_layer = 4;
    s.qk_norm = QkNorm::per_head;
    s.dn_state = 64;
    s.dn_k_heads = 2;
    s.dn_v_heads = 4;  // tiled over the K heads
    s.rope_dims = 32;  // partial: 16 of the 32 pairs of a 64-value head
    s.rope_sections = {3, 3, 2, 2};  // pairs 8 and 9 fall in the fourth section: rotated by 0
    s.rope_base = 10000000.0f;
  } else if (family == "mixtral") {  // experts in a llama file
    s.arch = "llama";
    s.n_expert = 4;
    s.n_expert_used = 2;
    s.tied = false;
  }
  return s;
}

}  // namespace tinyslm_test
