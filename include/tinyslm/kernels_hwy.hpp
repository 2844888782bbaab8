// tinyslm kernels, Highway path (only when TINYSLM_USE_HIGHWAY is defined; link hwy).
//
// Highway's static-dispatch API: the vector width is the best one the compile flags allow
// (SSE2/SSSE3/SSE4 without -march on x86-64, NEON on AArch64, AVX2/AVX-512 with -march).
// Integer weights are decoded to the canonical form of kernels_scalar.hpp (Q4_0 and Q8_0
// with Highway ops, the other types with the scalar decode) and multiplied with widening
// int8 -> int16 -> int32 multiply-accumulates, exact; F32 weights use a float MulAdd loop.
// F16/BF16 fall back to the scalar reference. Selected with set_simd_level(highway) or
// TINYSLM_SIMD=highway, never by default.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels_scalar.hpp"

#if defined(TINYSLM_USE_HIGHWAY)
#include <hwy/highway.h>

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace detail {
namespace hwy_kernels {

namespace hn = hwy::HWY_NAMESPACE;

// Sum of 16 products of int8 values, exact: widened to int32 lanes (as many as the target
// has, up to 16), multiplied and added.
inline int32_t dot16_i8(const int8_t* w, const int8_t* a) {
  const hn::CappedTag<int32_t, 16> d32;
  const hn::Rebind<int8_t, decltype(d32)> d8;
  const int n = static_cast<int>(hn::Lanes(d32));
  auto acc = hn::Zero(d32);
  for (int j = 0; j < 16; j += n)
    acc = hn::Add(acc, hn::Mul(hn::PromoteTo(d32, hn::LoadU(d8, w + j)), hn::PromoteTo(d32, hn::LoadU(d8, a + j))));
  return hn::GetLane(hn::SumOfLanes(d32, acc));
}

// Canonical decode of one block; Q4_0 and Q8_0 with Highway ops.
inline void decode_block(TensorType t, const uint8_t* blk, int8_t* w, float* sw, float* mw) {
  if (t == TensorType::Q4_0 || t == TensorType::Q8_0) {
    const hn::CappedTag<int16_t, 16> d16;
    const hn::Rebind<uint8_t, decltype(d16)> du8;
    const hn::Rebind<int8_t, decltype(d16)> di8;
    const int n = static_cast<int>(hn::Lanes(d16));
    if (t == TensorType::Q4_0) {
      const auto* b = reinterpret_cast<const BlockQ4_0*>(blk);
      for (int j = 0; j < 16; j += n) {
        const auto x = hn::PromoteTo(d16, hn::LoadU(du8, b->qs + j));  // bytes as int16 0..255
        const auto lo = hn::Sub(hn::And(x, hn::Set(d16, 0x0F)), hn::Set(d16, 8));
        const auto hi = hn::Sub(hn::ShiftRight<4>(x), hn::Set(d16, 8));
        hn::StoreU(hn::DemoteTo(di8, lo), di8, w + j);
        hn::StoreU(hn::DemoteTo(di8, hi), di8, w + 16 + j);
      }
      sw[0] = fp16_to_fp32(b->d);
    } else {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(blk);
      for (int j = 0; j < 32; j += n) hn::StoreU(hn::LoadU(di8, b->qs + j), di8, w + j);
      sw[0] = fp16_to_fp32(b->d);
    }
    return;
  }
  decode_block_scalar(t, blk, w, sw, mw);
}

// One row against one activation row, in the canonical formula's group order.
inline float dot_row(TensorType t, const uint8_t* row, int64_t k, const ActRow& a) {
  const WeightTraits tr = weight_traits(t);
  alignas(64) int8_t w[256];
  float sw[16], mw[16];
  float acc = 0.f;
  const int gpb = tr.block_values / tr.group;
  for (int64_t b = 0; b < k / tr.block_values; ++b) {
    decode_block(t, row + b * tr.block_bytes, w, sw, mw);
    for (int g = 0; g < gpb; ++g) {
      const int64_t base = b * tr.block_values + static_cast<int64_t>(g) * tr.group;
      int32_t isum = 0;
      for (int h = 0; h < tr.group; h += 16) isum += dot16_i8(w + g * tr.group + h, a.qs + base + h);
      acc += (sw[g] * a.da16[base / 16]) * static_cast<float>(isum);
      if (tr.has_min) acc += mw[g] * (tr.group == 32 ? a.m32[base / 32] : a.m16[base / 16]);
    }
  }
  return acc;
}

inline float dot_f32(const float* w, const float* x, int64_t k) {
  const hn::ScalableTag<float> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  auto acc0 = hn::Zero(df), acc1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * lanes <= k; i += 2 * lanes) {
    acc0 = hn::MulAdd(hn::LoadU(df, w + i), hn::LoadU(df, x + i), acc0);
    acc1 = hn::MulAdd(hn::LoadU(df, w + i + lanes), hn::LoadU(df, x + i + lanes), acc1);
  }
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
  for (; i < k; ++i) s += w[i] * x[i];
  return s;
}

// The block-type table's Highway entry (RowsFn) of weight type T (F32 and the integer types;
// F16 / BF16 weights have none and take the scalar path).
template <TensorType T>
inline void rows_highway(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, const TokenTile*,
                         int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if constexpr (T == TensorType::F32) {
    for (int64_t r = r0; r < r1; ++r) {
      const auto* row = reinterpret_cast<const float*>(data + r * row_bytes);
      for (int64_t i = 0; i < n; ++i) y[i * ldy + r] = dot_f32(row, acts[i].xf, k);
    }
  } else {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t i = 0; i < n; ++i) y[i * ldy + r] = dot_row(T, data + r * row_bytes, k, acts[i]);
  }
}

}  // namespace hwy_kernels
}  // namespace detail
}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#endif  // TINYSLM_USE_HIGHWAY
