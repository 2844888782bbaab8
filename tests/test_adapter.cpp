// LoRA adapter loading and validation (llama.cpp's adapter GGUF layout).
#include <doctest/doctest.h>

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "tinyslm.hpp"
#include "tinyslm/adapter.hpp"

using namespace tinyslm;
using namespace tinyslm_test;

namespace {
std::vector<char> read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}
}  // namespace

TEST_CASE("adapter: the shared adapters load and fit their base" * doctest::test_suite("shared")) {
  const std::string m = shared_file("models/stories260K.gguf");
  const std::string a = shared_file("models/lora/stories260K-f32-r8-all.gguf");
  const std::string q = shared_file("models/lora/stories260K-q8_0-r4-ffn.gguf");
  if (m.empty() || a.empty() || q.empty()) return;
  auto model = Model::open(m);
  REQUIRE(model);
  auto ad = Adapter::open(a, *model);
  REQUIRE_MESSAGE(ad, (ad ? "" : ad.error().message()));
  CHECK(ad->pairs().size() == 35);  // 7 projections x 5 layers (models/lora/README.md)
  CHECK(ad->alpha() == 16.0f);
  CHECK(ad->factor(ad->pairs()[0], 1.0f) == doctest::Approx(2.0));
  auto aq = Adapter::open(q, *model);
  REQUIRE_MESSAGE(aq, (aq ? "" : aq.error().message()));
  CHECK(aq->pairs().size() == 15);
}

TEST_CASE("adapter: bad input is a clear error" * doctest::test_suite("shared")) {
  const std::string m = shared_file("models/stories260K.gguf");
  const std::string a = shared_file("models/lora/stories260K-f32-r8-all.gguf");
  const std::string g = shared_file("models/lora/synth-qwen3-tiny-f32-r8-all.gguf");
  if (m.empty() || a.empty() || g.empty()) return;
  auto model = Model::open(m);
  REQUIRE(model);
  auto wrong = Adapter::open(g, *model);
  REQUIRE_FALSE(wrong);
  CHECK(wrong.error().message().find("architecture") != std::string::npos);
  std::vector<char> bytes = read_all(a);
  REQUIRE(bytes.size() > 1000);
  auto cut = Adapter::from_memory(bytes.data(), bytes.size() / 2, *model, "cut.gguf");
  REQUIRE_FALSE(cut);
  CHECK(cut.error().message().find("cut.gguf") != std::string::npos);
}
