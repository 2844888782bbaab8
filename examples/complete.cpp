// complete: one-shot completion.
//
//   complete -m MODEL (-p PROMPT | -f FILE | --prompt-ids 1,2,3) [-n N] [-t THREADS] [-c CTX]
//            [--temp T] [--top-k K] [--top-p P] [--seed S] [--no-bos]
//            [--json [--top-logits K]] [--ids] [--moe-stats]
//
// It runs on a Session: prefill, then generate_from_cache, so the last prompt position's logits
// (for --top-logits) are the ones the first token is sampled from.
//
// --temp 0 is greedy (lowest id wins ties, as llama.cpp's golden runs); otherwise the
// sampler layer's top-k / top-p / temperature chain with the given seed. --json prints one JSON
// object (prompt_ids, top_logits at the last prompt position, ids, text, timings) instead of
// streaming text; --ids prints the generated ids on a last line. --moe-stats (mixture-of-experts
// models) prints to stderr, after generation, how often each expert of each layer was selected
// over the whole run: one line per layer, then a total line with the most and least used experts.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <limits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tinyslm.hpp"
#include "tinyslm/sampler.hpp"
#include "tinyslm/tokenizer.hpp"

using namespace tinyslm;

namespace {

void usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s -m MODEL (-p PROMPT | -f FILE | --prompt-ids 1,2,3) [-n N] [-t THREADS] [-c CTX]\n"
               "          [--temp T] [--top-k K] [--top-p P] [--seed S] [--no-bos] [--json] [--top-logits K] [--ids]\n"
               "          [--moe-stats] [-ctk f16|q8_0|q4_0] [-ctv f16|q8_0|q4_0]\n"
               "          [--spec-type none|ngram-simple] [--draft-max K] [--draft-min K] (greedy only)\n",
               argv0);
}

// Per layer the selection count of every expert (one line each), then the counts summed over
// the layers with the most and least used experts.
void print_moe_stats(const MoeStats* st) {
  if (!st) {
    std::fprintf(stderr, "moe-stats: not a mixture-of-experts model\n");
    return;
  }
  const int64_t L = st->n_layer(), X = st->n_expert();
  std::fprintf(stderr, "moe-stats: selections per expert (%lld layers x %lld experts; without all logits the "
               "last layer runs only each chunk's last token)\n", static_cast<long long>(L), static_cast<long long>(X));
  std::vector<uint64_t> total(static_cast<size_t>(X), 0);
  for (int64_t il = 0; il < L; ++il) {
    std::fprintf(stderr, "layer %3lld (%llu):", static_cast<long long>(il),
                 static_cast<unsigned long long>(st->layer_total(il)));
    for (int64_t e = 0; e < X; ++e) {
      std::fprintf(stderr, " %llu", static_cast<unsigned long long>(st->count(il, e)));
      total[static_cast<size_t>(e)] += st->count(il, e);
    }
    std::fprintf(stderr, "\n");
  }
  std::vector<int64_t> order(static_cast<size_t>(X));
  for (int64_t e = 0; e < X; ++e) order[static_cast<size_t>(e)] = e;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return total[static_cast<size_t>(a)] > total[static_cast<size_t>(b)]; });
  const size_t show = std::min<size_t>(5, order.size());
  std::fprintf(stderr, "total: most used");
  for (size_t i = 0; i < show; ++i)
    std::fprintf(stderr, " #%lld=%llu", static_cast<long long>(order[i]),
                 static_cast<unsigned long long>(total[static_cast<size_t>(order[i])]));
  std::fprintf(stderr, "; least used");
  for (size_t i = 0; i < show; ++i) {
    const int64_t e = order[order.size() - 1 - i];
    std::fprintf(stderr, " #%lld=%llu", static_cast<long long>(e), static_cast<unsigned long long>(total[static_cast<size_t>(e)]));
  }
  std::fprintf(stderr, "\n");
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, prompt, prompt_file, prompt_ids_arg;
  int n_predict = 32, threads = 1, top_k = 40, top_logits = 20;
  int64_t n_ctx = 0;  // 0: 2048, or the model's training context if that is smaller
  float temp = 0.8f, top_p = 0.95f;
  uint64_t seed = 42;
  bool no_bos = false, json = false, print_ids = false, have_prompt = false, moe_stats = false;
  KvType type_k = KvType::f16, type_v = KvType::f16;
  SpeculativeOptions spec;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "complete: %s needs a value\n", a.c_str());
        std::exit(1);
      }
      return argv[++i];
    };
    // A whole number in [lo, hi], or a one-line error and exit.
    auto number = [&](long long lo, long long hi) -> long long {
      const char* v = next();
      char* end = nullptr;
      errno = 0;
      const long long x = std::strtoll(v, &end, 10);
      if (end == v || *end != '\0' || errno != 0 || x < lo || x > hi) {
        std::fprintf(stderr, "complete: %s takes a whole number from %lld to %lld, got '%s'\n", a.c_str(), lo, hi, v);
        std::exit(1);
      }
      return x;
    };
    auto real = [&]() -> float {
      const char* v = next();
      char* end = nullptr;
      const float x = std::strtof(v, &end);
      if (end == v || *end != '\0' || !std::isfinite(x)) {
        std::fprintf(stderr, "complete: %s takes a number, got '%s'\n", a.c_str(), v);
        std::exit(1);
      }
      return x;
    };
    if (a == "-m" || a == "--model") model_path = next();
    else if (a == "-p" || a == "--prompt") prompt = next(), have_prompt = true;
    else if (a == "-f" || a == "--file") prompt_file = next();
    else if (a == "--prompt-ids") prompt_ids_arg = next();
    else if (a == "-n" || a == "--n-predict") n_predict = static_cast<int>(number(0, 1 << 24));
    else if (a == "-t" || a == "--threads") threads = static_cast<int>(number(1, 512));
    else if (a == "-c" || a == "--ctx-size") n_ctx = number(1, 1 << 24);
    else if (a == "--temp") temp = real();
    else if (a == "--top-k") top_k = static_cast<int>(number(0, 1 << 30));
    else if (a == "--top-p") top_p = real();
    else if (a == "--seed") seed = static_cast<uint64_t>(number(0, std::numeric_limits<long long>::max()));
    else if (a == "--no-bos") no_bos = true;
    else if (a == "--json") json = true;
    else if (a == "--top-logits") top_logits = static_cast<int>(number(0, 1 << 24));
    else if (a == "--ids") print_ids = true;
    else if (a == "--moe-stats") moe_stats = true;
    else if (a == "-ctk" || a == "--cache-type-k" || a == "-ctv" || a == "--cache-type-v") {
      auto t = parse_kv_type(next());
      if (!t) {
        std::fprintf(stderr, "complete: %s\n", t.error().message().c_str());
        return 1;
      }
      (a == "-ctk" || a == "--cache-type-k" ? type_k : type_v) = *t;
    }
    else if (a == "--spec-type") {
      auto t = parse_spec_type(next());
      if (!t) {
        std::fprintf(stderr, "complete: %s\n", t.error().message().c_str());
        return 1;
      }
      spec.type = *t;
    }
    else if (a == "--draft-max" || a == "--draft" || a == "--draft-n") spec.draft_max = static_cast<int>(number(0, 256));
    else if (a == "--draft-min" || a == "--draft-n-min") spec.draft_min = static_cast<int>(number(0, 256));
    else if (a == "-h" || a == "--help") {
      usage(argv[0]);
      return 0;
    } else {
      std::fprintf(stderr, "complete: unknown argument '%s' (see --help)\n", a.c_str());
      return 1;
    }
  }
  if (model_path.empty()) {
    std::fprintf(stderr, "complete: no model (use -m MODEL; see --help)\n");
    return 1;
  }
  if (!have_prompt && prompt_file.empty() && prompt_ids_arg.empty()) {
    std::fprintf(stderr, "complete: no prompt (use -p TEXT, -f FILE or --prompt-ids 1,2,3)\n");
    return 1;
  }
  if (!prompt_file.empty()) {
    std::ifstream f(prompt_file, std::ios::binary);
    if (!f) {
      std::fprintf(stderr, "complete: cannot read %s\n", prompt_file.c_str());
      return 1;
    }
    prompt.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }

  auto model = Model::open(model_path);
  if (!model) {
    std::fprintf(stderr, "complete: %s\n", model.error().message().c_str());
    return 1;
  }
  const int64_t n_ctx_train = model->hparams().n_ctx_train;
  if (n_ctx == 0) n_ctx = n_ctx_train > 0 ? std::min<int64_t>(2048, n_ctx_train) : 2048;
  if (n_ctx_train > 0 && n_ctx > n_ctx_train) {
    std::fprintf(stderr, "complete: context %lld is larger than the model's training context %lld\n",
                 static_cast<long long>(n_ctx), static_cast<long long>(n_ctx_train));
    return 1;
  }
  // keep = 0: nothing is shifted (a full context ends generation), and -c 1 stays valid.
  const int32_t max_draft = spec.type == SpecType::none ? 0 : spec.draft_max;
  auto session = Session::create(*model, {.context = n_ctx, .threads = threads, .keep = 0, .type_k = type_k,
                                          .type_v = type_v, .max_draft = max_draft});
  if (!session) {
    std::fprintf(stderr, "complete: %s\n", session.error().message().c_str());
    return 1;
  }

  std::vector<int32_t> ids;
  if (!prompt_ids_arg.empty()) {
    const char* s = prompt_ids_arg.c_str();
    while (*s) {
      char* end = nullptr;
      const long v = std::strtol(s, &end, 10);
      if (end == s) {
        std::fprintf(stderr, "complete: bad --prompt-ids '%s'\n", prompt_ids_arg.c_str());
        return 1;
      }
      ids.push_back(static_cast<int32_t>(v));
      s = end;
      while (*s == ',' || *s == ' ') ++s;
    }
  } else {
    if (const Error* e = session->tokenizer_error()) {
      std::fprintf(stderr, "complete: %s (use --prompt-ids)\n", e->message().c_str());
      return 1;
    }
    // Control tokens written in the text stay plain text here, unlike Session::tokenize.
    auto enc = session->tokenizer().encode(prompt, /*add_special=*/!no_bos);
    if (!enc) {
      std::fprintf(stderr, "complete: %s\n", enc.error().message().c_str());
      return 1;
    }
    ids = std::move(*enc);
  }
  if (ids.empty()) {
    std::fprintf(stderr, "complete: empty prompt\n");
    return 1;
  }
  if (static_cast<int64_t>(ids.size()) > n_ctx) {
    std::fprintf(stderr, "complete: the prompt is %zu tokens but the context holds %lld (use -c)\n", ids.size(),
                 static_cast<long long>(n_ctx));
    return 1;
  }

  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  if (auto st = session->prefill(ids); !st) {
    std::fprintf(stderr, "complete: %s\n", st.error().message().c_str());
    return 1;
  }
  const auto t1 = clock::now();

  // The K largest logits at the last prompt position (lowest id first on ties).
  std::vector<std::pair<float, int32_t>> top;
  if (json) {
    const std::span<const float> logits = session->last_logits();
    for (size_t i = 0; i < logits.size(); ++i) top.emplace_back(logits[i], static_cast<int32_t>(i));
    const size_t k = std::min<size_t>(static_cast<size_t>(std::max(top_logits, 0)), top.size());
    std::partial_sort(top.begin(), top.begin() + static_cast<std::ptrdiff_t>(k), top.end(),
                      [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    top.resize(k);
  }

  GenerateOptions opt;
  opt.sampler.temperature = temp;
  opt.sampler.top_k = top_k;
  opt.sampler.top_p = top_p;
  opt.sampler.min_p = 0.0f;
  opt.sampler.seed = seed;
  opt.max_tokens = n_predict;
  opt.flush_partial_char = false;  // a character cut by -n is left out, as it always was
  opt.speculative = spec;
  auto gen = session->generate_from_cache(opt, [&](std::string_view piece) {
    if (!json) {
      std::fputs(std::string(piece).c_str(), stdout);
      std::fflush(stdout);
    }
    return true;
  });
  if (!gen) {
    std::fprintf(stderr, "\ncomplete: %s\n", gen.error().message().c_str());
    return 1;
  }
  // A full context ends generation the way it always has: with the cache's own message.
  if (gen->stop == StopReason::context_full)
    if (auto room = session->context().kv().reserve_tokens(1); !room)
      std::fprintf(stderr, "\ncomplete: %s\n", room.error().message().c_str());
  const auto t2 = clock::now();
  const std::vector<int32_t>& out_ids = gen->ids;
  const std::string& text = gen->text;
  const double pp_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
  const double tg_ms = std::chrono::duration<double, std::milli>(t2 - t1).count();
  const size_t n_gen_evals = out_ids.empty() ? 0 : out_ids.size() - 1;
  const Context& ctx = session->context();

  if (json) {
    std::printf("{\"prompt_ids\": [");
    for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? ", " : "", ids[i]);
    std::printf("], \"top_logits\": [");
    for (size_t i = 0; i < top.size(); ++i) std::printf("%s[%d, %.6g]", i ? ", " : "", top[i].second, top[i].first);
    std::printf("], \"ids\": [");
    for (size_t i = 0; i < out_ids.size(); ++i) std::printf("%s%d", i ? ", " : "", out_ids[i]);
    std::printf("], \"text\": \"%s\", ", json_escape(text).c_str());
    std::printf("\"timings\": {\"prompt_tokens\": %zu, \"prompt_ms\": %.3f, \"prompt_tokens_per_s\": %.2f, "
                "\"generated_tokens\": %zu, \"generation_ms\": %.3f, \"generation_tokens_per_s\": %.2f, \"threads\": %d, "
                "\"draft_proposed\": %lld, \"draft_accepted\": %lld}}\n",
                ids.size(), pp_ms, pp_ms > 0 ? 1000.0 * static_cast<double>(ids.size()) / pp_ms : 0.0, out_ids.size(), tg_ms,
                tg_ms > 0 ? 1000.0 * static_cast<double>(n_gen_evals) / tg_ms : 0.0, ctx.n_threads(),
                static_cast<long long>(gen->stats.draft_proposed), static_cast<long long>(gen->stats.draft_accepted));
    std::fflush(stdout);
    if (moe_stats) print_moe_stats(ctx.moe_stats());
    return 0;
  }
  std::printf("\n");
  if (print_ids) {
    for (size_t i = 0; i < out_ids.size(); ++i) std::printf("%s%d", i ? " " : "", out_ids[i]);
    std::printf("\n");
  }
  std::fflush(stdout);
  if (moe_stats) print_moe_stats(ctx.moe_stats());
  std::fprintf(stderr, "prompt: %zu tokens, %.1f tokens/s; generation: %zu tokens, %.1f tokens/s\n", ids.size(),
               pp_ms > 0 ? 1000.0 * static_cast<double>(ids.size()) / pp_ms : 0.0, out_ids.size(),
               tg_ms > 0 ? 1000.0 * static_cast<double>(n_gen_evals) / tg_ms : 0.0);
  return 0;
}
