// A tiny app that uses tinyslm the way an app developer would. Built three ways by the tests:
// add_subdirectory, find_package after install, and the single header alone.
// With a model path argument it also opens that file and prints its architecture.
#include <tinyslm.hpp>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  tinyslm::GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.block_count", 3);
  const float row[4] = {1, 2, 3, 4};
  const uint64_t shape[] = {4};
  if (!w.add_tensor("t", tinyslm::TensorType::F32, shape, row, sizeof row)) return 1;
  const std::vector<uint8_t> bytes = w.to_bytes();
  auto f = tinyslm::GgufFile::from_memory(bytes.data(), bytes.size());
  if (!f) {
    std::fprintf(stderr, "consumer: %s\n", f.error().message().c_str());
    return 1;
  }
  auto blocks = f->get<uint32_t>("llama.block_count");
  if (!blocks || *blocks != 3 || f->tensors().size() != 1) {
    std::fprintf(stderr, "consumer: round trip failed\n");
    return 1;
  }
  auto missing = f->get<uint32_t>("llama.context_length");
  if (missing || missing.error().code() != tinyslm::Errc::not_found) return 1;
  if (argc > 1) {
    auto m = tinyslm::GgufFile::open(argv[1]);
    if (!m) {
      std::fprintf(stderr, "consumer: %s\n", m.error().message().c_str());
      return 1;
    }
    std::printf("architecture: %s\n", m->get<std::string>("general.architecture").value_or("?").c_str());
  }
  std::printf("consumer ok\n");
  return 0;
}
