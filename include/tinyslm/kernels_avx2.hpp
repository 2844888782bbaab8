// tinyslm kernels, x86-64 256-bit paths: AVX2 (+FMA, F16C) and AVX-VNNI (the same kernels
// with 256-bit vpdpbusd, see dot4_u8s8). kernels_avx512.hpp builds on this file.
//
// Every function here carries a target attribute, so the header compiles without -march
// flags and kernels.hpp only calls a path after detect_cpu_features() said the CPU has it.
//
// Integer weights:
//  - GEMV, few tokens (n <= 8), for Q4_0/Q5_0/Q8_0/Q4_K/Q6_K: fused kernels that unpack each
//    block in registers and dot it with up to 4 tokens at a time. maddubs takes the unsigned
//    codes and the offset is removed exactly with the activation's sums of 16 (Q8_0: the sign
//    trick); AVX-VNNI does the same with vpdpbusd.
//  - The other types, and more tokens, go through the canonical decode of kernels_scalar.hpp
//    (SIMD for the common types, decode_chunk), one 512-value chunk of a row at a time in L1,
//    reused for up to 16 tokens.
//  - GEMM (n >= kGemmMinTokensAvx2): 8-row panels, maddubs or vpdpbusd on activations
//    a + 128 (panel8_kernel); with vpdpbusd nothing saturates, so Q8_0, IQ4_NL and IQ4_XS take it too.
//    gemm_panels is the panel driver shared with the AVX-512 GEMM.
// Float weights (F32/F16/BF16) use a 4-row x up-to-4-token dot-product tile (float_rows_t,
// shared with AVX-512).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels_scalar.hpp"

#if defined(TINYSLM_SIMD_X86)
#define TINYSLM_KERNELS_X86 1
#include <immintrin.h>

#define TINYSLM_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))

// GCC 12 warns about its own _mm512_undefined_* helpers once they are inlined here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace detail {
namespace x86 {

// Values decoded per chunk of a row (a multiple of 256, so K super-blocks are never split).
inline constexpr int64_t kChunk = 512;
// Token count from which the AVX-512 panel GEMM beats running the GEMV kernel per token.
inline constexpr int64_t kGemmMinTokens = 4;
// On AVX2 the panel GEMM takes over from the fused GEMV above this many tokens.
inline constexpr int64_t kGemmMinTokensAvx2 = 9;

// ---------------------------------------------------------------------------------------
// SIMD canonical decode (AVX2 instructions; inlined into the AVX-512 kernels as well).

TINYSLM_TARGET_AVX2 inline float f16_scalar(uint16_t h) { return _cvtsh_ss(h); }

// 0xFF in byte i where bit i of `bits` is set.
TINYSLM_TARGET_AVX2 inline __m256i bits_to_bytes(uint32_t bits) {
  const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), shuf);
  v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
}

// The 32 nibbles of a 16-byte legacy block in natural order (low nibbles first).
TINYSLM_TARGET_AVX2 inline __m256i nibbles32(const uint8_t* qs) {
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i m4 = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(x, 4), m4), _mm_and_si128(x, m4));
}

// Legacy blocks of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL): the 32 weights, the block scale
// for both groups of 16, and the min (Q4_1 / Q5_1).
template <TensorType T>
TINYSLM_TARGET_AVX2 __attribute__((always_inline)) inline void decode_legacy_avx2(const uint8_t* blk, int8_t* o,
                                                                                 float* s, float* mw) {
  __m256i v;
  if constexpr (T == TensorType::Q8_0) {
    v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(reinterpret_cast<const BlockQ8_0*>(blk)->qs));
  } else if constexpr (T == TensorType::IQ4_NL) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
    v = _mm256_shuffle_epi8(table, nibbles32(reinterpret_cast<const BlockIQ4_NL*>(blk)->qs));
  } else if constexpr (T == TensorType::Q4_0) {
    v = _mm256_sub_epi8(nibbles32(reinterpret_cast<const BlockQ4_0*>(blk)->qs), _mm256_set1_epi8(8));
  } else if constexpr (T == TensorType::Q4_1) {
    v = nibbles32(reinterpret_cast<const BlockQ4_1*>(blk)->qs);
  } else {  // Q5_0 / Q5_1: the fifth bit of value i is bit i of qh
    using B = std::conditional_t<T == TensorType::Q5_0, BlockQ5_0, BlockQ5_1>;
    const auto* b = reinterpret_cast<const B*>(blk);
    uint32_t qh;
    std::memcpy(&qh, b->qh, 4);
    v = _mm256_or_si256(nibbles32(b->qs), _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
    if constexpr (T == TensorType::Q5_0) v = _mm256_sub_epi8(v, _mm256_set1_epi8(16));
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), v);
  uint16_t d;
  std::memcpy(&d, blk, 2);  // every legacy block starts with its fp16 scale (then Q4_1 / Q5_1: the min)
  s[0] = s[1] = f16_scalar(d);
  if constexpr (T == TensorType::Q4_1 || T == TensorType::Q5_1) {
    uint16_t m;
    std::memcpy(&m, blk + 2, 2);
    mw[0] = f16_scalar(m);
  }
}

// Q4_K / Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins.
template <TensorType T>
TINYSLM_TARGET_AVX2 __attribute__((always_inline)) inline void decode_k4_avx2(const uint8_t* blk, int8_t* o, float* s,
                                                                             float* mw) {
  constexpr bool q5 = T == TensorType::Q5_K;
  using B = std::conditional_t<q5, BlockQ5_K, BlockQ4_K>;
  const auto* b = reinterpret_cast<const B*>(blk);
  const float d = f16_scalar(b->d), dmin = f16_scalar(b->dmin);
  uint8_t sc[8], mn[8];
  unpack_scales_k4(b->scales, sc, mn);
  const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
  __m256i hb = _mm256_setzero_si256();
  if constexpr (q5) hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qh));
  for (int c = 0; c < 4; ++c) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qs + 32 * c));
    __m256i lo = _mm256_and_si256(x, m4);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
    if constexpr (q5) {
      const __m256i blo = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c)), one);
      const __m256i bhi = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c + 1)), one);
      lo = _mm256_or_si256(lo, _mm256_slli_epi16(blo, 4));
      hi = _mm256_or_si256(hi, _mm256_slli_epi16(bhi, 4));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 64 * c), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 64 * c + 32), hi);
  }
  for (int g = 0; g < 8; ++g) {
    s[2 * g] = s[2 * g + 1] = d * static_cast<float>(sc[g]);
    mw[g] = -dmin * static_cast<float>(mn[g]);
  }
}

// Q6_K: 16 sub-blocks of 16 with int8 scales.
TINYSLM_TARGET_AVX2 __attribute__((always_inline)) inline void decode_q6_k_avx2(const uint8_t* blk, int8_t* o, float* s) {
  const auto* b = reinterpret_cast<const BlockQ6_K*>(blk);
  const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3), off = _mm256_set1_epi8(32);
  for (int h = 0; h < 2; ++h) {
    const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->ql + 64 * h));
    const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->ql + 64 * h + 32));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qh + 32 * h));
    const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
    const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
    const __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
    const __m256i h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
    int8_t* oh = o + 128 * h;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(oh), _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l0, m4), h0), off));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(oh + 32), _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l1, m4), h1), off));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(oh + 64),
                        _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h2), off));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(oh + 96),
                        _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h3), off));
  }
  const float d = f16_scalar(b->d);
  for (int g = 0; g < 16; ++g) s[g] = d * static_cast<float>(b->scales[g]);
}

// Q2_K / Q3_K: 2-bit codes (Q3_K: plus the hmask bit, minus 4), 16 sub-blocks of 16.
template <TensorType T>
TINYSLM_TARGET_AVX2 __attribute__((always_inline)) inline void decode_k23_avx2(const uint8_t* blk, int8_t* o, float* s,
                                                                              float* mw) {
  constexpr bool q3 = T == TensorType::Q3_K;
  using B = std::conditional_t<q3, BlockQ3_K, BlockQ2_K>;
  const auto* b = reinterpret_cast<const B*>(blk);
  const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1), four = _mm256_set1_epi8(4);
  __m256i hm = _mm256_setzero_si256();
  if constexpr (q3) hm = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->hmask));
  for (int h = 0; h < 2; ++h) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qs + 32 * h));
    for (int jj = 0; jj < 4; ++jj) {
      __m256i v = _mm256_and_si256(_mm256_srl_epi16(x, _mm_cvtsi32_si128(2 * jj)), m3);
      if constexpr (q3) {  // value = low two bits - 4, unless the hmask bit is set
        const __m256i hb = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(4 * h + jj)), one);
        v = _mm256_sub_epi8(_mm256_add_epi8(v, _mm256_slli_epi16(hb, 2)), four);
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 128 * h + 32 * jj), v);
    }
  }
  const float d = f16_scalar(b->d);
  if constexpr (q3) {
    int sc[16];
    unpack_scales_q3k(b->scales, sc);
    for (int g = 0; g < 16; ++g) s[g] = d * static_cast<float>(sc[g]);
  } else {
    const float dmin = f16_scalar(b->dmin);
    for (int g = 0; g < 16; ++g) {
      s[g] = d * static_cast<float>(b->scales[g] & 0xF);
      mw[g] = -dmin * static_cast<float>(b->scales[g] >> 4);
    }
  }
}

// IQ4_XS: 8 sub-blocks of 32, each an IQ4_NL block under its own 6-bit scale.
TINYSLM_TARGET_AVX2 __attribute__((always_inline)) inline void decode_iq4_xs_avx2(const uint8_t* blk, int8_t* o,
                                                                                 float* s) {
  const auto* b = reinterpret_cast<const BlockIQ4_XS*>(blk);
  const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
  for (int ib = 0; ib < 8; ++ib)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 32 * ib), _mm256_shuffle_epi8(table, nibbles32(b->qs + 16 * ib)));
  const float d = f16_scalar(b->d);
  for (int ib = 0; ib < 8; ++ib) s[2 * ib] = s[2 * ib + 1] = d * static_cast<float>(iq4xs_scale(*b, ib));
}

// IQ3_S: per 32 values, 8 grid points fetched with one gather (index: 8 bits of qs, the
// ninth from qh moved to bit 8), then negated where the sign bit is set.
TINYSLM_TARGET_AVX2 __attribute__((always_inline)) inline void decode_iq3_s_avx2(const uint8_t* blk, int8_t* o,
                                                                                float* s) {
  const auto* b = reinterpret_cast<const BlockIQ3_S*>(blk);
  const __m256i to_bit8 = _mm256_setr_epi32(8, 7, 6, 5, 4, 3, 2, 1);
  const __m256i bit8 = _mm256_set1_epi32(256);
  for (int ib = 0; ib < 8; ++ib) {
    const __m256i low = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b->qs + 8 * ib)));
    const __m256i high = _mm256_and_si256(_mm256_sllv_epi32(_mm256_set1_epi32(b->qh[ib]), to_bit8), bit8);
    const __m256i mag = _mm256_i32gather_epi32(reinterpret_cast<const int*>(kIq3sGrid), _mm256_or_si256(low, high), 4);
    uint32_t sign_bits;
    std::memcpy(&sign_bits, b->signs + 4 * ib, 4);
    const __m256i neg = bits_to_bytes(sign_bits);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 32 * ib), _mm256_sub_epi8(_mm256_xor_si256(mag, neg), neg));
  }
  const float d = f16_scalar(b->d);
  for (int ib = 0; ib < 8; ++ib) s[2 * ib] = s[2 * ib + 1] = d * static_cast<float>(iq3s_scale(*b, ib));
}

// Decodes the native blocks of type T covering values [v0, v0 + nv) of `row` into w / sw16
// (a scale per 16 values) / mw (a min per group of the type, indexed from v0).
template <TensorType T>
TINYSLM_TARGET_AVX2 inline void decode_chunk(const uint8_t* row, int64_t v0, int64_t nv, int8_t* w, float* sw16,
                                             float* mw) {
  constexpr WeightTraits tr = weight_traits(T);
  constexpr int gpb = tr.block_values / tr.group;
  const int64_t b0 = v0 / tr.block_values, nb = nv / tr.block_values;
  for (int64_t j = 0; j < nb; ++j) {
    const uint8_t* blk = row + (b0 + j) * tr.block_bytes;
    int8_t* o = w + j * tr.block_values;
    float* s = sw16 + j * (tr.block_values / 16);
    if constexpr (T == TensorType::Q4_K || T == TensorType::Q5_K)
      decode_k4_avx2<T>(blk, o, s, mw + j * gpb);
    else if constexpr (T == TensorType::Q6_K)
      decode_q6_k_avx2(blk, o, s);
    else if constexpr (T == TensorType::Q2_K || T == TensorType::Q3_K)
      decode_k23_avx2<T>(blk, o, s, mw + j * gpb);
    else if constexpr (T == TensorType::IQ4_XS)
      decode_iq4_xs_avx2(blk, o, s);
    else if constexpr (T == TensorType::IQ3_S)
      decode_iq3_s_avx2(blk, o, s);
    else
      decode_legacy_avx2<T>(blk, o, s, mw + j * gpb);
  }
}

// ---------------------------------------------------------------------------------------
// Activation quantization, bit-exact with quantize_activation_row (kernels_scalar.hpp).

TINYSLM_TARGET_AVX2 inline float hmax256(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// roundf (half away from zero), exactly: trunc, then step away when the dropped part >= 0.5.
TINYSLM_TARGET_AVX2 inline __m256i round_away_epi32(__m256 v) {
  const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 sign = _mm256_and_ps(v, _mm256_set1_ps(-0.f));
  const __m256 frac = _mm256_andnot_ps(_mm256_set1_ps(-0.f), _mm256_sub_ps(v, t));
  const __m256 step = _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ),
                                    _mm256_or_ps(sign, _mm256_set1_ps(1.f)));
  return _mm256_cvttps_epi32(_mm256_add_ps(t, step));
}

// Packs 4 x 8 int32 (each in [-127, 127]) into 32 int8 in order.
TINYSLM_TARGET_AVX2 inline __m256i pack_32(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
  const __m256i q = _mm256_packs_epi16(ab, cd);
  return _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// Q8_0 / Q8_1 blocks of 32: quants, the fp16-rounded scale per 16 values and (Q8_1) s = d * sum.
TINYSLM_TARGET_AVX2 inline void quantize_q8_0_blocks_avx2(ActFormat fmt, const float* x, int64_t k, int8_t* qs,
                                                          float* da16, float* m32) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t b = 0; b < k / 32; ++b) {
    const float* xb = x + b * 32;
    __m256 v[4];
    __m256 am = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(xb + 8 * j);
      am = _mm256_max_ps(am, _mm256_and_ps(v[j], abs_mask));
    }
    const float amax = hmax256(am);
    const float d = amax / 127.f;
    const float id = d != 0.f ? 1.f / d : 0.f;
    const __m256 idv = _mm256_set1_ps(id);
    __m256i q[4];
    for (int j = 0; j < 4; ++j) q[j] = round_away_epi32(_mm256_mul_ps(v[j], idv));
    const __m256i q8 = pack_32(q[0], q[1], q[2], q[3]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + b * 32), q8);
    const float dh = _cvtsh_ss(_cvtss_sh(d, 0));
    da16[2 * b] = da16[2 * b + 1] = dh;
    if (fmt == ActFormat::q8_1) {
      const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
      m32[b] = _cvtsh_ss(_cvtss_sh(d * static_cast<float>(_mm_cvtsi128_si32(s4)), 0));
    } else {
      m32[b] = 0.f;
    }
  }
}

// Q8_K super-blocks of 256: quants and the float scale (repeated per 16 values).
TINYSLM_TARGET_AVX2 inline void quantize_q8_k_blocks_avx2(const float* x, int64_t k, int8_t* qs, float* da16) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t b = 0; b < k / 256; ++b) {
    const float* xb = x + b * 256;
    __m256 am = _mm256_setzero_ps();
    for (int j = 0; j < 32; ++j) am = _mm256_max_ps(am, _mm256_and_ps(_mm256_loadu_ps(xb + 8 * j), abs_mask));
    const float amax = hmax256(am);
    float d = 0.f;
    if (amax == 0.f) {
      std::memset(qs + b * 256, 0, 256);
    } else {
      float maxv = 0.f;
      for (int j = 0; j < 256; ++j)
        if (std::fabs(xb[j]) == amax) {
          maxv = xb[j];
          break;
        }
      const float iscale = -127.f / maxv;
      const __m256 is = _mm256_set1_ps(iscale);
      const __m256i hi = _mm256_set1_epi32(127);
      for (int j = 0; j < 8; ++j) {
        __m256i q[4];
        for (int u = 0; u < 4; ++u)
          q[u] = _mm256_min_epi32(
              _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + 32 * j + 8 * u), is),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)),
              hi);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + b * 256 + 32 * j), pack_32(q[0], q[1], q[2], q[3]));
      }
      d = 1.f / iscale;
    }
    for (int g = 0; g < 16; ++g) da16[b * 16 + g] = d;
  }
}

TINYSLM_TARGET_AVX2 inline void quantize_activation_row_avx2(ActFormat fmt, const float* x, int64_t k, int8_t* qs,
                                                             float* da16, float* m32, float* m16, int32_t* sum16,
                                                             int32_t* corr4) {
  if (fmt == ActFormat::q8_k)
    quantize_q8_k_blocks_avx2(x, k, qs, da16);
  else
    quantize_q8_0_blocks_avx2(fmt, x, k, qs, da16, m32);
  // Sums of 4 (for corr4) and of 16 quants.
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  for (int64_t v = 0; v < k; v += 32) {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + v));
    const __m256i s4 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q), ones16);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(corr4 + v / 4), _mm256_mullo_epi32(s4, _mm256_set1_epi32(-128)));
    alignas(32) int32_t t[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), s4);
    sum16[v / 16] = t[0] + t[1] + t[2] + t[3];
    sum16[v / 16 + 1] = t[4] + t[5] + t[6] + t[7];
  }
  if (fmt == ActFormat::q8_k) {
    for (int64_t g = 0; g < k / 16; ++g) m16[g] = da16[g] * static_cast<float>(sum16[g]);
    for (int64_t g = 0; g < k / 32; ++g) m32[g] = da16[2 * g] * static_cast<float>(sum16[2 * g] + sum16[2 * g + 1]);
  }
}

// Sum over groups of mw[g] * M(g) for a chunk starting at value v0 (8 groups per step).
TINYSLM_TARGET_AVX2 inline float chunk_min_term(const WeightTraits& tr, const float* mw, int64_t v0, int64_t nv,
                                                const ActRow& a) {
  const int64_t ng = nv / tr.group;
  const float* m = tr.group == 32 ? a.m32 + v0 / 32 : a.m16 + v0 / 16;
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= ng; g += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(mw + g), _mm256_loadu_ps(m + g), acc);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float r = _mm_cvtss_f32(s);
  for (; g < ng; ++g) r += mw[g] * m[g];
  return r;
}

// ---------------------------------------------------------------------------------------
// Dot of a decoded chunk with one activation row.

TINYSLM_TARGET_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The 256-bit integer dot step: each int32 lane of the result is the sum of 4 products of
// unsigned bytes u and signed bytes s (lane i: bytes 4i..4i+3), added to acc. V selects how:
//   0 (AVX2): vpmaddubsw + vpmaddwd; the int16 pair sums saturate, so callers keep
//     |u * s| pairs below 2^15 (they do: codes <= 63, or the sign trick for Q8_0);
//   1 (AVX-VNNI): vpdpbusd in its VEX encoding (Alder Lake and later, Zen 5 desktop);
//   2: the same instruction in its EVEX encoding (AVX-512 VL + VNNI). Same arithmetic as 1,
//     no saturation; it lets CPUs with AVX-512 VNNI but no AVX-VNNI run (and test) the
//     256-bit VNNI kernels.
// Written as inline assembly so these functions keep the plain AVX2 target attribute; the
// dispatcher runs V = 1 only when CPUID reports AVX-VNNI and V = 2 only with AVX-512 VNNI.
inline constexpr int kDotAvx2 = 0, kDotAvxVnni = 1, kDotEvex256 = 2;

template <int V>
TINYSLM_TARGET_AVX2 inline __m256i dot4_u8s8(__m256i acc, __m256i u, __m256i s) {
  if constexpr (V == kDotAvx2) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
  } else if constexpr (V == kDotAvxVnni) {
    __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(s));
    return acc;
  } else {
    __asm__("%{evex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(s));
    return acc;
  }
}

// AVX2: 32 values per step; lanes of the int32 sums cover 4 consecutive values, like vpdpbusd.
template <int V>
TINYSLM_TARGET_AVX2 inline float dot_chunk_avx2(const int8_t* w, const float* sw16, int64_t nv, const int8_t* aq,
                                                const float* da16) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  const __m256i idx = _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0);
  for (int64_t v = 0; v < nv; v += 32) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + v));
    const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aq + v));
    const __m256i p32 = dot4_u8s8<V>(_mm256_setzero_si256(), _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv));
    const __m128 s2 = _mm_mul_ps(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sw16 + v / 16))),
                                 _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(da16 + v / 16))));
    const __m256 s = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(s2), idx);
    if ((v / 32) & 1)
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), s, acc1);
    else
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), s, acc0);
  }
  return hsum256(_mm256_add_ps(acc0, acc1));
}


// ---------------------------------------------------------------------------------------
// GEMV-style driver: each row is decoded chunk by chunk once and dotted with every token.

#define TINYSLM_X86_GEMV_BODY(DOT)                                                             \
  constexpr WeightTraits tr = weight_traits(T);                                               \
  alignas(64) int8_t w[kChunk];                                                               \
  alignas(64) float sw16[kChunk / 16 + 4];                                                    \
  alignas(64) float mw[kChunk / 16];                                                          \
  float acc[16];                                                                              \
  for (int64_t r = r0; r < r1; ++r) {                                                         \
    const uint8_t* row = data + r * row_bytes;                                                \
    for (int64_t i0 = 0; i0 < n; i0 += 16) {                                                  \
      const int64_t ni = n - i0 < 16 ? n - i0 : 16;                                           \
      for (int64_t i = 0; i < ni; ++i) acc[i] = 0.f;                                          \
      for (int64_t v0 = 0; v0 < k; v0 += kChunk) {                                            \
        const int64_t nv = k - v0 < kChunk ? k - v0 : kChunk;                                 \
        decode_chunk<T>(row, v0, nv, w, sw16, mw);                                            \
        for (int64_t i = 0; i < ni; ++i) {                                                    \
          const ActRow& a = acts[i0 + i];                                                     \
          acc[i] += DOT;                                                                      \
          if constexpr (tr.has_min) acc[i] += chunk_min_term(tr, mw, v0, nv, a);              \
        }                                                                                     \
      }                                                                                       \
      for (int64_t i = 0; i < ni; ++i) y[(i0 + i) * ldy + r] = acc[i];                        \
    }                                                                                         \
  }

template <int V, TensorType T>
TINYSLM_TARGET_AVX2 inline void int_rows_gemv_avx2(const uint8_t* data, int64_t row_bytes, int64_t k,
                                                   const ActRow* acts, int64_t n, float* y, int64_t ldy, int64_t r0,
                                                   int64_t r1) {
  TINYSLM_X86_GEMV_BODY(dot_chunk_avx2<V>(w, sw16, nv, a.qs + v0, a.da16 + v0 / 16))
}

// ---------------------------------------------------------------------------------------
// AVX2 fused GEMV for the common types. Without VNNI, maddubs multiplies unsigned by signed
// bytes into saturating int16 pairs, so the weights enter as their unsigned codes q (at most
// 63 here, so no pair can saturate) and the offset is taken out exactly afterwards:
// sum (q - off) a = sum q a - off * sum a, with sum a from the activation's sums of 16.
// Q8_0 uses the sign trick instead (|w| x sign(a, w), at most 2 * 128 * 127).

template <int V>
TINYSLM_TARGET_AVX2 inline __m256i madd_u8s8(__m256i u, __m256i s) {
  return dot4_u8s8<V>(_mm256_setzero_si256(), u, s);
}

// Adds an int32 to lane 0 (lanes are summed later, so this adds it to the total).
TINYSLM_TARGET_AVX2 inline __m256i add_lane0(__m256i v, int32_t c) {
  return _mm256_add_epi32(v, _mm256_zextsi128_si256(_mm_cvtsi32_si128(c)));
}

template <int V, TensorType T, int N>
TINYSLM_TARGET_AVX2 inline void gemv_row_legacy_avx2(const uint8_t* row, int64_t k, const ActRow* acts, float* out) {
  constexpr int bb = T == TensorType::Q8_0 ? 34 : T == TensorType::Q5_0 ? 22 : 18;
  __m256 acc[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < k / 32; ++b) {
    const uint8_t* p = row + b * bb;
    uint16_t h;
    std::memcpy(&h, p, 2);
    const float d = f16_scalar(h);
    __m256i q;
    int off = 0;
    if constexpr (T == TensorType::Q8_0) {
      q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
    } else if constexpr (T == TensorType::Q5_0) {
      uint32_t qh;
      std::memcpy(&qh, p + 2, 4);
      q = _mm256_or_si256(nibbles32(p + 6), _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
      off = 16;
    } else {
      q = nibbles32(p + 2);
      off = 8;
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; ++i) {
      const ActRow& a = acts[i];
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs + b * 32));
      __m256i t;
      if constexpr (T == TensorType::Q8_0) {
        t = madd_u8s8<V>(_mm256_sign_epi8(q, q), _mm256_sign_epi8(av, q));
      } else {
        t = add_lane0(madd_u8s8<V>(q, av), -off * (a.sum16[2 * b] + a.sum16[2 * b + 1]));
      }
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(d * a.da32[b]), acc[i]);
    }
  }
  for (int i = 0; i < N; ++i) out[i] = hsum256(acc[i]);
}

template <int V, TensorType T, int N>
TINYSLM_TARGET_AVX2 inline void gemv_row_k_avx2(const uint8_t* row, int64_t k, const ActRow* acts, float* out) {
  __m256 acc[N];
  float accs[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm256_setzero_ps(), accs[i] = 0.f;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t b = 0; b < k / 256; ++b) {
    const int64_t v = b * 256;
    if constexpr (T == TensorType::Q4_K) {
      const auto* blk = reinterpret_cast<const BlockQ4_K*>(row + b * sizeof(BlockQ4_K));
      const float d = f16_scalar(blk->d), dmin = f16_scalar(blk->dmin);
      uint8_t sc[8], mn[8];
      unpack_scales_k4(blk->scales, sc, mn);
      __m256i q[8];
      for (int c = 0; c < 4; ++c) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->qs + 32 * c));
        q[2 * c] = _mm256_and_si256(x, m4);
        q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
      }
#pragma GCC unroll 4
      for (int i = 0; i < N; ++i) {
        const ActRow& a = acts[i];
        __m256i isum = _mm256_setzero_si256();
        int32_t ms = 0;
        for (int j = 0; j < 8; ++j) {
          const __m256i t = madd_u8s8<V>(q[j], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs + v + 32 * j)));
          isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(t, _mm256_set1_epi32(sc[j])));
          ms += mn[j] * (a.sum16[v / 16 + 2 * j] + a.sum16[v / 16 + 2 * j + 1]);
        }
        const float da = a.da16[v / 16];
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * da), acc[i]);
        accs[i] -= dmin * da * static_cast<float>(ms);
      }
    } else {  // Q6_K
      const auto* blk = reinterpret_cast<const BlockQ6_K*>(row + b * sizeof(BlockQ6_K));
      const float d = f16_scalar(blk->d);
      const __m256i m3 = _mm256_set1_epi8(3);
      __m256i q[8];
      for (int h = 0; h < 2; ++h) {
        const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->ql + 64 * h));
        const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->ql + 64 * h + 32));
        const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->qh + 32 * h));
        q[4 * h] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
        q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
        q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
        q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
      }
      // Per-lane scales: lanes 0-3 of vector j cover values 32 j .. 32 j + 15 (group 2 j).
      const __m256i sc16 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk->scales)));
      const __m256i sc16b = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk->scales + 8)));
#pragma GCC unroll 4
      for (int i = 0; i < N; ++i) {
        const ActRow& a = acts[i];
        __m256i isum = _mm256_setzero_si256();
        for (int j = 0; j < 8; ++j) {
          const int g = 2 * j;
          const __m256i t = madd_u8s8<V>(q[j], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs + v + 32 * j)));
          const __m256i src = j < 4 ? sc16 : sc16b;
          const int gl = g % 8;
          const __m256i scl = _mm256_permutevar8x32_epi32(src, _mm256_setr_epi32(gl, gl, gl, gl, gl + 1, gl + 1, gl + 1, gl + 1));
          // the -32 offset of each group of 16, weighted by its scale
          const int32_t corr = -32 * (blk->scales[g] * a.sum16[v / 16 + g] + blk->scales[g + 1] * a.sum16[v / 16 + g + 1]);
          isum = add_lane0(_mm256_add_epi32(isum, _mm256_mullo_epi32(t, scl)), corr);
        }
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * a.da16[v / 16]), acc[i]);
      }
    }
  }
  for (int i = 0; i < N; ++i) out[i] = hsum256(acc[i]) + accs[i];
}

template <int V, TensorType T, int N>
TINYSLM_TARGET_AVX2 inline void gemv_rows_fused_avx2(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts,
                                                     float* y, int64_t ldy, int64_t r0, int64_t r1) {
  float out[N];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = data + r * row_bytes;
    if constexpr (T == TensorType::Q4_K || T == TensorType::Q6_K)
      gemv_row_k_avx2<V, T, N>(row, k, acts, out);
    else
      gemv_row_legacy_avx2<V, T, N>(row, k, acts, out);
    for (int i = 0; i < N; ++i) y[i * ldy + r] = out[i];
  }
}

template <int V, TensorType T>
inline bool gemv_fused_avx2_n(int64_t n, const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, float* y,
                              int64_t ldy, int64_t r0, int64_t r1) {
  // Tokens 4 at a time, so each block is unpacked once per 4 tokens.
  for (int64_t i0 = 0; i0 < n; i0 += 4) {
    float* yi = y + i0 * ldy;
    switch (n - i0 < 4 ? n - i0 : 4) {
      case 1: gemv_rows_fused_avx2<V, T, 1>(data, row_bytes, k, acts + i0, yi, ldy, r0, r1); break;
      case 2: gemv_rows_fused_avx2<V, T, 2>(data, row_bytes, k, acts + i0, yi, ldy, r0, r1); break;
      case 3: gemv_rows_fused_avx2<V, T, 3>(data, row_bytes, k, acts + i0, yi, ldy, r0, r1); break;
      default: gemv_rows_fused_avx2<V, T, 4>(data, row_bytes, k, acts + i0, yi, ldy, r0, r1); break;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------
// Token tiles for the panel GEMMs (TokenTile, kernels_scalar.hpp).

// Per tile, the element counts of each array for k values.
inline int64_t tile_q_words(int64_t k) { return k / 4 * kTileTokens; }
inline int64_t tile_g16(int64_t k) { return k / 16 * kTileTokens; }
inline int64_t tile_g32(int64_t k) { return k / 32 * kTileTokens; }

// Builds tile `ti` (tokens 8 ti .. 8 ti + 7) from the activation rows.
// `unsigned_q`: store the quants as a + 128 (unsigned bytes), for the AVX2 GEMM.
inline void build_token_tile(const ActRow* acts, int64_t n, int64_t k, int64_t ti, int32_t* q, int32_t* c16,
                             int32_t* c32, float* d16, float* m16, float* m32, bool unsigned_q = false) {
  for (int c = 0; c < kTileTokens; ++c) {
    const int64_t i = ti * kTileTokens + c;
    if (i < n) {
      const ActRow& a = acts[i];
      for (int64_t w = 0; w < k / 4; ++w) {
        uint32_t word;
        std::memcpy(&word, a.qs + 4 * w, 4);
        if (unsigned_q) word ^= 0x80808080u;
        std::memcpy(&q[w * kTileTokens + c], &word, 4);
      }
      for (int64_t g = 0; g < k / 16; ++g) {
        c16[g * kTileTokens + c] = -128 * a.sum16[g];
        d16[g * kTileTokens + c] = a.da16[g];
        m16[g * kTileTokens + c] = a.m16[g];
      }
      for (int64_t g = 0; g < k / 32; ++g) {
        c32[g * kTileTokens + c] = -128 * (a.sum16[2 * g] + a.sum16[2 * g + 1]);
        m32[g * kTileTokens + c] = a.m32[g];
      }
    } else {
      for (int64_t w = 0; w < k / 4; ++w) q[w * kTileTokens + c] = unsigned_q ? static_cast<int32_t>(0x80808080u) : 0;
      for (int64_t g = 0; g < k / 16; ++g) c16[g * kTileTokens + c] = 0, d16[g * kTileTokens + c] = 0.f, m16[g * kTileTokens + c] = 0.f;
      for (int64_t g = 0; g < k / 32; ++g) c32[g * kTileTokens + c] = 0, m32[g * kTileTokens + c] = 0.f;
    }
  }
}


// ---------------------------------------------------------------------------------------
// AVX2 GEMM on interleaved 8-row panels (no VNNI). maddubs takes the activations as unsigned
// bytes a + 128 (tiles built with unsigned_q) and the weights as signed bytes; with |w| <= 32
// two products never saturate an int16 (2 * 255 * 32), and even two maddubs results add
// up without overflow, so pairs of 4-byte steps share one madd. The +128 is taken out
// exactly per row: -128 * (sum of the row's 16 weights), kept in the panel. Types with
// larger weights (Q8_0, IQ4_NL, IQ4_XS) use the decoded-chunk path.

inline bool avx2_gemm_supports(int v, TensorType t) {
  return is_integer_weight_type(t) &&
         (v != kDotAvx2 || (t != TensorType::Q8_0 && t != TensorType::IQ4_NL && t != TensorType::IQ4_XS));
}

struct alignas(32) Panel8 {
  int8_t w[kChunk / 4][8][4];   // w[q][r] = weights 4q..4q+3 of row r (signed)
  float s16[kChunk / 16][8];    // weight scale per 16 values, per row
  float mw[kChunk / 16][8];     // min per group, per row
  int32_t corr16[kChunk / 16][8];  // -128 * sum of the row's 16 weights
};

template <TensorType T>
TINYSLM_TARGET_AVX2 inline void fill_panel8(const uint8_t* data, int64_t row_bytes,
                                            int64_t r0, int nr, int64_t v0, int64_t nv, Panel8& p) {
  constexpr WeightTraits tr = weight_traits(T);
  alignas(64) int8_t w[kChunk];
  alignas(64) float sw16[kChunk / 16 + 4];
  alignas(64) float mw[kChunk / 16];
  const int64_t nq = nv / 4;
  for (int r = 0; r < 8; ++r) {
    if (r < nr) {
      decode_chunk<T>(data + (r0 + r) * row_bytes, v0, nv, w, sw16, mw);
      for (int64_t q = 0; q < nq; ++q) std::memcpy(&p.w[q][r][0], w + 4 * q, 4);
      for (int64_t g = 0; g < nv / 16; ++g) {
        int32_t sum = 0;
        for (int i = 0; i < 16; ++i) sum += w[16 * g + i];
        p.s16[g][r] = sw16[g];
        p.corr16[g][r] = -128 * sum;
      }
      if (tr.has_min)
        for (int64_t g = 0; g < nv / tr.group; ++g) p.mw[g][r] = mw[g];
    } else {
      for (int64_t q = 0; q < nq; ++q) std::memset(&p.w[q][r][0], 0, 4);
      for (int64_t g = 0; g < nv / 16; ++g) p.s16[g][r] = 0.f, p.corr16[g][r] = 0;
      if (tr.has_min)
        for (int64_t g = 0; g < nv / tr.group; ++g) p.mw[g][r] = 0.f;
    }
  }
}

// acc[c] (8 rows) for 4 tokens (c0 .. c0 + 3 of the tile).
template <int V, int G, bool Min>
TINYSLM_TARGET_AVX2 inline void panel8_kernel(const Panel8& p, int64_t v0, int64_t nv, const TokenTile& t, int c0,
                                              __m256* out) {
  constexpr int C = 4, T = kTileTokens;
  const int32_t* q4 = t.q + v0 / 4 * T + c0;
  const float* dd = t.d16 + v0 / 16 * T + c0;
  const float* mm = (G == 32 ? t.m32 + v0 / 32 * T : t.m16 + v0 / 16 * T) + c0;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[C];
  for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
  for (int64_t g = 0; g < nv / G; ++g) {
    __m256i corr = _mm256_load_si256(reinterpret_cast<const __m256i*>(&p.corr16[g * (G / 16)][0]));
    if (G == 32) corr = _mm256_add_epi32(corr, _mm256_load_si256(reinterpret_cast<const __m256i*>(&p.corr16[2 * g + 1][0])));
    __m256i isum[C];
    for (int c = 0; c < C; ++c) isum[c] = corr;
    const int64_t q0 = g * (G / 4);
#pragma GCC unroll 4
    for (int q = 0; q < G / 4; q += 2) {
      const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(&p.w[q0 + q][0][0]));
      const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(&p.w[q0 + q + 1][0][0]));
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        const __m256i a0 = _mm256_set1_epi32(q4[(q0 + q) * T + c]);
        const __m256i a1 = _mm256_set1_epi32(q4[(q0 + q + 1) * T + c]);
        if constexpr (V == kDotAvx2) {
          const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(a0, w0), _mm256_maddubs_epi16(a1, w1));
          isum[c] = _mm256_add_epi32(isum[c], _mm256_madd_epi16(p16, ones));
        } else {
          isum[c] = dot4_u8s8<V>(dot4_u8s8<V>(isum[c], a0, w0), a1, w1);
        }
      }
    }
    const __m256 s = _mm256_load_ps(&p.s16[g * (G / 16)][0]);
    const float* dg = dd + g * (G / 16) * T;
    for (int c = 0; c < C; ++c) {
      acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[c]), _mm256_mul_ps(s, _mm256_set1_ps(dg[c])), acc[c]);
      if (Min) acc[c] = _mm256_fmadd_ps(_mm256_load_ps(&p.mw[g][0]), _mm256_set1_ps(mm[g * T + c]), acc[c]);
    }
  }
  for (int c = 0; c < C; ++c) out[c] = acc[c];
}

template <int V, int G, bool Min>
TINYSLM_TARGET_AVX2 inline void panel8_tokens(const Panel8& p, int64_t v0, int64_t nv, const TokenTile* tiles, int64_t n,
                                              float* y, int64_t ldy, int64_t r0, int nr, bool first) {
  alignas(32) int32_t mk[8];
  for (int r = 0; r < 8; ++r) mk[r] = r < nr ? -1 : 0;
  const __m256i mask = _mm256_load_si256(reinterpret_cast<const __m256i*>(mk));
  __m256 acc[4];
  for (int64_t i0 = 0; i0 < n; i0 += 4) {
    panel8_kernel<V, G, Min>(p, v0, nv, tiles[i0 / kTileTokens], static_cast<int>(i0 % kTileTokens), acc);
    const int64_t nc = n - i0 < 4 ? n - i0 : 4;
    for (int64_t c = 0; c < nc; ++c) {
      float* yp = y + (i0 + c) * ldy + r0;
      __m256 v = acc[c];
      if (!first) v = _mm256_add_ps(_mm256_maskload_ps(yp, mask), v);
      _mm256_maskstore_ps(yp, mask, v);
    }
  }
}


// The panel GEMM driver of both vector widths: rows in panels of Gemm::kRows, each decoded one
// kChunk of k at a time (Gemm::fill) and multiplied with every token tile by the micro-kernel
// of the type's scale group and min (Gemm::tokens), partial sums added into y.
template <class Gemm, TensorType T>
inline void gemm_panels(const uint8_t* data, int64_t row_bytes, int64_t k, const TokenTile* tiles,
                        int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  constexpr WeightTraits tr = weight_traits(T);
  typename Gemm::Panel p;
  for (int64_t rp = r0; rp < r1; rp += Gemm::kRows) {
    const int nr = static_cast<int>(r1 - rp < Gemm::kRows ? r1 - rp : Gemm::kRows);
    for (int64_t v0 = 0; v0 < k; v0 += kChunk) {
      const int64_t nv = k - v0 < kChunk ? k - v0 : kChunk;
      Gemm::template fill<T>(data, row_bytes, rp, nr, v0, nv, p);
      const bool first = v0 == 0;
      if constexpr (tr.group == 32 && tr.has_min)
        Gemm::template tokens<32, true>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
      else if constexpr (tr.group == 32)
        Gemm::template tokens<32, false>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
      else if constexpr (tr.has_min)
        Gemm::template tokens<16, true>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
      else
        Gemm::template tokens<16, false>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
    }
  }
}

template <int V>
struct GemmAvx2 {
  using Panel = Panel8;
  static constexpr int kRows = 8;
  template <TensorType T>
  static void fill(const uint8_t* data, int64_t row_bytes, int64_t r0, int nr, int64_t v0, int64_t nv, Panel& p) {
    fill_panel8<T>(data, row_bytes, r0, nr, v0, nv, p);
  }
  template <int G, bool Min>
  static void tokens(const Panel& p, int64_t v0, int64_t nv, const TokenTile* tiles, int64_t n, float* y, int64_t ldy,
                     int64_t r0, int nr, bool first) {
    panel8_tokens<V, G, Min>(p, v0, nv, tiles, n, y, ldy, r0, nr, first);
  }
};


// ---------------------------------------------------------------------------------------
// Float weights: 4 rows x up to 4 tokens per tile, vectors over k, one horizontal sum each.

template <TensorType T>
TINYSLM_TARGET_AVX2 inline __m256 load8_weights(const uint8_t* row, int64_t i) {
  if constexpr (T == TensorType::F32) return _mm256_loadu_ps(reinterpret_cast<const float*>(row + 4 * i));
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i));
  if constexpr (T == TensorType::F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <TensorType T, int R, int C>
TINYSLM_TARGET_AVX2 inline void float_tile_avx2(const uint8_t* const* rows, int64_t k, const float* const* xs, float* out) {
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 xv[C];
    for (int c = 0; c < C; ++c) xv[c] = _mm256_loadu_ps(xs[c] + i);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = load8_weights<T>(rows[r], i);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      float s = hsum256(acc[r][c]);
      for (int64_t j = i; j < k; ++j) s += load_weight_float(T, rows[r], j) * xs[c][j];
      out[r * C + c] = s;
    }
}

template <TensorType T>
struct FloatTileAvx2 {
  template <int R, int C>
  static void run(const uint8_t* const* rows, int64_t k, const float* const* xs, float* out) {
    float_tile_avx2<T, R, C>(rows, k, xs, out);
  }
};

// Float rows, 4 rows x up to 4 tokens per tile (Tile: FloatTileAvx2 / FloatTileAvx512).
template <class Tile, TensorType T>
inline void float_rows_t(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, int64_t n, float* y,
                         int64_t ldy, int64_t r0, int64_t r1) {
  if (n > 4) {
    // Many tokens: block k so a tile of 4 tokens stays in L1 while the rows stream past it;
    // partial sums of each k block are added into y.
    constexpr int64_t kb = 1024;
    const int64_t wsize = T == TensorType::F32 ? 4 : 2;
    for (int64_t k0 = 0; k0 < k; k0 += kb) {
      const int64_t nk = k - k0 < kb ? k - k0 : kb;
      for (int64_t i0 = 0; i0 < n; i0 += 4) {
        const int nc = static_cast<int>(n - i0 < 4 ? n - i0 : 4);
        const float* xs[4];
        for (int c = 0; c < 4; ++c) xs[c] = acts[i0 + (c < nc ? c : 0)].xf + k0;
        for (int64_t r = r0; r < r1; r += 4) {
          const int nr = static_cast<int>(r1 - r < 4 ? r1 - r : 4);
          const uint8_t* rows[4];
          for (int j = 0; j < 4; ++j) rows[j] = data + (r + (j < nr ? j : 0)) * row_bytes + k0 * wsize;
          float out[16];
          switch (nc) {
            case 4: Tile::template run<4, 4>(rows, nk, xs, out); break;
            case 3: Tile::template run<4, 3>(rows, nk, xs, out); break;
            case 2: Tile::template run<4, 2>(rows, nk, xs, out); break;
            default: Tile::template run<4, 1>(rows, nk, xs, out); break;
          }
          for (int j = 0; j < nr; ++j)
            for (int c = 0; c < nc; ++c) {
              float& dst = y[(i0 + c) * ldy + r + j];
              dst = k0 == 0 ? out[j * nc + c] : dst + out[j * nc + c];
            }
        }
      }
    }
    return;
  }
  for (int64_t r = r0; r < r1; r += 4) {
    const int nr = static_cast<int>(r1 - r < 4 ? r1 - r : 4);
    const uint8_t* rows[4];
    for (int j = 0; j < 4; ++j) rows[j] = data + (r + (j < nr ? j : 0)) * row_bytes;
    for (int64_t i0 = 0; i0 < n; i0 += 4) {
      const int nc = static_cast<int>(n - i0 < 4 ? n - i0 : 4);
      const float* xs[4];
      for (int c = 0; c < 4; ++c) xs[c] = acts[i0 + (c < nc ? c : 0)].xf;
      float out[16];
      // Every (row, token) pair is summed the same way whatever the tile shape.
      switch (nc) {
        case 4: Tile::template run<4, 4>(rows, k, xs, out); break;
        case 3: Tile::template run<4, 3>(rows, k, xs, out); break;
        case 2: Tile::template run<4, 2>(rows, k, xs, out); break;
        default: Tile::template run<4, 1>(rows, k, xs, out); break;
      }
      for (int j = 0; j < nr; ++j)
        for (int c = 0; c < nc; ++c) y[(i0 + c) * ldy + r + j] = out[j * nc + c];
    }
  }
}

// ---------------------------------------------------------------------------------------
// Entries of the block-type table (RowsFn): rows [r0, r1) of one weight type for n tokens.

template <int V, TensorType T>
inline void rows_avx2_dot(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, const TokenTile* tiles,
                          int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if constexpr (!block_type(T).integer_dot) {
    float_rows_t<FloatTileAvx2<T>, T>(data, row_bytes, k, acts, n, y, ldy, r0, r1);
  } else {
    constexpr bool fused = T == TensorType::Q4_0 || T == TensorType::Q5_0 || T == TensorType::Q8_0 ||
                           T == TensorType::Q4_K || T == TensorType::Q6_K;
    if (tiles && avx2_gemm_supports(V, T)) {
      gemm_panels<GemmAvx2<V>, T>(data, row_bytes, k, tiles, n, y, ldy, r0, r1);
      return;
    }
    // More than 8 tokens: the decoded-chunk path reuses a decode for 16 tokens.
    if constexpr (fused) {
      if (n <= 8) {
        gemv_fused_avx2_n<V, T>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
        return;
      }
    }
    int_rows_gemv_avx2<V, T>(data, row_bytes, k, acts, n, y, ldy, r0, r1);
  }
}

template <TensorType T>
inline void rows_avx2(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, const TokenTile* tiles,
                      int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  rows_avx2_dot<kDotAvx2, T>(data, row_bytes, k, acts, tiles, n, y, ldy, r0, r1);
}

// AVX-VNNI in its VEX encoding, or through AVX-512's EVEX encoding on CPUs without AVX-VNNI.
template <TensorType T>
inline void rows_avxvnni(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, const TokenTile* tiles,
                         int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  static const bool evex = !detect_cpu_features().avx_vnni;
  if (evex)
    rows_avx2_dot<kDotEvex256, T>(data, row_bytes, k, acts, tiles, n, y, ldy, r0, r1);
  else
    rows_avx2_dot<kDotAvxVnni, T>(data, row_bytes, k, acts, tiles, n, y, ldy, r0, r1);
}


}  // namespace x86
}  // namespace detail
}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif  // TINYSLM_SIMD_X86
