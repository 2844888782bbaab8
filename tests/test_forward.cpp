// Forward pass against llama.cpp's golden outputs (../shared/golden), plus thread-count and
// batching invariance.
//
// Bounds (see ../shared/golden/README.md for what llama.cpp itself varies by):
//  - F32 / F16 weights: every logit at the last prompt position within 1e-3 of the logit
//    range of llama.cpp's (the bound; we measure up to 6.4e-4).
//  - BF16 weights: within 2.5e-3 of the range (the README says "well under 0.2%"). Both llama.cpp
//    and we round the activations to BF16 (8 significant bits) before each product, so a tiny
//    upstream difference that flips one rounding moves a product by 2^-8 of its size; we
//    measure 1.7e-3 to 1.94e-3, about 4x the F16 models' figure, as the coarser rounding
//    predicts (see the report of issue 4).
//  - quantized weights: the 20 largest logits within 2% of the range. llama.cpp's own logits
//    move by 0.25 to 0.35 (about 1.5% of the range) on stories260K Q4_0/Q4_K_M when only its
//    KV cache precision or attention kernel changes, so a tighter bound would test noise.
//  - quantized mixture-of-experts files: 5% of the range. A router choice that is nearly
//    tied flips under rounding noise and moves the logits by a whole expert's contribution:
//    our own batched and token-by-token evaluations of the same tokens differ by up to 6% of
//    the range (syn-qwen2moe-Q4_K_M, prompt 7 plus 15 generated tokens) and 2.1% at a last
//    prompt position (syn-olmoe-Q4_K_M, prompt 7); against llama.cpp we measure up to 4.8%.
//  - top-1 equal unless llama.cpp's top two are within the bound; top-10 equal as sets except
//    for candidates whose logits are within the bound of the 10th.
//  - greedy: the first 16 generated ids equal llama.cpp's up to the first step whose margin
//    between first and second candidate is not larger than twice the bound (our measured
//    error stays under the bound at every step: checked on llama.cpp's top 5 of each step).
//    The error at the prompt's last position alone is no guide: on quantized models it can
//    be 0.001 there and 0.1 a few decode steps later, still well inside the bound.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#if defined(__GLIBC__) || defined(__linux__)
#include <malloc.h>
#endif

#include "json.hpp"
#include "test_support.hpp"
#include "tinyslm.hpp"

using namespace tinyslm;
using tinyslm_test::Json;

namespace {

// Debug and sanitizer builds run at a tenth of the speed: they check every model on its
// shortest prompts only (all prompts in Release).
#if defined(NDEBUG) && !defined(__SANITIZE_ADDRESS__)
constexpr bool kQuick = false;
#else
constexpr bool kQuick = true;
#endif
constexpr size_t kQuickMaxTokens = 48;

struct Case {
  std::string model;   // under shared/
  std::string golden;  // under shared/
};

std::vector<Case> dense_cases() {
  std::vector<Case> c;
  c.push_back({"models/stories260K.gguf", "golden/stories260K.json"});
  c.push_back({"models/llama-2-tiny-random.gguf", "golden/llama-2-tiny-random.json"});
  for (const char* q : {"Q4_0", "Q4_K_M", "Q8_0"})
    c.push_back({std::string("models/quant/stories260K-") + q + ".gguf",
                 std::string("golden/stories260K-") + q + ".json"});
  for (const char* q : {"Q4_0", "Q4_K_M", "Q8_0"})
    c.push_back({std::string("models/quant/synth-qwen3moe-tiny-") + q + ".gguf",
                 std::string("golden/synth-qwen3moe-tiny-") + q + ".json"});
  for (const char* q : {"BF16-pure", "IQ4_NL-pure", "Q2_K-pure", "Q3_K-pure", "Q4_0-pure", "Q4_0",
                        "Q4_1-pure", "Q4_K-pure", "Q4_K_M", "Q5_0-pure", "Q5_1-pure", "Q5_K-pure",
                        "Q6_K-pure", "Q8_0"})
    c.push_back({std::string("models/quant/synth-llama3-tiny-") + q + ".gguf",
                 std::string("golden/synth-llama3-tiny-") + q + ".json"});
  for (const char* a : {"llama3", "qwen2", "qwen3", "gemma3", "phi3", "qwen3moe"})
    c.push_back({std::string("models/synthetic/synth-") + a + "-tiny-F16.gguf",
                 std::string("golden/synth-") + a + "-tiny-F16.json"});
  for (const char* s : {"llama-BF16", "llama-F16", "llama-IQ4_NL", "llama-Q2_K",
                        "llama-Q3_K_M", "llama-Q4_0", "llama-Q4_1", "llama-Q4_K_M", "llama-Q5_0",
                        "llama-Q5_1", "llama-Q5_K_M", "llama-Q6_K", "llama-Q8_0", "qwen2-Q4_K_M",
                        "qwen2-Q8_0", "qwen3-Q4_K_M", "qwen3-Q8_0", "gemma2-Q4_K_M", "gemma2-Q8_0",
                        "gemma3-Q4_K_M", "gemma3-Q8_0", "phi3-Q4_K_M", "phi3-Q8_0", "mixtral-Q4_K_M",
                        "mixtral-Q8_0", "qwen2moe-Q4_K_M", "qwen2moe-Q8_0", "qwen3moe-Q4_K_M",
                        "qwen3moe-Q8_0", "olmoe-Q4_K_M", "olmoe-Q8_0", "smollm3-F32", "smollm3-Q8_0",
                        "smollm3-Q4_K_M", "lfm2-F32", "lfm2-Q8_0", "lfm2-Q4_K_M", "qwen35-F32",
                        "qwen35-Q8_0", "qwen35-Q4_K_M"})
    c.push_back({std::string("models/synthetic/syn-") + s + ".gguf",
                 std::string("golden/synthetic/syn-") + s + ".json"});
  return c;
}

bool is_float_type(TensorType t) {
  return t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16;
}

bool model_has_type(const Model& m, TensorType t) {
  const ModelWeights& w = m.weights();
  if (w.token_embd.type == t || w.output.type == t) return true;
  for (const auto& L : w.layers)
    for (const Weight* x : {&L.wq, &L.wk, &L.wv, &L.wqkv, &L.wo, &L.ffn_gate, &L.ffn_up, &L.ffn_down})
      if (*x && x->type == t) return true;
  return false;
}

bool model_is_quantized(const Model& m) {
  const ModelWeights& w = m.weights();
  auto q = [](const Weight& x) { return x && !is_float_type(x.type); };
  if (q(w.token_embd) || q(w.output)) return true;
  for (const auto& L : w.layers)
    for (const Weight* x : {&L.wq, &L.wk, &L.wv, &L.wqkv, &L.wo, &L.ffn_gate, &L.ffn_up, &L.ffn_down})
      if (q(*x)) return true;
  return false;
}

int argmax(std::span<const float> v) {
  int best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[static_cast<size_t>(best)]) best = static_cast<int>(i);  // lowest id wins ties
  return best;
}

std::vector<int> top_ids(std::span<const float> v, int k) {
  std::vector<int> idx(v.size());
  for (size_t i = 0; i < v.size(); ++i) idx[i] = static_cast<int>(i);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) {
    return v[static_cast<size_t>(a)] > v[static_cast<size_t>(b)] ||
           (v[static_cast<size_t>(a)] == v[static_cast<size_t>(b)] && a < b);
  });
  idx.resize(static_cast<size_t>(k));
  return idx;
}

struct Summary {
  int prompts = 0, top1 = 0, top10 = 0, logits = 0, greedy_ok = 0;
  int greedy_steps = 0;  // compared steps, all prompts
  double worst_rel = 0;  // max |diff| / range seen at the last prompt position
  int logit_steps = 0;    // greedy steps whose top-5 logits were compared
  double worst_step_rel = 0;
};

// Runs every prompt of one golden file; returns false if the model could not be loaded.
void check_model(const Case& c, Summary& sum) {
  const std::string mpath = tinyslm_test::shared_file(c.model);
  const std::string gpath = tinyslm_test::shared_file(c.golden);
  if (mpath.empty() || gpath.empty()) return;
  auto model = Model::open(mpath);
  REQUIRE_MESSAGE(model, c.model << ": " << (model ? "" : model.error().message()));
  const Json g = Json::parse(tinyslm_test::read_text(gpath));
  const bool quant = model_is_quantized(*model);
  const bool moe = model->hparams().n_expert > 0;
  const double rel_bound = quant ? (moe ? 0.05 : 0.02) : model_has_type(*model, TensorType::BF16) ? 2.5e-3 : 1e-3;
  // Decode steps of quantized DeltaNet hybrids (syn-qwen35): the recurrent state carries every
  // rounding difference forward; our scalar and AVX2/AVX-512 kernels alone differ by 2.3% of
  // the range at one step of syn-qwen35-Q4_K_M (step errors against llama.cpp: 1.3% scalar,
  // 3.6% SIMD), so their logits get the MoE files' 5%; greedy ids are still compared where
  // llama.cpp's margin exceeds twice the 2% bound.
  const double step_rel_bound = quant && model->hparams().arch.delta_net ? 0.05 : rel_bound;

  auto ctx = Context::create(*model, {.n_ctx = 2048, .n_threads = 1});
  REQUIRE_MESSAGE(ctx, c.model << ": " << (ctx ? "" : ctx.error().message()));

  const auto& prompts = g["prompts"].items();
  for (size_t pi = 0; pi < prompts.size(); ++pi) {
    const Json& p = prompts[pi];
    const std::string where = c.model + " prompt " + std::to_string(pi) + " ('" + p["id"].as_string() + "')";
    const std::vector<int32_t> toks = p["eval_tokens"].int_list();
    if (kQuick && toks.size() > kQuickMaxTokens) continue;
    ctx->reset();
    auto lg = ctx->eval(toks);
    REQUIRE_MESSAGE(lg, where << ": " << (lg ? "" : lg.error().message()));
    std::vector<float> ours(lg->begin(), lg->end());
    const int64_t last = static_cast<int64_t>(toks.size()) - 1;
    ++sum.prompts;

    // llama.cpp's logit range and the absolute bound.
    const Json& stats = p["last_stats"];
    const double range = stats["max"].as_number() - stats["min"].as_number();
    const double bound = rel_bound * range;

    // Logits: all of them for float models (when stored), the top 20 for quantized ones.
    double max_diff = 0;
    if (!quant && p.contains("last_logits")) {
      const auto& ref = p["last_logits"].items();
      REQUIRE(ref.size() == ours.size());
      for (size_t i = 0; i < ref.size(); ++i)
        max_diff = std::max(max_diff, std::fabs(ours[i] - ref[i].as_number()));
    } else {
      for (const auto& e : p["last_top"].items())
        max_diff = std::max(max_diff, std::fabs(ours[static_cast<size_t>(e[0].as_int())] - e[1].as_number()));
    }
    sum.worst_rel = std::max(sum.worst_rel, max_diff / range);
    CHECK_MESSAGE(max_diff <= bound, where << " position " << last << ": max logit difference "
                                           << max_diff << " > bound " << bound << " (range " << range << ")");
    if (max_diff <= bound) ++sum.logits;

    // Top-1 (unless llama.cpp's own top two are within the bound).
    const auto& top = p["last_top"].items();
    const int ref_top1 = static_cast<int>(top[0][0].as_int());
    const double margin = top[0][1].as_number() - top[1][1].as_number();
    const int our_top1 = argmax(ours);
    const bool top1_ok = our_top1 == ref_top1 || margin <= bound;
    CHECK_MESSAGE(top1_ok, where << " position " << last << ": top-1 " << our_top1 << " != llama.cpp's " << ref_top1);
    if (top1_ok) ++sum.top1;

    // Top-10 as a set, tolerant at the boundary.
    std::set<int> ref10, ours10;
    for (int i = 0; i < 10; ++i) ref10.insert(static_cast<int>(top[static_cast<size_t>(i)][0].as_int()));
    for (int id : top_ids(ours, 10)) ours10.insert(id);
    bool top10_ok = true;
    const double tenth = top[9][1].as_number();
    for (int id : ours10)
      if (!ref10.count(id) && std::fabs(ours[static_cast<size_t>(id)] - tenth) > 2 * bound) top10_ok = false;
    for (int id : ref10)
      if (!ours10.count(id)) {
        double ref_logit = 0;
        for (const auto& e : top)
          if (e[0].as_int() == id) ref_logit = e[1].as_number();
        if (std::fabs(ref_logit - tenth) > 2 * bound) top10_ok = false;
      }
    CHECK_MESSAGE(top10_ok, where << " position " << last << ": top-10 sets differ");
    if (top10_ok) ++sum.top10;

    // Greedy continuation: feed llama.cpp's 16 tokens. At every step our logits of its top 5
    // stay within the bound; our argmax equals its token up to the first step whose margin
    // is not clearly larger than the bound.
    const double step_bound = step_rel_bound * range;
    const double greedy_margin = 2 * bound;
    const auto gtoks = p["greedy"]["tokens"].int_list();
    const auto& steps = p["greedy"]["step_top"].items();
    bool greedy_ok = true, comparing_ids = true;
    const size_t n_steps = std::min<size_t>({16, gtoks.size(), steps.size()});
    for (size_t s = 0; s < n_steps; ++s) {
      const auto& st = steps[s].items();
      const double step_margin = st[0][1].as_number() - st[1][1].as_number();
      double step_err = 0;
      for (const auto& e : st)
        step_err = std::max(step_err, std::fabs(ours[static_cast<size_t>(e[0].as_int())] - e[1].as_number()));
      sum.worst_step_rel = std::max(sum.worst_step_rel, step_err / range);
      ++sum.logit_steps;
      CHECK_MESSAGE(step_err <= step_bound, where << " greedy step " << s << " (position "
                                                  << last + 1 + static_cast<int64_t>(s) << "): logit difference "
                                                  << step_err << " on llama.cpp's top 5 > bound " << step_bound);
      if (step_err > step_bound) greedy_ok = false;
      if (comparing_ids && step_margin <= greedy_margin) comparing_ids = false;
      if (comparing_ids) {
        const int ours_id = argmax(ours);
        ++sum.greedy_steps;
        if (ours_id != gtoks[s]) {
          greedy_ok = false;
          comparing_ids = false;
          CHECK_MESSAGE(ours_id == gtoks[s], where << " greedy step " << s << " (position "
                                                   << last + 1 + static_cast<int64_t>(s) << "): "
                                                   << ours_id << " != llama.cpp's " << gtoks[s]
                                                   << " (llama.cpp's margin " << step_margin << ")");
        }
      }
      if (s + 1 == n_steps) break;
      const int32_t next = gtoks[s];
      auto step = ctx->eval(std::span<const int32_t>(&next, 1));
      REQUIRE_MESSAGE(step, where << ": " << (step ? "" : step.error().message()));
      ours.assign(step->begin(), step->end());
    }
    if (greedy_ok) ++sum.greedy_ok;
  }
}

}  // namespace

TEST_CASE("forward: every dense model matches llama.cpp's golden outputs" * doctest::test_suite("shared")) {
  if (tinyslm_test::shared_file("golden/README.md").empty()) return;
  std::fprintf(stderr, "%-36s %7s %5s %6s %6s %6s %9s %9s %9s\n", "model", "prompts", "top1", "top10",
               "logits", "greedy", "id steps", "max rel", "step rel");
  const char* only = std::getenv("TINYSLM_GOLDEN_ONLY");  // substring of the model paths to check
  for (const Case& c : dense_cases()) {
    if (only && c.model.find(only) == std::string::npos) continue;
    Summary s;
    check_model(c, s);
    std::fprintf(stderr, "%-36s %7d %5d %6d %6d %6d %9d %9.2e %9.2e\n", c.model.substr(c.model.rfind('/') + 1).c_str(),
                 s.prompts, s.top1, s.top10, s.logits, s.greedy_ok, s.greedy_steps, s.worst_rel, s.worst_step_rel);
  }
}

TEST_CASE("forward: results do not depend on the thread count or on batching" * doctest::test_suite("shared")) {
  const std::string path = tinyslm_test::shared_file("models/synthetic/syn-qwen2-Q4_K_M.gguf");
  if (path.empty()) return;
  auto model = Model::open(path);
  REQUIRE(model);
  std::vector<int32_t> toks;
  for (int i = 0; i < 70; ++i) toks.push_back((i * 7919 + 13) % 50000);

  // The prompt (prefill), then 5 single tokens (decode, rows split over the threads).
  auto run = [&](int threads, int64_t batch) {
    auto ctx = Context::create(*model, {.n_ctx = 256, .n_threads = threads, .n_batch = batch});
    REQUIRE(ctx);
    auto lg = ctx->eval(toks);
    REQUIRE(lg);
    std::vector<float> all(lg->begin(), lg->end());
    for (int32_t t = 0; t < 5; ++t) {
      const int32_t id = 100 + 37 * t;
      auto step = ctx->eval(std::span<const int32_t>(&id, 1));
      REQUIRE(step);
      all.insert(all.end(), step->begin(), step->end());
    }
    return all;
  };
  const auto a = run(1, 512), b = run(2, 512), c = run(3, 512);
  CHECK(a == b);
  CHECK(a == c);
  // Chunks of 16 tokens: the same maths in another grouping, so equal up to rounding.
  const auto d = run(2, 16);
  double md = 0;
  for (size_t i = 0; i < a.size(); ++i) md = std::max(md, static_cast<double>(std::fabs(a[i] - d[i])));
  CHECK(md < 1e-3);
}

TEST_CASE("forward: prefix reuse gives the logits of a fresh run" * doctest::test_suite("shared")) {
  const std::string path = tinyslm_test::shared_file("models/stories260K.gguf");
  if (path.empty()) return;
  auto model = Model::open(path);
  REQUIRE(model);
  auto ctx = Context::create(*model, {.n_ctx = 64, .n_threads = 1});
  REQUIRE(ctx);
  std::vector<int32_t> a = {1, 403, 407, 261, 378, 432, 322};
  std::vector<int32_t> b = {1, 403, 407, 261, 300, 301};
  REQUIRE(ctx->eval(a));
  REQUIRE(ctx->truncate(4));
  auto reused = ctx->eval(std::span<const int32_t>(b).subspan(4));
  REQUIRE(reused);
  std::vector<float> r(reused->begin(), reused->end());
  ctx->reset();
  auto fresh = ctx->eval(b);
  REQUIRE(fresh);
  std::vector<float> f(fresh->begin(), fresh->end());
  double md = 0;
  for (size_t i = 0; i < r.size(); ++i) md = std::max(md, static_cast<double>(std::fabs(r[i] - f[i])));
  CHECK(md < 1e-4);
  CHECK(ctx->n_past() == 6);
}

TEST_CASE("forward: bad input is refused without touching the cache" * doctest::test_suite("shared")) {
  const std::string path = tinyslm_test::shared_file("models/stories260K.gguf");
  if (path.empty()) return;
  auto model = Model::open(path);
  REQUIRE(model);
  auto ctx = Context::create(*model, {.n_ctx = 8, .n_threads = 1});
  REQUIRE(ctx);
  std::vector<int32_t> bad = {1, 512};
  auto r = ctx->eval(bad);
  REQUIRE(!r);
  CHECK(r.error().code() == Errc::out_of_range);
  CHECK(r.error().message().find("512") != std::string::npos);
  CHECK(ctx->n_past() == 0);
  std::vector<int32_t> six = {1, 2, 3, 4, 5, 6};
  REQUIRE(ctx->eval(six));
  auto full = ctx->eval(std::span<const int32_t>(six).subspan(0, 3));
  REQUIRE(!full);
  CHECK(full.error().code() == Errc::out_of_range);
  CHECK(full.error().message().find("context full") != std::string::npos);
  CHECK(ctx->n_past() == 6);
  CHECK(!ctx->eval(std::span<const int32_t>()));
  CHECK(!ctx->truncate(7));
  CHECK(!Context::create(*model, {.n_ctx = 0}));
}

// ---------------------------------------------------------------------------------------
// ops: SIMD paths against the scalar reference, kernels against plain double formulas.

namespace {
struct TestRng {
  uint64_t s;
  float next() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>((s >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
  }
};
}  // namespace

TEST_CASE("ops: exp, activations, norms and RoPE against double formulas") {
  for (float x = -80.0f; x < 80.0f; x += 0.37f) {
    const double ref = std::exp(static_cast<double>(x));
    CHECK(std::fabs(ops::detail::exp_f32(x) - ref) <= 4e-7 * ref);
  }
  CHECK(ops::detail::exp_f32(-INFINITY) == 0.0f);
  CHECK(ops::detail::exp_f32(-200.0f) == 0.0f);

  TestRng rng{7};
  std::vector<float> g(203), u(203), out(203), ref(203);
  for (size_t i = 0; i < g.size(); ++i) g[i] = 6 * rng.next(), u[i] = rng.next();
  ops::silu_mul(g.data(), u.data(), out.data(), 203);
  for (size_t i = 0; i < g.size(); ++i) {
    const double x = g[i];
    CHECK(std::fabs(out[i] - x / (1 + std::exp(-x)) * u[i]) < 1e-5);
  }
  ops::gelu_mul(g.data(), u.data(), out.data(), 203);
  for (size_t i = 0; i < g.size(); ++i) {
    const double x = g[i];
    const double ge = 0.5 * x * (1 + std::tanh(0.7978845608028654 * x * (1 + 0.044715 * x * x)));
    CHECK(std::fabs(out[i] - ge * u[i]) < 1e-5);
  }
  // SIMD and scalar builds of the same body agree to rounding.
  ops::detail::silu_mul_scalar(g.data(), u.data(), ref.data(), 203);
  ops::silu_mul(g.data(), u.data(), out.data(), 203);
  for (size_t i = 0; i < g.size(); ++i) CHECK(std::fabs(out[i] - ref[i]) <= 1e-6 * (1 + std::fabs(ref[i])));

  std::vector<float> w(203);
  for (auto& x : w) x = 1 + 0.1f * rng.next();
  ops::rms_norm(g.data(), w.data(), out.data(), 203, 1e-6f);
  double ss = 0;
  for (float x : g) ss += static_cast<double>(x) * x;
  const double sc = 1 / std::sqrt(ss / 203 + 1e-6);
  for (size_t i = 0; i < g.size(); ++i) CHECK(std::fabs(out[i] - g[i] * sc * w[i]) < 1e-5);

  // RoPE: position 7, base 10000, 16 rotated dims of a 20-dim head, llama3-style factors.
  std::vector<float> ff(8);
  for (size_t i = 0; i < 8; ++i) ff[i] = 1.0f + static_cast<float>(i);
  std::vector<float> cs(16);
  ops::rope_angles(7, 16, 10000.0f, 0.5f, ff.data(), cs.data());
  for (auto layout : {ops::RopeLayout::normal, ops::RopeLayout::neox}) {
    std::vector<float> x(20), y;
    for (auto& v : x) v = rng.next();
    y = x;
    ops::rope_apply(y.data(), 1, 20, 16, cs.data(), layout);
    for (int i = 0; i < 8; ++i) {
      const double theta = 0.5 * 7 * std::pow(10000.0, -2.0 * i / 16) / ff[static_cast<size_t>(i)];
      const int a = layout == ops::RopeLayout::normal ? 2 * i : i;
      const int b = layout == ops::RopeLayout::normal ? 2 * i + 1 : i + 8;
      CHECK(std::fabs(y[static_cast<size_t>(a)] - (x[static_cast<size_t>(a)] * std::cos(theta) - x[static_cast<size_t>(b)] * std::sin(theta))) < 1e-5);
      CHECK(std::fabs(y[static_cast<size_t>(b)] - (x[static_cast<size_t>(a)] * std::sin(theta) + x[static_cast<size_t>(b)] * std::cos(theta))) < 1e-5);
    }
    for (int i = 16; i < 20; ++i) CHECK(y[static_cast<size_t>(i)] == x[static_cast<size_t>(i)]);
  }
}

TEST_CASE("ops: attention (prefill and decode paths) against a double reference") {
  struct Setup {
    int64_t n_head, n_head_kv, hd, n_swa;
    float softcap;
  };
  for (Setup su : {Setup{4, 2, 64, 0, 0.0f}, Setup{3, 1, 48, 5, 0.0f}, Setup{2, 2, 128, 0, 10.0f}, Setup{8, 2, 64, 7, 0.0f}}) {
    CAPTURE(su.hd);
    CAPTURE(su.n_swa);
    const int64_t n_tok = 23, ctx = 32, hd = su.hd;
    ops::AttentionShape a{su.n_head, su.n_head_kv, hd, hd, 1.0f / std::sqrt(static_cast<float>(hd)), su.softcap, su.n_swa};
    TestRng rng{static_cast<uint64_t>(hd * 31 + su.n_swa)};
    std::vector<float> q(static_cast<size_t>(n_tok * su.n_head * hd)), kf(static_cast<size_t>(su.n_head_kv * ctx * hd)),
        vf(kf.size());
    for (auto& x : q) x = 2 * rng.next();
    for (auto& x : kf) x = 2 * rng.next();
    for (auto& x : vf) x = rng.next();
    std::vector<uint16_t> k16(kf.size()), v16(vf.size());
    for (size_t i = 0; i < kf.size(); ++i) {
      k16[i] = fp32_to_fp16(kf[i]);
      v16[i] = fp32_to_fp16(vf[i]);
      kf[i] = fp16_to_fp32(k16[i]);
      vf[i] = fp16_to_fp32(v16[i]);
    }
    // Reference: plain softmax attention in double.
    const int64_t width = su.n_head * hd;
    std::vector<double> ref(static_cast<size_t>(n_tok * width));
    for (int64_t i = 0; i < n_tok; ++i)
      for (int64_t h = 0; h < su.n_head; ++h) {
        const int64_t g = h / (su.n_head / su.n_head_kv);
        const int64_t lo = su.n_swa > 0 ? std::max<int64_t>(0, i - su.n_swa + 1) : 0;
        std::vector<double> sc;
        for (int64_t j = lo; j <= i; ++j) {
          double d = 0;
          for (int64_t c = 0; c < hd; ++c)
            d += static_cast<double>(q[static_cast<size_t>((i * su.n_head + h) * hd + c)]) * kf[static_cast<size_t>((g * ctx + j) * hd + c)];
          d *= a.scale;
          if (su.softcap > 0) d = su.softcap * std::tanh(d / su.softcap);
          sc.push_back(d);
        }
        double mx = *std::max_element(sc.begin(), sc.end()), sum = 0;
        for (auto& x : sc) sum += (x = std::exp(x - mx));
        for (int64_t c = 0; c < hd; ++c) {
          double o = 0;
          for (int64_t j = lo; j <= i; ++j) o += sc[static_cast<size_t>(j - lo)] / sum * vf[static_cast<size_t>((g * ctx + j) * hd + c)];
          ref[static_cast<size_t>(i * width + h * hd + c)] = o;
        }
      }
    ops::AttentionScratch scratch;
    REQUIRE(scratch.reserve(a, ctx, 2));
    ThreadPool pool(2);
    // Prefill: all 23 queries at once (4-query blocks and a tail of 3).
    std::vector<float> out(static_cast<size_t>(n_tok * width));
    ops::attention(a, q.data(), width, n_tok, 0, k16.data(), v16.data(), ctx, out.data(), width, scratch, pool.parallel());
    // Decode: one query at a time.
    std::vector<float> out1(out.size());
    for (int64_t i = 0; i < n_tok; ++i)
      ops::attention(a, q.data() + i * width, width, 1, i, k16.data(), v16.data(), ctx, out1.data() + i * width, width,
                     scratch, ParallelFor{});
    double e_pre = 0, e_dec = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      e_pre = std::max(e_pre, std::fabs(out[i] - ref[i]));
      e_dec = std::max(e_dec, std::fabs(out1[i] - ref[i]));
    }
    // fp16 rounding of Q and of the probabilities (as llama.cpp) bounds the difference.
    CHECK(e_pre < 2e-3);
    CHECK(e_dec < 2e-3);
  }
}

TEST_CASE("forward: MoE routing statistics add up and match token-by-token decode" * doctest::test_suite("shared")) {
  const std::string path = tinyslm_test::shared_file("models/synthetic/syn-olmoe-Q8_0.gguf");
  if (path.empty()) return;
  auto model = Model::open(path);
  REQUIRE(model);
  const HParams& hp = model->hparams();
  std::vector<int32_t> toks;
  for (int i = 0; i < 24; ++i) toks.push_back(static_cast<int32_t>((i * 7919 + 13) % hp.n_vocab));
  const uint64_t n = toks.size();

  // One batch with every row kept: n * k selections in every layer.
  auto batch = Context::create(*model, {.n_ctx = 64, .n_threads = 2, .all_logits = true});
  REQUIRE(batch);
  const MoeStats* sb = batch->moe_stats();
  REQUIRE(sb != nullptr);
  REQUIRE(sb->n_layer() == hp.n_layer);
  auto cfg = read_moe_config(model->gguf());
  REQUIRE(cfg);
  const auto k = static_cast<uint64_t>(cfg->n_expert_used);
  REQUIRE(k > 0);
  for (int64_t il = 0; il < hp.n_layer; ++il) CHECK(sb->layer_total(il) == 0);
  REQUIRE(batch->eval(toks));
  for (int64_t il = 0; il < hp.n_layer; ++il) CHECK(sb->layer_total(il) == n * k);

  // The same tokens one at a time (the decode path): the same experts, counted the same.
  auto step = Context::create(*model, {.n_ctx = 64, .n_threads = 1});
  REQUIRE(step);
  for (int32_t t : toks) REQUIRE(step->eval(std::span<const int32_t>(&t, 1)));
  const MoeStats* ss = step->moe_stats();
  REQUIRE(ss != nullptr);
  for (int64_t il = 0; il < hp.n_layer; ++il)
    for (int64_t e = 0; e < sb->n_expert(); ++e) {
      INFO("layer " << il << " expert " << e);
      CHECK(ss->count(il, e) == sb->count(il, e));
    }

  // Without all_logits the last layer runs only the chunk's last token.
  auto last = Context::create(*model, {.n_ctx = 64, .n_threads = 1});
  REQUIRE(last);
  REQUIRE(last->eval(toks));
  for (int64_t il = 0; il + 1 < hp.n_layer; ++il) CHECK(last->moe_stats()->layer_total(il) == n * k);
  CHECK(last->moe_stats()->layer_total(hp.n_layer - 1) == k);
  last->reset_moe_stats();
  for (int64_t il = 0; il < hp.n_layer; ++il) CHECK(last->moe_stats()->layer_total(il) == 0);

  // A dense model has none.
  const std::string dense = tinyslm_test::shared_file("models/synthetic/syn-qwen2-Q8_0.gguf");
  if (dense.empty()) return;
  auto dm = Model::open(dense);
  REQUIRE(dm);
  auto dc = Context::create(*dm, {.n_ctx = 16});
  REQUIRE(dc);
  CHECK(dc->moe_stats() == nullptr);
}

TEST_CASE("memory_estimate: mixture-of-experts files, against what a context really allocates" * doctest::test_suite("shared")) {
  for (const char* rel : {"models/synthetic/syn-olmoe-Q8_0.gguf", "models/synthetic/syn-qwen2moe-Q4_K_M.gguf",
                          "models/synthetic/syn-qwen3moe-Q8_0.gguf", "models/synthetic/syn-mixtral-Q8_0.gguf", "models/synthetic/syn-qwen3-Q8_0.gguf"}) {
    const std::string path = tinyslm_test::shared_file(rel);
    if (path.empty()) return;
    INFO(rel);
    const int64_t ctx = 512;
    const int threads = 2;
    auto est = memory_estimate(path, ctx, threads);
    REQUIRE(est);
    auto f = GgufFile::open(path);
    REQUIRE(f);
    uint64_t tensor_bytes = 0;
    for (const auto& t : f->tensors()) tensor_bytes += t.n_bytes;
    CHECK(est->weights == tensor_bytes);
#if defined(__GLIBC__) && defined(NDEBUG) && !defined(__SANITIZE_ADDRESS__)
    // Heap growth from opening the model to after a prefill and a decode step, plus the mapped
    // tensor bytes. The estimate also counts a session's tokenizer and sampler, which a bare
    // context lacks, yet it comes to 0.96 of this measure on the dense syn-qwen3 (listed last,
    // for comparison) and 0.95 to 1.09 on the MoE files; before it counted the MoE scratch it
    // was 0.66 on syn-qwen2moe (shared expert) and 0.81 on syn-olmoe.
    const auto heap = [] {
      struct mallinfo2 mi = mallinfo2();
      return static_cast<uint64_t>(mi.uordblks + mi.hblkhd);
    };
    const uint64_t h0 = heap();
    {
      auto m = Model::open(path);
      REQUIRE(m);
      auto c = Context::create(*m, {.n_ctx = ctx, .n_threads = threads});
      REQUIRE(c);
      std::vector<int32_t> toks(300);
      for (size_t i = 0; i < toks.size(); ++i) toks[i] = static_cast<int32_t>((i * 31 + 7) % 500);
      REQUIRE(c->eval(toks));
      REQUIRE(c->eval(std::span<const int32_t>(toks.data(), 1)));
      const uint64_t used = heap() - h0 + m->weight_bytes();
      const double ratio = static_cast<double>(est->total()) / static_cast<double>(used);
      MESSAGE(std::string(rel) << ": estimate " << est->total() << " bytes, measured " << used << " (ratio " << ratio << ")");
      CHECK(ratio > 0.9);
      CHECK(ratio < 1.5);
    }
#endif
  }
}

// ---------------------------------------------------------------------------------------
// Whole forward passes on the random tiny models of tests/model_builder.hpp (no ../shared):
// every architecture, several block types, every matmul SIMD path against the scalar one.
//
// Bounds, relative to the scalar run's logit range, at every prompt position (prefill, GEMM)
// and every decode step (GEMV). The SIMD paths quantize the activations bit-exactly as the
// scalar path does and their integer dot products are exact; they differ only in the order of
// the float sums over blocks, about 1e-7 of the range, and that is what most steps measure.
// Now and then such a difference moves one activation across a rounding boundary of the next
// 8-bit quantization (or of the F16 KV cache) and that value changes by a whole step, amax/127
// of its block; in models this small one such step moves the logits by 0.1-1.3% of the range,
// and a step in a key or value stays in the cache for the following positions. So:
//  - quantized weights: every step within 3e-2 (we measure up to 1.3e-2, as llama.cpp's own
//    quantized logits move by about 1.5% when only its KV precision changes), and at most a
//    quarter of the steps beyond 1e-4 (a wrong kernel would move every step; the rounding
//    flips are rare events: we measure 11% of the steps);
//  - F32 / F16 weights: 2e-3 (F16 rounds the activations to 11 bits, so flips are frequent
//    but each is small: we measure up to 6.6e-4).
// The argmax must agree where the scalar run's top two are further apart than twice the bound.
// The ops (norms, softmax, RoPE, attention) pick their own SIMD path, the same in every run.
//
// Threads: 2 threads split rows, never a sum, so their logits equal 1 thread's bit for bit.
#include <cstring>

#include "model_builder.hpp"

namespace {

constexpr double kSimdBoundFloat = 2e-3;
constexpr double kSimdBoundQuant = 3e-2;
constexpr double kSimdNoFlip = 1e-4;

struct TinyRun {
  std::vector<std::vector<float>> logits;  // per prompt position, then per decode step
};

// 8 prompt tokens in one eval (all logits), then 4 decode steps of fixed tokens.
TinyRun run_tiny(const Model& m, int n_threads) {
  ContextParams p;
  p.n_ctx = 32;
  p.n_batch = 16;
  p.n_threads = n_threads;
  p.all_logits = true;
  auto ctx = Context::create(m, p);
  REQUIRE(ctx);
  TinyRun r;
  const int32_t n_vocab = static_cast<int32_t>(m.hparams().n_vocab);
  std::vector<int32_t> prompt;
  for (int32_t i = 0; i < 8; ++i) prompt.push_back((i * 37 + 5) % n_vocab);
  auto out = ctx->eval(prompt);
  REQUIRE_MESSAGE(out, (out ? "" : out.error().message()));
  for (int64_t i = 0; i < 8; ++i) {
    auto l = ctx->logits(i);
    r.logits.emplace_back(l.begin(), l.end());
  }
  for (int32_t step = 0; step < 4; ++step) {
    const int32_t tok = (step * 53 + 11) % n_vocab;
    auto o = ctx->eval(std::span<const int32_t>(&tok, 1));
    REQUIRE(o);
    r.logits.emplace_back(o->begin(), o->end());
  }
  return r;
}

}  // namespace

TEST_CASE("forward: tiny models of every architecture, every SIMD path against scalar, 2 threads = 1") {
  std::vector<SimdLevel> levels;
  for (SimdLevel l : {SimdLevel::avx2, SimdLevel::avxvnni, SimdLevel::avx512, SimdLevel::neon, SimdLevel::highway})
    if (simd_level_supported(l)) levels.push_back(l);
  const TensorType types[] = {TensorType::F32, TensorType::F16, TensorType::Q8_0,
                              TensorType::Q4_0, TensorType::Q4_K, TensorType::Q6_K};
  double worst_float = 0, worst_quant = 0;
  int quant_steps = 0, quant_flipped = 0;
  for (const std::string& arch : tinyslm_test::tiny_archs()) {
    for (TensorType type : types) {
      const std::string type_name = tensor_type_name(type);
      CAPTURE(arch);
      CAPTURE(type_name);
      const auto bytes = tinyslm_test::model_bytes(tinyslm_test::tiny_spec(arch, type));
      REQUIRE(!bytes.empty());
      const bool quantized = !is_float_type(type);
      const double bound = quantized ? kSimdBoundQuant : kSimdBoundFloat;
      auto m = tinyslm_test::load_model(bytes);
      REQUIRE_MESSAGE(m, (m ? "" : m.error().message()));
      REQUIRE(set_simd_level(SimdLevel::scalar));
      const TinyRun ref = run_tiny(*m, 1);
      for (SimdLevel l : levels) {
        const std::string level = simd_level_name(l);
        CAPTURE(level);
        REQUIRE(set_simd_level(l));
        const TinyRun got = run_tiny(*m, 1);
        REQUIRE(got.logits.size() == ref.logits.size());
        for (size_t s = 0; s < ref.logits.size(); ++s) {
          CAPTURE(s);
          const auto& a = ref.logits[s];
          const auto& b = got.logits[s];
          const auto [lo, hi] = std::minmax_element(a.begin(), a.end());
          const double range = static_cast<double>(*hi) - *lo;
          REQUIRE(std::isfinite(range));
          REQUIRE(range > 0);
          double diff = 0;
          for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
          double& worst = quantized ? worst_quant : worst_float;
          worst = std::max(worst, diff / range);
          if (quantized) {
            ++quant_steps;
            if (diff > kSimdNoFlip * range) ++quant_flipped;
          }
          CHECK(diff <= bound * range);
          const auto top = top_ids(a, 2);
          if (a[static_cast<size_t>(top[0])] - a[static_cast<size_t>(top[1])] > 2 * bound * range)
            CHECK(argmax(b) == top[0]);
        }
      }
      if (type == TensorType::Q4_K || type == TensorType::F16) {
        reset_simd_level();
        const TinyRun one = run_tiny(*m, 1), two = run_tiny(*m, 2);
        for (size_t s = 0; s < one.logits.size(); ++s)
          CHECK(std::memcmp(one.logits[s].data(), two.logits[s].data(), one.logits[s].size() * sizeof(float)) == 0);
      }
      reset_simd_level();
    }
  }
  CHECK(quant_flipped * 4 <= quant_steps);
  MESSAGE("SIMD against scalar, largest logit difference over the range: F32/F16 " << worst_float
          << ", quantized " << worst_quant << "; quantized steps beyond " << kSimdNoFlip << ": "
          << quant_flipped << " of " << quant_steps);
}
