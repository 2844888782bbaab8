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
// matmul_many() does that for a list of outputs of one input, and with one token spreads the
// rows of all of them over the threads in a single fork-join.
//
// Paths: scalar (always), AVX2+FMA+F16C and AVX-VNNI (kernels_avx2.hpp), AVX-512 BW/VL/DQ with
// VNNI (kernels_avx512.hpp), NEON with dotprod (kernels_neon.hpp), Highway static dispatch
// (kernels_hwy.hpp, when TINYSLM_USE_HIGHWAY). Which one runs is active_simd_level() (core.hpp:
// set_simd_level(), else TINYSLM_SIMD=scalar|avx2|avxvnni|avx512|neon|highway, else the best);
// block_kernels, one row per weight type, holds each type's kernel per path.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string_view>

#include "core.hpp"
#include "gguf.hpp"
#include "quant.hpp"
#include "kernels_scalar.hpp"
#include "kernels_avx2.hpp"
#include "kernels_avx512.hpp"
#include "kernels_neon.hpp"
#include "kernels_hwy.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

namespace detail {

// ---------------------------------------------------------------------------------------
// The block-type table, kernels half: per GGUF type id, the type's row of quant.hpp's
// block_type_table (storage, activation format, reference conversions) and its matmul kernel
// per SimdLevel: rows[scalar] is the reference, the others the fast paths; nullptr means the
// scalar one (not a neighbouring SIMD path: the x86 GEMM tiles are built for one path).

struct BlockKernels {
  const QuantTraits* format = &kUnknownBlockType;
  RowsFn rows[kSimdLevelCount] = {};
};

template <TensorType T>
constexpr BlockKernels make_block_kernels() {
  BlockKernels k;
  k.format = &block_type_table[static_cast<uint32_t>(T)];
  k.rows[static_cast<int>(SimdLevel::scalar)] = &rows_scalar<T>;
#if defined(TINYSLM_KERNELS_X86)
  k.rows[static_cast<int>(SimdLevel::avx2)] = &x86::rows_avx2<T>;
  k.rows[static_cast<int>(SimdLevel::avxvnni)] = &x86::rows_avxvnni<T>;
  k.rows[static_cast<int>(SimdLevel::avx512)] = &x86::rows_avx512<T>;
#endif
#if defined(TINYSLM_KERNELS_ARM)
  k.rows[static_cast<int>(SimdLevel::neon)] = &arm::rows_neon<T>;
#endif
#if defined(TINYSLM_USE_HIGHWAY)
  if constexpr (T != TensorType::F16 && T != TensorType::BF16)
    k.rows[static_cast<int>(SimdLevel::highway)] = &hwy_kernels::rows_highway<T>;
#endif
  return k;
}

inline constexpr BlockKernels block_kernel_list[] = {
    make_block_kernels<TensorType::F32>(),  make_block_kernels<TensorType::F16>(),
    make_block_kernels<TensorType::BF16>(), make_block_kernels<TensorType::Q4_0>(),
    make_block_kernels<TensorType::Q4_1>(), make_block_kernels<TensorType::Q5_0>(),
    make_block_kernels<TensorType::Q5_1>(), make_block_kernels<TensorType::Q8_0>(),
    make_block_kernels<TensorType::IQ4_NL>(), make_block_kernels<TensorType::Q2_K>(),
    make_block_kernels<TensorType::Q3_K>(), make_block_kernels<TensorType::Q4_K>(),
    make_block_kernels<TensorType::Q5_K>(), make_block_kernels<TensorType::Q6_K>(),
    make_block_kernels<TensorType::IQ4_XS>(), make_block_kernels<TensorType::IQ3_S>(),
};

constexpr auto make_block_kernel_table() {
  std::array<BlockKernels, kTensorTypeIdLimit> t{};
  for (const BlockKernels& k : block_kernel_list) t[static_cast<uint32_t>(k.format->type)] = k;
  return t;
}
inline constexpr auto block_kernels_table = make_block_kernel_table();
inline constexpr BlockKernels kNoKernels{};

// The row of a type (no kernels for types matmul does not take).
constexpr const BlockKernels& block_kernels(TensorType t) {
  const auto id = static_cast<uint32_t>(t);
  return id < kTensorTypeIdLimit ? block_kernels_table[id] : kNoKernels;
}

// The kernel of weight type t on path `level` (nullptr: matmul does not take the type).
inline RowsFn rows_kernel(TensorType t, SimdLevel level) {
  const BlockKernels& k = block_kernels(t);
  if (RowsFn f = k.rows[static_cast<int>(level)]) return f;
  return k.rows[static_cast<int>(SimdLevel::scalar)];
}

}  // namespace detail

// Weight types matmul accepts.
inline bool matmul_supports(TensorType t) {
  return detail::block_kernels(t).rows[static_cast<int>(SimdLevel::scalar)] != nullptr;
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
  // Bytes reserve(n, k) allocates (for memory estimates): per row of k values padded to 256,
  // the int8 copy, the float copy, corr4 (k/4 words), da16/m16/sum16 (k/16 each), m32/da32
  // (k/32 each), and the row descriptor.
  static uint64_t reserve_bytes(int64_t n, int64_t k) {
    const uint64_t kp = static_cast<uint64_t>((k + 255) / 256 * 256), rows = static_cast<uint64_t>(n);
    return rows * (kp + 4 * kp + 4 * (kp / 4) + 3 * 4 * (kp / 16) + 2 * 4 * (kp / 32) + sizeof(detail::ActRow));
  }

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
    const int64_t nt = (n + detail::kTileTokens - 1) / detail::kTileTokens;
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
  const detail::TokenTile* tiles() const { return tiles_.data(); }
#endif
  // The token tiles of the last quantize_activations (nullptr where no path uses tiles).
  const detail::TokenTile* tiles_or_null() const {
#if defined(TINYSLM_KERNELS_X86)
    return tiles_.data();
#else
    return nullptr;
#endif
  }

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
  AlignedBuffer<detail::TokenTile> tiles_;
  int64_t tiles_n_ = 0, tiles_k_ = 0;
#endif
  int64_t cap_n_ = 0, cap_k_ = 0;
  int q_fmt_ = -1;
  int64_t q_n_ = 0, q_k_ = 0;
  int q_tiled_ = -1;
};

// Rows are handed to threads in multiples of this (the GEMM tile height).
inline constexpr int64_t kMatmulRowGrain = 16;

namespace detail {

// Row lengths must be whole blocks of the weight type and of its activation type.
inline Status check_cols(TensorType t, int64_t cols) {
  const QuantTraits& q = block_type(t);
  const int64_t act_block = q.act == ActFormat::q8_k ? 256 : 32;
  const int64_t need_block = q.integer_dot ? act_block : 1;
  if (cols % need_block != 0 || cols % static_cast<int64_t>(tensor_type_info(t).block_size) != 0)
    return make_error(Errc::invalid_argument, std::string("matmul: row length ") + std::to_string(cols) +
                                                  " is not a multiple of the " + tensor_type_name(t) + " block size");
  return {};
}

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

// Checks of one product y = W x (n tokens) shared by matmul and matmul_many.
inline Status check_product(const MatrixRef& w, int64_t n, const float* y, int64_t ldy) {
  if (auto st = check_matrix(w); !st) return st.error();
  if (n < 0) return make_error(Errc::invalid_argument, "matmul: negative token count");
  if (n == 0 || w.rows == 0) return {};
  if (!y) return make_error(Errc::invalid_argument, "matmul: null output");
  if (ldy < w.rows) return make_error(Errc::invalid_argument, "matmul: ldy is smaller than the row count");
  return {};
}

inline int64_t matrix_row_bytes(const MatrixRef& w) {
  uint64_t row_bytes = 0;
  return tensor_row_bytes(w.type, static_cast<uint64_t>(w.cols), &row_bytes) ? static_cast<int64_t>(row_bytes) : -1;
}

// Whether activation quantization takes the AVX2 code (bit-identical to the scalar one).
inline bool simd_quantize(SimdLevel level) {
  return level == SimdLevel::avx2 || level == SimdLevel::avx512 || level == SimdLevel::avxvnni;
}

// Quantizes the n rows of x into the scratch rows [0, n) for weights of format fmt.
inline void quantize_rows(MatmulScratch& scratch, ActFormat fmt, const float* x, int64_t n, int64_t cols,
                          bool simd, const ParallelFor& par) {
  // A few tokens (decode) are quantized on the calling thread: cheaper than waking the pool.
  if (n * cols <= 32768) {
    for (int64_t i = 0; i < n; ++i) scratch.quantize(fmt, i, x + i * cols, cols, simd);
    return;
  }
  par([&](int t, int nt) {
    int64_t b, e;
    ParallelFor::split(n, t, nt, 1, &b, &e);
    for (int64_t i = b; i < e; ++i) scratch.quantize(fmt, i, x + i * cols, cols, simd);
  });
}

// Builds the x86 GEMM token tiles when path `level` multiplies n tokens as a GEMM; returns
// whether it did.
inline Expected<bool> build_gemm_tiles(MatmulScratch& scratch, SimdLevel level, ActFormat fmt, int64_t n, int64_t cols,
                                       const ParallelFor& par) {
#if defined(TINYSLM_KERNELS_X86)
  // The GEMM kernels take the quantized tokens interleaved 8 at a time (AVX2: as a + 128).
  const bool avx2_tiles = level == SimdLevel::avx2 || level == SimdLevel::avxvnni;
  if (act_format_is_float(fmt) || !((level == SimdLevel::avx512 && n >= x86::kGemmMinTokens) ||
                                    (avx2_tiles && n >= x86::kGemmMinTokensAvx2)))
    return false;
  if (auto st = scratch.ensure_tiles(n, cols); !st) return st.error();
  const int64_t ntiles = (n + kTileTokens - 1) / kTileTokens;
  par([&](int t, int nt) {
    int64_t b, e;
    ParallelFor::split(ntiles, t, nt, 1, &b, &e);
    for (int64_t ti = b; ti < e; ++ti) scratch.build_tile(ti, n, cols, avx2_tiles);
  });
  return true;
#else
  (void)scratch, (void)level, (void)fmt, (void)n, (void)cols, (void)par;
  return false;
#endif
}

// Runs kernel f over all rows of w, handed out in chunks (multiples of kMatmulRowGrain) from a
// shared counter, so a thread slowed down by other work (or a small core) takes fewer; every
// row is computed the same way whichever thread takes it, so the result does not depend on
// the schedule.
inline void run_rows(RowsFn f, const MatrixRef& w, int64_t row_bytes, const ActRow* acts, const TokenTile* tiles,
                     int64_t n, float* y, int64_t ldy, const ParallelFor& par) {
  const int nthreads = par.n_threads < 1 ? 1 : par.n_threads;
  int64_t chunk = w.rows / (int64_t{8} * nthreads);
  chunk = chunk < kMatmulRowGrain ? kMatmulRowGrain : (chunk + kMatmulRowGrain - 1) / kMatmulRowGrain * kMatmulRowGrain;
  std::atomic<int64_t> next{0};
  par([&](int, int) {
    for (;;) {
      const int64_t b = next.fetch_add(chunk, std::memory_order_relaxed);
      if (b >= w.rows) break;
      const int64_t e = b + chunk < w.rows ? b + chunk : w.rows;
      f(w.data, row_bytes, w.cols, acts, tiles, n, y, ldy, b, e);
    }
  });
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
  detail::quantize_rows(scratch, fmt, x, n, cols, detail::simd_quantize(level), par);
  auto tiled = detail::build_gemm_tiles(scratch, level, fmt, n, cols, par);
  if (!tiled) return tiled.error();
  scratch.set_quantized(static_cast<int>(fmt), n, cols, *tiled ? static_cast<int>(level) : -1);
  return {};
}

// y[i * ldy + r] = sum_k W[r][k] * a[i][k] for the n activation rows last quantized into
// `scratch` by quantize_activations (n must match, and w's type must pair with the same
// activation type, and w.cols with the quantized row length).
inline Status matmul_quantized(const MatrixRef& w, int64_t n, float* y, int64_t ldy, const MatmulScratch& scratch,
                               const ParallelFor& par) {
  if (auto st = detail::check_product(w, n, y, ldy); !st) return st.error();
  if (n == 0 || w.rows == 0) return {};
  if (scratch.quantized_format() != static_cast<int>(detail::act_format_for(w.type)) || scratch.quantized_n() != n ||
      scratch.quantized_cols() != w.cols)
    return make_error(Errc::invalid_argument, std::string("matmul: the scratch does not hold ") + std::to_string(n) +
                                                  " activation rows of " + std::to_string(w.cols) + " values for " +
                                                  tensor_type_name(w.type) + " weights");
  const int64_t row_bytes = detail::matrix_row_bytes(w);
  if (row_bytes < 0) return make_error(Errc::invalid_argument, "matmul: bad row length");
  const SimdLevel level = active_simd_level();
  const bool tiled = scratch.quantized_tiled_level() == static_cast<int>(level);
  detail::run_rows(detail::rows_kernel(w.type, level), w, row_bytes, scratch.rows(), tiled ? scratch.tiles_or_null() : nullptr,
                   n, y, ldy, par);
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

// One product of matmul_many: y (rows of ldy floats) = w times the shared input; `name`
// prefixes its errors.
struct MatmulOut {
  MatrixRef w;
  float* y;
  int64_t ldy;
  std::string_view name = {};
};

namespace detail {

inline Error named(Error e, std::string_view name) { return name.empty() ? e : std::move(e.context(name)); }

// One token, several threads: x quantized once per activation format into scratch row
// `slot` of that format, then the rows of every output spread over the threads in one
// fork-join (chunks of multiples of kMatmulRowGrain taken from a shared counter).
// Most products of one matmul_many fork-join (an MoE decode step has 2 per selected expert).
inline constexpr size_t kMatmulManyMaxOuts = 64;

inline Status matmul_many_one_token(std::span<const MatmulOut> outs, const float* x, MatmulScratch& scratch,
                                    const ParallelFor& par) {
  constexpr size_t kMaxOuts = kMatmulManyMaxOuts;
  int slot[kMaxOuts];
  ActFormat formats[kMaxOuts];
  int n_formats = 0;
  bool any_float = false;
  for (size_t j = 0; j < outs.size(); ++j) {
    const ActFormat f = act_format_for(outs[j].w.type);
    int s = 0;
    while (s < n_formats && formats[s] != f) ++s;
    if (s == n_formats) formats[n_formats++] = f;
    slot[j] = s;
    any_float = any_float || act_format_is_float(f);
  }
  const int64_t cols = outs[0].w.cols;
  if (auto st = scratch.ensure(n_formats, cols, any_float); !st) return st.error();
  const SimdLevel level = active_simd_level();
  for (int s = 0; s < n_formats; ++s) scratch.quantize(formats[s], s, x, cols, simd_quantize(level));
  scratch.set_quantized(-1, 0, 0, -1);  // the rows hold several formats: no matmul_quantized after this
  RowsFn kernels[kMaxOuts];
  int64_t row_bytes[kMaxOuts];
  for (size_t j = 0; j < outs.size(); ++j) {
    kernels[j] = rows_kernel(outs[j].w.type, level);
    row_bytes[j] = matrix_row_bytes(outs[j].w);
  }
  // The rows of all outputs in chunks claimed from one counter (as run_rows does), so a thread
  // slowed by another process takes fewer and the others are not left waiting.
  int64_t chunk[kMaxOuts], first[kMaxOuts + 1];
  first[0] = 0;
  for (size_t j = 0; j < outs.size(); ++j) {
    chunk[j] = outs[j].w.rows / (int64_t{4} * par.n_threads);
    chunk[j] = chunk[j] < kMatmulRowGrain ? kMatmulRowGrain : (chunk[j] + kMatmulRowGrain - 1) / kMatmulRowGrain * kMatmulRowGrain;
    first[j + 1] = first[j] + (outs[j].w.rows + chunk[j] - 1) / chunk[j];
  }
  std::atomic<int64_t> next{0};
  par([&](int, int) {
    size_t j = 0;
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < first[outs.size()];
         c = next.fetch_add(1, std::memory_order_relaxed)) {
      while (c >= first[j + 1]) ++j;  // claims only grow: j never moves back
      const MatmulOut& o = outs[j];
      const int64_t b = (c - first[j]) * chunk[j], e = b + chunk[j] < o.w.rows ? b + chunk[j] : o.w.rows;
      kernels[j](o.w.data, row_bytes[j], cols, scratch.rows() + slot[j], nullptr, 1, o.y, o.ldy, b, e);
    }
  });
  return {};
}

}  // namespace detail

// y_j = W_j x for every output j: x (n rows of w.cols floats, all outputs have the same cols)
// is quantized ONCE per activation format, then: n == 1 and par has several threads -> the
// rows of ALL matrices are split over the threads in ONE fork-join; n > 1 -> each product as
// matmul does, reusing the quantized x. Bit-identical to calling matmul per output. Errors
// carry the output's name as context.
inline Status matmul_many(std::span<const MatmulOut> outs, const float* x, int64_t n, MatmulScratch& scratch,
                          ParallelFor par) {
  for (const MatmulOut& o : outs) {
    if (auto st = detail::check_product(o.w, n, o.y, o.ldy); !st) return detail::named(st.error(), o.name);
    if (o.w.cols != outs[0].w.cols)
      return detail::named(make_error(Errc::invalid_argument, "matmul_many: outputs of different row lengths (" +
                                                                  std::to_string(o.w.cols) + " vs " +
                                                                  std::to_string(outs[0].w.cols) + ")"),
                           o.name);
    if (n > 0 && o.w.rows > 0 && !x) return detail::named(make_error(Errc::invalid_argument, "matmul: null pointer"), o.name);
  }
  if (n == 0 || outs.empty()) return {};
  if (n == 1 && par.n_threads > 1 && outs.size() <= detail::kMatmulManyMaxOuts) return detail::matmul_many_one_token(outs, x, scratch, par);
  for (size_t j = 0; j < outs.size(); ++j) {
    const detail::ActFormat fmt = detail::act_format_for(outs[j].w.type);
    bool seen = false;  // an earlier output of this format did them all
    for (size_t i = 0; i < j && !seen; ++i) seen = detail::act_format_for(outs[i].w.type) == fmt;
    if (seen) continue;
    if (auto st = quantize_activations(outs[j].w.type, x, n, outs[j].w.cols, scratch, par); !st)
      return detail::named(st.error(), outs[j].name);
    for (size_t i = j; i < outs.size(); ++i) {
      if (detail::act_format_for(outs[i].w.type) != fmt) continue;
      if (auto st = matmul_quantized(outs[i].w, n, outs[i].y, outs[i].ldy, scratch, par); !st)
        return detail::named(st.error(), outs[i].name);
    }
  }
  return {};
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#undef TINYSLM_TARGET_AVX2
#undef TINYSLM_TARGET_AVX512
#undef TINYSLM_TARGET_NEON
#undef TINYSLM_X86_GEMV_BODY
