// tinyslm ops: the element-wise and attention kernels of the forward pass (kernels layer).
//
// RMSNorm / LayerNorm, RoPE (normal and NeoX, frequency base, linear scaling, per-pair
// frequency factors), softmax, SwiGLU / GeGLU, soft-capping, and causal attention over an
// F16 KV cache with GQA and a sliding window. Each kernel is plain scalar code written so the
// compiler vectorises it; the hot ones are compiled a second and third time for AVX2 and
// AVX-512 (function target attributes) and picked at run time from active_simd_level() (core.hpp,
// the resolver matmul uses too: avx512 -> AVX-512, avx2 / avxvnni -> AVX2, any other -> scalar),
// so one binary runs anywhere.
// Every reduction has a fixed order: results do not depend on the number of threads.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core.hpp"

#if defined(TINYSLM_ARCH_X86) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define TINYSLM_OPS_X86 1
#define TINYSLM_OPS_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TINYSLM_OPS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#endif
#if defined(__GNUC__) || defined(__clang__)
#define TINYSLM_OPS_INLINE __attribute__((always_inline)) inline
#else
#define TINYSLM_OPS_INLINE inline
#endif

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace ops {

namespace detail {

inline uint32_t f32_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// x rounded to the nearest fp16 value (ties to even), kept as a float. Exact for the fp16
// normal range, which is all attention inputs use; branch-free so it vectorises.
TINYSLM_OPS_INLINE float round_to_f16(float x) {
  uint32_t u = f32_bits(x);
  u += 0xfffu + ((u >> 13) & 1u);
  return bits_f32(u & 0xffffe000u);
}

// exp(x) for float, branch-free (vectorises): 2^n * p(r) with x = n ln2 + r, |r| <= ln2/2,
// p a degree-6 polynomial; relative error below 2 ulp on [-87, 88], 0 below -87.
TINYSLM_OPS_INLINE float exp_f32(float x) {
  const float hi = 88.3762626647949f, lo = -87.3365447505531f;
  const bool underflow = x < lo;
  x = x > hi ? hi : (x < lo ? lo : x);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const int32_t e = static_cast<int32_t>(n);
  const float scale = bits_f32(static_cast<uint32_t>(e + 127) << 23);
  const float out = p * scale;
  return underflow ? 0.0f : out;
}

TINYSLM_OPS_INLINE float tanh_f32(float x) {
  // tanh(x) = 1 - 2 / (exp(2x) + 1), saturating cleanly for large |x|
  const float e = exp_f32(2.0f * x);
  return 1.0f - 2.0f / (e + 1.0f);
}

// ---- bodies compiled once per instruction set ----

TINYSLM_OPS_INLINE void silu_mul_body(const float* g, const float* u, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] / (1.0f + exp_f32(-g[i])) * u[i];
}

TINYSLM_OPS_INLINE void gelu_mul_body(const float* g, const float* u, float* out, int64_t n) {
  const float c = 0.79788456080286535587989211986876f;  // sqrt(2/pi)
  for (int64_t i = 0; i < n; ++i) {
    const float x = g[i];
    const float t = tanh_f32(c * x * (1.0f + 0.044715f * x * x));
    out[i] = 0.5f * x * (1.0f + t) * u[i];
  }
}

// s[j] = sum_d q[d] * kt[d][j]: one query against keys [0, n) stored transposed (rows of
// ld floats, readable up to 64 past n). Blocks of 64 keys stay in registers over d.
TINYSLM_OPS_INLINE void scores_body(const float* q, const float* kt, int64_t ld, int64_t hd,
                                    int64_t n, float* s) {
  constexpr int64_t kB = 64;
  for (int64_t jb = 0; jb < n; jb += kB) {
    float acc[kB] = {};
    for (int64_t d = 0; d < hd; ++d) {
      const float qd = q[d];
      const float* row = kt + d * ld + jb;
      for (int64_t j = 0; j < kB; ++j) acc[j] += qd * row[j];
    }
    const int64_t m = n - jb < kB ? n - jb : kB;
    for (int64_t j = 0; j < m; ++j) s[jb + j] = acc[j];
  }
}

// Four queries at once (prefill): s[r * ss + j] = sum_d q[r * hd + d] * kt[d][j]. Each key
// row is loaded once for the four; the same sums in the same order as scores_body.
TINYSLM_OPS_INLINE void scores4_body(const float* q, int64_t hd, const float* kt, int64_t ld, int64_t n,
                                     float* s, int64_t ss) {
  constexpr int64_t kB = 32;
  for (int64_t jb = 0; jb < n; jb += kB) {
    float acc[4][kB] = {};
    for (int64_t d = 0; d < hd; ++d) {
      const float* row = kt + d * ld + jb;
      for (int r = 0; r < 4; ++r) {
        const float qd = q[r * hd + d];
        for (int64_t j = 0; j < kB; ++j) acc[r][j] += qd * row[j];
      }
    }
    const int64_t m = n - jb < kB ? n - jb : kB;
    for (int r = 0; r < 4; ++r)
      for (int64_t j = 0; j < m; ++j) s[r * ss + jb + j] = acc[r][j];
  }
}

// Four queries at once: out[r][d] = sum_j p[r * ps + j] * v[j][d] (p is zero outside a
// query's window, which adds exact zeros).
template <int64_t HD>
TINYSLM_OPS_INLINE void mix4_fixed(const float* p, int64_t ps, const float* v, int64_t n, float* out,
                                   int64_t os) {
  float acc[4][HD] = {};
  for (int64_t j = 0; j < n; ++j) {
    const float* row = v + j * HD;
    for (int r = 0; r < 4; ++r) {
      const float pj = p[r * ps + j];
      for (int64_t d = 0; d < HD; ++d) acc[r][d] += pj * row[d];
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int64_t d = 0; d < HD; ++d) out[r * os + d] = acc[r][d];
}

TINYSLM_OPS_INLINE void mix4_body(const float* p, int64_t ps, const float* v, int64_t hd, int64_t n,
                                  float* out, int64_t os) {
  if (hd == 64) return mix4_fixed<64>(p, ps, v, n, out, os);
  for (int r = 0; r < 4; ++r) {
    float* o = out + r * os;
    for (int64_t d = 0; d < hd; ++d) o[d] = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      const float pj = p[r * ps + j];
      const float* row = v + j * hd;
      for (int64_t d = 0; d < hd; ++d) o[d] += pj * row[d];
    }
  }
}

// s[j] = q . k[j] for keys stored row by row (decode: one query, no transposition). Each
// dot sums 16 lanes, then folds them in a fixed order.
TINYSLM_OPS_INLINE void scores_rows_body(const float* q, const float* k, int64_t hd, int64_t n, float* s) {
  for (int64_t j = 0; j < n; ++j) {
    const float* row = k + j * hd;
    float acc[16] = {};
    int64_t d = 0;
    for (; d + 16 <= hd; d += 16)
      for (int l = 0; l < 16; ++l) acc[l] += q[d + l] * row[d + l];
    for (int l = 0; d < hd; ++d, ++l) acc[l] += q[d] * row[d];
    for (int w = 8; w >= 1; w /= 2)
      for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
    s[j] = acc[0];
  }
}

// out[d] = sum_j p[j] * v[j][d], in order of j; the accumulators stay in registers for the
// common head sizes.
template <int64_t HD>
TINYSLM_OPS_INLINE void mix_values_fixed(const float* p, const float* v, int64_t n, float* out) {
  float acc[HD] = {};
  for (int64_t j = 0; j < n; ++j) {
    const float pj = p[j];
    const float* row = v + j * HD;
    for (int64_t d = 0; d < HD; ++d) acc[d] += pj * row[d];
  }
  for (int64_t d = 0; d < HD; ++d) out[d] = acc[d];
}

TINYSLM_OPS_INLINE void mix_values_body(const float* p, const float* v, int64_t hd, int64_t n,
                                        float* out) {
  if (hd == 64) return mix_values_fixed<64>(p, v, n, out);
  if (hd == 128) return mix_values_fixed<128>(p, v, n, out);
  for (int64_t d = 0; d < hd; ++d) out[d] = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    const float pj = p[j];
    const float* row = v + j * hd;
    for (int64_t d = 0; d < hd; ++d) out[d] += pj * row[d];
  }
}

// Sum of x[0, n) in double, over 16 lanes folded in a fixed order (vectorises; the order
// depends only on n).
TINYSLM_OPS_INLINE double sum_lanes(const float* x, int64_t n) {
  double acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] += static_cast<double>(x[i + l]);
  for (int l = 0; i < n; ++i, ++l) acc[l] += static_cast<double>(x[i]);
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

TINYSLM_OPS_INLINE float max_lanes(const float* x, int64_t n) {
  float acc[16];
  for (int l = 0; l < 16; ++l) acc[l] = -INFINITY;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] = x[i + l] > acc[l] ? x[i + l] : acc[l];
  for (int l = 0; i < n; ++i, ++l) acc[l] = x[i] > acc[l] ? x[i] : acc[l];
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] = acc[l + w] > acc[l] ? acc[l + w] : acc[l];
  return acc[0];
}

// Scale, optional soft-cap and exp(s - max) of s[0, n) in place; returns 1 / the sum (summed in
// double), the factor that normalises them. Both softmaxes of attention start here.
TINYSLM_OPS_INLINE float softmax_exp_body(float* s, int64_t n, float scale, float softcap) {
  if (softcap > 0.0f) {
    const float inv = 1.0f / softcap;
    for (int64_t j = 0; j < n; ++j) s[j] = softcap * tanh_f32(s[j] * scale * inv);
  } else {
    for (int64_t j = 0; j < n; ++j) s[j] *= scale;
  }
  const float mx = max_lanes(s, n);
  for (int64_t j = 0; j < n; ++j) s[j] = exp_f32(s[j] - mx);
  return static_cast<float>(1.0 / sum_lanes(s, n));
}

// Softmax of s[0, n) after scale and optional soft-cap; the probabilities are rounded to
// fp16 as llama.cpp's F16-cache attention does.
TINYSLM_OPS_INLINE void softmax_body(float* s, int64_t n, float scale, float softcap) {
  const float inv = softmax_exp_body(s, n, scale, softcap);
  for (int64_t j = 0; j < n; ++j) s[j] = round_to_f16(s[j] * inv);
}

// Sum of squares in double over 16 lanes (RMSNorm).
TINYSLM_OPS_INLINE double sum_squares_body(const float* x, int64_t n) {
  double acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] += static_cast<double>(x[i + l]) * static_cast<double>(x[i + l]);
  for (int l = 0; l < 16 && i < n; ++i, ++l) acc[l] += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

#define TINYSLM_OPS_VARIANTS(name, params, args)                                  \
  inline void name##_scalar params { name##_body args; }                          \
  TINYSLM_OPS_VARIANT_X86(name, params, args)                                     \
  inline void name params {                                                       \
    TINYSLM_OPS_DISPATCH_X86(name, args)                                          \
    name##_scalar args;                                                           \
  }
#define TINYSLM_OPS_VARIANTS_R(ret, name, params, args)                         \
  inline ret name##_scalar params { return name##_body args; }                   \
  TINYSLM_OPS_VARIANT_X86_R(ret, name, params, args)                             \
  inline ret name params {                                                       \
    TINYSLM_OPS_DISPATCH_X86_R(name, args)                                       \
    return name##_scalar args;                                                   \
  }
#if defined(TINYSLM_OPS_X86)
#define TINYSLM_OPS_VARIANT_X86_R(ret, name, params, args)                        \
  TINYSLM_OPS_AVX2 inline ret name##_avx2 params { return name##_body args; }     \
  TINYSLM_OPS_AVX512 inline ret name##_avx512 params { return name##_body args; }
#define TINYSLM_OPS_DISPATCH_X86_R(name, args)             \
  switch (active_x86_width()) {                            \
    case 2: return name##_avx512 args;                     \
    case 1: return name##_avx2 args;                       \
    default: break;                                        \
  }
#define TINYSLM_OPS_VARIANT_X86(name, params, args)                   \
  TINYSLM_OPS_AVX2 inline void name##_avx2 params { name##_body args; } \
  TINYSLM_OPS_AVX512 inline void name##_avx512 params { name##_body args; }
#define TINYSLM_OPS_DISPATCH_X86(name, args)                 \
  switch (active_x86_width()) {                              \
    case 2: name##_avx512 args; return;                      \
    case 1: name##_avx2 args; return;                        \
    default: break;                                          \
  }
#else
#define TINYSLM_OPS_VARIANT_X86(name, params, args)
#define TINYSLM_OPS_DISPATCH_X86(name, args)
#define TINYSLM_OPS_VARIANT_X86_R(ret, name, params, args)
#define TINYSLM_OPS_DISPATCH_X86_R(name, args)
#endif

TINYSLM_OPS_VARIANTS(silu_mul, (const float* g, const float* u, float* out, int64_t n),
                     (g, u, out, n))
TINYSLM_OPS_VARIANTS(gelu_mul, (const float* g, const float* u, float* out, int64_t n),
                     (g, u, out, n))
TINYSLM_OPS_VARIANTS(scores, (const float* q, const float* kt, int64_t ld, int64_t hd, int64_t n, float* s),
                     (q, kt, ld, hd, n, s))
TINYSLM_OPS_VARIANTS(scores_rows, (const float* q, const float* k, int64_t hd, int64_t n, float* s),
                     (q, k, hd, n, s))
TINYSLM_OPS_VARIANTS(scores4, (const float* q, int64_t hd, const float* kt, int64_t ld, int64_t n, float* s, int64_t ss),
                     (q, hd, kt, ld, n, s, ss))
TINYSLM_OPS_VARIANTS(mix4, (const float* p, int64_t ps, const float* v, int64_t hd, int64_t n, float* out, int64_t os),
                     (p, ps, v, hd, n, out, os))
TINYSLM_OPS_VARIANTS_R(double, sum_squares, (const float* x, int64_t n), (x, n))
TINYSLM_OPS_VARIANTS(mix_values, (const float* p, const float* v, int64_t hd, int64_t n, float* out),
                     (p, v, hd, n, out))
TINYSLM_OPS_VARIANTS(softmax, (float* s, int64_t n, float scale, float softcap), (s, n, scale, softcap))

#undef TINYSLM_OPS_VARIANTS
#undef TINYSLM_OPS_VARIANTS_R
#undef TINYSLM_OPS_VARIANT_X86
#undef TINYSLM_OPS_DISPATCH_X86
#undef TINYSLM_OPS_VARIANT_X86_R
#undef TINYSLM_OPS_DISPATCH_X86_R

// fp16 <-> fp32 rows (hardware conversion where available; identical results: both RNE).
inline void f16_to_f32_scalar(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}
inline void f32_to_f16_scalar(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}
#if defined(TINYSLM_OPS_X86)
TINYSLM_OPS_AVX2 inline void f16_to_f32_avx2(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}
TINYSLM_OPS_AVX2 inline void f32_to_f16_avx2(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}
#endif

#if defined(TINYSLM_OPS_X86)
// Decode, AVX-512: one head of one query straight from the F16 cache (keys and values read
// once, 2 bytes each, converted in registers). hk and hv multiples of 16, hv <= 128.
TINYSLM_OPS_AVX512 inline __m512 f16x16(const uint16_t* p) {
  return _mm512_maskz_cvtph_ps(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
TINYSLM_OPS_AVX512 inline void decode_head_avx512(const float* qh, const uint16_t* k, const uint16_t* v,
                                                  int64_t hk, int64_t hv, int64_t n, float scale,
                                                  float softcap, float* s, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t* kr = k + j * hk;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t d = 0; d < hk; d += 16)
      acc = _mm512_fmadd_ps(_mm512_loadu_ps(qh + d), f16x16(kr + d), acc);
    // Fold the 16 lanes in a fixed order (the zero-masked shuffles avoid GCC 12's
    // "may be used uninitialized" warnings from the unmasked intrinsics).
    acc = _mm512_add_ps(acc, _mm512_maskz_shuffle_f32x4(0xffff, acc, acc, 0x4E));
    acc = _mm512_add_ps(acc, _mm512_maskz_shuffle_f32x4(0xffff, acc, acc, 0xB1));
    acc = _mm512_add_ps(acc, _mm512_maskz_shuffle_ps(0xffff, acc, acc, 0x4E));
    acc = _mm512_add_ps(acc, _mm512_maskz_shuffle_ps(0xffff, acc, acc, 0xB1));
    s[j] = _mm512_cvtss_f32(acc);
  }
  softmax_body(s, n, scale, softcap);
  __m512 o[8];
  const int64_t nb = hv / 16;
  for (int64_t b = 0; b < nb; ++b) o[b] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const __m512 pj = _mm512_set1_ps(s[j]);
    const uint16_t* vr = v + j * hv;
    for (int64_t b = 0; b < nb; ++b)
      o[b] = _mm512_fmadd_ps(pj, f16x16(vr + 16 * b), o[b]);
  }
  for (int64_t b = 0; b < nb; ++b) _mm512_storeu_ps(out + 16 * b, o[b]);
}
#endif

}  // namespace detail

inline void f16_to_f32(const uint16_t* src, float* dst, int64_t n) {
#if defined(TINYSLM_OPS_X86)
  if (active_x86_width() >= 1) return detail::f16_to_f32_avx2(src, dst, n);
#endif
  detail::f16_to_f32_scalar(src, dst, n);
}
inline void f32_to_f16(const float* src, uint16_t* dst, int64_t n) {
#if defined(TINYSLM_OPS_X86)
  if (active_x86_width() >= 1) return detail::f32_to_f16_avx2(src, dst, n);
#endif
  detail::f32_to_f16_scalar(src, dst, n);
}

// ---------------------------------------------------------------------------------------
// Norms

// y = x / sqrt(mean(x^2) + eps) * w   (w may be null: no weight). y may alias x.
inline void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps) {
  const double sum = detail::sum_squares(x, n);
  const float scale = 1.0f / std::sqrt(static_cast<float>(sum / static_cast<double>(n)) + eps);
  if (w) {
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] * scale) * w[i];
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale;
  }
}

// y = (x - mean) / sqrt(var + eps) * w + b   (w, b may be null). y may alias x.
inline void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t n, float eps) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const float mean = static_cast<float>(sum / static_cast<double>(n));
  double var = 0.0;
  for (int64_t i = 0; i < n; ++i) var += static_cast<double>(x[i] - mean) * (x[i] - mean);
  const float scale = 1.0f / std::sqrt(static_cast<float>(var / static_cast<double>(n)) + eps);
  for (int64_t i = 0; i < n; ++i) {
    float v = (x[i] - mean) * scale;
    if (w) v *= w[i];
    if (b) v += b[i];
    y[i] = v;
  }
}

// ---------------------------------------------------------------------------------------
// RoPE

enum class RopeLayout : uint8_t { normal, neox };

// cos/sin of the n_rot/2 rotation angles at `pos`, interleaved: cs[2i] = cos, cs[2i+1] = sin.
// theta_i = pos * freq_scale * base^(-2i/n_rot) / freq_factors[i]; the power is built by
// repeated multiplication in float, as llama.cpp does, so the angles match it closely.
inline void rope_angles(int64_t pos, int64_t n_rot, float base, float freq_scale,
                        const float* freq_factors, float* cs) {
  const float theta_scale = std::pow(base, -2.0f / static_cast<float>(n_rot));
  float theta = static_cast<float>(pos);
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    const float ff = freq_factors ? freq_factors[i] : 1.0f;
    const float t = freq_scale * (theta / ff);
    cs[2 * i] = std::cos(t);
    cs[2 * i + 1] = std::sin(t);
    theta *= theta_scale;
  }
}

// Rotates the first n_rot values of each of n_heads heads (head h at x + h * head_dim).
inline void rope_apply(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot,
                       const float* cs, RopeLayout layout) {
  const int64_t half = n_rot / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    if (layout == RopeLayout::normal) {
      for (int64_t i = 0; i < half; ++i) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * c - b * s;
        v[2 * i + 1] = a * s + b * c;
      }
    } else {
      for (int64_t i = 0; i < half; ++i) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = a * s + b * c;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Activations, softmax, soft-capping

// out = silu(g) * u  (SwiGLU). out may alias g or u.
inline void silu_mul(const float* g, const float* u, float* out, int64_t n) { detail::silu_mul(g, u, out, n); }
// out = gelu_tanh(g) * u  (GeGLU). out may alias g or u.
inline void gelu_mul(const float* g, const float* u, float* out, int64_t n) { detail::gelu_mul(g, u, out, n); }

// In-place softmax (max-subtracted; sum in double).
inline void softmax(float* x, int64_t n) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

// x = cap * tanh(x / cap)
inline void soft_cap(float* x, int64_t n, float cap) {
  const float inv = 1.0f / cap;
  for (int64_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] * inv);
}

inline void add(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}
inline void scale(float* y, float s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= s;
}

// ---------------------------------------------------------------------------------------
// Attention over an F16 KV cache

struct AttentionShape {
  int64_t n_head = 0, n_head_kv = 0;
  int64_t head_dim_k = 0, head_dim_v = 0;
  float scale = 1.0f;     // multiplies Q.K
  float softcap = 0.0f;   // 0 = off
  int64_t n_swa = 0;      // 0 = full causal attention; else p - q < n_swa
};

// Scratch owned by the caller, sized once for a context (see reserve()).
struct AttentionScratch {
  AlignedBuffer<float> kt;    // [n_head_kv][head_dim_k][n_ctx]  keys, transposed, f32
  AlignedBuffer<float> vf;    // [n_head_kv][n_ctx][head_dim_v]  values, f32
  AlignedBuffer<float> rows;  // per thread: scores[n_ctx] + q[head_dim_k]
  int64_t n_ctx = 0, n_threads = 0, row_stride = 0;
  int64_t group = 0;  // quantized cache: most heads a row serves at once (kv_quant.hpp)

  // Floats of one thread's row. F16 path: 4 query rows of scores, q and output. Quantized
  // cache: the scores, q blocks and sums of a whole GQA group (plus one f16 row of a mixed cache).
  static int64_t row_floats(const AttentionShape& a, int64_t n_ctx16, bool f32_copies) {
    const int64_t hk = a.head_dim_k, hv = a.head_dim_v;
    if (f32_copies) return (4 * n_ctx16 + 4 * hk + 4 * hv + 15) / 16 * 16;
    const int64_t g = quant_group(a) * 4;  // 4 queries of a prefill block (kv_quant.hpp kQueryBlock)
    return (g * n_ctx16 + 2 * g * hk + 2 * hk + g * hv + hv + 15) / 16 * 16;
  }
  static int64_t quant_group(const AttentionShape& a) { return (a.n_head + a.n_head_kv - 1) / a.n_head_kv; }

  // f32_copies: the kt / vf copies of the F16 path (a quantized cache needs rows only).
  [[nodiscard]] bool reserve(const AttentionShape& a, int64_t n_ctx_, int n_threads_, bool f32_copies = true) {
    n_ctx = (n_ctx_ + 15) / 16 * 16;
    n_threads = n_threads_;
    row_stride = row_floats(a, n_ctx, f32_copies);
    group = quant_group(a);
    if (!f32_copies) return rows.allocate(static_cast<size_t>(row_stride * n_threads));
    // keys are read in blocks of 64 past the last one: pad
    return kt.allocate(static_cast<size_t>(a.n_head_kv * a.head_dim_k * n_ctx + 64)) &&
           vf.allocate(static_cast<size_t>(a.n_head_kv * n_ctx * a.head_dim_v)) &&
           rows.allocate(static_cast<size_t>(row_stride * n_threads));
  }
};

namespace detail {

// One call of attention(): its arguments and the paths it can take.
struct AttentionCall {
  const AttentionShape& a;
  const float* q;
  int64_t q_stride, n_tokens, pos0;
  const uint16_t* k;
  const uint16_t* v;
  int64_t cache_ctx;
  float* out;
  int64_t out_stride;
  AttentionScratch& scratch;
  const ParallelFor& par;

  int64_t hk() const { return a.head_dim_k; }
  int64_t hv() const { return a.head_dim_v; }
  int64_t group() const { return a.n_head / a.n_head_kv; }
  int64_t n_kv() const { return pos0 + n_tokens; }
  // The oldest position query position p can see.
  int64_t window(int64_t p) const { return a.n_swa > 0 && p - a.n_swa + 1 > 0 ? p - a.n_swa + 1 : 0; }
  // Q rounded to fp16, as llama.cpp multiplies it by the F16 cache in F16.
  void round_q(float* qh, int64_t h, int64_t i) const {
    const float* qi = q + i * q_stride + h * hk();
    for (int64_t d = 0; d < hk(); ++d) qh[d] = round_to_f16(qi[d]);
  }

#if defined(TINYSLM_OPS_X86)
  // Decode on AVX-512: one (head, query) per work item, reading the F16 cache directly.
  void decode_avx512() {
    par([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(a.n_head * n_tokens, t, nt, 1, &b, &e);
      float* s = scratch.rows.data() + t * scratch.row_stride;
      float* qh = s + scratch.n_ctx;
      for (int64_t w = b; w < e; ++w) {
        const int64_t h = w / n_tokens, i = w % n_tokens, g = h / group();
        const int64_t p = pos0 + i, lo = window(p), n = p + 1 - lo;
        round_q(qh, h, i);
        decode_head_avx512(qh, k + (g * cache_ctx + lo) * hk(), v + (g * cache_ctx + lo) * hv(), hk(), hv(), n,
                           a.scale, a.softcap, s, out + i * out_stride + h * hv());
      }
    });
  }
#endif

  // Decode: one work item per KV head. Its keys and values are converted to f32 rows once and
  // shared by the heads of its group; then scores, softmax, weighted sum of the values.
  void decode() {
    const int64_t ld = scratch.n_ctx, first = window(pos0);
    par([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(a.n_head_kv, t, nt, 1, &b, &e);
      float* s = scratch.rows.data() + t * scratch.row_stride;
      float* qh = s + scratch.n_ctx;
      for (int64_t g = b; g < e; ++g) {
        float* kr = scratch.kt.data() + g * hk() * ld;  // [position][d] here
        float* vr = scratch.vf.data() + g * ld * hv();
        f16_to_f32(k + (g * cache_ctx + first) * hk(), kr + first * hk(), (n_kv() - first) * hk());
        f16_to_f32(v + (g * cache_ctx + first) * hv(), vr + first * hv(), (n_kv() - first) * hv());
        for (int64_t i = 0; i < n_tokens; ++i) {
          const int64_t p = pos0 + i, lo = window(p), n = p + 1 - lo;
          for (int64_t h = g * group(); h < (g + 1) * group(); ++h) {
            round_q(qh, h, i);
            scores_rows(qh, kr + lo * hk(), hk(), n, s);
            softmax(s, n, a.scale, a.softcap);
            mix_values(s, vr + lo * hv(), hv(), n, out + i * out_stride + h * hv());
          }
        }
      }
    });
  }

  // Prefill, step 1: keys to f32, transposed (so scores are row-wise multiply-adds), values to f32.
  void prefill_convert() {
    const int64_t ld = scratch.n_ctx, first = window(pos0), span = n_kv() - first;
    par([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(a.n_head_kv * span, t, nt, 16, &b, &e);
      float tmp[1024];
      for (int64_t w = b; w < e; ++w) {
        const int64_t g = w / span, j = first + w % span;
        f16_to_f32(k + (g * cache_ctx + j) * hk(), tmp, hk());
        float* kt = scratch.kt.data() + g * hk() * ld;
        for (int64_t d = 0; d < hk(); ++d) kt[d * ld + j] = tmp[d];
        f16_to_f32(v + (g * cache_ctx + j) * hv(), scratch.vf.data() + (g * ld + j) * hv(), hv());
      }
    });
  }

  // Prefill, step 2: one (head, block of 4 queries) per work item; the block shares its key and
  // value loads, each query masked to its own causal window.
  void prefill_blocks() {
    const int64_t ld = scratch.n_ctx, n_blocks = (n_tokens + 3) / 4, kd = hk(), vd = hv();
    par([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(a.n_head * n_blocks, t, nt, 1, &b, &e);
      float* s = scratch.rows.data() + t * scratch.row_stride;  // 4 rows of n_ctx
      float* qh = s + 4 * scratch.n_ctx;                          // 4 rows of head_dim_k
      float* o4 = qh + 4 * kd;                                    // 4 rows of head_dim_v
      for (int64_t w = b; w < e; ++w) {
        const int64_t h = w / n_blocks, i0 = (w % n_blocks) * 4, g = h / group();
        const int64_t count = n_tokens - i0 < 4 ? n_tokens - i0 : 4;
        const int64_t lo = window(pos0 + i0), n = pos0 + i0 + count - lo;
        for (int r = 0; r < 4; ++r) round_q(qh + r * kd, h, i0 + (r < count ? r : count - 1));
        scores4(qh, kd, scratch.kt.data() + g * kd * ld + lo, ld, n, s, scratch.n_ctx);
        for (int64_t r = 0; r < 4; ++r) {
          float* sr = s + r * scratch.n_ctx;
          const int64_t p = pos0 + i0 + (r < count ? r : count - 1);
          const int64_t a0 = window(p) - lo, a1 = p + 1 - lo;  // this query's keys [a0, a1)
          softmax(sr + a0, a1 - a0, a.scale, a.softcap);
          for (int64_t j = 0; j < a0; ++j) sr[j] = 0.0f;
          for (int64_t j = a1; j < n; ++j) sr[j] = 0.0f;
        }
        mix4(s, scratch.n_ctx, scratch.vf.data() + (g * ld + lo) * vd, vd, n, o4, vd);
        for (int64_t r = 0; r < count; ++r)
          std::memcpy(out + (i0 + r) * out_stride + h * vd, o4 + r * vd, static_cast<size_t>(vd) * sizeof(float));
      }
    });
  }
};

}  // namespace detail

// Causal attention for n_tokens queries at positions pos0 .. pos0 + n_tokens - 1.
//   q:   row i (stride q_stride) holds n_head heads of head_dim_k values (after RoPE)
//   k,v: this layer's cache, [n_head_kv][cache_ctx][head_dim], positions 0 .. pos0+n_tokens-1 filled
//   out: row i (stride out_stride) receives n_head heads of head_dim_v values
// Each (head, query) is computed whole by one thread, so the thread count never changes a result.
inline void attention(const AttentionShape& a, const float* q, int64_t q_stride, int64_t n_tokens,
                      int64_t pos0, const uint16_t* k, const uint16_t* v, int64_t cache_ctx,
                      float* out, int64_t out_stride, AttentionScratch& scratch,
                      const ParallelFor& par) {
  detail::AttentionCall call{a, q, q_stride, n_tokens, pos0, k, v, cache_ctx, out, out_stride, scratch, par};
#if defined(TINYSLM_OPS_X86)
  const int64_t hk = a.head_dim_k, hv = a.head_dim_v;
  if (n_tokens <= 2 && active_x86_width() == 2 && hk % 16 == 0 && hv % 16 == 0 && hv <= 128)
    return call.decode_avx512();
#endif
  if (n_tokens <= 2) return call.decode();
  call.prefill_convert();
  call.prefill_blocks();
}

}  // namespace ops
}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#undef TINYSLM_OPS_INLINE
#if defined(TINYSLM_OPS_X86)
#undef TINYSLM_OPS_AVX2
#undef TINYSLM_OPS_AVX512
#undef TINYSLM_OPS_X86
#endif
