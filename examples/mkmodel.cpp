// mkmodel: writes a random-weight GGUF with the shape of a real model, so a device can be
// measured (bench, llama-bench) before anything is downloaded. Loadable by llama.cpp too: the
// file carries a minimal SentencePiece-style vocabulary of the right size.
//
//   mkmodel SHAPE TYPE OUT.gguf [--seed N]      TYPE: F16, Q8_0, Q4_0, Q4_K_M
//   mkmodel --list
//
// Tensors are generated and quantized while the file is written (GgufWriter's generated
// tensors), so an 8B model never sits in memory whole. Q4_K_M follows llama-quantize's recipe:
// Q4_K, with Q6_K for attn_v / ffn_down on the layers where it spends more bits and for the
// output head; rows that are not a multiple of 256 fall back to Q5_0 (Q6_K to Q8_0), as real
// downloads of such models do.
//
// Mixture-of-experts shapes (stacked ffn_{gate,up,down}_exps tensors, an F32 router
// ffn_gate_inp, as llama-quantize keeps it):
//  - OLMoE-1B-7B-style: OLMoE's layer (olmoe arch, n_embd 2048, 16 heads, 64 experts of width
//    1024, top-8, QK RMSNorm over the whole 2048-wide projection, vocab 50304, untied) with 2
//    layers instead of 16: 1.045 B parameters, the layer count nearest the 977 M of the golden
//    README's reference row (1 layer would be 0.63 B); 0.24 B active per token.
//  - Qwen3-MoE-style: Qwen3-30B-A3B's layout scaled down (qwen3moe arch, n_embd 1024, 24 layers,
//    16 / 4 heads of 64, per-head QK-norm, 128 experts cut to 64 of width 512, top-8, vocab
//    151936, untied): 2.79 B parameters, 0.52 B active (0.37 B besides the output head).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include "tinyslm.hpp"

using namespace tinyslm;

namespace {

enum class QkNorm { none, per_head, whole };  // RMSNorm of q and k: none, per head, whole projection

struct Shape {
  const char* name;
  const char* arch;
  int64_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
  float rope_base, rms_eps;
  bool tied, qkv_bias, llama3_rope;
  // Mixture of experts (n_expert 0: dense). n_ff is then each expert's width.
  int64_t n_expert = 0, n_expert_used = 0;
  QkNorm qk_norm = QkNorm::none;
};

constexpr Shape kShapes[] = {
    {"stories260K", "llama", 64, 5, 8, 4, 172, 512, 2048, 10000.0f, 1e-5f, false, false, false},
    {"SmolLM2-135M", "llama", 576, 30, 9, 3, 1536, 49152, 8192, 100000.0f, 1e-5f, true, false, false},
    {"Qwen2.5-0.5B", "qwen2", 896, 24, 14, 2, 4864, 151936, 32768, 1000000.0f, 1e-6f, true, true, false},
    {"Llama-3.2-1B", "llama", 2048, 16, 32, 8, 8192, 128256, 131072, 500000.0f, 1e-5f, true, false, true},
    {"Llama-3-8B", "llama", 4096, 32, 32, 8, 14336, 128256, 8192, 500000.0f, 1e-5f, false, false, false},
    {"OLMoE-1B-7B-style", "olmoe", 2048, 2, 16, 16, 1024, 50304, 4096, 10000.0f, 1e-5f, false, false, false,
     64, 8, QkNorm::whole},
    {"Qwen3-MoE-style", "qwen3moe", 1024, 24, 16, 4, 512, 151936, 32768, 1000000.0f, 1e-6f, false, false, false,
     64, 8, QkNorm::per_head},
};

// Small, fast, seeded generator (splitmix64); uniform values with the variance wanted.
struct SplitMix {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // uniform in [-1, 1)
  float uniform() { return static_cast<float>(static_cast<int64_t>(next() >> 40) - (1 << 23)) * (1.0f / (1 << 23)); }
};

uint64_t hash_name(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// llama-quantize's "spend more bits here" layers for Q4_K_M.
bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

TensorType fallback(TensorType t, int64_t cols) {
  const auto& info = tensor_type_info(t);
  if (cols % info.block_size == 0) return t;
  switch (t) {
    case TensorType::Q4_K: return cols % 32 == 0 ? TensorType::Q5_0 : TensorType::F16;
    case TensorType::Q5_K: return cols % 32 == 0 ? TensorType::Q5_1 : TensorType::F16;
    case TensorType::Q6_K: return cols % 32 == 0 ? TensorType::Q8_0 : TensorType::F16;
    default: return TensorType::F16;
  }
}

struct Plan {
  std::string ftype;  // F16, Q8_0, Q4_0, Q4_K_M
  int64_t n_layer = 0;
  // The type of a matrix given its role and layer.
  TensorType pick(const std::string& role, int64_t layer, int64_t cols, bool is_output) const {
    TensorType t = TensorType::F16;
    if (ftype == "Q8_0") t = TensorType::Q8_0;
    else if (ftype == "Q4_0") t = is_output ? TensorType::Q6_K : TensorType::Q4_0;
    else if (ftype == "Q4_K_M") {
      t = TensorType::Q4_K;
      if (is_output) t = TensorType::Q6_K;
      else if ((role == "attn_v" || role == "ffn_down") && use_more_bits(layer, n_layer)) t = TensorType::Q6_K;
    }
    return fallback(t, cols);
  }
};

int file_type_id(const std::string& f) {
  if (f == "F16") return 1;
  if (f == "Q4_0") return 2;
  if (f == "Q8_0") return 7;
  return 15;  // MOSTLY_Q4_K_M
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "--list") == 0) {
    for (const auto& s : kShapes) {
      std::printf("%-17s %-8s n_embd %5lld layers %3lld heads %2lld/%lld n_ff %5lld vocab %6lld%s", s.name, s.arch,
                  (long long)s.n_embd, (long long)s.n_layer, (long long)s.n_head, (long long)s.n_head_kv,
                  (long long)s.n_ff, (long long)s.n_vocab, s.tied ? " tied" : "");
      if (s.n_expert > 0) std::printf(" experts %lld top-%lld", (long long)s.n_expert, (long long)s.n_expert_used);
      std::printf("\n");
    }
    return 0;
  }
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s SHAPE TYPE OUT.gguf [--seed N]   (TYPE: F16, Q8_0, Q4_0, Q4_K_M; %s --list)\n",
                 argv[0], argv[0]);
    return 1;
  }
  const std::string shape_name = argv[1], ftype = argv[2], out = argv[3];
  uint64_t seed = 42;
  for (int i = 4; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--seed") == 0) seed = std::strtoull(argv[++i], nullptr, 10);
  const Shape* sh = nullptr;
  for (const auto& s : kShapes)
    if (shape_name == s.name) sh = &s;
  if (!sh) {
    std::fprintf(stderr, "mkmodel: unknown shape '%s' (see --list)\n", shape_name.c_str());
    return 1;
  }
  if (ftype != "F16" && ftype != "Q8_0" && ftype != "Q4_0" && ftype != "Q4_K_M") {
    std::fprintf(stderr, "mkmodel: unknown type '%s' (F16, Q8_0, Q4_0, Q4_K_M)\n", ftype.c_str());
    return 1;
  }
  const Shape& S = *sh;
  const std::string A = S.arch;
  const int64_t hd = S.n_embd / S.n_head;
  Plan plan{ftype, S.n_layer};

  GgufWriter w;
  w.set_string("general.architecture", A);
  w.set_string("general.name", std::string(S.name) + "-random-" + ftype);
  w.set_string("general.description", "random weights made by tinyslm mkmodel; outputs are noise");
  w.set_u32("general.file_type", static_cast<uint32_t>(file_type_id(ftype)));
  w.set_u32("general.quantization_version", 2);
  w.set_u32(A + ".context_length", static_cast<uint32_t>(S.n_ctx));
  w.set_u32(A + ".embedding_length", static_cast<uint32_t>(S.n_embd));
  w.set_u32(A + ".block_count", static_cast<uint32_t>(S.n_layer));
  w.set_u32(A + ".feed_forward_length", static_cast<uint32_t>(S.n_ff));
  w.set_u32(A + ".attention.head_count", static_cast<uint32_t>(S.n_head));
  w.set_u32(A + ".attention.head_count_kv", static_cast<uint32_t>(S.n_head_kv));
  w.set_u32(A + ".rope.dimension_count", static_cast<uint32_t>(hd));
  w.set_f32(A + ".rope.freq_base", S.rope_base);
  w.set_f32(A + ".attention.layer_norm_rms_epsilon", S.rms_eps);
  w.set_u32(A + ".vocab_size", static_cast<uint32_t>(S.n_vocab));
  if (S.n_expert > 0) {
    w.set_u32(A + ".expert_count", static_cast<uint32_t>(S.n_expert));
    w.set_u32(A + ".expert_used_count", static_cast<uint32_t>(S.n_expert_used));
    if (A == "qwen3moe") w.set_u32(A + ".expert_feed_forward_length", static_cast<uint32_t>(S.n_ff));
  }

  // Minimal SentencePiece vocabulary: <unk> <s> </s>, the 256 byte tokens, then filler pieces.
  {
    std::vector<std::string> tokens;
    std::vector<float> scores;
    std::vector<int32_t> types;
    tokens.reserve(static_cast<size_t>(S.n_vocab));
    const char* specials[3] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; ++i) {
      tokens.emplace_back(specials[i]);
      scores.push_back(0.0f);
      types.push_back(i == 0 ? 2 : 3);
    }
    for (int b = 0; b < 256 && static_cast<int64_t>(tokens.size()) < S.n_vocab; ++b) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "<0x%02X>", b);
      tokens.emplace_back(buf);
      scores.push_back(0.0f);
      types.push_back(6);
    }
    for (int64_t i = static_cast<int64_t>(tokens.size()); i < S.n_vocab; ++i) {
      std::string piece = "\xE2\x96\x81t";  // SentencePiece's word-start mark, then a name
      piece += std::to_string(i);
      tokens.push_back(std::move(piece));
      scores.push_back(-static_cast<float>(i));
      types.push_back(1);
    }
    w.set_string("tokenizer.ggml.model", "llama");
    w.set_array_strings("tokenizer.ggml.tokens", tokens);
    w.set_array<float>("tokenizer.ggml.scores", GgufValueType::f32, scores);
    w.set_array<int32_t>("tokenizer.ggml.token_type", GgufValueType::i32, types);
    w.set_u32("tokenizer.ggml.unknown_token_id", 0);
    w.set_u32("tokenizer.ggml.bos_token_id", 1);
    w.set_u32("tokenizer.ggml.eos_token_id", 2);
    w.set_bool("tokenizer.ggml.add_bos_token", true);
  }

  // A matrix of `rows` x `cols` (n_mat > 0: a stack of n_mat of them, the experts'
  // [cols, rows, n_mat] layout), N(0, gain^2 / cols)-like (uniform with that variance).
  auto add_matrix = [&](const std::string& name, int64_t cols, int64_t rows, TensorType t, float gain,
                        int64_t n_mat = 0) -> bool {
    const uint64_t shape[3] = {static_cast<uint64_t>(cols), static_cast<uint64_t>(rows), static_cast<uint64_t>(n_mat)};
    const uint64_t h = hash_name(name, seed);
    const float amp = gain * std::sqrt(3.0f / static_cast<float>(cols));
    const int64_t all_rows = rows * std::max<int64_t>(1, n_mat);
    auto st = w.add_tensor_generated(name, t, std::span<const uint64_t>(shape, n_mat > 0 ? 3 : 2), [=](uint8_t* dst, size_t bytes) {
      const size_t row_bytes = bytes / static_cast<size_t>(all_rows);
      std::vector<float> row(static_cast<size_t>(cols));
      SplitMix rng{h};
      for (int64_t r = 0; r < all_rows; ++r) {
        for (auto& v : row) v = amp * rng.uniform();
        (void)quantize_row(t, row.data(), dst + static_cast<size_t>(r) * row_bytes, cols);
      }
    });
    if (!st) std::fprintf(stderr, "mkmodel: %s\n", st.error().message().c_str());
    return static_cast<bool>(st);
  };
  auto add_vector = [&](const std::string& name, int64_t n, float center, float spread) -> bool {
    std::vector<float> v(static_cast<size_t>(n));
    SplitMix rng{hash_name(name, seed)};
    for (auto& x : v) x = center + spread * rng.uniform();
    const uint64_t shape[1] = {static_cast<uint64_t>(n)};
    return static_cast<bool>(w.add_tensor(name, TensorType::F32, shape, v.data(), v.size() * 4));
  };

  bool ok = true;
  const int64_t E = S.n_embd, Q = S.n_head * hd, K = S.n_head_kv * hd, F = S.n_ff;
  ok &= add_matrix("token_embd.weight", E, S.n_vocab, plan.pick("token_embd", 0, E, S.tied), 1.0f);
  ok &= add_vector("output_norm.weight", E, 1.0f, 0.1f);
  if (!S.tied) ok &= add_matrix("output.weight", E, S.n_vocab, plan.pick("output", 0, E, true), 3.0f);
  if (S.llama3_rope) {
    // Llama 3's per-pair frequency divisors (factor 32, low 1, high 4, original context 8192).
    std::vector<float> ff(static_cast<size_t>(hd / 2));
    for (int64_t i = 0; i < hd / 2; ++i) {
      const double freq = std::pow(S.rope_base, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
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
    ok &= static_cast<bool>(w.add_tensor("rope_freqs.weight", TensorType::F32, shape, ff.data(), ff.size() * 4));
  }
  for (int64_t il = 0; il < S.n_layer && ok; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    ok &= add_vector(p + "attn_norm.weight", E, 1.0f, 0.1f);
    ok &= add_matrix(p + "attn_q.weight", E, Q, plan.pick("attn_q", il, E, false), 1.0f);
    ok &= add_matrix(p + "attn_k.weight", E, K, plan.pick("attn_k", il, E, false), 1.0f);
    ok &= add_matrix(p + "attn_v.weight", E, K, plan.pick("attn_v", il, E, false), 1.0f);
    if (S.qkv_bias) {
      ok &= add_vector(p + "attn_q.bias", Q, 0.0f, 0.1f);
      ok &= add_vector(p + "attn_k.bias", K, 0.0f, 0.1f);
      ok &= add_vector(p + "attn_v.bias", K, 0.0f, 0.1f);
    }
    if (S.qk_norm == QkNorm::whole) {
      ok &= add_vector(p + "attn_q_norm.weight", Q, 1.0f, 0.1f);
      ok &= add_vector(p + "attn_k_norm.weight", K, 1.0f, 0.1f);
    } else if (S.qk_norm == QkNorm::per_head) {
      ok &= add_vector(p + "attn_q_norm.weight", hd, 1.0f, 0.1f);
      ok &= add_vector(p + "attn_k_norm.weight", hd, 1.0f, 0.1f);
    }
    ok &= add_matrix(p + "attn_output.weight", Q, E, plan.pick("attn_output", il, Q, false), 1.0f);
    ok &= add_vector(p + "ffn_norm.weight", E, 1.0f, 0.1f);
    if (S.n_expert > 0) {
      // The router stays F32; a larger gain spreads its logits so the top-k is not uniform.
      ok &= add_matrix(p + "ffn_gate_inp.weight", E, S.n_expert, TensorType::F32, 4.0f);
      ok &= add_matrix(p + "ffn_gate_exps.weight", E, F, plan.pick("ffn_gate", il, E, false), 1.0f, S.n_expert);
      ok &= add_matrix(p + "ffn_up_exps.weight", E, F, plan.pick("ffn_up", il, E, false), 1.0f, S.n_expert);
      ok &= add_matrix(p + "ffn_down_exps.weight", F, E, plan.pick("ffn_down", il, F, false), 1.0f, S.n_expert);
    } else {
      ok &= add_matrix(p + "ffn_gate.weight", E, F, plan.pick("ffn_gate", il, E, false), 1.0f);
      ok &= add_matrix(p + "ffn_up.weight", E, F, plan.pick("ffn_up", il, E, false), 1.0f);
      ok &= add_matrix(p + "ffn_down.weight", F, E, plan.pick("ffn_down", il, F, false), 1.0f);
    }
  }
  if (!ok) return 1;
  auto st = w.write_file(out);
  if (!st) {
    std::fprintf(stderr, "mkmodel: %s\n", st.error().message().c_str());
    return 1;
  }
  std::printf("wrote %s (%s, %s, %zu tensors)\n", out.c_str(), S.name, ftype.c_str(), w.tensor_count());
  return 0;
}
