// chat: talk to a model with its own chat template, reply streamed as it is generated.
//
//   chat -m MODEL [-t THREADS] [-c CTX] [-n MAX_TOKENS_PER_REPLY] [--temp T] [--top-p P]
//        [--top-k K] [--min-p P] [--seed S] [-sys SYSTEM_PROMPT]
//
// Reads one message per line from stdin, so it works interactively and piped:
//   printf 'Hi\n/quit\n' | chat -m model.gguf
// Commands: /reset (forget the conversation), /quit. After each reply a line on stderr gives
// the token counts and speeds. Only the new turn is evaluated each time (the session keeps
// the conversation's prefix in its cache); when the context fills up, the oldest turns are
// dropped (the system prompt stays). A model without a chat template is used for plain text
// continuation: each line is appended to the text and the model continues it.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#if defined(_WIN32)
#include <io.h>
#define TINYSLM_ISATTY _isatty
#define TINYSLM_FILENO _fileno
#else
#include <unistd.h>
#define TINYSLM_ISATTY isatty
#define TINYSLM_FILENO fileno
#endif

#include "tinyslm.hpp"

using namespace tinyslm;

namespace {

std::atomic<bool> g_cancel{false};
std::atomic<bool> g_generating{false};

extern "C" void on_sigint(int) {
  if (g_generating.load()) g_cancel.store(true);
  else std::_Exit(130);
}

int fail(const std::string& msg) {
  std::fprintf(stderr, "chat: %s\n", msg.c_str());
  return 1;
}

void usage() {
  std::fprintf(stderr,
               "usage: chat -m MODEL [-t THREADS] [-c CTX] [-n MAX_TOKENS] [--temp T] [--top-p P] [--top-k K]\n"
               "            [--min-p P] [--seed S] [-sys SYSTEM_PROMPT] [-ctk TYPE] [-ctv TYPE] (f16, q8_0, q4_0)\n"
               "            [--spec-type none|ngram-simple] [--draft-max K] [--draft-min K] (with --temp 0)\n"
               "reads one message per line from stdin; /reset forgets the conversation, /quit ends\n");
}

bool parse_int(const char* s, int64_t* out) {
  if (!s || !*s) return false;
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  if (*end != '\0') return false;
  *out = v;
  return true;
}

bool parse_float(const char* s, float* out) {
  if (!s || !*s) return false;
  char* end = nullptr;
  const float v = std::strtof(s, &end);
  if (*end != '\0' || v != v) return false;
  *out = v;
  return true;
}

void print_stats(const GenerateResult& r) {
  const auto& s = r.stats;
  std::fprintf(stderr, "[%lld tokens, %.1f tokens/s; prompt %lld tokens (%lld cached), %.1f tokens/s; first token %.0f ms]\n",
               static_cast<long long>(s.generated), s.generation_tokens_per_s, static_cast<long long>(s.prompt_tokens),
               static_cast<long long>(s.prompt_reused), s.prompt_tokens_per_s, s.time_to_first_token_ms);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, system_prompt;
  int64_t threads = 1, n_ctx = -1, max_tokens = 256, top_k = 40, seed = -1;
  float temp = 0.8f, top_p = 0.95f, min_p = 0.05f;
  KvType type_k = KvType::f16, type_v = KvType::f16;
  SpeculativeOptions spec;
  int64_t draft_max = spec.draft_max, draft_min = spec.draft_min;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    auto need = [&]() -> bool { return v != nullptr; };
    bool ok = true;
    if (a == "-h" || a == "--help") {
      usage();
      return 0;
    } else if (a == "-m" || a == "--model") {
      ok = need() && (model_path = v, true);
    } else if (a == "-sys" || a == "--system-prompt") {
      ok = need() && (system_prompt = v, true);
    } else if (a == "-t" || a == "--threads") {
      ok = parse_int(v, &threads);
    } else if (a == "-c" || a == "--ctx-size") {
      ok = parse_int(v, &n_ctx);
    } else if (a == "-n" || a == "--n-predict") {
      ok = parse_int(v, &max_tokens);
    } else if (a == "--top-k") {
      ok = parse_int(v, &top_k);
    } else if (a == "--seed") {
      ok = parse_int(v, &seed);
    } else if (a == "--temp") {
      ok = parse_float(v, &temp);
    } else if (a == "--top-p") {
      ok = parse_float(v, &top_p);
    } else if (a == "--min-p") {
      ok = parse_float(v, &min_p);
    } else if (a == "-ctk" || a == "--cache-type-k" || a == "-ctv" || a == "--cache-type-v") {
      auto t = parse_kv_type(v ? v : "");
      if (!t) return fail(t.error().message());
      (a == "-ctk" || a == "--cache-type-k" ? type_k : type_v) = *t;
    } else if (a == "--spec-type") {
      auto t = parse_spec_type(v ? v : "");
      if (!t) return fail(t.error().message());
      spec.type = *t;
    } else if (a == "--draft-max" || a == "--draft" || a == "--draft-n") {
      ok = parse_int(v, &draft_max);
    } else if (a == "--draft-min" || a == "--draft-n-min") {
      ok = parse_int(v, &draft_min);
    } else {
      return fail("unknown argument '" + a + "' (see --help)");
    }
    if (!ok) return fail(a + (v ? std::string(": bad value '") + v + "'" : std::string(" needs a value")));
    ++i;
  }
  if (model_path.empty()) return fail("no model given (-m MODEL)");
  if (threads <= 0 || threads > 1024) return fail("thread count must be between 1 and 1024 (got " + std::to_string(threads) + ")");
  if (n_ctx < -1) return fail("context must be positive (got " + std::to_string(n_ctx) + ")");
  if (max_tokens < -1 || max_tokens > (int64_t{1} << 30)) return fail("-n must be -1 (no limit) or a token count");
  if (!(top_p > 0.0f && top_p <= 1.0f)) return fail("--top-p must be in (0, 1]");
  if (!(min_p >= 0.0f && min_p <= 1.0f)) return fail("--min-p must be in [0, 1]");
  if (top_k < 0 || top_k > (int64_t{1} << 30)) return fail("--top-k must be 0 (off) or positive");
  if (draft_max < 0 || draft_max > 256) return fail("--draft-max must be in [0, 256]");
  if (draft_min < 0 || draft_min > 256) return fail("--draft-min must be in [0, 256]");
  spec.draft_max = static_cast<int>(draft_max);
  spec.draft_min = static_cast<int>(draft_min);

  auto model = Model::open(model_path);
  if (!model) return fail(model.error().message());
  const int64_t train = model->hparams().n_ctx_train;
  if (n_ctx == -1) n_ctx = train > 0 ? std::min<int64_t>(train, 4096) : 2048;  // default
  if (n_ctx == 0) n_ctx = train;
  auto session = Session::create(*model, {.context = n_ctx,
                                          .threads = static_cast<int>(threads),
                                          .batch = 512,
                                          .overflow = OverflowPolicy::drop_messages,
                                          .keep = 1,
                                          .type_k = type_k,
                                          .type_v = type_v,
                                          .max_draft = spec.type == SpecType::none ? 0 : spec.draft_max});
  if (!session) return fail(session.error().message());
  if (!session->has_tokenizer()) return fail(model_path + ": the model has no usable tokenizer");

  const bool interactive = TINYSLM_ISATTY(TINYSLM_FILENO(stdin)) != 0;
  const ChatTemplate::Kind kind = session->chat_template().kind();
  const bool plain = kind == ChatTemplate::Kind::none;
  if (plain) {
    std::fprintf(stderr, "notice: %s has no chat template; plain text continuation (each line is appended to the text)\n",
                 model_path.c_str());
  } else if (kind == ChatTemplate::Kind::unknown) {
    const Tokenizer& tk = session->tokenizer();
    session->chat_template() = ChatTemplate::from_kind(ChatTemplate::Kind::chatml, std::string(tk.token_text(tk.bos())),
                                                       std::string(tk.token_text(tk.eos())), tk.add_bos(), tk.add_eos());
    std::fprintf(stderr, "notice: the model's chat template is not recognised; using chatml\n");
  } else if (interactive) {
    std::fprintf(stderr, "chat: template %s, context %lld; /reset forgets, /quit ends\n", session->chat_template().name(),
                 static_cast<long long>(session->n_ctx()));
  }

  std::signal(SIGINT, on_sigint);
  const uint64_t base_seed = seed >= 0 ? static_cast<uint64_t>(seed)
                                       : static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  GenerateOptions opt;
  opt.sampler.temperature = temp;
  opt.sampler.top_p = top_p;
  opt.sampler.top_k = static_cast<int32_t>(top_k);
  opt.sampler.min_p = min_p;
  opt.max_tokens = static_cast<int32_t>(max_tokens);
  opt.cancel = &g_cancel;
  opt.speculative = spec;

  Chat chat(*session, system_prompt);
  std::string doc = plain ? system_prompt : std::string();  // plain mode: the text so far
  auto stream = [](std::string_view piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    return true;
  };

  std::string line;
  uint64_t turn = 0;
  int status = 0;
  for (;;) {
    if (interactive) {
      std::fputs("> ", stdout);
      std::fflush(stdout);
    }
    if (!std::getline(std::cin, line)) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (line == "/quit" || line == "/exit") break;
    if (line == "/reset") {
      chat.reset();
      doc = plain ? system_prompt : std::string();
      std::fprintf(stderr, "(conversation reset)\n");
      continue;
    }
    opt.sampler.seed = base_seed + turn++;
    g_cancel = false;
    g_generating = true;
    Expected<GenerateResult> r = make_error(Errc::invalid_argument, "");
    if (plain) {
      if (!doc.empty()) doc += "\n";
      doc += line;
      r = session->generate(doc, opt, stream);
      if (!r && r.error().code() == Errc::out_of_range) {  // too long: keep only the newest line
        doc = line;
        r = session->generate(doc, opt, stream);
      }
      if (r) {
        // The exact continuation bytes (the streamed text drops a SentencePiece leading space).
        const Tokenizer& tk = session->tokenizer();
        std::string raw;
        for (int32_t id : r->ids)
          if (!tk.is_eog(id))
            if (auto piece = tk.token_to_piece(id, false)) raw += *piece;
        if (r->stop == StopReason::stop_string || r->stop == StopReason::callback) raw = r->text;
        doc += raw;
      }
    } else {
      r = chat.send(line, opt, stream);
    }
    g_generating = false;
    std::fputs("\n", stdout);
    std::fflush(stdout);
    if (!r) {
      std::fprintf(stderr, "chat: %s\n", r.error().message().c_str());
      if (!interactive) {
        status = 1;
        break;
      }
      continue;
    }
    if (r->stop == StopReason::cancelled) std::fprintf(stderr, "(stopped)\n");
    if (r->stop == StopReason::context_full) std::fprintf(stderr, "(context full)\n");
    print_stats(*r);
  }
  return status;
}
