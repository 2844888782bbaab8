// Tests of quantize_model against files llama.cpp's llama-quantize wrote from the same masters
// (../shared/models/quant/README.md and synthetic/README-syn.md say how each was made): the same
// tensors in the same order with the same types and bytes, and the same metadata.
#include <doctest/doctest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "tinyslm/quantize_model.hpp"

using namespace tinyslm;

namespace {

struct Case {
  const char* master;
  const char* target;
  bool pure;
  const char* expected;
};

// Compares our output with llama-quantize's: tensor order, types, shapes, bytes; metadata.
void compare_files(const GgufFile& ours, const GgufFile& theirs, const std::string& label) {
  INFO(label);
  REQUIRE(ours.tensors().size() == theirs.tensors().size());
  for (size_t i = 0; i < ours.tensors().size(); ++i) {
    const auto& a = ours.tensors()[i];
    const auto& b = theirs.tensors()[i];
    INFO("tensor " << i << " " << std::string(b.name));
    CHECK(a.name == b.name);
    CHECK(std::string(tensor_type_name(a.type)) == tensor_type_name(b.type));
    CHECK(a.ne == b.ne);
    if (a.type == b.type && a.n_bytes == b.n_bytes)
      CHECK_MESSAGE(std::memcmp(a.data, b.data, a.n_bytes) == 0, "tensor bytes differ");
  }
  for (const auto& kv : theirs.metadata()) {
    const GgufKv* mine = ours.find(kv.key);
    REQUIRE_MESSAGE(mine, "missing key " << std::string(kv.key));
    CHECK_MESSAGE(format_value(mine->value, 1u << 20) == format_value(kv.value, 1u << 20),
                  "key " << std::string(kv.key));
    CHECK(mine->value.type() == kv.value.type());
  }
  CHECK(ours.metadata().size() == theirs.metadata().size());
}

}  // namespace

TEST_CASE("quantize_model reproduces llama-quantize's files" * doctest::test_suite("shared")) {
  const Case cases[] = {
      {"models/synthetic/synth-llama3-tiny-F16.gguf", "Q8_0", false, "models/quant/synth-llama3-tiny-Q8_0.gguf"},
      {"models/synthetic/synth-llama3-tiny-F16.gguf", "Q4_0", false, "models/quant/synth-llama3-tiny-Q4_0.gguf"},
      {"models/synthetic/synth-llama3-tiny-F16.gguf", "Q4_K_M", false, "models/quant/synth-llama3-tiny-Q4_K_M.gguf"},
      {"models/synthetic/synth-llama3-tiny-F16.gguf", "BF16", true, "models/quant/synth-llama3-tiny-BF16-pure.gguf"},
      {"models/synthetic/synth-llama3-tiny-F16.gguf", "Q4_0", true, "models/quant/synth-llama3-tiny-Q4_0-pure.gguf"},
      {"models/synthetic/synth-llama3-tiny-F16.gguf", "Q4_1", true, "models/quant/synth-llama3-tiny-Q4_1-pure.gguf"},
      {"models/synthetic/synth-llama3-tiny-F16.gguf", "Q5_0", true, "models/quant/synth-llama3-tiny-Q5_0-pure.gguf"},
      {"models/synthetic/synth-llama3-tiny-F16.gguf", "Q5_1", true, "models/quant/synth-llama3-tiny-Q5_1-pure.gguf"},
      {"models/synthetic/synth-llama3-tiny-F16.gguf", "Q2_K", true, "models/quant/synth-llama3-tiny-Q2_K-pure.gguf"},
      {"models/synthetic/synth-llama3-tiny-F16.gguf", "Q3_K_M", true, "models/quant/synth-llama3-tiny-Q3_K-pure.gguf"},
      {"models/synthetic/synth-llama3-tiny-F16.gguf", "Q4_K_M", true, "models/quant/synth-llama3-tiny-Q4_K-pure.gguf"},
      {"models/synthetic/synth-llama3-tiny-F16.gguf", "Q5_K_M", true, "models/quant/synth-llama3-tiny-Q5_K-pure.gguf"},
      {"models/synthetic/synth-llama3-tiny-F16.gguf", "Q6_K", true, "models/quant/synth-llama3-tiny-Q6_K-pure.gguf"},
      {"models/synthetic/synth-llama3-tiny-F16.gguf", "IQ4_NL", true, "models/quant/synth-llama3-tiny-IQ4_NL-pure.gguf"},
      {"models/synthetic/synth-qwen3moe-tiny-F16.gguf", "Q8_0", false, "models/quant/synth-qwen3moe-tiny-Q8_0.gguf"},
      {"models/synthetic/synth-qwen3moe-tiny-F16.gguf", "Q4_0", false, "models/quant/synth-qwen3moe-tiny-Q4_0.gguf"},
      {"models/synthetic/synth-qwen3moe-tiny-F16.gguf", "Q4_K_M", false, "models/quant/synth-qwen3moe-tiny-Q4_K_M.gguf"},
      // stories260K's 172-wide ffn_down fits no block: llama-quantize was told f16 for it,
      // which is what our fallback picks by itself
      {"models/stories260K.gguf", "Q8_0", false, "models/quant/stories260K-Q8_0.gguf"},
      {"models/stories260K.gguf", "Q4_0", false, "models/quant/stories260K-Q4_0.gguf"},
      {"models/stories260K.gguf", "Q4_K_M", false, "models/quant/stories260K-Q4_K_M.gguf"},
      {"models/synthetic/syn-llama-F32.gguf", "F16", false, "models/synthetic/syn-llama-F16.gguf"},
      {"models/synthetic/syn-llama-F32.gguf", "BF16", false, "models/synthetic/syn-llama-BF16.gguf"},
      {"models/synthetic/syn-llama-F32.gguf", "Q8_0", false, "models/synthetic/syn-llama-Q8_0.gguf"},
      {"models/synthetic/syn-llama-F32.gguf", "Q4_0", false, "models/synthetic/syn-llama-Q4_0.gguf"},
      {"models/synthetic/syn-llama-F32.gguf", "Q4_1", false, "models/synthetic/syn-llama-Q4_1.gguf"},
      {"models/synthetic/syn-llama-F32.gguf", "Q5_0", false, "models/synthetic/syn-llama-Q5_0.gguf"},
      {"models/synthetic/syn-llama-F32.gguf", "Q5_1", false, "models/synthetic/syn-llama-Q5_1.gguf"},
      {"models/synthetic/syn-llama-F32.gguf", "Q2_K", false, "models/synthetic/syn-llama-Q2_K.gguf"},
      {"models/synthetic/syn-llama-F32.gguf", "Q3_K_M", false, "models/synthetic/syn-llama-Q3_K_M.gguf"},
      {"models/synthetic/syn-llama-F32.gguf", "Q4_K_M", false, "models/synthetic/syn-llama-Q4_K_M.gguf"},
      {"models/synthetic/syn-llama-F32.gguf", "Q5_K_M", false, "models/synthetic/syn-llama-Q5_K_M.gguf"},
      {"models/synthetic/syn-llama-F32.gguf", "Q6_K", false, "models/synthetic/syn-llama-Q6_K.gguf"},
      {"models/synthetic/syn-llama-F32.gguf", "IQ4_NL", false, "models/synthetic/syn-llama-IQ4_NL.gguf"},
  };
  const std::string out = std::filesystem::temp_directory_path().string() + "/tinyslm_quantize_test.gguf";
  int compared = 0;
  for (const Case& c : cases) {
    const std::string master = tinyslm_test::shared_file(c.master);
    const std::string expected = tinyslm_test::shared_file(c.expected);
    if (master.empty() || expected.empty()) continue;
    auto in = GgufFile::open(master);
    REQUIRE(in);
    QuantizeOptions opt;
    opt.target = c.target;
    opt.pure = c.pure;
    opt.threads = 2;
    auto st = quantize_model(*in, out, opt);
    REQUIRE_MESSAGE(st, st.error().message());
    auto ours = GgufFile::open(out);
    REQUIRE(ours);
    auto theirs = GgufFile::open(expected);
    REQUIRE(theirs);
    compare_files(*ours, *theirs, std::string(c.master) + " -> " + c.target + (c.pure ? " --pure" : ""));
    ++compared;
  }
  std::filesystem::remove(out);
  if (compared == 0) std::fprintf(stderr, "SKIPPED: no shared models\n");
}

TEST_CASE("quantize_model: bad targets and plans") {
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.block_count", 1);
  std::vector<float> m(64 * 4, 0.5f), norm(64, 1.0f), odd(40 * 2, 0.25f);
  const uint64_t s_m[] = {64, 4}, s_norm[] = {64}, s_odd[] = {40, 2};
  REQUIRE(w.add_tensor("blk.0.attn_q.weight", TensorType::F32, s_m, m.data(), m.size() * 4));
  REQUIRE(w.add_tensor("blk.0.attn_norm.weight", TensorType::F32, s_norm, norm.data(), norm.size() * 4));
  REQUIRE(w.add_tensor("blk.0.ffn_up.weight", TensorType::F32, s_odd, odd.data(), odd.size() * 4));
  const auto bytes = w.to_bytes();
  auto f = GgufFile::from_memory(bytes.data(), bytes.size());
  REQUIRE(f);

  QuantizeOptions opt;
  opt.target = "Q9_X";
  auto bad = plan_quantization(*f, opt);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().message().find("unknown quantization type 'Q9_X'") != std::string::npos);

  opt.target = "q4_0";  // names are case-insensitive
  auto plan = plan_quantization(*f, opt);
  REQUIRE(plan);
  REQUIRE(plan->size() == 3);
  for (const auto& p : *plan) {
    const std::string name(p.tensor->name);
    if (name == "blk.0.attn_norm.weight") {
      CHECK_FALSE(p.quantizable);
      CHECK(p.to == TensorType::F32);
    } else if (name == "blk.0.attn_q.weight") {
      CHECK(p.to == TensorType::Q4_0);
    } else {
      CHECK(p.fell_back);  // 40 values fit no 32-value block
      CHECK(p.to == TensorType::F16);
    }
  }
}
