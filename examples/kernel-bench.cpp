// kernel-bench: speed of the matmul kernels per weight type.
//
//   kernel-bench [--types Q4_0,Q8_0,...] [--threads 1,2] [--quick] [--simd scalar|avx2|avxvnni|avx512|neon|highway]
//
// Prints the machine's read bandwidth (a plain read-sum loop over 512 MiB, 1 and 2 threads),
// then per type: GEMV (one token) throughput in GB/s of weights read, for a 4096 x 4096 and a
// 49152 x 576 (rows x cols: an output head) matrix, with the ratio to the read bandwidth
// measured again right after, on the same threads; and GEMM throughput in GOP/s (2 * rows * cols * tokens
// per second) for 512 tokens on the 4096 x 4096 matrix. GEMV rotates over enough copies of
// the weights that they never sit in the caches. Each figure is the best of several runs.
// The bandwidth buffer and the weight copies live in the same kind of memory: on Linux
// anonymous memory advised for 2 MB pages (PageBuffer, core.hpp), elsewhere the heap.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <tinyslm.hpp>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KB_HAVE_VNNI_PEAK 1
#endif

using namespace tinyslm;
using Clock = std::chrono::steady_clock;

namespace {

// The streamed buffers (the read-bandwidth buffer and the weight copies) are PageBuffers:
// 2 MB pages on Linux, as the library's weights get with LoadMode::read or a file in large
// page-cache folios, so both sides of the GEMV / bandwidth ratio use the same kind of pages.
PageBuffer stream_buffer(size_t bytes) {
  PageBuffer b;
  if (!b.allocate(bytes)) {
    std::fprintf(stderr, "kernel-bench: cannot allocate %zu bytes\n", bytes);
    std::exit(1);
  }
  return b;
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Runs fn repeatedly for about `budget` seconds (at least `min_reps` times); best time per call.
template <class F>
double best_time(F&& fn, double budget, int min_reps = 3) {
  double best = 1e30;
  const auto start = Clock::now();
  for (int rep = 0; rep < min_reps || seconds_since(start) < budget; ++rep) {
    const auto t0 = Clock::now();
    fn();
    best = std::min(best, seconds_since(t0));
    if (rep > 1000) break;
  }
  return best;
}

double read_bandwidth(ThreadPool& pool, const PageBuffer& mem, double budget) {
  const std::span<const uint64_t> buf(reinterpret_cast<const uint64_t*>(mem.data()), mem.size() / 8);
  std::vector<uint64_t> sums(static_cast<size_t>(pool.size()) * 8);
  const double t = best_time(
      [&] {
        pool.run([&](int ti, int nt) {
          int64_t b, e;
          ParallelFor::split(static_cast<int64_t>(buf.size()), ti, nt, 64, &b, &e);
          uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
          for (int64_t i = b; i + 4 <= e; i += 4) {
            s0 += buf[i];
            s1 += buf[i + 1];
            s2 += buf[i + 2];
            s3 += buf[i + 3];
          }
          sums[static_cast<size_t>(ti) * 8] = s0 + s1 + s2 + s3;
        });
      },
      budget);
  return static_cast<double>(buf.size() * 8) / t / 1e9;
}

#if defined(KB_HAVE_VNNI_PEAK)
// int8 VNNI peak: 16 independent vpdpbusd chains on zmm registers (128 ops each), written
// in assembly because compilers spill an array of 16+ vector accumulators.
__attribute__((target("avx512f,avx512bw,avx512vnni"), noinline)) int64_t vnni_spin(int64_t iters) {
  int64_t n = iters;
  __asm__ volatile(
      "vpternlogd $0xff, %%zmm30, %%zmm30, %%zmm30\n\t"
      "vpabsb %%zmm30, %%zmm31\n\t"
      "1:\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm0\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm1\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm2\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm3\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm4\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm5\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm6\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm7\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm8\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm9\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm10\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm11\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm12\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm13\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm14\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm15\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      : "+r"(n)
      :
      : "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10", "zmm11", "zmm12",
        "zmm13", "zmm14", "zmm15", "zmm30", "zmm31", "cc");
  return n;
}

double vnni_peak_gops(ThreadPool& pool, double budget) {
  const int64_t iters = 2000000;
  std::vector<int64_t> sink(static_cast<size_t>(pool.size()));
  const double t = best_time([&] { pool.run([&](int ti, int) { sink[static_cast<size_t>(ti)] = vnni_spin(iters); }); },
                             budget);
  return 16.0 * 128.0 * static_cast<double>(iters) * pool.size() / t / 1e9;
}
#endif

std::vector<uint8_t> random_weights(TensorType t, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  uint64_t bytes = 0;
  tensor_row_bytes(t, static_cast<uint64_t>(cols), &bytes);
  std::vector<uint8_t> m(static_cast<size_t>(bytes * rows));
  if (t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (int64_t i = 0; i < rows * cols; ++i) {
      const float v = u(rng);
      if (t == TensorType::F32) {
        std::memcpy(&m[4 * i], &v, 4);
      } else {
        const uint16_t h = t == TensorType::F16 ? fp32_to_fp16(v) : fp32_to_bf16(v);
        std::memcpy(&m[2 * i], &h, 2);
      }
    }
    return m;
  }
  // Random bytes are valid blocks of every type; keep every 16-bit word (so every fp16
  // scale) finite and small, as NaN scales would be unrepresentative.
  for (auto& b : m) b = static_cast<uint8_t>(rng());
  for (size_t i = 1; i < m.size(); i += 2) m[i] &= 0x3b;
  return m;
}

std::vector<TensorType> parse_types(const std::string& s) {
  std::vector<TensorType> v;
  size_t p = 0;
  while (p <= s.size()) {
    const size_t q = s.find(',', p);
    const std::string name = s.substr(p, q == std::string::npos ? std::string::npos : q - p);
    if (const TensorTypeInfo* info = tensor_type_by_name(name)) v.push_back(info->type);
    else std::fprintf(stderr, "unknown type %s\n", name.c_str());
    if (q == std::string::npos) break;
    p = q + 1;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<TensorType> types = {TensorType::Q4_0, TensorType::Q8_0, TensorType::Q4_K, TensorType::Q6_K,
                                   TensorType::Q5_0, TensorType::Q5_K, TensorType::Q4_1, TensorType::Q5_1,
                                   TensorType::Q2_K, TensorType::Q3_K, TensorType::IQ4_NL, TensorType::F16,
                                   TensorType::BF16, TensorType::F32};
  std::vector<int> thread_counts = {1, 2};
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--types" && i + 1 < argc) {
      types = parse_types(argv[++i]);
    } else if (a == "--threads" && i + 1 < argc) {
      thread_counts.clear();
      for (const char* p = argv[++i]; *p;) {
        thread_counts.push_back(std::atoi(p));
        while (*p && *p != ',') ++p;
        if (*p == ',') ++p;
      }
    } else if (a == "--quick") {
      quick = true;
    } else if (a == "--simd" && i + 1 < argc) {
      const std::string s = argv[++i];
      bool ok = false;
      for (SimdLevel l : {SimdLevel::scalar, SimdLevel::avx2, SimdLevel::avx512, SimdLevel::neon, SimdLevel::highway, SimdLevel::avxvnni})
        if (s == simd_level_name(l)) ok = static_cast<bool>(set_simd_level(l));
      if (!ok) {
        std::fprintf(stderr, "kernel-bench: SIMD path %s is not available\n", s.c_str());
        return 1;
      }
    } else {
      std::fprintf(stderr, "usage: %s [--types Q4_0,Q8_0,...] [--threads 1,2] [--quick] [--simd PATH]\n", argv[0]);
      return 1;
    }
  }
  const double budget = quick ? 0.15 : 0.6;
  std::printf("kernel-bench: SIMD path %s\n", simd_level_name(active_simd_level()));
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {  // how busy the machine was (Linux)
    char line[128] = {0};
    if (std::fgets(line, sizeof line, f)) std::printf("load average: %s", line);
    std::fclose(f);
  }

  // Machine read bandwidth.
  PageBuffer big = stream_buffer(size_t(512) << 20);  // 512 MiB
  for (size_t i = 0; i < big.size() / 8; ++i) {
    const uint64_t v = i;
    std::memcpy(big.data() + 8 * i, &v, 8);
  }
  std::printf("streamed buffers: %s\n", big.huge() ? "anonymous memory advised for 2 MB pages (Linux THP)" : "heap memory");
  std::vector<double> bw(thread_counts.size());
  for (size_t ti = 0; ti < thread_counts.size(); ++ti) {
    ThreadPool pool(thread_counts[ti]);
    bw[ti] = read_bandwidth(pool, big, budget * 2);
    std::printf("read bandwidth, %d thread(s): %.1f GB/s\n", thread_counts[ti], bw[ti]);
  }
  std::vector<double> peak(thread_counts.size(), 0.0);
#if defined(KB_HAVE_VNNI_PEAK)
  if (detect_cpu_features().has_avx512_vnni()) {
    for (size_t ti = 0; ti < thread_counts.size(); ++ti) {
      ThreadPool pool(thread_counts[ti]);
      peak[ti] = vnni_peak_gops(pool, budget);
      std::printf("int8 VNNI peak (16 vpdpbusd zmm chains), %d thread(s): %.0f GOP/s\n", thread_counts[ti], peak[ti]);
    }
  }
#endif

  struct Shape {
    int64_t rows, cols;
  };
  const Shape gemv_shapes[] = {{4096, 4096}, {49152, 576}};
  std::printf("\n| type | GEMV 4096x4096 GB/s (t=%s) | ratio | GEMV 49152x576 GB/s | ratio | GEMM 512 tok GOP/s (%% of VNNI peak) |\n",
              thread_counts.size() > 1 ? "1 / 2" : "1");
  std::printf("| --- | --- | --- | --- | --- | --- |\n");
  for (TensorType t : types) {
    if (!matmul_supports(t)) continue;
    std::string cells[5];
    for (int si = 0; si < 2; ++si) {
      const Shape sh = gemv_shapes[si];
      if (sh.cols % static_cast<int64_t>(tensor_type_info(t).block_size) != 0) {  // e.g. K types on 576
        cells[2 * si] = cells[2 * si + 1] = "-";
        continue;
      }
      auto w = random_weights(t, sh.rows, sh.cols, 7);
      const int64_t bytes = static_cast<int64_t>(w.size());
      // Enough copies for ~384 MiB, so every call streams from memory.
      const int copies = static_cast<int>(std::max<int64_t>(2, (int64_t(384) << 20) / bytes));
      PageBuffer ws = stream_buffer(static_cast<size_t>(bytes) * static_cast<size_t>(copies));
      for (int c = 0; c < copies; ++c) std::memcpy(ws.data() + static_cast<size_t>(c) * static_cast<size_t>(bytes), w.data(), w.size());
      std::vector<float> x(static_cast<size_t>(sh.cols)), y(static_cast<size_t>(sh.rows));
      for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.1f * static_cast<float>(i));
      for (size_t ti = 0; ti < thread_counts.size(); ++ti) {
        ThreadPool pool(thread_counts[ti]);
        MatmulScratch scratch;
        (void)scratch.reserve(1, sh.cols);
        int next = 0;
        const double tm = best_time(
            [&] {
              for (int c = 0; c < copies; ++c) {
                const uint8_t* wc = ws.data() + static_cast<size_t>((next + c) % copies) * static_cast<size_t>(bytes);
                (void)matmul({t, wc, sh.rows, sh.cols}, x.data(), 1, y.data(), sh.rows, scratch, pool.parallel());
              }
              next = (next + 1) % copies;
            },
            budget);
        const double gbs = static_cast<double>(bytes) * copies / tm / 1e9;
        // The ratio uses a bandwidth measured right after, on the same threads: on a shared
        // machine both move together.
        const double bw_now = std::max(read_bandwidth(pool, big, budget / 2), 1e-9);
        char buf[64];
        std::snprintf(buf, sizeof buf, "%s%.1f", ti ? " / " : "", gbs);
        cells[2 * si] += buf;
        std::snprintf(buf, sizeof buf, "%s%.0f%%", ti ? " / " : "", 100.0 * gbs / bw_now);
        cells[2 * si + 1] += buf;
      }
    }
    {
      const int64_t rows = 4096, cols = 4096, n = quick ? 128 : 512;
      auto w = random_weights(t, rows, cols, 9);
      std::vector<float> x(static_cast<size_t>(n * cols)), y(static_cast<size_t>(n * rows));
      for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.01f * static_cast<float>(i));
      for (size_t ti = 0; ti < thread_counts.size(); ++ti) {
        ThreadPool pool(thread_counts[ti]);
        MatmulScratch scratch;
        (void)scratch.reserve(n, cols);
        const double tm = best_time(
            [&] { (void)matmul({t, w.data(), rows, cols}, x.data(), n, y.data(), rows, scratch, pool.parallel()); },
            budget, 2);
        char buf[64];
        const double gops = 2.0 * rows * cols * n / tm / 1e9;
        if (peak[ti] > 0)
          std::snprintf(buf, sizeof buf, "%s%.0f (%.0f%%)", ti ? " / " : "", gops, 100.0 * gops / peak[ti]);
        else
          std::snprintf(buf, sizeof buf, "%s%.0f", ti ? " / " : "", gops);
        cells[4] += buf;
      }
    }
    std::printf("| %s | %s | %s | %s | %s | %s |\n", tensor_type_name(t), cells[0].c_str(), cells[1].c_str(),
                cells[2].c_str(), cells[3].c_str(), cells[4].c_str());
    std::fflush(stdout);
  }
  return 0;
}
