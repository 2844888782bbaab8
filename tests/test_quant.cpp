// Tests of the quant layer: block formats, reference (de)quantization, fp16/bf16.
//
// The golden truth is llama.cpp: `llama-quantize` (no imatrix) wrote the quantized models under
// ../shared/models from F32/F16 masters that are there too, so quantizing a master tensor with
// tinyslm must give the file's bytes exactly.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "tinyslm/quant.hpp"

using namespace tinyslm;

namespace {

// splitmix64: a tiny seeded generator whose output does not depend on the standard library.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
  float normal() {  // Box-Muller
    const double u1 = uniform() + 1e-300, u2 = uniform();
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
};

std::vector<float> gaussian(size_t n, uint64_t seed, float sigma = 1.f) {
  Rng r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = sigma * r.normal();
  return v;
}

// Every type the quant layer claims, and the weight types llama-quantize writes.
const TensorType kAllTypes[] = {TensorType::F32,  TensorType::F16,  TensorType::BF16, TensorType::Q4_0,
                                TensorType::Q4_1, TensorType::Q5_0, TensorType::Q5_1, TensorType::Q8_0,
                                TensorType::Q8_1, TensorType::Q2_K, TensorType::Q3_K, TensorType::Q4_K,
                                TensorType::Q5_K, TensorType::Q6_K, TensorType::Q8_K, TensorType::IQ4_NL,
                                TensorType::IQ4_XS};
// Types the quant layer reads but does not write (no quantizer yet).
const TensorType kDequantizeOnlyTypes[] = {TensorType::IQ3_S};
bool dequantize_only(TensorType t) {
  for (TensorType d : kDequantizeOnlyTypes)
    if (d == t) return true;
  return false;
}

size_t row_bytes(TensorType t, int64_t n) {
  uint64_t b = 0;
  REQUIRE(tensor_row_bytes(t, static_cast<uint64_t>(n), &b));
  return static_cast<size_t>(b);
}

std::vector<uint8_t> quantize(TensorType t, const std::vector<float>& x) {
  std::vector<uint8_t> q(row_bytes(t, static_cast<int64_t>(x.size())));
  auto st = quantize_row(t, x.data(), q.data(), static_cast<int64_t>(x.size()));
  REQUIRE(st);
  return q;
}

std::vector<float> dequantize(TensorType t, const std::vector<uint8_t>& q, size_t n) {
  std::vector<float> y(n);
  auto st = dequantize_row(t, q.data(), y.data(), static_cast<int64_t>(n));
  REQUIRE(st);
  return y;
}

std::vector<float> round_trip(TensorType t, const std::vector<float>& x) {
  return dequantize(t, quantize(t, x), x.size());
}

double rms(const std::vector<float>& x) {
  double s = 0;
  for (float v : x) s += static_cast<double>(v) * v;
  return std::sqrt(s / static_cast<double>(x.size()));
}
double rms_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
  return std::sqrt(s / static_cast<double>(a.size()));
}

// ---------------------------------------------------------------------------------------
// Byte equality with llama-quantize

struct MatchCount {
  int tensors = 0, matched = 0;
  uint64_t blocks = 0, blocks_differing = 0;
  double err2 = 0, ref2 = 0;  // dequantized golden bytes vs the master
};

// Bits of resolution per value, for the error bound 2 / 2^bits of a round trip relative to
// the rms of Gaussian-like weights (see the Gaussian round-trip test); 0 = must be exact.
int resolution_bits(TensorType t) {
  switch (t) {
    case TensorType::F32: return 0;
    case TensorType::F16: return 11;
    case TensorType::BF16: return 8;
    case TensorType::Q2_K: return 2;
    case TensorType::Q3_K: return 3;
    case TensorType::Q5_0:
    case TensorType::Q5_1:
    case TensorType::Q5_K: return 5;
    case TensorType::Q6_K: return 6;
    case TensorType::Q8_0:
    case TensorType::Q8_1:
    case TensorType::Q8_K: return 8;
    default: return 4;
  }
}

// Quantizes every tensor of `quant_path` from the tensor of the same name in `master_path`
// (F32 or F16) and compares the bytes; returns false when a file is missing.
bool compare_with_master(const std::string& quant_rel, const std::string& master_rel,
                         std::map<std::string, MatchCount>& by_type, std::vector<std::string>& failures) {
  const std::string qpath = tinyslm_test::shared_file(quant_rel);
  const std::string mpath = tinyslm_test::shared_file(master_rel);
  if (qpath.empty() || mpath.empty()) return false;
  auto qf = GgufFile::open(qpath);
  auto mf = GgufFile::open(mpath);
  REQUIRE(qf);
  REQUIRE(mf);
  std::vector<float> row, deq;
  std::vector<uint8_t> out;
  for (const GgufTensorInfo& t : qf->tensors()) {
    const GgufTensorInfo* m = mf->find_tensor(t.name);
    REQUIRE(m != nullptr);
    REQUIRE(m->n_elements == t.n_elements);
    REQUIRE(m->ne == t.ne);
    REQUIRE(is_supported(t.type));
    const int64_t n = static_cast<int64_t>(t.ne[0]);
    const size_t in_bytes = row_bytes(m->type, n), out_bytes = row_bytes(t.type, n);
    const uint64_t block_bytes = tensor_type_info(t.type).block_bytes;
    row.resize(static_cast<size_t>(n));
    out.resize(out_bytes);
    MatchCount& c = by_type[tensor_type_name(t.type)];
    bool same = true;
    deq.resize(static_cast<size_t>(n));
    for (uint64_t r = 0; r < t.rows(); ++r) {
      REQUIRE(dequantize_row(m->type, m->data + r * in_bytes, row.data(), n));
      REQUIRE(quantize_row(t.type, row.data(), out.data(), n));
      const uint8_t* golden = t.data + r * out_bytes;
      // our dequantization of llama.cpp's bytes must land near the master values
      REQUIRE(dequantize_row(t.type, golden, deq.data(), n));
      for (size_t i = 0; i < row.size(); ++i) {
        c.err2 += (static_cast<double>(deq[i]) - row[i]) * (static_cast<double>(deq[i]) - row[i]);
        c.ref2 += static_cast<double>(row[i]) * row[i];
      }
      for (size_t b = 0; b < out_bytes; b += block_bytes) {
        ++c.blocks;
        if (std::memcmp(out.data() + b, golden + b, block_bytes) != 0) {
          ++c.blocks_differing;
          same = false;
        }
      }
    }
    ++c.tensors;
    if (same)
      ++c.matched;
    else
      failures.push_back(quant_rel + ": " + std::string(t.name) + " (" + tensor_type_name(t.type) + ")");
  }
  return true;
}

// Prints the per-type table and checks the dequantization error of the golden bytes.
void print_table(const char* title, const std::map<std::string, MatchCount>& by_type) {
  std::printf("%s\n  %-7s %9s %9s %18s %14s\n", title, "type", "tensors", "matched", "blocks differing",
              "deq rel rms");
  for (const auto& entry : by_type) {
    const std::string& name = entry.first;
    const MatchCount& c = entry.second;
    const double rel = c.ref2 > 0 ? std::sqrt(c.err2 / c.ref2) : 0.0;
    std::printf("  %-7s %9d %9d %9llu/%-8llu %14.3g\n", name.c_str(), c.tensors, c.matched,
                static_cast<unsigned long long>(c.blocks_differing), static_cast<unsigned long long>(c.blocks), rel);
    const int bits = resolution_bits(tensor_type_by_name(name)->type);
    if (bits == 0)
      CHECK_MESSAGE(c.err2 == 0, name);
    else
      CHECK_MESSAGE(rel < 2.0 / (1 << bits), name << " rel rms " << rel);
  }
}

}  // namespace

TEST_CASE("quant: syn-llama tensors quantized from the F32 master equal llama-quantize's bytes" * doctest::test_suite("shared")) {
  const char* kinds[] = {"F16",  "BF16",   "Q8_0",   "Q4_0",   "Q4_1", "Q5_0",  "Q5_1",
                         "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS"};
  std::map<std::string, MatchCount> by_type;
  std::vector<std::string> failures;
  for (const char* k : kinds) {
    if (!compare_with_master(std::string("models/synthetic/syn-llama-") + k + ".gguf",
                             "models/synthetic/syn-llama-F32.gguf", by_type, failures))
      return;
  }
  print_table("syn-llama-* from syn-llama-F32.gguf:", by_type);
  for (const auto& f : failures) std::printf("  differs: %s\n", f.c_str());
  CHECK(failures.empty());
  // every type of the brief was exercised
  for (const char* t : {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                        "IQ4_NL", "IQ4_XS", "F16", "BF16"})
    CHECK_MESSAGE(by_type.count(t) == 1, t);
}

TEST_CASE("quant: llama-quantize outputs from F16 and F32 masters under models/quant" * doctest::test_suite("shared")) {
  struct Set {
    const char* master;
    std::vector<std::string> files;
  };
  const std::string q = "models/quant/";
  const Set sets[] = {
      {"models/synthetic/synth-llama3-tiny-F16.gguf",
       {q + "synth-llama3-tiny-BF16-pure.gguf", q + "synth-llama3-tiny-IQ4_NL-pure.gguf",
        q + "synth-llama3-tiny-Q2_K-pure.gguf", q + "synth-llama3-tiny-Q3_K-pure.gguf",
        q + "synth-llama3-tiny-Q4_0-pure.gguf", q + "synth-llama3-tiny-Q4_1-pure.gguf",
        q + "synth-llama3-tiny-Q4_K-pure.gguf", q + "synth-llama3-tiny-Q5_0-pure.gguf",
        q + "synth-llama3-tiny-Q5_1-pure.gguf", q + "synth-llama3-tiny-Q5_K-pure.gguf",
        q + "synth-llama3-tiny-Q6_K-pure.gguf", q + "synth-llama3-tiny-Q4_0.gguf",
        q + "synth-llama3-tiny-Q4_K_M.gguf", q + "synth-llama3-tiny-Q8_0.gguf"}},
      {"models/synthetic/synth-qwen3moe-tiny-F16.gguf",
       {q + "synth-qwen3moe-tiny-Q4_0.gguf", q + "synth-qwen3moe-tiny-Q4_K_M.gguf",
        q + "synth-qwen3moe-tiny-Q8_0.gguf"}},
      {"models/stories260K.gguf",
       {q + "stories260K-Q4_0.gguf", q + "stories260K-Q4_K_M.gguf", q + "stories260K-Q8_0.gguf"}},
  };
  std::map<std::string, MatchCount> by_type;
  std::vector<std::string> failures;
  for (const Set& s : sets)
    for (const auto& f : s.files)
      if (!compare_with_master(f, s.master, by_type, failures)) return;
  print_table("models/quant/* from their F16 / F32 masters:", by_type);
  for (const auto& f : failures) std::printf("  differs: %s\n", f.c_str());
  CHECK(failures.empty());
}

TEST_CASE("quant: every tensor of every shared model dequantizes to finite values" * doctest::test_suite("shared")) {
  const std::string root = tinyslm_test::shared_file("models");
  if (root.empty()) return;
  int files = 0, tensors = 0, unsupported = 0;
  uint64_t values = 0;
  std::vector<float> row;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(root)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".gguf") continue;
    auto f = GgufFile::open(entry.path().string());
    if (!f) continue;  // the GGUF v1 file under legacy/ is refused by the reader, by design
    ++files;
    for (const GgufTensorInfo& t : f->tensors()) {
      if (!is_supported(t.type)) {
        ++unsupported;
        std::printf("  unsupported type %s: %s in %s\n", tensor_type_name(t.type), std::string(t.name).c_str(),
                    entry.path().filename().string().c_str());
        continue;
      }
      const int64_t n = static_cast<int64_t>(t.ne[0]);
      const size_t rb = row_bytes(t.type, n);
      row.resize(static_cast<size_t>(n));
      bool finite = true;
      for (uint64_t r = 0; r < t.rows(); ++r) {
        REQUIRE(dequantize_row(t.type, t.data + r * rb, row.data(), n));
        for (float v : row) finite = finite && std::isfinite(v);
      }
      values += t.n_elements;
      ++tensors;
      CHECK_MESSAGE(finite, entry.path().filename().string() << ": " << std::string(t.name));
    }
  }
  std::printf("dequantized %d tensors (%llu values) in %d files; %d tensors of unsupported types\n", tensors,
              static_cast<unsigned long long>(values), files, unsupported);
  CHECK(files > 0);
  CHECK(unsupported == 0);  // the shared models use only supported types
}

// ---------------------------------------------------------------------------------------
// Traits and bad input

TEST_CASE("quant: traits table agrees with the GGUF type table") {
  for (TensorType t : kAllTypes) {
    const QuantTraits* q = quant_traits(t);
    REQUIRE_MESSAGE(q != nullptr, tensor_type_name(t));
    CHECK(is_supported(t));
    const TensorTypeInfo& info = tensor_type_info(t);
    CHECK(q->type == t);
    CHECK(std::string(q->name) == info.name);
    CHECK(q->block_size == static_cast<int>(info.block_size));
    CHECK(q->block_bytes == static_cast<int>(info.block_bytes));
    CHECK(q->bits_per_weight == doctest::Approx(8.0 * info.block_bytes / info.block_size));
    CHECK(static_cast<bool>(q->dequantize));
    CHECK(static_cast<bool>(q->quantize));
  }
  CHECK(quant_traits(TensorType::Q4_K)->bits_per_weight == doctest::Approx(4.5));
  CHECK(quant_traits(TensorType::Q6_K)->bits_per_weight == doctest::Approx(6.5625));
  CHECK(quant_traits(TensorType::Q2_K)->bits_per_weight == doctest::Approx(2.625));
  for (TensorType t : {TensorType::IQ2_XXS, TensorType::IQ2_XS, TensorType::IQ3_XXS, TensorType::IQ1_S,
                       TensorType::IQ2_S, TensorType::IQ1_M,
                       TensorType::TQ1_0, TensorType::TQ2_0, TensorType::MXFP4, TensorType::I8,
                       TensorType::I32, TensorType::F64}) {
    CHECK(quant_traits(t) == nullptr);
    CHECK_FALSE(is_supported(t));
  }
}

TEST_CASE("quant: the block-type table has one row per GGUF id, filled exactly for the supported types") {
  int rows = 0;
  for (uint32_t id = 0; id < detail::kTensorTypeIdLimit; ++id) {
    const QuantTraits& q = detail::block_type_table[id];
    const auto t = static_cast<TensorType>(id);
    if (!q.dequantize) {
      CHECK(quant_traits(t) == nullptr);
      continue;
    }
    ++rows;
    CHECK(static_cast<uint32_t>(q.type) == id);
    CHECK(quant_traits(t) == &q);
    CHECK(static_cast<bool>(q.quantize) == !dequantize_only(t));
    // The canonical-decode shape: 16-value groups exactly for Q2_K / Q3_K / Q6_K; a min for
    // the types whose blocks carry one.
    CHECK((q.group == 16) == (t == TensorType::Q2_K || t == TensorType::Q3_K || t == TensorType::Q6_K));
    CHECK(q.has_min == (t == TensorType::Q4_1 || t == TensorType::Q5_1 || t == TensorType::Q2_K ||
                        t == TensorType::Q4_K || t == TensorType::Q5_K));
    CHECK(detail::act_format_for(t) == q.act);
  }
  CHECK(rows == static_cast<int>(std::size(kAllTypes) + std::size(kDequantizeOnlyTypes)));
  CHECK_FALSE(static_cast<bool>(detail::block_type(static_cast<TensorType>(77)).dequantize));
}

TEST_CASE("quant: bad input gives an error, not a crash") {
  std::vector<float> x(512, 1.f);
  std::vector<uint8_t> buf(4096);
  SUBCASE("unsupported types") {
    for (TensorType t : {TensorType::IQ2_XXS, TensorType::IQ2_S, TensorType::TQ2_0, TensorType::I32}) {
      auto q = quantize_row(t, x.data(), buf.data(), 256);
      REQUIRE_FALSE(q);
      CHECK(q.error().code() == Errc::unsupported);
      auto d = dequantize_row(t, buf.data(), x.data(), 256);
      REQUIRE_FALSE(d);
      CHECK(d.error().code() == Errc::unsupported);
    }
    auto bogus = quantize_row(static_cast<TensorType>(77), x.data(), buf.data(), 32);
    REQUIRE_FALSE(bogus);
    CHECK(bogus.error().code() == Errc::unsupported);
  }
  SUBCASE("n not a multiple of the block size, or negative") {
    for (TensorType t : kAllTypes) {
      const int bs = quant_traits(t)->block_size;
      for (int64_t n : {int64_t(bs) + 1, int64_t(bs) / 2 + (bs == 1 ? 0 : 1), int64_t(-bs)}) {
        if (bs == 1 && n >= 0) continue;  // every n >= 0 is whole for F32/F16/BF16
        auto q = quantize_row(t, x.data(), buf.data(), n);
        REQUIRE_FALSE_MESSAGE(q, std::string(tensor_type_name(t)) << " n=" << n);
        CHECK(q.error().code() == Errc::invalid_argument);
        auto d = dequantize_row(t, buf.data(), x.data(), n);
        REQUIRE_FALSE(d);
        CHECK(d.error().code() == Errc::invalid_argument);
      }
    }
    // a 32-value row is a whole Q4_0 block but not a whole K super-block
    CHECK(quantize_row(TensorType::Q4_0, x.data(), buf.data(), 32));
    CHECK_FALSE(quantize_row(TensorType::Q4_K, x.data(), buf.data(), 32));
    CHECK_FALSE(quantize_row(TensorType::Q8_K, x.data(), buf.data(), 128));
  }
  SUBCASE("empty rows are fine") {
    for (TensorType t : kAllTypes) {
      CHECK(quantize_row(t, x.data(), buf.data(), 0));
      CHECK(dequantize_row(t, buf.data(), x.data(), 0));
    }
  }
}

// ---------------------------------------------------------------------------------------
// Properties of the round trip

TEST_CASE("quant: llama.cpp test-quantize-fns error thresholds on its cosine data") {
  // llama.cpp's own unit test: x_i = 0.1 + 2 cos(i), 4096 values, error sqrt(sum d^2) / n,
  // thresholds 0.002 (0.0075 for 2-bit, 0.0040 for 3-bit types).
  const size_t n = 32 * 128;
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = 0.1f + 2 * std::cos(static_cast<float>(i));
  for (TensorType t : kAllTypes) {
    const auto y = round_trip(t, x);
    double s = 0;
    for (size_t i = 0; i < n; ++i) s += (static_cast<double>(x[i]) - y[i]) * (static_cast<double>(x[i]) - y[i]);
    const double err = std::sqrt(s) / static_cast<double>(n);
    const double limit = t == TensorType::Q2_K ? 0.0075 : t == TensorType::Q3_K ? 0.0040 : 0.002;
    CHECK_MESSAGE(err < limit, std::string(tensor_type_name(t)) << " error " << err);
  }
}

TEST_CASE("quant: round-trip error on Gaussian data stays within the format's resolution") {
  // A uniform quantizer with 2^b levels over about +-2.5 sigma has an rms error near
  // 1.44 sigma / 2^b; allow 2 sigma / 2^b. b is the bits per quant (not counting scales).
  struct Case {
    TensorType t;
    int bits;
  };
  const Case cases[] = {{TensorType::Q4_0, 4}, {TensorType::Q4_1, 4}, {TensorType::Q5_0, 5},
                        {TensorType::Q5_1, 5}, {TensorType::Q8_0, 8}, {TensorType::Q8_1, 8},
                        {TensorType::Q2_K, 2}, {TensorType::Q3_K, 3}, {TensorType::Q4_K, 4},
                        {TensorType::Q5_K, 5}, {TensorType::Q6_K, 6}, {TensorType::Q8_K, 8},
                        {TensorType::IQ4_NL, 4}, {TensorType::IQ4_XS, 4}};
  for (float sigma : {1.f, 1e-3f, 1e3f}) {
    const auto x = gaussian(64 * 256, 1234, sigma);
    for (const Case& c : cases) {
      const double rel = rms_diff(x, round_trip(c.t, x)) / rms(x);
      CHECK_MESSAGE(rel < 2.0 / (1 << c.bits),
                    std::string(tensor_type_name(c.t)) << " sigma " << sigma << " rel " << rel);
    }
    // float formats: relative error of one rounding
    for (TensorType t : {TensorType::F16, TensorType::BF16, TensorType::F32}) {
      const auto y = round_trip(t, x);
      const double ulp = t == TensorType::F16 ? 0x1p-11 : t == TensorType::BF16 ? 0x1p-8 : 0.0;
      for (size_t i = 0; i < x.size(); ++i)
        if (std::fabs(x[i]) > 1e-4f)  // keep out of the fp16 subnormal range
          REQUIRE(std::fabs(y[i] - x[i]) <= ulp * std::fabs(x[i]));
    }
  }
}

TEST_CASE("quant: legacy types obey their per-element error bound") {
  // With the block scale d rounded to fp16 (relative error <= 2^-11), a quant q carries an
  // extra |q| * d * 2^-11. Q4_0/Q5_0 may clamp the top level, so their bound is d, not d/2.
  const auto x = gaussian(128 * 32, 99);
  const double h = 0x1p-11;
  for (TensorType t : {TensorType::Q4_0, TensorType::Q5_0, TensorType::Q8_0, TensorType::Q8_1,
                       TensorType::Q4_1, TensorType::Q5_1, TensorType::Q8_K}) {
    const int bs = quant_traits(t)->block_size;
    const auto y = round_trip(t, x);
    for (size_t b = 0; b < x.size(); b += static_cast<size_t>(bs)) {
      double amax = 0, lo = 1e30, hi = -1e30;
      for (int j = 0; j < bs; ++j) {
        amax = std::max(amax, std::fabs(static_cast<double>(x[b + j])));
        lo = std::min(lo, static_cast<double>(x[b + j]));
        hi = std::max(hi, static_cast<double>(x[b + j]));
      }
      double bound = 0;
      switch (t) {
        case TensorType::Q4_0: bound = amax / 8 * (1 + 8 * h); break;
        case TensorType::Q5_0: bound = amax / 16 * (1 + 16 * h); break;
        case TensorType::Q8_0:
        case TensorType::Q8_1: bound = amax / 127 * (0.5 + 127 * h); break;
        case TensorType::Q4_1: bound = (hi - lo) / 15 * (0.5 + 15 * h) + std::fabs(lo) * h; break;
        case TensorType::Q5_1: bound = (hi - lo) / 31 * (0.5 + 31 * h) + std::fabs(lo) * h; break;
        case TensorType::Q8_K: bound = amax / 127 * 0.5 * (1 + 1e-5); break;
        default: break;
      }
      for (int j = 0; j < bs; ++j)
        REQUIRE_MESSAGE(std::fabs(static_cast<double>(y[b + j]) - x[b + j]) <= bound * (1 + 1e-6),
                        std::string(tensor_type_name(t)) << " block " << b / bs);
    }
  }
}

namespace {
// Largest |value| / d a format can hold: (top sub-scale) x (top quant magnitude).
double largest_multiplier(TensorType t) {
  switch (t) {
    case TensorType::Q4_0: return 8;
    case TensorType::Q4_1: return 15;
    case TensorType::Q5_0: return 16;
    case TensorType::Q5_1: return 31;
    case TensorType::Q8_0:
    case TensorType::Q8_1:
    case TensorType::IQ4_NL: return 127;
    case TensorType::IQ4_XS: return 32 * 127;
    case TensorType::Q2_K: return 15 * 3;
    case TensorType::Q3_K: return 32 * 4;
    case TensorType::Q4_K: return 63 * 15;
    case TensorType::Q5_K: return 63 * 31;
    case TensorType::Q6_K: return 128 * 32;
    default: return 0;  // float scales or no scale
  }
}
}  // namespace

TEST_CASE("quant: zero and constant rows") {
  for (TensorType t : kAllTypes) {
    const int64_t n = 512;
    const std::vector<float> zeros(n, 0.f);
    for (float v : round_trip(t, zeros)) REQUIRE_MESSAGE(v == 0.f, tensor_type_name(t));
    // the all-zero block of the scaled types has a zero scale
    if (t != TensorType::F32 && t != TensorType::F16 && t != TensorType::BF16) {
      const auto q = quantize(t, zeros);
      CHECK(std::isfinite(dequantize(t, q, n)[0]));
    }
    for (float c : {1.f, -0.75f, 3e-3f, 250.f}) {
      const std::vector<float> x(n, c);
      const auto y = round_trip(t, x);
      // a constant is representable up to the rounding of one scale to fp16 (or bf16). When
      // the scale falls in fp16's subnormal range its error is absolute (up to 2^-24), times
      // the largest scale-times-quant product M of the format.
      const double rel = t == TensorType::BF16 ? 0x1p-8 : 0x1p-10;
      const double tol = rel * std::fabs(c) + largest_multiplier(t) * 0x1p-24;
      for (float v : y)
        REQUIRE_MESSAGE(std::fabs(v - c) <= tol, std::string(tensor_type_name(t)) << " c=" << c << " got " << v);
    }
  }
}

TEST_CASE("quant: extreme magnitudes stay finite") {
  // 1e-8 puts the scales deep in fp16's subnormal range; 3e4 near its top (65504).
  for (float sigma : {1e-8f, 3e4f / 4}) {
    const auto x = gaussian(16 * 256, 7, sigma);
    double amax = 0;
    for (float v : x) amax = std::max(amax, std::fabs(static_cast<double>(v)));
    for (TensorType t : kAllTypes) {
      if (t == TensorType::F16 && sigma > 1) continue;  // values beyond 65504 overflow F16 itself
      const auto y = round_trip(t, x);
      for (float v : y) {
        REQUIRE_MESSAGE(std::isfinite(v), std::string(tensor_type_name(t)) << " sigma " << sigma);
        REQUIRE_MESSAGE(std::fabs(v) <= 2 * amax, std::string(tensor_type_name(t)) << " sigma " << sigma);
      }
    }
  }
  // one huge value among small ones: everything else rounds to zero, the huge one survives
  std::vector<float> x(256, 1e-3f);
  x[5] = 1e4f;
  for (TensorType t : kAllTypes) {
    const auto y = round_trip(t, x);
    CHECK_MESSAGE(std::fabs(y[5] - 1e4f) <= 1e4f * 0.02f, std::string(tensor_type_name(t)) << " got " << y[5]);
  }
}

TEST_CASE("quant: nan and inf inputs are handled without undefined behaviour") {
  // The formats cannot represent them (llama.cpp's quantizers give garbage too); what matters
  // is that quantizing never crashes or trips the sanitizers, and finite blocks stay finite.
  auto x = gaussian(2 * 256, 3);
  x[3] = std::nanf("");
  x[300] = INFINITY;
  x[301] = -INFINITY;
  for (TensorType t : kAllTypes) {
    const auto y = round_trip(t, x);
    const int bs = quant_traits(t)->block_size;
    // a block without nan/inf inputs decodes to finite values
    for (size_t i = 0; i < x.size(); ++i) {
      const size_t b0 = i / static_cast<size_t>(bs) * static_cast<size_t>(bs);
      bool clean = true;
      for (size_t j = b0; j < b0 + static_cast<size_t>(bs); ++j) clean = clean && std::isfinite(x[j]);
      if (clean) REQUIRE_MESSAGE(std::isfinite(y[i]), std::string(tensor_type_name(t)) << " i=" << i);
    }
  }
}

TEST_CASE("quant: activation blocks carry consistent side data") {
  const auto x = gaussian(8 * 256, 42);
  std::vector<BlockQ8_1> q81(x.size() / 32);
  quantize_blocks(x.data(), q81.data(), static_cast<int64_t>(q81.size()));
  for (const auto& b : q81) {
    int sum = 0;
    for (int8_t v : b.qs) sum += v;
    // s = fp16(sum * d) with the unrounded d: within one fp16 rounding of d and one of s
    const double expect = sum * static_cast<double>(fp16_to_fp32(b.d));
    CHECK(std::fabs(fp16_to_fp32(b.s) - expect) <= std::fabs(expect) * 0x1p-10 + 1e-7);
  }
  std::vector<BlockQ8_K> q8k(x.size() / 256);
  quantize_blocks(x.data(), q8k.data(), static_cast<int64_t>(q8k.size()));
  for (const auto& b : q8k) {
    int max_abs = 0;
    for (int g = 0; g < 16; ++g) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) {
        sum += b.qs[16 * g + l];
        max_abs = std::max(max_abs, std::abs(static_cast<int>(b.qs[16 * g + l])));
      }
      CHECK(b.bsums[g] == sum);
    }
    CHECK(max_abs == 127);  // the largest magnitude maps to +-127
  }
  // typed and type-erased paths agree
  std::vector<float> a(x.size()), b(x.size());
  dequantize_blocks(q8k.data(), a.data(), static_cast<int64_t>(q8k.size()));
  REQUIRE(dequantize_row(TensorType::Q8_K, q8k.data(), b.data(), static_cast<int64_t>(x.size())));
  CHECK(a == b);
}

TEST_CASE("quant: IQ4_NL levels are sorted and the nearest-level search is exact") {
  for (int i = 1; i < 16; ++i) REQUIRE(kIq4nlValues[i - 1] < kIq4nlValues[i]);
  Rng r(5);
  for (int k = 0; k < 20000; ++k) {
    const float v = static_cast<float>((r.uniform() * 2 - 1) * 160);
    int best = 0;
    for (int i = 1; i < 16; ++i)  // brute force; ties go to the upper level
      if (std::fabs(v - kIq4nlValues[i]) <= std::fabs(v - kIq4nlValues[best])) best = i;
    REQUIRE(detail::nearest_level_index(kIq4nlValues, 16, v) == best);
  }
}

// ---------------------------------------------------------------------------------------
// fp16 / bf16, exhaustively

TEST_CASE("fp16: all 65536 values decode exactly and round-trip") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    const float f = fp16_to_fp32(bits);
    const int sign = (h >> 15) ? -1 : 1;
    const int e = (h >> 10) & 31, m = h & 1023;
    if (e == 31) {
      if (m == 0)
        REQUIRE((std::isinf(f) && (f < 0) == (sign < 0)));
      else
        REQUIRE(std::isnan(f));
      continue;
    }
    const double expect = sign * (e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25));
    REQUIRE(static_cast<double>(f) == expect);
    REQUIRE(std::signbit(f) == (sign < 0));
    REQUIRE(fp32_to_fp16(f) == bits);
  }
  // nan stays nan
  CHECK(std::isnan(fp16_to_fp32(fp32_to_fp16(std::nanf("")))));
}

TEST_CASE("fp16: float -> half rounds to nearest, ties to even, at every boundary") {
  for (uint32_t h = 0; h < 0x7c00; ++h) {  // each finite positive half and the next one up
    const double lo = fp16_to_fp32(static_cast<uint16_t>(h));
    const double hi = h + 1 == 0x7c00 ? 65536.0 : fp16_to_fp32(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((lo + hi) / 2);  // exact: one more bit than a half
    REQUIRE(static_cast<double>(mid) == (lo + hi) / 2);
    const uint16_t even = static_cast<uint16_t>((h & 1) ? h + 1 : h);
    REQUIRE(fp32_to_fp16(mid) == even);
    REQUIRE(fp32_to_fp16(std::nextafter(mid, 0.f)) == h);
    REQUIRE(fp32_to_fp16(std::nextafter(mid, 1e30f)) == h + 1);  // 0x7c00 = inf past the top
    REQUIRE(fp32_to_fp16(-mid) == (even | 0x8000));
  }
  CHECK(fp32_to_fp16(1e10f) == 0x7c00);
  CHECK(fp32_to_fp16(-1e10f) == 0xfc00);
  CHECK(fp32_to_fp16(1e-10f) == 0);
}

TEST_CASE("bf16: all 65536 values round-trip and float -> bf16 rounds to nearest even") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_fp32(static_cast<uint16_t>(h));
    uint32_t fb;
    std::memcpy(&fb, &f, 4);
    REQUIRE(fb == h << 16);
    if (std::isnan(f))
      REQUIRE(std::isnan(bf16_to_fp32(fp32_to_bf16(f))));
    else
      REQUIRE(fp32_to_bf16(f) == h);
  }
  for (uint32_t h = 0; h < 0x7f7f; ++h) {
    const uint32_t mid_bits = (h << 16) | 0x8000u;  // exactly between h and h + 1
    float mid;
    std::memcpy(&mid, &mid_bits, 4);
    const uint16_t even = static_cast<uint16_t>((h & 1) ? h + 1 : h);
    REQUIRE(fp32_to_bf16(mid) == even);
    REQUIRE(fp32_to_bf16(std::nextafter(mid, 0.f)) == h);
    REQUIRE(fp32_to_bf16(std::nextafter(mid, INFINITY)) == h + 1);
  }
}
