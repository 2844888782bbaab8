/* tinyslm C API (C99): what bindings wrap (Python ctypes, Swift, Kotlin/JNI, node FFI, wasm).
 *
 *   tinyslm_model* model;
 *   if (tinyslm_model_load("stories260K.gguf", &model) != TINYSLM_OK) {
 *     fprintf(stderr, "%s\n", tinyslm_last_error());
 *     return 1;
 *   }
 *   tinyslm_session_params sp;
 *   tinyslm_session_params_init(&sp);
 *   tinyslm_session* session;
 *   tinyslm_session_create(model, &sp, &session);
 *   tinyslm_generate_options go;
 *   tinyslm_generate_options_init(&go);   (then set go.temperature = 0 for greedy, ...)
 *   tinyslm_result r;
 *   tinyslm_generate(session, "Once upon a time", &go, &r);
 *   tinyslm_session_free(session);
 *   tinyslm_model_free(model);
 *
 * Conventions:
 * - Every fallible function returns a tinyslm_status (TINYSLM_OK = 0). The message of the last
 *   failure is tinyslm_last_error() on the calling thread; a session also keeps the message of
 *   its own last failure (tinyslm_session_last_error), for apps that use it from another thread.
 * - Strings are UTF-8 and NUL-terminated. Strings and arrays the library returns belong to the
 *   handle they came from and stay valid until the next call on that handle (or its free).
 * - No 64-bit integer crosses this interface (JavaScript numbers hold 53 bits): sizes are
 *   int32_t or size_t (32-bit on wasm32), seeds uint32_t.
 * - Option structs start with struct_size; fill them with their _init function first, so that
 *   a program built against this header keeps working when later versions add fields.
 * - A model may be shared by several sessions (one thread per session). A session is used from
 *   one thread at a time, except tinyslm_session_cancel, which any thread may call.
 * - No C++ exception crosses this interface; the library does not print or exit.
 *
 * Implementation: exactly one C++20 translation unit of the program does
 *   #define TINYSLM_C_IMPLEMENTATION
 *   #include "tinyslm.h"
 * (CMake's tinyslm_c target is a shared library built that way.) Define TINYSLM_C_SHARED
 * when building or using it as a DLL so that TINYSLM_C_API adds dllexport / dllimport.
 */
#ifndef TINYSLM_H_INCLUDED
#define TINYSLM_H_INCLUDED

#include <stddef.h>
#include <stdint.h>

#if !defined(TINYSLM_C_API)
#if defined(__EMSCRIPTEN__)
#include <emscripten.h>
#define TINYSLM_C_API EMSCRIPTEN_KEEPALIVE
#elif defined(_WIN32)
#if defined(TINYSLM_C_SHARED) && defined(TINYSLM_C_IMPLEMENTATION)
#define TINYSLM_C_API __declspec(dllexport)
#elif defined(TINYSLM_C_SHARED)
#define TINYSLM_C_API __declspec(dllimport)
#else
#define TINYSLM_C_API
#endif
#elif defined(__GNUC__) || defined(__clang__)
#define TINYSLM_C_API __attribute__((visibility("default")))
#else
#define TINYSLM_C_API
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define TINYSLM_C_API_VERSION 1

typedef enum tinyslm_status {
  TINYSLM_OK = 0,
  TINYSLM_ERR_IO = 1,               /* a file could not be opened, mapped or read */
  TINYSLM_ERR_INVALID_FORMAT = 2,   /* the bytes are not a valid GGUF file */
  TINYSLM_ERR_UNSUPPORTED = 3,      /* well-formed but not supported (type, architecture) */
  TINYSLM_ERR_INVALID_ARGUMENT = 4, /* a null handle, a bad option value */
  TINYSLM_ERR_NOT_FOUND = 5,
  TINYSLM_ERR_TYPE_MISMATCH = 6,
  TINYSLM_ERR_OUT_OF_RANGE = 7,     /* a token id outside the vocabulary, a full context */
  TINYSLM_ERR_OUT_OF_MEMORY = 8,
  TINYSLM_ERR_CANCELLED = 9,
  TINYSLM_ERR_INTERNAL = 100        /* a failure inside the library that has no better code */
} tinyslm_status;

typedef enum tinyslm_stop_reason {
  TINYSLM_STOP_MAX_TOKENS = 0,
  TINYSLM_STOP_EOG = 1,          /* an end-of-generation token (in ids, not in text) */
  TINYSLM_STOP_STOP_STRING = 2,  /* a stop string appeared (cut from the text) */
  TINYSLM_STOP_CALLBACK = 3,     /* the piece callback returned 0 */
  TINYSLM_STOP_CANCELLED = 4,    /* tinyslm_session_cancel */
  TINYSLM_STOP_CONTEXT_FULL = 5
} tinyslm_stop_reason;

typedef enum tinyslm_overflow {
  TINYSLM_OVERFLOW_ERROR = 0,         /* a full context stops generation (context_full) */
  TINYSLM_OVERFLOW_SHIFT = 1,         /* drop the oldest half and evaluate the rest again */
  TINYSLM_OVERFLOW_DROP_MESSAGES = 2  /* chat: drop whole earlier turns */
} tinyslm_overflow;

typedef struct tinyslm_model tinyslm_model;
typedef struct tinyslm_session tinyslm_session;

/* Errors. */
TINYSLM_C_API const char* tinyslm_last_error(void);         /* "" when the last call succeeded */
TINYSLM_C_API const char* tinyslm_status_name(int status);  /* "ok", "I/O error", ... */
TINYSLM_C_API int32_t tinyslm_c_api_version(void);          /* TINYSLM_C_API_VERSION */

/* Models. */
TINYSLM_C_API tinyslm_status tinyslm_model_load(const char* path_utf8, tinyslm_model** out_model);
/* From bytes in memory (a GGUF file): copy != 0 copies them; copy == 0 borrows them, and they
 * must then outlive the model and every session made from it. */
TINYSLM_C_API tinyslm_status tinyslm_model_load_from_memory(const void* data, size_t size, int32_t copy,
                                                            tinyslm_model** out_model);
TINYSLM_C_API void tinyslm_model_free(tinyslm_model* model); /* sessions keep what they need */
TINYSLM_C_API int32_t tinyslm_model_n_vocab(const tinyslm_model* model);
TINYSLM_C_API int32_t tinyslm_model_n_ctx_train(const tinyslm_model* model);
TINYSLM_C_API int32_t tinyslm_model_n_embd(const tinyslm_model* model);
TINYSLM_C_API int32_t tinyslm_model_n_layer(const tinyslm_model* model);
TINYSLM_C_API const char* tinyslm_model_architecture(const tinyslm_model* model); /* "llama", ... */
TINYSLM_C_API const char* tinyslm_model_name(const tinyslm_model* model);         /* general.name or "" */
/* 1 when the file carries tokenizer.chat_template (without one, chat renders as chatml). */
TINYSLM_C_API int32_t tinyslm_model_has_chat_template(const tinyslm_model* model);

/* Sessions: one sequence (KV cache, tokenizer, chat template, chat history). */
typedef struct tinyslm_session_params {
  uint32_t struct_size;
  int32_t n_ctx;      /* positions in the KV cache; 0 = the model's training context (2048) */
  int32_t n_threads;  /* 1 */
  int32_t n_batch;    /* most prompt tokens per forward chunk (512) */
  uint32_t seed;      /* sampling seed when the generate options leave theirs at TINYSLM_SEED_DEFAULT (0) */
  int32_t overflow;   /* tinyslm_overflow (TINYSLM_OVERFLOW_ERROR) */
  int32_t keep;       /* tokens kept at the start when shifting (1) */
} tinyslm_session_params;

TINYSLM_C_API void tinyslm_session_params_init(tinyslm_session_params* params);
TINYSLM_C_API tinyslm_status tinyslm_session_create(const tinyslm_model* model, const tinyslm_session_params* params,
                                                    tinyslm_session** out_session);
TINYSLM_C_API void tinyslm_session_free(tinyslm_session* session);
/* Forgets the cached sequence and the chat history (the chat system prompt stays). */
TINYSLM_C_API void tinyslm_session_reset(tinyslm_session* session);
TINYSLM_C_API int32_t tinyslm_session_n_ctx(const tinyslm_session* session);
TINYSLM_C_API int32_t tinyslm_session_n_past(const tinyslm_session* session);
/* Stops the generation running in this session (from any thread) at the next token. */
TINYSLM_C_API void tinyslm_session_cancel(tinyslm_session* session);
TINYSLM_C_API const char* tinyslm_session_last_error(const tinyslm_session* session);

/* Text to ids (add_special: BOS etc. as the vocabulary asks; parse_special: recognise control
 * tokens such as <|im_end|> in the text). *out_ids is owned by the session. */
TINYSLM_C_API tinyslm_status tinyslm_tokenize(tinyslm_session* session, const char* text, int32_t add_special,
                                              int32_t parse_special, const int32_t** out_ids, int32_t* out_n_ids);
/* Ids to text; *out_text is owned by the session (NUL-terminated, *out_length bytes). */
TINYSLM_C_API tinyslm_status tinyslm_detokenize(tinyslm_session* session, const int32_t* ids, int32_t n_ids,
                                                int32_t render_special, const char** out_text, int32_t* out_length);

typedef struct tinyslm_message {
  const char* role;     /* "system", "user", "assistant" */
  const char* content;
} tinyslm_message;

/* The model's chat template applied to messages (the text generate takes). */
TINYSLM_C_API tinyslm_status tinyslm_apply_chat_template(tinyslm_session* session, const tinyslm_message* messages,
                                                         int32_t n_messages, int32_t add_generation_prompt,
                                                         const char** out_text, int32_t* out_length);

/* Receives each piece of generated text (whole UTF-8 characters, NUL-terminated, `length`
 * bytes); return nonzero to go on, 0 to stop. Must not call into the same session. */
typedef int32_t (*tinyslm_piece_callback)(const char* piece, int32_t length, void* user_data);

#define TINYSLM_SEED_DEFAULT 0u

typedef struct tinyslm_generate_options {
  uint32_t struct_size;
  int32_t max_tokens;       /* 256; < 0: until end of generation or a full context */
  float temperature;        /* 0.8; <= 0: greedy (lowest id wins ties) */
  int32_t top_k;            /* 40; <= 0: off */
  float top_p;              /* 0.95; 1: off */
  float min_p;              /* 0.05; 0: off */
  float repeat_penalty;     /* 1: off */
  int32_t repeat_last_n;    /* 64 */
  uint32_t seed;            /* TINYSLM_SEED_DEFAULT: the session's seed */
  const char* const* stop;  /* n_stop stop strings (not emitted, not in the text) */
  int32_t n_stop;
  int32_t stop_at_eog;      /* 1: stop at EOS / end-of-turn tokens */
  int32_t render_special;   /* 0: control tokens give no text */
  tinyslm_piece_callback on_piece;  /* may be NULL */
  void* user_data;                  /* passed to on_piece */
} tinyslm_generate_options;

/* What a generation produced; the pointers are owned by the session. */
typedef struct tinyslm_result {
  const char* text;         /* generated text (NUL-terminated) */
  int32_t text_length;
  const int32_t* ids;       /* generated ids (an end-of-generation token included) */
  int32_t n_ids;
  int32_t stop_reason;      /* tinyslm_stop_reason */
  int32_t prompt_tokens;
  int32_t prompt_reused;    /* of them, found in the KV cache */
  double prompt_ms;
  double generation_ms;
} tinyslm_result;

TINYSLM_C_API void tinyslm_generate_options_init(tinyslm_generate_options* options);
/* Continues `prompt`, the WHOLE text so far: the cached prefix is reused, only the rest is
 * evaluated. options may be NULL (the defaults); out_result may be NULL. */
TINYSLM_C_API tinyslm_status tinyslm_generate(tinyslm_session* session, const char* prompt,
                                              const tinyslm_generate_options* options, tinyslm_result* out_result);
TINYSLM_C_API tinyslm_status tinyslm_generate_ids(tinyslm_session* session, const int32_t* prompt_ids,
                                                  int32_t n_prompt_ids, const tinyslm_generate_options* options,
                                                  tinyslm_result* out_result);

/* Chat: the session keeps the messages. A turn adds the user's text, renders every message
 * with the chat template, generates the reply and adds it. tinyslm_session_reset forgets the
 * messages; the system prompt ("" = none) stays until set again. */
TINYSLM_C_API tinyslm_status tinyslm_chat_set_system_prompt(tinyslm_session* session, const char* system_prompt);
TINYSLM_C_API tinyslm_status tinyslm_chat_send(tinyslm_session* session, const char* user_text,
                                               const tinyslm_generate_options* options, tinyslm_result* out_result);
TINYSLM_C_API int32_t tinyslm_chat_n_messages(const tinyslm_session* session);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif /* TINYSLM_H_INCLUDED */

#if defined(TINYSLM_C_IMPLEMENTATION) && defined(__cplusplus) && !defined(TINYSLM_C_IMPLEMENTATION_INCLUDED)
#define TINYSLM_C_IMPLEMENTATION_INCLUDED
#include "tinyslm/c_api.hpp"
#endif
