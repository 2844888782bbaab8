// Helpers of the recurrent-state tests (test_hybrid, test_deltanet): comparing logits and
// running greedy turns.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

#include "model_builder.hpp"
#include "tinyslm.hpp"

namespace tinyslm_test {

// n uniform values in [lo, hi) from a seed.
inline std::vector<float> random_floats(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::vector<float> v(n);
  uint64_t s = seed;
  for (auto& x : v) x = static_cast<float>(lo + (hi - lo) * static_cast<double>(splitmix64(s) >> 11) * 0x1.0p-53);
  return v;
}

// max |a - b| relative to the range of a.
inline double rel_diff(std::span<const float> a, std::span<const float> b) {
  REQUIRE(a.size() == b.size());
  const auto [lo, hi] = std::minmax_element(a.begin(), a.end());
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(static_cast<double>(a[i]) - b[i]));
  return d / (static_cast<double>(*hi) - *lo);
}

inline tinyslm::GenerateOptions greedy(int32_t n) {
  tinyslm::GenerateOptions o;
  o.sampler.temperature = 0.0f;
  o.max_tokens = n;
  o.stop_at_eog = false;
  return o;
}

// The logits of evaluating ids from an empty cache, in one batch.
inline std::vector<float> fresh_logits(const tinyslm::Model& m, std::span<const int32_t> ids) {
  auto ctx = tinyslm::Context::create(m, {.n_ctx = 2048, .n_threads = 1});
  REQUIRE(ctx);
  auto lg = ctx->eval(ids);
  REQUIRE(lg);
  return {lg->begin(), lg->end()};
}

// Saves the state of a prefilled session, loads it into `into` (a session with a larger
// context) and checks that both continue the same way, evaluating only the new tokens.
// Returns the saved state for the caller's corruption checks.
inline std::vector<uint8_t> check_state_round_trip(const tinyslm::Model& m, tinyslm::Session& into) {
  auto s1 = tinyslm::Session::create(m, {.context = 256});
  REQUIRE(s1);
  const std::vector<int32_t> a = {1025, 300, 301, 302, 40, 41, 42, 43, 44};
  REQUIRE(s1->prefill(a));
  const std::vector<uint8_t> state = s1->save_state();
  REQUIRE(into.load_state(state));
  CHECK(into.n_past() == static_cast<int64_t>(a.size()));
  const std::vector<int32_t> more = {1024, 55, 66, 77};
  std::vector<int32_t> p = a;
  p.insert(p.end(), more.begin(), more.end());
  auto r1 = s1->generate_ids(p, greedy(4));
  auto r2 = into.generate_ids(p, greedy(4));
  REQUIRE(r1);
  REQUIRE(r2);
  CHECK(r2->stats.prompt_evaluated == static_cast<int64_t>(more.size()));
  CHECK(r1->ids == r2->ids);
  CHECK(rel_diff(s1->last_logits(), into.last_logits()) == 0.0);
  return state;
}

}  // namespace tinyslm_test
