// Tests of the sampler: each stage against a plain reference written here (double precision,
// full sorts), the generator against SplitMix64's published outputs, the draw against the
// distribution it should follow, determinism per seed, and bad parameters.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "tinyslm/sampler.hpp"

using namespace tinyslm;

namespace {

std::vector<float> random_logits(size_t n, uint32_t seed, float scale = 3.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<TokenLogit> as_candidates(const std::vector<float>& logits) {
  std::vector<TokenLogit> c(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) c[i] = {static_cast<int32_t>(i), logits[i]};
  return c;
}

std::set<int32_t> ids_of(const Candidates& c) {
  std::set<int32_t> s;
  for (size_t i = 0; i < c.size; ++i) s.insert(c.data[i].id);
  return s;
}

// Reference: ids sorted by probability (logit) descending, ties by id.
std::vector<int32_t> ref_order(const std::vector<TokenLogit>& c) {
  std::vector<TokenLogit> s = c;
  std::sort(s.begin(), s.end(), [](const TokenLogit& a, const TokenLogit& b) {
    return a.logit != b.logit ? a.logit > b.logit : a.id < b.id;
  });
  std::vector<int32_t> ids;
  for (const auto& t : s) ids.push_back(t.id);
  return ids;
}

std::map<int32_t, double> ref_probs(const std::vector<TokenLogit>& c) {
  double mx = -INFINITY;
  for (const auto& t : c) mx = std::max(mx, static_cast<double>(t.logit));
  double sum = 0;
  for (const auto& t : c) sum += std::exp(static_cast<double>(t.logit) - mx);
  std::map<int32_t, double> p;
  for (const auto& t : c) p[t.id] = std::exp(static_cast<double>(t.logit) - mx) / sum;
  return p;
}

}  // namespace

TEST_CASE("SplitMix64 matches its published first outputs") {
  uint64_t x = 0;
  CHECK(Rng::splitmix64(x) == 0xe220a8397b1dcdafull);
  CHECK(Rng::splitmix64(x) == 0x6e789e6aa1b965f4ull);
  CHECK(Rng::splitmix64(x) == 0x06c45d188009454full);
}

TEST_CASE("Rng: deterministic per seed, uniform in [0, 1)") {
  Rng a(42), b(42), c(43);
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a.next();
    CHECK(x == b.next());
    differs |= x != c.next();
  }
  CHECK(differs);
  Rng r(7);
  double sum = 0;
  int buckets[10] = {};
  for (int i = 0; i < 100000; ++i) {
    const float u = r.uniform();
    REQUIRE(u >= 0.0f);
    REQUIRE(u < 1.0f);
    sum += u;
    buckets[static_cast<int>(u * 10)]++;
  }
  CHECK(std::fabs(sum / 100000 - 0.5) < 0.01);
  for (int b10 : buckets) CHECK(std::abs(b10 - 10000) < 500);
}

TEST_CASE("top_k keeps the k largest, ties by lower id") {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    auto logits = random_logits(500, seed);
    logits[10] = logits[20] = 100.0f;  // a tie at the top
    for (int32_t k : {1, 2, 5, 40, 499, 500, 1000}) {
      auto c = as_candidates(logits);
      Candidates cs{c.data(), c.size(), false};
      sampling::top_k(cs, k);
      auto order = ref_order(as_candidates(logits));
      const size_t n = std::min<size_t>(static_cast<size_t>(k), order.size());
      CHECK(ids_of(cs) == std::set<int32_t>(order.begin(), order.begin() + static_cast<long>(n)));
      if (k == 1) CHECK(cs.data[0].id == 10);
    }
  }
}

TEST_CASE("top_p keeps the smallest most likely set reaching p") {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    auto logits = random_logits(300, 100 + seed);
    for (float p : {0.05f, 0.5f, 0.9f, 0.99f}) {
      auto c = as_candidates(logits);
      Candidates cs{c.data(), c.size(), false};
      std::vector<float> probs;
      sampling::top_p(cs, p, probs);
      auto all = as_candidates(logits);
      auto order = ref_order(all);
      auto pr = ref_probs(all);
      std::set<int32_t> expect;
      double cum = 0;
      for (int32_t id : order) {
        expect.insert(id);
        cum += pr[id];
        if (cum >= p) break;
      }
      CHECK(ids_of(cs) == expect);
    }
  }
}

TEST_CASE("min_p keeps tokens at least min_p times as likely as the best") {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    auto logits = random_logits(300, 200 + seed);
    for (float m : {0.01f, 0.05f, 0.3f, 1.0f}) {
      auto c = as_candidates(logits);
      Candidates cs{c.data(), c.size(), false};
      sampling::min_p(cs, m);
      auto pr = ref_probs(as_candidates(logits));
      double pmax = 0;
      for (auto& [id, p] : pr) pmax = std::max(pmax, p);
      std::set<int32_t> expect;
      for (auto& [id, p] : pr)
        if (p >= m * pmax) expect.insert(id);
      CHECK(ids_of(cs) == expect);
    }
  }
}

TEST_CASE("typical_p keeps the tokens nearest the entropy until p") {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    auto logits = random_logits(200, 300 + seed, 2.0f);
    for (float p : {0.2f, 0.5f, 0.95f}) {
      auto c = as_candidates(logits);
      Candidates cs{c.data(), c.size(), false};
      SamplingScratch scratch;
      sampling::typical_p(cs, p, scratch);
      auto pr = ref_probs(as_candidates(logits));
      double h = 0;
      for (auto& [id, q] : pr) h -= q * std::log(q);
      std::vector<std::pair<double, int32_t>> by_dist;
      for (auto& [id, q] : pr) by_dist.push_back({std::fabs(-std::log(q) - h), id});
      std::sort(by_dist.begin(), by_dist.end());
      std::set<int32_t> expect;
      double cum = 0;
      for (auto& [d, id] : by_dist) {
        expect.insert(id);
        cum += pr[id];
        if (cum >= p) break;
      }
      CHECK(ids_of(cs) == expect);
      // what survives stays in descending logit order
      for (size_t i = 1; i < cs.size; ++i) CHECK(cs.data[i - 1].logit >= cs.data[i].logit);
    }
  }
}

TEST_CASE("penalties: repetition divides positive and multiplies negative logits") {
  std::vector<float> logits = {2.0f, -2.0f, 1.0f, 0.5f};
  auto c = as_candidates(logits);
  Candidates cs{c.data(), c.size(), false};
  std::vector<int32_t> counts = {1, 2, 0, 3};
  sampling::apply_penalties(cs, counts, 2.0f, 0.1f, 0.25f);
  CHECK(c[0].logit == doctest::Approx(2.0f / 2 - 0.1f * 1 - 0.25f));
  CHECK(c[1].logit == doctest::Approx(-2.0f * 2 - 0.1f * 2 - 0.25f));
  CHECK(c[2].logit == 1.0f);
  CHECK(c[3].logit == doctest::Approx(0.5f / 2 - 0.1f * 3 - 0.25f));
}

TEST_CASE("the penalty window counts exactly the last N accepted tokens") {
  SamplerParams p;
  p.repeat_last_n = 5;
  p.repeat_penalty = 1e6f;  // a seen token becomes impossible in greedy mode
  p.temperature = 0.0f;
  auto s = Sampler::create(8, p);
  REQUIRE(s);
  std::mt19937 rng(5);
  std::vector<int32_t> history;
  for (int step = 0; step < 200; ++step) {
    const int32_t id = static_cast<int32_t>(rng() % 8);
    s->accept(id);
    history.push_back(id);
    // all logits equal and positive: greedy picks the lowest id not in the last 5
    std::vector<float> logits(8, 1.0f);
    std::set<int32_t> window(history.end() - std::min<long>(5, static_cast<long>(history.size())), history.end());
    int32_t expect = 0;
    while (window.count(expect)) ++expect;
    CHECK(s->sample(logits) == expect);
  }
}

TEST_CASE("greedy: largest logit, lowest id on a tie; bias can ban or force") {
  SamplerParams p;
  p.temperature = 0.0f;
  auto s = Sampler::create(5, p);
  REQUIRE(s);
  std::vector<float> logits = {1.0f, 3.0f, 3.0f, -1.0f, 2.0f};
  CHECK(s->sample(logits) == 1);
  p.logit_bias = {{1, -INFINITY}};
  auto banned = Sampler::create(5, p);
  REQUIRE(banned);
  CHECK(banned->sample(logits) == 2);
  p.logit_bias = {{3, 10.0f}};
  auto forced = Sampler::create(5, p);
  CHECK(forced->sample(logits) == 3);
}

TEST_CASE("draws follow the distribution left after the chain") {
  const std::vector<float> logits = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f), -30.0f};
  SamplerParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.seed = 99;
  auto s = Sampler::create(5, p);
  REQUIRE(s);
  std::vector<int> hist(5);
  const int n = 200000;
  for (int i = 0; i < n; ++i) hist[static_cast<size_t>(s->sample(logits))]++;
  for (int id = 0; id < 4; ++id) CHECK(std::fabs(hist[id] / double(n) - (id + 1) / 10.0) < 0.005);
  CHECK(hist[4] < 10);

  // temperature 0.5 squares the odds: 1:4:9:16
  p.temperature = 0.5f;
  auto t = Sampler::create(5, p);
  std::fill(hist.begin(), hist.end(), 0);
  for (int i = 0; i < n; ++i) hist[static_cast<size_t>(t->sample(logits))]++;
  for (int id = 0; id < 4; ++id)
    CHECK(std::fabs(hist[id] / double(n) - (id + 1) * (id + 1) / 30.0) < 0.005);

  // top_k 2 leaves ids 3 and 2 in proportion 4:3
  p.temperature = 1.0f;
  p.top_k = 2;
  auto k = Sampler::create(5, p);
  std::fill(hist.begin(), hist.end(), 0);
  for (int i = 0; i < n; ++i) hist[static_cast<size_t>(k->sample(logits))]++;
  CHECK(hist[0] + hist[1] + hist[4] == 0);
  CHECK(std::fabs(hist[3] / double(n) - 4.0 / 7) < 0.005);
}

TEST_CASE("the same seed gives the same tokens; reset restarts the sequence") {
  auto logits = random_logits(1000, 1, 1.0f);
  SamplerParams p;
  p.seed = 1234;
  p.repeat_penalty = 1.1f;
  auto a = Sampler::create(1000, p);
  auto b = Sampler::create(1000, p);
  std::vector<int32_t> first;
  for (int i = 0; i < 50; ++i) {
    const int32_t x = a->sample(logits), y = b->sample(logits);
    CHECK(x == y);
    a->accept(x);
    b->accept(y);
    first.push_back(x);
  }
  a->reset();
  for (int i = 0; i < 50; ++i) {
    const int32_t x = a->sample(logits);
    CHECK(x == first[static_cast<size_t>(i)]);
    a->accept(x);
  }
}

TEST_CASE("bad parameters are refused with a message") {
  SamplerParams p;
  CHECK(Sampler::create(0, p).error().code() == Errc::invalid_argument);
  p.top_p = 0.0f;
  CHECK(Sampler::create(10, p).error().message().find("top_p") != std::string::npos);
  p = {};
  p.min_p = 2.0f;
  CHECK_FALSE(Sampler::create(10, p));
  p = {};
  p.typical_p = -1.0f;
  CHECK_FALSE(Sampler::create(10, p));
  p = {};
  p.repeat_penalty = 0.0f;
  CHECK_FALSE(Sampler::create(10, p));
  p = {};
  p.temperature = NAN;
  CHECK_FALSE(Sampler::create(10, p));
  p = {};
  p.logit_bias = {{10, 1.0f}};
  auto e = Sampler::create(10, p);
  REQUIRE_FALSE(e);
  CHECK(e.error().message().find("token 10") != std::string::npos);
}

TEST_CASE("a sampler knows its vocabulary; parameters take designated initializers") {
  auto s = Sampler::create(10, {.temperature = 0.0f, .seed = 3});
  REQUIRE(s);
  CHECK(s->n_vocab() == 10);
  CHECK(s->params().top_k == 40);
  CHECK(s->params().seed == 3);
  const float logits[10] = {0, 1, 2, 9, 4, 5, 6, 7, 8, 3};
  CHECK(s->sample(logits) == 3);
}
