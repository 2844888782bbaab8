// mkmodel: writes a random-weight GGUF with the shape of a real model, so a device can be
// measured (bench, llama-bench) before anything is downloaded. Loadable by llama.cpp too: the
// file carries a minimal SentencePiece-style vocabulary of the right size.
//
//   mkmodel SHAPE TYPE OUT.gguf [--seed N]      TYPE: F16, Q8_0, Q4_0, Q4_K_M
//   mkmodel --list
//
// Tensors are generated and quantized while the file is written (tests/model_builder.hpp, with
// GgufWriter's generated tensors), so an 8B model never sits in memory whole. Q4_K_M follows
// llama-quantize's recipe: Q4_K, with Q6_K for attn_v / ffn_down on the layers where it spends
// more bits and for the output head; rows that are not a multiple of 256 fall back to Q5_0
// (Q6_K to Q8_0), as real downloads of such models do.
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
#include <bit>
#include <span>
#include <string>
#include <vector>

#include "tinyslm.hpp"
#include "../tests/model_builder.hpp"  // the writer the tests' tiny models come from

using namespace tinyslm;
using tinyslm_test::QkNorm;

namespace {

struct Shape {
  const char* name;
  const char* arch;
  int64_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
  float rope_base, rms_eps;
  bool tied, qkv_bias, llama3_rope;
  // Mixture of experts (n_expert 0: dense). n_ff is then each expert's width.
  int64_t n_expert = 0, n_expert_used = 0;
  QkNorm qk_norm = QkNorm::none;
  // Hybrid (lfm2): bit il set = layer il is attention, the others short convolutions (width 3).
  uint64_t attn_layers = 0;
  // qwen35: head size, DeltaNet head size and K / V heads (a gated attention layer every 4th),
  // partial RoPE dimensions (sections [11, 11, 10, 0] as the family ships them).
  int64_t head_dim = 0, dn_state = 0, dn_k_heads = 0, dn_v_heads = 0, rope_dims = 0;
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
    // LFM2-1.2B: 10 short-convolution layers and 6 GQA layers (2, 5, 8, 10, 12, 14), per-head
    // QK-norm, FFN 8192 (block_ff_dim 12288 after its auto-adjust), vocab 65536, tied.
    {"LFM2-1.2B", "lfm2", 2048, 16, 32, 8, 8192, 65536, 128000, 1000000.0f, 1e-5f, true, false, false,
     0, 0, QkNorm::per_head, (1u << 2) | (1u << 5) | (1u << 8) | (1u << 10) | (1u << 12) | (1u << 14)},
    // SmolLM3-3B: llama-style GQA 16 / 4, every 4th layer without RoPE, tied.
    {"SmolLM3-3B", "smollm3", 2048, 36, 16, 4, 11008, 128256, 65536, 5000000.0f, 1e-6f, true, false, false},
    // Qwen3.5-0.8B: 18 Gated DeltaNet layers (16 K and 16 V heads of 128, conv 4) and 6 gated
    // attention layers (8 / 2 heads of 256, RoPE on 64 dims), FFN 3584, vocab 248320, tied.
    {"Qwen3.5-0.8B", "qwen35", 1024, 24, 8, 2, 3584, 248320, 262144, 10000000.0f, 1e-6f, true, false, false,
     0, 0, QkNorm::per_head, 0, 256, 128, 16, 16, 64},
};

// llama-quantize's "spend more bits here" layers for Q4_K_M.
bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

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
    return tinyslm_test::fallback_type(t, cols);
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
      if (s.attn_layers) std::printf(" attention layers %d of %lld", std::popcount(s.attn_layers), (long long)s.n_layer);
      if (s.dn_state > 0) std::printf(" DeltaNet %lld/%lld heads of %lld", (long long)s.dn_k_heads, (long long)s.dn_v_heads, (long long)s.dn_state);
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
  Plan plan{ftype, S.n_layer};

  tinyslm_test::ModelSpec spec;
  spec.arch = A;
  spec.n_embd = S.n_embd;
  spec.n_layer = S.n_layer;
  spec.n_head = S.n_head;
  spec.n_head_kv = S.n_head_kv;
  spec.n_ff = S.n_ff;
  spec.n_vocab = S.n_vocab;
  spec.n_ctx = S.n_ctx;
  spec.rope_base = S.rope_base;
  spec.rms_eps = S.rms_eps;
  spec.tied = S.tied;
  spec.qkv_bias = S.qkv_bias;
  spec.llama3_rope = S.llama3_rope;
  spec.qk_norm = S.qk_norm;
  spec.n_expert = S.n_expert;
  spec.n_expert_used = S.n_expert_used;
  if (S.attn_layers)
    for (int64_t il = 0; il < S.n_layer; ++il) spec.layer_head_kv.push_back((S.attn_layers >> il) & 1 ? S.n_head_kv : 0);
  if (S.dn_state > 0) {
    spec.head_dim = S.head_dim;
    spec.dn_state = S.dn_state;
    spec.dn_k_heads = S.dn_k_heads;
    spec.dn_v_heads = S.dn_v_heads;
    spec.rope_dims = S.rope_dims;
    spec.rope_sections = {11, 11, 10, 0};
  }
  spec.vocab = true;  // so llama.cpp loads the file too
  spec.seed = seed;
  spec.pick = [&](const tinyslm_test::TensorRole& r) { return plan.pick(r.role, r.layer, r.cols, r.is_output); };
  spec.general_meta = [&](GgufWriter& g) {
    g.set_string("general.name", std::string(S.name) + "-random-" + ftype);
    g.set_string("general.description", "random weights made by tinyslm mkmodel; outputs are noise");
    g.set_u32("general.file_type", static_cast<uint32_t>(file_type_id(ftype)));
    g.set_u32("general.quantization_version", 2);
  };
  GgufWriter w;
  if (auto st = tinyslm_test::build_model(spec, w); !st) {
    std::fprintf(stderr, "mkmodel: %s\n", st.error().message().c_str());
    return 1;
  }
  auto st = w.write_file(out);
  if (!st) {
    std::fprintf(stderr, "mkmodel: %s\n", st.error().message().c_str());
    return 1;
  }
  std::printf("wrote %s (%s, %s, %zu tensors)\n", out.c_str(), S.name, ftype.c_str(), w.tensor_count());
  return 0;
}
