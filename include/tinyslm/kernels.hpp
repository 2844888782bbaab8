// tinyslm kernels: matrix times activations for every weight block type, with a scalar
// reference and SIMD paths chosen at run time from the CPU's features (one binary runs
// everywhere and never executes an instruction the CPU lacks).
//
//   y[i * ldy + r] = sum_k W[r][k] * x[i * cols + k]      (i < n tokens, r < rows)
//
// Activations are quantized once per row into the format llama.cpp pairs with the weight
// type (Q8_0, Q8_1, Q8_K, or rounded to F16/BF16), then every inner loop is an integer dot
// product. Few tokens (decode: n == 1, bound by memory bandwidth) run GEMV kernels that
// unpack each weight block once for all n tokens; from 4 tokens (AVX-512) or 9 (AVX2) on,
// register-tiled GEMM kernels on 16- / 8-row panels (prefill). Threads take rows in chunks of multiples of 16 from
// a shared counter, and every row's arithmetic is the same whatever the split, so the result
// does not depend on the thread count or the schedule.
//
// quantize_activations() + matmul_quantized() split the two steps, so one input quantized
// once feeds several matrices (Q/K/V, gate/up).
//
// Paths: scalar (always), AVX2+FMA+F16C, AVX-512 BW/VL/DQ with VNNI (x86-64), NEON with
// dotprod (AArch64), Highway static dispatch (when TINYSLM_USE_HIGHWAY). The environment
// variable TINYSLM_SIMD=scalar|avx2|avxvnni|avx512|neon|highway, or set_simd_level(), forces a lower
// path (for tests).
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "core.hpp"
#include "gguf.hpp"
#include "quant.hpp"
#include "kernels_scalar.hpp"
#include "kernels_x86.hpp"
#include "kernels_arm.hpp"
#include "kernels_hwy.hpp"

namespace tinyslm {
inline namespace v0 {

// avxvnni: the AVX2 kernels with vpdpbusd on 256-bit vectors. It runs on CPUs with AVX-VNNI
// (VEX encoding) and, through the EVEX encoding of the same instruction, on CPUs with AVX-512
// VL + VNNI, where it is never the default (avx512 is faster) but can be forced, which is how
// it is tested on an AVX-512 machine.
enum class SimdLevel : int { scalar = 0, avx2 = 1, avx512 = 2, neon = 3, highway = 4, avxvnni = 5 };

inline const char* simd_level_name(SimdLevel l) {
  switch (l) {
    case SimdLevel::scalar: return "scalar";
    case SimdLevel::avx2: return "avx2";
    case SimdLevel::avx512: return "avx512";
    case SimdLevel::neon: return "neon";
    case SimdLevel::highway: return "highway";
    case SimdLevel::avxvnni: return "avxvnni";
  }
  return "unknown";
}

// Whether this build and this CPU can run a path.
inline bool simd_level_supported(SimdLevel l) {
  static const CpuFeatures f = detect_cpu_features();
  (void)f;
  switch (l) {
    case SimdLevel::scalar: return true;
    case SimdLevel::avx2:
#if defined(TINYSLM_KERNELS_X86)
      return f.has_avx2_fma();
#else
      return false;
#endif
    case SimdLevel::avx512:
#if defined(TINYSLM_KERNELS_X86)
      return f.has_avx512_vnni();
#else
      return false;
#endif
    case SimdLevel::avxvnni:
#if defined(TINYSLM_KERNELS_X86)
      return f.has_avx2_fma() && (f.avx_vnni || f.has_avx512_vnni());
#else
      return false;
#endif
    case SimdLevel::neon:
#if defined(TINYSLM_KERNELS_ARM)
      return f.neon && f.dotprod;
#else
      return false;
#endif
    case SimdLevel::highway:
#if defined(TINYSLM_USE_HIGHWAY)
      return true;
#else
      return false;
#endif
  }
  return false;
}

// The best native path (Highway is used only when asked for).
inline SimdLevel best_simd_level() {
  if (simd_level_supported(SimdLevel::avx512)) return SimdLevel::avx512;
  if (simd_level_supported(SimdLevel::avxvnni)) return SimdLevel::avxvnni;  // AVX-VNNI without AVX-512
  if (simd_level_supported(SimdLevel::avx2)) return SimdLevel::avx2;
  if (simd_level_supported(SimdLevel::neon)) return SimdLevel::neon;
  return SimdLevel::scalar;
}

namespace detail {
inline std::atomic<int>& simd_override() {
  static std::atomic<int> v{-1};
  return v;
}
inline SimdLevel env_simd_level() {
  static const SimdLevel level = [] {
    const char* e = std::getenv("TINYSLM_SIMD");
    if (!e) return best_simd_level();
    const std::string_view s(e);
    for (SimdLevel l : {SimdLevel::scalar, SimdLevel::avx2, SimdLevel::avx512, SimdLevel::neon,
                        SimdLevel::highway, SimdLevel::avxvnni})
      if (s == simd_level_name(l)) return simd_level_supported(l) ? l : best_simd_level();
    return best_simd_level();
  }();
  return level;
}
}  // namespace detail

// The path matmul uses: set_simd_level's choice, else TINYSLM_SIMD (read once), else the best.
inline SimdLevel active_simd_level() {
  const int o = detail::simd_override().load(std::memory_order_relaxed);
  return o >= 0 ? static_cast<SimdLevel>(o) : detail::env_simd_level();
}

// Forces a path for the whole process (for tests and benchmarks); fails when this build or
// CPU cannot run it. reset_simd_level() returns to the default.
inline Status set_simd_level(SimdLevel l) {
  if (!simd_level_supported(l))
    return make_error(Errc::unsupported, std::string("SIMD path ") + simd_level_name(l) +
                                             " is not available on this CPU or build");
  detail::simd_override().store(static_cast<int>(l), std::memory_order_relaxed);
  return {};
}
inline void reset_simd_level() { detail::simd_override().store(-1, std::memory_order_relaxed); }

// Weight types matmul accepts.
inline bool matmul_supports(TensorType t) {
  return detail::is_integer_weight_type(t) || t == TensorType::F32 || t == TensorType::F16 ||
         t == TensorType::BF16;
}

// The activation type a weight type is multiplied with (Q8_0, Q8_1, Q8_K, F16, BF16, F32).
inline TensorType activation_type_for(TensorType weight) {
  switch (detail::act_format_for(weight)) {
    case detail::ActFormat::q8_0: return TensorType::Q8_0;
    case detail::ActFormat::q8_1: return TensorType::Q8_1;
    case detail::ActFormat::q8_k: return TensorType::Q8_K;
    case detail::ActFormat::f16: return TensorType::F16;
    case detail::ActFormat::bf16: return TensorType::BF16;
    case detail::ActFormat::f32: return TensorType::F32;
  }
  return TensorType::F32;
}

// A weight matrix in GGUF layout: `rows` rows of `cols` values, each row tensor_row_bytes
// long, rows contiguous.
struct MatrixRef {
  TensorType type;
  const uint8_t* data;
  int64_t rows;
  int64_t cols;
};

// Activation buffers for matmul. reserve() sizes them for up to max_n tokens of max_cols
// values up front (once per session); matmul grows them itself if a call needs more, which
// is the only allocation it ever makes.
class MatmulScratch {
 public:
  Status reserve(int64_t max_n, int64_t max_cols) { return ensure(max_n, max_cols, true); }

  // Internal: makes room for n rows of k values; float buffers only when `need_float`.
  Status ensure(int64_t n, int64_t k, bool need_float) {
    if (n < 0 || k < 0) return make_error(Errc::invalid_argument, "matmul scratch: negative size");
    const int64_t kp = (k + 255) / 256 * 256;
    uint64_t total = 0;
    if (detail::mul_overflows(static_cast<uint64_t>(n), static_cast<uint64_t>(kp), &total) ||
        total > (uint64_t{1} << 40))
      return make_error(Errc::invalid_argument, "matmul scratch: size overflows");
    if (n > cap_n_ || kp > cap_k_) {
      const int64_t nn = n > cap_n_ ? n : cap_n_;
      const int64_t kk = kp > cap_k_ ? kp : cap_k_;
      const auto sz = static_cast<size_t>(nn * kk);
      if (!qs_.allocate(sz) || !corr4_.allocate(sz / 4) || !da16_.allocate(sz / 16) ||
          !m16_.allocate(sz / 16) || !sum16_.allocate(sz / 16) || !m32_.allocate(sz / 32) || !da32_.allocate(sz / 32) ||
          !acts_.allocate(static_cast<size_t>(nn)))
        return alloc_failed();
      xf_.release();
      q_fmt_ = -1;
      cap_n_ = nn;
      cap_k_ = kk;
      fill_rows();
    }
    if (need_float && xf_.size() < static_cast<size_t>(cap_n_ * cap_k_)) {
      if (!xf_.allocate(static_cast<size_t>(cap_n_ * cap_k_))) return alloc_failed();
      fill_rows();
    }
    return {};
  }

  // What quantize_activations last stored (format id, rows, row length, tiles built).
  // tiled_level: the SimdLevel the token tiles were built for, or -1.
  void set_quantized(int fmt, int64_t n, int64_t k, int tiled_level) {
    q_fmt_ = fmt;
    q_n_ = n;
    q_k_ = k;
    q_tiled_ = tiled_level;
  }
  int quantized_format() const { return q_fmt_; }
  int64_t quantized_n() const { return q_n_; }
  int64_t quantized_cols() const { return q_k_; }
  int quantized_tiled_level() const { return q_tiled_; }

  // The activation rows, one per token (valid after ensure / reserve).
  const detail::ActRow* rows() const { return acts_.data(); }

#if defined(TINYSLM_KERNELS_X86)
  // Token tiles for the AVX-512 GEMM: room for n tokens of k values.
  Status ensure_tiles(int64_t n, int64_t k) {
    namespace x = detail::x86;
    const int64_t nt = (n + x::kTileTokens - 1) / x::kTileTokens;
    if (nt > tiles_n_ || k > tiles_k_) {
      const int64_t tn = nt > tiles_n_ ? nt : tiles_n_, tk = k > tiles_k_ ? k : tiles_k_;
      const auto q = static_cast<size_t>(tn * x::tile_q_words(tk)), g16 = static_cast<size_t>(tn * x::tile_g16(tk)),
                 g32 = static_cast<size_t>(tn * x::tile_g32(tk));
      if (!tq_.allocate(q) || !tc16_.allocate(g16) || !tc32_.allocate(g32) || !td16_.allocate(g16) ||
          !tm16_.allocate(g16) || !tm32_.allocate(g32) || !tiles_.allocate(static_cast<size_t>(tn)))
        return alloc_failed();
      tiles_n_ = tn;
      tiles_k_ = tk;
    }
    return {};
  }
  // Builds tile ti for the current n tokens of k values (after quantize).
  void build_tile(int64_t ti, int64_t n, int64_t k, bool unsigned_q) {
    namespace x = detail::x86;
    int32_t* q = tq_.data() + ti * x::tile_q_words(k);
    int32_t* c16 = tc16_.data() + ti * x::tile_g16(k);
    int32_t* c32 = tc32_.data() + ti * x::tile_g32(k);
    float* d16 = td16_.data() + ti * x::tile_g16(k);
    float* m16 = tm16_.data() + ti * x::tile_g16(k);
    float* m32 = tm32_.data() + ti * x::tile_g32(k);
    x::build_token_tile(acts_.data(), n, k, ti, q, c16, c32, d16, m16, m32, unsigned_q);
    tiles_[static_cast<size_t>(ti)] = {q, c16, c32, d16, m16, m32};
  }
  const detail::x86::TokenTile* tiles() const { return tiles_.data(); }
#endif

  detail::ActRow row(int64_t i) const {
    detail::ActRow a;
    a.qs = qs_.data() + i * cap_k_;
    a.da16 = da16_.data() + i * (cap_k_ / 16);
    a.m16 = m16_.data() + i * (cap_k_ / 16);
    a.sum16 = sum16_.data() + i * (cap_k_ / 16);
    a.m32 = m32_.data() + i * (cap_k_ / 32);
    a.corr4 = corr4_.data() + i * (cap_k_ / 4);
    a.da32 = da32_.data() + i * (cap_k_ / 32);
    a.xf = xf_.empty() ? nullptr : xf_.data() + i * cap_k_;
    return a;
  }

  // Quantizes token row i (k values) for weights of format fmt (SIMD when `simd`; the
  // result is bit-identical either way).
  void quantize(detail::ActFormat fmt, int64_t i, const float* x, int64_t k, bool simd = false) {
    quantize_row_only(fmt, i, x, k, simd);
    if (!detail::act_format_is_float(fmt)) {
      const float* d16 = da16_.data() + i * (cap_k_ / 16);
      float* d32 = da32_.data() + i * (cap_k_ / 32);
      for (int64_t g = 0; g < k / 32; ++g) d32[g] = d16[2 * g];
    }
  }

 private:
  void quantize_row_only(detail::ActFormat fmt, int64_t i, const float* x, int64_t k, bool simd) {
#if defined(TINYSLM_KERNELS_X86)
    if (simd && !detail::act_format_is_float(fmt)) {
      detail::x86::quantize_activation_row_avx2(fmt, x, k, qs_.data() + i * cap_k_, da16_.data() + i * (cap_k_ / 16),
                                                m32_.data() + i * (cap_k_ / 32), m16_.data() + i * (cap_k_ / 16),
                                                sum16_.data() + i * (cap_k_ / 16), corr4_.data() + i * (cap_k_ / 4));
      return;
    }
#endif
    (void)simd;
    detail::quantize_activation_row(fmt, x, k, qs_.data() + i * cap_k_, da16_.data() + i * (cap_k_ / 16),
                                    m32_.data() + i * (cap_k_ / 32), m16_.data() + i * (cap_k_ / 16),
                                    sum16_.data() + i * (cap_k_ / 16), corr4_.data() + i * (cap_k_ / 4),
                                    detail::act_format_is_float(fmt) ? xf_.data() + i * cap_k_ : nullptr);
  }

  void fill_rows() {
    for (int64_t i = 0; i < cap_n_; ++i) acts_[static_cast<size_t>(i)] = row(i);
  }
  static Error alloc_failed() { return make_error(Errc::out_of_memory, "matmul scratch: allocation failed"); }
  AlignedBuffer<int8_t> qs_;
  AlignedBuffer<int32_t> corr4_;
  AlignedBuffer<float> da16_, m16_, m32_, da32_, xf_;
  AlignedBuffer<int32_t> sum16_;
  AlignedBuffer<detail::ActRow> acts_;
#if defined(TINYSLM_KERNELS_X86)
  AlignedBuffer<int32_t> tq_, tc16_, tc32_;
  AlignedBuffer<float> td16_, tm16_, tm32_;
  AlignedBuffer<detail::x86::TokenTile> tiles_;
  int64_t tiles_n_ = 0, tiles_k_ = 0;
#endif
  int64_t cap_n_ = 0, cap_k_ = 0;
  int q_fmt_ = -1;
  int64_t q_n_ = 0, q_k_ = 0;
  int q_tiled_ = -1;
};

namespace detail {

// Row lengths must be whole blocks of the weight type and of its activation type.
inline Status check_cols(TensorType t, int64_t cols) {
  const auto& info = tensor_type_info(t);
  const int64_t act_block = act_format_for(t) == ActFormat::q8_k ? 256 : 32;
  const int64_t need_block = is_integer_weight_type(t) ? act_block : 1;
  if (cols % need_block != 0 || cols % static_cast<int64_t>(info.block_size) != 0)
    return make_error(Errc::invalid_argument, std::string("matmul: row length ") + std::to_string(cols) +
                                                  " is not a multiple of the " + tensor_type_name(t) + " block size");
  return {};
}

// Rows [r0, r1) of y for all n tokens on one path.
inline void matmul_rows(SimdLevel level, const MatrixRef& w, int64_t row_bytes, const MatmulScratch& s, bool tiled,
                        int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const int64_t k = w.cols;
  const bool is_float = act_format_is_float(act_format_for(w.type));
  const ActRow* acts = s.rows();
#if defined(TINYSLM_KERNELS_X86)
  if (level == SimdLevel::avx512 || level == SimdLevel::avx2 || level == SimdLevel::avxvnni) {
    static const bool evex = !detect_cpu_features().avx_vnni;  // avxvnni through AVX-512's encoding
    const int path = level == SimdLevel::avx512 ? x86::kPathAvx512 : level == SimdLevel::avxvnni ? x86::kPathAvxVnni : x86::kPathAvx2;
    if (x86::matmul_rows(path, evex, w.type, w.data, row_bytes, k, acts, tiled ? s.tiles() : nullptr, n, y, ldy, r0, r1))
      return;
  }
#endif
#if defined(TINYSLM_KERNELS_ARM)
  if (level == SimdLevel::neon) {
    if (arm::matmul_rows(w.type, w.data, row_bytes, k, acts, n, y, ldy, r0, r1)) return;
  }
#endif
#if defined(TINYSLM_USE_HIGHWAY)
  if (level == SimdLevel::highway) {
    if (hwy_kernels::matmul_rows(w.type, w.data, row_bytes, k, acts, n, y, ldy, r0, r1)) return;
  }
#endif
  (void)level;
  (void)tiled;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * row_bytes;
    for (int64_t i = 0; i < n; ++i) {
      const ActRow& a = acts[i];
      y[i * ldy + r] = is_float ? dot_row_float_scalar(w.type, row, k, a.xf) : dot_row_scalar(w.type, row, k, a);
    }
  }
}

}  // namespace detail

// Rows are handed to threads in multiples of this (the GEMM tile height).
inline constexpr int64_t kMatmulRowGrain = 16;

namespace detail {
inline Status check_matrix(const MatrixRef& w) {
  if (!matmul_supports(w.type))
    return make_error(Errc::unsupported, std::string("matmul: weight type ") + tensor_type_name(w.type) +
                                             " is not supported");
  if (w.rows < 0 || w.cols <= 0)
    return make_error(Errc::invalid_argument, "matmul: bad matrix shape " + std::to_string(w.rows) + " x " +
                                                  std::to_string(w.cols));
  if (!w.data) return make_error(Errc::invalid_argument, "matmul: null weights");
  return check_cols(w.type, w.cols);
}
}  // namespace detail

// Quantizes n rows of `cols` activations into `scratch`, in the format that weights of
// `weight_type` pair with (activation_type_for). matmul_quantized() then multiplies them
// with any matrix whose type has the same activation type and whose row length is `cols`,
// e.g. the Q, K and V projections of one input quantized once.
inline Status quantize_activations(TensorType weight_type, const float* x, int64_t n, int64_t cols,
                                   MatmulScratch& scratch, const ParallelFor& par) {
  if (!matmul_supports(weight_type))
    return make_error(Errc::unsupported, std::string("matmul: weight type ") + tensor_type_name(weight_type) +
                                             " is not supported");
  if (n < 0 || cols <= 0) return make_error(Errc::invalid_argument, "matmul: bad activation shape");
  if (auto st = detail::check_cols(weight_type, cols); !st) return st.error();
  if (n > 0 && !x) return make_error(Errc::invalid_argument, "matmul: null activations");
  const detail::ActFormat fmt = detail::act_format_for(weight_type);
  if (auto st = scratch.ensure(n, cols, detail::act_format_is_float(fmt)); !st) return st.error();
  const SimdLevel level = active_simd_level();
  const bool simd_quant = level == SimdLevel::avx2 || level == SimdLevel::avx512 || level == SimdLevel::avxvnni;
  // A few tokens (decode) are quantized on the calling thread: cheaper than waking the pool.
  if (n * cols <= 32768) {
    for (int64_t i = 0; i < n; ++i) scratch.quantize(fmt, i, x + i * cols, cols, simd_quant);
  } else {
    par([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(n, t, nt, 1, &b, &e);
      for (int64_t i = b; i < e; ++i) scratch.quantize(fmt, i, x + i * cols, cols, simd_quant);
    });
  }
  bool tiled = false;
#if defined(TINYSLM_KERNELS_X86)
  // The GEMM kernels take the quantized tokens interleaved 8 at a time (AVX2: as a + 128).
  const bool avx2_tiles = level == SimdLevel::avx2 || level == SimdLevel::avxvnni;  // activations as a + 128
  if (((level == SimdLevel::avx512 && n >= detail::x86::kGemmMinTokens) ||
       (avx2_tiles && n >= detail::x86::kGemmMinTokensAvx2)) &&
      !detail::act_format_is_float(fmt)) {
    if (auto st = scratch.ensure_tiles(n, cols); !st) return st.error();
    const int64_t ntiles = (n + detail::x86::kTileTokens - 1) / detail::x86::kTileTokens;
    par([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(ntiles, t, nt, 1, &b, &e);
      for (int64_t ti = b; ti < e; ++ti) scratch.build_tile(ti, n, cols, avx2_tiles);
    });
    tiled = true;
  }
#endif
  scratch.set_quantized(static_cast<int>(fmt), n, cols, tiled ? static_cast<int>(level) : -1);
  return {};
}

// y[i * ldy + r] = sum_k W[r][k] * a[i][k] for the n activation rows last quantized into
// `scratch` by quantize_activations (n must match, and w's type must pair with the same
// activation type, and w.cols with the quantized row length).
inline Status matmul_quantized(const MatrixRef& w, int64_t n, float* y, int64_t ldy, const MatmulScratch& scratch,
                               const ParallelFor& par) {
  if (auto st = detail::check_matrix(w); !st) return st.error();
  if (n < 0) return make_error(Errc::invalid_argument, "matmul: negative token count");
  if (n == 0 || w.rows == 0) return {};
  if (!y) return make_error(Errc::invalid_argument, "matmul: null output");
  if (ldy < w.rows) return make_error(Errc::invalid_argument, "matmul: ldy is smaller than the row count");
  if (scratch.quantized_format() != static_cast<int>(detail::act_format_for(w.type)) || scratch.quantized_n() != n ||
      scratch.quantized_cols() != w.cols)
    return make_error(Errc::invalid_argument, std::string("matmul: the scratch does not hold ") + std::to_string(n) +
                                                  " activation rows of " + std::to_string(w.cols) + " values for " +
                                                  tensor_type_name(w.type) + " weights");
  uint64_t row_bytes = 0;
  if (!tensor_row_bytes(w.type, static_cast<uint64_t>(w.cols), &row_bytes))
    return make_error(Errc::invalid_argument, "matmul: bad row length");
  const SimdLevel level = active_simd_level();
  const bool tiled = scratch.quantized_tiled_level() == static_cast<int>(level);
  // Rows are handed out in chunks (multiples of 16) from a shared counter, so a thread
  // slowed down by other work (or a small core) takes fewer; every row is computed the same
  // way whichever thread takes it, so the result does not depend on the schedule.
  const int nthreads = par.n_threads < 1 ? 1 : par.n_threads;
  int64_t chunk = w.rows / (int64_t{8} * nthreads);
  chunk = chunk < kMatmulRowGrain ? kMatmulRowGrain : (chunk + kMatmulRowGrain - 1) / kMatmulRowGrain * kMatmulRowGrain;
  std::atomic<int64_t> next{0};
  par([&](int, int) {
    for (;;) {
      const int64_t b = next.fetch_add(chunk, std::memory_order_relaxed);
      if (b >= w.rows) break;
      const int64_t e = b + chunk < w.rows ? b + chunk : w.rows;
      detail::matmul_rows(level, w, static_cast<int64_t>(row_bytes), scratch, tiled, n, y, ldy, b, e);
    }
  });
  return {};
}

// y[i * ldy + r] = sum_k W[r][k] * x[i * cols + k] for i < n, r < rows. x is n rows of
// w.cols floats; ldy >= w.rows. Same result for any thread count.
inline Status matmul(const MatrixRef& w, const float* x, int64_t n, float* y, int64_t ldy, MatmulScratch& scratch,
                     const ParallelFor& par) {
  if (auto st = detail::check_matrix(w); !st) return st.error();
  if (n < 0) return make_error(Errc::invalid_argument, "matmul: negative token count");
  if (n == 0 || w.rows == 0) return {};
  if (!x || !y) return make_error(Errc::invalid_argument, "matmul: null pointer");
  if (ldy < w.rows) return make_error(Errc::invalid_argument, "matmul: ldy is smaller than the row count");
  if (auto st = quantize_activations(w.type, x, n, w.cols, scratch, par); !st) return st.error();
  return matmul_quantized(w, n, y, ldy, scratch, par);
}

}  // namespace v0
}  // namespace tinyslm

#undef TINYSLM_TARGET_AVX2
#undef TINYSLM_TARGET_AVX512
#undef TINYSLM_TARGET_NEON
