// tinyslm C API implementation: the functions declared in tinyslm.h, over the C++ API.
// Compiled in the one translation unit that defines TINYSLM_C_IMPLEMENTATION before including
// tinyslm.h (which then includes this file). Every entry point catches whatever the C++ side
// might throw (std::bad_alloc from a std::string or std::vector, mostly) and turns it into a
// status, because an exception that unwinds into C code is undefined behaviour.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "../tinyslm.h"
#include "../tinyslm.hpp"

struct tinyslm_model {
  tinyslm::Model model;
  // The copy tinyslm_model_load_from_memory made; sessions share it, so that the model
  // handle can be freed before them.
  std::shared_ptr<const std::vector<uint8_t>> bytes;
  std::string name;
  bool has_chat_template = false;
};

struct tinyslm_session {
  tinyslm_session(tinyslm::Session s, std::shared_ptr<const std::vector<uint8_t>> b)
      : session(std::move(s)), chat(session), bytes(std::move(b)) {}

  tinyslm::Session session;
  tinyslm::Chat chat;  // points at `session`: the handle is never moved
  std::shared_ptr<const std::vector<uint8_t>> bytes;
  uint32_t seed = 0;
  std::atomic<bool> cancel{false};
  std::string error;
  // What the last call returned through pointers.
  std::vector<int32_t> ids;
  std::string text;
  tinyslm::GenerateResult result;
  std::string piece;  // the NUL-terminated copy handed to the piece callback
};

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace detail {

// The C codes are the Errc values, so a status is a cast.
static_assert(static_cast<int>(Errc::io) == TINYSLM_ERR_IO && static_cast<int>(Errc::cancelled) == TINYSLM_ERR_CANCELLED &&
              static_cast<int>(Errc::out_of_memory) == TINYSLM_ERR_OUT_OF_MEMORY &&
              static_cast<int>(Errc::invalid_argument) == TINYSLM_ERR_INVALID_ARGUMENT);
static_assert(static_cast<int>(StopReason::max_tokens) == TINYSLM_STOP_MAX_TOKENS &&
              static_cast<int>(StopReason::context_full) == TINYSLM_STOP_CONTEXT_FULL);
static_assert(static_cast<int>(OverflowPolicy::drop_messages) == TINYSLM_OVERFLOW_DROP_MESSAGES);

inline std::string& c_thread_error() {
  thread_local std::string message;
  return message;
}

inline tinyslm_status c_fail(tinyslm_session* s, tinyslm_status code, std::string message) noexcept {
  // Assigning a string can itself fail for want of memory; the code still gets through.
#if !defined(TINYSLM_NO_EXCEPTIONS)
  try {
#endif
    c_thread_error() = message;
    if (s) s->error = std::move(message);
#if !defined(TINYSLM_NO_EXCEPTIONS)
  } catch (...) {
  }
#endif
  return code;
}

inline tinyslm_status c_fail(tinyslm_session* s, const Error& e) noexcept {
  return c_fail(s, static_cast<tinyslm_status>(e.code()), e.message());
}

inline tinyslm_status c_ok(tinyslm_session* s) noexcept {
  c_thread_error().clear();
  if (s) s->error.clear();
  return TINYSLM_OK;
}

// Runs an entry point's body; nothing it throws leaves.
template <class F>
tinyslm_status c_guard(tinyslm_session* s, F&& body) noexcept {
#if defined(TINYSLM_NO_EXCEPTIONS)
  (void)s;
  return body();
#else
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return c_fail(s, TINYSLM_ERR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return c_fail(s, TINYSLM_ERR_INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return c_fail(s, TINYSLM_ERR_INTERNAL, "internal error");
  }
#endif
}

inline int32_t clamp_i32(int64_t v) {
  return static_cast<int32_t>(std::clamp<int64_t>(v, std::numeric_limits<int32_t>::min(),
                                                  std::numeric_limits<int32_t>::max()));
}

// An option struct as the caller's version knows it: the defaults, overwritten by the bytes
// the caller's struct_size says it has (an older program's struct is a prefix of ours).
template <class T>
Expected<T> c_read_struct(const T* in, void (*init)(T*), const char* what) {
  T out;
  init(&out);
  if (!in) return out;
  if (in->struct_size < sizeof(uint32_t))
    return make_error(Errc::invalid_argument, std::string(what) + ": struct_size is not set (call the _init function)");
  std::memcpy(static_cast<void*>(&out), in, std::min<size_t>(in->struct_size, sizeof(T)));
  out.struct_size = sizeof(T);
  return out;
}

inline tinyslm_status c_finish_model(tinyslm_model& m, Expected<Model> model) {
  if (!model) return c_fail(nullptr, model.error());
  m.model = std::move(*model);
  const GgufFile& f = m.model.gguf();
  if (auto name = f.get<std::string>("general.name")) m.name = std::move(*name);
  m.has_chat_template = static_cast<bool>(f.get<std::string>("tokenizer.chat_template"));
  return c_ok(nullptr);
}

inline Expected<GenerateOptions> c_generate_options(tinyslm_session& s, const tinyslm_generate_options* in) {
  auto o = c_read_struct(in, tinyslm_generate_options_init, "generate options");
  if (!o) return o.error();
  if (o->n_stop < 0 || (o->n_stop > 0 && !o->stop))
    return make_error(Errc::invalid_argument, "generate options: stop is NULL or n_stop negative");
  GenerateOptions g;
  g.max_tokens = o->max_tokens;
  g.sampler.temperature = o->temperature;
  g.sampler.top_k = o->top_k;
  g.sampler.top_p = o->top_p;
  g.sampler.min_p = o->min_p;
  g.sampler.repeat_penalty = o->repeat_penalty;
  g.sampler.repeat_last_n = o->repeat_last_n;
  g.sampler.seed = o->seed != TINYSLM_SEED_DEFAULT ? o->seed : s.seed;
  for (int32_t i = 0; i < o->n_stop; ++i) {
    if (!o->stop[i]) return make_error(Errc::invalid_argument, "generate options: stop string " + std::to_string(i) + " is NULL");
    g.stop.emplace_back(o->stop[i]);
  }
  g.stop_at_eog = o->stop_at_eog != 0;
  g.render_special = o->render_special != 0;
  g.cancel = &s.cancel;
  return g;
}

inline TokenCallback c_piece_callback(tinyslm_session& s, const tinyslm_generate_options* in) {
  if (!in || in->struct_size < offsetof(tinyslm_generate_options, user_data) + sizeof(void*) || !in->on_piece)
    return {};
  const tinyslm_piece_callback fn = in->on_piece;
  void* user = in->user_data;
  return [&s, fn, user](std::string_view piece) {
    s.piece.assign(piece);
    return fn(s.piece.c_str(), clamp_i32(static_cast<int64_t>(piece.size())), user) != 0;
  };
}

inline void c_fill_result(const GenerateResult& r, tinyslm_result* out) {
  if (!out) return;
  out->text = r.text.c_str();
  out->text_length = clamp_i32(static_cast<int64_t>(r.text.size()));
  out->ids = r.ids.data();
  out->n_ids = clamp_i32(static_cast<int64_t>(r.ids.size()));
  out->stop_reason = static_cast<int32_t>(r.stop);
  out->prompt_tokens = clamp_i32(r.stats.prompt_tokens);
  out->prompt_reused = clamp_i32(r.stats.prompt_reused);
  out->prompt_ms = r.stats.prompt_ms;
  out->generation_ms = r.stats.generation_ms;
}

// Runs a generation (gen: options, callback -> Expected<GenerateResult>) and keeps its result.
template <class Gen>
tinyslm_status c_generate(tinyslm_session* s, const tinyslm_generate_options* options, tinyslm_result* out, Gen&& gen) {
  if (!s) return c_fail(nullptr, TINYSLM_ERR_INVALID_ARGUMENT, "generate: session is NULL");
  if (out) *out = tinyslm_result{};
  return c_guard(s, [&] {
    auto opt = c_generate_options(*s, options);
    if (!opt) return c_fail(s, opt.error());
    s->cancel.store(false, std::memory_order_relaxed);
    auto r = gen(*opt, c_piece_callback(*s, options));
    if (!r) return c_fail(s, r.error());
    s->result = std::move(*r);
    c_fill_result(s->result, out);
    return c_ok(s);
  });
}

inline tinyslm_status c_no_tokenizer(tinyslm_session* s) {
  if (const Error* e = s->session.tokenizer_error()) return c_fail(s, Error(*e).context("the model's tokenizer did not load"));
  return c_fail(s, TINYSLM_ERR_UNSUPPORTED, "the model has no usable tokenizer");
}

inline tinyslm_status c_return_text(tinyslm_session* s, std::string text, const char** out_text, int32_t* out_length) {
  if (text.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    return c_fail(s, TINYSLM_ERR_OUT_OF_RANGE, "text longer than 2 GB");
  s->text = std::move(text);
  *out_text = s->text.c_str();
  if (out_length) *out_length = static_cast<int32_t>(s->text.size());
  return c_ok(s);
}

}  // namespace detail
}  // namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

extern "C" {

TINYSLM_C_API const char* tinyslm_last_error(void) { return tinyslm::detail::c_thread_error().c_str(); }

TINYSLM_C_API const char* tinyslm_status_name(int status) {
  if (status == TINYSLM_ERR_INTERNAL) return "internal error";
  if (status < 0 || status > TINYSLM_ERR_CANCELLED) return "unknown status";
  return tinyslm::errc_name(static_cast<tinyslm::Errc>(status));
}

TINYSLM_C_API int32_t tinyslm_c_api_version(void) { return TINYSLM_C_API_VERSION; }

TINYSLM_C_API tinyslm_status tinyslm_model_load(const char* path_utf8, tinyslm_model** out_model) {
  using namespace tinyslm::detail;
  if (!out_model) return c_fail(nullptr, TINYSLM_ERR_INVALID_ARGUMENT, "model_load: out_model is NULL");
  *out_model = nullptr;
  if (!path_utf8) return c_fail(nullptr, TINYSLM_ERR_INVALID_ARGUMENT, "model_load: path is NULL");
  return c_guard(nullptr, [&] {
    auto m = std::make_unique<tinyslm_model>();
    const tinyslm_status st = c_finish_model(*m, tinyslm::Model::open(path_utf8));
    if (st == TINYSLM_OK) *out_model = m.release();
    return st;
  });
}

TINYSLM_C_API tinyslm_status tinyslm_model_load_from_memory(const void* data, size_t size, int32_t copy,
                                                            tinyslm_model** out_model) {
  using namespace tinyslm::detail;
  if (!out_model) return c_fail(nullptr, TINYSLM_ERR_INVALID_ARGUMENT, "model_load_from_memory: out_model is NULL");
  *out_model = nullptr;
  if (!data && size > 0) return c_fail(nullptr, TINYSLM_ERR_INVALID_ARGUMENT, "model_load_from_memory: data is NULL");
  return c_guard(nullptr, [&] {
    auto m = std::make_unique<tinyslm_model>();
    const void* bytes = data;
    if (copy) {
      auto v = std::make_shared<std::vector<uint8_t>>(static_cast<const uint8_t*>(data),
                                                      static_cast<const uint8_t*>(data) + size);
      bytes = v->data();
      m->bytes = std::move(v);
    }
    auto f = tinyslm::GgufFile::from_memory(bytes, size);
    if (!f) return c_fail(nullptr, f.error());
    const tinyslm_status st = c_finish_model(*m, tinyslm::Model::from_gguf(std::move(*f)));
    if (st == TINYSLM_OK) *out_model = m.release();
    return st;
  });
}

TINYSLM_C_API void tinyslm_model_free(tinyslm_model* model) { delete model; }

TINYSLM_C_API int32_t tinyslm_model_n_vocab(const tinyslm_model* m) {
  return m ? tinyslm::detail::clamp_i32(m->model.hparams().n_vocab) : 0;
}
TINYSLM_C_API int32_t tinyslm_model_n_ctx_train(const tinyslm_model* m) {
  return m ? tinyslm::detail::clamp_i32(m->model.hparams().n_ctx_train) : 0;
}
TINYSLM_C_API int32_t tinyslm_model_n_embd(const tinyslm_model* m) {
  return m ? tinyslm::detail::clamp_i32(m->model.hparams().n_embd) : 0;
}
TINYSLM_C_API int32_t tinyslm_model_n_layer(const tinyslm_model* m) {
  return m ? tinyslm::detail::clamp_i32(m->model.hparams().n_layer) : 0;
}
TINYSLM_C_API const char* tinyslm_model_architecture(const tinyslm_model* m) {
  return m ? m->model.hparams().arch_name.c_str() : "";
}
TINYSLM_C_API const char* tinyslm_model_name(const tinyslm_model* m) { return m ? m->name.c_str() : ""; }
TINYSLM_C_API int32_t tinyslm_model_has_chat_template(const tinyslm_model* m) {
  return m && m->has_chat_template ? 1 : 0;
}

TINYSLM_C_API void tinyslm_session_params_init(tinyslm_session_params* p) {
  if (!p) return;
  const tinyslm::SessionParams d;
  *p = tinyslm_session_params{};
  p->struct_size = sizeof(tinyslm_session_params);
  p->n_ctx = static_cast<int32_t>(d.context);
  p->n_threads = d.threads;
  p->n_batch = static_cast<int32_t>(d.batch);
  p->seed = 0;
  p->overflow = static_cast<int32_t>(d.overflow);
  p->keep = static_cast<int32_t>(d.keep);
}

TINYSLM_C_API tinyslm_status tinyslm_session_create(const tinyslm_model* model, const tinyslm_session_params* params,
                                                    tinyslm_session** out_session) {
  using namespace tinyslm::detail;
  if (!out_session) return c_fail(nullptr, TINYSLM_ERR_INVALID_ARGUMENT, "session_create: out_session is NULL");
  *out_session = nullptr;
  if (!model) return c_fail(nullptr, TINYSLM_ERR_INVALID_ARGUMENT, "session_create: model is NULL");
  return c_guard(nullptr, [&] {
    auto p = c_read_struct(params, tinyslm_session_params_init, "session params");
    if (!p) return c_fail(nullptr, p.error());
    if (p->overflow < TINYSLM_OVERFLOW_ERROR || p->overflow > TINYSLM_OVERFLOW_DROP_MESSAGES)
      return c_fail(nullptr, TINYSLM_ERR_INVALID_ARGUMENT, "session params: unknown overflow policy " + std::to_string(p->overflow));
    tinyslm::SessionParams sp;
    sp.context = p->n_ctx;
    sp.threads = p->n_threads;
    sp.batch = p->n_batch;
    sp.overflow = static_cast<tinyslm::OverflowPolicy>(p->overflow);
    sp.keep = p->keep;
    auto s = tinyslm::Session::create(model->model, sp);
    if (!s) return c_fail(nullptr, s.error());
    auto h = std::make_unique<tinyslm_session>(std::move(*s), model->bytes);
    h->seed = p->seed;
    *out_session = h.release();
    return c_ok(nullptr);
  });
}

TINYSLM_C_API void tinyslm_session_free(tinyslm_session* s) { delete s; }

TINYSLM_C_API void tinyslm_session_reset(tinyslm_session* s) {
  if (!s) return;
  s->session.reset();
  s->chat.reset();
}

TINYSLM_C_API int32_t tinyslm_session_n_ctx(const tinyslm_session* s) {
  return s ? tinyslm::detail::clamp_i32(s->session.n_ctx()) : 0;
}
TINYSLM_C_API int32_t tinyslm_session_n_past(const tinyslm_session* s) {
  return s ? tinyslm::detail::clamp_i32(s->session.n_past()) : 0;
}
TINYSLM_C_API void tinyslm_session_cancel(tinyslm_session* s) {
  if (s) s->cancel.store(true, std::memory_order_relaxed);
}
TINYSLM_C_API const char* tinyslm_session_last_error(const tinyslm_session* s) {
  return s ? s->error.c_str() : "session is NULL";
}

TINYSLM_C_API tinyslm_status tinyslm_tokenize(tinyslm_session* s, const char* text, int32_t add_special,
                                              int32_t parse_special, const int32_t** out_ids, int32_t* out_n_ids) {
  using namespace tinyslm::detail;
  if (!s || !text || !out_ids || !out_n_ids)
    return c_fail(s, TINYSLM_ERR_INVALID_ARGUMENT, "tokenize: NULL session, text or output");
  *out_ids = nullptr;
  *out_n_ids = 0;
  return c_guard(s, [&] {
    if (!s->session.has_tokenizer()) return c_no_tokenizer(s);
    auto ids = s->session.tokenizer().encode(text, add_special != 0, parse_special != 0);
    if (!ids) return c_fail(s, ids.error());
    if (ids->size() > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
      return c_fail(s, TINYSLM_ERR_OUT_OF_RANGE, "tokenize: more than 2^31 tokens");
    s->ids = std::move(*ids);
    *out_ids = s->ids.data();
    *out_n_ids = static_cast<int32_t>(s->ids.size());
    return c_ok(s);
  });
}

TINYSLM_C_API tinyslm_status tinyslm_detokenize(tinyslm_session* s, const int32_t* ids, int32_t n_ids,
                                                int32_t render_special, const char** out_text, int32_t* out_length) {
  using namespace tinyslm::detail;
  if (!s || !out_text || n_ids < 0 || (n_ids > 0 && !ids))
    return c_fail(s, TINYSLM_ERR_INVALID_ARGUMENT, "detokenize: NULL session, ids or output, or negative count");
  *out_text = "";
  if (out_length) *out_length = 0;
  return c_guard(s, [&] {
    if (!s->session.has_tokenizer()) return c_no_tokenizer(s);
    tinyslm::DecodeOptions opt;
    opt.render_special = render_special != 0;
    auto text = s->session.tokenizer().decode(std::span<const int32_t>(ids, static_cast<size_t>(n_ids)), opt);
    if (!text) return c_fail(s, text.error());
    return c_return_text(s, std::move(*text), out_text, out_length);
  });
}

TINYSLM_C_API tinyslm_status tinyslm_apply_chat_template(tinyslm_session* s, const tinyslm_message* messages,
                                                         int32_t n_messages, int32_t add_generation_prompt,
                                                         const char** out_text, int32_t* out_length) {
  using namespace tinyslm::detail;
  if (!s || !out_text || n_messages < 0 || (n_messages > 0 && !messages))
    return c_fail(s, TINYSLM_ERR_INVALID_ARGUMENT, "apply_chat_template: NULL session, messages or output");
  *out_text = "";
  if (out_length) *out_length = 0;
  return c_guard(s, [&] {
    std::vector<tinyslm::ChatMessage> msgs;
    msgs.reserve(static_cast<size_t>(n_messages));
    for (int32_t i = 0; i < n_messages; ++i) {
      if (!messages[i].role || !messages[i].content)
        return c_fail(s, TINYSLM_ERR_INVALID_ARGUMENT, "apply_chat_template: message " + std::to_string(i) + " has a NULL role or content");
      msgs.push_back({messages[i].role, messages[i].content});
    }
    auto text = s->session.chat_template().apply(msgs, add_generation_prompt != 0);
    if (!text) return c_fail(s, text.error());
    return c_return_text(s, std::move(*text), out_text, out_length);
  });
}

TINYSLM_C_API void tinyslm_generate_options_init(tinyslm_generate_options* o) {
  if (!o) return;
  const tinyslm::GenerateOptions d;
  *o = tinyslm_generate_options{};
  o->struct_size = sizeof(tinyslm_generate_options);
  o->max_tokens = d.max_tokens;
  o->temperature = d.sampler.temperature;
  o->top_k = d.sampler.top_k;
  o->top_p = d.sampler.top_p;
  o->min_p = d.sampler.min_p;
  o->repeat_penalty = d.sampler.repeat_penalty;
  o->repeat_last_n = d.sampler.repeat_last_n;
  o->seed = TINYSLM_SEED_DEFAULT;
  o->stop_at_eog = d.stop_at_eog ? 1 : 0;
  o->render_special = d.render_special ? 1 : 0;
}

TINYSLM_C_API tinyslm_status tinyslm_generate(tinyslm_session* s, const char* prompt,
                                              const tinyslm_generate_options* options, tinyslm_result* out) {
  using namespace tinyslm::detail;
  if (!prompt) return c_fail(s, TINYSLM_ERR_INVALID_ARGUMENT, "generate: prompt is NULL");
  return c_generate(s, options, out, [&](const tinyslm::GenerateOptions& o, const tinyslm::TokenCallback& cb) {
    return s->session.generate(prompt, o, cb);
  });
}

TINYSLM_C_API tinyslm_status tinyslm_generate_ids(tinyslm_session* s, const int32_t* prompt_ids, int32_t n_prompt_ids,
                                                  const tinyslm_generate_options* options, tinyslm_result* out) {
  using namespace tinyslm::detail;
  if (n_prompt_ids < 0 || (n_prompt_ids > 0 && !prompt_ids))
    return c_fail(s, TINYSLM_ERR_INVALID_ARGUMENT, "generate_ids: ids are NULL or the count is negative");
  return c_generate(s, options, out, [&](const tinyslm::GenerateOptions& o, const tinyslm::TokenCallback& cb) {
    return s->session.generate_ids(std::span<const int32_t>(prompt_ids, static_cast<size_t>(n_prompt_ids)), o, cb);
  });
}

TINYSLM_C_API tinyslm_status tinyslm_chat_set_system_prompt(tinyslm_session* s, const char* system_prompt) {
  using namespace tinyslm::detail;
  if (!s) return c_fail(nullptr, TINYSLM_ERR_INVALID_ARGUMENT, "chat_set_system_prompt: session is NULL");
  return c_guard(s, [&] {
    s->chat.set_system_prompt(system_prompt ? system_prompt : "");
    return c_ok(s);
  });
}

TINYSLM_C_API tinyslm_status tinyslm_chat_send(tinyslm_session* s, const char* user_text,
                                               const tinyslm_generate_options* options, tinyslm_result* out) {
  using namespace tinyslm::detail;
  if (!user_text) return c_fail(s, TINYSLM_ERR_INVALID_ARGUMENT, "chat_send: user_text is NULL");
  return c_generate(s, options, out, [&](const tinyslm::GenerateOptions& o, const tinyslm::TokenCallback& cb) {
    return s->chat.send(user_text, o, cb);
  });
}

TINYSLM_C_API int32_t tinyslm_chat_n_messages(const tinyslm_session* s) {
  return s ? tinyslm::detail::clamp_i32(static_cast<int64_t>(s->chat.messages().size())) : 0;
}

}  // extern "C"
