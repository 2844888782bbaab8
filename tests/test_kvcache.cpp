// kvcache: the quantized KV cache (kv_quant.hpp). Rows stored and read back within the block's
// rounding; every SIMD path of the K . q and V kernels equal to the scalar reference; quantized
// attention against a double-precision reference over the same blocks (GQA, sliding window,
// prefill and decode, thread count); head sizes the block does not divide refused; session
// state saved and loaded with a quantized cache (and refused by a cache of another type);
// memory_estimate follows the types. Shared: llama.cpp's goldens with f16, q8_0 and q4_0 caches
// (../shared/golden/kvcache, tolerances from its README) and perplexity with a q8_0 cache
// within 0.5% of f16.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "json.hpp"
#include "model_builder.hpp"
#include "test_support.hpp"
#include "tinyslm.hpp"

using namespace tinyslm;
using tinyslm_test::Json;

namespace {

struct TestRng {
  uint64_t s;
  float uniform() {
    return static_cast<float>(static_cast<double>(tinyslm_test::splitmix64(s) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
  }
};

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::vector<SimdLevel> levels() {
  std::vector<SimdLevel> v;
  for (int l = 0; l < kSimdLevelCount; ++l)
    if (simd_level_supported(static_cast<SimdLevel>(l))) v.push_back(static_cast<SimdLevel>(l));
  return v;
}

// A cache layer of n_kv heads x ctx rows of head_dim values of type t, from random data.
std::vector<uint8_t> random_rows(KvType t, int64_t n_kv, int64_t ctx, int64_t hd, uint64_t seed) {
  TestRng r{seed};
  const int64_t rb = kv_row_bytes(t, hd);
  std::vector<uint8_t> out(static_cast<size_t>(n_kv * ctx * rb));
  std::vector<float> x(static_cast<size_t>(hd));
  for (int64_t i = 0; i < n_kv * ctx; ++i) {
    for (auto& v : x) v = r.uniform() * 2.0f;
    kv_store_row(t, x.data(), hd, out.data() + i * rb);
  }
  return out;
}

// Attention in double over the dequantized rows (soft-capped scores when asked), with q
// quantized to q8_0 as the kernel does.
void reference_attention(const ops::AttentionShape& a, const std::vector<float>& q, int64_t n_tokens, int64_t pos0,
                         ops::KvRows k, ops::KvRows v, int64_t ctx, std::vector<float>& out) {
  const int64_t hk = a.head_dim_k, hv = a.head_dim_v, group = a.n_head / a.n_head_kv;
  std::vector<float> kr(static_cast<size_t>(hk)), vr(static_cast<size_t>(hv)), qd(static_cast<size_t>(hk));
  out.assign(static_cast<size_t>(n_tokens * a.n_head * hv), 0.0f);
  for (int64_t i = 0; i < n_tokens; ++i)
    for (int64_t h = 0; h < a.n_head; ++h) {
      const float* qi = q.data() + (i * a.n_head + h) * hk;
      std::vector<BlockQ8_0> qq(static_cast<size_t>(hk / 32));
      for (int64_t b = 0; b < hk / 32; ++b) quantize_block(qi + b * 32, &qq[static_cast<size_t>(b)]);
      kv_load_row(KvType::q8_0, reinterpret_cast<const uint8_t*>(qq.data()), hk, qd.data());
      const int64_t p = pos0 + i, lo = a.n_swa > 0 ? std::max<int64_t>(0, p - a.n_swa + 1) : 0, g = h / group;
      std::vector<double> s;
      for (int64_t j = lo; j <= p; ++j) {
        kv_load_row(k.type, k.data + (g * ctx + j) * k.row_bytes, hk, kr.data());
        double d = 0;
        for (int64_t e = 0; e < hk; ++e) d += static_cast<double>(kr[static_cast<size_t>(e)]) * qd[static_cast<size_t>(e)];
        s.push_back(a.softcap > 0 ? a.softcap * std::tanh(d * a.scale / a.softcap) : d * a.scale);
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int64_t j = lo; j <= p; ++j) {
        kv_load_row(v.type, v.data + (g * ctx + j) * v.row_bytes, hv, vr.data());
        for (int64_t e = 0; e < hv; ++e)
          out[static_cast<size_t>((i * a.n_head + h) * hv + e)] +=
              static_cast<float>(s[static_cast<size_t>(j - lo)] / sum * vr[static_cast<size_t>(e)]);
      }
    }
}

}  // namespace

TEST_CASE("kvcache: type names parse; rows read back within the block's rounding") {
  for (KvType t : {KvType::f16, KvType::q8_0, KvType::q4_0}) {
    auto p = parse_kv_type(kv_type_name(t));
    REQUIRE(p);
    CHECK(*p == t);
  }
  auto bad = parse_kv_type("q5_1");
  REQUIRE(!bad);
  CHECK(contains(bad.error().message(), "q5_1"));
  CHECK(kv_row_bytes(KvType::q8_0, 64) == 68);
  CHECK(kv_row_bytes(KvType::q4_0, 64) == 36);
  CHECK(kv_row_bytes(KvType::f16, 64) == 128);
  TestRng r{11};
  std::vector<float> x(128), y(128);
  std::vector<uint8_t> row(256);
  for (KvType t : {KvType::f16, KvType::q8_0, KvType::q4_0}) {
    for (auto& v : x) v = r.uniform() * 3.0f;
    kv_store_row(t, x.data(), 128, row.data());
    kv_load_row(t, row.data(), 128, y.data());
    for (int b = 0; b < 4; ++b) {
      float amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[static_cast<size_t>(b * 32 + j)]));
      // half a step of the block's scale (plus the fp16 rounding of the scale itself)
      // q4_0 maps the signed maximum to -8, so the other end clamps at 7: up to a whole step there
      const float step = t == KvType::f16 ? amax / 1024 : t == KvType::q8_0 ? amax / 127 : 2 * amax / 8;
      for (int j = 0; j < 32; ++j)
        CHECK(std::fabs(x[static_cast<size_t>(b * 32 + j)] - y[static_cast<size_t>(b * 32 + j)]) <= 0.51f * step + 1e-3f * amax);
    }
  }
}

TEST_CASE("kvcache: every SIMD path of the K.q scores and the V sums equals the scalar reference") {
  const int64_t n = 37, hd = 96, nb = hd / 32, M = 3, ld = n + 5;  // 3 heads of a group, 4 blocks of 8 rows + 5
  TestRng r{5};
  std::vector<float> qf(static_cast<size_t>(M * hd)), p(static_cast<size_t>(M * ld));
  for (auto& v : qf) v = r.uniform();
  for (auto& v : p) v = (r.uniform() + 1.0f) / static_cast<float>(n);
  std::vector<BlockQ8_0> q(static_cast<size_t>(M * nb));
  for (int64_t b = 0; b < M * nb; ++b) quantize_block(qf.data() + b * 32, &q[static_cast<size_t>(b)]);
  for (KvType t : {KvType::q8_0, KvType::q4_0}) {
    const std::vector<uint8_t> rows = random_rows(t, 1, n, hd, 9);
    const ops::detail::GroupRows g{rows.data(), kv_row_bytes(t, hd), n, nb, M};
    std::vector<float> s_ref(static_cast<size_t>(M * ld)), acc_ref(static_cast<size_t>(M * hd), 0.0f);
    ops::detail::kq_scores_scalar(t, g, q.data(), s_ref.data(), ld);
    ops::detail::v_mix_scalar(t, g, p.data(), ld, acc_ref.data());
    for (SimdLevel l : levels()) {
      REQUIRE(set_simd_level(l));
      std::vector<float> s(static_cast<size_t>(M * ld)), acc(static_cast<size_t>(M * hd), 0.0f);
      ops::detail::kq_scores(t, g, q.data(), s.data(), ld);
      ops::detail::v_mix(t, g, p.data(), ld, acc.data());
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < n; ++j) {
          const float want = s_ref[static_cast<size_t>(m * ld + j)], got = s[static_cast<size_t>(m * ld + j)];
          CHECK_MESSAGE(std::fabs(got - want) <= 1e-5f * (1.0f + std::fabs(want)),
                        kv_type_name(t) << " " << simd_level_name(l) << " head " << m << " score " << j);
        }
      for (size_t d = 0; d < acc.size(); ++d)
        CHECK_MESSAGE(std::fabs(acc[d] - acc_ref[d]) <= 1e-5f, kv_type_name(t) << " " << simd_level_name(l) << " value " << d);
    }
    reset_simd_level();
  }
  // the f32 softmax: every path equal to the scalar one, probabilities summing to 1
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = r.uniform() * 8.0f;
  for (float cap : {0.0f, 5.0f}) {
    std::vector<float> ref = x;
    ops::detail::softmax_f32_scalar(ref.data(), n, 0.5f, cap);
    double sum = 0;
    for (float v : ref) sum += v;
    CHECK(sum == doctest::Approx(1.0).epsilon(1e-5));
    for (SimdLevel l : levels()) {
      REQUIRE(set_simd_level(l));
      std::vector<float> y = x;
      ops::detail::softmax_f32(y.data(), n, 0.5f, cap);
      for (int64_t j = 0; j < n; ++j) CHECK(std::fabs(y[static_cast<size_t>(j)] - ref[static_cast<size_t>(j)]) <= 1e-6f);
    }
    reset_simd_level();
  }
}

TEST_CASE("kvcache: quantized attention equals a double reference (GQA, window, soft-cap, prefill, decode, threads)") {
  const int64_t ctx = 40, hk = 64, hv = 32;
  for (KvType tk : {KvType::q8_0, KvType::q4_0, KvType::f16})
    for (KvType tv : {KvType::q8_0, KvType::q4_0})
      for (int64_t swa : {int64_t(0), int64_t(7)})
        for (int64_t n_tokens : {int64_t(1), int64_t(9)}) {
          const ops::AttentionShape a{6, 2, hk, hv, 0.125f, swa ? 4.0f : 0.0f, swa};
          const std::vector<uint8_t> kb = random_rows(tk, 2, ctx, hk, 21), vb = random_rows(tv, 2, ctx, hv, 22);
          const ops::KvRows k{kb.data(), tk, kv_row_bytes(tk, hk)}, v{vb.data(), tv, kv_row_bytes(tv, hv)};
          TestRng r{3};
          std::vector<float> q(static_cast<size_t>(n_tokens * 6 * hk));
          for (auto& x : q) x = r.uniform();
          const int64_t pos0 = ctx - n_tokens;
          std::vector<float> ref;
          reference_attention(a, q, n_tokens, pos0, k, v, ctx, ref);
          for (int threads : {1, 3}) {
            ThreadPool pool(threads);
            ops::AttentionScratch scratch;
            REQUIRE(scratch.reserve(a, ctx, threads, false));
            std::vector<float> out(ref.size());
            ops::attention_quant(a, q.data(), 6 * hk, n_tokens, pos0, k, v, ctx, out.data(), 6 * hv, scratch,
                                 pool.parallel());
            double worst = 0;
            for (size_t i = 0; i < out.size(); ++i) worst = std::max(worst, std::fabs(double(out[i]) - ref[i]));
            // an f16 K rounds q to fp16 instead of q8_0: a few 1e-3 of the reference's q
            CHECK_MESSAGE(worst <= (tk == KvType::f16 ? 2e-2 : 1e-4),
                          kv_type_name(tk) << "/" << kv_type_name(tv) << " swa " << swa << " tokens " << n_tokens
                                           << " threads " << threads << ": " << worst);
          }
        }
}

TEST_CASE("kvcache: a head size the block does not divide is refused, as llama.cpp refuses it") {
  HParams hp;
  hp.n_layer = 1;
  hp.n_head = 2;
  hp.n_head_kv = 1;
  hp.head_dim_k = 8;
  hp.head_dim_v = 48;
  auto c = KvCache::create(hp, 16, KvType::q8_0, KvType::f16);
  REQUIRE(!c);
  CHECK(c.error().code() == Errc::unsupported);
  CHECK(contains(c.error().message(), "K cache type q8_0 with block size 32 does not divide n_embd_head_k=8"));
  hp.head_dim_k = 64;
  auto cv = KvCache::create(hp, 16, KvType::f16, KvType::q4_0);
  REQUIRE(!cv);
  CHECK(contains(cv.error().message(), "V cache type q4_0 with block size 32 does not divide n_embd_head_v=48"));
  CHECK(KvCache::create(hp, 16, KvType::q8_0, KvType::f16));

  tinyslm_test::ModelSpec spec = tinyslm_test::tiny_spec("llama", TensorType::F16);
  spec.n_embd = 256;
  spec.n_head = 32;  // head size 8
  const auto bytes = tinyslm_test::model_bytes(spec);
  auto m = tinyslm_test::load_model(bytes);
  REQUIRE(m);
  auto ctx = Context::create(*m, {.n_ctx = 32, .type_k = KvType::q8_0, .type_v = KvType::q8_0});
  REQUIRE(!ctx);
  CHECK(contains(ctx.error().message(), "does not divide n_embd_head_k=8"));
  auto s = Session::create(*m, {.context = 32, .type_v = KvType::q4_0});
  REQUIRE(!s);
  CHECK(contains(s.error().message(), "does not divide n_embd_head_v=8"));
  auto f = GgufFile::from_memory(bytes.data(), bytes.size(), "tiny.gguf");
  REQUIRE(f);
  CHECK(!memory_estimate(*f, 32, 1, 512, KvType::q8_0, KvType::q8_0));
}

TEST_CASE("kvcache: a quantized cache in a Context follows its f16 run; memory follows the type") {
  for (const char* arch : {"llama", "gemma3", "qwen3"}) {
    const auto bytes = tinyslm_test::model_bytes(tinyslm_test::tiny_spec(arch, TensorType::F16));
    auto m = tinyslm_test::load_model(bytes);
    REQUIRE(m);
    std::vector<int32_t> toks;
    for (int i = 0; i < 20; ++i) toks.push_back((i * 37 + 5) % 128);
    std::vector<float> base;
    for (KvType t : {KvType::f16, KvType::q8_0, KvType::q4_0}) {
      auto ctx = Context::create(*m, {.n_ctx = 64, .n_threads = 2, .type_k = t, .type_v = t});
      REQUIRE_MESSAGE(ctx, arch << ": " << (ctx ? "" : ctx.error().message()));
      // prefill of 12, then decode one by one: the same as one prefill of all of them
      auto a = ctx->eval(std::span<const int32_t>(toks.data(), 12));
      REQUIRE(a);
      for (size_t i = 12; i < toks.size(); ++i) REQUIRE(ctx->eval(std::span<const int32_t>(&toks[i], 1)));
      const std::vector<float> stepwise(ctx->last_logits().begin(), ctx->last_logits().end());
      ctx->reset();
      auto whole = ctx->eval(toks);
      REQUIRE(whole);
      // prefill (GEMM) and decode (GEMV) round activations differently: a few 1e-4 of the range
      double step_diff = 0;
      for (size_t i = 0; i < stepwise.size(); ++i) step_diff = std::max(step_diff, std::fabs(double(stepwise[i]) - (*whole)[i]));
      CHECK_MESSAGE(step_diff <= 3e-3, arch << " " << kv_type_name(t) << ": " << step_diff);
      if (t == KvType::f16) base = stepwise;
      double worst = 0, lo = 1e30, hi = -1e30;
      for (size_t i = 0; i < base.size(); ++i) {
        worst = std::max(worst, std::fabs(double(stepwise[i]) - base[i]));
        lo = std::min(lo, double(base[i]));
        hi = std::max(hi, double(base[i]));
      }
      CHECK_MESSAGE(worst <= (t == KvType::q4_0 ? 0.2 : 0.03) * (hi - lo), arch << " " << kv_type_name(t) << ": " << worst);
      const HParams& hp = m->hparams();
      CHECK(ctx->kv().bytes() == static_cast<size_t>(hp.n_layer * hp.n_head_kv * 64 *
                                                    (kv_row_bytes(t, hp.head_dim_k) + kv_row_bytes(t, hp.head_dim_v))));
      auto f = GgufFile::from_memory(bytes.data(), bytes.size(), "tiny.gguf");
      REQUIRE(f);
      auto est = memory_estimate(*f, 64, 2, 512, t, t);
      REQUIRE(est);
      CHECK(est->kv_cache == ctx->kv().bytes());
    }
  }
}

TEST_CASE("kvcache: session state round trip with a quantized cache; another cache type is refused") {
  const auto bytes = tinyslm_test::model_bytes(tinyslm_test::tiny_spec("llama", TensorType::F16));
  auto m = tinyslm_test::load_model(bytes);
  REQUIRE(m);
  std::vector<int32_t> toks;
  for (int i = 0; i < 16; ++i) toks.push_back((i * 53 + 3) % 128);
  auto a = Session::create(*m, {.context = 64, .type_k = KvType::q8_0, .type_v = KvType::q4_0});
  REQUIRE(a);
  REQUIRE(a->prefill(toks));
  const std::vector<uint8_t> state = a->save_state();
  const int32_t next = 7;
  REQUIRE(a->append(next));
  const std::vector<float> want(a->last_logits().begin(), a->last_logits().end());

  auto b = Session::create(*m, {.context = 32, .type_k = KvType::q8_0, .type_v = KvType::q4_0});
  REQUIRE(b);
  auto st = b->load_state(state);
  REQUIRE_MESSAGE(st, (st ? "" : st.error().message()));
  REQUIRE(b->append(next));
  const std::vector<float> got(b->last_logits().begin(), b->last_logits().end());
  CHECK(got == want);  // the same blocks, the same arithmetic: bit-identical

  for (auto [tk, tv] : {std::pair{KvType::f16, KvType::f16}, std::pair{KvType::q8_0, KvType::q8_0}}) {
    auto c = Session::create(*m, {.context = 64, .type_k = tk, .type_v = tv});
    REQUIRE(c);
    auto bad = c->load_state(state);
    REQUIRE(!bad);
    CHECK(contains(bad.error().message(), "q8_0/q4_0"));
    CHECK(c->n_past() == 0);
  }
  // an f16 state is refused by a quantized session too
  auto f16s = Session::create(*m, {.context = 64});
  REQUIRE(f16s);
  REQUIRE(f16s->prefill(toks));
  auto bad = a->load_state(f16s->save_state());
  REQUIRE(!bad);
  CHECK(contains(bad.error().message(), "f16/f16"));
}

// ---------------------------------------------------------------------------------------
// Shared: llama.cpp's goldens and perplexity.

namespace {

struct GoldenSummary {
  int prompts = 0, top1 = 0, top1_checked = 0, greedy_steps = 0;
  double worst_rel = 0;
};

int argmax(const std::vector<float>& v) {
  return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());
}

// One golden file with a cache of type t: last-position logits within rel * range, top-1 where
// llama.cpp's margin exceeds twice our logit difference, greedy ids fed from llama.cpp's
// run up to its first step whose margin is within twice the bound, their top-5 logits within
// the bound.
void check_golden(const std::string& model_rel, const std::string& golden_rel, KvType t, double rel,
                  GoldenSummary& sum) {
  const std::string mp = tinyslm_test::shared_file(model_rel), gp = tinyslm_test::shared_file(golden_rel);
  if (mp.empty() || gp.empty()) return;
  auto model = Model::open(mp);
  REQUIRE(model);
  const Json g = Json::parse(tinyslm_test::read_text(gp));
  auto ctx = Context::create(*model, {.n_ctx = 2048, .n_threads = 1, .type_k = t, .type_v = t});
  REQUIRE_MESSAGE(ctx, (ctx ? "" : ctx.error().message()));
  for (const Json& p : g["prompts"].items()) {
    const std::string where = golden_rel + " '" + p["id"].as_string() + "'";
    ctx->reset();
    auto lg = ctx->eval(p["eval_tokens"].int_list());
    REQUIRE(lg);
    std::vector<float> ours(lg->begin(), lg->end());
    const double range = p["last_stats"]["max"].as_number() - p["last_stats"]["min"].as_number();
    const double bound = rel * range;
    double diff = 0;
    const auto& ref = p["last_logits"].items();
    REQUIRE(ref.size() == ours.size());
    for (size_t i = 0; i < ref.size(); ++i) diff = std::max(diff, std::fabs(ours[i] - ref[i].as_number()));
    sum.worst_rel = std::max(sum.worst_rel, diff / range);
    ++sum.prompts;
    CHECK_MESSAGE(diff <= bound, where << ": logit difference " << diff << " > " << bound);
    const auto& top = p["last_top"].items();
    const double margin = top[0][1].as_number() - top[1][1].as_number();
    // our logits are within `diff` of llama.cpp's: its top two can only swap when closer than 2 diff
    if (margin > 2 * diff) {
      ++sum.top1_checked;
      const bool ok = argmax(ours) == top[0][0].as_int();
      sum.top1 += ok;
      CHECK_MESSAGE(ok, where << ": top-1 " << argmax(ours) << " != " << top[0][0].as_int());
    }
    const auto gt = p["greedy"]["tokens"].int_list();
    const auto& steps = p["greedy"]["step_top"].items();
    for (size_t s = 0; s < std::min<size_t>(16, gt.size()); ++s) {
      const auto& st = steps[s].items();
      if (st[0][1].as_number() - st[1][1].as_number() <= 2 * bound) break;
      double err = 0;
      for (const auto& e : st) err = std::max(err, std::fabs(ours[static_cast<size_t>(e[0].as_int())] - e[1].as_number()));
      CHECK_MESSAGE(err <= bound, where << " greedy step " << s << ": " << err << " > " << bound);
      CHECK_MESSAGE(argmax(ours) == gt[s], where << " greedy step " << s);
      ++sum.greedy_steps;
      const int32_t next = gt[s];
      auto step = ctx->eval(std::span<const int32_t>(&next, 1));
      REQUIRE(step);
      ours.assign(step->begin(), step->end());
    }
  }
}

// llama-perplexity's number: chunks of n_ctx from an empty cache, BOS first, second half scored.
double perplexity(const Model& model, const std::string& text, int64_t n_ctx, KvType t) {
  auto tok = Tokenizer::from_gguf(model.gguf());
  REQUIRE(tok);
  auto ids = tok->encode(text, true, false);
  REQUIRE(ids);
  auto ctx = Context::create(model, {.n_ctx = n_ctx, .n_threads = 2, .n_batch = n_ctx, .all_logits = true,
                                     .type_k = t, .type_v = t});
  REQUIRE_MESSAGE(ctx, (ctx ? "" : ctx.error().message()));
  double nll = 0;
  int64_t count = 0;
  const int64_t n_chunk = static_cast<int64_t>(ids->size()) / n_ctx;
  for (int64_t c = 0; c < n_chunk; ++c) {
    std::vector<int32_t> chunk(ids->begin() + c * n_ctx, ids->begin() + (c + 1) * n_ctx);
    if (tok->add_bos() && tok->bos() >= 0) chunk[0] = tok->bos();
    ctx->reset();
    REQUIRE(ctx->eval(chunk));
    for (int64_t j = n_ctx / 2; j < n_ctx - 1; ++j) {
      const auto row = ctx->logits(j);
      const float mx = *std::max_element(row.begin(), row.end());
      double s = 0;
      for (float x : row) s += std::exp(static_cast<double>(x - mx));
      nll -= static_cast<double>(row[static_cast<size_t>(chunk[static_cast<size_t>(j + 1)])] - mx) - std::log(s);
      ++count;
    }
  }
  return std::exp(nll / static_cast<double>(count));
}

}  // namespace

TEST_CASE("kvcache: llama.cpp's goldens with f16, q8_0 and q4_0 caches" * doctest::test_suite("shared")) {
  if (tinyslm_test::shared_file("golden/kvcache/README.md").empty()) return;
  for (const char* m : {"synth-llama3-tiny-F16", "synth-gemma3-tiny-F16", "synth-qwen3-tiny-F16", "stories260K"}) {
    const std::string model = std::string(m) == "stories260K" ? "models/stories260K.gguf"
                                                              : std::string("models/synthetic/") + m + ".gguf";
    for (KvType t : {KvType::f16, KvType::q8_0, KvType::q4_0}) {
      const std::string golden = std::string("golden/kvcache/") + m + "." + kv_type_name(t) + ".json";
      if (std::string(m) == "stories260K" && t != KvType::f16) {
        // no golden: llama.cpp refuses the cache (head size 8), and so do we
        auto model_ok = Model::open(tinyslm_test::shared_file(model));
        REQUIRE(model_ok);
        auto ctx = Context::create(*model_ok, {.n_ctx = 256, .type_k = t, .type_v = t});
        REQUIRE(!ctx);
        CHECK(contains(ctx.error().message(), "with block size 32 does not divide n_embd_head_k=8"));
        continue;
      }
      // README: f16 + FA vs the non-FA f16 path up to 8.4e-4 of the range at the last prompt
      // position, more on the greedy steps after a long prompt (FA sums V in fp16): 6e-3; q8_0 ~2%
      // of the range; q4_0 ~20% (llama.cpp's own q4_0 moves up to 16% from f16, ours is an
      // independent draw of the same rounding noise: 25%).
      const double rel = t == KvType::f16 ? 6e-3 : t == KvType::q8_0 ? 0.02 : 0.25;
      GoldenSummary s;
      check_golden(model, golden, t, rel, s);
      MESSAGE(golden << ": worst rel " << s.worst_rel << ", top-1 " << s.top1 << "/" << s.top1_checked
                     << ", greedy steps compared " << s.greedy_steps);
      CHECK(s.prompts == 9);
    }
  }
}

TEST_CASE("kvcache: perplexity with a q8_0 cache within 0.5% of f16" * doctest::test_suite("shared")) {
  const std::string text_path = tinyslm_test::shared_file("golden/ppl.txt");
  if (text_path.empty()) return;
  const std::string text = tinyslm_test::read_text(text_path);
  // llama-perplexity -c 128 -fa on -ctk q8_0 -ctv q8_0 (../shared/golden/kvcache/README.md)
  const struct {
    const char* model;
    double q8_llama;
  } cases[] = {{"models/synthetic/synth-llama3-tiny-F16.gguf", 880.6456},
               {"models/synthetic/synth-gemma3-tiny-F16.gguf", 395.7226}};
  for (const auto& c : cases) {
    const std::string mp = tinyslm_test::shared_file(c.model);
    if (mp.empty()) continue;
    auto model = Model::open(mp);
    REQUIRE(model);
    const double f16 = perplexity(*model, text, 128, KvType::f16);
    const double q8 = perplexity(*model, text, 128, KvType::q8_0);
    MESSAGE(std::string(c.model) << ": ppl f16 " << f16 << ", q8_0 " << q8 << " (llama.cpp q8_0 " << c.q8_llama << ")");
    CHECK(std::fabs(q8 - f16) <= 0.005 * f16);
    CHECK(std::fabs(q8 - c.q8_llama) <= 0.01 * c.q8_llama);
  }
}
