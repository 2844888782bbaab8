// speculative: the n-gram drafter's properties (longest n first, most recent occurrence,
// draft_max / draft_min, bad options) and the acceptance rule against the exact distribution
// (the emitted token must be distributed as p whatever the draft). Shared suite: greedy
// speculative decoding in Session gives the ids of plain greedy decoding and leaves the session
// in the same state (tokens, last logits, what a further generate produces), on the golden
// prompts of real and synthetic models, at every kind of stop.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "json.hpp"
#include "test_support.hpp"
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

namespace {

struct SpecRun {
  GenerateResult r;
  std::vector<int32_t> tokens;  // the cache after the call
  std::vector<float> last;      // last_logits() after the call
  std::vector<int32_t> more;    // ids of a further generate_from_cache
};

SpecRun spec_run(const Model& m, const std::string& prompt, GenerateOptions o, bool spec, SessionParams sp) {
  auto s = Session::create(m, sp);
  REQUIRE_MESSAGE(s, (s ? "" : s.error().message()));
  o.speculative = spec ? ngram(8, 0, 1, 3) : SpeculativeOptions{};
  auto r = s->generate(prompt, o);
  REQUIRE_MESSAGE(r, (r ? "" : r.error().message()));
  SpecRun out{*r, {s->tokens().begin(), s->tokens().end()}, {s->last_logits().begin(), s->last_logits().end()}, {}};
  GenerateOptions o2 = o;
  o2.stop.clear();
  o2.max_tokens = 12;
  if (s->n_past() + 1 < s->n_ctx()) {
    auto more = s->generate_from_cache(o2);
    REQUIRE_MESSAGE(more, (more ? "" : more.error().message()));
    out.more = more->ids;
  }
  return out;
}

GenerateOptions greedy_n(int32_t n) {
  GenerateOptions o;
  o.sampler.temperature = 0.0f;
  o.max_tokens = n;
  return o;
}

// Checks that speculation changed nothing but the stats; returns the drafts accepted.
int64_t same_both_ways(const Model& m, const std::string& prompt, const GenerateOptions& o, const std::string& what,
                       SessionParams sp = {.context = 2048, .threads = 1, .max_draft = 16}) {
  const SpecRun a = spec_run(m, prompt, o, false, sp);
  const SpecRun b = spec_run(m, prompt, o, true, sp);
  CHECK_MESSAGE(b.r.ids == a.r.ids, what);
  CHECK_MESSAGE(b.r.text == a.r.text, what);
  CHECK_MESSAGE(b.r.stop == a.r.stop, what);
  CHECK_MESSAGE(b.tokens == a.tokens, what);
  CHECK_MESSAGE(b.more == a.more, what);
  REQUIRE(b.last.size() == a.last.size());
  double d = 0, range = 1e-6;
  for (size_t i = 0; i < a.last.size(); ++i) {
    d = std::max(d, static_cast<double>(std::fabs(a.last[i] - b.last[i])));
    range = std::max(range, static_cast<double>(std::fabs(a.last[i])));
  }
  CHECK_MESSAGE(d <= 1e-3 * range, what << ": last logits differ by " << d);  // one row of a batch vs alone
  CHECK(a.r.stats.draft_proposed == 0);
  CHECK(b.r.stats.draft_accepted <= b.r.stats.draft_proposed);
  return b.r.stats.draft_accepted;
}

}  // namespace

TEST_CASE("speculative greedy decoding gives the ids and the state of plain greedy decoding" * doctest::test_suite("shared")) {
  const std::string repetitive =
      "The cat sat on the mat. The dog sat on the log. The cat sat on the mat. The dog sat on the log. "
      "The cat sat on the mat. The dog sat on the log. The cat sat on the mat. The dog";
  for (const char* stem : {"stories260K", "synthetic/synth-llama3-tiny-F16", "synthetic/synth-gemma3-tiny-F16"}) {
    const std::string path = tinyslm_test::shared_file(std::string("models/") + stem + ".gguf");
    const std::string base = std::string(stem).substr(std::string(stem).find('/') + 1);
    const std::string gpath = tinyslm_test::shared_file("golden/" + base + ".json");
    if (path.empty() || gpath.empty()) return;
    auto m = Model::open(path);
    REQUIRE_MESSAGE(m, stem);
    const tinyslm_test::Json g = tinyslm_test::Json::parse(tinyslm_test::read_text(gpath));
    for (const tinyslm_test::Json& p : g["prompts"].items())
      same_both_ways(*m, p["text"].as_string(), greedy_n(48), std::string(stem) + " " + p["id"].as_string());
    const int64_t acc = same_both_ways(*m, repetitive, greedy_n(96), std::string(stem) + " repetitive");
    MESSAGE(std::string(stem) << ": drafts accepted on the repetitive prompt: " << acc);
    if (base == "stories260K") CHECK(acc > 0);
  }
}

TEST_CASE("speculative greedy decoding stops where plain decoding stops, in the same state" * doctest::test_suite("shared")) {
  const std::string path = tinyslm_test::shared_file("models/stories260K.gguf");
  if (path.empty()) return;
  auto m = Model::open(path);
  REQUIRE(m);
  const std::string story = "Once upon a time, there was a little girl named Lily. She liked to play. "
                            "Once upon a time, there was a little girl named Lily. She";
  // max_tokens inside a run of accepted drafts, at its edge and after it.
  int64_t accepted = 0;
  for (int n : {0, 1, 2, 3, 4, 5, 7, 9, 13, 20, 31})
    accepted += same_both_ways(*m, story, greedy_n(n), "max_tokens " + std::to_string(n));
  CHECK(accepted > 0);  // the stops did fall inside verified drafts
  // Stop strings taken from the plain continuation at several offsets.
  auto s = Session::create(*m, {.context = 512});
  REQUIRE(s);
  auto plain = s->generate(story, greedy_n(64));
  REQUIRE(plain);
  REQUIRE(plain->text.size() > 60);
  for (size_t at : {size_t{3}, size_t{10}, size_t{17}, size_t{30}, size_t{45}}) {
    GenerateOptions o = greedy_n(64);
    o.stop = {plain->text.substr(at, 4)};
    same_both_ways(*m, story, o, "stop string at " + std::to_string(at));
  }
  // An end-of-generation token: stories260K rarely ends a story, so a bias on EOS makes it
  // win somewhere in the run; the first bias that stops the plain run after a few tokens.
  const int32_t eos = s->tokenizer().eos();
  REQUIRE(eos >= 0);
  bool eog_seen = false;
  for (float bias = 2.0f; bias <= 64.0f && !eog_seen; bias += 2.0f) {
    GenerateOptions o = greedy_n(200);
    o.sampler.logit_bias = {{eos, bias}};
    const SpecRun e = spec_run(*m, story, o, false, {.context = 512});
    if (e.r.stop != StopReason::eog || e.r.ids.size() < 4) continue;
    eog_seen = true;
    MESSAGE("EOS bias " << bias << ": eog after " << e.r.ids.size() << " tokens");
    same_both_ways(*m, story, o, "eog");
  }
  CHECK(eog_seen);
  // The end of the context: drafts are cut to fit, with an error or a shift at the end.
  same_both_ways(*m, story, greedy_n(-1), "context_full", {.context = 64, .max_draft = 16});
  same_both_ways(*m, story, greedy_n(150), "shift",
                 {.context = 64, .overflow = OverflowPolicy::shift, .keep = 1, .max_draft = 16});
  // Small max_draft: drafts are cut to the verification rows.
  same_both_ways(*m, story, greedy_n(40), "max_draft 2", {.context = 512, .max_draft = 2});
}
