// perplexity: how well a model predicts a text, computed exactly as llama.cpp's
// llama-perplexity does, so the numbers can be compared.
//
//   perplexity -m MODEL -f TEXT [-c CTX] [-t THREADS] [-b BATCH] [-ctk f16|q8_0|q4_0] [-ctv ...]
//
// The whole file is tokenized with BOS (special tokens not parsed) and cut into chunks of CTX
// tokens (the remainder is dropped). Each chunk is evaluated from an empty cache with BOS in its
// first position (when the model adds BOS); the second half of each chunk is scored: the
// logits at positions CTX/2 .. CTX-2 predict the next token. PPL = exp(mean negative log-likelihood).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tinyslm.hpp"

using namespace tinyslm;

namespace {

int fail(const std::string& msg) {
  std::fprintf(stderr, "perplexity: %s\n", msg.c_str());
  return 1;
}

void usage() {
  std::fprintf(stderr, "usage: perplexity -m MODEL -f TEXT [-c CTX] [-t THREADS] [-b BATCH] [-ctk TYPE] [-ctv TYPE]\n");
}

// A whole decimal integer, or false.
bool parse_int(const char* s, int64_t* out) {
  if (!s || !*s) return false;
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  if (*end != '\0') return false;
  *out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, text_path;
  int64_t n_ctx = 512, threads = 1, batch = 0;
  KvType type_k = KvType::f16, type_v = KvType::f16;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    auto int_arg = [&](int64_t* out) {
      if (!has_value || !parse_int(argv[i + 1], out)) return false;
      ++i;
      return true;
    };
    if (a == "-h" || a == "--help") {
      usage();
      return 0;
    } else if (a == "-m" || a == "--model") {
      if (!has_value) return fail(a + " needs a value");
      model_path = argv[++i];
    } else if (a == "-f" || a == "--file") {
      if (!has_value) return fail(a + " needs a value");
      text_path = argv[++i];
    } else if (a == "-c" || a == "--ctx-size") {
      if (!int_arg(&n_ctx)) return fail(a + " needs an integer");
    } else if (a == "-t" || a == "--threads") {
      if (!int_arg(&threads)) return fail(a + " needs an integer");
    } else if (a == "-b" || a == "--batch-size") {
      if (!int_arg(&batch)) return fail(a + " needs an integer");
    } else if (a == "-ctk" || a == "--cache-type-k" || a == "-ctv" || a == "--cache-type-v") {
      if (!has_value) return fail(a + " needs a value");
      auto t = parse_kv_type(argv[++i]);
      if (!t) return fail(t.error().message());
      (a == "-ctk" || a == "--cache-type-k" ? type_k : type_v) = *t;
    } else {
      return fail("unknown argument '" + a + "' (see --help)");
    }
  }
  if (model_path.empty()) return fail("no model given (-m MODEL)");
  if (text_path.empty()) return fail("no text given (-f TEXT)");
  if (threads <= 0 || threads > 1024) return fail("thread count must be between 1 and 1024 (got " + std::to_string(threads) + ")");
  if (n_ctx < 4) return fail("context must be at least 4 (got " + std::to_string(n_ctx) + ")");
  if (batch <= 0) batch = n_ctx;
  batch = std::min(batch, n_ctx);

  std::ifstream in(text_path, std::ios::binary);
  if (!in) return fail("cannot read " + text_path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

  auto model = Model::open(model_path);
  if (!model) return fail(model.error().message());
  const HParams& hp = model->hparams();
  if (hp.n_ctx_train > 0 && n_ctx > hp.n_ctx_train)
    return fail("context " + std::to_string(n_ctx) + " is larger than the model's training context (" +
                std::to_string(hp.n_ctx_train) + ")");
  auto tok = Tokenizer::from_gguf(model->gguf());
  if (!tok) return fail(tok.error().message());
  auto ids = tok->encode(text, /*add_special=*/true, /*parse_special=*/false);
  if (!ids) return fail(ids.error().message());
  const int64_t n_tokens = static_cast<int64_t>(ids->size());
  if (n_tokens < 2 * n_ctx)
    return fail("the text has " + std::to_string(n_tokens) + " tokens; a context of " + std::to_string(n_ctx) +
                " needs at least " + std::to_string(2 * n_ctx));

  auto ctx = Context::create(*model, ContextParams{n_ctx, static_cast<int>(threads), batch, /*all_logits=*/true,
                                                   type_k, type_v});
  if (!ctx) return fail(ctx.error().message());

  const int64_t n_chunk = n_tokens / n_ctx;
  const int64_t first = n_ctx / 2;  // scored positions: first .. n_ctx - 2
  const int64_t n_vocab = hp.n_vocab;
  std::fprintf(stderr, "perplexity: %lld tokens, %lld chunks of %lld, batch %lld, %lld threads\n",
               static_cast<long long>(n_tokens), static_cast<long long>(n_chunk), static_cast<long long>(n_ctx),
               static_cast<long long>(batch), static_cast<long long>(threads));

  double nll = 0, nll2 = 0;
  int64_t count = 0;
  std::vector<int32_t> chunk(static_cast<size_t>(n_ctx));
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t c = 0; c < n_chunk; ++c) {
    std::copy(ids->begin() + c * n_ctx, ids->begin() + (c + 1) * n_ctx, chunk.begin());
    if (tok->add_bos() && tok->bos() >= 0) chunk[0] = tok->bos();
    ctx->reset();
    for (int64_t at = 0; at < n_ctx; at += batch) {
      const int64_t n = std::min(batch, n_ctx - at);
      auto lg = ctx->eval(std::span<const int32_t>(chunk.data() + at, static_cast<size_t>(n)));
      if (!lg) return fail(lg.error().message());
      for (int64_t j = std::max(at, first); j < std::min(at + n, n_ctx - 1); ++j) {
        const std::span<const float> row = ctx->logits(j - at);
        // log softmax at the next token, in double
        float mx = row[0];
        for (int64_t v = 1; v < n_vocab; ++v) mx = std::max(mx, row[static_cast<size_t>(v)]);
        double sum = 0;
        for (int64_t v = 0; v < n_vocab; ++v) sum += std::exp(static_cast<double>(row[static_cast<size_t>(v)] - mx));
        const double logp = static_cast<double>(row[static_cast<size_t>(chunk[static_cast<size_t>(j + 1)])] - mx) -
                            std::log(sum);
        nll -= logp;
        nll2 += logp * logp;
        ++count;
      }
    }
    std::printf("[%lld]%.4f,", static_cast<long long>(c + 1), std::exp(nll / static_cast<double>(count)));
    std::fflush(stdout);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double mean = nll / static_cast<double>(count);
  const double ppl = std::exp(mean);
  double var = nll2 / static_cast<double>(count) - mean * mean;
  const double err = var > 0 && count > 1 ? std::sqrt(var / static_cast<double>(count - 1)) * ppl : 0.0;
  std::printf("\nFinal estimate: PPL = %.4f +/- %.5f\n", ppl, err);
  std::fprintf(stderr, "perplexity: %lld predictions in %.2f s (%.1f tokens/s)\n", static_cast<long long>(count), secs,
               secs > 0 ? static_cast<double>(n_chunk * n_ctx) / secs : 0.0);
  return 0;
}
