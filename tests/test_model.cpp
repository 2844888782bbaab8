// Model loading: hyper-parameters per architecture, weights bound without copies, and a clear
// error for every kind of bad file (missing tensor, wrong shape, unsupported architecture or
// type, MoE, bad metadata). Small models are written in memory with GgufWriter.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "tinyslm.hpp"

using namespace tinyslm;

namespace {

struct TinySpec {
  std::string arch = "llama";
  int64_t n_embd = 64, n_layer = 2, n_head = 4, n_head_kv = 2, n_ff = 96, n_vocab = 80;
  int64_t head_dim = 0;  // 0: n_embd / n_head (no key_length key)
  bool tied = true;
  TensorType type = TensorType::F16;
  std::vector<std::string> skip;                  // tensors to leave out
  std::map<std::string, std::vector<uint64_t>> reshape;  // tensors with another shape
  std::function<void(GgufWriter&)> extra_meta;    // more metadata
  std::vector<std::string> extra_vectors;         // more F32 tensors of 8 values
};

uint64_t g_state = 12345;
float next_uniform() {
  g_state = g_state * 6364136223846793005ull + 1442695040888963407ull;
  return static_cast<float>((g_state >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

// Writes a small random model of any supported family into memory.
std::vector<uint8_t> make_model(const TinySpec& s) {
  GgufWriter w;
  const std::string& A = s.arch;
  const int64_t hd = s.head_dim ? s.head_dim : s.n_embd / s.n_head;
  w.set_string("general.architecture", A);
  w.set_u32(A + ".embedding_length", static_cast<uint32_t>(s.n_embd));
  w.set_u32(A + ".block_count", static_cast<uint32_t>(s.n_layer));
  w.set_u32(A + ".feed_forward_length", static_cast<uint32_t>(s.n_ff));
  w.set_u32(A + ".attention.head_count", static_cast<uint32_t>(s.n_head));
  w.set_u32(A + ".attention.head_count_kv", static_cast<uint32_t>(s.n_head_kv));
  w.set_u32(A + ".context_length", 256);
  w.set_f32(A + ".attention.layer_norm_rms_epsilon", 1e-6f);
  if (s.head_dim) {
    w.set_u32(A + ".attention.key_length", static_cast<uint32_t>(hd));
    w.set_u32(A + ".attention.value_length", static_cast<uint32_t>(hd));
  }
  if (s.extra_meta) s.extra_meta(w);

  auto skipped = [&](const std::string& n) {
    for (const auto& k : s.skip)
      if (k == n) return true;
    return false;
  };
  auto add = [&](const std::string& name, std::vector<uint64_t> shape, TensorType t, float center, float spread) {
    if (skipped(name)) return;
    if (s.reshape.count(name)) shape = s.reshape.at(name);
    uint64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> v(n);
    for (auto& x : v) x = center + spread * next_uniform();
    uint64_t row_bytes = 0;
    REQUIRE(tensor_row_bytes(t, shape[0], &row_bytes));
    std::vector<uint8_t> bytes(row_bytes * (n / shape[0]));
    for (uint64_t r = 0; r < n / shape[0]; ++r)
      REQUIRE(quantize_row(t, v.data() + r * shape[0], bytes.data() + r * row_bytes, static_cast<int64_t>(shape[0])));
    REQUIRE(w.add_tensor(name, t, shape, bytes.data(), bytes.size()));
  };
  const auto E = static_cast<uint64_t>(s.n_embd), F = static_cast<uint64_t>(s.n_ff);
  const auto Q = static_cast<uint64_t>(s.n_head * hd), K = static_cast<uint64_t>(s.n_head_kv * hd);
  const float g = 1.0f / std::sqrt(static_cast<float>(s.n_embd));
  add("token_embd.weight", {E, static_cast<uint64_t>(s.n_vocab)}, s.type, 0.0f, 1.0f);
  add("output_norm.weight", {E}, TensorType::F32, 1.0f, 0.1f);
  for (const auto& n : s.extra_vectors) add(n, {8}, TensorType::F32, 1.0f, 0.1f);
  if (!s.tied) add("output.weight", {E, static_cast<uint64_t>(s.n_vocab)}, s.type, 0.0f, g);
  const bool phi3 = A == "phi3", qk_norm = A == "qwen3" || A == "gemma3", post = A == "gemma2" || A == "gemma3";
  for (int64_t il = 0; il < s.n_layer; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    add(p + "attn_norm.weight", {E}, TensorType::F32, 1.0f, 0.1f);
    if (phi3) {
      add(p + "attn_qkv.weight", {E, Q + 2 * K}, s.type, 0.0f, g);
    } else {
      add(p + "attn_q.weight", {E, Q}, s.type, 0.0f, g);
      add(p + "attn_k.weight", {E, K}, s.type, 0.0f, g);
      add(p + "attn_v.weight", {E, K}, s.type, 0.0f, g);
    }
    if (A == "qwen2") {
      add(p + "attn_q.bias", {Q}, TensorType::F32, 0.0f, 0.1f);
      add(p + "attn_k.bias", {K}, TensorType::F32, 0.0f, 0.1f);
      add(p + "attn_v.bias", {K}, TensorType::F32, 0.0f, 0.1f);
    }
    if (qk_norm) {
      add(p + "attn_q_norm.weight", {static_cast<uint64_t>(hd)}, TensorType::F32, 1.0f, 0.1f);
      add(p + "attn_k_norm.weight", {static_cast<uint64_t>(hd)}, TensorType::F32, 1.0f, 0.1f);
    }
    add(p + "attn_output.weight", {Q, E}, s.type, 0.0f, g);
    add(p + "ffn_norm.weight", {E}, TensorType::F32, 1.0f, 0.1f);
    if (phi3) {
      add(p + "ffn_up.weight", {E, 2 * F}, s.type, 0.0f, g);
    } else {
      add(p + "ffn_gate.weight", {E, F}, s.type, 0.0f, g);
      add(p + "ffn_up.weight", {E, F}, s.type, 0.0f, g);
    }
    add(p + "ffn_down.weight", {F, E}, s.type, 0.0f, 1.0f / std::sqrt(static_cast<float>(s.n_ff)));
    if (post) {
      add(p + "post_attention_norm.weight", {E}, TensorType::F32, 1.0f, 0.1f);
      add(p + "post_ffw_norm.weight", {E}, TensorType::F32, 1.0f, 0.1f);
    }
  }
  return w.to_bytes();
}

Expected<Model> load(const std::vector<uint8_t>& bytes) {
  auto f = GgufFile::from_memory(bytes.data(), bytes.size(), "tiny.gguf");
  if (!f) return f.error();
  return Model::from_gguf(std::move(*f));
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("model: every supported family loads, binds its weights in place and runs") {
  for (const char* arch : {"llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3"}) {
    CAPTURE(arch);
    TinySpec s;
    s.arch = arch;
    if (s.arch == "qwen3" || s.arch == "gemma3") s.head_dim = 32;  // head size != n_embd / n_head
    if (s.arch == "phi3") s.tied = false;
    const auto bytes = make_model(s);
    auto m = load(bytes);
    REQUIRE_MESSAGE(m, (m ? "" : m.error().message()));
    const HParams& hp = m->hparams();
    CHECK(hp.arch_name == arch);
    CHECK(hp.n_vocab == s.n_vocab);
    CHECK(hp.head_dim_k == (s.head_dim ? s.head_dim : 16));
    CHECK(m->weights().tied_embeddings == s.tied);
    // No copy: matrices point into the caller's bytes.
    const auto& L = m->weights().layers[1];
    const uint8_t* p = L.ffn_down.data;
    CHECK((p >= bytes.data() && p < bytes.data() + bytes.size()));
    CHECK(m->weights().output.data == (s.tied ? m->weights().token_embd.data : m->weights().output.data));
    CHECK((s.arch == "phi3") == static_cast<bool>(L.wqkv));
    CHECK((s.arch == "qwen2") == !L.bq.empty());
    CHECK((s.arch == "qwen3" || s.arch == "gemma3") == !L.q_norm.empty());
    CHECK((s.arch == "gemma2" || s.arch == "gemma3") == !L.post_ffn_norm.empty());
    CHECK(hp.embed_scale == doctest::Approx(s.arch.rfind("gemma", 0) == 0 ? 8.0 : 1.0));

    // A few tokens through the forward pass: finite logits, same for 1 and 2 threads.
    std::vector<int32_t> toks = {1, 5, 9, 33, 70, 2};
    std::vector<float> first;
    for (int threads : {1, 2}) {
      auto ctx = Context::create(*m, {.n_ctx = 32, .n_threads = threads});
      REQUIRE(ctx);
      auto lg = ctx->eval(toks);
      REQUIRE_MESSAGE(lg, (lg ? "" : lg.error().message()));
      std::vector<float> v(lg->begin(), lg->end());
      for (float x : v) REQUIRE(std::isfinite(x));
      if (first.empty()) first = v;
      else CHECK(first == v);
    }
  }
}

TEST_CASE("model: per-architecture table") {
  SUBCASE("gemma3: sliding window on 5 of every 6 layers, local RoPE base 10000") {
    TinySpec s;
    s.arch = "gemma3";
    s.n_layer = 7;
    s.head_dim = 32;
    s.extra_meta = [](GgufWriter& w) {
      w.set_u32("gemma3.attention.sliding_window", 16);
      w.set_f32("gemma3.rope.freq_base", 1e6f);
    };
    auto m = load(make_model(s));
    REQUIRE(m);
    const HParams& hp = m->hparams();
    CHECK(hp.n_swa == 16);
    for (int il = 0; il < 7; ++il) CHECK(hp.is_swa(il) == (il != 5));
    CHECK(hp.rope_base == 1e6f);
    CHECK(hp.rope_base_swa == 10000.0f);
    CHECK(hp.attn_softcap == 0.0f);
    CHECK(hp.attn_scale == doctest::Approx(1.0 / std::sqrt(32.0)));
  }
  SUBCASE("gemma3 without a sliding_window key has no sliding layers") {
    TinySpec s;
    s.arch = "gemma3";
    s.head_dim = 32;
    auto m = load(make_model(s));
    REQUIRE(m);
    CHECK(!m->hparams().is_swa(0));
  }
  SUBCASE("gemma2: every other layer sliding, soft-capping defaults and overrides") {
    TinySpec s;
    s.arch = "gemma2";
    s.n_layer = 4;
    s.extra_meta = [](GgufWriter& w) { w.set_f32("gemma2.attn_logit_softcapping", 10.0f); };
    auto m = load(make_model(s));
    REQUIRE(m);
    const HParams& hp = m->hparams();
    CHECK(hp.n_swa == 4096);
    for (int il = 0; il < 4; ++il) CHECK(hp.is_swa(il) == (il % 2 == 0));
    CHECK(hp.attn_softcap == 10.0f);
    CHECK(hp.final_softcap == 30.0f);
    CHECK(hp.arch.rope == RopeStyle::neox);
    CHECK(hp.arch.activation == FfnActivation::gelu_tanh);
  }
  SUBCASE("llama: normal RoPE, linear scaling, rope_freqs") {
    TinySpec s;
    s.extra_meta = [](GgufWriter& w) {
      w.set_string("llama.rope.scaling.type", "linear");
      w.set_f32("llama.rope.scaling.factor", 4.0f);
    };
    auto m = load(make_model(s));
    REQUIRE(m);
    CHECK(m->hparams().arch.rope == RopeStyle::normal);
    CHECK(m->hparams().rope_freq_scale == 0.25f);
    CHECK(m->hparams().rope_freq_factors.empty());
  }
}

TEST_CASE("model: bad files give clear errors") {
  SUBCASE("missing tensor") {
    TinySpec s;
    s.skip = {"blk.1.ffn_down.weight"};
    auto m = load(make_model(s));
    REQUIRE(!m);
    CHECK(m.error().code() == Errc::not_found);
    CHECK(contains(m.error().message(), "blk.1.ffn_down.weight"));
  }
  SUBCASE("missing qwen2 bias") {
    TinySpec s;
    s.arch = "qwen2";
    s.skip = {"blk.0.attn_k.bias"};
    auto m = load(make_model(s));
    REQUIRE(!m);
    CHECK(contains(m.error().message(), "blk.0.attn_k.bias"));
  }
  SUBCASE("wrong shape") {
    TinySpec s;
    s.reshape["blk.0.attn_q.weight"] = {64, 32};
    auto m = load(make_model(s));
    REQUIRE(!m);
    CHECK(m.error().code() == Errc::invalid_format);
    CHECK(contains(m.error().message(), "blk.0.attn_q.weight"));
    CHECK(contains(m.error().message(), "[64, 32]"));
    CHECK(contains(m.error().message(), "[64, 64]"));
  }
  SUBCASE("wrong norm length") {
    TinySpec s;
    s.reshape["output_norm.weight"] = {32};
    auto m = load(make_model(s));
    REQUIRE(!m);
    CHECK(contains(m.error().message(), "output_norm.weight"));
  }
  SUBCASE("unsupported architecture") {
    TinySpec s;
    s.arch = "mamba";
    auto m = load(make_model(s));
    REQUIRE(!m);
    CHECK(m.error().code() == Errc::unsupported);
    CHECK(contains(m.error().message(), "'mamba'"));
  }
  SUBCASE("unsupported MoE architecture") {
    TinySpec s;
    s.arch = "deepseek2";
    auto m = load(make_model(s));
    REQUIRE(!m);
    CHECK(m.error().code() == Errc::unsupported);
    CHECK(contains(m.error().message(), "'deepseek2'"));
  }
  SUBCASE("llama file declaring experts without a router") {
    TinySpec s;
    s.extra_meta = [](GgufWriter& w) { w.set_u32("llama.expert_count", 8); };
    auto m = load(make_model(s));
    REQUIRE(!m);
    CHECK(contains(m.error().message(), "blk.0.ffn_gate_inp.weight"));
  }
  SUBCASE("experts in a family that has none") {
    TinySpec s;
    s.arch = "gemma2";
    s.extra_meta = [](GgufWriter& w) { w.set_u32("gemma2.expert_count", 8); };
    auto m = load(make_model(s));
    REQUIRE(!m);
    CHECK(contains(m.error().message(), "experts"));
  }
  SUBCASE("unsupported RoPE scaling") {
    TinySpec s;
    s.extra_meta = [](GgufWriter& w) { w.set_string("llama.rope.scaling.type", "yarn"); };
    auto m = load(make_model(s));
    REQUIRE(!m);
    CHECK(contains(m.error().message(), "yarn"));
  }
  SUBCASE("Phi-3 LongRoPE factors") {
    TinySpec s;
    s.arch = "phi3";
    s.tied = false;
    s.extra_vectors = {"rope_factors_long.weight", "rope_factors_short.weight"};
    auto m = load(make_model(s));
    REQUIRE(!m);
    CHECK(m.error().code() == Errc::unsupported);
    CHECK(contains(m.error().message(), "LongRoPE"));
  }
  SUBCASE("rope_freqs of the wrong length") {
    TinySpec s;
    s.extra_vectors = {"rope_freqs.weight"};  // 8 values, but n_rot / 2 = 8: accepted
    auto ok = load(make_model(s));
    REQUIRE(ok);
    CHECK(ok->hparams().rope_freq_factors.size() == 8);
    s.head_dim = 32;  // n_rot / 2 = 16 now
    auto bad = load(make_model(s));
    REQUIRE(!bad);
    CHECK(contains(bad.error().message(), "rope_freqs.weight"));
  }
  SUBCASE("inconsistent head counts") {
    TinySpec s;
    s.n_head_kv = 3;
    auto m = load(make_model(s));
    REQUIRE(!m);
    CHECK(m.error().code() == Errc::invalid_format);
    CHECK(contains(m.error().message(), "n_head_kv 3"));
  }
  SUBCASE("missing hyper-parameter") {
    GgufWriter w;
    w.set_string("general.architecture", "llama");
    w.set_u32("llama.embedding_length", 64);
    const auto bytes = w.to_bytes();
    auto m = load(bytes);
    REQUIRE(!m);
    CHECK(m.error().code() == Errc::not_found);
    CHECK(contains(m.error().message(), "llama.block_count"));
  }
  SUBCASE("matrix type the kernels cannot multiply") {
    TinySpec s;
    auto bytes = make_model(s);
    // Re-label one matrix as IQ2_XXS in a hand-made copy: same byte count is not needed,
    // the loader must refuse the type before reading any data.
    GgufWriter w;
    auto f = GgufFile::from_memory(bytes.data(), bytes.size(), "tiny.gguf");
    REQUIRE(f);
    w.copy_metadata(*f);
    for (const auto& t : f->tensors()) {
      std::vector<uint64_t> shape(t.ne.begin(), t.ne.begin() + t.n_dims);
      if (t.name == "blk.0.attn_v.weight") {
        // 64 x 32 values of IQ2_XXS: 256-value blocks of 66 bytes
        std::vector<uint8_t> zeros(static_cast<size_t>(t.n_elements / 256 * 66));
        std::vector<uint64_t> sh = {256, t.n_elements / 256};
        REQUIRE(w.add_tensor(t.name, TensorType::IQ2_XXS, sh, zeros.data(), zeros.size()));
      } else {
        REQUIRE(w.add_tensor(t.name, t.type, shape, t.data, t.n_bytes));
      }
    }
    auto m = load(w.to_bytes());
    REQUIRE(!m);
    CHECK(contains(m.error().message(), "blk.0.attn_v.weight"));
  }
}

TEST_CASE("model: the shared MoE and dense files" * doctest::test_suite("shared")) {
  // MoE files load: attention weights bound here, experts by the forward layer.
  for (const char* f : {"models/synthetic/synth-qwen3moe-tiny-F16.gguf", "models/synthetic/syn-mixtral-Q8_0.gguf",
                        "models/synthetic/syn-olmoe-Q8_0.gguf", "models/synthetic/syn-qwen2moe-Q8_0.gguf"}) {
    const std::string p = tinyslm_test::shared_file(f);
    if (p.empty()) continue;
    auto x = Model::open(p);
    REQUIRE_MESSAGE(x, f << ": " << (x ? "" : x.error().message()));
    CHECK(x->hparams().n_expert > 0);
    CHECK(x->weights().layers[0].moe);
    CHECK(!x->weights().layers[0].ffn_up);
    auto ctx = Context::create(*x, {.n_ctx = 16});
    CHECK_MESSAGE(ctx, f << ": " << (ctx ? "" : ctx.error().message()));
  }
  const std::string g3 = tinyslm_test::shared_file("models/synthetic/synth-gemma3-tiny-F16.gguf");
  if (g3.empty()) return;
  auto g = Model::open(g3);
  REQUIRE(g);
  CHECK(g->hparams().n_swa == 32);
  CHECK(g->hparams().is_swa(0));
  CHECK(!g->hparams().is_swa(5));
  CHECK(g->hparams().head_dim_k == 64);
}
