// inspect: print a GGUF file's metadata, tensor table and a summary.
//
//   inspect FILE [--no-tensors] [--array-items N]
//
// A malformed file gets one line on stderr and exit status 1.
#include <tinyslm.hpp>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: inspect FILE [--no-tensors] [--array-items N]\n"
               "  prints the metadata (long arrays abbreviated), the tensor table and a summary\n");
}

std::string human_bytes(uint64_t b) {
  char buf[64];
  if (b >= (1ull << 30))
    std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(b) / (1ull << 30));
  else if (b >= (1ull << 20))
    std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(b) / (1ull << 20));
  else if (b >= 1024)
    std::snprintf(buf, sizeof buf, "%.2f KiB", static_cast<double>(b) / 1024);
  else
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(b));
  return buf;
}

std::string human_count(uint64_t n) {
  char buf[64];
  if (n >= 1000000000ull)
    std::snprintf(buf, sizeof buf, "%.2f B", static_cast<double>(n) / 1e9);
  else if (n >= 1000000ull)
    std::snprintf(buf, sizeof buf, "%.2f M", static_cast<double>(n) / 1e6);
  else if (n >= 1000ull)
    std::snprintf(buf, sizeof buf, "%.2f K", static_cast<double>(n) / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(n));
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  std::string path;
  bool show_tensors = true;
  size_t array_items = 8;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      usage();
      return 0;
    } else if (a == "--no-tensors") {
      show_tensors = false;
    } else if (a == "--array-items" && i + 1 < argc) {
      char* end = nullptr;
      const long v = std::strtol(argv[++i], &end, 10);
      if (*end != '\0' || v < 0) {
        std::fprintf(stderr, "inspect: --array-items takes a count, got '%s'\n", argv[i]);
        return 2;
      }
      array_items = static_cast<size_t>(v);
    } else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "inspect: unknown option '%s' (see --help)\n", a.c_str());
      return 2;
    } else if (path.empty()) {
      path = a;
    } else {
      std::fprintf(stderr, "inspect: one file at a time (got '%s' and '%s')\n", path.c_str(), a.c_str());
      return 2;
    }
  }
  if (path.empty()) {
    usage();
    return 2;
  }

  auto file = tinyslm::GgufFile::open(path);
  if (!file) {
    std::fprintf(stderr, "inspect: %s\n", file.error().message().c_str());
    return 1;
  }
  const tinyslm::GgufFile& f = *file;

  std::printf("file: %s\n", path.c_str());
  std::printf("GGUF version %u, alignment %u, data offset %llu, file size %llu (%s)\n", f.version(),
              f.alignment(), static_cast<unsigned long long>(f.data_offset()),
              static_cast<unsigned long long>(f.file_size()), human_bytes(f.file_size()).c_str());

  std::printf("\nmetadata (%zu keys):\n", f.metadata().size());
  size_t key_width = 0;
  for (const auto& kv : f.metadata()) key_width = std::max(key_width, kv.key.size());
  for (const auto& kv : f.metadata()) {
    std::printf("  %-*.*s  %-6s  %s\n", static_cast<int>(key_width), static_cast<int>(kv.key.size()),
                kv.key.data(), tinyslm::gguf_value_type_name(kv.value.type()),
                tinyslm::format_value(kv.value, array_items).c_str());
  }

  uint64_t n_params = 0, n_bytes = 0;
  struct PerType {
    int tensors = 0;
    uint64_t params = 0, bytes = 0;
  };
  std::map<std::string, PerType> by_type;
  for (const auto& t : f.tensors()) {
    n_params += t.n_elements;
    n_bytes += t.n_bytes;
    auto& p = by_type[tinyslm::tensor_type_name(t.type)];
    p.tensors++;
    p.params += t.n_elements;
    p.bytes += t.n_bytes;
  }

  if (show_tensors) {
    std::printf("\ntensors (%zu):\n", f.tensors().size());
    size_t name_width = 4;
    for (const auto& t : f.tensors()) name_width = std::max(name_width, t.name.size());
    std::printf("  %5s  %-*s  %-7s  %-24s  %12s  %12s\n", "#", static_cast<int>(name_width), "name",
                "type", "shape", "offset", "bytes");
    int idx = 0;
    for (const auto& t : f.tensors()) {
      std::printf("  %5d  %-*.*s  %-7s  %-24s  %12llu  %12llu\n", idx++, static_cast<int>(name_width),
                  static_cast<int>(t.name.size()), t.name.data(), tinyslm::tensor_type_name(t.type),
                  t.shape_string().c_str(), static_cast<unsigned long long>(t.offset),
                  static_cast<unsigned long long>(t.n_bytes));
    }
  }

  auto arch = f.get<std::string>("general.architecture");
  auto name = f.get<std::string>("general.name");
  std::printf("\nsummary:\n");
  std::printf("  architecture: %s\n", arch ? arch->c_str() : "(none)");
  if (name) std::printf("  name: %s\n", name->c_str());
  std::printf("  tensors: %zu\n", f.tensors().size());
  std::printf("  parameters: %llu (%s)\n", static_cast<unsigned long long>(n_params),
              human_count(n_params).c_str());
  std::printf("  tensor data: %s\n", human_bytes(n_bytes).c_str());
  for (const auto& [type, p] : by_type) {
    std::printf("  %-7s %4d tensors  %10s params  %s (%.2f bits/weight)\n", type.c_str(), p.tensors,
                human_count(p.params).c_str(), human_bytes(p.bytes).c_str(),
                p.params ? 8.0 * static_cast<double>(p.bytes) / static_cast<double>(p.params) : 0.0);
  }
  return 0;
}
