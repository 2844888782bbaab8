// bench: prompt processing and generation speed, in the manner of llama-bench.
//
//   bench -m MODEL [-p 512] [-n 128] [-t 1,2] [-r 3] [-d 0,4096] [-ctk f16] [-ctv f16]
//         [--load map|read] [--busy-cores N] [--json]
//
// pp<P>: one eval of P tokens from an empty cache (prefill, GEMM). tg<N>: N evals of one token
// each from an empty cache (decode, GEMV). -d D (--n-depth, as llama-bench): the cache first
// holds D tokens (evaluated once, untimed; each run starts back at D), the test named
// "pp512 @ d4096". -ctk / -ctv (--cache-type-k / --cache-type-v): the KV cache types. Each test runs once untimed to warm up, then R
// times; the table gives tokens/s as mean ± standard deviation over the R runs.
//
// Below the table: the weight bytes one decoded token reads (every matrix it multiplies: the
// attention projections, for a mixture of experts the router and the k selected experts' gate,
// up and down matrices (moe_decode_bytes), the output head, plus the one embedding row),
// against the model's active parameters (the same matrices' element counts; the embedding
// table is not counted, only its row is read) and its total size; then how the weights are
// held (--load map: mapped from the file, the default; read: copied into memory) and, on
// Linux, how much of that memory sits in 2 MB pages, which decode speed depends on.
//
// The decode ceiling, per thread count: the read bandwidth measured in the same run (a plain
// streaming sum over a 256 MiB buffer, larger than any L3, on that many threads), divided by
// the bytes one decoded token reads, and the fraction of it tg reached.
//
// --busy-cores N: N processes (fork; on systems without fork, threads) spin beside the
// benchmark for its whole run, as other apps do on a phone, and are killed when it exits.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tinyslm.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#define BENCH_HAVE_FORK 1
#if defined(__linux__)
#include <sys/prctl.h>
#endif
#else
#include <thread>
#endif

using namespace tinyslm;

namespace {

std::vector<int> parse_list(const char* s) {
  std::vector<int> v;
  while (*s) {
    char* end = nullptr;
    const long x = std::strtol(s, &end, 10);
    if (end == s) break;
    v.push_back(static_cast<int>(x));
    s = end;
    while (*s == ',') ++s;
  }
  return v;
}

// The file's declared type (general.file_type), as llama.cpp names it.
std::string file_type_name(const GgufFile& f, TensorType fallback) {
  auto ft = f.get_or<uint32_t>("general.file_type", 9999);
  const char* name = ft ? tinyslm::file_type_name(*ft) : nullptr;
  return name ? name : tensor_type_name(fallback);
}

struct DecodeReads {
  uint64_t bytes = 0;          // weight bytes read per decoded token
  uint64_t active_params = 0;  // parameters multiplied per decoded token
};

uint64_t weight_bytes_of(const Weight& w) { return w ? w.row_bytes() * static_cast<uint64_t>(w.rows) : 0; }
uint64_t params_of(const Weight& w) { return w ? static_cast<uint64_t>(w.rows) * static_cast<uint64_t>(w.cols) : 0; }
uint64_t params_of(const MatrixRef& m) { return m.data ? static_cast<uint64_t>(m.rows) * static_cast<uint64_t>(m.cols) : 0; }
uint64_t params_of(const MoeExperts& x) { return static_cast<uint64_t>(x.rows) * static_cast<uint64_t>(x.cols); }

Expected<DecodeReads> decode_reads(const Model& model) {
  const HParams& hp = model.hparams();
  const ModelWeights& w = model.weights();
  DecodeReads r;
  auto add = [&](const Weight& m) {
    r.bytes += weight_bytes_of(m);
    r.active_params += params_of(m);
  };
  MoeConfig cfg;
  if (hp.n_expert > 0) {
    auto c = read_moe_config(model.gguf());
    if (!c) return c.error();
    cfg = *c;
  }
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    const LayerWeights& L = w.layers[static_cast<size_t>(il)];
    for (const Weight* m : {&L.wq, &L.wk, &L.wv, &L.wqkv, &L.wo, &L.ffn_gate, &L.ffn_up, &L.ffn_down}) add(*m);
    if (L.moe) {
      auto lw = bind_moe_layer(model.gguf(), cfg, il, hp.n_embd);
      if (!lw) return lw.error();
      r.bytes += moe_decode_bytes(cfg, *lw);
      r.active_params += params_of(lw->router) + params_of(lw->shared_gate) + params_of(lw->shared_up) +
                         params_of(lw->shared_down) + params_of(lw->shared_gate_inp) +
                         static_cast<uint64_t>(cfg.n_expert_used) * (params_of(lw->gate) + params_of(lw->up) + params_of(lw->down));
    }
  }
  add(w.output);
  r.bytes += w.token_embd.row_bytes();
  return r;
}

// Linux: how much of the weights' mapping is resident, and how much of that sits in 2 MB
// pages (decode speed depends on it; see LoadMode in core.hpp). Empty elsewhere.
std::string page_report(const void* data) {
  std::string out;
#if defined(__linux__)
  FILE* f = std::fopen("/proc/self/smaps", "r");
  if (!f) return out;
  const auto addr = reinterpret_cast<uintptr_t>(data);
  char line[512];
  bool in = false;
  unsigned long long rss = 0, huge = 0;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long long lo = 0, hi = 0;
    if (std::sscanf(line, "%llx-%llx ", &lo, &hi) == 2 && std::strchr(line, ' ') && std::strchr(line, '-') < std::strchr(line, ' ')) {
      in = addr >= lo && addr < hi;
      continue;
    }
    if (!in) continue;
    unsigned long long kb = 0;
    if (std::sscanf(line, "Rss: %llu kB", &kb) == 1) rss = kb;
    else if (std::sscanf(line, "FilePmdMapped: %llu kB", &kb) == 1) huge += kb;
    else if (std::sscanf(line, "AnonHugePages: %llu kB", &kb) == 1) huge += kb;
  }
  std::fclose(f);
  char buf[160];
  std::snprintf(buf, sizeof buf, "%.1f MiB of the weights' memory resident, %.1f MiB of it in 2 MB pages", rss / 1024.0, huge / 1024.0);
  out = buf;
#else
  (void)data;
#endif
  return out;
}

// --busy-cores: spinning processes beside the benchmark, killed at exit (atexit, and on the
// usual terminating signals; on Linux the kernel also kills them if bench dies otherwise).
#if defined(BENCH_HAVE_FORK)
std::vector<pid_t> g_busy;
void stop_busy() {
  for (pid_t p : g_busy) kill(p, SIGKILL);
  for (pid_t p : g_busy) waitpid(p, nullptr, 0);
  g_busy.clear();
}
void stop_busy_on_signal(int sig) {
  for (pid_t p : g_busy) kill(p, SIGKILL);  // async-signal-safe
  signal(sig, SIG_DFL);
  raise(sig);
}
bool start_busy(int n) {
  const pid_t parent = getpid();
  std::atexit(stop_busy);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) signal(sig, stop_busy_on_signal);
  for (int i = 0; i < n; ++i) {
    const pid_t p = fork();
    if (p < 0) return false;
    if (p == 0) {
#if defined(__linux__)
      prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
      for (uint64_t k = 1;; ++k)
        if ((k & ((uint64_t{1} << 26) - 1)) == 0 && getppid() != parent) _exit(0);  // orphaned
    }
    g_busy.push_back(p);
  }
  return true;
}
#else
std::atomic<bool> g_busy_stop{false};
bool start_busy(int n) {
  for (int i = 0; i < n; ++i)
    std::thread([] {
      volatile uint64_t k = 0;
      while (!g_busy_stop.load(std::memory_order_relaxed)) k = k + 1;
    }).detach();
  return true;
}
#endif

// Read bandwidth in GB/s on `threads` threads: the best of a few streaming sums over buf.
double read_bandwidth(const PageBuffer& buf, int threads) {
  ThreadPool pool(threads);
  const auto* words = reinterpret_cast<const uint64_t*>(buf.data());
  const int64_t n = static_cast<int64_t>(buf.size() / 8);
  std::vector<uint64_t> sums(static_cast<size_t>(pool.size()) * 8);  // a cache line each
  double best = 1e30;
  for (int rep = 0; rep < 6; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.run([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(n, t, nt, 512, &b, &e);
      uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int64_t i = b; i + 4 <= e; i += 4) {
        s0 += words[i];
        s1 += words[i + 1];
        s2 += words[i + 2];
        s3 += words[i + 3];
      }
      sums[static_cast<size_t>(t) * 8] = s0 + s1 + s2 + s3;
    });
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return static_cast<double>(buf.size()) / best / 1e9;
}

struct Result {
  std::string test;
  int threads;
  double mean, stddev;
  std::vector<double> samples;
};

}  // namespace

int main(int argc, char** argv) {
  std::string model_path;
  std::vector<int> pp = {512}, tg = {128}, threads = {1}, depths = {0};
  KvType type_k = KvType::f16, type_v = KvType::f16;
  int reps = 3, busy_cores = 0;
  bool json = false;
  LoadMode load = LoadMode::map;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench: %s needs a value\n", a.c_str());
        std::exit(1);
      }
      return argv[++i];
    };
    if (a == "-m") model_path = next();
    else if (a == "-p") pp = parse_list(next());
    else if (a == "-n") tg = parse_list(next());
    else if (a == "-t") threads = parse_list(next());
    else if (a == "-r") reps = std::atoi(next());
    else if (a == "-d" || a == "--n-depth") depths = parse_list(next());
    else if (a == "-ctk" || a == "--cache-type-k" || a == "-ctv" || a == "--cache-type-v") {
      auto t = parse_kv_type(next());
      if (!t) {
        std::fprintf(stderr, "bench: %s\n", t.error().message().c_str());
        return 1;
      }
      (a == "-ctk" || a == "--cache-type-k" ? type_k : type_v) = *t;
    }
    else if (a == "--json") json = true;
    else if (a == "--busy-cores") busy_cores = std::atoi(next());
    else if (a == "--load") {
      const std::string v = next();
      if (v == "map") load = LoadMode::map;
      else if (v == "read") load = LoadMode::read;
      else {
        std::fprintf(stderr, "bench: --load takes map or read, not '%s'\n", v.c_str());
        return 1;
      }
    }
    else {
      std::fprintf(stderr, "usage: %s -m MODEL [-p 512] [-n 128] [-t 1,2] [-r 3] [-d 0] [-ctk f16] [-ctv f16] [--load map|read] [--busy-cores N] [--json]\n", argv[0]);
      return 1;
    }
  }
  int max_depth = 0;
  for (int d : depths) max_depth = std::max(max_depth, d);
  if (model_path.empty() || reps < 1 || depths.empty() || *std::min_element(depths.begin(), depths.end()) < 0 ||
      busy_cores < 0 || busy_cores > 1024 || threads.empty() ||
      std::any_of(threads.begin(), threads.end(), [](int t) { return t < 1 || t > 1024; })) {
    std::fprintf(stderr, "usage: %s -m MODEL [-p 512] [-n 128] [-t 1,2] [-r 3] [-d 0] [-ctk f16] [-ctv f16] [--load map|read] [--busy-cores N] [--json]\n", argv[0]);
    return 1;
  }
  if (busy_cores > 0 && !start_busy(busy_cores)) {
    std::fprintf(stderr, "bench: cannot start %d busy processes\n", busy_cores);
    return 1;
  }
  auto model = Model::open(model_path, load);
  if (!model) {
    std::fprintf(stderr, "bench: %s\n", model.error().message().c_str());
    return 1;
  }
  const HParams& hp = model->hparams();
  const std::string name = model_path.substr(model_path.find_last_of('/') == std::string::npos ? 0 : model_path.find_last_of('/') + 1);
  const double size_mib = static_cast<double>(model->weight_bytes()) / (1024.0 * 1024.0);
  const TensorType first_type = model->weights().layers.empty() || !model->weights().layers[0].wo
                                   ? model->weights().token_embd.type
                                   : model->weights().layers[0].wo.type;
  const std::string type_name = file_type_name(model->gguf(), first_type);
  int64_t max_tokens = 1;
  for (int p : pp) max_tokens = std::max<int64_t>(max_tokens, p);
  for (int n : tg) max_tokens = std::max<int64_t>(max_tokens, n);

  auto reads = decode_reads(*model);
  if (!reads) {
    std::fprintf(stderr, "bench: %s\n", reads.error().message().c_str());
    return 1;
  }

  PageBuffer bw_buf;  // for the read bandwidth, each thread count's after its tests
  if (!bw_buf.allocate(size_t{256} << 20)) {
    std::fprintf(stderr, "bench: cannot allocate the 256 MiB bandwidth buffer\n");
    return 1;
  }
  std::memset(bw_buf.data(), 1, bw_buf.size());
  std::vector<double> read_gbps;  // per entry of `threads`

  std::vector<Result> results;
  using clock = std::chrono::steady_clock;
  for (int t : threads) {
    auto ctx = Context::create(*model, {.n_ctx = max_tokens + max_depth, .n_threads = t, .n_batch = 512,
                                        .type_k = type_k, .type_v = type_v});
    if (!ctx) {
      std::fprintf(stderr, "bench: %s\n", ctx.error().message().c_str());
      return 1;
    }
    auto tokens = [&](int n) {
      std::vector<int32_t> v(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919 + 11) % hp.n_vocab);
      return v;
    };
    auto measure = [&](const std::string& test, int n_tokens, bool prefill, int depth) {
      const auto toks = tokens(n_tokens);
      Result r{test, t, 0, 0, {}};
      for (int rep = -1; rep < reps; ++rep) {
        if (auto st = ctx->truncate(depth); !st) std::exit(1);
        const auto t0 = clock::now();
        if (prefill) {
          auto lg = ctx->eval(toks);
          if (!lg) {
            std::fprintf(stderr, "bench: %s\n", lg.error().message().c_str());
            std::exit(1);
          }
        } else {
          for (int i = 0; i < n_tokens; ++i) {
            auto lg = ctx->eval(std::span<const int32_t>(&toks[static_cast<size_t>(i)], 1));
            if (!lg) {
              std::fprintf(stderr, "bench: %s\n", lg.error().message().c_str());
              std::exit(1);
            }
          }
        }
        const double s = std::chrono::duration<double>(clock::now() - t0).count();
        if (rep >= 0) r.samples.push_back(n_tokens / s);
      }
      double sum = 0, sq = 0;
      for (double x : r.samples) sum += x;
      r.mean = sum / static_cast<double>(r.samples.size());
      for (double x : r.samples) sq += (x - r.mean) * (x - r.mean);
      r.stddev = r.samples.size() > 1 ? std::sqrt(sq / static_cast<double>(r.samples.size() - 1)) : 0.0;
      results.push_back(r);
      if (!json)
        std::fprintf(stderr, "  %s t=%d: %.2f t/s\n", test.c_str(), t, r.mean);
    };
    for (int d : depths) {
      ctx->reset();
      if (d > 0) {
        const auto fill = tokens(d);
        if (auto lg = ctx->eval(fill); !lg) {
          std::fprintf(stderr, "bench: %s\n", lg.error().message().c_str());
          return 1;
        }
      }
      const std::string at = d > 0 ? " @ d" + std::to_string(d) : "";
      for (int p : pp)
        if (p > 0) measure("pp" + std::to_string(p) + at, p, true, d);
      for (int n : tg)
        if (n > 0) measure("tg" + std::to_string(n) + at, n, false, d);
    }
    read_gbps.push_back(read_bandwidth(bw_buf, t));
  }
  auto gbps_at = [&](int t) {
    for (size_t i = 0; i < threads.size(); ++i)
      if (threads[i] == t) return read_gbps[i];
    return 0.0;
  };
  // Tokens/s if decode did nothing but stream its weights at the measured bandwidth.
  auto ceiling = [&](int t) { return reads->bytes ? gbps_at(t) * 1e9 / static_cast<double>(reads->bytes) : 0.0; };

  if (json) {
    std::printf("[");
    for (size_t i = 0; i < results.size(); ++i) {
      const auto& r = results[i];
      std::printf("%s\n  {\"model\": \"%s\", \"size_mib\": %.2f, \"type\": \"%s\", \"arch\": \"%s\", \"threads\": %d, "
                  "\"type_k\": \"%s\", \"type_v\": \"%s\", \"test\": \"%s\", \"tokens_per_s\": %.3f, \"stddev\": %.3f, \"decode_weight_bytes\": %llu, \"active_params\": %llu, "
                  "\"read_gbps\": %.3f, \"decode_ceiling_tps\": %.3f, \"busy_cores\": %d, \"samples\": [",
                  i ? "," : "", name.c_str(), size_mib, type_name.c_str(), hp.arch_name.c_str(), r.threads,
                  kv_type_name(type_k), kv_type_name(type_v), r.test.c_str(), r.mean, r.stddev, static_cast<unsigned long long>(reads->bytes),
                  static_cast<unsigned long long>(reads->active_params), gbps_at(r.threads), ceiling(r.threads),
                  busy_cores);
      for (size_t k = 0; k < r.samples.size(); ++k) std::printf("%s%.3f", k ? ", " : "", r.samples[k]);
      std::printf("]}");
    }
    std::printf("\n]\n");
    return 0;
  }
  std::printf("| %-36s | %10s | %-7s | %7s | %-9s | %14s | %20s |\n", "model", "size", "type", "threads", "kv (K/V)",
              "test", "t/s");
  std::printf("| %s | %s | %s | %s | %s | %s | %s |\n", std::string(36, '-').c_str(), std::string(10, '-').c_str(),
              std::string(7, '-').c_str(), std::string(7, '-').c_str(), std::string(9, '-').c_str(),
              std::string(14, '-').c_str(), std::string(20, '-').c_str());
  const std::string kv_name = std::string(kv_type_name(type_k)) + "/" + kv_type_name(type_v);
  for (const auto& r : results) {
    char tps[64];
    std::snprintf(tps, sizeof tps, "%.2f ± %.2f", r.mean, r.stddev);
    char size[32];
    std::snprintf(size, sizeof size, "%.2f MiB", size_mib);
    std::printf("| %-36s | %10s | %-7s | %7d | %-9s | %14s | %20s |\n", name.c_str(), size, type_name.c_str(), r.threads,
                kv_name.c_str(), r.test.c_str(), tps);
  }
  const double active = static_cast<double>(reads->active_params);
  std::printf("\ndecode reads %.2f MiB of weights per token: %.1f M active parameters (%.2f bits each) of %.1f MiB "
              "in the file (%.1f%%)\n",
              static_cast<double>(reads->bytes) / (1024.0 * 1024.0), active / 1e6,
              active > 0 ? 8.0 * static_cast<double>(reads->bytes) / active : 0.0, size_mib,
              100.0 * static_cast<double>(reads->bytes) / static_cast<double>(model->weight_bytes()));
  std::printf("\ndecode ceiling (read bandwidth measured in this run / weight bytes per token)%s:\n",
              busy_cores ? (" with " + std::to_string(busy_cores) + " busy core(s)").c_str() : "");
  std::printf("| threads | read GB/s | ceiling t/s |   test |      t/s | of ceiling |\n");
  std::printf("| ------- | --------- | ----------- | ------ | -------- | ---------- |\n");
  for (const auto& r : results) {
    if (r.test.rfind("tg", 0) != 0) continue;
    const double c = ceiling(r.threads);
    std::printf("| %7d | %9.2f | %11.1f | %6s | %8.2f | %9.1f%% |\n", r.threads, gbps_at(r.threads), c, r.test.c_str(),
                r.mean, c > 0 ? 100.0 * r.mean / c : 0.0);
  }
  const std::string pages = page_report(model->gguf().source().data());
  std::printf("weights %s%s%s\n", load == LoadMode::map ? "mapped from the file" : "read into memory",
              pages.empty() ? "" : ": ", pages.c_str());
  return 0;
}
