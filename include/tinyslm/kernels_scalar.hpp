// tinyslm kernels, scalar part: activation quantization into the kernels' working layout,
// the "canonical" decode of every weight block type (small integers + float scales), and
// the scalar reference dot products. The SIMD paths (kernels_avx2.hpp, kernels_avx512.hpp,
// kernels_neon.hpp, kernels_hwy.hpp) are tested against these; they stay readable and stay forever.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core.hpp"
#include "gguf.hpp"
#include "quant.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace detail {

// ---------------------------------------------------------------------------------------
// Activation rows (ActFormat and the weight type -> format pairing: quant.hpp's block_type_table).

// One activation row in the kernels' layout (pointers into MatmulScratch). For the integer
// formats: qs holds the quants in natural order; da16[g] the scale of values 16g..16g+15
// (the block's d, repeated); m32 / m16 the "min" terms per 32 / 16 values (Q8_1: the block's
// s = d * sum, rounded to fp16 as stored; Q8_K: d * sum of the group); sum16 the integer sum
// of each 16 quants; corr4[l] = -128 * (sum of quants 4l..4l+3), the correction the VNNI
// kernels need after turning signed weights into unsigned bytes (w + 128).
struct ActRow {
  const int8_t* qs = nullptr;
  const float* da16 = nullptr;
  const float* m32 = nullptr;
  const float* m16 = nullptr;
  const int32_t* sum16 = nullptr;
  const int32_t* corr4 = nullptr;
  const float* da32 = nullptr;  // the activation scale of each 32 values (da16[2g])
  const float* xf = nullptr;  // float formats: the (rounded) values
};

// Activations of 8 tokens interleaved for the x86 panel GEMMs, so one pointer and constant
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

// A matmul kernel: rows [r0, r1) of y (y[i * ldy + r]) for n tokens of one weight type, from
// the token rows `acts` (and, for the x86 GEMMs, their tiles, else nullptr).
using RowsFn = void (*)(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts,
                        const TokenTile* tiles, int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1);

// llama.cpp's nearest_int: round half to even through the float mantissa.
inline int nearest_int_q8k(float v) {
  float t = v + 12582912.f;
  int32_t i;
  std::memcpy(&i, &t, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// Quantizes one row of k values (k a multiple of the block size) into the kernels' layout.
// Bit-exact with quant.hpp's reference quantize_row for Q8_0 / Q8_1 / Q8_K.
inline void quantize_activation_row(ActFormat fmt, const float* x, int64_t k, int8_t* qs, float* da16,
                                    float* m32, float* m16, int32_t* sum16, int32_t* corr4, float* xf) {
  switch (fmt) {
    case ActFormat::f32:
      if (xf && xf != x) std::memcpy(xf, x, static_cast<size_t>(k) * sizeof(float));
      return;
    case ActFormat::f16:
      for (int64_t i = 0; i < k; ++i) xf[i] = fp16_to_fp32(fp32_to_fp16(x[i]));
      return;
    case ActFormat::bf16:
      for (int64_t i = 0; i < k; ++i) xf[i] = bf16_to_fp32(fp32_to_bf16(x[i]));
      return;
    case ActFormat::q8_0:
    case ActFormat::q8_1:
      for (int64_t b = 0; b < k / 32; ++b) {
        const float* xb = x + b * 32;
        float amax = 0.f;
        for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
        const float d = amax / 127.f;
        const float id = d != 0.f ? 1.f / d : 0.f;
        int sum = 0;
        for (int j = 0; j < 32; ++j) {
          const int q = static_cast<int>(std::round(xb[j] * id));
          qs[b * 32 + j] = static_cast<int8_t>(q);
          sum += q;
        }
        const float dh = fp16_to_fp32(fp32_to_fp16(d));
        da16[2 * b] = da16[2 * b + 1] = dh;
        m32[b] = fmt == ActFormat::q8_1 ? fp16_to_fp32(fp32_to_fp16(d * static_cast<float>(sum))) : 0.f;
      }
      break;
    case ActFormat::q8_k:
      for (int64_t b = 0; b < k / 256; ++b) {
        const float* xb = x + b * 256;
        int8_t* q = qs + b * 256;
        float amax = 0.f, maxv = 0.f;
        for (int j = 0; j < 256; ++j) {
          const float ax = std::fabs(xb[j]);
          if (ax > amax) {
            amax = ax;
            maxv = xb[j];
          }
        }
        float d = 0.f;
        if (amax == 0.f) {
          std::memset(q, 0, 256);
        } else {
          const float iscale = -127.f / maxv;
          for (int j = 0; j < 256; ++j) {
            const int v = nearest_int_q8k(iscale * xb[j]);
            q[j] = static_cast<int8_t>(v < 127 ? v : 127);
          }
          d = 1.f / iscale;
        }
        for (int g = 0; g < 16; ++g) da16[b * 16 + g] = d;
      }
      break;
  }
  for (int64_t g = 0; g < k / 16; ++g) {
    int s = 0;
    for (int j = 0; j < 16; ++j) s += qs[g * 16 + j];
    sum16[g] = s;
    if (fmt == ActFormat::q8_k) m16[g] = da16[g] * static_cast<float>(s);
  }
  if (fmt == ActFormat::q8_k)
    for (int64_t g = 0; g < k / 32; ++g) m32[g] = da16[2 * g] * static_cast<float>(sum16[2 * g] + sum16[2 * g + 1]);
  if (corr4)
    for (int64_t l = 0; l < k / 4; ++l)
      corr4[l] = -128 * (qs[4 * l] + qs[4 * l + 1] + qs[4 * l + 2] + qs[4 * l + 3]);
}

// ---------------------------------------------------------------------------------------
// Canonical decode of weight blocks. Every integer weight type becomes, per native block,
// small signed integers w (|w| <= 127 for all types but Q8_0, whose -128 is still an int8)
// in natural order plus, per group of G values (G = 32, or 16 for Q2_K/Q3_K/Q6_K), a float
// scale sw and a float min mw, such that the block's dot with an activation row is
//     sum_g  sw[g] * da(g) * sum_{i in g} w[i] * a[i]  +  mw[g] * M(g)
// where da(g) is the activation scale and M(g) the activation's min term (m32 or m16).
// This is the form every SIMD path consumes; the K types' integer sub-block scales are
// folded into sw (d * scale), which rounds like llama.cpp up to one float rounding.

struct WeightTraits {
  int block_values;   // values per native block
  int block_bytes;    // bytes per native block
  int group;          // G: values per scale group
  bool has_min;       // uses mw / M terms
};

// The decode shape of a type, read from the block-type table.
constexpr WeightTraits weight_traits(TensorType t) {
  const QuantTraits& q = block_type(t);
  return {q.block_size, q.block_bytes, q.group, q.has_min};
}

// Q4_K / Q5_K: 8 six-bit scales and 8 six-bit mins packed into 12 bytes.
inline void unpack_scales_k4(const uint8_t* s, uint8_t sc[8], uint8_t mn[8]) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 63;
    mn[j] = s[j + 4] & 63;
  }
  for (int j = 4; j < 8; ++j) {
    sc[j] = static_cast<uint8_t>((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
    mn[j] = static_cast<uint8_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// Q3_K: 16 six-bit scales (offset 32) packed into 12 bytes.
inline void unpack_scales_q3k(const uint8_t* s, int sc[16]) {
  for (int j = 0; j < 16; ++j) {
    const int lo = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
    const int hi = (s[8 + (j % 4)] >> (2 * (j / 4))) & 3;
    sc[j] = (lo | (hi << 4)) - 32;
  }
}

// Decodes one native block of type T at `blk` into w[block_values], sw[], mw[] (mw may be
// untouched for types without a min).
template <TensorType T>
inline void decode_block_ref(const uint8_t* blk, int8_t* w, float* sw, float* mw) {
  if constexpr (T == TensorType::Q4_0) {
    const auto* b = reinterpret_cast<const BlockQ4_0*>(blk);
    for (int i = 0; i < 16; ++i) {
      w[i] = static_cast<int8_t>((b->qs[i] & 0xF) - 8);
      w[i + 16] = static_cast<int8_t>((b->qs[i] >> 4) - 8);
    }
    sw[0] = fp16_to_fp32(b->d);
  } else if constexpr (T == TensorType::Q4_1) {
    const auto* b = reinterpret_cast<const BlockQ4_1*>(blk);
    for (int i = 0; i < 16; ++i) {
      w[i] = static_cast<int8_t>(b->qs[i] & 0xF);
      w[i + 16] = static_cast<int8_t>(b->qs[i] >> 4);
    }
    sw[0] = fp16_to_fp32(b->d);
    mw[0] = fp16_to_fp32(b->m);
  } else if constexpr (T == TensorType::Q5_0 || T == TensorType::Q5_1) {
    const bool q50 = T == TensorType::Q5_0;
    const uint8_t* qs = q50 ? reinterpret_cast<const BlockQ5_0*>(blk)->qs : reinterpret_cast<const BlockQ5_1*>(blk)->qs;
    const uint8_t* qhp = q50 ? reinterpret_cast<const BlockQ5_0*>(blk)->qh : reinterpret_cast<const BlockQ5_1*>(blk)->qh;
    const uint32_t qh = static_cast<uint32_t>(qhp[0]) | (static_cast<uint32_t>(qhp[1]) << 8) |
                        (static_cast<uint32_t>(qhp[2]) << 16) | (static_cast<uint32_t>(qhp[3]) << 24);
    const int off = q50 ? 16 : 0;
    for (int i = 0; i < 16; ++i) {
      w[i] = static_cast<int8_t>(((qs[i] & 0xF) | (((qh >> i) & 1) << 4)) - off);
      w[i + 16] = static_cast<int8_t>(((qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4)) - off);
    }
    if (q50) {
      sw[0] = fp16_to_fp32(reinterpret_cast<const BlockQ5_0*>(blk)->d);
    } else {
      sw[0] = fp16_to_fp32(reinterpret_cast<const BlockQ5_1*>(blk)->d);
      mw[0] = fp16_to_fp32(reinterpret_cast<const BlockQ5_1*>(blk)->m);
    }
  } else if constexpr (T == TensorType::Q8_0) {
    const auto* b = reinterpret_cast<const BlockQ8_0*>(blk);
    std::memcpy(w, b->qs, 32);
    sw[0] = fp16_to_fp32(b->d);
  } else if constexpr (T == TensorType::IQ4_NL) {
    const auto* b = reinterpret_cast<const BlockIQ4_NL*>(blk);
    for (int i = 0; i < 16; ++i) {
      w[i] = kIq4nlValues[b->qs[i] & 0xF];
      w[i + 16] = kIq4nlValues[b->qs[i] >> 4];
    }
    sw[0] = fp16_to_fp32(b->d);
  } else if constexpr (T == TensorType::Q4_K || T == TensorType::Q5_K) {
    const bool q5 = T == TensorType::Q5_K;
    const auto* b4 = reinterpret_cast<const BlockQ4_K*>(blk);
    const auto* b5 = reinterpret_cast<const BlockQ5_K*>(blk);
    const float d = fp16_to_fp32(q5 ? b5->d : b4->d);
    const float dmin = fp16_to_fp32(q5 ? b5->dmin : b4->dmin);
    const uint8_t* qs = q5 ? b5->qs : b4->qs;
    uint8_t sc[8], mn[8];
    unpack_scales_k4(q5 ? b5->scales : b4->scales, sc, mn);
    for (int c = 0; c < 4; ++c) {
      for (int l = 0; l < 32; ++l) {
        int lo = qs[32 * c + l] & 0xF, hi = qs[32 * c + l] >> 4;
        if (q5) {
          lo |= ((b5->qh[l] >> (2 * c)) & 1) << 4;
          hi |= ((b5->qh[l] >> (2 * c + 1)) & 1) << 4;
        }
        w[64 * c + l] = static_cast<int8_t>(lo);
        w[64 * c + 32 + l] = static_cast<int8_t>(hi);
      }
    }
    for (int j = 0; j < 8; ++j) {
      sw[j] = d * static_cast<float>(sc[j]);
      mw[j] = -dmin * static_cast<float>(mn[j]);
    }
  } else if constexpr (T == TensorType::Q6_K) {
    const auto* b = reinterpret_cast<const BlockQ6_K*>(blk);
    const float d = fp16_to_fp32(b->d);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = b->ql + 64 * h;
      const uint8_t* qh = b->qh + 32 * h;
      int8_t* o = w + 128 * h;
      for (int l = 0; l < 32; ++l) {
        o[l] = static_cast<int8_t>(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
        o[l + 32] = static_cast<int8_t>(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
        o[l + 64] = static_cast<int8_t>(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
        o[l + 96] = static_cast<int8_t>(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
      }
    }
    for (int g = 0; g < 16; ++g) sw[g] = d * static_cast<float>(b->scales[g]);
  } else if constexpr (T == TensorType::Q3_K) {
    const auto* b = reinterpret_cast<const BlockQ3_K*>(blk);
    const float d = fp16_to_fp32(b->d);
    int sc[16];
    unpack_scales_q3k(b->scales, sc);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* q = b->qs + 32 * h;
      for (int j = 0; j < 4; ++j) {
        const int bit = 4 * h + j;
        for (int l = 0; l < 32; ++l) {
          const int low = (q[l] >> (2 * j)) & 3;
          const int high = (b->hmask[l] >> bit) & 1;
          w[128 * h + 32 * j + l] = static_cast<int8_t>(low - (high ? 0 : 4));
        }
      }
    }
    for (int g = 0; g < 16; ++g) sw[g] = d * static_cast<float>(sc[g]);
  } else if constexpr (T == TensorType::IQ4_XS) {
    const auto* b = reinterpret_cast<const BlockIQ4_XS*>(blk);
    const float d = fp16_to_fp32(b->d);
    for (int ib = 0; ib < 8; ++ib) {
      const uint8_t* qs = b->qs + 16 * ib;
      for (int i = 0; i < 16; ++i) {
        w[32 * ib + i] = kIq4nlValues[qs[i] & 0xF];
        w[32 * ib + 16 + i] = kIq4nlValues[qs[i] >> 4];
      }
      sw[ib] = d * static_cast<float>(iq4xs_scale(*b, ib));
    }
  } else if constexpr (T == TensorType::IQ3_S) {
    const auto* b = reinterpret_cast<const BlockIQ3_S*>(blk);
    const float d = fp16_to_fp32(b->d);
    for (int g = 0; g < 64; ++g) {
      const uint32_t point = iq3s_point(*b, g);
      for (int j = 0; j < 4; ++j) {
        const int v = static_cast<int>((point >> (8 * j)) & 0xFF);
        w[4 * g + j] = static_cast<int8_t>(iq3s_negative(*b, 4 * g + j) ? -v : v);
      }
    }
    for (int ib = 0; ib < 8; ++ib) sw[ib] = d * static_cast<float>(iq3s_scale(*b, ib));
  } else if constexpr (T == TensorType::Q2_K) {
    const auto* b = reinterpret_cast<const BlockQ2_K*>(blk);
    const float d = fp16_to_fp32(b->d);
    const float dmin = fp16_to_fp32(b->dmin);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* q = b->qs + 32 * h;
      for (int j = 0; j < 4; ++j)
        for (int l = 0; l < 32; ++l)
          w[128 * h + 32 * j + l] = static_cast<int8_t>((q[l] >> (2 * j)) & 3);
    }
    for (int g = 0; g < 16; ++g) {
      sw[g] = d * static_cast<float>(b->scales[g] & 0xF);
      mw[g] = -dmin * static_cast<float>(b->scales[g] >> 4);
    }
  }
}


// The same for a type known at run time (the canonical decode of any integer weight type).
inline void decode_block_scalar(TensorType t, const uint8_t* blk, int8_t* w, float* sw, float* mw) {
  switch (t) {
    case TensorType::Q4_0: return decode_block_ref<TensorType::Q4_0>(blk, w, sw, mw);
    case TensorType::Q4_1: return decode_block_ref<TensorType::Q4_1>(blk, w, sw, mw);
    case TensorType::Q5_0: return decode_block_ref<TensorType::Q5_0>(blk, w, sw, mw);
    case TensorType::Q5_1: return decode_block_ref<TensorType::Q5_1>(blk, w, sw, mw);
    case TensorType::Q8_0: return decode_block_ref<TensorType::Q8_0>(blk, w, sw, mw);
    case TensorType::IQ4_NL: return decode_block_ref<TensorType::IQ4_NL>(blk, w, sw, mw);
    case TensorType::Q2_K: return decode_block_ref<TensorType::Q2_K>(blk, w, sw, mw);
    case TensorType::Q3_K: return decode_block_ref<TensorType::Q3_K>(blk, w, sw, mw);
    case TensorType::Q4_K: return decode_block_ref<TensorType::Q4_K>(blk, w, sw, mw);
    case TensorType::Q5_K: return decode_block_ref<TensorType::Q5_K>(blk, w, sw, mw);
    case TensorType::Q6_K: return decode_block_ref<TensorType::Q6_K>(blk, w, sw, mw);
    case TensorType::IQ4_XS: return decode_block_ref<TensorType::IQ4_XS>(blk, w, sw, mw);
    case TensorType::IQ3_S: return decode_block_ref<TensorType::IQ3_S>(blk, w, sw, mw);
    default: return;
  }
}

// The scalar reference: dot of one weight row (k values of type t) with one activation row.
// Integer sums per group are exact; the float combination follows the canonical formula
// above in group order.
template <TensorType T>
inline float dot_row_ref(const uint8_t* row, int64_t k, const ActRow& a) {
  constexpr WeightTraits tr = weight_traits(T);
  int8_t w[256];
  float sw[16], mw[16];
  float acc = 0.f;
  const int gpb = tr.block_values / tr.group;
  for (int64_t b = 0; b < k / tr.block_values; ++b) {
    decode_block_ref<T>(row + b * tr.block_bytes, w, sw, mw);
    for (int g = 0; g < gpb; ++g) {
      const int64_t base = b * tr.block_values + static_cast<int64_t>(g) * tr.group;
      int32_t isum = 0;
      for (int i = 0; i < tr.group; ++i) isum += static_cast<int32_t>(w[g * tr.group + i]) * a.qs[base + i];
      acc += (sw[g] * a.da16[base / 16]) * static_cast<float>(isum);
      if (tr.has_min) acc += mw[g] * (tr.group == 32 ? a.m32[base / 32] : a.m16[base / 16]);
    }
  }
  return acc;
}

inline float dot_row_scalar(TensorType t, const uint8_t* row, int64_t k, const ActRow& a) {
  switch (t) {
    case TensorType::Q4_0: return dot_row_ref<TensorType::Q4_0>(row, k, a);
    case TensorType::Q4_1: return dot_row_ref<TensorType::Q4_1>(row, k, a);
    case TensorType::Q5_0: return dot_row_ref<TensorType::Q5_0>(row, k, a);
    case TensorType::Q5_1: return dot_row_ref<TensorType::Q5_1>(row, k, a);
    case TensorType::Q8_0: return dot_row_ref<TensorType::Q8_0>(row, k, a);
    case TensorType::IQ4_NL: return dot_row_ref<TensorType::IQ4_NL>(row, k, a);
    case TensorType::Q2_K: return dot_row_ref<TensorType::Q2_K>(row, k, a);
    case TensorType::Q3_K: return dot_row_ref<TensorType::Q3_K>(row, k, a);
    case TensorType::Q4_K: return dot_row_ref<TensorType::Q4_K>(row, k, a);
    case TensorType::Q5_K: return dot_row_ref<TensorType::Q5_K>(row, k, a);
    case TensorType::Q6_K: return dot_row_ref<TensorType::Q6_K>(row, k, a);
    case TensorType::IQ4_XS: return dot_row_ref<TensorType::IQ4_XS>(row, k, a);
    case TensorType::IQ3_S: return dot_row_ref<TensorType::IQ3_S>(row, k, a);
    default: return 0.f;
  }
}

// Float weight rows: F32 / F16 / BF16 against float activations (already rounded to the
// weight type by quantize_activation_row), accumulated in float in index order.
inline float load_weight_float(TensorType t, const uint8_t* row, int64_t i) {
  if (t == TensorType::F32) {
    float v;
    std::memcpy(&v, row + 4 * i, 4);
    return v;
  }
  uint16_t h;
  std::memcpy(&h, row + 2 * i, 2);
  return t == TensorType::F16 ? fp16_to_fp32(h) : bf16_to_fp32(h);
}

inline float dot_row_float_scalar(TensorType t, const uint8_t* row, int64_t k, const float* x) {
  float acc = 0.f;
  for (int64_t i = 0; i < k; ++i) acc += load_weight_float(t, row, i) * x[i];
  return acc;
}

// The scalar path of every weight type, in RowsFn form (the reference the SIMD paths are
// tested against).
template <TensorType T>
inline void rows_scalar(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, const TokenTile*,
                        int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = data + r * row_bytes;
    for (int64_t i = 0; i < n; ++i) {
      if constexpr (block_type(T).integer_dot)
        y[i * ldy + r] = dot_row_ref<T>(row, k, acts[i]);
      else
        y[i * ldy + r] = dot_row_float_scalar(T, row, k, acts[i].xf);
    }
  }
}

}  // namespace detail
}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
