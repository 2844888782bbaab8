// tinyslm kernels, x86-64 paths: AVX2 (+FMA, F16C), AVX-VNNI (the AVX2 kernels with
// 256-bit vpdpbusd, see dot4_u8s8) and AVX-512 (F/BW/VL/DQ + VNNI).
//
// Every function here carries a target attribute, so the header compiles without -march
// flags and the dispatcher in kernels.hpp only calls a path after detect_cpu_features()
// said the CPU has it.
//
// Integer weights:
//  - GEMV, few tokens (n < 4 on AVX-512, n <= 8 on AVX2), for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/
//    IQ4_NL/Q4_K/Q5_K/Q6_K (AVX2: Q4_0/Q5_0/Q8_0/Q4_K/Q6_K): fused kernels that unpack each
//    block in registers and dot it with every token. AVX-512 uses VNNI (vpdpbusd) on
//    unsigned bytes u = w + 128 with the exact integer correction -128 * sum(a) (corr4,
//    precomputed per 4 activations). With one token, Q4_0 / Q5_0 / Q4_K rearrange the
//    activation once per call into the order their nibbles unpack to (gemv_row_legacy_prep,
//    gemv_row_q4_k_prep), so a group of values unpacks with one AND / shift / AND. AVX2
//    uses maddubs on the unsigned codes and removes the offset exactly with the
//    activation's sums of 16 (Q8_0: the sign trick); AVX-VNNI the same with vpdpbusd.
//  - The other types, and more tokens on AVX2, go through the canonical decode of
//    kernels_scalar.hpp (SIMD for the common types), one 512-value chunk of a row at a time
//    in L1, reused for up to 16 tokens.
//  - GEMM (AVX-512, n >= kGemmMinTokens): a panel of 16 rows is decoded and interleaved so
//    one zmm holds 4 consecutive bytes of each of the 16 rows; the micro-kernel broadcasts
//    4 activation bytes of a token per vpdpbusd (tokens interleaved 8 at a time, TokenTile)
//    and keeps 8 tokens x 16 rows of accumulators in registers, so scales are applied once
//    per group of 16/32 values per (row, token). Panels are built on the fly from the GGUF
//    bytes (no repacked copy of the weights: no extra memory, no load-time cost).
//  - GEMM on AVX2 / AVX-VNNI (n > 8): 8-row panels, maddubs or vpdpbusd on activations
//    a + 128 (panel8_kernel); with vpdpbusd nothing saturates, so Q8_0 and IQ4_NL take it too.
// Float weights (F32/F16/BF16) use a 4-row x up-to-4-token dot-product tile.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels_scalar.hpp"

#if defined(TINYSLM_ARCH_X86) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TINYSLM_KERNELS_X86 1
#include <immintrin.h>

#define TINYSLM_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TINYSLM_TARGET_AVX512 \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

// GCC 12 warns about its own _mm512_undefined_* helpers once they are inlined here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace tinyslm {
inline namespace v0 {
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

// Decodes native blocks covering values [v0, v0 + nv) of `row` into w / sw16 / mw (mw per
// group of the type, indexed from v0).
TINYSLM_TARGET_AVX2 inline void decode_chunk(TensorType t, const uint8_t* row, int64_t v0, int64_t nv, int8_t* w,
                                             float* sw16, float* mw) {
  const WeightTraits tr = weight_traits(t);
  const int64_t b0 = v0 / tr.block_values, nb = nv / tr.block_values;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t j = 0; j < nb; ++j) {
    const uint8_t* blk = row + (b0 + j) * tr.block_bytes;
    int8_t* o = w + j * tr.block_values;
    float* s = sw16 + j * (tr.block_values / 16);
    switch (t) {
      case TensorType::Q4_0: {
        const auto* b = reinterpret_cast<const BlockQ4_0*>(blk);
        const __m256i v = _mm256_sub_epi8(nibbles32(b->qs), _mm256_set1_epi8(8));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), v);
        s[0] = s[1] = f16_scalar(b->d);
        break;
      }
      case TensorType::Q8_0: {
        const auto* b = reinterpret_cast<const BlockQ8_0*>(blk);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qs)));
        s[0] = s[1] = f16_scalar(b->d);
        break;
      }
      case TensorType::Q5_0: {
        const auto* b = reinterpret_cast<const BlockQ5_0*>(blk);
        uint32_t qh;
        std::memcpy(&qh, b->qh, 4);
        __m256i v = _mm256_or_si256(nibbles32(b->qs), _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
        v = _mm256_sub_epi8(v, _mm256_set1_epi8(16));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), v);
        s[0] = s[1] = f16_scalar(b->d);
        break;
      }
      case TensorType::Q4_1: {
        const auto* b = reinterpret_cast<const BlockQ4_1*>(blk);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), nibbles32(b->qs));
        s[0] = s[1] = f16_scalar(b->d);
        mw[j] = f16_scalar(b->m);
        break;
      }
      case TensorType::Q5_1: {
        const auto* b = reinterpret_cast<const BlockQ5_1*>(blk);
        uint32_t qh;
        std::memcpy(&qh, b->qh, 4);
        const __m256i v = _mm256_or_si256(nibbles32(b->qs), _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), v);
        s[0] = s[1] = f16_scalar(b->d);
        mw[j] = f16_scalar(b->m);
        break;
      }
      case TensorType::IQ4_NL: {
        const auto* b = reinterpret_cast<const BlockIQ4_NL*>(blk);
        const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm256_shuffle_epi8(table, nibbles32(b->qs)));
        s[0] = s[1] = f16_scalar(b->d);
        break;
      }
      case TensorType::Q4_K:
      case TensorType::Q5_K: {
        const bool q5 = t == TensorType::Q5_K;
        const auto* b4 = reinterpret_cast<const BlockQ4_K*>(blk);
        const auto* b5 = reinterpret_cast<const BlockQ5_K*>(blk);
        const float d = f16_scalar(q5 ? b5->d : b4->d), dmin = f16_scalar(q5 ? b5->dmin : b4->dmin);
        const uint8_t* qs = q5 ? b5->qs : b4->qs;
        uint8_t sc[8], mn[8];
        unpack_scales_k4(q5 ? b5->scales : b4->scales, sc, mn);
        const __m256i hb = q5 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b5->qh)) : _mm256_setzero_si256();
        const __m256i one = _mm256_set1_epi8(1);
        for (int c = 0; c < 4; ++c) {
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
          __m256i lo = _mm256_and_si256(x, m4);
          __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
          if (q5) {
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
          mw[j * 8 + g] = -dmin * static_cast<float>(mn[g]);
        }
        break;
      }
      case TensorType::Q6_K: {
        const auto* b = reinterpret_cast<const BlockQ6_K*>(blk);
        const __m256i m3 = _mm256_set1_epi8(3), off = _mm256_set1_epi8(32);
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
        break;
      }
      case TensorType::Q2_K:
      case TensorType::Q3_K: {
        const bool q3 = t == TensorType::Q3_K;
        const auto* b2 = reinterpret_cast<const BlockQ2_K*>(blk);
        const auto* b3 = reinterpret_cast<const BlockQ3_K*>(blk);
        const uint8_t* qs = q3 ? b3->qs : b2->qs;
        const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1), four = _mm256_set1_epi8(4);
        const __m256i hm = q3 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b3->hmask)) : _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * h));
          for (int jj = 0; jj < 4; ++jj) {
            __m256i v = _mm256_and_si256(_mm256_srl_epi16(x, _mm_cvtsi32_si128(2 * jj)), m3);
            if (q3) {  // value = low two bits - 4, unless the hmask bit is set
              const __m256i hb = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(4 * h + jj)), one);
              v = _mm256_sub_epi8(_mm256_add_epi8(v, _mm256_slli_epi16(hb, 2)), four);
            }
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 128 * h + 32 * jj), v);
          }
        }
        if (q3) {
          const float d = f16_scalar(b3->d);
          int sc[16];
          unpack_scales_q3k(b3->scales, sc);
          for (int g = 0; g < 16; ++g) s[g] = d * static_cast<float>(sc[g]);
        } else {
          const float d = f16_scalar(b2->d), dmin = f16_scalar(b2->dmin);
          for (int g = 0; g < 16; ++g) {
            s[g] = d * static_cast<float>(b2->scales[g] & 0xF);
            mw[j * 16 + g] = -dmin * static_cast<float>(b2->scales[g] >> 4);
          }
        }
        break;
      }
      default: {  // any other type: the scalar decode
        float sw[16], m[16];
        decode_block_scalar(t, blk, o, sw, m);
        for (int g = 0; g < tr.block_values / 16; ++g) s[g] = sw[tr.group == 16 ? g : g / 2];
        if (tr.has_min)
          for (int g = 0; g < tr.block_values / tr.group; ++g) mw[j * (tr.block_values / tr.group) + g] = m[g];
        break;
      }
    }
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

TINYSLM_TARGET_AVX2 inline void quantize_activation_row_avx2(ActFormat fmt, const float* x, int64_t k, int8_t* qs,
                                                             float* da16, float* m32, float* m16, int32_t* sum16,
                                                             int32_t* corr4) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  if (fmt == ActFormat::q8_0 || fmt == ActFormat::q8_1) {
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
  } else {  // q8_k
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

// ---------------------------------------------------------------------------------------
// GEMV-style driver: each row is decoded chunk by chunk once and dotted with every token.

template <bool Avx512>
inline void int_rows_gemv(TensorType t, const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts,
                          int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1);

#define TINYSLM_X86_GEMV_BODY(DOT)                                                             \
  const WeightTraits tr = weight_traits(t);                                                   \
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
        decode_chunk(t, row, v0, nv, w, sw16, mw);                                            \
        for (int64_t i = 0; i < ni; ++i) {                                                    \
          const ActRow& a = acts[i0 + i];                                                     \
          acc[i] += DOT;                                                                      \
          if (tr.has_min) acc[i] += chunk_min_term(tr, mw, v0, nv, a);                        \
        }                                                                                     \
      }                                                                                       \
      for (int64_t i = 0; i < ni; ++i) y[(i0 + i) * ldy + r] = acc[i];                        \
    }                                                                                         \
  }

template <int V>
TINYSLM_TARGET_AVX2 inline void int_rows_gemv_avx2(TensorType t, const uint8_t* data, int64_t row_bytes, int64_t k,
                                                   const ActRow* acts, int64_t n, float* y, int64_t ldy, int64_t r0,
                                                   int64_t r1) {
  TINYSLM_X86_GEMV_BODY(dot_chunk_avx2<V>(w, sw16, nv, a.qs + v0, a.da16 + v0 / 16))
}

TINYSLM_TARGET_AVX512 inline void int_rows_gemv_avx512(TensorType t, const uint8_t* data, int64_t row_bytes, int64_t k,
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

// False when there is no fused kernel for this type / token count.
inline bool gemv_fused_avx512(TensorType t, int64_t n, const uint8_t* data, int64_t row_bytes, int64_t k,
                              const ActRow* acts, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  switch (t) {
    case TensorType::Q4_0: return gemv_fused_n<TensorType::Q4_0>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
    case TensorType::Q4_1: return gemv_fused_n<TensorType::Q4_1>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
    case TensorType::Q5_0: return gemv_fused_n<TensorType::Q5_0>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
    case TensorType::Q5_1: return gemv_fused_n<TensorType::Q5_1>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
    case TensorType::Q8_0: return gemv_fused_n<TensorType::Q8_0>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
    case TensorType::IQ4_NL: return gemv_fused_n<TensorType::IQ4_NL>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
    case TensorType::Q4_K: return gemv_fused_n<TensorType::Q4_K>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
    case TensorType::Q5_K: return gemv_fused_n<TensorType::Q5_K>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
    case TensorType::Q6_K: return gemv_fused_n<TensorType::Q6_K>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
    case TensorType::Q2_K: return gemv_fused_n<TensorType::Q2_K>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
    case TensorType::Q3_K: return gemv_fused_n<TensorType::Q3_K>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
    default: return false;
  }
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

template <int V>
inline bool gemv_fused_avx2(TensorType t, int64_t n, const uint8_t* data, int64_t row_bytes, int64_t k,
                            const ActRow* acts, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if (n > 8) return false;  // more tokens: the decoded-chunk path reuses a decode for 16 tokens
  switch (t) {
    case TensorType::Q4_0: return gemv_fused_avx2_n<V, TensorType::Q4_0>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
    case TensorType::Q5_0: return gemv_fused_avx2_n<V, TensorType::Q5_0>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
    case TensorType::Q8_0: return gemv_fused_avx2_n<V, TensorType::Q8_0>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
    case TensorType::Q4_K: return gemv_fused_avx2_n<V, TensorType::Q4_K>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
    case TensorType::Q6_K: return gemv_fused_avx2_n<V, TensorType::Q6_K>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
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
TINYSLM_TARGET_AVX512 inline void fill_panel(TensorType t, const WeightTraits& tr, const uint8_t* data, int64_t row_bytes,
                                             int64_t r0, int nr, int64_t v0, int64_t nv, Panel& p) {
  alignas(64) int8_t w[kChunk];
  alignas(64) float sw16[kChunk / 16 + 4];
  alignas(64) float mw[kChunk / 16];
  const int64_t nq = nv / 4;
  for (int r = 0; r < 16; ++r) {
    if (r < nr) {
      decode_chunk(t, data + (r0 + r) * row_bytes, v0, nv, w, sw16, mw);
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

// Activations of 8 tokens interleaved for the panel kernel, so one pointer and constant
// offsets reach every token: q holds 4-byte words as [k/4][8 tokens]; c16 / c32 the
// corrections -128 * (sum of 16 / 32 quants) as [k/16][8] / [k/32][8]; d16 the scale per 16
// values as [k/16][8]; m16 / m32 the min terms likewise. Tokens past n are zeros.
inline constexpr int kTileTokens = 8;
struct TokenTile {
  const int32_t* q;
  const int32_t* c16;
  const int32_t* c32;
  const float* d16;
  const float* m16;
  const float* m32;
};

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

TINYSLM_TARGET_AVX512 inline void int_rows_gemm_avx512(TensorType t, const uint8_t* data, int64_t row_bytes, int64_t k,
                                                       const TokenTile* tiles, int64_t n, float* y, int64_t ldy,
                                                       int64_t r0, int64_t r1) {
  const WeightTraits tr = weight_traits(t);
  Panel p;
  for (int64_t rp = r0; rp < r1; rp += 16) {
    const int nr = static_cast<int>(r1 - rp < 16 ? r1 - rp : 16);
    for (int64_t v0 = 0; v0 < k; v0 += kChunk) {
      const int64_t nv = k - v0 < kChunk ? k - v0 : kChunk;
      fill_panel(t, tr, data, row_bytes, rp, nr, v0, nv, p);
      const bool first = v0 == 0;
      if (tr.group == 32) {
        if (tr.has_min)
          panel_tokens<32, true>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
        else
          panel_tokens<32, false>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
      } else {
        if (tr.has_min)
          panel_tokens<16, true>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
        else
          panel_tokens<16, false>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// AVX2 GEMM on interleaved 8-row panels (no VNNI). maddubs takes the activations as unsigned
// bytes a + 128 (tiles built with unsigned_q) and the weights as signed bytes; with |w| <= 32
// two products never saturate an int16 (2 * 255 * 32), and even two maddubs results add
// up without overflow, so pairs of 4-byte steps share one madd. The +128 is taken out
// exactly per row: -128 * (sum of the row's 16 weights), kept in the panel. Types with
// larger weights (Q8_0, IQ4_NL) use the decoded-chunk path.

inline bool avx2_gemm_supports(int v, TensorType t) {
  return is_integer_weight_type(t) && (v != kDotAvx2 || (t != TensorType::Q8_0 && t != TensorType::IQ4_NL));
}

struct alignas(32) Panel8 {
  int8_t w[kChunk / 4][8][4];   // w[q][r] = weights 4q..4q+3 of row r (signed)
  float s16[kChunk / 16][8];    // weight scale per 16 values, per row
  float mw[kChunk / 16][8];     // min per group, per row
  int32_t corr16[kChunk / 16][8];  // -128 * sum of the row's 16 weights
};

TINYSLM_TARGET_AVX2 inline void fill_panel8(TensorType t, const WeightTraits& tr, const uint8_t* data, int64_t row_bytes,
                                            int64_t r0, int nr, int64_t v0, int64_t nv, Panel8& p) {
  alignas(64) int8_t w[kChunk];
  alignas(64) float sw16[kChunk / 16 + 4];
  alignas(64) float mw[kChunk / 16];
  const int64_t nq = nv / 4;
  for (int r = 0; r < 8; ++r) {
    if (r < nr) {
      decode_chunk(t, data + (r0 + r) * row_bytes, v0, nv, w, sw16, mw);
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

template <int V>
TINYSLM_TARGET_AVX2 inline void int_rows_gemm_avx2(TensorType t, const uint8_t* data, int64_t row_bytes, int64_t k,
                                                   const TokenTile* tiles, int64_t n, float* y, int64_t ldy, int64_t r0,
                                                   int64_t r1) {
  const WeightTraits tr = weight_traits(t);
  Panel8 p;
  for (int64_t rp = r0; rp < r1; rp += 8) {
    const int nr = static_cast<int>(r1 - rp < 8 ? r1 - rp : 8);
    for (int64_t v0 = 0; v0 < k; v0 += kChunk) {
      const int64_t nv = k - v0 < kChunk ? k - v0 : kChunk;
      fill_panel8(t, tr, data, row_bytes, rp, nr, v0, nv, p);
      const bool first = v0 == 0;
      if (tr.group == 32) {
        if (tr.has_min)
          panel8_tokens<V, 32, true>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
        else
          panel8_tokens<V, 32, false>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
      } else {
        if (tr.has_min)
          panel8_tokens<V, 16, true>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
        else
          panel8_tokens<V, 16, false>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Float weights: 4 rows x up to 4 tokens per tile, vectors over k, one horizontal sum each.

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

template <bool Avx512, TensorType T, int R, int C>
inline void float_tile(const uint8_t* const* rows, int64_t k, const float* const* xs, float* out) {
  if constexpr (Avx512)
    float_tile_avx512<T, R, C>(rows, k, xs, out);
  else
    float_tile_avx2<T, R, C>(rows, k, xs, out);
}

template <bool Avx512, TensorType T>
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
            case 4: float_tile<Avx512, T, 4, 4>(rows, nk, xs, out); break;
            case 3: float_tile<Avx512, T, 4, 3>(rows, nk, xs, out); break;
            case 2: float_tile<Avx512, T, 4, 2>(rows, nk, xs, out); break;
            default: float_tile<Avx512, T, 4, 1>(rows, nk, xs, out); break;
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
        case 4: float_tile<Avx512, T, 4, 4>(rows, k, xs, out); break;
        case 3: float_tile<Avx512, T, 4, 3>(rows, k, xs, out); break;
        case 2: float_tile<Avx512, T, 4, 2>(rows, k, xs, out); break;
        default: float_tile<Avx512, T, 4, 1>(rows, k, xs, out); break;
      }
      for (int j = 0; j < nr; ++j)
        for (int c = 0; c < nc; ++c) y[(i0 + c) * ldy + r + j] = out[j * nc + c];
    }
  }
}

template <bool Avx512>
inline void float_rows(TensorType t, const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, int64_t n,
                       float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if (t == TensorType::F32)
    float_rows_t<Avx512, TensorType::F32>(data, row_bytes, k, acts, n, y, ldy, r0, r1);
  else if (t == TensorType::F16)
    float_rows_t<Avx512, TensorType::F16>(data, row_bytes, k, acts, n, y, ldy, r0, r1);
  else
    float_rows_t<Avx512, TensorType::BF16>(data, row_bytes, k, acts, n, y, ldy, r0, r1);
}

// Entry from the dispatcher: rows [r0, r1) for n tokens. False when the type has no path here.
template <int V>
inline void int_rows_avx2(TensorType t, const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts,
                          const TokenTile* tiles, int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if (tiles && avx2_gemm_supports(V, t))
    int_rows_gemm_avx2<V>(t, data, row_bytes, k, tiles, n, y, ldy, r0, r1);
  else if (!gemv_fused_avx2<V>(t, n, data, row_bytes, k, acts, y, ldy, r0, r1))
    int_rows_gemv_avx2<V>(t, data, row_bytes, k, acts, n, y, ldy, r0, r1);
}

// path: kPathAvx2, kPathAvxVnni (256-bit kernels with vpdpbusd; `evex` picks its AVX-512
// encoding on CPUs without AVX-VNNI) or kPathAvx512.
inline constexpr int kPathAvx2 = 0, kPathAvxVnni = 1, kPathAvx512 = 2;

inline bool matmul_rows(int path, bool evex, TensorType t, const uint8_t* data, int64_t row_bytes, int64_t k,
                        const ActRow* acts, const TokenTile* tiles, int64_t n, float* y, int64_t ldy, int64_t r0,
                        int64_t r1) {
  const bool avx512 = path == kPathAvx512;
  if (t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16) {
    if (avx512)
      float_rows<true>(t, data, row_bytes, k, acts, n, y, ldy, r0, r1);
    else
      float_rows<false>(t, data, row_bytes, k, acts, n, y, ldy, r0, r1);
    return true;
  }
  if (!is_integer_weight_type(t)) return false;
  if (path == kPathAvx2)
    int_rows_avx2<kDotAvx2>(t, data, row_bytes, k, acts, tiles, n, y, ldy, r0, r1);
  else if (path == kPathAvxVnni && !evex)
    int_rows_avx2<kDotAvxVnni>(t, data, row_bytes, k, acts, tiles, n, y, ldy, r0, r1);
  else if (path == kPathAvxVnni)
    int_rows_avx2<kDotEvex256>(t, data, row_bytes, k, acts, tiles, n, y, ldy, r0, r1);
  else if (tiles)
    int_rows_gemm_avx512(t, data, row_bytes, k, tiles, n, y, ldy, r0, r1);
  else if (!gemv_fused_avx512(t, n, data, row_bytes, k, acts, y, ldy, r0, r1))
    int_rows_gemv_avx512(t, data, row_bytes, k, acts, n, y, ldy, r0, r1);
  return true;
}

}  // namespace x86
}  // namespace detail
}  // namespace v0
}  // namespace tinyslm

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif  // x86-64 with GCC or Clang
