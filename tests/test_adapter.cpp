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

namespace {
struct FakeTensor {
  std::string name;
  uint64_t ne0, ne1;
};
// A hand-made adapter file: zero F32 tensors, the given arch and alpha (NaN alpha when asked).
std::vector<uint8_t> fake_adapter(const std::vector<FakeTensor>& ts, const char* arch = "llama",
                                  bool with_alpha = true, float alpha = 16.0f) {
  GgufWriter w;
  w.set_string("general.type", "adapter");
  w.set_string("general.architecture", arch);
  w.set_string("adapter.type", "lora");
  if (with_alpha) w.set_f32("adapter.lora.alpha", alpha);
  for (const auto& t : ts) {
    const uint64_t shape[2] = {t.ne0, t.ne1};
    std::vector<float> zeros(t.ne0 * t.ne1, 0.0f);
    REQUIRE(w.add_tensor(t.name, TensorType::F32, shape, zeros.data(), zeros.size() * 4));
  }
  return w.to_bytes();
}
std::string fake_error(const Model& m, const std::vector<uint8_t>& bytes) {
  auto ad = Adapter::from_memory(bytes.data(), bytes.size(), m, "bad.gguf");
  return ad ? std::string() : ad.error().message();
}
}  // namespace

TEST_CASE("adapter: hostile files name the file and tensor" * doctest::test_suite("shared")) {
  const std::string m = shared_file("models/stories260K.gguf");
  if (m.empty()) return;
  auto model = Model::open(m);
  REQUIRE(model);
  const FakeTensor qa{"blk.0.attn_q.weight.lora_a", 64, 8}, qb{"blk.0.attn_q.weight.lora_b", 8, 64};
  CHECK(fake_error(*model, fake_adapter({qa, qb})).empty());
  auto has = [](const std::string& msg, const char* s) {
    return msg.find("bad.gguf") != std::string::npos && msg.find(s) != std::string::npos;
  };
  CHECK(has(fake_error(*model, fake_adapter({qa, qb}, "qwen3")), "architecture"));
  CHECK(has(fake_error(*model, fake_adapter({qa, {"blk.0.attn_q.weight.lora_b", 8, 65}})), "attn_q"));
  CHECK(has(fake_error(*model, fake_adapter({qa})), "lora_b is missing"));
  CHECK(has(fake_error(*model, fake_adapter({qb})), "lora_a is missing"));
  CHECK(has(fake_error(*model, fake_adapter({qa, qb, {"blk.0.attn_q.bias", 64, 1}})), "unknown tensor"));
  CHECK(has(fake_error(*model, fake_adapter({qa, qb}, "llama", false)), "alpha"));
  CHECK(has(fake_error(*model, fake_adapter({qa, qb}, "llama", true, NAN)), "alpha"));
  CHECK(has(fake_error(*model, fake_adapter({{"blk.5.attn_q.weight.lora_a", 64, 8},
                                             {"blk.5.attn_q.weight.lora_b", 8, 64}})), "layer 5"));
}
