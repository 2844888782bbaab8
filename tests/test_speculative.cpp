// speculative: the n-gram drafter's properties (longest n first, most recent occurrence,
// draft_max / draft_min, bad options) and the acceptance rule against the exact distribution
// (the emitted token must be distributed as p whatever the draft). No ../shared.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "tinyslm.hpp"

using namespace tinyslm;

namespace {
SpeculativeOptions ngram(int draft_max, int draft_min, int nmin, int nmax) {
  SpeculativeOptions o;
  o.type = SpecType::ngram_simple;
  o.draft_max = draft_max;
  o.draft_min = draft_min;
  o.ngram_min = nmin;
  o.ngram_max = nmax;
  return o;
}
}  // namespace

TEST_CASE("ngram_draft prefers the longest n-gram, then its most recent occurrence") {
  std::vector<int32_t> draft;
  // Suffix [2 3]: the 2-gram occurs at 1 (followed by 4 5) ; the 1-gram [3] occurs later at 7
  // (followed by 9). The longer match must win.
  const std::vector<int32_t> ctx = {1, 2, 3, 4, 5, 6, 3, 9, 2, 3};
  CHECK(ngram_draft(ctx, ngram(3, 0, 1, 2), draft) == 3);
  CHECK(draft == std::vector<int32_t>{4, 5, 6});
  // With only 1-grams allowed, the most recent earlier [3] (index 6) wins.
  CHECK(ngram_draft(ctx, ngram(3, 0, 1, 1), draft) == 3);
  CHECK(draft == std::vector<int32_t>{9, 2, 3});
  // Two occurrences of the 2-gram: the later one's continuation is drafted.
  const std::vector<int32_t> ctx2 = {7, 8, 1, 7, 8, 2, 7, 8};
  CHECK(ngram_draft(ctx2, ngram(8, 0, 2, 2), draft) == 3);
  CHECK(draft == std::vector<int32_t>{2, 7, 8});
}

TEST_CASE("ngram_draft respects draft_max, draft_min and refuses bad options") {
  std::vector<int32_t> draft;
  const std::vector<int32_t> ctx = {5, 1, 2, 3, 4, 5};
  CHECK(ngram_draft(ctx, ngram(2, 0, 1, 3), draft) == 2);
  CHECK(draft == std::vector<int32_t>{1, 2});
  CHECK(ngram_draft(ctx, ngram(16, 0, 1, 3), draft) == 5);
  CHECK(ngram_draft(ctx, ngram(16, 6, 1, 3), draft) == 0);  // only 5 follow: below draft_min
  CHECK(draft.empty());
  CHECK(ngram_draft(ctx, ngram(0, 0, 1, 3), draft) == 0);
  CHECK(ngram_draft(ctx, ngram(4, 0, 0, 3), draft) == 0);
  CHECK(ngram_draft(ctx, ngram(4, 0, 3, 2), draft) == 0);
  CHECK(ngram_draft(std::vector<int32_t>{}, ngram(4, 0, 1, 3), draft) == 0);
  CHECK(ngram_draft(std::vector<int32_t>{1, 2, 3}, ngram(4, 0, 1, 3), draft) == 0);  // no repeat
}

TEST_CASE("speculative_accept emits tokens distributed exactly as p") {
  const std::vector<float> p = {0.05f, 0.4f, 0.0f, 0.25f, 0.3f};
  for (int32_t draft : {0, 1, 2, 4}) {
    Rng rng(1234 + draft);
    const int n = 200000;
    std::vector<int> count(p.size(), 0);
    int accepted = 0;
    for (int i = 0; i < n; ++i) {
      const SpecAcceptance a = speculative_accept(p, draft, rng);
      REQUIRE(a.token >= 0);
      REQUIRE(a.token < static_cast<int32_t>(p.size()));
      CHECK((a.accepted == (a.token == draft)));
      ++count[a.token];
      accepted += a.accepted;
    }
    CHECK(count[2] == 0);  // zero probability is never emitted, even as the draft
    // Chi-square over the tokens with p > 0 (3 degrees of freedom; 16.3 is p = 0.001).
    double chi2 = 0.0;
    for (size_t i = 0; i < p.size(); ++i) {
      if (p[i] == 0.0f) continue;
      const double e = n * static_cast<double>(p[i]);
      chi2 += (count[i] - e) * (count[i] - e) / e;
    }
    CHECK(chi2 < 16.3);
    // The acceptance rate is p(draft).
    CHECK(std::abs(accepted / static_cast<double>(n) - p[draft]) < 0.005);
  }
}

TEST_CASE("speculative_accept edge cases: certain draft, out-of-range draft") {
  Rng rng(7);
  const std::vector<float> one = {0.0f, 1.0f, 0.0f};
  for (int i = 0; i < 100; ++i) {
    const SpecAcceptance a = speculative_accept(one, 1, rng);
    CHECK(a.accepted);
    CHECK(a.token == 1);
  }
  const SpecAcceptance b = speculative_accept(one, 99, rng);
  CHECK_FALSE(b.accepted);
  CHECK(b.token == 1);
  const SpecAcceptance c = speculative_accept(one, 0, rng);
  CHECK_FALSE(c.accepted);
  CHECK(c.token == 1);
}
