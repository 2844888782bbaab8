// quantize: convert a GGUF model to another block type or mix, keeping every other tensor
// and all metadata.
//
//   quantize IN.gguf OUT.gguf TYPE [--pure] [-t THREADS]
//
// TYPE: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S
// Q5_K_M Q6_K IQ4_NL (Q3_K, Q4_K, Q5_K mean the _M mixes). The mixes choose per tensor as
// llama.cpp's llama-quantize does without an importance matrix; --pure uses TYPE everywhere.
#include <tinyslm.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

namespace {
void usage() {
  std::fprintf(stderr,
               "usage: quantize IN.gguf OUT.gguf TYPE [--pure] [-t THREADS]\n"
               "  TYPE: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S\n"
               "        Q4_K_M Q5_K_S Q5_K_M Q6_K IQ4_NL\n");
}
}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> pos;
  tinyslm::QuantizeOptions opt;
  opt.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      usage();
      return 0;
    } else if (a == "--pure") {
      opt.pure = true;
    } else if (a == "-t" || a == "--threads") {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "quantize: %s needs a value\n", a.c_str());
        return 2;
      }
      char* end = nullptr;
      const long t = std::strtol(argv[++i], &end, 10);
      if (*end != '\0' || t < 1 || t > 1024) {
        std::fprintf(stderr, "quantize: -t takes a thread count from 1 to 1024, got '%s'\n", argv[i]);
        return 2;
      }
      opt.threads = static_cast<int>(t);
    } else if (a.size() > 1 && a[0] == '-') {
      std::fprintf(stderr, "quantize: unknown option '%s' (see --help)\n", a.c_str());
      return 2;
    } else {
      pos.push_back(a);
    }
  }
  if (pos.size() != 3) {
    usage();
    return 2;
  }
  opt.target = pos[2];

  auto in = tinyslm::GgufFile::open(pos[0]);
  if (!in) {
    std::fprintf(stderr, "quantize: %s\n", in.error().message().c_str());
    return 1;
  }
  auto plan = tinyslm::plan_quantization(*in, opt);
  if (!plan) {
    std::fprintf(stderr, "quantize: %s\n", plan.error().message().c_str());
    return 1;
  }
  uint64_t bytes_in = 0, bytes_out = 0;
  for (const auto& p : *plan) {
    uint64_t row = 0;
    tinyslm::tensor_row_bytes(p.to, p.tensor->ne[0], &row);
    const uint64_t out = row * (p.tensor->n_elements / p.tensor->ne[0]);
    bytes_in += p.tensor->n_bytes;
    bytes_out += out;
    std::printf("%-32.*s %-8s -> %-8s%s\n", static_cast<int>(p.tensor->name.size()), p.tensor->name.data(),
                tinyslm::tensor_type_name(p.tensor->type), tinyslm::tensor_type_name(p.to),
                p.fell_back ? "  (row length fits no block of the mix's choice: fallback)" : "");
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto st = tinyslm::quantize_model(*in, pos[1], opt);
  if (!st) {
    std::fprintf(stderr, "quantize: %s\n", st.error().message().c_str());
    return 1;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %s: %zu tensors, %.2f MiB -> %.2f MiB in %.2f s\n", pos[1].c_str(), plan->size(),
              static_cast<double>(bytes_in) / (1 << 20), static_cast<double>(bytes_out) / (1 << 20), secs);
  return 0;
}
