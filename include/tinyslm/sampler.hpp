// tinyslm sampler: turns a row of logits into the next token id.
//
// A fixed chain of logit processors, in llama.cpp's default order so the same settings mean
// the same thing in both: logit bias, repetition / frequency / presence penalties over the last
// N tokens, top-k, typical-p, top-p, min-p, temperature, then a draw from the remaining
// distribution with our own seeded generator (no std:: distributions, so a seed gives the same
// tokens on every platform and standard library). Temperature <= 0 means greedy: the largest
// logit, the lowest id on a tie. Buffers are sized once for the vocabulary; sampling a token
// allocates nothing.
#pragma once

#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <vector>

#include "core.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

// SplitMix64 to expand the seed, xoshiro256** to generate: small, fast and fully specified.
class Rng {
 public:
  explicit Rng(uint64_t seed = 0) { reseed(seed); }

  void reseed(uint64_t seed) {
    uint64_t x = seed;
    for (auto& s : state_) s = splitmix64(x);
  }

  uint64_t next() {
    const uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }

  // Uniform in [0, 1) with 24 random bits: every value is exactly representable as a float.
  float uniform() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }

  // The SplitMix64 step (advances x): exposed for known-answer tests.
  static uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t state_[4];
};

struct TokenLogit {
  int32_t id;
  float logit;
};

struct SamplerParams {
  float temperature = 0.8f;      // <= 0: greedy
  int32_t top_k = 40;            // <= 0: off
  float top_p = 0.95f;           // 1: off
  float min_p = 0.05f;           // 0: off
  float typical_p = 1.0f;        // 1: off
  float repeat_penalty = 1.0f;   // 1: off; > 1 discourages tokens seen in the last N
  int32_t repeat_last_n = 64;    // N for all three penalties; 0: off, -1: whole history
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  uint64_t seed = 0;
  std::vector<TokenLogit> logit_bias = {};  // added to the logit of each id (-INFINITY bans it)
};

// The working set of candidates: a view into the sampler's buffer. Stages shrink it.
struct Candidates {
  TokenLogit* data = nullptr;
  size_t size = 0;
  bool sorted = false;  // descending by logit, ties by ascending id

  TokenLogit* begin() { return data; }
  TokenLogit* end() { return data + size; }
};

namespace detail {
inline bool logit_before(const TokenLogit& a, const TokenLogit& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}
inline void sort_candidates(Candidates& c) {
  if (!c.sorted) std::sort(c.begin(), c.end(), logit_before);
  c.sorted = true;
}
// Softmax of the candidates' logits into `probs` (same order); returns nothing if empty.
inline void softmax_into(const Candidates& c, std::vector<float>& probs) {
  probs.resize(c.size);
  if (c.size == 0) return;
  float max_logit = -INFINITY;
  for (size_t i = 0; i < c.size; ++i) max_logit = std::max(max_logit, c.data[i].logit);
  double sum = 0;
  for (size_t i = 0; i < c.size; ++i) {
    const float p = std::isinf(max_logit) && max_logit < 0 ? 1.0f : std::exp(c.data[i].logit - max_logit);
    probs[i] = p;
    sum += p;
  }
  for (size_t i = 0; i < c.size; ++i) probs[i] = static_cast<float>(probs[i] / sum);
}
}  // namespace detail

// Work buffers of the stages, sized once for the vocabulary.
struct SamplingScratch {
  std::vector<float> probs, dist;
  std::vector<uint32_t> order;
  std::vector<char> chosen;
  void reserve(size_t n) {
    probs.reserve(n);
    dist.reserve(n);
    order.reserve(n);
    chosen.reserve(n);
  }
};

// The stages, each usable on its own (the tests check each against a plain reference).
namespace sampling {

// CTRL-style repetition penalty, then OpenAI-style frequency and presence penalties.
// `counts[id]` is how often id occurs in the penalty window.
inline void apply_penalties(Candidates& c, const std::vector<int32_t>& counts, float repeat,
                            float frequency, float presence) {
  for (auto& t : c) {
    const int32_t n = counts[static_cast<size_t>(t.id)];
    if (n == 0) continue;
    if (repeat != 1.0f) t.logit = t.logit > 0 ? t.logit / repeat : t.logit * repeat;
    t.logit -= static_cast<float>(n) * frequency + presence;
  }
  c.sorted = false;
}

inline void top_k(Candidates& c, int32_t k) {
  if (k <= 0 || static_cast<size_t>(k) >= c.size) return;
  if (!c.sorted) {
    std::partial_sort(c.begin(), c.begin() + k, c.end(), detail::logit_before);
    c.sorted = true;
  }
  c.size = static_cast<size_t>(k);
}

// Keeps the most likely tokens whose probabilities add up to at least p (at least one).
inline void top_p(Candidates& c, float p, std::vector<float>& probs) {
  if (p >= 1.0f || c.size <= 1) return;
  detail::sort_candidates(c);
  detail::softmax_into(c, probs);
  double cum = 0;
  for (size_t i = 0; i < c.size; ++i) {
    cum += probs[i];
    if (cum >= p) {
      c.size = i + 1;
      return;
    }
  }
}

// Keeps tokens whose probability is at least min_p times the largest one's.
inline void min_p(Candidates& c, float min_p) {
  if (min_p <= 0.0f || c.size <= 1) return;
  float max_logit = -INFINITY;
  for (const auto& t : c) max_logit = std::max(max_logit, t.logit);
  // p_i / p_max = exp(l_i - l_max) >= min_p  <=>  l_i >= l_max + log(min_p)
  const float threshold = max_logit + std::log(min_p);
  size_t kept = 0;
  for (size_t i = 0; i < c.size; ++i)
    if (c.data[i].logit >= threshold) c.data[kept++] = c.data[i];
  c.size = kept;  // order preserved, so a sorted set stays sorted
}

// Locally typical sampling: keeps the tokens whose surprise (-log p) is closest to the
// entropy, until their probabilities add up to at least p.
inline void typical_p(Candidates& c, float p, SamplingScratch& s) {
  if (p >= 1.0f || c.size <= 1) return;
  detail::sort_candidates(c);
  detail::softmax_into(c, s.probs);
  double entropy = 0;
  for (size_t i = 0; i < c.size; ++i)
    if (s.probs[i] > 0) entropy -= s.probs[i] * std::log(static_cast<double>(s.probs[i]));
  s.dist.resize(c.size);
  for (size_t i = 0; i < c.size; ++i)
    s.dist[i] = static_cast<float>(std::fabs(-std::log(static_cast<double>(s.probs[i])) - entropy));
  s.order.resize(c.size);
  for (size_t i = 0; i < c.size; ++i) s.order[i] = static_cast<uint32_t>(i);
  std::stable_sort(s.order.begin(), s.order.end(),
                   [&](uint32_t a, uint32_t b) { return s.dist[a] < s.dist[b]; });
  double cum = 0;
  size_t keep = c.size;
  for (size_t i = 0; i < c.size; ++i) {
    cum += s.probs[s.order[i]];
    if (cum >= p) {
      keep = i + 1;
      break;
    }
  }
  // keep the chosen ones, in their logit order
  auto& chosen = s.chosen;
  chosen.assign(c.size, 0);
  for (size_t i = 0; i < keep; ++i) chosen[s.order[i]] = 1;
  size_t kept = 0;
  for (size_t i = 0; i < c.size; ++i)
    if (chosen[i]) c.data[kept++] = c.data[i];
  c.size = kept;
}

inline void temperature(Candidates& c, float t) {
  if (t == 1.0f) return;
  for (auto& x : c) x.logit /= t;
}

// Draws one candidate with probability softmax(logits); u is uniform in [0, 1).
inline int32_t draw(Candidates& c, float u, std::vector<float>& probs) {
  detail::softmax_into(c, probs);
  double cum = 0;
  for (size_t i = 0; i < c.size; ++i) {
    cum += probs[i];
    if (u < cum) return c.data[i].id;
  }
  for (size_t i = c.size; i > 0; --i)  // rounding left u above the total: take the last non-zero
    if (probs[i - 1] > 0) return c.data[i - 1].id;
  return c.data[0].id;
}

inline int32_t greedy(std::span<const float> logits) {
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

}  // namespace sampling

class Sampler {
 public:
  static Expected<Sampler> create(int32_t n_vocab, SamplerParams params) {
    auto bad = [](const std::string& m) { return make_error(Errc::invalid_argument, "sampler: " + m); };
    if (n_vocab <= 0) return bad("vocabulary size must be positive");
    if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) return bad("top_p must be in (0, 1]");
    if (!(params.min_p >= 0.0f && params.min_p <= 1.0f)) return bad("min_p must be in [0, 1]");
    if (!(params.typical_p > 0.0f && params.typical_p <= 1.0f)) return bad("typical_p must be in (0, 1]");
    if (!(params.repeat_penalty > 0.0f)) return bad("repeat_penalty must be positive");
    if (params.repeat_last_n < -1) return bad("repeat_last_n must be -1, 0 or positive");
    if (std::isnan(params.temperature)) return bad("temperature is not a number");
    for (const auto& b : params.logit_bias)
      if (b.id < 0 || b.id >= n_vocab)
        return bad("logit bias for token " + std::to_string(b.id) + ", outside the vocabulary of " +
                   std::to_string(n_vocab));
    Sampler s;
    s.params_ = std::move(params);
    s.n_vocab_ = n_vocab;
    s.rng_.reseed(s.params_.seed);
    s.candidates_.resize(static_cast<size_t>(n_vocab));
    s.counts_.assign(static_cast<size_t>(n_vocab), 0);
    s.scratch_.reserve(static_cast<size_t>(n_vocab));
    return s;
  }

  const SamplerParams& params() const { return params_; }
  int32_t n_vocab() const { return n_vocab_; }

  // Picks the next token from logits[0, n_vocab).
  int32_t sample(std::span<const float> logits) {
    TINYSLM_ASSERT(logits.size() >= static_cast<size_t>(n_vocab_));
    const bool penalties = params_.repeat_last_n != 0 &&
                           (params_.repeat_penalty != 1.0f || params_.frequency_penalty != 0.0f ||
                            params_.presence_penalty != 0.0f);
    if (params_.temperature <= 0.0f && params_.logit_bias.empty() && !penalties)
      return sampling::greedy(logits.first(static_cast<size_t>(n_vocab_)));

    for (int32_t i = 0; i < n_vocab_; ++i) candidates_[static_cast<size_t>(i)] = {i, logits[static_cast<size_t>(i)]};
    Candidates c{candidates_.data(), candidates_.size(), false};
    for (const auto& b : params_.logit_bias) candidates_[static_cast<size_t>(b.id)].logit += b.logit;
    if (penalties)
      sampling::apply_penalties(c, counts_, params_.repeat_penalty, params_.frequency_penalty,
                                params_.presence_penalty);
    if (params_.temperature <= 0.0f) {
      const auto best = std::min_element(c.begin(), c.end(), detail::logit_before);
      return best->id;
    }
    sampling::top_k(c, params_.top_k);
    sampling::typical_p(c, params_.typical_p, scratch_);
    sampling::top_p(c, params_.top_p, scratch_.probs);
    sampling::min_p(c, params_.min_p);
    sampling::temperature(c, params_.temperature);
    return sampling::draw(c, rng_.uniform(), scratch_.probs);
  }

  // Records a token that became part of the text (prompt or generated) for the penalties.
  void accept(int32_t id) {
    if (id < 0 || id >= n_vocab_ || params_.repeat_last_n == 0) return;
    history_.push_back(id);
    counts_[static_cast<size_t>(id)]++;
    if (params_.repeat_last_n > 0) {
      const size_t n = static_cast<size_t>(params_.repeat_last_n);
      if (history_.size() > n) counts_[static_cast<size_t>(history_[history_.size() - 1 - n])]--;
      // drop what can never leave the window again, so the history stays within 2N + 1
      if (history_.size() > 2 * n + 1) history_.erase(history_.begin(), history_.end() - static_cast<long>(n + 1));
    }
  }

  // Forgets the history and restarts the generator from the seed.
  void reset() {
    history_.clear();
    std::fill(counts_.begin(), counts_.end(), 0);
    rng_.reseed(params_.seed);
  }

 private:
  Sampler() = default;

  SamplerParams params_;
  int32_t n_vocab_ = 0;
  Rng rng_;
  std::vector<TokenLogit> candidates_;
  std::vector<int32_t> counts_;  // occurrences of each id in the last repeat_last_n tokens
  std::vector<int32_t> history_;
  SamplingScratch scratch_;
};

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
