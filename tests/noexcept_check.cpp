// Built with -fno-exceptions -fno-rtti: the whole library must compile and work that way.
#include <tinyslm.hpp>

#include <cstdio>
#include <type_traits>

// Built without exceptions, the library lives in its own inline namespace (no ODR clash with
// a copy built with them).
static_assert(std::is_same_v<tinyslm::Model, tinyslm::v0_noexcept::Model>);

int main() {
  tinyslm::GgufWriter w;
  w.set_u32("a.b", 7);
  const std::vector<uint8_t> bytes = w.to_bytes();
  auto f = tinyslm::GgufFile::from_memory(bytes.data(), bytes.size());
  if (!f || *f->get<uint32_t>("a.b") != 7) return 1;
  auto bad = tinyslm::GgufFile::from_memory(bytes.data(), 10);
  if (bad) return 1;
  // Generation options with hooks, as an app without exceptions writes them.
  tinyslm::GenerateOptions o{.sampler = {.temperature = 0.0f}, .max_tokens = 1};
  o.on_sample = [](int32_t id, std::span<const float>) { return id == 0 ? tinyslm::kVetoToken : id; };
  if (o.sampler.top_k != 40 || o.on_sample(0, {}) != tinyslm::kVetoToken) return 1;
  std::printf("no-exceptions build ok: %s\n", bad.error().message().c_str());
  return 0;
}
