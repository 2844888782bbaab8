// speculative: draft-model-free speculative decoding pieces. An n-gram (prompt lookup) drafter
// proposes the tokens that followed the most recent earlier occurrence of the context's last n
// tokens; the acceptance rule keeps the output distribution of the full sampler unchanged for
// such a deterministic draft. The verify step (one batched forward over [last + draft], KV
// rollback past the first rejection) is Session::speculate in session.hpp, greedy only so far.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sampler.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

enum class SpecType { none, ngram_simple };

struct SpeculativeOptions {
  SpecType type = SpecType::none;
  int draft_max = 16;  // most tokens proposed per step
  int draft_min = 0;   // a shorter draft is dropped: verifying it would not pay
  int ngram_min = 1;   // n is tried from ngram_max down to ngram_min
  int ngram_max = 4;
};

// llama.cpp's --spec-type spellings of the drafters this library has.
inline Expected<SpecType> parse_spec_type(std::string_view s) {
  if (s == "none") return SpecType::none;
  if (s == "ngram-simple") return SpecType::ngram_simple;
  return make_error(Errc::invalid_argument,
                    "unsupported speculative type '" + std::string(s) + "' (supported: none, ngram-simple)");
}

// Drafts into `draft` (cleared first); returns its length, 0 when no n-gram of the allowed
// sizes recurs or the continuation is shorter than draft_min. Options out of range give 0.
inline int ngram_draft(std::span<const int32_t> context, const SpeculativeOptions& opt,
                       std::vector<int32_t>& draft) {
  draft.clear();
  const int64_t n_ctx = static_cast<int64_t>(context.size());
  if (opt.draft_max <= 0 || opt.ngram_min <= 0 || opt.ngram_max < opt.ngram_min) return 0;
  for (int64_t n = opt.ngram_max; n >= opt.ngram_min; --n) {
    if (n >= n_ctx) continue;  // the key needs an earlier occurrence with a successor
    const int64_t key = n_ctx - n;
    // Most recent first: recent text is the likeliest to be copied next.
    for (int64_t start = key - 1; start >= 0; --start) {
      int64_t m = 0;
      while (m < n && context[start + m] == context[key + m]) ++m;
      if (m < n) continue;
      const int64_t from = start + n;
      const int64_t len = std::min<int64_t>(opt.draft_max, n_ctx - from);
      if (len < std::max(1, opt.draft_min)) break;  // a longer n found none; try shorter
      draft.assign(context.begin() + from, context.begin() + from + len);
      return static_cast<int>(len);
    }
  }
  return 0;
}

struct SpecAcceptance {
  bool accepted = false;
  int32_t token = -1;  // the draft token when accepted, else the replacement drawn
};

// The speculative rule for a deterministic draft (q(x) = 1): accept x with probability p(x);
// otherwise draw from p with x removed and renormalised. The emitted token is then distributed
// exactly as p. `probs` is the full sampler's distribution (sums to 1, non-negative).
inline SpecAcceptance speculative_accept(std::span<const float> probs, int32_t draft, Rng& rng) {
  SpecAcceptance r;
  const int64_t n = static_cast<int64_t>(probs.size());
  const float p_draft = (draft >= 0 && draft < n) ? probs[draft] : 0.0f;
  if (p_draft > 0.0f && rng.uniform() < p_draft) {
    r.accepted = true;
    r.token = draft;
    return r;
  }
  double rest = 0.0;
  for (int64_t i = 0; i < n; ++i)
    if (i != draft) rest += probs[i];
  if (rest <= 0.0) {  // p was all on the draft token up to rounding: it is the only choice
    r.accepted = p_draft > 0.0f;
    r.token = r.accepted ? draft : -1;
    return r;
  }
  const double u = static_cast<double>(rng.uniform()) * rest;
  double acc = 0.0;
  int32_t last = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (i == draft || probs[i] <= 0.0f) continue;
    acc += probs[i];
    last = static_cast<int32_t>(i);
    if (u < acc) break;
  }
  r.token = last;
  return r;
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
