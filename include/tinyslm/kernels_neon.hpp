// tinyslm kernels, AArch64 path: NEON with the dot-product extension (sdot).
//
// Integer weights are decoded chunk by chunk into the canonical form of kernels_scalar.hpp
// (NEON unpacking for Q4_0 / Q8_0 / Q4_K / Q6_K / IQ4_XS / IQ3_S, the scalar decode for the others) and
// multiplied with signed sdot (int8 x int8 -> int32, exact), one int32 sum per 16 values,
// then scaled in float. Each decoded chunk is reused for up to 16 tokens, so prefill reads
// every weight once per 16 tokens. Float weights use a 4-row x 1-token NEON tile.
// Functions carry target("+dotprod"), and the dispatcher only calls them when the OS
// reports the feature (getauxval / sysctl), so the header builds for baseline armv8-a.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels_scalar.hpp"

#if defined(TINYSLM_SIMD_NEON)
#define TINYSLM_KERNELS_ARM 1
#include <arm_neon.h>

#if defined(__clang__)
#define TINYSLM_TARGET_NEON __attribute__((target("dotprod")))
#else
#define TINYSLM_TARGET_NEON __attribute__((target("arch=armv8.2-a+dotprod")))
#endif

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace detail {
namespace arm {

inline constexpr int64_t kChunk = 512;

// Decodes native blocks covering values [v0, v0 + nv) of `row` (as x86::decode_chunk in kernels_avx2.hpp).
TINYSLM_TARGET_NEON inline void decode_chunk(TensorType t, const uint8_t* row, int64_t v0, int64_t nv, int8_t* w,
                                             float* sw16, float* mw) {
  const WeightTraits tr = weight_traits(t);
  const int64_t b0 = v0 / tr.block_values, nb = nv / tr.block_values;
  const uint8x16_t m4 = vdupq_n_u8(0x0F);
  for (int64_t j = 0; j < nb; ++j) {
    const uint8_t* blk = row + (b0 + j) * tr.block_bytes;
    int8_t* o = w + j * tr.block_values;
    float* s = sw16 + j * (tr.block_values / 16);
    if (t == TensorType::Q4_0) {
      const auto* b = reinterpret_cast<const BlockQ4_0*>(blk);
      const uint8x16_t x = vld1q_u8(b->qs);
      const int8x16_t eight = vdupq_n_s8(8);
      vst1q_s8(o, vsubq_s8(vreinterpretq_s8_u8(vandq_u8(x, m4)), eight));
      vst1q_s8(o + 16, vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(x, 4)), eight));
      s[0] = s[1] = fp16_to_fp32(b->d);
    } else if (t == TensorType::Q8_0) {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(blk);
      vst1q_s8(o, vld1q_s8(b->qs));
      vst1q_s8(o + 16, vld1q_s8(b->qs + 16));
      s[0] = s[1] = fp16_to_fp32(b->d);
    } else if (t == TensorType::Q4_K) {
      const auto* b = reinterpret_cast<const BlockQ4_K*>(blk);
      const float d = fp16_to_fp32(b->d), dmin = fp16_to_fp32(b->dmin);
      uint8_t sc[8], mn[8];
      unpack_scales_k4(b->scales, sc, mn);
      for (int c = 0; c < 4; ++c)
        for (int h = 0; h < 2; ++h) {
          const uint8x16_t x = vld1q_u8(b->qs + 32 * c + 16 * h);
          vst1q_u8(reinterpret_cast<uint8_t*>(o + 64 * c + 16 * h), vandq_u8(x, m4));
          vst1q_u8(reinterpret_cast<uint8_t*>(o + 64 * c + 32 + 16 * h), vshrq_n_u8(x, 4));
        }
      for (int g = 0; g < 8; ++g) {
        s[2 * g] = s[2 * g + 1] = d * static_cast<float>(sc[g]);
        mw[j * 8 + g] = -dmin * static_cast<float>(mn[g]);
      }
    } else if (t == TensorType::Q6_K) {
      const auto* b = reinterpret_cast<const BlockQ6_K*>(blk);
      const uint8x16_t m3 = vdupq_n_u8(3);
      const int8x16_t off = vdupq_n_s8(32);
      for (int h = 0; h < 2; ++h)
        for (int p = 0; p < 2; ++p) {
          const uint8x16_t l0 = vld1q_u8(b->ql + 64 * h + 16 * p);
          const uint8x16_t l1 = vld1q_u8(b->ql + 64 * h + 32 + 16 * p);
          const uint8x16_t qh = vld1q_u8(b->qh + 32 * h + 16 * p);
          int8_t* oh = o + 128 * h + 16 * p;
          const uint8x16_t q0 = vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8(vandq_u8(qh, m3), 4));
          const uint8x16_t q1 = vorrq_u8(vandq_u8(l1, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 2), m3), 4));
          const uint8x16_t q2 = vorrq_u8(vshrq_n_u8(l0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 4), m3), 4));
          const uint8x16_t q3 = vorrq_u8(vshrq_n_u8(l1, 4), vshlq_n_u8(vshrq_n_u8(qh, 6), 4));
          vst1q_s8(oh, vsubq_s8(vreinterpretq_s8_u8(q0), off));
          vst1q_s8(oh + 32, vsubq_s8(vreinterpretq_s8_u8(q1), off));
          vst1q_s8(oh + 64, vsubq_s8(vreinterpretq_s8_u8(q2), off));
          vst1q_s8(oh + 96, vsubq_s8(vreinterpretq_s8_u8(q3), off));
        }
      const float d = fp16_to_fp32(b->d);
      for (int g = 0; g < 16; ++g) s[g] = d * static_cast<float>(b->scales[g]);
    } else if (t == TensorType::IQ4_XS) {
      const auto* b = reinterpret_cast<const BlockIQ4_XS*>(blk);
      const int8x16_t table = vld1q_s8(kIq4nlValues);
      for (int ib = 0; ib < 8; ++ib) {
        const uint8x16_t x = vld1q_u8(b->qs + 16 * ib);
        vst1q_s8(o + 32 * ib, vqtbl1q_s8(table, vandq_u8(x, m4)));
        vst1q_s8(o + 32 * ib + 16, vqtbl1q_s8(table, vshrq_n_u8(x, 4)));
      }
      const float d = fp16_to_fp32(b->d);
      for (int ib = 0; ib < 8; ++ib) s[2 * ib] = s[2 * ib + 1] = d * static_cast<float>(iq4xs_scale(*b, ib));
    } else if (t == TensorType::IQ3_S) {
      // 16 values (4 grid points) per step; a set sign bit selects the negated magnitude.
      const auto* b = reinterpret_cast<const BlockIQ3_S*>(blk);
      const uint8x16_t bit = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
      for (int h = 0; h < 16; ++h) {
        uint32_t points[4];
        for (int q = 0; q < 4; ++q) points[q] = iq3s_point(*b, 4 * h + q);
        const int8x16_t mag = vreinterpretq_s8_u8(vld1q_u8(reinterpret_cast<const uint8_t*>(points)));
        const uint8x16_t neg = vtstq_u8(vcombine_u8(vdup_n_u8(b->signs[2 * h]), vdup_n_u8(b->signs[2 * h + 1])), bit);
        vst1q_s8(o + 16 * h, vbslq_s8(neg, vnegq_s8(mag), mag));
      }
      const float d = fp16_to_fp32(b->d);
      for (int ib = 0; ib < 8; ++ib) s[2 * ib] = s[2 * ib + 1] = d * static_cast<float>(iq3s_scale(*b, ib));
    } else {
      float sw[16], m[16];
      decode_block_scalar(t, blk, o, sw, m);
      for (int g = 0; g < tr.block_values / 16; ++g) s[g] = sw[tr.group == 16 ? g : g / 2];
      if (tr.has_min)
        for (int g = 0; g < tr.block_values / tr.group; ++g) mw[j * (tr.block_values / tr.group) + g] = m[g];
    }
  }
}

// Dot of a decoded chunk with one activation row: 64 values per step, one int32 sum per 16.
TINYSLM_TARGET_NEON inline float dot_chunk(const int8_t* w, const float* sw16, int64_t nv, const int8_t* aq,
                                           const float* da16) {
  float32x4_t acc = vdupq_n_f32(0.f);
  int64_t v = 0;
  for (; v + 64 <= nv; v += 64) {
    int32x4_t t[4];
    for (int j = 0; j < 4; ++j) t[j] = vdotq_s32(vdupq_n_s32(0), vld1q_s8(w + v + 16 * j), vld1q_s8(aq + v + 16 * j));
    const int32x4_t g = vpaddq_s32(vpaddq_s32(t[0], t[1]), vpaddq_s32(t[2], t[3]));  // sums of 16
    const float32x4_t s = vmulq_f32(vld1q_f32(sw16 + v / 16), vld1q_f32(da16 + v / 16));
    acc = vfmaq_f32(acc, vcvtq_f32_s32(g), s);
  }
  float r = vaddvq_f32(acc);
  for (; v < nv; v += 16) {
    const int32x4_t t = vdotq_s32(vdupq_n_s32(0), vld1q_s8(w + v), vld1q_s8(aq + v));
    r += (sw16[v / 16] * da16[v / 16]) * static_cast<float>(vaddvq_s32(t));
  }
  return r;
}

inline float chunk_min_term(const WeightTraits& tr, const float* mw, int64_t v0, int64_t nv, const ActRow& a) {
  float acc = 0.f;
  if (tr.group == 32) {
    for (int64_t g = 0; g < nv / 32; ++g) acc += mw[g] * a.m32[v0 / 32 + g];
  } else {
    for (int64_t g = 0; g < nv / 16; ++g) acc += mw[g] * a.m16[v0 / 16 + g];
  }
  return acc;
}

TINYSLM_TARGET_NEON inline void int_rows(TensorType t, const uint8_t* data, int64_t row_bytes, int64_t k,
                                         const ActRow* acts, int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const WeightTraits tr = weight_traits(t);
  alignas(64) int8_t w[kChunk];
  alignas(64) float sw16[kChunk / 16 + 4];
  alignas(64) float mw[kChunk / 16];
  float acc[16];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = data + r * row_bytes;
    for (int64_t i0 = 0; i0 < n; i0 += 16) {
      const int64_t ni = n - i0 < 16 ? n - i0 : 16;
      for (int64_t i = 0; i < ni; ++i) acc[i] = 0.f;
      for (int64_t v0 = 0; v0 < k; v0 += kChunk) {
        const int64_t nv = k - v0 < kChunk ? k - v0 : kChunk;
        decode_chunk(t, row, v0, nv, w, sw16, mw);
        for (int64_t i = 0; i < ni; ++i) {
          const ActRow& a = acts[i0 + i];
          acc[i] += dot_chunk(w, sw16, nv, a.qs + v0, a.da16 + v0 / 16);
          if (tr.has_min) acc[i] += chunk_min_term(tr, mw, v0, nv, a);
        }
      }
      for (int64_t i = 0; i < ni; ++i) y[(i0 + i) * ldy + r] = acc[i];
    }
  }
}

TINYSLM_TARGET_NEON inline float32x4_t load4_weights(TensorType t, const uint8_t* row, int64_t i) {
  if (t == TensorType::F32) return vld1q_f32(reinterpret_cast<const float*>(row + 4 * i));
  const uint16x4_t h = vld1_u16(reinterpret_cast<const uint16_t*>(row + 2 * i));
  if (t == TensorType::F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
  return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

TINYSLM_TARGET_NEON inline void float_rows(TensorType t, const uint8_t* data, int64_t row_bytes, int64_t k,
                                           const ActRow* acts, int64_t n, float* y, int64_t ldy, int64_t r0,
                                           int64_t r1) {
  for (int64_t r = r0; r < r1; r += 4) {
    const int nr = static_cast<int>(r1 - r < 4 ? r1 - r : 4);
    const uint8_t* rows[4];
    for (int j = 0; j < 4; ++j) rows[j] = data + (r + (j < nr ? j : 0)) * row_bytes;
    for (int64_t i = 0; i < n; ++i) {
      const float* x = acts[i].xf;
      float32x4_t acc[4] = {vdupq_n_f32(0.f), vdupq_n_f32(0.f), vdupq_n_f32(0.f), vdupq_n_f32(0.f)};
      int64_t v = 0;
      for (; v + 4 <= k; v += 4) {
        const float32x4_t xv = vld1q_f32(x + v);
        for (int j = 0; j < 4; ++j) acc[j] = vfmaq_f32(acc[j], load4_weights(t, rows[j], v), xv);
      }
      for (int j = 0; j < nr; ++j) {
        float s = vaddvq_f32(acc[j]);
        for (int64_t e = v; e < k; ++e) s += load_weight_float(t, rows[j], e) * x[e];
        y[i * ldy + r + j] = s;
      }
    }
  }
}

// The block-type table's NEON entry (RowsFn) of weight type T.
template <TensorType T>
inline void rows_neon(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, const TokenTile*,
                      int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if constexpr (block_type(T).integer_dot)
    int_rows(T, data, row_bytes, k, acts, n, y, ldy, r0, r1);
  else
    float_rows(T, data, row_bytes, k, acts, n, y, ldy, r0, r1);
}

}  // namespace arm
}  // namespace detail
}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#endif  // TINYSLM_SIMD_NEON
