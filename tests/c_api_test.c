/* The C API from C99: loads stories260K through tinyslm.h and checks model info, tokenization
 * and greedy generation (plain, from ids, from memory, with a stop string, a stopping
 * callback, and a chat turn) against llama.cpp's golden outputs in
 * <shared>/golden/stories260K.json, plus the error paths. Usage: c_api_test <shared dir>.
 * Exit 0: passed, 1: failed, 77: skipped (the shared directory or the model is missing). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tinyslm.h"

static int failures = 0;

#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                     \
    }                                                                 \
  } while (0)

#define REQUIRE_OK(call)                                                                    \
  do {                                                                                      \
    tinyslm_status st_ = (call);                                                            \
    if (st_ != TINYSLM_OK) {                                                                \
      fprintf(stderr, "%s:%d: %s failed: %s (%s)\n", __FILE__, __LINE__, #call,             \
              tinyslm_status_name((int)st_), tinyslm_last_error());                         \
      return 1;                                                                             \
    }                                                                                       \
  } while (0)

static char* read_file(const char* path, size_t* size) {
  FILE* f = fopen(path, "rb");
  char* buf;
  long n;
  if (!f) return NULL;
  if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
    fclose(f);
    return NULL;
  }
  buf = (char*)malloc((size_t)n + 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  if (buf) buf[n] = '\0';
  if (size) *size = (size_t)n;
  return buf;
}

/* Just enough JSON for the golden file (compact, "key":value): the string or integer array
 * that follows `"key":` after position `from`. */
static const char* json_after_key(const char* from, const char* key) {
  char pattern[64];
  const char* p;
  snprintf(pattern, sizeof pattern, "\"%s\":", key);
  p = strstr(from, pattern);
  return p ? p + strlen(pattern) : NULL;
}

static void put_utf8(char** out, unsigned long cp) {
  unsigned char* o = (unsigned char*)*out;
  if (cp < 0x80) {
    *o++ = (unsigned char)cp;
  } else if (cp < 0x800) {
    *o++ = (unsigned char)(0xC0 | (cp >> 6));
    *o++ = (unsigned char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *o++ = (unsigned char)(0xE0 | (cp >> 12));
    *o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    *o++ = (unsigned char)(0x80 | (cp & 0x3F));
  } else {
    *o++ = (unsigned char)(0xF0 | (cp >> 18));
    *o++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    *o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    *o++ = (unsigned char)(0x80 | (cp & 0x3F));
  }
  *out = (char*)o;
}

/* A JSON string value at p (which points at its opening quote), unescaped; malloc'd. */
static char* json_string(const char* p) {
  char* out;
  char* o;
  if (!p || *p != '"') return NULL;
  out = (char*)malloc(strlen(p) + 1);
  if (!out) return NULL;
  o = out;
  for (++p; *p && *p != '"'; ++p) {
    if (*p != '\\') {
      *o++ = *p;
      continue;
    }
    ++p;
    switch (*p) {
      case 'n': *o++ = '\n'; break;
      case 't': *o++ = '\t'; break;
      case 'r': *o++ = '\r'; break;
      case 'b': *o++ = '\b'; break;
      case 'f': *o++ = '\f'; break;
      case 'u': {
        unsigned long cp = strtoul((char[5]){p[1], p[2], p[3], p[4], 0}, NULL, 16);
        p += 4;
        if (cp >= 0xD800 && cp < 0xDC00 && p[1] == '\\' && p[2] == 'u') {
          unsigned long lo = strtoul((char[5]){p[3], p[4], p[5], p[6], 0}, NULL, 16);
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          p += 6;
        }
        put_utf8(&o, cp);
        break;
      }
      default: *o++ = *p; break; /* \" \\ \/ */
    }
  }
  *o = '\0';
  return out;
}

/* A JSON array of integers at p (its '['); returns the count, fills at most cap. */
static int json_ints(const char* p, int32_t* out, int cap) {
  int n = 0;
  char* end;
  if (!p || *p != '[') return -1;
  ++p;
  while (*p && *p != ']') {
    long v = strtol(p, &end, 10);
    if (end == p) return -1;
    if (n < cap) out[n] = (int32_t)v;
    ++n;
    p = end;
    if (*p == ',') ++p;
  }
  return n;
}

/* The object of the golden prompt with this id. */
static const char* golden_prompt(const char* golden, const char* id) {
  char pattern[64];
  snprintf(pattern, sizeof pattern, "\"id\":\"%s\"", id);
  return strstr(golden, pattern);
}

struct pieces {
  char text[4096];
  size_t length;
  int count;
  int stop_after; /* 0: never stop */
};

static int32_t on_piece(const char* piece, int32_t length, void* user) {
  struct pieces* p = (struct pieces*)user;
  if (length < 0 || strlen(piece) != (size_t)length) return 0; /* must be NUL-terminated */
  if (p->length + (size_t)length < sizeof p->text) {
    memcpy(p->text + p->length, piece, (size_t)length);
    p->length += (size_t)length;
    p->text[p->length] = '\0';
  }
  ++p->count;
  return p->stop_after == 0 || p->count < p->stop_after;
}

static int same_ids(const int32_t* a, int na, const int32_t* b, int nb) {
  return na == nb && (na == 0 || memcmp(a, b, (size_t)na * sizeof *a) == 0);
}

static void check_errors(void) {
  tinyslm_model* m = (tinyslm_model*)1;
  static const unsigned char junk[16] = {'G', 'G', 'U', 'F', 9, 9, 9, 9};
  CHECK(tinyslm_c_api_version() == TINYSLM_C_API_VERSION);
  CHECK(strcmp(tinyslm_status_name(TINYSLM_OK), "ok") == 0);
  CHECK(tinyslm_model_load("/nonexistent/model.gguf", &m) == TINYSLM_ERR_IO);
  CHECK(m == NULL);
  CHECK(strstr(tinyslm_last_error(), "/nonexistent/model.gguf") != NULL);
  CHECK(tinyslm_model_load(NULL, &m) == TINYSLM_ERR_INVALID_ARGUMENT);
  CHECK(tinyslm_model_load("x", NULL) == TINYSLM_ERR_INVALID_ARGUMENT);
  CHECK(tinyslm_model_load_from_memory(junk, sizeof junk, 1, &m) != TINYSLM_OK);
  CHECK(m == NULL && tinyslm_last_error()[0] != '\0');
  CHECK(tinyslm_session_create(NULL, NULL, NULL) == TINYSLM_ERR_INVALID_ARGUMENT);
  CHECK(tinyslm_generate(NULL, "x", NULL, NULL) == TINYSLM_ERR_INVALID_ARGUMENT);
}

static tinyslm_generate_options greedy(int32_t n) {
  tinyslm_generate_options o;
  tinyslm_generate_options_init(&o);
  o.temperature = 0.0f;
  o.max_tokens = n;
  return o;
}

static int check_session_errors(tinyslm_session* s) {
  tinyslm_generate_options o = greedy(4);
  const int32_t bad_id = 100000;
  tinyslm_result r;
  o.struct_size = 0;
  CHECK(tinyslm_generate(s, "x", &o, &r) == TINYSLM_ERR_INVALID_ARGUMENT);
  CHECK(strstr(tinyslm_session_last_error(s), "struct_size") != NULL);
  CHECK(tinyslm_generate_ids(s, &bad_id, 1, NULL, &r) == TINYSLM_ERR_OUT_OF_RANGE);
  CHECK(r.n_ids == 0 && r.ids == NULL);
  CHECK(tinyslm_session_last_error(s)[0] != '\0');
  return 0;
}

/* Greedy text generation, from text and from ids, against the golden prompt story_en. */
static int check_generate(tinyslm_session* s, const char* golden) {
  const char* p = golden_prompt(golden, "story_en");
  char* text = json_string(json_after_key(p, "text"));
  const char* g = json_after_key(p, "greedy");
  char* want_text = json_string(json_after_key(g, "text"));
  int32_t want[64], want_prompt[256];
  const int n_want = json_ints(json_after_key(g, "tokens"), want, 64);
  const int n_prompt = json_ints(json_after_key(p, "tokens_add_special"), want_prompt, 256);
  const int32_t* ids;
  int32_t n_ids;
  const char* detok;
  tinyslm_result r;
  struct pieces pc;
  tinyslm_generate_options o = greedy(n_want);
  const char* stops[1];
  const char* lily;
  if (!p || !text || !want_text || n_want <= 0 || n_want > 64 || n_prompt <= 0 || n_prompt > 256) {
    fprintf(stderr, "golden story_en not readable\n");
    return 1;
  }
  REQUIRE_OK(tinyslm_tokenize(s, text, 1, 0, &ids, &n_ids));
  CHECK(same_ids(ids, n_ids, want_prompt, n_prompt));
  REQUIRE_OK(tinyslm_detokenize(s, ids + 1, n_ids - 1, 0, &detok, NULL));
  CHECK(strcmp(detok, text) == 0);

  memset(&pc, 0, sizeof pc);
  o.on_piece = on_piece;
  o.user_data = &pc;
  REQUIRE_OK(tinyslm_generate(s, text, &o, &r));
  CHECK(same_ids(r.ids, r.n_ids, want, n_want));
  CHECK(strcmp(r.text, want_text) == 0 && r.text_length == (int32_t)strlen(want_text));
  CHECK(strcmp(pc.text, r.text) == 0);
  CHECK(r.stop_reason == TINYSLM_STOP_MAX_TOKENS);
  CHECK(r.prompt_tokens == n_prompt);
  CHECK(tinyslm_session_n_past(s) == n_prompt + n_want - 1);

  /* The same prompt again from ids: the whole prompt is in the cache, and the result holds. */
  REQUIRE_OK(tinyslm_generate_ids(s, want_prompt, n_prompt, &o, &r));
  CHECK(same_ids(r.ids, r.n_ids, want, n_want));
  CHECK(r.prompt_reused == n_prompt - 1);

  /* A callback that stops after 3 pieces. */
  memset(&pc, 0, sizeof pc);
  pc.stop_after = 3;
  tinyslm_session_reset(s);
  CHECK(tinyslm_session_n_past(s) == 0);
  REQUIRE_OK(tinyslm_generate(s, text, &o, &r));
  CHECK(r.stop_reason == TINYSLM_STOP_CALLBACK && pc.count == 3);
  CHECK(r.n_ids >= 3 && same_ids(r.ids, r.n_ids, want, r.n_ids));

  /* A stop string: the text ends just before its first occurrence in the golden text. */
  lily = strstr(want_text, "Lily");
  CHECK(lily != NULL);
  if (lily) {
    stops[0] = "Lily";
    o.stop = stops;
    o.n_stop = 1;
    o.on_piece = NULL;
    REQUIRE_OK(tinyslm_generate(s, text, &o, &r));
    CHECK(r.stop_reason == TINYSLM_STOP_STOP_STRING);
    CHECK((size_t)r.text_length == (size_t)(lily - want_text) && strncmp(r.text, want_text, (size_t)r.text_length) == 0);
  }
  free(text);
  free(want_text);
  return 0;
}

/* A chat turn (system prompt + user message) against the golden prompt chat_system_user. */
static int check_chat(tinyslm_session* s, const char* golden) {
  const char* p = golden_prompt(golden, "chat_system_user");
  const char* msgs = json_after_key(p, "messages");
  char* want_prompt = json_string(json_after_key(p, "text"));
  char* sys_text = json_string(json_after_key(msgs, "content"));
  const char* second = msgs ? strstr(msgs, "},{") : NULL;
  char* user_text = json_string(json_after_key(second, "content"));
  int32_t want[64];
  const int n_want = json_ints(json_after_key(json_after_key(p, "greedy"), "tokens"), want, 64);
  tinyslm_message m[2];
  const char* rendered;
  tinyslm_result r;
  tinyslm_generate_options o = greedy(n_want);
  if (!p || !want_prompt || !sys_text || !user_text || n_want <= 0 || n_want > 64) {
    fprintf(stderr, "golden chat_system_user not readable\n");
    return 1;
  }
  m[0].role = "system";
  m[0].content = sys_text;
  m[1].role = "user";
  m[1].content = user_text;
  REQUIRE_OK(tinyslm_apply_chat_template(s, m, 2, 1, &rendered, NULL));
  CHECK(strcmp(rendered, want_prompt) == 0);
  tinyslm_session_reset(s);
  REQUIRE_OK(tinyslm_chat_set_system_prompt(s, sys_text));
  REQUIRE_OK(tinyslm_chat_send(s, user_text, &o, &r));
  CHECK(same_ids(r.ids, r.n_ids, want, n_want));
  CHECK(tinyslm_chat_n_messages(s) == 2);
  free(want_prompt);
  free(sys_text);
  free(user_text);
  return 0;
}

/* A model loaded from a copy of the file's bytes, freed before its session is used. */
static int check_from_memory(const char* model_path, const char* golden) {
  size_t size = 0;
  char* bytes = read_file(model_path, &size);
  const char* p = golden_prompt(golden, "fact_en");
  int32_t prompt[256], want[64];
  const int n_prompt = json_ints(json_after_key(p, "tokens_add_special"), prompt, 256);
  const int n_want = json_ints(json_after_key(json_after_key(p, "greedy"), "tokens"), want, 64);
  tinyslm_model* m;
  tinyslm_session* s;
  tinyslm_result r;
  tinyslm_generate_options o = greedy(n_want);
  if (!bytes || n_prompt <= 0 || n_prompt > 256 || n_want <= 0 || n_want > 64) return 1;
  REQUIRE_OK(tinyslm_model_load_from_memory(bytes, size, 1, &m));
  memset(bytes, 0, size);
  free(bytes);
  REQUIRE_OK(tinyslm_session_create(m, NULL, &s));
  tinyslm_model_free(m);
  REQUIRE_OK(tinyslm_generate_ids(s, prompt, n_prompt, &o, &r));
  CHECK(same_ids(r.ids, r.n_ids, want, n_want));
  tinyslm_session_free(s);
  return 0;
}

int main(int argc, char** argv) {
  char model_path[1024], golden_path[1024];
  char* golden;
  tinyslm_model* model;
  tinyslm_session* session;
  tinyslm_session_params sp;
  FILE* probe;
  const char* arch;
  int32_t n_vocab = 0;
  const char* v;
  check_errors();
  if (argc < 2) {
    fprintf(stderr, "usage: c_api_test <shared dir>\n");
    return 1;
  }
  snprintf(model_path, sizeof model_path, "%s/models/stories260K.gguf", argv[1]);
  snprintf(golden_path, sizeof golden_path, "%s/golden/stories260K.json", argv[1]);
  probe = fopen(model_path, "rb");
  if (!probe) {
    printf("SKIPPED: %s not found (the shared test data is absent)\n", model_path);
    return failures ? 1 : 77;
  }
  fclose(probe);
  golden = read_file(golden_path, NULL);
  if (!golden) {
    fprintf(stderr, "%s: cannot read\n", golden_path);
    return 1;
  }

  REQUIRE_OK(tinyslm_model_load(model_path, &model));
  v = json_after_key(strstr(golden, "\"model\":"), "n_vocab");
  if (v) n_vocab = (int32_t)strtol(v, NULL, 10);
  CHECK(tinyslm_model_n_vocab(model) == n_vocab && n_vocab > 0);
  arch = json_after_key(strstr(golden, "\"model\":"), "architecture");
  CHECK(arch && strncmp(arch + 1, tinyslm_model_architecture(model), strlen(tinyslm_model_architecture(model))) == 0);
  CHECK(tinyslm_model_has_chat_template(model) ==
        (strncmp(json_after_key(strstr(golden, "\"model\":"), "chat_template"), "null", 4) != 0));
  CHECK(tinyslm_model_n_ctx_train(model) > 0 && tinyslm_model_n_layer(model) > 0 && tinyslm_model_n_embd(model) > 0);

  tinyslm_session_params_init(&sp);
  sp.n_ctx = 0;
  sp.n_threads = 0;
  CHECK(tinyslm_session_create(model, &sp, &session) == TINYSLM_ERR_INVALID_ARGUMENT);
  sp.n_threads = 1;
  REQUIRE_OK(tinyslm_session_create(model, &sp, &session));
  CHECK(tinyslm_session_n_ctx(session) == tinyslm_model_n_ctx_train(model));

  if (check_session_errors(session) != 0) return 1;
  if (check_generate(session, golden) != 0) return 1;
  if (check_chat(session, golden) != 0) return 1;
  tinyslm_session_free(session);
  tinyslm_model_free(model);
  if (check_from_memory(model_path, golden) != 0) return 1;
  free(golden);
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("c_api_test: all checks passed\n");
  return 0;
}
