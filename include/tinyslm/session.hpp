// tinyslm session: the public API an app uses.
//
//   auto model = tinyslm::Model::open("SmolLM2-135M-Instruct-Q8_0.gguf");
//   auto session = tinyslm::Session::create(*model, {.context = 2048, .threads = 2});
//   auto prompt = session->chat_template().apply({{"user", "Hello!"}}, true);
//   session->generate(*prompt, {.temperature = 0.7f, .top_p = 0.9f, .seed = 42, .max_tokens = 256},
//                     [](std::string_view piece) { std::fwrite(piece.data(), 1, piece.size(), stdout); return true; });
//
// A Session owns one sequence: the forward Context (KV cache, threads, scratch), the tokenizer
// and the chat template, all built from the model's GGUF. The Model must outlive it.
//
// generate() takes the WHOLE text so far (for a chat: the template applied to every message),
// not just the new part. The session tokenizes it, keeps the longest prefix of tokens already
// in the KV cache and evaluates only the rest, so a multi-turn chat costs only its new tokens.
// The prompt is evaluated in chunks of the batch size; the cancellation flag is checked before
// every chunk and before every generated token.
//
// When the context is full the caller chooses (SessionParams::overflow):
//   error          a prompt that does not fit fails with Errc::out_of_range; generation that
//                  reaches the end of the context stops with StopReason::context_full.
//   shift          keep the first `keep` tokens, drop the oldest half of the rest and evaluate
//                  what remains again. There is no RoPE rewrite: the kept tokens are simply
//                  re-evaluated at their new positions, which costs a prefill of up to n_ctx/2
//                  tokens each time the context fills (rare: once per n_ctx/2 generated tokens).
//                  A prompt longer than the context keeps its first `keep` tokens and its last
//                  (n_ctx - keep) / 2 tokens.
//   drop_messages  for the Chat helper: whole earlier messages are dropped (the system prompt
//                  stays) until the conversation fits; a bare Session treats it as `error`.
//
// save_state() / load_state() write and read the tokens and the K/V rows of the filled
// positions with a versioned header, a fingerprint of the model and a checksum; load_state
// validates everything before it touches the cache.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "chat.hpp"
#include "core.hpp"
#include "forward.hpp"
#include "gguf.hpp"
#include "model.hpp"
#include "sampler.hpp"
#include "tokenizer.hpp"

namespace tinyslm {
inline namespace v0 {

enum class OverflowPolicy : uint8_t { error, shift, drop_messages };

struct SessionParams {
  int64_t context = 2048;  // positions in the KV cache; 0 = the model's training context
  int threads = 1;
  int64_t batch = 512;     // most prompt tokens per forward chunk (and per cancellation check)
  OverflowPolicy overflow = OverflowPolicy::error;
  int64_t keep = 1;        // tokens kept at the start when shifting (1 = the BOS token)
};

// Receives each piece of generated text (whole UTF-8 characters); return false to stop.
using TokenCallback = std::function<bool(std::string_view piece)>;

struct GenerateOptions {
  float temperature = 0.8f;   // <= 0: greedy (lowest id wins ties)
  float top_p = 0.95f;
  uint64_t seed = 0;
  int32_t max_tokens = 256;   // < 0: until end of generation or a full context
  int32_t top_k = 40;
  float min_p = 0.05f;
  float typical_p = 1.0f;
  float repeat_penalty = 1.0f;
  int32_t repeat_last_n = 64;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  std::vector<TokenLogit> logit_bias = {};
  std::vector<std::string> stop = {};       // stop strings: not emitted, not in the result text
  const std::atomic<bool>* cancel = nullptr;  // set to true (from any thread) to stop
  bool stop_at_eog = true;                  // stop at EOS / end-of-turn tokens
  bool render_special = false;              // write the text of control tokens

  SamplerParams sampler_params() const {
    SamplerParams p;
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.typical_p = typical_p;
    p.repeat_penalty = repeat_penalty;
    p.repeat_last_n = repeat_last_n;
    p.frequency_penalty = frequency_penalty;
    p.presence_penalty = presence_penalty;
    p.seed = seed;
    p.logit_bias = logit_bias;
    return p;
  }
};

enum class StopReason : uint8_t {
  max_tokens,    // max_tokens generated (also max_tokens == 0: prompt evaluated only)
  eog,           // an end-of-generation token (it is in ids, not in text)
  stop_string,   // one of the stop strings appeared (cut from the text)
  callback,      // the callback returned false
  cancelled,     // the cancellation flag was set
  context_full,  // the context is full and the policy is `error`
};

inline const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::max_tokens: return "max_tokens";
    case StopReason::eog: return "eog";
    case StopReason::stop_string: return "stop_string";
    case StopReason::callback: return "callback";
    case StopReason::cancelled: return "cancelled";
    case StopReason::context_full: return "context_full";
  }
  return "?";
}

struct GenerateStats {
  int64_t prompt_tokens = 0;     // tokens of the prompt
  int64_t prompt_reused = 0;     // of them, found in the KV cache (not evaluated)
  int64_t prompt_evaluated = 0;  // tokens evaluated for the prompt (and again after shifts)
  int64_t generated = 0;         // tokens sampled
  int64_t shifts = 0;            // context shifts during this call
  double prompt_ms = 0;          // prompt evaluation
  double generation_ms = 0;      // from the first sampled token to the end
  double time_to_first_token_ms = 0;  // from the call to the first sampled token
  double prompt_tokens_per_s = 0;
  double generation_tokens_per_s = 0;  // tokens evaluated one at a time per second
};

struct GenerateResult {
  std::string text;               // generated text (without a matched stop string)
  std::vector<int32_t> ids;       // generated ids (an end-of-generation token included)
  StopReason stop = StopReason::max_tokens;
  GenerateStats stats;
};

// What an app will need, in bytes, before it loads anything.
struct MemoryEstimate {
  uint64_t weights = 0;   // tensor data: resident once touched through the mapping (or read)
  uint64_t kv_cache = 0;  // F16 keys and values for every position of the context
  uint64_t compute = 0;   // activations, attention and matmul scratch
  uint64_t logits = 0;
  uint64_t other = 0;     // tokenizer, sampler, converted norm vectors
  uint64_t total() const { return weights + kv_cache + compute + logits + other; }
};

namespace detail {

// A 64-bit hash over words (fast enough for a whole KV cache); used for the model fingerprint
// and the state checksum, not for security.
class Hash64 {
 public:
  void bytes(const void* p, size_t n) {
    const auto* s = static_cast<const unsigned char*>(p);
    while (n >= 8) {
      uint64_t w;
      std::memcpy(&w, s, 8);
      word(w);
      s += 8;
      n -= 8;
    }
    uint64_t tail = 0;
    for (size_t i = 0; i < n; ++i) tail |= static_cast<uint64_t>(s[i]) << (8 * i);
    word(tail ^ (static_cast<uint64_t>(n) << 59));
  }
  void u64(uint64_t v) { word(v); }
  void str(std::string_view s) {
    u64(s.size());
    bytes(s.data(), s.size());
  }
  uint64_t value() const {
    uint64_t z = h_;
    z = (z ^ (z >> 33)) * 0xff51afd7ed558ccdull;
    z = (z ^ (z >> 33)) * 0xc4ceb9fe1a85ec53ull;
    return z ^ (z >> 33);
  }

 private:
  void word(uint64_t w) {
    h_ ^= w * 0x9e3779b97f4a7c15ull;
    h_ = ((h_ << 31) | (h_ >> 33)) * 0x94d049bb133111ebull;
  }
  uint64_t h_ = 0x243f6a8885a308d3ull;
};

// Little-endian writer / reader for the state format.
struct ByteWriter {
  std::vector<uint8_t>& out;
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void raw(const void* p, size_t n) {
    const size_t at = out.size();
    out.resize(at + n);
    if (n > 0) std::memcpy(out.data() + at, p, n);
  }
  // 16-bit values (F16 rows), little-endian whatever the host.
  void u16s(const uint16_t* p, size_t n) {
    if constexpr (std::endian::native == std::endian::little) {
      raw(p, n * 2);
    } else {
      for (size_t i = 0; i < n; ++i) {
        out.push_back(static_cast<uint8_t>(p[i]));
        out.push_back(static_cast<uint8_t>(p[i] >> 8));
      }
    }
  }
};

struct ByteReader {
  const uint8_t* p;
  size_t n;
  size_t at = 0;
  bool has(size_t k) const { return k <= n - at; }
  uint32_t u32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[at + i]) << (8 * i);
    at += 4;
    return v;
  }
  uint64_t u64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[at + i]) << (8 * i);
    at += 8;
    return v;
  }
  void u16s(uint16_t* dst, size_t k) {
    if constexpr (std::endian::native == std::endian::little) {
      std::memcpy(dst, p + at, k * 2);
    } else {
      for (size_t i = 0; i < k; ++i) dst[i] = static_cast<uint16_t>(p[at + 2 * i] | (p[at + 2 * i + 1] << 8));
    }
    at += k * 2;
  }
};

inline constexpr char kStateMagic[8] = {'t', 'i', 'n', 'y', 's', 'l', 'm', 'S'};
inline constexpr uint32_t kStateVersion = 1;
inline constexpr uint32_t kStateKvF16 = 1;
// magic, version, header bytes, fingerprint, 6 shape fields, kv type + pad, n_ctx, n_tokens
inline constexpr uint32_t kStateHeaderBytes = 8 + 4 + 4 + 8 + 6 * 8 + 4 + 4 + 8 + 8;

// Identifies a model: architecture, shape, every tensor's name, type and shape, and a sample of
// each tensor's bytes (its first and last 64), so a file with other weights of the same shape
// is told apart without hashing gigabytes.
inline uint64_t model_fingerprint(const Model& m) {
  Hash64 h;
  const HParams& hp = m.hparams();
  h.str(hp.arch_name);
  for (int64_t v : {hp.n_vocab, hp.n_embd, hp.n_layer, hp.n_head, hp.n_head_kv, hp.head_dim_k,
                    hp.head_dim_v, hp.n_ff})
    h.u64(static_cast<uint64_t>(v));
  for (const auto& t : m.gguf().tensors()) {
    h.str(t.name);
    h.u64(static_cast<uint64_t>(t.type));
    for (uint64_t d : t.ne) h.u64(d);
    const size_t k = static_cast<size_t>(std::min<uint64_t>(64, t.n_bytes));
    if (t.data && k > 0) {
      h.bytes(t.data, k);
      h.bytes(t.data + t.n_bytes - k, k);
    }
  }
  return h.value();
}

inline bool is_cancelled(const std::atomic<bool>* c) {
  return c && c->load(std::memory_order_relaxed);
}

// Length of the longest suffix of `text` that is a proper prefix of some stop string (text that
// must be held back because the next piece could complete a stop string).
inline size_t stop_prefix_hold(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& s : stops) {
    const size_t most = std::min(s.size() - (s.empty() ? 0 : 1), text.size());
    for (size_t k = most; k > hold; --k)
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  }
  return hold;
}

}  // namespace detail

class Session {
 public:
  // Builds the context (KV cache for params.context positions), the tokenizer and the chat
  // template. Fails on a context larger than the model's training context.
  static Expected<Session> create(const Model& model, const SessionParams& params = {});

  Session(Session&&) = default;
  Session& operator=(Session&&) = default;

  // Generates a continuation of `prompt`, the whole text so far (BOS added as the tokenizer
  // asks, special tokens such as <|im_end|> recognised).
  Expected<GenerateResult> generate(std::string_view prompt, const GenerateOptions& options = {},
                                    const TokenCallback& on_piece = {});
  // The same from token ids (no tokenizer involved in the prompt).
  Expected<GenerateResult> generate_ids(std::span<const int32_t> prompt_ids, const GenerateOptions& options = {},
                                        const TokenCallback& on_piece = {});

  // The tokens generate() would evaluate for this text.
  Expected<std::vector<int32_t>> tokenize(std::string_view text) const {
    if (!has_tokenizer_) return no_tokenizer();
    return tok_.encode(text, /*add_special=*/true, /*parse_special=*/true);
  }

  // Forgets the sequence (the next generate evaluates its whole prompt).
  void reset() {
    ctx_.reset();
    tokens_.clear();
    logits_valid_ = false;
  }

  // The tokens whose keys and values are in the cache, in order.
  std::span<const int32_t> tokens() const { return tokens_; }
  int64_t n_past() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t n_ctx() const { return ctx_.n_ctx(); }
  // Logits of the last token evaluated (after generate with max_tokens = 0: the prompt's last);
  // empty before any evaluation and after reset() or load_state().
  std::span<const float> last_logits() const {
    return logits_valid_ ? ctx_.last_logits() : std::span<const float>();
  }

  const Model& model() const { return *model_; }
  const SessionParams& params() const { return params_; }
  bool has_tokenizer() const { return has_tokenizer_; }
  const Tokenizer& tokenizer() const { return tok_; }
  const ChatTemplate& chat_template() const { return tmpl_; }
  ChatTemplate& chat_template() { return tmpl_; }

  // Session state: the tokens and the K/V rows of the filled positions.
  std::vector<uint8_t> save_state() const;
  Status load_state(std::span<const uint8_t> bytes);
  Status save_state_file(const std::string& path) const;
  Status load_state_file(const std::string& path);

 private:
  Session(const Model& model, Context ctx) : model_(&model), ctx_(std::move(ctx)) {}
  static Error no_tokenizer() {
    return make_error(Errc::unsupported, "session: the model has no usable tokenizer (use generate_ids)");
  }
  // Evaluates tokens[from..] on top of the cache in chunks of the batch size; false when cancelled.
  Expected<bool> eval_chunks(std::span<const int32_t> toks, const std::atomic<bool>* cancel, int64_t* evaluated);

  const Model* model_ = nullptr;
  SessionParams params_;
  Context ctx_;
  Tokenizer tok_;
  bool has_tokenizer_ = false;
  ChatTemplate tmpl_;
  std::vector<int32_t> tokens_;
  bool logits_valid_ = false;
  uint64_t fingerprint_ = 0;
};

inline Expected<Session> Session::create(const Model& model, const SessionParams& params) {
  const HParams& hp = model.hparams();
  int64_t n_ctx = params.context == 0 ? hp.n_ctx_train : params.context;
  if (n_ctx < 0)
    return make_error(Errc::invalid_argument, "session: context length " + std::to_string(n_ctx) + " is negative");
  if (hp.n_ctx_train > 0 && n_ctx > hp.n_ctx_train)
    return make_error(Errc::invalid_argument, "session: context " + std::to_string(n_ctx) +
                                                  " is larger than the model's training context (" +
                                                  std::to_string(hp.n_ctx_train) + ")");
  if (params.threads <= 0)
    return make_error(Errc::invalid_argument, "session: thread count must be positive (got " +
                                                  std::to_string(params.threads) + ")");
  if (params.batch <= 0)
    return make_error(Errc::invalid_argument, "session: batch size must be positive");
  if (params.keep < 0 || params.keep >= n_ctx)
    return make_error(Errc::invalid_argument, "session: keep must be in [0, context)");
  auto ctx = Context::create(model, ContextParams{n_ctx, params.threads, params.batch, false});
  if (!ctx) return ctx.error();
  Session s(model, std::move(*ctx));
  s.params_ = params;
  s.params_.context = n_ctx;
  if (auto tok = Tokenizer::from_gguf(model.gguf())) {
    s.tok_ = std::move(*tok);
    s.has_tokenizer_ = s.tok_.n_vocab() > 0;
    s.tmpl_ = ChatTemplate::from_gguf(model.gguf(), s.tok_);
  }
  s.fingerprint_ = detail::model_fingerprint(model);
  return s;
}

inline Expected<GenerateResult> Session::generate(std::string_view prompt, const GenerateOptions& options,
                                                  const TokenCallback& on_piece) {
  auto ids = tokenize(prompt);
  if (!ids) return ids.error();
  return generate_ids(*ids, options, on_piece);
}

inline Expected<bool> Session::eval_chunks(std::span<const int32_t> toks, const std::atomic<bool>* cancel,
                                           int64_t* evaluated) {
  const size_t B = static_cast<size_t>(ctx_.params().n_batch);
  for (size_t at = 0; at < toks.size(); at += B) {
    if (detail::is_cancelled(cancel)) return false;
    const auto chunk = toks.subspan(at, std::min(B, toks.size() - at));
    auto lg = ctx_.eval(chunk);
    if (!lg) return lg.error();
    tokens_.insert(tokens_.end(), chunk.begin(), chunk.end());
    logits_valid_ = true;
    *evaluated += static_cast<int64_t>(chunk.size());
  }
  return true;
}

inline Expected<GenerateResult> Session::generate_ids(std::span<const int32_t> prompt_ids,
                                                      const GenerateOptions& options, const TokenCallback& on_piece) {
  using clock = std::chrono::steady_clock;
  const auto ms_since = [](clock::time_point t) {
    return std::chrono::duration<double, std::milli>(clock::now() - t).count();
  };
  const auto t_start = clock::now();
  const int64_t n_ctx = ctx_.n_ctx();
  const int32_t n_vocab = static_cast<int32_t>(model_->hparams().n_vocab);
  if (prompt_ids.empty()) return make_error(Errc::invalid_argument, "generate: empty prompt");
  for (size_t i = 0; i < prompt_ids.size(); ++i)
    if (prompt_ids[i] < 0 || prompt_ids[i] >= n_vocab)
      return make_error(Errc::out_of_range, "generate: token id " + std::to_string(prompt_ids[i]) + " at index " +
                                                std::to_string(i) + " is outside the vocabulary (" +
                                                std::to_string(n_vocab) + " tokens)");
  for (const auto& s : options.stop)
    if (s.empty()) return make_error(Errc::invalid_argument, "generate: empty stop string");
  auto sampler = Sampler::create(n_vocab, options.sampler_params());
  if (!sampler) return sampler.error();

  GenerateResult res;
  GenerateStats& st = res.stats;
  st.prompt_tokens = static_cast<int64_t>(prompt_ids.size());

  // A prompt longer than the context: an error, or (shift) its start and its most recent half.
  std::vector<int32_t> prompt(prompt_ids.begin(), prompt_ids.end());
  const int64_t keep = std::min<int64_t>(params_.keep, n_ctx - 1);
  if (static_cast<int64_t>(prompt.size()) > n_ctx) {
    if (params_.overflow != OverflowPolicy::shift)
      return make_error(Errc::out_of_range, "prompt is " + std::to_string(prompt.size()) +
                                                " tokens but the context holds " + std::to_string(n_ctx));
    const int64_t tail = std::max<int64_t>(1, (n_ctx - keep) / 2);
    prompt.erase(prompt.begin() + keep, prompt.end() - tail);
    ++st.shifts;
  }

  // Reuse the longest common prefix; at least the last prompt token is evaluated again, since
  // its logits are needed.
  size_t common = 0;
  while (common < tokens_.size() && common < prompt.size() && tokens_[common] == prompt[common]) ++common;
  common = std::min(common, prompt.size() - 1);
  if (auto t = ctx_.truncate(static_cast<int64_t>(common)); !t) return t.error();
  tokens_.resize(common);
  logits_valid_ = false;
  st.prompt_reused = static_cast<int64_t>(common);

  const auto t_prompt = clock::now();
  auto done = eval_chunks(std::span<const int32_t>(prompt).subspan(common), options.cancel, &st.prompt_evaluated);
  if (!done) return done.error();
  st.prompt_ms = ms_since(t_prompt);
  if (st.prompt_ms > 0) st.prompt_tokens_per_s = 1000.0 * static_cast<double>(st.prompt_evaluated) / st.prompt_ms;
  if (!*done) {
    res.stop = StopReason::cancelled;
    return res;
  }

  for (int32_t id : prompt) sampler->accept(id);
  std::vector<float> logits(ctx_.last_logits().begin(), ctx_.last_logits().end());

  // Text: pieces go through the stop-string filter; whatever could still become a stop string
  // is held back until it no longer can.
  std::string all;
  size_t emitted = 0;
  bool stopped = false;
  StreamDecoder decoder(tok_, options.render_special);
  auto push_text = [&](std::string_view piece, bool final) {
    all += piece;
    size_t cut = std::string::npos;
    for (const auto& s : options.stop) {
      const size_t from = emitted >= s.size() ? emitted - s.size() + 1 : 0;
      const size_t p = all.find(s, from);
      if (p != std::string::npos && p < cut) cut = p;
    }
    size_t upto = all.size();
    if (cut != std::string::npos) {
      upto = std::max(cut, emitted);
      all.resize(upto);
      res.stop = StopReason::stop_string;
      stopped = true;
    } else if (!final) {
      upto = all.size() - detail::stop_prefix_hold(std::string_view(all).substr(emitted), options.stop);
    }
    if (upto > emitted) {
      const std::string_view out = std::string_view(all).substr(emitted, upto - emitted);
      emitted = upto;
      if (on_piece && !on_piece(out) && !stopped) {
        res.stop = StopReason::callback;
        stopped = true;
      }
    }
  };

  clock::time_point t_first{};
  double decode_ms = 0;
  int64_t decoded = 0;
  while (!stopped) {
    if (options.max_tokens >= 0 && st.generated >= options.max_tokens) {
      res.stop = StopReason::max_tokens;
      break;
    }
    if (detail::is_cancelled(options.cancel)) {
      res.stop = StopReason::cancelled;
      break;
    }
    const int32_t id = sampler->sample(logits);
    sampler->accept(id);
    res.ids.push_back(id);
    if (++st.generated == 1) {
      t_first = clock::now();
      st.time_to_first_token_ms = std::chrono::duration<double, std::milli>(t_first - t_start).count();
    }
    const bool eog = has_tokenizer_ && tok_.is_eog(id);
    if (eog && options.stop_at_eog) {
      res.stop = StopReason::eog;
      break;
    }
    if (has_tokenizer_) {
      auto piece = decoder.push(id);
      if (!piece) return piece.error();
      push_text(*piece, false);
      if (stopped) break;
    }
    if (options.max_tokens >= 0 && st.generated >= options.max_tokens) {
      res.stop = StopReason::max_tokens;
      break;
    }
    // Evaluate the token, making room first when the context is full.
    if (ctx_.n_past() >= n_ctx) {
      if (params_.overflow != OverflowPolicy::shift || keep >= n_ctx - 1) {
        res.stop = StopReason::context_full;
        break;
      }
      const int64_t n_discard = std::max<int64_t>(1, (n_ctx - keep) / 2);
      const std::vector<int32_t> rest(tokens_.begin() + keep + n_discard, tokens_.end());
      if (auto t = ctx_.truncate(keep); !t) return t.error();
      tokens_.resize(static_cast<size_t>(keep));
      logits_valid_ = false;
      ++st.shifts;
      const auto t_shift = clock::now();
      auto ok = eval_chunks(rest, options.cancel, &st.prompt_evaluated);
      if (!ok) return ok.error();
      decode_ms -= ms_since(t_shift);  // re-evaluation is prefill work, not decoding
      if (!*ok) {
        res.stop = StopReason::cancelled;
        break;
      }
    }
    const auto t_eval = clock::now();
    auto lg = ctx_.eval(std::span<const int32_t>(&id, 1));
    if (!lg) return lg.error();
    tokens_.push_back(id);
    logits_valid_ = true;
    logits.assign(lg->begin(), lg->end());
    decode_ms += ms_since(t_eval);
    ++decoded;
  }
  if (has_tokenizer_ && res.stop != StopReason::stop_string && res.stop != StopReason::callback) {
    const std::string rest = decoder.flush();
    stopped = false;
    push_text(rest, true);
  }
  res.text = std::move(all);
  if (st.generated > 0) st.generation_ms = ms_since(t_first);
  if (decode_ms > 0) st.generation_tokens_per_s = 1000.0 * static_cast<double>(decoded) / decode_ms;
  return res;
}

inline std::vector<uint8_t> Session::save_state() const {
  const HParams& hp = model_->hparams();
  const KvCache& kv = ctx_.kv();
  const uint64_t n = tokens_.size();
  std::vector<uint8_t> out;
  out.reserve(detail::kStateHeaderBytes + n * 4 + kv.bytes() / static_cast<size_t>(std::max<int64_t>(1, kv.n_ctx())) * n + 8);
  detail::ByteWriter w{out};
  w.raw(detail::kStateMagic, 8);
  w.u32(detail::kStateVersion);
  w.u32(detail::kStateHeaderBytes);
  w.u64(fingerprint_);
  for (int64_t v : {hp.n_layer, hp.n_head_kv, hp.head_dim_k, hp.head_dim_v, hp.n_vocab, hp.n_embd})
    w.u64(static_cast<uint64_t>(v));
  w.u32(detail::kStateKvF16);
  w.u32(0);
  w.u64(static_cast<uint64_t>(kv.n_ctx()));
  w.u64(n);
  for (int32_t t : tokens_) w.u32(static_cast<uint32_t>(t));
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    for (int pass = 0; pass < 2; ++pass) {
      const int64_t hd = pass == 0 ? hp.head_dim_k : hp.head_dim_v;
      const uint16_t* base = pass == 0 ? kv.k_layer(il) : kv.v_layer(il);
      for (int64_t g = 0; g < hp.n_head_kv; ++g)
        w.u16s(base + g * kv.n_ctx() * hd, static_cast<size_t>(n * static_cast<uint64_t>(hd)));
    }
  }
  detail::Hash64 h;
  h.bytes(out.data(), out.size());
  w.u64(h.value());
  return out;
}

inline Status Session::load_state(std::span<const uint8_t> bytes) {
  const HParams& hp = model_->hparams();
  auto bad = [](const std::string& m) { return make_error(Errc::invalid_format, "session state: " + m); };
  detail::ByteReader r{bytes.data(), bytes.size()};
  if (!r.has(detail::kStateHeaderBytes + 8)) return bad("too short (" + std::to_string(bytes.size()) + " bytes)");
  if (std::memcmp(bytes.data(), detail::kStateMagic, 8) != 0) return bad("not a tinyslm session state");
  r.at = 8;
  const uint32_t version = r.u32();
  if (version != detail::kStateVersion)
    return make_error(Errc::unsupported, "session state: version " + std::to_string(version) +
                                             " (this build reads version " + std::to_string(detail::kStateVersion) + ")");
  if (r.u32() != detail::kStateHeaderBytes) return bad("wrong header size");
  if (r.u64() != fingerprint_)
    return make_error(Errc::invalid_argument, "session state: saved with another model");
  for (int64_t v : {hp.n_layer, hp.n_head_kv, hp.head_dim_k, hp.head_dim_v, hp.n_vocab, hp.n_embd})
    if (r.u64() != static_cast<uint64_t>(v))
      return make_error(Errc::invalid_argument, "session state: model shape differs");
  if (r.u32() != detail::kStateKvF16) return make_error(Errc::unsupported, "session state: unknown KV cache type");
  r.u32();
  r.u64();  // the saving session's context length (any context that holds the tokens will do)
  const uint64_t n = r.u64();
  if (n > static_cast<uint64_t>(ctx_.n_ctx()))
    return make_error(Errc::out_of_range, "session state: holds " + std::to_string(n) +
                                              " tokens, more than this session's context (" +
                                              std::to_string(ctx_.n_ctx()) + ")");
  const uint64_t row_halves = static_cast<uint64_t>(hp.n_layer * hp.n_head_kv * (hp.head_dim_k + hp.head_dim_v));
  const uint64_t expect = detail::kStateHeaderBytes + n * 4 + n * row_halves * 2 + 8;
  if (bytes.size() != expect)
    return bad("size " + std::to_string(bytes.size()) + " bytes, expected " + std::to_string(expect) + " for " +
               std::to_string(n) + " tokens");
  detail::Hash64 h;
  h.bytes(bytes.data(), bytes.size() - 8);
  detail::ByteReader tail{bytes.data() + bytes.size() - 8, 8};
  if (tail.u64() != h.value()) return bad("checksum mismatch (corrupted)");
  std::vector<int32_t> toks(static_cast<size_t>(n));
  for (auto& t : toks) {
    t = static_cast<int32_t>(r.u32());
    if (t < 0 || t >= hp.n_vocab) return bad("token id " + std::to_string(t) + " outside the vocabulary");
  }
  // Everything checked: replace the cache.
  KvCache& kv = ctx_.kv();
  kv.clear();
  tokens_.clear();
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    for (int pass = 0; pass < 2; ++pass) {
      const int64_t hd = pass == 0 ? hp.head_dim_k : hp.head_dim_v;
      uint16_t* base = pass == 0 ? kv.k_layer(il) : kv.v_layer(il);
      for (int64_t g = 0; g < hp.n_head_kv; ++g) r.u16s(base + g * kv.n_ctx() * hd, static_cast<size_t>(n * static_cast<uint64_t>(hd)));
    }
  }
  kv.advance(static_cast<int64_t>(n));
  tokens_ = std::move(toks);
  logits_valid_ = false;
  return {};
}

inline Status Session::save_state_file(const std::string& path) const {
  const std::vector<uint8_t> bytes = save_state();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return make_error(Errc::io, path + ": cannot open for writing");
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  if (std::fclose(f) != 0 || !ok) return make_error(Errc::io, path + ": write failed");
  return {};
}

inline Status Session::load_state_file(const std::string& path) {
  auto src = Source::open(path, LoadMode::read);
  if (!src) return src.error();
  return load_state(std::span<const uint8_t>(src->data(), src->size()));
}

// Bytes a session on this model will need, from the file's metadata alone (no weights read):
// the forward layer's ContextPlan, the one Context::create allocates from.
inline Expected<MemoryEstimate> memory_estimate(const GgufFile& f, int64_t context, int threads = 1,
                                                int64_t batch = 512) {
  auto hpx = read_hparams(f);
  if (!hpx) return hpx.error();
  HParams& hp = *hpx;
  if (hp.n_expert > 0) {
    auto cfg = read_moe_config(f);
    if (!cfg) return cfg.error();
    hp.moe = *cfg;
  }
  const int64_t n_ctx = context <= 0 ? hp.n_ctx_train : context;
  if (n_ctx <= 0 || threads <= 0 || batch <= 0)
    return make_error(Errc::invalid_argument, "memory_estimate: context, threads and batch must be positive");
  int64_t n_vocab = 0;
  if (const GgufTensorInfo* te = f.find_tensor("token_embd.weight"); te && te->n_dims == 2)
    n_vocab = static_cast<int64_t>(te->ne[1]);
  auto plan = ContextPlan::make(hp, n_vocab, ContextParams{n_ctx, threads, batch, false});
  if (!plan) return plan.error();
  MemoryEstimate m;
  uint64_t small = 0;
  for (const auto& t : f.tensors()) {
    m.weights += t.n_bytes;
    if (t.n_dims == 1) small += t.n_elements * 4;  // norms and biases are kept as floats
  }
  m.kv_cache = plan->kv_bytes;
  m.compute = plan->compute_bytes();
  m.logits = plan->logit_bytes();
  // Tokenizer: the vocabulary strings twice (text and output pieces), per-token tables, merges;
  // sampler: a candidate (8 bytes) and a count (4) per token plus its probability buffers.
  uint64_t vocab_bytes = 0, n_merges = 0;
  if (auto toks = f.get<GgufArray>("tokenizer.ggml.tokens")) {
    toks->for_each([&](const GgufValue& v) {
      if (v.type() == GgufValueType::string) vocab_bytes += v.as_string().size();
      return true;
    });
  }
  if (auto merges = f.get<GgufArray>("tokenizer.ggml.merges")) n_merges = merges->size();
  // plus a fixed 256 KiB for the small tables and vectors every session has.
  const uint64_t nv = static_cast<uint64_t>(n_vocab);
  m.other = small + 2 * vocab_bytes + nv * (4 + 4 + 2 + 4 + 8 + 12 + 8 + 4) + n_merges * 32 + (256u << 10);
  return m;
}

inline Expected<MemoryEstimate> memory_estimate(const std::string& path, int64_t context, int threads = 1,
                                                int64_t batch = 512) {
  auto f = GgufFile::open(path);
  if (!f) return f.error();
  return memory_estimate(*f, context, threads, batch);
}

// A conversation on a session: the system prompt and the messages so far, rendered with the
// model's chat template on every turn (the session reuses the cached prefix, so only the new
// turn is evaluated). It refers to the session, which must outlive it and stay in place.
class Chat {
 public:
  explicit Chat(Session& session, std::string system_prompt = "")
      : session_(&session), system_(std::move(system_prompt)) {}

  // Adds the user's message, generates the assistant's reply and adds it. With the session's
  // overflow policy drop_messages, the oldest whole turns are dropped (the system prompt and
  // the new message stay) until the prompt and min(max_tokens, context / 2) fit.
  Expected<GenerateResult> send(std::string_view user_text, const GenerateOptions& options = {},
                                const TokenCallback& on_piece = {}) {
    messages_.push_back({"user", std::string(user_text)});
    auto r = run(options, on_piece);
    if (!r) {
      messages_.pop_back();
      return r.error();
    }
    messages_.push_back({"assistant", r->text});
    return r;
  }

  // Forgets the messages (the system prompt stays, and so does its cached prefix).
  void reset() { messages_.clear(); }
  void set_system_prompt(std::string s) { system_ = std::move(s); }
  const std::string& system_prompt() const { return system_; }
  const std::vector<ChatMessage>& messages() const { return messages_; }
  int64_t dropped_messages() const { return dropped_; }

  // The prompt text for the current messages (with the generation prompt).
  Expected<std::string> render() const {
    std::vector<ChatMessage> all;
    if (!system_.empty()) all.push_back({"system", system_});
    all.insert(all.end(), messages_.begin(), messages_.end());
    return session_->chat_template().apply(all, /*add_generation_prompt=*/true);
  }

 private:
  Expected<GenerateResult> run(const GenerateOptions& options, const TokenCallback& on_piece) {
    const int64_t n_ctx = session_->n_ctx();
    const int64_t room = options.max_tokens > 0 ? std::min<int64_t>(options.max_tokens, n_ctx / 2) : 0;
    for (;;) {
      auto text = render();
      if (!text) return text.error();
      auto ids = session_->tokenize(*text);
      if (!ids) return ids.error();
      const bool fits = static_cast<int64_t>(ids->size()) + room <= n_ctx;
      if (fits || session_->params().overflow != OverflowPolicy::drop_messages || messages_.size() <= 1)
        return session_->generate_ids(*ids, options, on_piece);
      // Drop the oldest turn: its user message and the reply that followed it.
      messages_.erase(messages_.begin());
      ++dropped_;
      while (messages_.size() > 1 && messages_.front().role != "user") {
        messages_.erase(messages_.begin());
        ++dropped_;
      }
    }
  }

  Session* session_;
  std::string system_;
  std::vector<ChatMessage> messages_;
  int64_t dropped_ = 0;
};

}  // namespace v0
}  // namespace tinyslm
