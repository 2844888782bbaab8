// tinyslm kernels, x86-64 AVX-512 path (F/BW/VL/DQ + VNNI), on top of kernels_avx2.hpp (whose
// SIMD decode, activation quantization, token tiles and drivers it shares).
//
//  - GEMV, few tokens (n < kGemmMinTokens), for every integer type but IQ3_S (decoded chunks): fused kernels that unpack
//    each block in registers straight into unsigned bytes u = w + 128 and vpdpbusd them with
//    every token, with the exact integer correction -128 * sum(a) (corr4, precomputed per 4
//    activations). With one token, Q4_0 / Q5_0 / Q4_K rearrange the activation once per call
//    into the order their nibbles unpack to (gemv_row_legacy_prep, gemv_row_q4_k_prep), so a
//    group of values unpacks with one AND / shift / AND.
//  - GEMM (n >= kGemmMinTokens): a panel of 16 rows is decoded and interleaved so one zmm
//    holds 4 consecutive bytes of each of the 16 rows; the micro-kernel broadcasts 4 activation
//    bytes of a token per vpdpbusd (tokens interleaved 8 at a time, TokenTile) and keeps 8
//    tokens x 16 rows of accumulators in registers, so scales are applied once per group of
//    16/32 values per (row, token). Panels are built on the fly from the GGUF bytes (no
//    repacked copy of the weights: no extra memory, no load-time cost).
// Float weights: the 4 x 4 tile of kernels_avx2.hpp with 512-bit vectors.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels_avx2.hpp"

#if defined(TINYSLM_KERNELS_X86)

#define TINYSLM_TARGET_AVX512 \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace detail {
namespace x86 {

// AVX-512 VNNI: 64 values per step on unsigned bytes w + 128, corrected by corr4.
TINYSLM_TARGET_AVX512 inline float dot_chunk_avx512(const int8_t* w, const float* sw16, int64_t nv, const int8_t* aq,
                                                    const int32_t* corr4, const float* da16) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  int64_t v = 0;
  for (; v + 128 <= nv; v += 128) {
    const __m512i u0 = _mm512_xor_si512(_mm512_loadu_si512(w + v), flip);
    const __m512i u1 = _mm512_xor_si512(_mm512_loadu_si512(w + v + 64), flip);
    const __m512i t0 = _mm512_dpbusd_epi32(_mm512_loadu_si512(corr4 + v / 4), u0, _mm512_loadu_si512(aq + v));
    const __m512i t1 = _mm512_dpbusd_epi32(_mm512_loadu_si512(corr4 + v / 4 + 16), u1, _mm512_loadu_si512(aq + v + 64));
    const __m512 s0 = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_mul_ps(_mm_loadu_ps(sw16 + v / 16), _mm_loadu_ps(da16 + v / 16))));
    const __m512 s1 = _mm512_permutexvar_ps(
        idx, _mm512_castps128_ps512(_mm_mul_ps(_mm_loadu_ps(sw16 + v / 16 + 4), _mm_loadu_ps(da16 + v / 16 + 4))));
    acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t0), s0, acc0);
    acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t1), s1, acc1);
  }
  for (; v + 64 <= nv; v += 64) {
    const __m512i u0 = _mm512_xor_si512(_mm512_loadu_si512(w + v), flip);
    const __m512i t0 = _mm512_dpbusd_epi32(_mm512_loadu_si512(corr4 + v / 4), u0, _mm512_loadu_si512(aq + v));
    const __m512 s0 = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_mul_ps(_mm_loadu_ps(sw16 + v / 16), _mm_loadu_ps(da16 + v / 16))));
    acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t0), s0, acc0);
  }
  if (v < nv) {  // 32 values left
    const __m256i u = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + v)), _mm256_set1_epi8(static_cast<char>(0x80)));
    const __m256i t = _mm256_dpbusd_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(corr4 + v / 4)), u,
                                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aq + v)));
    const __m512 s = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_castsi128_ps(_mm_unpacklo_epi64(
                                                    _mm_castps_si128(_mm_mul_ps(_mm_loadu_ps(sw16 + v / 16), _mm_loadu_ps(da16 + v / 16))),
                                                    _mm_setzero_si128()))));
    acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi256_si512(t)), s, acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}


template <TensorType T>
TINYSLM_TARGET_AVX512 inline void int_rows_gemv_avx512(const uint8_t* data, int64_t row_bytes, int64_t k,
                                                       const ActRow* acts, int64_t n, float* y, int64_t ldy, int64_t r0,
                                                       int64_t r1) {
  TINYSLM_X86_GEMV_BODY(dot_chunk_avx512(w, sw16, nv, a.qs + v0, a.corr4 + v0 / 4, a.da16 + v0 / 16))
}
#undef TINYSLM_X86_GEMV_BODY

// ---------------------------------------------------------------------------------------
// AVX-512 VNNI fused GEMV for the common types: each block is unpacked in registers straight
// into unsigned bytes u = w + 128 (no trip through memory), vpdpbusd'd against up to N
// tokens, and scaled. Two legacy blocks (64 values) or one K super-block per step.

// 64 bytes u = w + 128 of two consecutive legacy blocks (natural order). `single` leaves
// the second block's bytes unspecified (its scale is forced to zero by the caller).
template <TensorType T>
TINYSLM_TARGET_AVX512 inline __m512i legacy_pair_u8(const uint8_t* b0, const uint8_t* b1) {
  if constexpr (T == TensorType::Q8_0) {
    const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 2))),
                                         _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b1 + 2)), 1);
    return _mm512_xor_si512(z, _mm512_set1_epi8(static_cast<char>(0x80)));
  } else {
    constexpr int off = T == TensorType::Q4_1 ? 4 : T == TensorType::Q5_0 ? 6 : T == TensorType::Q5_1 ? 8 : 2;
    // [b0 qs, b0 qs, b1 qs, b1 qs]: the second copy of each block's bytes is shifted right
    // by 4 (a masked shift), so one AND leaves [b0 0-15, b0 16-31, b1 0-15, b1 16-31].
    const __m256i x0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + off)));
    const __m256i x1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b1 + off)));
    const __m512i x = _mm512_inserti64x4(_mm512_castsi256_si512(x0), x1, 1);
    __m512i z = _mm512_and_si512(_mm512_mask_srli_epi16(x, static_cast<__mmask32>(0xFF00FF00u), x, 4), _mm512_set1_epi8(0x0F));
    if constexpr (T == TensorType::Q5_0 || T == TensorType::Q5_1) {
      uint32_t h0, h1;
      std::memcpy(&h0, b0 + off - 4, 4);
      std::memcpy(&h1, b1 + off - 4, 4);
      const __mmask64 bits = static_cast<__mmask64>(h0) | (static_cast<__mmask64>(h1) << 32);
      z = _mm512_or_si512(z, _mm512_and_si512(_mm512_movm_epi8(bits), _mm512_set1_epi8(0x10)));
    }
    if constexpr (T == TensorType::Q4_0) return _mm512_add_epi8(z, _mm512_set1_epi8(120));
    if constexpr (T == TensorType::Q5_0) return _mm512_add_epi8(z, _mm512_set1_epi8(112));
    if constexpr (T == TensorType::IQ4_NL) {
      const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
      return _mm512_xor_si512(_mm512_shuffle_epi8(table, z), _mm512_set1_epi8(static_cast<char>(0x80)));
    }
    return _mm512_or_si512(z, _mm512_set1_epi8(static_cast<char>(0x80)));  // Q4_1, Q5_1: w >= 0
  }
}

template <TensorType T, int N>
TINYSLM_TARGET_AVX512 inline void gemv_row_legacy(const uint8_t* row, int64_t k, const ActRow* acts, float* out) {
  constexpr bool has_min = T == TensorType::Q4_1 || T == TensorType::Q5_1;
  constexpr int bb = T == TensorType::Q8_0 ? 34 : T == TensorType::Q4_1 ? 20 : T == TensorType::Q5_0 ? 22
                   : T == TensorType::Q5_1 ? 24 : 18;
  const int64_t nb = k / 32;
  const __m512i half_idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  __m512 acc[N];
  __m128 accm[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm512_setzero_ps(), accm[i] = _mm_setzero_ps();
  int64_t b = 0;
  // Four blocks per step: one scale computation for two vectors of 64 values.
  const __m512i idx01 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i idx23 = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  for (; b + 4 <= nb; b += 4) {
    const uint8_t* p = row + b * bb;
    const __m512i u01 = legacy_pair_u8<T>(p, p + bb);
    const __m512i u23 = legacy_pair_u8<T>(p + 2 * bb, p + 3 * bb);
    uint16_t h[4];
    for (int j = 0; j < 4; ++j) std::memcpy(&h[j], p + j * bb, 2);
    uint64_t hw;
    std::memcpy(&hw, h, 8);
    const __m128 dw = _mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(hw)));
    __m128 mw = _mm_setzero_ps();
    if constexpr (has_min) {
      for (int j = 0; j < 4; ++j) std::memcpy(&h[j], p + j * bb + 2, 2);
      std::memcpy(&hw, h, 8);
      mw = _mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(hw)));
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; ++i) {
      const ActRow& a = acts[i];
      const __m512i t01 = _mm512_dpbusd_epi32(_mm512_loadu_si512(a.corr4 + b * 8), u01, _mm512_loadu_si512(a.qs + b * 32));
      const __m512i t23 = _mm512_dpbusd_epi32(_mm512_loadu_si512(a.corr4 + b * 8 + 16), u23, _mm512_loadu_si512(a.qs + b * 32 + 64));
      const __m512 s4 = _mm512_castps128_ps512(_mm_mul_ps(dw, _mm_loadu_ps(a.da32 + b)));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t01), _mm512_permutexvar_ps(idx01, s4), acc[i]);
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t23), _mm512_permutexvar_ps(idx23, s4), acc[i]);
      if constexpr (has_min) accm[i] = _mm_fmadd_ps(mw, _mm_loadu_ps(a.m32 + b), accm[i]);
    }
  }
  for (; b < nb; b += 2) {
    const bool pair = b + 1 < nb;
    const uint8_t* b0 = row + b * bb;
    const uint8_t* b1 = pair ? b0 + bb : b0;
    const __m512i u = legacy_pair_u8<T>(b0, b1);
    uint16_t h0, h1;
    std::memcpy(&h0, b0, 2);
    std::memcpy(&h1, b1, 2);
    const __m128 dw = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(h0 | (pair ? static_cast<uint32_t>(h1) << 16 : 0u))));
    __m128 mw = _mm_setzero_ps();
    if constexpr (has_min) {
      std::memcpy(&h0, b0 + 2, 2);
      std::memcpy(&h1, b1 + 2, 2);
      mw = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(h0 | (pair ? static_cast<uint32_t>(h1) << 16 : 0u))));
    }
    const __mmask16 m16 = pair ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>(0x00FF);
#pragma GCC unroll 4
    for (int i = 0; i < N; ++i) {
      const ActRow& a = acts[i];
      const __m512i t = _mm512_dpbusd_epi32(_mm512_maskz_loadu_epi32(m16, a.corr4 + b * 8), u,
                                            _mm512_maskz_loadu_epi32(m16, a.qs + b * 32));
      const __m128 da = _mm_setr_ps(a.da16[2 * b], pair ? a.da16[2 * b + 2] : 0.f, 0.f, 0.f);
      const __m512 sc = _mm512_permutexvar_ps(half_idx, _mm512_castps128_ps512(_mm_mul_ps(dw, da)));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sc, acc[i]);
      if constexpr (has_min)
        accm[i] = _mm_fmadd_ps(mw, _mm_setr_ps(a.m32[b], pair ? a.m32[b + 1] : 0.f, 0.f, 0.f), accm[i]);
    }
  }
  for (int i = 0; i < N; ++i) {
    float r = _mm512_reduce_add_ps(acc[i]);
    if constexpr (has_min) r += hsum256(_mm256_zextps128_ps256(accm[i]));
    out[i] = r;
  }
}

// One Q6_K super-block as unsigned bytes u = w + 128 (four vectors of 64 values) and its
// integer sub-block scales spread over the int32 lanes of each vector.
TINYSLM_TARGET_AVX512 __attribute__((always_inline)) inline void unpack_q6_k_u8(const BlockQ6_K* b6, __m512i* u,
                                                                               __m512i* scl) {
  const __m512i scv = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b6->scales)));
  // Per half h (128 values): the 64 ql bytes give values [0, 64) in their low nibbles and
  // [64, 128) in their high ones, already in order; the 32 qh bytes are broadcast to both
  // 256-bit halves and the upper copy shifted right by 2, so bits 0-1 / 4-5 of each byte
  // are the high bits of the low / high nibble's value.
  const __m512i m4z = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
  const __m512i off = _mm512_set1_epi8(96);  // u = (q - 32) + 128
  for (int h = 0; h < 2; ++h) {
    const __m512i l = _mm512_loadu_si512(b6->ql + 64 * h);
    const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b6->qh + 32 * h)));
    const __m512i qs = _mm512_mask_srli_epi16(q, static_cast<__mmask32>(0xFFFF0000u), q, 2);
    const __m512i lo = _mm512_or_si512(_mm512_and_si512(l, m4z), _mm512_and_si512(_mm512_slli_epi16(qs, 4), m30));
    const __m512i hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4z), _mm512_and_si512(qs, m30));
    u[2 * h] = _mm512_add_epi8(lo, off);
    u[2 * h + 1] = _mm512_add_epi8(hi, off);
  }
  for (int j = 0; j < 4; ++j) {
    const int g = 4 * j;
    scl[j] = _mm512_permutexvar_epi32(_mm512_setr_epi32(g, g, g, g, g + 1, g + 1, g + 1, g + 1, g + 2, g + 2, g + 2, g + 2,
                                                        g + 3, g + 3, g + 3, g + 3),
                                      scv);
  }
}

// Q4_K / Q5_K / Q6_K: integer sub-block scales applied with vpmulld, one float scale per
// super-block (as llama.cpp does), mins through the activation's sums of 16.
template <TensorType T, int N>
TINYSLM_TARGET_AVX512 inline void gemv_row_k(const uint8_t* row, int64_t k, const ActRow* acts, float* out) {
  const int64_t nb = k / 256;
  __m512 acc[N];
  __m256 accm[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm512_setzero_ps(), accm[i] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t b = 0; b < nb; ++b) {
    __m512i u[4], scl[4];
    float d;
    __m256 mnf = _mm256_setzero_ps();  // -dmin * min of each sub-block of 32
    if constexpr (T == TensorType::Q4_K || T == TensorType::Q5_K) {
      constexpr bool q5 = T == TensorType::Q5_K;
      const auto* b4 = reinterpret_cast<const BlockQ4_K*>(row + b * sizeof(BlockQ4_K));
      const auto* b5 = reinterpret_cast<const BlockQ5_K*>(row + b * sizeof(BlockQ5_K));
      d = f16_scalar(q5 ? b5->d : b4->d);
      const float dmin = f16_scalar(q5 ? b5->dmin : b4->dmin);
      // The 12 scale bytes as three words: 6-bit scales and mins of sub-blocks 0-3 sit in
      // words 0 and 1, those of 4-7 are split between word 2 (low 4 bits) and the top two
      // bits of words 0 and 1.
      uint32_t w3[3];
      std::memcpy(w3, q5 ? b5->scales : b4->scales, 12);
      const uint32_t sc_lo = w3[0] & 0x3f3f3f3fu, mn_lo = w3[1] & 0x3f3f3f3fu;
      const uint32_t sc_hi = (w3[2] & 0x0f0f0f0fu) | (((w3[0] >> 6) & 0x03030303u) << 4);
      const uint32_t mn_hi = ((w3[2] >> 4) & 0x0f0f0f0fu) | (((w3[1] >> 6) & 0x03030303u) << 4);
      const __m128i sc8 = _mm_setr_epi32(static_cast<int>(sc_lo), static_cast<int>(sc_hi), 0, 0);
      const __m128i mn8 = _mm_setr_epi32(static_cast<int>(mn_lo), static_cast<int>(mn_hi), 0, 0);
      const __m512i scv = _mm512_cvtepu8_epi32(sc8);
      mnf = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mn8)), _mm256_set1_ps(-dmin));
      const uint8_t* qs = q5 ? b5->qs : b4->qs;
      const __m256i hb = q5 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b5->qh)) : _mm256_setzero_si256();
      for (int c = 0; c < 4; ++c) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
        __m256i lo = _mm256_and_si256(x, m4), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
        if constexpr (q5) {
          const __m256i one = _mm256_set1_epi8(1);
          lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c)), one), 4));
          hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c + 1)), one), 4));
        }
        u[c] = _mm512_or_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), _mm512_set1_epi8(static_cast<char>(0x80)));
        scl[c] = _mm512_permutexvar_epi32(_mm512_setr_epi32(2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c + 1,
                                                            2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1),
                                          scv);
      }
    } else {  // Q6_K
      const auto* b6 = reinterpret_cast<const BlockQ6_K*>(row + b * sizeof(BlockQ6_K));
      d = f16_scalar(b6->d);
      unpack_q6_k_u8(b6, u, scl);
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; ++i) {
      const ActRow& a = acts[i];
      const int64_t v = b * 256;
      __m512i isum = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m512i t = _mm512_dpbusd_epi32(_mm512_loadu_si512(a.corr4 + (v + 64 * j) / 4), u[j], _mm512_loadu_si512(a.qs + v + 64 * j));
        isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(t, scl[j]));
      }
      const float da = a.da16[v / 16];
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * da), acc[i]);
      if constexpr (T != TensorType::Q6_K) accm[i] = _mm256_fmadd_ps(mnf, _mm256_loadu_ps(a.m32 + v / 32), accm[i]);
    }
  }
  for (int i = 0; i < N; ++i) out[i] = _mm512_reduce_add_ps(acc[i]) + hsum256(accm[i]);
}

// Q2_K / Q3_K: 2-bit codes (Q3_K: plus the hmask bit, minus 4), 16 sub-blocks of 16 with
// integer scales (Q2_K: and mins) applied like Q6_K's.
template <TensorType T, int N>
TINYSLM_TARGET_AVX512 inline void gemv_row_k23(const uint8_t* row, int64_t k, const ActRow* acts, float* out) {
  constexpr bool q3 = T == TensorType::Q3_K;
  const int64_t nb = k / 256;
  __m512 acc[N], accm[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm512_setzero_ps(), accm[i] = _mm512_setzero_ps();
  const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
  for (int64_t b = 0; b < nb; ++b) {
    const auto* b2 = reinterpret_cast<const BlockQ2_K*>(row + b * sizeof(BlockQ2_K));
    const auto* b3 = reinterpret_cast<const BlockQ3_K*>(row + b * sizeof(BlockQ3_K));
    const uint8_t* qs = q3 ? b3->qs : b2->qs;
    __m512i u[4], scl[4];
    __m512i scv;
    __m512 mnf = _mm512_setzero_ps();
    float d;
    if constexpr (q3) {
      d = f16_scalar(b3->d);
      uint32_t a[3];
      std::memcpy(a, b3->scales, 12);
      const uint32_t lo4 = 0x0f0f0f0fu, lo2 = 0x03030303u;
      const uint32_t s0 = (a[0] & lo4) | (((a[2] >> 0) & lo2) << 4), s1 = (a[1] & lo4) | (((a[2] >> 2) & lo2) << 4);
      const uint32_t s2 = ((a[0] >> 4) & lo4) | (((a[2] >> 4) & lo2) << 4);
      const uint32_t s3 = ((a[1] >> 4) & lo4) | (((a[2] >> 6) & lo2) << 4);
      const __m128i sc8 = _mm_setr_epi32(static_cast<int>(s0), static_cast<int>(s1), static_cast<int>(s2), static_cast<int>(s3));
      scv = _mm512_sub_epi32(_mm512_cvtepu8_epi32(sc8), _mm512_set1_epi32(32));
    } else {
      d = f16_scalar(b2->d);
      const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b2->scales));
      scv = _mm512_cvtepu8_epi32(_mm_and_si128(sc8, _mm_set1_epi8(0x0F)));
      mnf = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(0x0F)))),
                          _mm512_set1_ps(-f16_scalar(b2->dmin)));
    }
    const __m256i hm = q3 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b3->hmask)) : _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
      const int h = j / 2;
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * h));
      __m256i v[2];
      for (int e = 0; e < 2; ++e) {
        const int jj = 2 * (j % 2) + e;
        v[e] = _mm256_and_si256(_mm256_srl_epi16(x, _mm_cvtsi32_si128(2 * jj)), m3);
        if constexpr (q3) {
          const __m256i hb = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(4 * h + jj)), one);
          v[e] = _mm256_add_epi8(v[e], _mm256_slli_epi16(hb, 2));  // code + 4 * bit, in 0..7
        }
      }
      // u = w + 128: Q3_K w = code + 4 * bit - 4; Q2_K w = code.
      u[j] = _mm512_add_epi8(_mm512_inserti64x4(_mm512_castsi256_si512(v[0]), v[1], 1), _mm512_set1_epi8(q3 ? 124 : static_cast<char>(128)));
      const int g = 4 * j;
      scl[j] = _mm512_permutexvar_epi32(
          _mm512_setr_epi32(g, g, g, g, g + 1, g + 1, g + 1, g + 1, g + 2, g + 2, g + 2, g + 2, g + 3, g + 3, g + 3, g + 3), scv);
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; ++i) {
      const ActRow& a = acts[i];
      const int64_t v0 = b * 256;
      __m512i isum = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m512i t = _mm512_dpbusd_epi32(_mm512_loadu_si512(a.corr4 + (v0 + 64 * j) / 4), u[j], _mm512_loadu_si512(a.qs + v0 + 64 * j));
        isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(t, scl[j]));
      }
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * a.da16[v0 / 16]), acc[i]);
      if constexpr (!q3) accm[i] = _mm512_fmadd_ps(mnf, _mm512_loadu_ps(a.m16 + v0 / 16), accm[i]);
    }
  }
  for (int i = 0; i < N; ++i) out[i] = _mm512_reduce_add_ps(acc[i]) + (q3 ? 0.f : _mm512_reduce_add_ps(accm[i]));
}

// Q4_0 / Q5_0 decode (one token), the activation rearranged once per call so each group of
// four blocks unpacks with one word permute and one AND / shift / AND:
//  - the four 16-byte qs fields are gathered into one zmm (vpermt2w over two overlapping
//    64-byte loads covering the group), so the low nibbles give [b0 v0-15, b1 v0-15, b2 ..,
//    b3 ..] and the high nibbles [b0 v16-31, b1 .., b2 .., b3 ..];
//  - the activation is stored in the same two orders (lo, hi), so both vpdpbusd land in the
//    same lanes: lane j holds 8 products of block j / 4, and one scale vector serves both;
//  - the code q (Q4_0 0..15, Q5_0 0..31) enters vpdpbusd unsigned and w = q - off (8, 16) is
//    restored exactly by starting each lane at -off * (sum of its 8 activations);
//  - the fp16 scales (and Q5_0's high-bit words) come out of the same loads with one vpermw.
inline constexpr int64_t kPrepMax = 16384;  // longest row these paths take (values)
struct alignas(64) LegacyPrep {
  int8_t q[kPrepMax];            // per group of 128: lo order (64 bytes), then hi order
  int32_t corr[kPrepMax / 8];    // per group: 16 lanes of -off * sum
  float da[kPrepMax / 32];       // activation scale per block
};

template <int Shift>  // off = 1 << Shift
TINYSLM_TARGET_AVX512 inline void prepare_legacy(const ActRow& a, int64_t k, LegacyPrep& p) {
  const __m512i lo_idx = _mm512_setr_epi64(0, 1, 4, 5, 8, 9, 12, 13);
  const __m512i hi_idx = _mm512_setr_epi64(2, 3, 6, 7, 10, 11, 14, 15);
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t g = 0; g < k / 128; ++g) {
    const __m512i a01 = _mm512_loadu_si512(a.qs + 128 * g), a23 = _mm512_loadu_si512(a.qs + 128 * g + 64);
    const __m512i lo = _mm512_permutex2var_epi64(a01, lo_idx, a23), hi = _mm512_permutex2var_epi64(a01, hi_idx, a23);
    _mm512_store_si512(p.q + 128 * g, lo);
    _mm512_store_si512(p.q + 128 * g + 64, hi);
    const __m512i s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, lo), ones, hi);
    _mm512_store_si512(p.corr + 16 * g, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(s, Shift)));
  }
  for (int64_t b = 0; b < k / 32; ++b) p.da[b] = a.da32[b];
}

// Word index w of a group, read from A = bytes [0, 64) or B = bytes [Bo, Bo + 64).
template <int Bo>
constexpr int group_word(int w) { return w < 32 ? w : 32 + w - Bo / 2; }

template <TensorType T>
TINYSLM_TARGET_AVX512 inline float gemv_row_legacy_prep(const uint8_t* row, int64_t k, const LegacyPrep& p, const ActRow& a) {
  constexpr bool q5 = T == TensorType::Q5_0;
  constexpr int bb = q5 ? 22 : 18, qw = q5 ? 3 : 1, bw = bb / 2;  // qs word offset, block words
  constexpr int Bo = 4 * bb - 64;                                   // second load: the group's last 64 bytes
  auto pair = [](int lo_w, int hi_w) { return (group_word<Bo>(hi_w) << 16) | group_word<Bo>(lo_w); };
  const __m512i qs_idx = _mm512_setr_epi32(
      pair(qw + 0, qw + 1), pair(qw + 2, qw + 3), pair(qw + 4, qw + 5), pair(qw + 6, qw + 7),
      pair(bw + qw + 0, bw + qw + 1), pair(bw + qw + 2, bw + qw + 3), pair(bw + qw + 4, bw + qw + 5), pair(bw + qw + 6, bw + qw + 7),
      pair(2 * bw + qw + 0, 2 * bw + qw + 1), pair(2 * bw + qw + 2, 2 * bw + qw + 3), pair(2 * bw + qw + 4, 2 * bw + qw + 5),
      pair(2 * bw + qw + 6, 2 * bw + qw + 7), pair(3 * bw + qw + 0, 3 * bw + qw + 1), pair(3 * bw + qw + 2, 3 * bw + qw + 3),
      pair(3 * bw + qw + 4, 3 * bw + qw + 5), pair(3 * bw + qw + 6, 3 * bw + qw + 7));
  // Words 0-3: the four scales; Q5_0 words 4-7 / 8-11: low / high halves of the four qh.
  const __m512i hdr_idx = _mm512_setr_epi32(pair(0, bw), pair(2 * bw, 3 * bw), pair(1, bw + 1), pair(2 * bw + 1, 3 * bw + 1),
                                            pair(2, bw + 2), pair(2 * bw + 2, 3 * bw + 2), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i lane_idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  __m512 acc = _mm512_setzero_ps();
  const int64_t nb = k / 32;
  int64_t b = 0;
#pragma GCC unroll 2
  for (; b + 4 <= nb; b += 4) {
    const uint8_t* g = row + b * bb;
    const __m512i A = _mm512_loadu_si512(g), B = _mm512_loadu_si512(g + Bo);
    const __m512i z = _mm512_permutex2var_epi16(A, qs_idx, B);
    __m512i lo = _mm512_and_si512(z, m4), hi = _mm512_and_si512(_mm512_srli_epi16(z, 4), m4);
    // Q4_0's scales all sit in A: a one-source permute is cheaper.
    const __m512i hdr = q5 ? _mm512_permutex2var_epi16(A, hdr_idx, B) : _mm512_permutexvar_epi16(hdr_idx, A);
    if constexpr (q5) {
      const __m256i h = _mm512_castsi512_si256(hdr);
      const __m512i bit = _mm512_set1_epi8(0x10);
      lo = _mm512_mask_add_epi8(lo, _cvtu64_mask64(static_cast<uint64_t>(_mm256_extract_epi64(h, 1))), lo, bit);
      hi = _mm512_mask_add_epi8(hi, _cvtu64_mask64(static_cast<uint64_t>(_mm256_extract_epi64(h, 2))), hi, bit);
    }
    const int64_t gi = b / 4;
    __m512i t = _mm512_dpbusd_epi32(_mm512_load_si512(p.corr + 16 * gi), lo, _mm512_load_si512(p.q + 128 * gi));
    t = _mm512_dpbusd_epi32(t, hi, _mm512_load_si512(p.q + 128 * gi + 64));
    const __m128 dw = _mm_cvtph_ps(_mm512_castsi512_si128(hdr));
    const __m512 s4 = _mm512_castps128_ps512(_mm_mul_ps(dw, _mm_loadu_ps(p.da + b)));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_permutexvar_ps(lane_idx, s4), acc);
  }
  const __m512i half_idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  for (; b < nb; b += 2) {  // the last 1-3 blocks: natural order, as gemv_row_legacy
    const bool two = b + 1 < nb;
    const uint8_t* b0 = row + b * bb;
    const uint8_t* b1 = two ? b0 + bb : b0;
    const __m512i u = legacy_pair_u8<T>(b0, b1);
    uint16_t h0, h1;
    std::memcpy(&h0, b0, 2);
    std::memcpy(&h1, b1, 2);
    const __m128 dw = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(h0 | (two ? static_cast<uint32_t>(h1) << 16 : 0u))));
    const __mmask16 m16 = two ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>(0x00FF);
    const __m512i t = _mm512_dpbusd_epi32(_mm512_maskz_loadu_epi32(m16, a.corr4 + b * 8), u,
                                          _mm512_maskz_loadu_epi32(m16, a.qs + b * 32));
    const __m128 da = _mm_setr_ps(a.da16[2 * b], two ? a.da16[2 * b + 2] : 0.f, 0.f, 0.f);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_permutexvar_ps(half_idx, _mm512_castps128_ps512(_mm_mul_ps(dw, da))), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// Q4_K decode (one token): each 64 qs bytes hold values [0, 32) + [64, 96) of their 128 in
// the low nibbles and [32, 64) + [96, 128) in the high ones, so the activation is rearranged
// once per call into that order and one AND / shift / AND unpacks 128 values. The code q in
// 0..15 is the weight itself (the min is separate), so vpdpbusd needs no correction.
TINYSLM_TARGET_AVX512 inline void prepare_q4_k(const ActRow& a, int64_t k, LegacyPrep& p) {
  const __m512i lo_idx = _mm512_setr_epi64(0, 1, 2, 3, 8, 9, 10, 11);
  const __m512i hi_idx = _mm512_setr_epi64(4, 5, 6, 7, 12, 13, 14, 15);
  for (int64_t g = 0; g < k / 128; ++g) {
    const __m512i a01 = _mm512_loadu_si512(a.qs + 128 * g), a23 = _mm512_loadu_si512(a.qs + 128 * g + 64);
    _mm512_store_si512(p.q + 128 * g, _mm512_permutex2var_epi64(a01, lo_idx, a23));
    _mm512_store_si512(p.q + 128 * g + 64, _mm512_permutex2var_epi64(a01, hi_idx, a23));
  }
}

// Inlined into the row loop, and its super-block loop unrolled by two (measured side by side
// from memory, 2 MB pages, 1 thread: rows of 2048 values 18.8 -> 21.8 GB/s, of 1024 19 -> 21.7).
TINYSLM_TARGET_AVX512 __attribute__((always_inline)) inline float gemv_row_q4_k_prep(const uint8_t* row, int64_t k, const LegacyPrep& p, const ActRow& a) {
  const int64_t nb = k / 256;
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  // Sub-block (of 32) of each lane: low nibbles of the first 64 bytes cover sub-blocks 0 and
  // 2, high nibbles 1 and 3; the second 64 bytes 4, 6 and 5, 7.
  const __m512i i0 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
  const __m512i i1 = _mm512_setr_epi32(1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m512i i2 = _mm512_setr_epi32(4, 4, 4, 4, 4, 4, 4, 4, 6, 6, 6, 6, 6, 6, 6, 6);
  const __m512i i3 = _mm512_setr_epi32(5, 5, 5, 5, 5, 5, 5, 5, 7, 7, 7, 7, 7, 7, 7, 7);
  __m512 acc = _mm512_setzero_ps();
  __m256 accm = _mm256_setzero_ps();
#pragma GCC unroll 2
  for (int64_t b = 0; b < nb; ++b) {
    const auto* blk = reinterpret_cast<const BlockQ4_K*>(row + b * sizeof(BlockQ4_K));
    const float d = f16_scalar(blk->d), dmin = f16_scalar(blk->dmin);
    uint32_t w3[3];
    std::memcpy(w3, blk->scales, 12);  // the 6-bit scales / mins, as in gemv_row_k
    const uint32_t sc_lo = w3[0] & 0x3f3f3f3fu, mn_lo = w3[1] & 0x3f3f3f3fu;
    const uint32_t sc_hi = (w3[2] & 0x0f0f0f0fu) | (((w3[0] >> 6) & 0x03030303u) << 4);
    const uint32_t mn_hi = ((w3[2] >> 4) & 0x0f0f0f0fu) | (((w3[1] >> 6) & 0x03030303u) << 4);
    const __m128i sc8 = _mm_setr_epi32(static_cast<int>(sc_lo), static_cast<int>(sc_hi), 0, 0);
    const __m512i scw = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(sc8));
    const __m256 mnf = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_setr_epi32(static_cast<int>(mn_lo), static_cast<int>(mn_hi), 0, 0))),
                                     _mm256_set1_ps(-dmin));
    const __m512i z0 = _mm512_loadu_si512(blk->qs), z1 = _mm512_loadu_si512(blk->qs + 64);
    const int8_t* q = p.q + 256 * b;
    const __m512i zero = _mm512_setzero_si512();
    const __m512i t0 = _mm512_dpbusd_epi32(zero, _mm512_and_si512(z0, m4), _mm512_load_si512(q));
    const __m512i t1 = _mm512_dpbusd_epi32(zero, _mm512_and_si512(_mm512_srli_epi16(z0, 4), m4), _mm512_load_si512(q + 64));
    const __m512i t2 = _mm512_dpbusd_epi32(zero, _mm512_and_si512(z1, m4), _mm512_load_si512(q + 128));
    const __m512i t3 = _mm512_dpbusd_epi32(zero, _mm512_and_si512(_mm512_srli_epi16(z1, 4), m4), _mm512_load_si512(q + 192));
    // Each lane of t is at most 4 * 15 * 127 (int16): vpdpwssd scales it and adds.
    __m512i isum = _mm512_dpwssd_epi32(zero, t0, _mm512_maskz_permutexvar_epi16(0x55555555u, i0, scw));
    isum = _mm512_dpwssd_epi32(isum, t1, _mm512_maskz_permutexvar_epi16(0x55555555u, i1, scw));
    isum = _mm512_dpwssd_epi32(isum, t2, _mm512_maskz_permutexvar_epi16(0x55555555u, i2, scw));
    isum = _mm512_dpwssd_epi32(isum, t3, _mm512_maskz_permutexvar_epi16(0x55555555u, i3, scw));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * a.da16[b * 16]), acc);
    accm = _mm256_fmadd_ps(mnf, _mm256_loadu_ps(a.m32 + b * 8), accm);
  }
  return _mm512_reduce_add_ps(acc) + hsum256(accm);
}

// Q6_K decode (one token): the codes q in 0..63 enter vpdpbusd unsigned (no offset), so
// each lane's sum of 4 products stays within int16 (4 * 63 * 127); vpdpwssd then multiplies
// the lanes by their sub-block scales (in the low word of each dword, high word zero) and
// adds. The -32 offset comes out per sub-block of 16 through the activation's sums, kept
// negated as int16 once per call: isum starts at 32 * sum(sc * -s16).
struct alignas(64) Q6Prep {
  int16_t s16[kPrepMax / 16];  // minus the activation's sum of each 16 values
};

// Inlined into the row loop and unrolled by two, like gemv_row_q4_k_prep (rows of 2048
// values: 23.4 -> 25.8 GB/s from memory at 1 thread).
TINYSLM_TARGET_AVX512 __attribute__((always_inline)) inline float gemv_row_q6_k_prep(const uint8_t* row, int64_t k, const Q6Prep& p, const ActRow& a) {
  const int64_t nb = k / 256;
  const __m512i m4 = _mm512_set1_epi8(0x0F), m33 = _mm512_set1_epi8(0x33);
  const __m512i idx0 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512i idx1 = _mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
  const __m512i idx2 = _mm512_setr_epi32(8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11);
  const __m512i idx3 = _mm512_setr_epi32(12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15);
  const __mmask32 even = 0x55555555u;
  __m512 acc = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int64_t b = 0; b < nb; ++b) {
    const auto* b6 = reinterpret_cast<const BlockQ6_K*>(row + b * sizeof(BlockQ6_K));
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b6->scales)));
    const __m512i scw = _mm512_castsi256_si512(sc16);
    const int64_t v = b * 256;
    // -32 * sum over sub-blocks of sc * s16, two sub-blocks per lane of 8.
    const __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(sc16, _mm256_load_si256(reinterpret_cast<const __m256i*>(p.s16 + v / 16))), 5);
    __m512i isum = _mm512_zextsi256_si512(corr);
    const __m512i l0 = _mm512_loadu_si512(b6->ql), l1 = _mm512_loadu_si512(b6->ql + 64);
    const __m512i q0 = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b6->qh)));
    const __m512i q1 = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b6->qh + 32)));
    // Keep bits 0-1 and 4-5 of each qh byte (upper copy shifted by 2 first); one bitwise
    // select (vpternlogd 0xE4: C ? A : B with C = 0x0F) then joins a nibble of ql with its two
    // high bits, and whatever a 16-bit shift carries across bytes lands where ql is taken.
    const __m512i qs0 = _mm512_and_si512(_mm512_mask_srli_epi16(q0, static_cast<__mmask32>(0xFFFF0000u), q0, 2), m33);
    const __m512i qs1 = _mm512_and_si512(_mm512_mask_srli_epi16(q1, static_cast<__mmask32>(0xFFFF0000u), q1, 2), m33);
    const __m512i u0 = _mm512_ternarylogic_epi32(l0, _mm512_slli_epi16(qs0, 4), m4, 0xE4);
    const __m512i u1 = _mm512_ternarylogic_epi32(_mm512_srli_epi16(l0, 4), qs0, m4, 0xE4);
    const __m512i u2 = _mm512_ternarylogic_epi32(l1, _mm512_slli_epi16(qs1, 4), m4, 0xE4);
    const __m512i u3 = _mm512_ternarylogic_epi32(_mm512_srli_epi16(l1, 4), qs1, m4, 0xE4);
    const __m512i zero = _mm512_setzero_si512();
    const __m512i t0 = _mm512_dpbusd_epi32(zero, u0, _mm512_loadu_si512(a.qs + v));
    const __m512i t1 = _mm512_dpbusd_epi32(zero, u1, _mm512_loadu_si512(a.qs + v + 64));
    const __m512i t2 = _mm512_dpbusd_epi32(zero, u2, _mm512_loadu_si512(a.qs + v + 128));
    const __m512i t3 = _mm512_dpbusd_epi32(zero, u3, _mm512_loadu_si512(a.qs + v + 192));
    isum = _mm512_dpwssd_epi32(isum, t0, _mm512_maskz_permutexvar_epi16(even, idx0, scw));
    isum = _mm512_dpwssd_epi32(isum, t1, _mm512_maskz_permutexvar_epi16(even, idx1, scw));
    isum = _mm512_dpwssd_epi32(isum, t2, _mm512_maskz_permutexvar_epi16(even, idx2, scw));
    isum = _mm512_dpwssd_epi32(isum, t3, _mm512_maskz_permutexvar_epi16(even, idx3, scw));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(f16_scalar(b6->d) * a.da16[v / 16]), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// IQ4_XS, few tokens: two sub-blocks (64 values) per zmm. Their 32 bytes of nibbles are laid
// out as [first, first, second, second] in the four 128-bit lanes, shifted by 0 / 4 per lane
// so each lane holds 16 codes, then looked up in the level table biased by +128 (unsigned
// bytes for vpdpbusd, whose +128 is taken out by corr4).
template <int N>
TINYSLM_TARGET_AVX512 inline void gemv_row_iq4_xs(const uint8_t* row, int64_t k, const ActRow* acts, float* out) {
  const auto* blocks = reinterpret_cast<const BlockIQ4_XS*>(row);
  const __m512i table = _mm512_broadcast_i32x4(
      _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)), _mm_set1_epi8(static_cast<char>(0x80))));
  const long long by4 = 0x0004000400040004;
  const __m512i shifts = _mm512_set_epi64(by4, by4, 0, 0, by4, by4, 0, 0);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  __m512 acc[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < k / kBlockK; ++b) {
    const BlockIQ4_XS& blk = blocks[b];
    const float d = f16_scalar(blk.d);
    for (int j = 0; j < 4; ++j) {
      const __m512i x = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 32 * j)));
      const __m512i codes = _mm512_and_si512(_mm512_srlv_epi16(_mm512_shuffle_i64x2(x, x, 0x50), shifts), m4);
      const __m512i u = _mm512_shuffle_epi8(table, codes);
      const float s0 = d * static_cast<float>(iq4xs_scale(blk, 2 * j));
      const float s1 = d * static_cast<float>(iq4xs_scale(blk, 2 * j + 1));
      const int64_t v = b * kBlockK + 64 * j;
      for (int i = 0; i < N; ++i) {
        const ActRow& a = acts[i];
        const __m512i dp = _mm512_dpbusd_epi32(_mm512_loadu_si512(a.corr4 + v / 4), u, _mm512_loadu_si512(a.qs + v));
        const float da = a.da16[v / 16];
        const __m512 sv = _mm512_insertf32x8(_mm512_set1_ps(s0 * da), _mm256_set1_ps(s1 * da), 1);
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), sv, acc[i]);
      }
    }
  }
  for (int i = 0; i < N; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

template <TensorType T, int N>
TINYSLM_TARGET_AVX512 inline void gemv_rows_fused(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts,
                                                  float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if constexpr ((T == TensorType::Q4_0 || T == TensorType::Q5_0) && N == 1) {
    if (k <= kPrepMax) {
      LegacyPrep prep;
      prepare_legacy<T == TensorType::Q4_0 ? 3 : 4>(acts[0], k, prep);
      for (int64_t r = r0; r < r1; ++r) y[r] = gemv_row_legacy_prep<T>(data + r * row_bytes, k, prep, acts[0]);
      return;
    }
  }
  if constexpr (T == TensorType::Q4_K && N == 1) {
    if (k <= kPrepMax) {
      LegacyPrep prep;
      prepare_q4_k(acts[0], k, prep);
      for (int64_t r = r0; r < r1; ++r) y[r] = gemv_row_q4_k_prep(data + r * row_bytes, k, prep, acts[0]);
      return;
    }
  }
  if constexpr (T == TensorType::Q6_K && N == 1) {
    if (k <= kPrepMax) {
      Q6Prep prep;
      for (int64_t g = 0; g < k / 16; ++g) prep.s16[g] = static_cast<int16_t>(-acts[0].sum16[g]);
      for (int64_t r = r0; r < r1; ++r) y[r] = gemv_row_q6_k_prep(data + r * row_bytes, k, prep, acts[0]);
      return;
    }
  }
  float out[N];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = data + r * row_bytes;
    if constexpr (T == TensorType::Q4_K || T == TensorType::Q5_K || T == TensorType::Q6_K)
      gemv_row_k<T, N>(row, k, acts, out);
    else if constexpr (T == TensorType::Q2_K || T == TensorType::Q3_K)
      gemv_row_k23<T, N>(row, k, acts, out);
    else if constexpr (T == TensorType::IQ4_XS)
      gemv_row_iq4_xs<N>(row, k, acts, out);
    else
      gemv_row_legacy<T, N>(row, k, acts, out);
    for (int i = 0; i < N; ++i) y[i * ldy + r] = out[i];
  }
}

template <TensorType T>
inline bool gemv_fused_n(int64_t n, const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, float* y,
                         int64_t ldy, int64_t r0, int64_t r1) {
  switch (n) {
    case 1: gemv_rows_fused<T, 1>(data, row_bytes, k, acts, y, ldy, r0, r1); return true;
    case 2: gemv_rows_fused<T, 2>(data, row_bytes, k, acts, y, ldy, r0, r1); return true;
    case 3: gemv_rows_fused<T, 3>(data, row_bytes, k, acts, y, ldy, r0, r1); return true;
    default: return false;
  }
}


// ---------------------------------------------------------------------------------------
// AVX-512 VNNI GEMM on interleaved 16-row panels.

struct alignas(64) Panel {
  uint8_t u[kChunk / 4][16][4];   // u[q][r] = bytes 4q..4q+3 of row r, plus 128
  float s16[kChunk / 16][16];     // weight scale of each 16 values, per row
  float mw[kChunk / 16][16];      // min per group, per row
};

// Decodes rows [r0, r0 + nr) (nr <= 16) for values [v0, v0 + nv) into the panel.
template <TensorType T>
TINYSLM_TARGET_AVX512 inline void fill_panel(const uint8_t* data, int64_t row_bytes,
                                             int64_t r0, int nr, int64_t v0, int64_t nv, Panel& p) {
  constexpr WeightTraits tr = weight_traits(T);
  alignas(64) int8_t w[kChunk];
  alignas(64) float sw16[kChunk / 16 + 4];
  alignas(64) float mw[kChunk / 16];
  const int64_t nq = nv / 4;
  for (int r = 0; r < 16; ++r) {
    if (r < nr) {
      decode_chunk<T>(data + (r0 + r) * row_bytes, v0, nv, w, sw16, mw);
      // Scatter 4-byte words of the row into column r of the panel (bytes flipped to w + 128).
      const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
      const __m512i vidx = _mm512_set_epi32(15 * 16, 14 * 16, 13 * 16, 12 * 16, 11 * 16, 10 * 16, 9 * 16, 8 * 16, 7 * 16,
                                            6 * 16, 5 * 16, 4 * 16, 3 * 16, 2 * 16, 16, 0);
      for (int64_t q = 0; q < nq; q += 16) {
        const __mmask16 m = nq - q >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (nq - q)) - 1u);
        const __m512i v = _mm512_xor_si512(_mm512_maskz_loadu_epi32(m, w + 4 * q), flip);
        _mm512_mask_i32scatter_epi32(&p.u[q][r][0], m, vidx, v, 4);
      }
      for (int64_t g = 0; g < nv / 16; ++g) p.s16[g][r] = sw16[g];
      if (tr.has_min)
        for (int64_t g = 0; g < nv / tr.group; ++g) p.mw[g][r] = mw[g];
    } else {
      for (int64_t q = 0; q < nq; ++q) std::memset(&p.u[q][r][0], 0x80, 4);
      for (int64_t g = 0; g < nv / 16; ++g) p.s16[g][r] = 0.f;
      if (tr.has_min)
        for (int64_t g = 0; g < nv / tr.group; ++g) p.mw[g][r] = 0.f;
    }
  }
}

// acc[c] (16 rows, c < 8 tokens) = panel (values [0, nv) of the chunk at v0) times the
// tile's tokens. The q and c loops are interleaved so the 8 integer sums are independent
// chains; each vpdpbusd takes its 4 activation bytes as an embedded broadcast.
// vpdpbusd with the signed operand broadcast from memory ({1to16}): compilers do not fold
// the broadcast themselves, and a separate vpbroadcastd costs a vector-pipe slot.
TINYSLM_TARGET_AVX512 inline __m512i dpbusd_bcast(__m512i acc, __m512i u8, const int32_t* s8x4) {
#if defined(__GNUC__) && !defined(TINYSLM_NO_INLINE_ASM)
  __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u8), "m"(*s8x4));
  return acc;
#else
  return _mm512_dpbusd_epi32(acc, u8, _mm512_set1_epi32(*s8x4));
#endif
}

template <int G, bool Min>
TINYSLM_TARGET_AVX512 inline void panel_kernel(const Panel& p, int64_t v0, int64_t nv, const TokenTile& t, __m512* out) {
  constexpr int C = kTileTokens;
  const int32_t* q4 = t.q + v0 / 4 * C;
  const int32_t* cc = G == 32 ? t.c32 + v0 / 32 * C : t.c16 + v0 / 16 * C;
  const float* dd = t.d16 + v0 / 16 * C;
  const float* mm = G == 32 ? t.m32 + v0 / 32 * C : t.m16 + v0 / 16 * C;
  __m512 acc[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) acc[c] = _mm512_setzero_ps();
  for (int64_t g = 0; g < nv / G; ++g) {
    __m512i wq[G / 4];
#pragma GCC unroll 8
    for (int q = 0; q < G / 4; ++q) wq[q] = _mm512_load_si512(&p.u[g * (G / 4) + q][0][0]);
    __m512i isum[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) isum[c] = _mm512_set1_epi32(cc[g * C + c]);
    const int32_t* qg = q4 + g * (G / 4) * C;
#pragma GCC unroll 8
    for (int q = 0; q < G / 4; ++q) {
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) isum[c] = dpbusd_bcast(isum[c], wq[q], qg + q * C + c);
    }
    const __m512 s = _mm512_load_ps(&p.s16[g * (G / 16)][0]);
    const float* dg = dd + g * (G / 16) * C;
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[c]), _mm512_mul_ps(s, _mm512_set1_ps(dg[c])), acc[c]);
      if (Min) acc[c] = _mm512_fmadd_ps(_mm512_load_ps(&p.mw[g][0]), _mm512_set1_ps(mm[g * C + c]), acc[c]);
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) out[c] = acc[c];
}

template <int G, bool Min>
TINYSLM_TARGET_AVX512 inline void panel_tokens(const Panel& p, int64_t v0, int64_t nv, const TokenTile* tiles, int64_t n,
                                               float* y, int64_t ldy, int64_t r0, int nr, bool first) {
  const __mmask16 mask = static_cast<__mmask16>((1u << nr) - 1u);
  __m512 acc[kTileTokens];
  for (int64_t i0 = 0; i0 < n; i0 += kTileTokens) {
    panel_kernel<G, Min>(p, v0, nv, tiles[i0 / kTileTokens], acc);
    const int64_t nc = n - i0 < kTileTokens ? n - i0 : kTileTokens;
    for (int64_t c = 0; c < nc; ++c) {
      float* yp = y + (i0 + c) * ldy + r0;
      __m512 v = acc[c];
      if (!first) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, yp), v);
      _mm512_mask_storeu_ps(yp, mask, v);
    }
  }
}

template <TensorType T>
TINYSLM_TARGET_AVX512 inline __m512 load16_weights(const uint8_t* row, int64_t i) {
  if constexpr (T == TensorType::F32) return _mm512_loadu_ps(row + 4 * i);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * i));
  if constexpr (T == TensorType::F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <TensorType T>
TINYSLM_TARGET_AVX512 inline __m512 load16_weights_masked(const uint8_t* row, int64_t i, __mmask16 m) {
  if constexpr (T == TensorType::F32) return _mm512_maskz_loadu_ps(m, row + 4 * i);
  const __m256i h = _mm256_maskz_loadu_epi16(m, row + 2 * i);
  if constexpr (T == TensorType::F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <TensorType T, int R, int C>
TINYSLM_TARGET_AVX512 inline void float_tile_avx512(const uint8_t* const* rows, int64_t k, const float* const* xs,
                                                    float* out) {
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m512 xv[C];
    for (int c = 0; c < C; ++c) xv[c] = _mm512_loadu_ps(xs[c] + i);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = load16_weights<T>(rows[r], i);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  if (i < k) {
    const __mmask16 m = static_cast<__mmask16>((1u << (k - i)) - 1u);
    __m512 xv[C];
    for (int c = 0; c < C; ++c) xv[c] = _mm512_maskz_loadu_ps(m, xs[c] + i);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = load16_weights_masked<T>(rows[r], i, m);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) out[r * C + c] = _mm512_reduce_add_ps(acc[r][c]);
}

struct GemmAvx512 {
  using Panel = x86::Panel;
  static constexpr int kRows = 16;
  template <TensorType T>
  static void fill(const uint8_t* data, int64_t row_bytes, int64_t r0, int nr, int64_t v0, int64_t nv, Panel& p) {
    fill_panel<T>(data, row_bytes, r0, nr, v0, nv, p);
  }
  template <int G, bool Min>
  static void tokens(const Panel& p, int64_t v0, int64_t nv, const TokenTile* tiles, int64_t n, float* y, int64_t ldy,
                     int64_t r0, int nr, bool first) {
    panel_tokens<G, Min>(p, v0, nv, tiles, n, y, ldy, r0, nr, first);
  }
};

template <TensorType T>
struct FloatTileAvx512 {
  template <int R, int C>
  static void run(const uint8_t* const* rows, int64_t k, const float* const* xs, float* out) {
    float_tile_avx512<T, R, C>(rows, k, xs, out);
  }
};

// Types with a fused GEMV above; the others (IQ3_S) decode chunks.
template <TensorType T>
constexpr bool has_fused_gemv() {
  return T != TensorType::IQ3_S;
}

// The block-type table's AVX-512 entry (RowsFn) of weight type T.
template <TensorType T>
inline void rows_avx512(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, const TokenTile* tiles,
                        int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if constexpr (!block_type(T).integer_dot) {
    float_rows_t<FloatTileAvx512<T>, T>(data, row_bytes, k, acts, n, y, ldy, r0, r1);
  } else if (tiles) {
    gemm_panels<GemmAvx512, T>(data, row_bytes, k, tiles, n, y, ldy, r0, r1);
  } else {
    if constexpr (has_fused_gemv<T>())
      if (gemv_fused_n<T>(n, data, row_bytes, k, acts, y, ldy, r0, r1)) return;
    int_rows_gemv_avx512<T>(data, row_bytes, k, acts, n, y, ldy, r0, r1);
  }
}


}  // namespace x86
}  // namespace detail
}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif  // TINYSLM_KERNELS_X86
