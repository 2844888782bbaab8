// tinyslm session: the public API an app uses.
//
//   auto model = tinyslm::Model::open("SmolLM2-135M-Instruct-Q8_0.gguf");
//   auto session = tinyslm::Session::create(*model, {.context = 2048, .threads = 2});
//   auto prompt = session->chat_template().apply({{"user", "Hello!"}}, true);
//   session->generate(*prompt, {.sampler = {.temperature = 0.7f, .top_p = 0.9f, .seed = 42}, .max_tokens = 256},
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
// generate is built from a token-level API an app can drive itself: prefill(ids) makes ids the
// cached sequence (reusing the cached prefix the same way), sample() picks the next token from
// the last logits, append() evaluates one, step() does both. GenerateOptions::on_logits may
// change the logits before sampling (a grammar's mask) and on_sample may replace or veto the
// sampled token; both apply to generate and to sample / step alike.
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
// Hybrid models (lfm2) carry a recurrent state that cannot be cut back like the KV cache: the
// session checkpoints it before and after the last token of every prompt and at the end of
// every reply, and reuses the longest cached prefix that ends at a checkpoint (or at the end
// of the cache); with none, it evaluates from the start. Shifts restart the same way.
//
// save_state() / load_state() write and read the tokens and the K/V rows of the filled
// positions (and a hybrid model's recurrent state) with a versioned header, a fingerprint of
// the model and a checksum; load_state validates everything before it touches the cache. The
// rows are stored in the cache's own types (f16, q8_0, q4_0); a state saved with other cache
// types is refused, not converted.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
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
#include "speculative.hpp"
#include "tokenizer.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

enum class OverflowPolicy : uint8_t { error, shift, drop_messages };

struct SessionParams {
  int64_t context = 2048;  // positions in the KV cache; 0 = the model's training context
  int threads = 1;
  int64_t batch = 512;     // most prompt tokens per forward chunk (and per cancellation check)
  OverflowPolicy overflow = OverflowPolicy::error;
  int64_t keep = 1;        // tokens kept at the start when shifting (1 = the BOS token)
  KvType type_k = KvType::f16;  // KV cache element types (-ctk / -ctv; kv_quant.hpp)
  KvType type_v = KvType::f16;
  ThreadPlacement placement = {};  // CPU mask or callback for the worker threads (threads.hpp)
  int32_t max_draft = 0;  // most speculative draft tokens verified per step (sizes the logits
                          // buffer: 1 + max_draft rows); a longer draft_max is cut to it, and
                          // 0 (the default: no extra memory) turns speculation off
};

// Receives each piece of generated text (whole UTF-8 characters); return false to stop.
using TokenCallback = std::function<bool(std::string_view piece)>;

// Sees the logits of the next position before the sampler does and may change them in place
// (a grammar's mask, a bias that depends on the text so far). They are the session's copy:
// the cache and last_logits() keep the model's values.
using LogitsHook = std::function<void(std::span<float> logits)>;

// What a SampleHook returns to refuse the sampled token: it is banned at this position and the
// sampler draws again.
inline constexpr int32_t kVetoToken = -1;

// Sees each sampled token with the logits it was drawn from and returns the token to use: `id`
// to keep it, another id to use that one instead, or kVetoToken.
using SampleHook = std::function<int32_t(int32_t id, std::span<const float> logits)>;

struct GenerateOptions {
  SamplerParams sampler = {};               // temperature <= 0: greedy (lowest id wins ties)
  int32_t max_tokens = 256;                 // < 0: until end of generation or a full context
  std::vector<std::string> stop = {};       // stop strings: not emitted, not in the result text
  const std::atomic<bool>* cancel = nullptr;  // set to true (from any thread) to stop
  bool stop_at_eog = true;                  // stop at EOS / end-of-turn tokens
  bool render_special = false;              // write the text of control tokens
  bool flush_partial_char = true;           // at the end, an incomplete UTF-8 character left
                                            // over becomes U+FFFD (false: it is dropped)
  LogitsHook on_logits = {};
  SampleHook on_sample = {};
  // Hybrid models: also checkpoint the recurrent state after this many prompt tokens (Chat
  // passes the end of the messages before the generation prompt, where the next turn's
  // prompt still agrees when the template renders earlier replies differently). -1: none.
  int64_t checkpoint_at = -1;
  // Speculative decoding (n-gram prompt lookup, verified in one batched forward). It only
  // applies to greedy sampling (temperature <= 0) without on_logits / on_sample hooks on a model
  // without recurrent state; otherwise decoding is plain, silently. Every token is still chosen
  // by the sampler from its own position's logits, so the ids are those of plain decoding up
  // to rounding: a row of a batched forward can differ from a one-token forward in the last
  // bits (as a prompt's last row already does), which may flip an exact near-tie.
  SpeculativeOptions speculative = {};
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
  double generation_tokens_per_s = 0;  // generated tokens kept in the cache per second of decoding
  int64_t draft_proposed = 0;    // speculative draft tokens evaluated
  int64_t draft_accepted = 0;    // of them, the ones the model agreed with (kept)
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
  uint64_t kv_cache = 0;  // keys and values for every position of the context, in the cache types
  uint64_t compute = 0;   // activations, attention and matmul scratch
  uint64_t logits = 0;
  uint64_t other = 0;     // tokenizer, sampler, converted norm vectors
  uint64_t state = 0;     // hybrid models: recurrent state and its checkpoints
  uint64_t total() const { return weights + kv_cache + compute + logits + other + state; }
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
// The kv type field: kStateKvF16 for an all-f16 cache (the files of earlier builds), else
// 0x100 | type_k | type_v << 4. A state is only loaded into a cache of the same types.
inline uint32_t state_kv_code(KvType k, KvType v) {
  if (k == KvType::f16 && v == KvType::f16) return kStateKvF16;
  return 0x100u | static_cast<uint32_t>(k) | static_cast<uint32_t>(v) << 4;
}
inline std::string state_kv_name(uint32_t code) {
  if (code == kStateKvF16) return "f16/f16";
  for (KvType k : {KvType::f16, KvType::q8_0, KvType::q4_0})
    for (KvType v : {KvType::f16, KvType::q8_0, KvType::q4_0})
      if (state_kv_code(k, v) == code) return std::string(kv_type_name(k)) + "/" + kv_type_name(v);
  return "unknown";
}
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

// Generated text on its way to the caller. Pieces go through the stop-string filter; whatever
// could still become a stop string is held back until it no longer can.
class StopFilter {
 public:
  StopFilter(const std::vector<std::string>& stops, const TokenCallback& on_piece)
      : stops_(stops), on_piece_(on_piece) {}

  // Adds a piece (final: the end of the text, nothing is held back). Returns why to stop
  // (stop_string or callback), or nothing to go on.
  std::optional<StopReason> push(std::string_view piece, bool final) {
    all_ += piece;
    size_t cut = std::string::npos;
    for (const auto& s : stops_) {
      const size_t from = emitted_ >= s.size() ? emitted_ - s.size() + 1 : 0;
      const size_t p = all_.find(s, from);
      if (p != std::string::npos && p < cut) cut = p;
    }
    std::optional<StopReason> stop;
    size_t upto = all_.size();
    if (cut != std::string::npos) {
      upto = std::max(cut, emitted_);
      all_.resize(upto);
      stop = StopReason::stop_string;
    } else if (!final) {
      upto = all_.size() - stop_prefix_hold(std::string_view(all_).substr(emitted_), stops_);
    }
    if (upto > emitted_) {
      const std::string_view out = std::string_view(all_).substr(emitted_, upto - emitted_);
      emitted_ = upto;
      if (on_piece_ && !on_piece_(out) && !stop) stop = StopReason::callback;
    }
    return stop;
  }

  std::string take_text() { return std::move(all_); }

 private:
  const std::vector<std::string>& stops_;
  const TokenCallback& on_piece_;
  std::string all_;
  size_t emitted_ = 0;
};

using Clock = std::chrono::steady_clock;

// One generated token's bookkeeping in the decode loop: why to stop after it, if anything.
using EmitFn = std::function<Expected<std::optional<StopReason>>(int32_t id)>;

inline double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// Ids a session can evaluate: at least one, each inside the vocabulary.
inline Status check_prompt_ids(std::span<const int32_t> ids, int64_t n_vocab, const char* what) {
  if (ids.empty()) return make_error(Errc::invalid_argument, std::string(what) + ": empty prompt");
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= n_vocab)
      return make_error(Errc::out_of_range, std::string(what) + ": token id " + std::to_string(ids[i]) +
                                                " at index " + std::to_string(i) + " is outside the vocabulary (" +
                                                std::to_string(n_vocab) + " tokens)");
  return {};
}

}  // namespace detail

class Session {
 public:
  // Builds the context (KV cache for params.context positions), the tokenizer and the chat
  // template. Fails on a context larger than the model's training context. A tokenizer that
  // does not load is no failure (generate_ids still works): tokenizer_error() tells why.
  static Expected<Session> create(const Model& model, const SessionParams& params = {});

  Session(Session&&) = default;
  Session& operator=(Session&&) = default;

  // Generates a continuation of `prompt`, the whole text so far (BOS added as the tokenizer
  // asks, special tokens such as <|im_end|> recognised).
  Expected<GenerateResult> generate(std::string_view prompt, const GenerateOptions& options = {},
                                    const TokenCallback& on_piece = {});
  // The same from token ids (no tokenizer involved in the prompt): prefill, then
  // generate_from_cache.
  Expected<GenerateResult> generate_ids(std::span<const int32_t> prompt_ids, const GenerateOptions& options = {},
                                        const TokenCallback& on_piece = {});
  // Generates from the sequence in the cache as it stands (after prefill(), generate or
  // step), sampling first from last_logits(); no prompt is evaluated. The sampler starts from
  // options.sampler and has seen the cached tokens.
  Expected<GenerateResult> generate_from_cache(const GenerateOptions& options = {},
                                               const TokenCallback& on_piece = {});

  // Token level. prefill makes `ids` the sequence in the cache the way generate does: the
  // longest prefix already cached is kept and the rest evaluated in chunks of the batch size
  // (at least the last token again, for its logits); a prompt longer than the context follows
  // the overflow policy. Fails with Errc::cancelled when `cancel` is set between chunks (the
  // cache then holds the chunks evaluated so far).
  Status prefill(std::span<const int32_t> ids, const std::atomic<bool>* cancel = nullptr);
  // A sampler for this model's vocabulary that has seen the cached tokens (for the penalties).
  Expected<Sampler> make_sampler(const SamplerParams& params = {}) const;
  // Picks the next token from last_logits() through the options' hooks and records it in the
  // sampler; evaluates nothing. Fails when there are no logits (before any prefill).
  Expected<int32_t> sample(Sampler& sampler, const GenerateOptions& options = {});
  // Evaluates one token on top of the cache. A full context is shifted (policy shift) or fails
  // with Errc::out_of_range.
  Status append(int32_t id);
  // sample, then append: the token chosen and evaluated.
  Expected<int32_t> step(Sampler& sampler, const GenerateOptions& options = {});

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

  // The model, through the context, which holds a share of it: a session stays valid when the
  // Model object it was created from is moved or destroyed.
  const Model& model() const { return ctx_.model(); }
  const SessionParams& params() const { return params_; }
  const Context& context() const { return ctx_; }
  bool has_tokenizer() const { return has_tokenizer_; }
  // Why the model's tokenizer did not load; nullptr when it did.
  const Error* tokenizer_error() const { return tok_error_.code() == Errc::ok ? nullptr : &tok_error_; }
  const Tokenizer& tokenizer() const { return tok_; }
  const ChatTemplate& chat_template() const { return tmpl_; }
  ChatTemplate& chat_template() { return tmpl_; }

  // Session state: the tokens and the K/V rows of the filled positions.
  std::vector<uint8_t> save_state() const;
  Status load_state(std::span<const uint8_t> bytes);
  Status save_state_file(const std::string& path) const;
  Status load_state_file(const std::string& path);

 private:
  explicit Session(Context ctx) : ctx_(std::move(ctx)) {}
  Error no_tokenizer() const {
    if (tok_error_.code() != Errc::ok) return Error(tok_error_).context("session: the model's tokenizer did not load");
    return make_error(Errc::unsupported, "session: the model has no usable tokenizer (use generate_ids)");
  }
  int32_t n_vocab() const { return static_cast<int32_t>(model().hparams().n_vocab); }
  Status check_options(const GenerateOptions& options) const;
  // prefill with the counts and times of the prompt; false when cancelled.
  Expected<bool> prefill_counted(std::span<const int32_t> ids, const std::atomic<bool>* cancel, GenerateStats& st,
                                 int64_t checkpoint_at = -1);
  // Evaluates toks on top of the cache in chunks of the batch size; false when cancelled.
  Expected<bool> eval_chunks(std::span<const int32_t> toks, const std::atomic<bool>* cancel, int64_t* evaluated);
  // Room for one more token: nothing when there is (after a shift, if the policy allows it),
  // else why not (context_full, or cancelled while the kept tokens were evaluated again).
  Expected<std::optional<StopReason>> make_room(const std::atomic<bool>* cancel, GenerateStats& st);
  Status eval_token(int32_t id);
  // A sample hook's answer for `id`: the token to use, drawing again after each veto.
  Expected<int32_t> apply_sample_hook(Sampler& sampler, const SampleHook& hook, int32_t id,
                                      std::span<const float> logits);
  // The token loop of generate: samples, streams the text, evaluates, until a stop.
  Status decode(Sampler& sampler, const GenerateOptions& options, const TokenCallback& on_piece,
                GenerateResult& res, detail::Clock::time_point t_start);
  bool use_speculative(const GenerateOptions& options) const {
    return options.speculative.type == SpecType::ngram_simple && options.sampler.temperature <= 0.0f &&
           !options.on_logits && !options.on_sample && ctx_.state().empty();
  }
  // Evaluates the generated token `id` (the cache has room for it) with a draft after it, if
  // one is found; see decode.
  Expected<std::optional<StopReason>> speculate(int32_t id, Sampler& sampler, const GenerateOptions& options,
                                                const detail::EmitFn& emit, GenerateStats& st,
                                                std::optional<int32_t>& pending, int64_t& kept);

  SessionParams params_;
  Context ctx_;
  Tokenizer tok_;
  bool has_tokenizer_ = false;
  Error tok_error_;  // Errc::ok: the tokenizer loaded
  ChatTemplate tmpl_;
  std::vector<int32_t> tokens_;
  bool logits_valid_ = false;
  std::vector<float> hooked_logits_;  // the copy a logits hook or a veto changes
  std::vector<int32_t> draft_, verify_;  // speculative scratch: the draft, [token | draft]
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
  if (params.max_draft < 0 || params.max_draft > 256)
    return make_error(Errc::invalid_argument, "session: max_draft must be in [0, 256]");
  const ContextParams cp{.n_ctx = n_ctx, .n_threads = params.threads, .n_batch = params.batch,
                         .type_k = params.type_k, .type_v = params.type_v,
                         .placement = params.placement, .verify_rows = 1 + params.max_draft};
  auto ctx = Context::create(model, cp);
  if (!ctx) return ctx.error();
  Session s(std::move(*ctx));
  s.params_ = params;
  s.params_.context = n_ctx;
  if (auto tok = Tokenizer::from_gguf(model.gguf())) {
    s.tok_ = std::move(*tok);
    s.has_tokenizer_ = s.tok_.n_vocab() > 0;
    s.tmpl_ = ChatTemplate::from_gguf(model.gguf(), s.tok_);
  } else {
    s.tok_error_ = tok.error();
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

inline Status Session::check_options(const GenerateOptions& options) const {
  for (const auto& s : options.stop)
    if (s.empty()) return make_error(Errc::invalid_argument, "generate: empty stop string");
  return {};
}

inline Expected<GenerateResult> Session::generate_ids(std::span<const int32_t> prompt_ids,
                                                      const GenerateOptions& options, const TokenCallback& on_piece) {
  const auto t_start = detail::Clock::now();
  if (auto st = detail::check_prompt_ids(prompt_ids, n_vocab(), "generate"); !st) return st.error();
  if (auto st = check_options(options); !st) return st.error();
  // Created before the cache is touched, so that bad sampler settings leave it as it was.
  auto sampler = Sampler::create(n_vocab(), options.sampler);
  if (!sampler) return sampler.error();
  GenerateResult res;
  auto done = prefill_counted(prompt_ids, options.cancel, res.stats, options.checkpoint_at);
  if (!done) return done.error();
  if (!*done) {
    res.stop = StopReason::cancelled;
    return res;
  }
  for (int32_t id : tokens_) sampler->accept(id);
  if (auto st = decode(*sampler, options, on_piece, res, t_start); !st) return st.error();
  return res;
}

inline Expected<GenerateResult> Session::generate_from_cache(const GenerateOptions& options,
                                                             const TokenCallback& on_piece) {
  const auto t_start = detail::Clock::now();
  if (!logits_valid_)
    return make_error(Errc::invalid_argument, "generate: no logits to continue from (prefill first)");
  if (auto st = check_options(options); !st) return st.error();
  auto sampler = make_sampler(options.sampler);
  if (!sampler) return sampler.error();
  GenerateResult res;
  if (auto st = decode(*sampler, options, on_piece, res, t_start); !st) return st.error();
  return res;
}

inline Status Session::prefill(std::span<const int32_t> ids, const std::atomic<bool>* cancel) {
  if (auto st = detail::check_prompt_ids(ids, n_vocab(), "prefill"); !st) return st;
  GenerateStats st;
  auto done = prefill_counted(ids, cancel, st);
  if (!done) return done.error();
  if (!*done) return make_error(Errc::cancelled, "prefill: cancelled");
  return {};
}

inline Expected<bool> Session::prefill_counted(std::span<const int32_t> ids, const std::atomic<bool>* cancel,
                                               GenerateStats& st, int64_t checkpoint_at) {
  const int64_t n_ctx = ctx_.n_ctx();
  st.prompt_tokens = static_cast<int64_t>(ids.size());
  // A prompt longer than the context: an error, or (shift) its start and its most recent half.
  std::vector<int32_t> prompt(ids.begin(), ids.end());
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
  common = static_cast<size_t>(ctx_.restorable(static_cast<int64_t>(common)));  // hybrid: a checkpoint
  if (auto t = ctx_.truncate(static_cast<int64_t>(common)); !t) return t.error();
  tokens_.resize(common);
  logits_valid_ = false;
  st.prompt_reused = static_cast<int64_t>(common);

  const auto t_prompt = detail::Clock::now();
  auto rest = std::span<const int32_t>(prompt).subspan(common);
  Expected<bool> done = true;
  // A hybrid model's state cannot be cut back: checkpoint it before the last prompt token (to
  // evaluate the same prompt again) and after it (for the next turn).
  const int64_t hint = checkpoint_at - static_cast<int64_t>(common);  // tokens of rest before the hint
  if (!ctx_.state().empty() && st.shifts == 0 && hint > 0 && hint + 1 < static_cast<int64_t>(rest.size())) {
    done = eval_chunks(rest.first(static_cast<size_t>(hint)), cancel, &st.prompt_evaluated);
    if (done && *done) ctx_.checkpoint();
    rest = rest.subspan(static_cast<size_t>(hint));
  }
  if (!ctx_.state().empty() && rest.size() > 1 && done && *done) {
    done = eval_chunks(rest.first(rest.size() - 1), cancel, &st.prompt_evaluated);
    if (done && *done) ctx_.checkpoint();
    rest = rest.last(1);
  }
  if (done && *done) done = eval_chunks(rest, cancel, &st.prompt_evaluated);
  if (!done) return done.error();
  if (*done) ctx_.checkpoint();
  st.prompt_ms = detail::ms_since(t_prompt);
  if (st.prompt_ms > 0) st.prompt_tokens_per_s = 1000.0 * static_cast<double>(st.prompt_evaluated) / st.prompt_ms;
  return *done;
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

inline Expected<Sampler> Session::make_sampler(const SamplerParams& params) const {
  auto sampler = Sampler::create(n_vocab(), params);
  if (!sampler) return sampler.error();
  for (int32_t id : tokens_) sampler->accept(id);
  return sampler;
}

inline Expected<int32_t> Session::sample(Sampler& sampler, const GenerateOptions& options) {
  if (!logits_valid_) return make_error(Errc::invalid_argument, "sample: no logits to sample from (prefill first)");
  if (sampler.n_vocab() != n_vocab())
    return make_error(Errc::invalid_argument, "sample: the sampler is for a vocabulary of " +
                                                  std::to_string(sampler.n_vocab()) + " tokens, the model has " +
                                                  std::to_string(n_vocab()));
  std::span<const float> logits = ctx_.last_logits();
  if (options.on_logits) {
    hooked_logits_.assign(logits.begin(), logits.end());
    options.on_logits(hooked_logits_);
    logits = hooked_logits_;
  }
  int32_t id = sampler.sample(logits);
  if (options.on_sample) {
    auto chosen = apply_sample_hook(sampler, options.on_sample, id, logits);
    if (!chosen) return chosen.error();
    id = *chosen;
  }
  sampler.accept(id);
  return id;
}

inline Expected<int32_t> Session::apply_sample_hook(Sampler& sampler, const SampleHook& hook, int32_t id,
                                                    std::span<const float> logits) {
  for (int32_t vetoes = 0;; ++vetoes) {
    const int32_t pick = hook(id, logits);
    if (pick == id) return id;
    if (pick != kVetoToken) {
      if (pick < 0 || pick >= n_vocab())
        return make_error(Errc::out_of_range, "sample: the sample hook chose token " + std::to_string(pick) +
                                                  ", outside the vocabulary");
      return pick;
    }
    if (vetoes + 1 >= n_vocab())
      return make_error(Errc::invalid_argument, "sample: the sample hook vetoed every token");
    if (logits.data() != hooked_logits_.data()) hooked_logits_.assign(logits.begin(), logits.end());
    hooked_logits_[static_cast<size_t>(id)] = -INFINITY;
    logits = hooked_logits_;
    id = sampler.sample(logits);
  }
}

inline Expected<std::optional<StopReason>> Session::make_room(const std::atomic<bool>* cancel, GenerateStats& st) {
  const int64_t n_ctx = ctx_.n_ctx();
  if (ctx_.n_past() < n_ctx) return std::optional<StopReason>();
  const int64_t keep = std::min<int64_t>(params_.keep, n_ctx - 1);
  if (params_.overflow != OverflowPolicy::shift || keep >= n_ctx - 1) return std::optional(StopReason::context_full);
  const int64_t n_discard = std::max<int64_t>(1, (n_ctx - keep) / 2);
  // A hybrid model restarts from its latest checkpoint inside the kept tokens.
  const int64_t from = ctx_.restorable(keep);
  std::vector<int32_t> rest(tokens_.begin() + from, tokens_.begin() + keep);
  rest.insert(rest.end(), tokens_.begin() + keep + n_discard, tokens_.end());
  if (auto t = ctx_.truncate(from); !t) return t.error();
  tokens_.resize(static_cast<size_t>(from));
  logits_valid_ = false;
  ++st.shifts;
  auto ok = eval_chunks(rest, cancel, &st.prompt_evaluated);
  if (!ok) return ok.error();
  if (!*ok) return std::optional(StopReason::cancelled);
  return std::optional<StopReason>();
}

inline Status Session::eval_token(int32_t id) {
  auto lg = ctx_.eval(std::span<const int32_t>(&id, 1));
  if (!lg) return lg.error();
  tokens_.push_back(id);
  logits_valid_ = true;
  return {};
}

inline Status Session::append(int32_t id) {
  if (auto st = detail::check_prompt_ids(std::span<const int32_t>(&id, 1), n_vocab(), "append"); !st) return st;
  GenerateStats st;
  auto room = make_room(nullptr, st);
  if (!room) return room.error();
  if (*room)
    return make_error(Errc::out_of_range, "append: the context is full (" + std::to_string(ctx_.n_ctx()) +
                                              " positions) and the overflow policy does not shift");
  return eval_token(id);
}

inline Expected<int32_t> Session::step(Sampler& sampler, const GenerateOptions& options) {
  auto id = sample(sampler, options);
  if (!id) return id.error();
  if (auto st = append(*id); !st) return st.error();
  return *id;
}

// `pending` is a generated token (sent through emit) not yet evaluated. Speculation evaluates it
// with a draft and emits the tokens the sampler picks from the draft's rows, which are exactly
// the tokens plain decoding would pick; the cache is then cut back to what plain decoding would
// hold, so the ids, the stop and the final state are the same both ways.
inline Status Session::decode(Sampler& sampler, const GenerateOptions& options, const TokenCallback& on_piece,
                              GenerateResult& res, detail::Clock::time_point t_start) {
  GenerateStats& st = res.stats;
  detail::StopFilter text(options.stop, on_piece);
  StreamDecoder decoder(tok_, options.render_special);
  const auto at_max = [&] { return options.max_tokens >= 0 && st.generated >= options.max_tokens; };
  detail::Clock::time_point t_first{};
  double decode_ms = 0;
  int64_t decoded = 0;
  const detail::EmitFn emit = [&](int32_t id) -> Expected<std::optional<StopReason>> {
    res.ids.push_back(id);
    if (++st.generated == 1) {
      t_first = detail::Clock::now();
      st.time_to_first_token_ms = std::chrono::duration<double, std::milli>(t_first - t_start).count();
    }
    if (has_tokenizer_ && options.stop_at_eog && tok_.is_eog(id)) return std::optional(StopReason::eog);
    if (has_tokenizer_) {
      auto piece = decoder.push(id);
      if (!piece) return piece.error();
      if (auto s = text.push(*piece, false)) return s;
    }
    if (at_max()) return std::optional(StopReason::max_tokens);
    return std::optional<StopReason>();
  };
  const bool spec = use_speculative(options);
  std::optional<StopReason> stop;
  std::optional<int32_t> pending;
  for (;;) {
    if (!pending) {
      if (at_max()) stop = StopReason::max_tokens;
      else if (detail::is_cancelled(options.cancel)) stop = StopReason::cancelled;
      if (stop) break;
      auto id = sample(sampler, options);
      if (!id) return id.error();
      auto s = emit(*id);
      if (!s) return s.error();
      if ((stop = *s)) break;
      pending = *id;
    }
    auto room = make_room(options.cancel, st);  // re-evaluation after a shift is prefill work, not decoding
    if (!room) return room.error();
    if ((stop = *room)) break;
    const auto t_eval = detail::Clock::now();
    int64_t kept = 1;
    if (spec) {
      auto s = speculate(*pending, sampler, options, emit, st, pending, kept);
      if (!s) return s.error();
      stop = *s;
    } else {
      if (auto e = eval_token(*pending); !e) return e.error();
      pending.reset();
    }
    decode_ms += detail::ms_since(t_eval);
    decoded += kept;
    if (stop) break;
  }
  res.stop = *stop;
  if (has_tokenizer_ && res.stop != StopReason::stop_string && res.stop != StopReason::callback) {
    const std::string rest = options.flush_partial_char ? decoder.flush() : std::string();
    if (auto last = text.push(rest, true)) res.stop = *last;
  }
  res.text = text.take_text();
  ctx_.checkpoint();  // the end of the reply, where a chat's next turn starts
  if (st.generated > 0) st.generation_ms = detail::ms_since(t_first);
  if (decode_ms > 0) st.generation_tokens_per_s = 1000.0 * static_cast<double>(decoded) / decode_ms;
  return {};
}

// Drafts after [cache | id]; with no draft, id is evaluated alone. Otherwise [id | draft] is
// evaluated in one forward keeping every row's logits, and row i (the logits after draft token
// i) chooses the next token the way sample() would, until it differs from the draft, a stop
// comes or the rows run out. The cache keeps id and the drafts that were followed, and the
// logits of the last kept row are the last logits. A draft never needs a context shift.
inline Expected<std::optional<StopReason>> Session::speculate(int32_t id, Sampler& sampler,
                                                              const GenerateOptions& options,
                                                              const detail::EmitFn& emit, GenerateStats& st,
                                                              std::optional<int32_t>& pending, int64_t& kept) {
  pending.reset();
  kept = 1;
  const int64_t base = n_past();
  SpeculativeOptions o = options.speculative;
  o.draft_max = static_cast<int>(std::min<int64_t>({o.draft_max, ctx_.max_eval_all() - 1, n_ctx() - base - 1}));
  int k = 0;
  if (o.draft_max > 0) {
    tokens_.push_back(id);
    k = ngram_draft(tokens_, o, draft_);
    tokens_.pop_back();
  }
  if (k == 0) {
    if (auto e = eval_token(id); !e) return e.error();
    return std::optional<StopReason>();
  }
  verify_.assign(1, id);
  verify_.insert(verify_.end(), draft_.begin(), draft_.end());
  auto lg = ctx_.eval_all(verify_);
  if (!lg) return lg.error();
  tokens_.insert(tokens_.end(), verify_.begin(), verify_.end());
  logits_valid_ = true;
  st.draft_proposed += k;
  std::optional<StopReason> stop;
  int64_t i = 0;
  for (;; ++i) {
    if (detail::is_cancelled(options.cancel)) {  // checked before every token, as plain decoding does
      stop = StopReason::cancelled;
      break;
    }
    const int32_t next = sampler.sample(ctx_.logits(i));
    sampler.accept(next);
    auto s = emit(next);
    if (!s) return s.error();
    if ((stop = *s)) break;
    if (i == k || next != draft_[static_cast<size_t>(i)]) {
      pending = next;
      break;
    }
    ++st.draft_accepted;
  }
  if (auto t = ctx_.truncate(base + 1 + i); !t) return t.error();
  tokens_.resize(static_cast<size_t>(base + 1 + i));
  ctx_.keep_logits(i);
  kept = 1 + i;
  return stop;
}

inline std::vector<uint8_t> Session::save_state() const {
  const HParams& hp = model().hparams();
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
  w.u32(detail::state_kv_code(kv.type_k(), kv.type_v()));
  w.u32(0);
  w.u64(static_cast<uint64_t>(kv.n_ctx()));
  w.u64(n);
  for (int32_t t : tokens_) w.u32(static_cast<uint32_t>(t));
  for (int64_t il = 0; il < kv.n_layer(); ++il) {
    for (int pass = 0; pass < 2; ++pass) {
      const KvType t = pass == 0 ? kv.type_k() : kv.type_v();
      const int64_t rb = pass == 0 ? kv.row_bytes_k() : kv.row_bytes_v();
      const uint8_t* base = pass == 0 ? kv.k_bytes(il) : kv.v_bytes(il);
      for (int64_t g = 0; g < hp.n_head_kv; ++g) {
        const uint8_t* rows = base + g * kv.n_ctx() * rb;
        const size_t bytes = static_cast<size_t>(n * static_cast<uint64_t>(rb));
        // F16 rows as little-endian halves; quantized rows are written as the blocks lie in memory
        if (t == KvType::f16) w.u16s(reinterpret_cast<const uint16_t*>(rows), bytes / 2);
        else w.raw(rows, bytes);
      }
    }
  }
  // A hybrid model's recurrent state at the last position, F32 bit patterns.
  for (float v : ctx_.state().live()) w.u32(std::bit_cast<uint32_t>(v));
  detail::Hash64 h;
  h.bytes(out.data(), out.size());
  w.u64(h.value());
  return out;
}

inline Status Session::load_state(std::span<const uint8_t> bytes) {
  const HParams& hp = model().hparams();
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
  KvCache& kv = ctx_.kv();
  const uint32_t kv_code = r.u32(), want_code = detail::state_kv_code(kv.type_k(), kv.type_v());
  if (kv_code != want_code)
    return make_error(Errc::invalid_argument, "session state: saved with a " + detail::state_kv_name(kv_code) +
                                                  " (K/V) cache; this session's cache is " +
                                                  detail::state_kv_name(want_code));
  r.u32();
  r.u64();  // the saving session's context length (any context that holds the tokens will do)
  const uint64_t n = r.u64();
  if (n > static_cast<uint64_t>(ctx_.n_ctx()))
    return make_error(Errc::out_of_range, "session state: holds " + std::to_string(n) +
                                              " tokens, more than this session's context (" +
                                              std::to_string(ctx_.n_ctx()) + ")");
  const uint64_t row_bytes = static_cast<uint64_t>(kv.n_layer() * hp.n_head_kv * (kv.row_bytes_k() + kv.row_bytes_v()));
  const uint64_t expect = detail::kStateHeaderBytes + n * 4 + n * row_bytes + 4 * ctx_.state().floats() + 8;
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
  ctx_.reset();  // the cache and the recurrent state with its checkpoints
  tokens_.clear();
  for (int64_t il = 0; il < kv.n_layer(); ++il) {
    for (int pass = 0; pass < 2; ++pass) {
      const KvType t = pass == 0 ? kv.type_k() : kv.type_v();
      const int64_t rb = pass == 0 ? kv.row_bytes_k() : kv.row_bytes_v();
      uint8_t* base = pass == 0 ? kv.k_bytes(il) : kv.v_bytes(il);
      for (int64_t g = 0; g < hp.n_head_kv; ++g) {
        uint8_t* rows = base + g * kv.n_ctx() * rb;
        const size_t len = static_cast<size_t>(n * static_cast<uint64_t>(rb));
        if (t == KvType::f16) {
          r.u16s(reinterpret_cast<uint16_t*>(rows), len / 2);
        } else {
          std::memcpy(rows, r.p + r.at, len);
          r.at += len;
        }
      }
    }
  }
  for (float& v : ctx_.state().live()) v = std::bit_cast<float>(r.u32());
  kv.advance(static_cast<int64_t>(n));
  tokens_ = std::move(toks);
  logits_valid_ = false;
  return {};
}

inline Status Session::save_state_file(const std::string& path) const {
  const std::vector<uint8_t> bytes = save_state();
  std::FILE* f = detail::fopen_utf8(path, "wb");
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
                                                int64_t batch = 512, KvType type_k = KvType::f16,
                                                KvType type_v = KvType::f16) {
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
  ContextParams cp{n_ctx, threads, batch, false, type_k, type_v};
  cp.verify_rows = 1 + SessionParams{}.max_draft;
  auto plan = ContextPlan::make(hp, n_vocab, cp);
  if (!plan) return plan.error();
  MemoryEstimate m;
  uint64_t small = 0;
  for (const auto& t : f.tensors()) {
    m.weights += t.n_bytes;
    if (t.n_dims == 1) small += t.n_elements * 4;  // norms and biases are kept as floats
  }
  m.kv_cache = plan->kv_bytes;
  m.state = plan->state_bytes;
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
                                                int64_t batch = 512, KvType type_k = KvType::f16,
                                                KvType type_v = KvType::f16) {
  auto f = GgufFile::open(path);
  if (!f) return f.error();
  return memory_estimate(*f, context, threads, batch, type_k, type_v);
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
      if (fits || session_->params().overflow != OverflowPolicy::drop_messages || messages_.size() <= 1) {
        GenerateOptions o = options;
        o.checkpoint_at = messages_end(*ids);
        return session_->generate_ids(*ids, o, on_piece);
      }
      // Drop the oldest turn: its user message and the reply that followed it.
      messages_.erase(messages_.begin());
      ++dropped_;
      while (messages_.size() > 1 && messages_.front().role != "user") {
        messages_.erase(messages_.begin());
        ++dropped_;
      }
    }
  }

  // Tokens of the messages without the generation prompt when they are a prefix of ids (the
  // point a hybrid model's next turn can restart from), else -1.
  int64_t messages_end(const std::vector<int32_t>& ids) const {
    std::vector<ChatMessage> all;
    if (!system_.empty()) all.push_back({"system", system_});
    all.insert(all.end(), messages_.begin(), messages_.end());
    auto text = session_->chat_template().apply(all, /*add_generation_prompt=*/false);
    if (!text) return -1;
    auto head = session_->tokenize(*text);
    if (!head || head->size() >= ids.size() || !std::equal(head->begin(), head->end(), ids.begin())) return -1;
    return static_cast<int64_t>(head->size());
  }

  Session* session_;
  std::string system_;
  std::vector<ChatMessage> messages_;
  int64_t dropped_ = 0;
};

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
