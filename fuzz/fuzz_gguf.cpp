// libFuzzer target for the GGUF reader: any bytes must give a file or an Error, never a crash,
// hang or out-of-bounds read. Whatever parses is walked completely.
//
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude fuzz/fuzz_gguf.cpp -o fuzz_gguf
//   ./fuzz_gguf -max_total_time=60 corpus/ seeds/
#include <tinyslm/gguf.hpp>

#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = tinyslm::GgufFile::from_memory(data, size, "fuzz.gguf");
  if (!f) {
    if (f.error().message().empty()) std::abort();
    return 0;
  }
  size_t sink = 0;
  for (const auto& kv : f->metadata()) {
    sink += tinyslm::format_value(kv.value, 16).size();
    if (kv.value.type() == tinyslm::GgufValueType::array) sink += kv.value.as_array().strings().size();
    (void)f->get<uint32_t>(kv.key);
    (void)f->get<std::string>(kv.key);
    (void)f->get<float>(kv.key);
  }
  for (const auto& t : f->tensors()) {
    if (t.data < data || t.data + t.n_bytes > data + size) std::abort();
    if (t.n_bytes) sink += t.data[0] + t.data[t.n_bytes - 1];
    if (f->find_tensor(t.name) == nullptr) std::abort();
  }
  return static_cast<int>(sink & 0);
}
