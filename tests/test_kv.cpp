// kv: the KV cache alone (store and read back through F16, layout, truncate, clear,
// reserve_tokens, advance, a full context) and through a Context on a tiny random model from
// model_builder.hpp (a full context refuses an eval without changing anything; a truncated
// prefix continues exactly as a fresh run). Random data from fixed seeds; no ../shared.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "model_builder.hpp"

using namespace tinyslm;

namespace {

struct TestRng {
  uint64_t s;
  uint64_t next() { return tinyslm_test::splitmix64(s); }
  float uniform() { return static_cast<float>(static_cast<double>(next() >> 11) * 0x1.0p-53 * 2.0 - 1.0); }
};

// IEEE binary16 from its fields, independently of the library.
double half_value(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
  double v;
  if (exp == 0) v = std::ldexp(man, -24);
  else if (exp == 31) v = man ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else v = std::ldexp(1024 + man, exp - 25);
  return sign ? -v : v;
}

HParams shape(int64_t n_layer, int64_t n_head_kv, int64_t hk, int64_t hv) {
  HParams hp;
  hp.n_layer = n_layer;
  hp.n_head = n_head_kv * 2;
  hp.n_head_kv = n_head_kv;
  hp.head_dim_k = hk;
  hp.head_dim_v = hv;
  return hp;
}

// The value stored for (layer, position, element): distinct everywhere, so a write that lands
// in another place shows.
float pattern(int64_t il, int64_t pos, int64_t e, float scale) {
  return scale * static_cast<float>((il * 131 + pos * 17 + e * 7) % 997 - 498) / 512.0f;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("kv: create refuses bad context lengths; sizes follow the shape") {
  for (int64_t n : {int64_t(0), int64_t(-1), (int64_t{1} << 24) + 1}) {
    auto c = KvCache::create(shape(2, 2, 64, 64), n);
    REQUIRE(!c);
    CHECK(c.error().code() == Errc::invalid_argument);
    CHECK(contains(c.error().message(), std::to_string(n)));
  }
  auto c = KvCache::create(shape(3, 2, 64, 32), 40);
  REQUIRE(c);
  CHECK(c->n_ctx() == 40);
  CHECK(c->size() == 0);
  CHECK(c->free() == 40);
  CHECK(c->bytes() == static_cast<size_t>(3 * 2 * 40 * (64 + 32) * 2));  // F16 keys and values
}

TEST_CASE("kv: store and read back through F16 at every layer, head and position") {
  const int64_t L = 3, G = 2, hk = 64, hv = 32, ctx = 24;
  auto c = KvCache::create(shape(L, G, hk, hv), ctx);
  REQUIRE(c);
  // Values exact in F16 (multiples of 1/512 below 1) come back exactly; the layout is
  // [layer][kv head][position][dim], so each head's keys are contiguous over positions.
  for (int64_t il = 0; il < L; ++il)
    for (int64_t pos = 0; pos < ctx; ++pos) {
      std::vector<float> k(static_cast<size_t>(G * hk)), v(static_cast<size_t>(G * hv));
      for (int64_t e = 0; e < G * hk; ++e) k[e] = pattern(il, pos, e, 1.0f);
      for (int64_t e = 0; e < G * hv; ++e) v[e] = pattern(il, pos, e + 5000, -1.0f);
      c->store(il, pos, k.data(), v.data());
    }
  for (int64_t il = 0; il < L; ++il)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t pos = 0; pos < ctx; ++pos) {
        const uint16_t* kr = c->k_layer(il) + (g * ctx + pos) * hk;
        const uint16_t* vr = c->v_layer(il) + (g * ctx + pos) * hv;
        for (int64_t d = 0; d < hk; ++d) CHECK(half_value(kr[d]) == pattern(il, pos, g * hk + d, 1.0f));
        for (int64_t d = 0; d < hv; ++d) CHECK(half_value(vr[d]) == pattern(il, pos, g * hv + d + 5000, -1.0f));
      }

  // Random values round to the nearest half: within half an ulp, 2^-11 relative in the normal
  // range (and 2^-25 absolute below it).
  TestRng rng{3};
  std::vector<float> k(static_cast<size_t>(G * hk)), v(static_cast<size_t>(G * hv));
  for (auto& x : k) x = std::ldexp(rng.uniform(), static_cast<int>(rng.next() % 30) - 20);
  for (auto& x : v) x = 100.0f * rng.uniform();
  c->store(1, 7, k.data(), v.data());
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t d = 0; d < hk; ++d) {
      const double x = k[g * hk + d];
      CHECK(std::fabs(half_value(c->k_layer(1)[(g * ctx + 7) * hk + d]) - x) <= std::fabs(x) * 0x1.0p-11 + 0x1.0p-25);
    }
    for (int64_t d = 0; d < hv; ++d) {
      const double x = v[g * hv + d];
      CHECK(std::fabs(half_value(c->v_layer(1)[(g * ctx + 7) * hv + d]) - x) <= std::fabs(x) * 0x1.0p-11);
    }
  }
  // Its neighbours were not touched.
  for (int64_t pos : {6, 8})
    for (int64_t d = 0; d < hk; ++d) CHECK(half_value(c->k_layer(1)[pos * hk + d]) == pattern(1, pos, d, 1.0f));
}

TEST_CASE("kv: advance, truncate, clear, reserve_tokens and a full context") {
  auto c = KvCache::create(shape(1, 1, 32, 32), 10);
  REQUIRE(c);
  CHECK(c->reserve_tokens(10));
  CHECK(c->reserve_tokens(0));
  auto neg = c->reserve_tokens(-1);
  REQUIRE(!neg);
  CHECK(neg.error().code() == Errc::out_of_range);
  auto over = c->reserve_tokens(11);
  REQUIRE(!over);
  CHECK(over.error().code() == Errc::out_of_range);
  CHECK(contains(over.error().message(), "context full"));
  CHECK(c->size() == 0);  // a refused reservation changes nothing

  c->advance(6);
  CHECK(c->size() == 6);
  CHECK(c->free() == 4);
  CHECK(c->reserve_tokens(4));
  CHECK(!c->reserve_tokens(5));
  CHECK(c->size() == 6);

  // Truncate keeps a prefix: any length from 0 to size, nothing longer, nothing negative.
  for (int64_t bad : {int64_t(7), int64_t(-1)}) {
    auto st = c->truncate(bad);
    REQUIRE(!st);
    CHECK(st.error().code() == Errc::out_of_range);
    CHECK(c->size() == 6);
  }
  CHECK(c->truncate(6));
  CHECK(c->size() == 6);
  CHECK(c->truncate(2));
  CHECK(c->size() == 2);
  CHECK(c->free() == 8);
  CHECK(!c->truncate(3));  // the forgotten positions are gone

  // Full: exactly n_ctx positions, then not one more.
  c->advance(8);
  CHECK(c->size() == 10);
  CHECK(c->free() == 0);
  CHECK(c->reserve_tokens(0));
  auto full = c->reserve_tokens(1);
  REQUIRE(!full);
  CHECK(contains(full.error().message(), "10 of 10"));

  c->clear();
  CHECK(c->size() == 0);
  CHECK(c->free() == 10);
  CHECK(c->reserve_tokens(10));
}

TEST_CASE("kv through a Context: a full context refuses an eval unchanged; a truncated prefix resumes exactly") {
  for (const char* arch : {"llama", "gemma2"}) {  // gemma2: sliding window of 4 over the truncation
    CAPTURE(std::string(arch));
    const auto bytes = tinyslm_test::model_bytes(tinyslm_test::tiny_spec(arch, TensorType::Q8_0));
    REQUIRE(!bytes.empty());
    auto m = tinyslm_test::load_model(bytes);
    REQUIRE(m);
    ContextParams p;
    p.n_ctx = 12;
    p.n_batch = 8;
    auto ctx = Context::create(*m, p);
    REQUIRE(ctx);
    CHECK(ctx->n_ctx() == 12);
    const std::vector<int32_t> a = {3, 14, 15, 92, 65, 35, 89, 79}, b = {32, 38, 46, 26};
    REQUIRE(ctx->eval(a));
    const auto after_b = ctx->eval(b);
    REQUIRE(after_b);
    const std::vector<float> full_logits(after_b->begin(), after_b->end());
    CHECK(ctx->n_past() == 12);

    const int32_t one = 7;
    auto refused = ctx->eval(std::span<const int32_t>(&one, 1));
    REQUIRE(!refused);
    CHECK(refused.error().code() == Errc::out_of_range);
    CHECK(ctx->n_past() == 12);
    const int32_t bad_id = static_cast<int32_t>(m->hparams().n_vocab);
    REQUIRE(ctx->truncate(11));
    CHECK(!ctx->eval(std::span<const int32_t>(&bad_id, 1)));
    CHECK(ctx->n_past() == 11);

    // Keep the first 8 positions and evaluate b again: the same logits as the first time, bit
    // for bit (the same kernels on the same cached keys and values).
    REQUIRE(ctx->truncate(8));
    const auto again = ctx->eval(b);
    REQUIRE(again);
    CHECK(std::memcmp(again->data(), full_logits.data(), full_logits.size() * sizeof(float)) == 0);

    // reset, then a + b in one call from position 0: eval cuts it into the same chunks of
    // n_batch (8 + 4) as the two calls above, so again the same bits.
    ctx->reset();
    CHECK(ctx->n_past() == 0);
    std::vector<int32_t> ab = a;
    ab.insert(ab.end(), b.begin(), b.end());
    const auto fresh = ctx->eval(ab);
    REQUIRE(fresh);
    CHECK(ctx->n_past() == 12);
    CHECK(std::memcmp(fresh->data(), full_logits.data(), full_logits.size() * sizeof(float)) == 0);
  }
}
