// Kernels layer: every SIMD path against the scalar reference, for every weight type, on
// random data (fixed seeds) and odd shapes; thread-count independence; bad inputs.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <utility>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "tinyslm/kernels.hpp"
#include "tinyslm/ops.hpp"
#include "tinyslm/threads.hpp"

using namespace tinyslm;

namespace {

// The weight types of the block-type table that matmul takes (integer or float dot).
std::vector<TensorType> table_types(bool integer) {
  std::vector<TensorType> v;
  for (const auto& k : detail::block_kernels_table)
    if (k.rows[0] && k.format->integer_dot == integer) v.push_back(k.format->type);
  return v;
}
const std::vector<TensorType> kIntTypes = table_types(true);
const std::vector<TensorType> kFloatTypes = table_types(false);

std::vector<SimdLevel> available_levels() {
  std::vector<SimdLevel> v;
  for (SimdLevel l : {SimdLevel::scalar, SimdLevel::avx2, SimdLevel::avx512, SimdLevel::neon, SimdLevel::highway, SimdLevel::avxvnni})
    if (simd_level_supported(l)) v.push_back(l);
  return v;
}

// Byte offsets of the fp16 scale fields of a block (random bytes there could be inf/nan).
std::vector<int> half_fields(TensorType t) {
  switch (t) {
    case TensorType::Q4_0: case TensorType::Q5_0: case TensorType::Q8_0: case TensorType::IQ4_NL:
    case TensorType::IQ4_XS: case TensorType::IQ3_S: return {0};
    case TensorType::Q4_1: case TensorType::Q5_1: case TensorType::Q4_K: case TensorType::Q5_K: return {0, 2};
    case TensorType::Q2_K: return {80, 82};
    case TensorType::Q3_K: return {108};
    case TensorType::Q6_K: return {208};
    default: return {};
  }
}

// A random weight matrix: random bytes (every bit pattern is a valid block) with sane
// fp16 scales; float types get values in [-1, 1].
std::vector<uint8_t> random_matrix(TensorType t, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  const auto& info = tensor_type_info(t);
  const int64_t nb = rows * cols / info.block_size;
  std::vector<uint8_t> m(static_cast<size_t>(nb * info.block_bytes));
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  if (t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16) {
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
  for (auto& b : m) b = static_cast<uint8_t>(rng());
  const auto fields = half_fields(t);
  for (int64_t b = 0; b < nb; ++b)
    for (int off : fields) {
      const uint16_t h = fp32_to_fp16(u(rng) * 0.05f);
      std::memcpy(&m[b * info.block_bytes + off], &h, 2);
    }
  return m;
}

std::vector<float> random_acts(int64_t n, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(n * cols));
  for (auto& v : x) v = g(rng);
  // a few outliers and an all-zero block, as real activations have
  if (!x.empty()) x[0] = 25.f;
  if (cols >= 64) std::fill(x.begin() + 32, x.begin() + 64, 0.f);
  return x;
}

std::vector<float> run(SimdLevel level, TensorType t, const std::vector<uint8_t>& w, int64_t rows, int64_t cols,
                       const std::vector<float>& x, int64_t n, int threads = 1, int64_t ldy_extra = 0) {
  REQUIRE(set_simd_level(level));
  ThreadPool pool(threads);
  MatmulScratch scratch;
  const int64_t ldy = rows + ldy_extra;
  std::vector<float> y(static_cast<size_t>(n * ldy), -12345.f);
  auto st = matmul({t, w.data(), rows, cols}, x.data(), n, y.data(), ldy, scratch, pool.parallel());
  reset_simd_level();
  REQUIRE(st);
  return y;
}

// sum over the row of |each term| in the canonical formula: the scale of the rounding error.
double magnitude_bound(TensorType t, const uint8_t* row, int64_t k, const float* x) {
  if (t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16) {
    double s = 0;
    for (int64_t i = 0; i < k; ++i) s += std::fabs(detail::load_weight_float(t, row, i) * x[i]);
    return s;
  }
  // Quantize the activation as the kernels do, then sum |terms|.
  const detail::ActFormat fmt = detail::act_format_for(t);
  std::vector<int8_t> qs(k);
  std::vector<float> da16(k / 16), m32(k / 32), m16(k / 16);
  std::vector<int32_t> sum16(k / 16), corr4(k / 4);
  detail::quantize_activation_row(fmt, x, k, qs.data(), da16.data(), m32.data(), m16.data(), sum16.data(),
                                  corr4.data(), nullptr);
  const auto tr = detail::weight_traits(t);
  int8_t w[256];
  float sw[16], mw[16];
  double s = 0;
  for (int64_t b = 0; b < k / tr.block_values; ++b) {
    detail::decode_block_scalar(t, row + b * tr.block_bytes, w, sw, mw);
    for (int g = 0; g < tr.block_values / tr.group; ++g) {
      const int64_t base = b * tr.block_values + g * tr.group;
      double is = 0;
      for (int i = 0; i < tr.group; ++i) is += std::fabs(double(w[g * tr.group + i]) * qs[base + i]);
      s += std::fabs(sw[g] * da16[base / 16]) * is;
      if (tr.has_min) s += std::fabs(mw[g] * (tr.group == 32 ? m32[base / 32] : m16[base / 16]));
    }
  }
  return s;
}

void compare_to_scalar(TensorType t, int64_t rows, int64_t cols, int64_t n, uint32_t seed) {
  const auto w = random_matrix(t, rows, cols, seed);
  const auto x = random_acts(n, cols, seed + 1);
  const auto ref = run(SimdLevel::scalar, t, w, rows, cols, x, n, 1, 3);
  const int64_t row_bytes = cols / tensor_type_info(t).block_size * tensor_type_info(t).block_bytes;
  for (SimdLevel l : available_levels()) {
    if (l == SimdLevel::scalar) continue;
    const auto y = run(l, t, w, rows, cols, x, n, 1, 3);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t r = 0; r < rows + 3; ++r) {
        const float got = y[i * (rows + 3) + r], want = ref[i * (rows + 3) + r];
        if (r >= rows) {  // padding between rows of y is never written
          REQUIRE(got == -12345.f);
          continue;
        }
        // Integer sums are exact on every path; only the order of float additions differs:
        // bound = 4 * cols * 2^-24 * sum |terms| (+ a tiny absolute floor).
        const double bound =
            4.0 * double(cols) * 5.96e-8 * magnitude_bound(t, w.data() + r * row_bytes, cols, x.data() + i * cols) + 1e-6;
        if (!(std::fabs(double(got) - want) <= bound)) {
          FAIL_CHECK(std::string(tensor_type_name(t)) << " path " << std::string(simd_level_name(l)) << " rows " << rows << " cols " << cols
                                         << " n " << n << " at (" << i << "," << r << "): " << got << " vs " << want
                                         << " bound " << bound);
          return;
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("every SIMD path equals the scalar reference for every type and odd shape") {
  std::string names;
  for (SimdLevel l : available_levels()) names += std::string(" ") + simd_level_name(l);
  MESSAGE("paths compared on this CPU:" << names);
  uint32_t seed = 100;
  for (TensorType t : kIntTypes) {
    const int64_t bs = tensor_type_info(t).block_size;
    const int64_t act = detail::act_format_for(t) == detail::ActFormat::q8_k ? 256 : 32;
    const int64_t kmin = bs > act ? bs : act;
    for (int64_t cols : {kmin, 2 * kmin, 3 * kmin, 7 * kmin, (kmin == 32 ? 17 : 3) * kmin})
      for (int64_t rows : {int64_t(1), int64_t(5), int64_t(16), int64_t(37)})
        for (int64_t n : {int64_t(1), int64_t(2), int64_t(3), int64_t(7), int64_t(17)}) {
          if (rows * cols * n > 3000000) continue;
          compare_to_scalar(t, rows, cols, n, ++seed);
        }
  }
  for (TensorType t : kFloatTypes)
    for (int64_t cols : {int64_t(1), int64_t(7), int64_t(16), int64_t(33), int64_t(100), int64_t(576)})
      for (int64_t rows : {int64_t(1), int64_t(6), int64_t(17)})
        for (int64_t n : {int64_t(1), int64_t(2), int64_t(5), int64_t(9)}) compare_to_scalar(t, rows, cols, n, ++seed);
}

TEST_CASE("larger shapes (chunked k, many tokens) agree with the scalar reference") {
  uint32_t seed = 900;
  for (TensorType t : {TensorType::Q4_0, TensorType::Q8_0, TensorType::Q4_K, TensorType::Q6_K, TensorType::Q5_0,
                       TensorType::Q5_K, TensorType::Q4_1, TensorType::Q2_K, TensorType::F16})
    compare_to_scalar(t, 40, 1536, 21, ++seed);
}

// The one-token kernels keep partial sums in 16-bit lanes (vpdpwssd) where the format
// allows it; saturated codes, extreme scales and full-scale activations reach those bounds.
TEST_CASE("extreme codes and scales stay exact; rows longer than the one-token fast paths") {
  for (TensorType t : {TensorType::Q4_K, TensorType::Q6_K, TensorType::Q4_0, TensorType::Q5_0, TensorType::Q8_0}) {
    const auto& info = tensor_type_info(t);
    for (int64_t cols : {int64_t(512), int64_t(16384 + 512)}) {
      const int64_t rows = 3;
      std::vector<uint8_t> w(static_cast<size_t>(rows * cols / info.block_size * info.block_bytes), 0xFF);
      const auto fields = half_fields(t);
      for (size_t b = 0; b < w.size() / info.block_bytes; ++b)
        for (int off : fields) {
          const uint16_t h = fp32_to_fp16(0.01f);
          std::memcpy(&w[b * info.block_bytes + off], &h, 2);
        }
      if (t == TensorType::Q6_K)  // scales of the first row: -128, of the second: 127
        for (size_t b = 0; b < w.size() / info.block_bytes; ++b)
          std::memset(&w[b * info.block_bytes + 192], b < w.size() / info.block_bytes / 3 ? 0x80 : 0x7F, 16);
      for (float sign : {1.f, -1.f}) {
        std::vector<float> x(static_cast<size_t>(cols), sign);  // every value quantizes to +-127
        const auto ref = run(SimdLevel::scalar, t, w, rows, cols, x, 1);
        for (SimdLevel l : available_levels()) {
          const auto y = run(l, t, w, rows, cols, x, 1);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t rb = cols / info.block_size * info.block_bytes;
            const double bound = 4.0 * double(cols) * 5.96e-8 * magnitude_bound(t, w.data() + r * rb, cols, x.data()) + 1e-6;
            CHECK_MESSAGE(std::fabs(double(y[r]) - ref[r]) <= bound,
                          tensor_type_name(t) << " " << simd_level_name(l) << " cols " << cols << " row " << r << ": "
                                              << y[r] << " vs " << ref[r]);
          }
        }
      }
    }
  }
}

TEST_CASE("matmul gives identical bits for 1, 2 and 3 threads") {
  uint32_t seed = 500;
  for (TensorType t : {TensorType::Q4_0, TensorType::Q8_0, TensorType::Q4_K, TensorType::Q6_K, TensorType::Q5_0,
                       TensorType::Q3_K, TensorType::IQ4_NL, TensorType::F16, TensorType::BF16, TensorType::F32}) {
    const int64_t rows = 83, cols = 512;
    const auto w = random_matrix(t, rows, cols, ++seed);
    for (int64_t n : {int64_t(1), int64_t(9)}) {
      const auto x = random_acts(n, cols, seed + 7);
      for (SimdLevel l : available_levels()) {
        const auto y1 = run(l, t, w, rows, cols, x, n, 1);
        const auto y2 = run(l, t, w, rows, cols, x, n, 2);
        const auto y3 = run(l, t, w, rows, cols, x, n, 3);
        CHECK(std::memcmp(y1.data(), y2.data(), y1.size() * 4) == 0);
        CHECK(std::memcmp(y1.data(), y3.data(), y1.size() * 4) == 0);
      }
    }
  }
}

#if defined(TINYSLM_KERNELS_X86)
namespace {
using DecodeChunkFn = void (*)(const uint8_t*, int64_t, int64_t, int8_t*, float*, float*);
template <TensorType... Ts>
constexpr std::array<std::pair<TensorType, DecodeChunkFn>, sizeof...(Ts)> decoders() {
  return {std::pair<TensorType, DecodeChunkFn>{Ts, &detail::x86::decode_chunk<Ts>}...};
}
DecodeChunkFn avx2_decoder(TensorType t) {
  static constexpr auto table =
      decoders<TensorType::Q4_0, TensorType::Q4_1, TensorType::Q5_0, TensorType::Q5_1, TensorType::Q8_0,
               TensorType::IQ4_NL, TensorType::Q2_K, TensorType::Q3_K, TensorType::Q4_K, TensorType::Q5_K,
               TensorType::Q6_K, TensorType::IQ4_XS, TensorType::IQ3_S>();
  for (const auto& e : table)
    if (e.first == t) return e.second;
  return nullptr;
}
}  // namespace
#endif

TEST_CASE("the SIMD canonical decode is byte-exact with the scalar decode") {
#if defined(TINYSLM_KERNELS_X86)
  if (!simd_level_supported(SimdLevel::avx2)) return;
  for (TensorType t : kIntTypes) {
    const auto tr = detail::weight_traits(t);
    const int64_t cols = 512;
    const auto w = random_matrix(t, 1, cols, 77);
    alignas(64) int8_t got[512];
    float sw16[40], mw[40];
    const DecodeChunkFn decode = avx2_decoder(t);
    REQUIRE(static_cast<bool>(decode));
    decode(w.data(), 0, cols, got, sw16, mw);
    int8_t want[256];
    float sw[16], m[16];
    for (int64_t b = 0; b < cols / tr.block_values; ++b) {
      detail::decode_block_scalar(t, w.data() + b * tr.block_bytes, want, sw, m);
      CHECK(std::memcmp(want, got + b * tr.block_values, static_cast<size_t>(tr.block_values)) == 0);
      for (int g = 0; g < tr.block_values / 16; ++g)
        CHECK(sw16[b * (tr.block_values / 16) + g] == sw[tr.group == 16 ? g : g / 2]);
      if (tr.has_min)
        for (int g = 0; g < tr.block_values / tr.group; ++g)
          CHECK(mw[b * (tr.block_values / tr.group) + g] == m[g]);
    }
  }
#endif
}

TEST_CASE("forcing a path: scalar always works, unsupported paths are refused") {
  CHECK(set_simd_level(SimdLevel::scalar));
  CHECK(active_simd_level() == SimdLevel::scalar);
  reset_simd_level();
  for (SimdLevel l : {SimdLevel::avx2, SimdLevel::avx512, SimdLevel::neon, SimdLevel::highway, SimdLevel::avxvnni})
    if (!simd_level_supported(l)) {
      auto st = set_simd_level(l);
      CHECK(!st);
      CHECK(st.error().code() == Errc::unsupported);
    }
  CHECK(simd_level_supported(best_simd_level()));
}

TEST_CASE("the 256-bit VNNI path is available wherever vpdpbusd is, and never preferred over AVX-512") {
  const CpuFeatures f = detect_cpu_features();
#if defined(TINYSLM_KERNELS_X86)
  CHECK(simd_level_supported(SimdLevel::avxvnni) == (f.has_avx2_fma() && (f.avx_vnni || f.has_avx512_vnni())));
  if (f.has_avx512_vnni()) CHECK(best_simd_level() == SimdLevel::avx512);
  else if (f.avx_vnni && f.has_avx2_fma()) CHECK(best_simd_level() == SimdLevel::avxvnni);
#else
  CHECK_FALSE(simd_level_supported(SimdLevel::avxvnni));
  (void)f;
#endif
  CHECK(std::string(simd_level_name(SimdLevel::avxvnni)) == "avxvnni");
}

TEST_CASE("matmul rejects bad input") {
  const auto w = random_matrix(TensorType::Q4_0, 4, 64, 1);
  std::vector<float> x(64 * 2, 0.5f), y(8);
  MatmulScratch s;
  ParallelFor par;
  auto code = [&](const Status& st) { return st ? Errc::ok : st.error().code(); };
  CHECK(code(matmul({TensorType::Q4_0, w.data(), 4, 64}, x.data(), 2, y.data(), 4, s, par)) == Errc::ok);
  CHECK(code(matmul({TensorType::IQ2_XXS, w.data(), 4, 256}, x.data(), 1, y.data(), 4, s, par)) == Errc::unsupported);
  CHECK(code(matmul({TensorType::Q4_0, w.data(), 4, 48}, x.data(), 1, y.data(), 4, s, par)) == Errc::invalid_argument);
  CHECK(code(matmul({TensorType::Q4_K, w.data(), 1, 128}, x.data(), 1, y.data(), 4, s, par)) == Errc::invalid_argument);
  CHECK(code(matmul({TensorType::Q4_0, w.data(), 4, 64}, x.data(), 1, y.data(), 3, s, par)) == Errc::invalid_argument);
  CHECK(code(matmul({TensorType::Q4_0, nullptr, 4, 64}, x.data(), 1, y.data(), 4, s, par)) == Errc::invalid_argument);
  CHECK(code(matmul({TensorType::Q4_0, w.data(), 4, 64}, nullptr, 1, y.data(), 4, s, par)) == Errc::invalid_argument);
  CHECK(code(matmul({TensorType::Q4_0, w.data(), -1, 64}, x.data(), 1, y.data(), 4, s, par)) == Errc::invalid_argument);
  CHECK(code(matmul({TensorType::Q4_0, w.data(), 4, 64}, x.data(), -2, y.data(), 4, s, par)) == Errc::invalid_argument);
  CHECK(code(matmul({TensorType::Q4_0, w.data(), 4, 0}, x.data(), 1, y.data(), 4, s, par)) == Errc::invalid_argument);
  CHECK(code(s.reserve(-1, 10)) == Errc::invalid_argument);
  CHECK(code(s.reserve(int64_t(1) << 40, int64_t(1) << 40)) == Errc::invalid_argument);
  // n == 0 and rows == 0 are no-ops that touch nothing.
  CHECK(code(matmul({TensorType::Q4_0, w.data(), 4, 64}, x.data(), 0, y.data(), 4, s, par)) == Errc::ok);
}

TEST_CASE("activation types follow llama.cpp's pairing") {
  CHECK(activation_type_for(TensorType::Q4_0) == TensorType::Q8_0);
  CHECK(activation_type_for(TensorType::Q8_0) == TensorType::Q8_0);
  CHECK(activation_type_for(TensorType::IQ4_NL) == TensorType::Q8_0);
  CHECK(activation_type_for(TensorType::Q4_1) == TensorType::Q8_1);
  CHECK(activation_type_for(TensorType::Q5_1) == TensorType::Q8_1);
  CHECK(activation_type_for(TensorType::Q4_K) == TensorType::Q8_K);
  CHECK(activation_type_for(TensorType::Q6_K) == TensorType::Q8_K);
  CHECK(activation_type_for(TensorType::F16) == TensorType::F16);
  CHECK(activation_type_for(TensorType::BF16) == TensorType::BF16);
}

namespace {
// Our activation layout, quantized by the scalar and (when present) SIMD quantizers.
struct QuantizedRow {
  std::vector<int8_t> qs;
  std::vector<float> da16, m32, m16;
  std::vector<int32_t> sum16, corr4;
  explicit QuantizedRow(int64_t k) : qs(k), da16(k / 16), m32(k / 32), m16(k / 16), sum16(k / 16), corr4(k / 4) {}
};
}  // namespace

TEST_CASE("activation quantization is bit-exact with quant.hpp's quantize_row (Q8_0, Q8_1, Q8_K)") {
  const int64_t k = 1024;
  for (uint32_t seed = 1; seed <= 3; ++seed) {
    auto x = random_acts(1, k, seed);
    for (auto fmt : {detail::ActFormat::q8_0, detail::ActFormat::q8_1, detail::ActFormat::q8_k}) {
      QuantizedRow a(k);
      detail::quantize_activation_row(fmt, x.data(), k, a.qs.data(), a.da16.data(), a.m32.data(), a.m16.data(),
                                      a.sum16.data(), a.corr4.data(), nullptr);
      if (fmt == detail::ActFormat::q8_k) {
        std::vector<BlockQ8_K> ref(k / 256);
        REQUIRE(quantize_row(TensorType::Q8_K, x.data(), ref.data(), k));
        for (int64_t b = 0; b < k / 256; ++b) {
          CHECK(std::memcmp(ref[b].qs, a.qs.data() + b * 256, 256) == 0);
          CHECK(ref[b].d == a.da16[b * 16]);
          for (int g = 0; g < 16; ++g) CHECK(ref[b].bsums[g] == a.sum16[b * 16 + g]);
        }
      } else if (fmt == detail::ActFormat::q8_0) {
        std::vector<BlockQ8_0> ref(k / 32);
        REQUIRE(quantize_row(TensorType::Q8_0, x.data(), ref.data(), k));
        for (int64_t b = 0; b < k / 32; ++b) {
          CHECK(std::memcmp(ref[b].qs, a.qs.data() + b * 32, 32) == 0);
          CHECK(fp16_to_fp32(ref[b].d) == a.da16[2 * b]);
        }
      } else {
        std::vector<BlockQ8_1> ref(k / 32);
        REQUIRE(quantize_row(TensorType::Q8_1, x.data(), ref.data(), k));
        for (int64_t b = 0; b < k / 32; ++b) {
          CHECK(std::memcmp(ref[b].qs, a.qs.data() + b * 32, 32) == 0);
          CHECK(fp16_to_fp32(ref[b].d) == a.da16[2 * b]);
          CHECK(fp16_to_fp32(ref[b].s) == a.m32[b]);
        }
      }
      for (int64_t l = 0; l < k / 4; ++l)
        CHECK(a.corr4[l] == -128 * (a.qs[4 * l] + a.qs[4 * l + 1] + a.qs[4 * l + 2] + a.qs[4 * l + 3]));
#if defined(TINYSLM_KERNELS_X86)
      if (simd_level_supported(SimdLevel::avx2)) {
        QuantizedRow s(k);
        detail::x86::quantize_activation_row_avx2(fmt, x.data(), k, s.qs.data(), s.da16.data(), s.m32.data(),
                                                  s.m16.data(), s.sum16.data(), s.corr4.data());
        CHECK(s.qs == a.qs);
        CHECK(std::memcmp(s.da16.data(), a.da16.data(), a.da16.size() * 4) == 0);
        CHECK(std::memcmp(s.m32.data(), a.m32.data(), a.m32.size() * 4) == 0);
        CHECK(s.sum16 == a.sum16);
        CHECK(s.corr4 == a.corr4);
        if (fmt == detail::ActFormat::q8_k) CHECK(std::memcmp(s.m16.data(), a.m16.data(), a.m16.size() * 4) == 0);
      }
#endif
    }
  }
}

TEST_CASE("the scalar reference dot equals the float dot of quant.hpp's dequantized rows") {
  // Independent check of the canonical decode: dequantize weights and quantized activations
  // with quant.hpp and compare the float dot (tolerance: float rounding of both sides).
  const int64_t k = 512;
  uint32_t seed = 4000;
  for (TensorType t : kIntTypes) {
    const auto w = random_matrix(t, 1, k, ++seed);
    const auto x = random_acts(1, k, seed + 1);
    std::vector<float> wf(k), af(k);
    REQUIRE(dequantize_row(t, w.data(), wf.data(), k));
    const TensorType at = activation_type_for(t);
    std::vector<uint8_t> aq(k / tensor_type_info(at).block_size * tensor_type_info(at).block_bytes);
    REQUIRE(quantize_row(at, x.data(), aq.data(), k));
    REQUIRE(dequantize_row(at, aq.data(), af.data(), k));
    double want = 0, mag = 0;
    for (int64_t i = 0; i < k; ++i) {
      want += double(wf[i]) * af[i];
      mag += std::fabs(double(wf[i]) * af[i]);
    }
    QuantizedRow a(k);
    detail::quantize_activation_row(detail::act_format_for(t), x.data(), k, a.qs.data(), a.da16.data(), a.m32.data(),
                                    a.m16.data(), a.sum16.data(), a.corr4.data(), nullptr);
    detail::ActRow row;
    row.qs = a.qs.data();
    row.da16 = a.da16.data();
    row.m32 = a.m32.data();
    row.m16 = a.m16.data();
    row.sum16 = a.sum16.data();
    row.corr4 = a.corr4.data();
    const float got = detail::dot_row_scalar(t, w.data(), k, row);
    // Q4_1/Q5_1 use the fp16-rounded s of Q8_1 like llama.cpp, which the float dot does
    // not: allow the fp16 rounding of s (2^-11 relative) per block on top of float error.
    double bound = 1e-5 * mag + 1e-6;
    if (t == TensorType::Q4_1 || t == TensorType::Q5_1)
      for (int64_t b = 0; b < k / 32; ++b) bound += 0.05 * std::fabs(a.m32[b]) * 1e-3;
    CHECK_MESSAGE(std::fabs(got - want) <= bound, tensor_type_name(t) << ": " << got << " vs " << want);
  }
}

TEST_CASE("activations quantized once serve several matrices (matmul_quantized)") {
  const int64_t cols = 256, n = 9;
  const auto x = random_acts(n, cols, 31);
  const auto wq = random_matrix(TensorType::Q4_0, 40, cols, 32);
  const auto wk = random_matrix(TensorType::Q8_0, 24, cols, 33);
  const auto wk4 = random_matrix(TensorType::Q4_K, 8, cols, 34);
  for (SimdLevel l : available_levels()) {
    REQUIRE(set_simd_level(l));
    ThreadPool pool(2);
    MatmulScratch s;
    std::vector<float> yq(n * 40), yk(n * 24), ref_q(n * 40), ref_k(n * 24);
    REQUIRE(quantize_activations(TensorType::Q4_0, x.data(), n, cols, s, pool.parallel()));
    REQUIRE(matmul_quantized({TensorType::Q4_0, wq.data(), 40, cols}, n, yq.data(), 40, s, pool.parallel()));
    REQUIRE(matmul_quantized({TensorType::Q8_0, wk.data(), 24, cols}, n, yk.data(), 24, s, pool.parallel()));
    // A type with another activation format, another n or another row length is refused.
    auto st = matmul_quantized({TensorType::Q4_K, wk4.data(), 8, cols}, n, yk.data(), 24, s, pool.parallel());
    CHECK(!st);
    if (!st) CHECK(st.error().code() == Errc::invalid_argument);
    CHECK(!matmul_quantized({TensorType::Q8_0, wk.data(), 24, cols}, n - 1, yk.data(), 24, s, pool.parallel()));
    CHECK(!matmul_quantized({TensorType::Q8_0, wk.data(), 12, cols / 2}, n, yk.data(), 24, s, pool.parallel()));
    MatmulScratch s2;
    REQUIRE(matmul({TensorType::Q4_0, wq.data(), 40, cols}, x.data(), n, ref_q.data(), 40, s2, pool.parallel()));
    REQUIRE(matmul({TensorType::Q8_0, wk.data(), 24, cols}, x.data(), n, ref_k.data(), 24, s2, pool.parallel()));
    CHECK(std::memcmp(yq.data(), ref_q.data(), yq.size() * 4) == 0);
    CHECK(std::memcmp(yk.data(), ref_k.data(), yk.size() * 4) == 0);
    reset_simd_level();
  }
}

TEST_CASE("llama.cpp-quantized tensors of the synthetic models: every path agrees with the scalar reference" * doctest::test_suite("shared")) {
  // Real scale distributions (llama.cpp's quantizers) rather than random bytes; also a
  // float reference from quant.hpp's dequantize_row of both operands.
  const char* files[] = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q2_K", "Q3_K_M",
                         "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_XS", "IQ3_S", "F16", "BF16", "F32"};
  int checked = 0;
  for (const char* f : files) {
    const std::string path = tinyslm_test::shared_file(std::string("models/synthetic/syn-llama-") + f + ".gguf");
    if (path.empty()) return;
    auto file = GgufFile::open(path);
    REQUIRE(file);
    int per_file = 0;
    for (const auto& t : file->tensors()) {
      if (t.n_dims != 2 || !matmul_supports(t.type) || per_file >= 4) continue;
      const int64_t cols = static_cast<int64_t>(t.ne[0]);
      if (!detail::check_cols(t.type, cols)) continue;
      const int64_t rows = std::min<int64_t>(static_cast<int64_t>(t.ne[1]), 40);
      ++per_file;
      const int64_t n = 5;
      const auto x = random_acts(n, cols, 77 + checked);
      std::vector<uint8_t> w(t.data, t.data + rows * (t.n_bytes / t.ne[1]));
      const auto ref = run(SimdLevel::scalar, t.type, w, rows, cols, x, n);
      // float reference: dequantized weights times dequantized activations
      const TensorType at = activation_type_for(t.type);
      const int64_t row_bytes = static_cast<int64_t>(t.n_bytes / t.ne[1]);
      std::vector<float> wf(cols), af(cols);
      std::vector<uint8_t> aq(cols / tensor_type_info(at).block_size * tensor_type_info(at).block_bytes);
      for (int64_t i = 0; i < n; ++i) {
        REQUIRE(quantize_row(at, x.data() + i * cols, aq.data(), cols));
        REQUIRE(dequantize_row(at, aq.data(), af.data(), cols));
        for (int64_t r = 0; r < rows; ++r) {
          REQUIRE(dequantize_row(t.type, w.data() + r * row_bytes, wf.data(), cols));
          double want = 0, mag = 0;
          for (int64_t c = 0; c < cols; ++c) {
            want += double(wf[c]) * af[c];
            mag += std::fabs(double(wf[c]) * af[c]);
          }
          // Q4_1/Q5_1 use Q8_1's fp16-rounded s (as llama.cpp does): allow its rounding too.
          const double tol = (t.type == TensorType::Q4_1 || t.type == TensorType::Q5_1 ? 2e-3 : 1e-5) * mag + 1e-5;
          CHECK_MESSAGE(std::fabs(ref[i * rows + r] - want) <= tol,
                        std::string(t.name) << " " << tensor_type_name(t.type) << ": " << ref[i * rows + r] << " vs " << want);
        }
      }
      for (SimdLevel l : available_levels()) {
        if (l == SimdLevel::scalar) continue;
        const auto y = run(l, t.type, w, rows, cols, x, n);
        for (size_t j = 0; j < y.size(); ++j) {
          const int64_t r = static_cast<int64_t>(j) % rows, i = static_cast<int64_t>(j) / rows;
          const double bound =
              4.0 * double(cols) * 5.96e-8 * magnitude_bound(t.type, w.data() + r * row_bytes, cols, x.data() + i * cols) + 1e-6;
          CHECK_MESSAGE(std::fabs(double(y[j]) - ref[j]) <= bound,
                        std::string(t.name) << " " << simd_level_name(l) << ": " << y[j] << " vs " << ref[j]);
        }
      }
      ++checked;
    }
  }
  MESSAGE("synthetic-model tensors checked: " << checked);
  CHECK(checked > 20);
}

TEST_CASE("the block-type table: one row per GGUF id, kernels where matmul takes the type") {
  CHECK(kIntTypes.size() == 13);
  CHECK(kFloatTypes.size() == 3);
  for (uint32_t id = 0; id < detail::kTensorTypeIdLimit; ++id) {
    const auto& k = detail::block_kernels_table[id];
    const auto t = static_cast<TensorType>(id);
    CHECK(matmul_supports(t) == (k.rows[0] != nullptr));
    if (!k.rows[0]) continue;
    CHECK(static_cast<uint32_t>(k.format->type) == id);
    CHECK(k.format == quant_traits(t));
    CHECK(k.format->block_size == static_cast<int>(tensor_type_info(t).block_size));
    for (SimdLevel l : available_levels())  // every path the CPU runs has a kernel (or the scalar one)
      CHECK(static_cast<bool>(detail::rows_kernel(t, l)));
  }
  CHECK(activation_type_for(TensorType::Q4_K) == TensorType::Q8_K);
  CHECK(activation_type_for(TensorType::Q4_1) == TensorType::Q8_1);
  CHECK(activation_type_for(TensorType::IQ4_NL) == TensorType::Q8_0);
  CHECK(activation_type_for(TensorType::BF16) == TensorType::BF16);
  CHECK_FALSE(matmul_supports(TensorType::Q8_K));
  CHECK_FALSE(matmul_supports(TensorType::IQ2_XXS));
}

namespace {
// matmul_many over `outs` (weights, types) against matmul per output, bit for bit.
void check_matmul_many(SimdLevel level, int64_t n, int threads) {
  REQUIRE(set_simd_level(level));
  const int64_t cols = 512;
  const TensorType types[] = {TensorType::Q4_0, TensorType::Q6_K, TensorType::F16, TensorType::Q8_0, TensorType::Q4_K};
  const int64_t rows[] = {83, 48, 17, 64, 130};
  std::vector<std::vector<uint8_t>> w;
  for (int j = 0; j < 5; ++j) w.push_back(random_matrix(types[j], rows[j], cols, 700 + j));
  const auto x = random_acts(n, cols, 777);
  ThreadPool pool(threads);
  MatmulScratch scratch;
  std::vector<std::vector<float>> want(5), got(5);
  std::vector<MatmulOut> outs;
  for (int j = 0; j < 5; ++j) {
    const MatrixRef m{types[j], w[j].data(), rows[j], cols};
    want[j].assign(static_cast<size_t>(n * (rows[j] + 1)), -1.f);
    got[j].assign(want[j].size(), -1.f);
    REQUIRE(matmul(m, x.data(), n, want[j].data(), rows[j] + 1, scratch, pool.parallel()));
    outs.push_back({m, got[j].data(), rows[j] + 1, "out"});
  }
  REQUIRE(matmul_many(outs, x.data(), n, scratch, pool.parallel()));
  reset_simd_level();
  for (int j = 0; j < 5; ++j)
    CHECK_MESSAGE(std::memcmp(want[j].data(), got[j].data(), want[j].size() * 4) == 0,
                  tensor_type_name(types[j]) << " " << simd_level_name(level) << " n " << n << " threads " << threads);
}
}  // namespace

TEST_CASE("matmul_many gives the bits of matmul per output") {
  for (SimdLevel l : available_levels()) {
    check_matmul_many(l, 1, 2);
    check_matmul_many(l, 1, 1);
    check_matmul_many(l, 7, 2);
  }
}

TEST_CASE("matmul_many: errors carry the output's name; mismatched row lengths fail") {
  MatmulScratch scratch;
  const auto w = random_matrix(TensorType::Q4_0, 16, 64, 1);
  const auto x = random_acts(1, 64, 2);
  std::vector<float> y(32);
  const MatmulOut bad[] = {{{TensorType::Q4_0, w.data(), 16, 64}, y.data(), 16, "blk.0.attn_q"},
                           {{TensorType::Q4_0, w.data(), 16, 64}, nullptr, 16, "blk.0.attn_k"}};
  auto st = matmul_many(bad, x.data(), 1, scratch, ParallelFor{});
  REQUIRE_FALSE(st);
  CHECK(st.error().message().find("blk.0.attn_k") == 0);
  const MatmulOut mixed[] = {{{TensorType::Q4_0, w.data(), 16, 64}, y.data(), 16, "a"},
                             {{TensorType::Q4_0, w.data(), 8, 128}, y.data(), 16, "b"}};
  CHECK_FALSE(matmul_many(mixed, x.data(), 1, scratch, ParallelFor{}));
  CHECK(matmul_many({}, x.data(), 1, scratch, ParallelFor{}));
}

TEST_CASE("with the scalar path forced, the ops give the scalar results") {
  REQUIRE(set_simd_level(SimdLevel::scalar));
  CHECK(active_x86_width() == 0);
  const auto a = random_acts(1, 1000, 11), b = random_acts(1, 1000, 12);
  const auto n = static_cast<int64_t>(a.size());
  std::vector<float> y1(n), y2(n);
  ops::detail::silu_mul(a.data(), b.data(), y1.data(), n);
  ops::detail::silu_mul_scalar(a.data(), b.data(), y2.data(), n);
  CHECK(std::memcmp(y1.data(), y2.data(), n * 4) == 0);
  CHECK(ops::detail::sum_squares(a.data(), n) == ops::detail::sum_squares_scalar(a.data(), n));
  std::vector<uint16_t> h1(n), h2(n);
  ops::f32_to_f16(a.data(), h1.data(), n);
  ops::detail::f32_to_f16_scalar(a.data(), h2.data(), n);
  CHECK(std::memcmp(h1.data(), h2.data(), n * 2) == 0);
  ops::f16_to_f32(h1.data(), y1.data(), n);
  ops::detail::f16_to_f32_scalar(h1.data(), y2.data(), n);
  CHECK(std::memcmp(y1.data(), y2.data(), n * 4) == 0);
  reset_simd_level();
}

// ---------------------------------------------------------------------------------------
// IQ4_XS and IQ3_S end to end: the syn-llama models llama.cpp quantized (--pure) to each,
// against llama.cpp's golden outputs, as test_forward.cpp checks the other syn-* files
// (its file list is kept elsewhere). Model and Context come from the umbrella header.
#include "json.hpp"
#include "tinyslm.hpp"

namespace {

// One golden file: for every prompt, llama.cpp's 20 largest logits at the last prompt
// position within 2% of its logit range (the README's bound for quantized models), its top-1
// unless its top two are within that bound, then 16 steps of its greedy continuation fed
// back with its top 5 at each step within the same bound. Returns the worst error / range.
double check_iq_golden(const std::string& stem) {
  const std::string mpath = tinyslm_test::shared_file("models/synthetic/" + stem + ".gguf");
  const std::string gpath = tinyslm_test::shared_file("golden/synthetic/" + stem + ".json");
  if (mpath.empty() || gpath.empty()) return -1;
  auto model = Model::open(mpath);
  REQUIRE_MESSAGE(model, stem << ": " << (model ? "" : model.error().message()));
  const auto g = tinyslm_test::Json::parse(tinyslm_test::read_text(gpath));
  auto ctx = Context::create(*model, {.n_ctx = 2048, .n_threads = 1});
  REQUIRE(ctx);
  double worst = 0;
  for (const auto& p : g["prompts"].items()) {
    const std::vector<int32_t> toks = p["eval_tokens"].int_list();
    ctx->reset();
    auto lg = ctx->eval(toks);
    REQUIRE(lg);
    std::vector<float> ours(lg->begin(), lg->end());
    const double range = p["last_stats"]["max"].as_number() - p["last_stats"]["min"].as_number();
    const double bound = 0.02 * range;
    const auto& top = p["last_top"].items();
    double diff = 0;
    for (const auto& e : top) diff = std::max(diff, std::fabs(ours[static_cast<size_t>(e[0].as_int())] - e[1].as_number()));
    worst = std::max(worst, diff / range);
    CHECK_MESSAGE(diff <= bound, stem << " '" << p["id"].as_string() << "': logit difference " << diff << " > " << bound);
    const auto best = std::max_element(ours.begin(), ours.end()) - ours.begin();
    const bool top1_ok = best == top[0][0].as_int() || top[0][1].as_number() - top[1][1].as_number() <= bound;
    CHECK_MESSAGE(top1_ok, stem << " '" << p["id"].as_string() << "': top-1 " << best << " != " << top[0][0].as_int());
    const auto gtoks = p["greedy"]["tokens"].int_list();
    const auto& steps = p["greedy"]["step_top"].items();
    const size_t n_steps = std::min<size_t>({16, gtoks.size(), steps.size()});
    for (size_t s = 0; s < n_steps; ++s) {
      double step_diff = 0;
      for (const auto& e : steps[s].items())
        step_diff = std::max(step_diff, std::fabs(ours[static_cast<size_t>(e[0].as_int())] - e[1].as_number()));
      worst = std::max(worst, step_diff / range);
      CHECK_MESSAGE(step_diff <= bound, stem << " '" << p["id"].as_string() << "' greedy step " << s << ": " << step_diff);
      if (s + 1 == n_steps) break;
      const int32_t next = gtoks[s];
      auto step = ctx->eval(std::span<const int32_t>(&next, 1));
      REQUIRE(step);
      ours.assign(step->begin(), step->end());
    }
  }
  return worst;
}

}  // namespace

TEST_CASE("IQ4_XS and IQ3_S models match llama.cpp's golden outputs" * doctest::test_suite("shared")) {
  for (const char* stem : {"syn-llama-IQ4_XS", "syn-llama-IQ3_S"}) {
    for (SimdLevel l : available_levels()) {
      REQUIRE(set_simd_level(l));
      const double worst = check_iq_golden(stem);
      reset_simd_level();
      if (worst < 0) return;
      MESSAGE(std::string(stem) << " on " << std::string(simd_level_name(l)) << ": worst logit error " << worst
                                << " of the range");
    }
  }
}

TEST_CASE("IQ4_XS and IQ3_S blocks decode as their formulas say") {
  // IQ4_XS: sub-block ib gets scale ib - 3 (stored + 32), value j of it level j % 16.
  BlockIQ4_XS x4{};
  x4.d = fp32_to_fp16(0.5f);
  for (int ib = 0; ib < 8; ++ib) {
    const int biased = ib - 3 + 32;
    x4.scales_l[ib / 2] = static_cast<uint8_t>(x4.scales_l[ib / 2] | ((biased & 0xF) << (4 * (ib % 2))));
    x4.scales_h = static_cast<uint16_t>(x4.scales_h | ((biased >> 4) << (2 * ib)));
    for (int j = 0; j < 16; ++j) x4.qs[16 * ib + j] = static_cast<uint8_t>((j % 16) | ((15 - j) << 4));
  }
  float y[256];
  dequantize_block(x4, y);
  for (int ib = 0; ib < 8; ++ib)
    for (int j = 0; j < 16; ++j) {
      CHECK(y[32 * ib + j] == 0.5f * (ib - 3) * kIq4nlValues[j]);
      CHECK(y[32 * ib + 16 + j] == 0.5f * (ib - 3) * kIq4nlValues[15 - j]);
    }
  // IQ3_S: group g takes grid point 2g + 256 * (g % 2) (the ninth bit set on odd groups),
  // value i is negative when i % 3 == 0, sub-block ib has multiplier 1 + 2 * (15 - ib).
  BlockIQ3_S x3{};
  x3.d = fp32_to_fp16(0.25f);
  for (int g = 0; g < 64; ++g) {
    x3.qs[g] = static_cast<uint8_t>(2 * g);
    if (g % 2) x3.qh[g / 8] = static_cast<uint8_t>(x3.qh[g / 8] | (1 << (g % 8)));
  }
  for (int i = 0; i < 256; ++i)
    if (i % 3 == 0) x3.signs[i / 8] = static_cast<uint8_t>(x3.signs[i / 8] | (1 << (i % 8)));
  for (int ib = 0; ib < 8; ++ib) x3.scales[ib / 2] = static_cast<uint8_t>(x3.scales[ib / 2] | ((15 - ib) << (4 * (ib % 2))));
  dequantize_block(x3, y);
  for (int i = 0; i < 256; ++i) {
    const int g = i / 4, ib = i / 32;
    const int mag = static_cast<int>((kIq3sGrid[2 * g + 256 * (g % 2)] >> (8 * (i % 4))) & 0xFF);
    CHECK(mag % 2 == 1);
    CHECK(y[i] == 0.25f * (1 + 2 * (15 - ib)) * mag * (i % 3 == 0 ? -1 : 1));
  }
  // the canonical decode the kernels use gives the same values
  int8_t w[256];
  float sw[16], mw[16];
  detail::decode_block_scalar(TensorType::IQ3_S, reinterpret_cast<const uint8_t*>(&x3), w, sw, mw);
  for (int i = 0; i < 256; ++i) CHECK(sw[i / 32] * w[i] == y[i]);
  detail::decode_block_scalar(TensorType::IQ4_XS, reinterpret_cast<const uint8_t*>(&x4), w, sw, mw);
  dequantize_block(x4, y);
  for (int i = 0; i < 256; ++i) CHECK(sw[i / 32] * w[i] == y[i]);
}

TEST_CASE("IQ4_XS and IQ3_S pair with Q8_K activations and run on every path over long rows") {
  CHECK(activation_type_for(TensorType::IQ4_XS) == TensorType::Q8_K);
  CHECK(activation_type_for(TensorType::IQ3_S) == TensorType::Q8_K);
  uint32_t seed = 7100;
  for (TensorType t : {TensorType::IQ4_XS, TensorType::IQ3_S}) {
    compare_to_scalar(t, 40, 1536, 21, ++seed);  // several chunks, GEMM tiles
    compare_to_scalar(t, 33, 2304, 1, ++seed);   // decode
    compare_to_scalar(t, 17, 768, 4, ++seed);    // AVX-512's GEMM from 4 tokens
  }
}
