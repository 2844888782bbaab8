// tinyslm quant: GGUF block formats and their reference (scalar) conversions.
//
// Every block type is one POD struct with ggml's byte layout; its size is checked against
// gguf.hpp's tensor_type_table, the single source of truth for block sizes. block_type_table
// (end of this file) is the one per-type table of everything else. Scales in fp16
// are kept as raw uint16_t bits (convert with fp16_to_fp32 / fp32_to_fp16 from core.hpp).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "core.hpp"
#include "gguf.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

// Values per block: the legacy formats and IQ4_NL use 32, the K formats a super-block of 256
// made of 16 or 8 sub-blocks.
inline constexpr int kBlock32 = 32;
inline constexpr int kBlockK = 256;
// Bytes of packed 6-bit sub-block scales (and mins) in Q3_K, Q4_K and Q5_K.
inline constexpr int kScaleBytesK = 12;

// ---------------------------------------------------------------------------------------
// Block structs (ggml layout). x = d * q (+ m) for the legacy types; see each comment.

// 4.5 bits/weight: x = d * (q - 8), q in [0, 15]; low nibbles hold values 0..15, high 16..31.
struct BlockQ4_0 {
  static constexpr TensorType type = TensorType::Q4_0;
  static constexpr int block_size = kBlock32;
  uint16_t d;
  uint8_t qs[kBlock32 / 2];
};

// 5.0 bits/weight: x = d * q + m, q in [0, 15].
struct BlockQ4_1 {
  static constexpr TensorType type = TensorType::Q4_1;
  static constexpr int block_size = kBlock32;
  uint16_t d;
  uint16_t m;
  uint8_t qs[kBlock32 / 2];
};

// 5.5 bits/weight: x = d * (q - 16), q in [0, 31]; the fifth bit of value j is bit j of qh.
struct BlockQ5_0 {
  static constexpr TensorType type = TensorType::Q5_0;
  static constexpr int block_size = kBlock32;
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kBlock32 / 2];
};

// 6.0 bits/weight: x = d * q + m, q in [0, 31].
struct BlockQ5_1 {
  static constexpr TensorType type = TensorType::Q5_1;
  static constexpr int block_size = kBlock32;
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kBlock32 / 2];
};

// 8.5 bits/weight: x = d * q, q in [-127, 127].
struct BlockQ8_0 {
  static constexpr TensorType type = TensorType::Q8_0;
  static constexpr int block_size = kBlock32;
  uint16_t d;
  int8_t qs[kBlock32];
};

// 9.0 bits/weight (activations): as Q8_0 plus s = d * sum(qs), used by the Q4_1/Q5_1 dots.
struct BlockQ8_1 {
  static constexpr TensorType type = TensorType::Q8_1;
  static constexpr int block_size = kBlock32;
  uint16_t d;
  uint16_t s;
  int8_t qs[kBlock32];
};

// 2.625 bits/weight: 16 sub-blocks of 16; scales[i] = scale (low 4 bits) | min (high 4 bits);
// x = d * scale * q - dmin * min, q in [0, 3], four values per byte.
struct BlockQ2_K {
  static constexpr TensorType type = TensorType::Q2_K;
  static constexpr int block_size = kBlockK;
  uint8_t scales[kBlockK / 16];
  uint8_t qs[kBlockK / 4];
  uint16_t d;
  uint16_t dmin;
};

// 3.4375 bits/weight: 16 sub-blocks of 16 with 6-bit signed scales (offset 32) packed in
// 12 bytes; low 2 bits of q in qs, the third bit in hmask (set = no -4 offset);
// x = d * (scale - 32) * (q - 4), q in [0, 7].
struct BlockQ3_K {
  static constexpr TensorType type = TensorType::Q3_K;
  static constexpr int block_size = kBlockK;
  uint8_t hmask[kBlockK / 8];
  uint8_t qs[kBlockK / 4];
  uint8_t scales[kScaleBytesK];
  uint16_t d;
};

// 4.5 bits/weight: 8 sub-blocks of 32 with 6-bit scale and min packed in 12 bytes;
// x = d * scale * q - dmin * min, q in [0, 15].
struct BlockQ4_K {
  static constexpr TensorType type = TensorType::Q4_K;
  static constexpr int block_size = kBlockK;
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kScaleBytesK];
  uint8_t qs[kBlockK / 2];
};

// 5.5 bits/weight: as Q4_K with a fifth bit per value in qh; q in [0, 31].
struct BlockQ5_K {
  static constexpr TensorType type = TensorType::Q5_K;
  static constexpr int block_size = kBlockK;
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kScaleBytesK];
  uint8_t qh[kBlockK / 8];
  uint8_t qs[kBlockK / 2];
};

// 6.5625 bits/weight: 16 sub-blocks of 16 with int8 scales; low 4 bits of q in ql, high 2
// bits in qh; x = d * scale * (q - 32), q in [0, 63].
struct BlockQ6_K {
  static constexpr TensorType type = TensorType::Q6_K;
  static constexpr int block_size = kBlockK;
  uint8_t ql[kBlockK / 2];
  uint8_t qh[kBlockK / 4];
  int8_t scales[kBlockK / 16];
  uint16_t d;
};

// 9.125 bits/weight (activations for the K dots): float scale, x = d * q, and the sums of
// each group of 16 quants (bsums) so the kernels can apply the K types' mins cheaply.
struct BlockQ8_K {
  static constexpr TensorType type = TensorType::Q8_K;
  static constexpr int block_size = kBlockK;
  float d;
  int8_t qs[kBlockK];
  int16_t bsums[kBlockK / 16];
};

// 4.5 bits/weight: x = d * kIq4nlValues[q], q in [0, 15], nibbles ordered as in Q4_0.
struct BlockIQ4_NL {
  static constexpr TensorType type = TensorType::IQ4_NL;
  static constexpr int block_size = kBlock32;
  uint16_t d;
  uint8_t qs[kBlock32 / 2];
};

// The 16 non-uniform levels of IQ4_NL (denser near zero, where weights cluster).
inline constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

// 4.25 bits/weight: 8 sub-blocks of 32 on IQ4_NL's levels, each with a 6-bit scale stored
// offset by 32 (low 4 bits in scales_l, two per byte; top 2 bits in scales_h, two per
// sub-block); x = d * (scale - 32) * kIq4nlValues[q]; each sub-block's 16 bytes of qs hold
// its nibbles as an IQ4_NL block does.
struct BlockIQ4_XS {
  static constexpr TensorType type = TensorType::IQ4_XS;
  static constexpr int block_size = kBlockK;
  uint16_t d;
  uint16_t scales_h;
  uint8_t scales_l[kBlockK / 64];
  uint8_t qs[kBlockK / 2];
};

// 3.4375 bits/weight: the 256 values in groups of 4, each group a point of a 512-entry grid
// of magnitudes (kIq3sGrid: 4 odd values 1..15) chosen by 9 bits (low 8 in qs, the ninth in
// qh, one bit per group), with one sign bit per value (signs, set = negative) and a 4-bit
// scale s per 32 values (two per byte of scales); x = d * (1 + 2 s) * grid * sign.
struct BlockIQ3_S {
  static constexpr TensorType type = TensorType::IQ3_S;
  static constexpr int block_size = kBlockK;
  uint16_t d;
  uint8_t qs[kBlockK / 4];
  uint8_t qh[kBlockK / 32];
  uint8_t signs[kBlockK / 8];
  uint8_t scales[kBlockK / 64];
};

// IQ3_S's grid: entry i packs the magnitudes of a group of 4 values, byte j = value j.
// Only 512 of the 8^4 combinations of odd magnitudes, the ones that occur most in real weights.
inline constexpr uint32_t kIq3sGrid[512] = {
    0x01010101, 0x01010103, 0x01010105, 0x0101010b, 0x0101010f, 0x01010301, 0x01010303, 0x01010305,
    0x01010309, 0x0101030d, 0x01010501, 0x01010503, 0x0101050b, 0x01010707, 0x01010901, 0x01010905,
    0x0101090b, 0x0101090f, 0x01010b03, 0x01010b07, 0x01010d01, 0x01010d05, 0x01010f03, 0x01010f09,
    0x01010f0f, 0x01030101, 0x01030103, 0x01030105, 0x01030109, 0x01030301, 0x01030303, 0x0103030b,
    0x01030501, 0x01030507, 0x0103050f, 0x01030703, 0x0103070b, 0x01030909, 0x01030d03, 0x01030d0b,
    0x01030f05, 0x01050101, 0x01050103, 0x0105010b, 0x0105010f, 0x01050301, 0x01050307, 0x0105030d,
    0x01050503, 0x0105050b, 0x01050701, 0x01050709, 0x01050905, 0x0105090b, 0x0105090f, 0x01050b03,
    0x01050b07, 0x01050f01, 0x01050f07, 0x01070107, 0x01070303, 0x0107030b, 0x01070501, 0x01070505,
    0x01070703, 0x01070707, 0x0107070d, 0x01070909, 0x01070b01, 0x01070b05, 0x01070d0f, 0x01070f03,
    0x01070f0b, 0x01090101, 0x01090307, 0x0109030f, 0x01090503, 0x01090509, 0x01090705, 0x01090901,
    0x01090907, 0x01090b03, 0x01090f01, 0x010b0105, 0x010b0109, 0x010b0501, 0x010b0505, 0x010b050d,
    0x010b0707, 0x010b0903, 0x010b090b, 0x010b090f, 0x010b0d0d, 0x010b0f07, 0x010d010d, 0x010d0303,
    0x010d0307, 0x010d0703, 0x010d0b05, 0x010d0f03, 0x010f0101, 0x010f0105, 0x010f0109, 0x010f0501,
    0x010f0505, 0x010f050d, 0x010f0707, 0x010f0b01, 0x010f0b09, 0x03010101, 0x03010103, 0x03010105,
    0x03010109, 0x03010301, 0x03010303, 0x03010307, 0x0301030b, 0x0301030f, 0x03010501, 0x03010505,
    0x03010703, 0x03010709, 0x0301070d, 0x03010b09, 0x03010b0d, 0x03010d03, 0x03010f05, 0x03030101,
    0x03030103, 0x03030107, 0x0303010d, 0x03030301, 0x03030309, 0x03030503, 0x03030701, 0x03030707,
    0x03030903, 0x03030b01, 0x03030b05, 0x03030f01, 0x03030f0d, 0x03050101, 0x03050305, 0x0305030b,
    0x0305030f, 0x03050501, 0x03050509, 0x03050705, 0x03050901, 0x03050907, 0x03050b0b, 0x03050d01,
    0x03050f05, 0x03070103, 0x03070109, 0x0307010f, 0x03070301, 0x03070307, 0x03070503, 0x0307050f,
    0x03070701, 0x03070709, 0x03070903, 0x03070d05, 0x03070f01, 0x03090107, 0x0309010b, 0x03090305,
    0x03090309, 0x03090703, 0x03090707, 0x03090905, 0x0309090d, 0x03090b01, 0x03090b09, 0x030b0103,
    0x030b0301, 0x030b0307, 0x030b0503, 0x030b0701, 0x030b0705, 0x030b0b03, 0x030d0501, 0x030d0509,
    0x030d050f, 0x030d0909, 0x030d090d, 0x030f0103, 0x030f0107, 0x030f0301, 0x030f0305, 0x030f0503,
    0x030f070b, 0x030f0903, 0x030f0d05, 0x030f0f01, 0x05010101, 0x05010103, 0x05010107, 0x0501010b,
    0x0501010f, 0x05010301, 0x05010305, 0x05010309, 0x0501030d, 0x05010503, 0x05010507, 0x0501050f,
    0x05010701, 0x05010705, 0x05010903, 0x05010907, 0x0501090b, 0x05010b01, 0x05010b05, 0x05010d0f,
    0x05010f01, 0x05010f07, 0x05010f0b, 0x05030101, 0x05030105, 0x05030301, 0x05030307, 0x0503030f,
    0x05030505, 0x0503050b, 0x05030703, 0x05030709, 0x05030905, 0x05030b03, 0x05050103, 0x05050109,
    0x0505010f, 0x05050503, 0x05050507, 0x05050701, 0x0505070f, 0x05050903, 0x05050b07, 0x05050b0f,
    0x05050f03, 0x05050f09, 0x05070101, 0x05070105, 0x0507010b, 0x05070303, 0x05070505, 0x05070509,
    0x05070703, 0x05070707, 0x05070905, 0x05070b01, 0x05070d0d, 0x05090103, 0x0509010f, 0x05090501,
    0x05090507, 0x05090705, 0x0509070b, 0x05090903, 0x05090f05, 0x05090f0b, 0x050b0109, 0x050b0303,
    0x050b0505, 0x050b070f, 0x050b0901, 0x050b0b07, 0x050b0f01, 0x050d0101, 0x050d0105, 0x050d010f,
    0x050d0503, 0x050d0b0b, 0x050d0d03, 0x050f010b, 0x050f0303, 0x050f050d, 0x050f0701, 0x050f0907,
    0x050f0b01, 0x07010105, 0x07010303, 0x07010307, 0x0701030b, 0x0701030f, 0x07010505, 0x07010703,
    0x07010707, 0x0701070b, 0x07010905, 0x07010909, 0x0701090f, 0x07010b03, 0x07010d07, 0x07010f03,
    0x07030103, 0x07030107, 0x0703010b, 0x07030309, 0x07030503, 0x07030507, 0x07030901, 0x07030d01,
    0x07030f05, 0x07030f0d, 0x07050101, 0x07050305, 0x07050501, 0x07050705, 0x07050709, 0x07050b01,
    0x07070103, 0x07070301, 0x07070309, 0x07070503, 0x07070507, 0x0707050f, 0x07070701, 0x07070903,
    0x07070907, 0x0707090f, 0x07070b0b, 0x07070f07, 0x07090107, 0x07090303, 0x0709030d, 0x07090505,
    0x07090703, 0x07090b05, 0x07090d01, 0x07090d09, 0x070b0103, 0x070b0301, 0x070b0305, 0x070b050b,
    0x070b0705, 0x070b0909, 0x070b0b0d, 0x070b0f07, 0x070d030d, 0x070d0903, 0x070f0103, 0x070f0107,
    0x070f0501, 0x070f0505, 0x070f070b, 0x09010101, 0x09010109, 0x09010305, 0x09010501, 0x09010509,
    0x0901050f, 0x09010705, 0x09010903, 0x09010b01, 0x09010f01, 0x09030105, 0x0903010f, 0x09030303,
    0x09030307, 0x09030505, 0x09030701, 0x0903070b, 0x09030907, 0x09030b03, 0x09030b0b, 0x09050103,
    0x09050107, 0x09050301, 0x0905030b, 0x09050503, 0x09050707, 0x09050901, 0x09050b0f, 0x09050d05,
    0x09050f01, 0x09070109, 0x09070303, 0x09070307, 0x09070501, 0x09070505, 0x09070703, 0x0907070b,
    0x09090101, 0x09090105, 0x09090509, 0x0909070f, 0x09090901, 0x09090f03, 0x090b010b, 0x090b010f,
    0x090b0503, 0x090b0d05, 0x090d0307, 0x090d0709, 0x090d0d01, 0x090f0301, 0x090f030b, 0x090f0701,
    0x090f0907, 0x090f0b03, 0x0b010105, 0x0b010301, 0x0b010309, 0x0b010505, 0x0b010901, 0x0b010909,
    0x0b01090f, 0x0b010b05, 0x0b010d0d, 0x0b010f09, 0x0b030103, 0x0b030107, 0x0b03010b, 0x0b030305,
    0x0b030503, 0x0b030705, 0x0b030f05, 0x0b050101, 0x0b050303, 0x0b050507, 0x0b050701, 0x0b05070d,
    0x0b050b07, 0x0b070105, 0x0b07010f, 0x0b070301, 0x0b07050f, 0x0b070909, 0x0b070b03, 0x0b070d0b,
    0x0b070f07, 0x0b090103, 0x0b090109, 0x0b090501, 0x0b090705, 0x0b09090d, 0x0b0b0305, 0x0b0b050d,
    0x0b0b0b03, 0x0b0b0b07, 0x0b0d0905, 0x0b0f0105, 0x0b0f0109, 0x0b0f0505, 0x0d010303, 0x0d010307,
    0x0d01030b, 0x0d010703, 0x0d010707, 0x0d010d01, 0x0d030101, 0x0d030501, 0x0d03050f, 0x0d030d09,
    0x0d050305, 0x0d050709, 0x0d050905, 0x0d050b0b, 0x0d050d05, 0x0d050f01, 0x0d070101, 0x0d070309,
    0x0d070503, 0x0d070901, 0x0d09050b, 0x0d090907, 0x0d090d05, 0x0d0b0101, 0x0d0b0107, 0x0d0b0709,
    0x0d0b0d01, 0x0d0d010b, 0x0d0d0901, 0x0d0f0303, 0x0d0f0307, 0x0f010101, 0x0f010109, 0x0f01010f,
    0x0f010501, 0x0f010505, 0x0f01070d, 0x0f010901, 0x0f010b09, 0x0f010d05, 0x0f030105, 0x0f030303,
    0x0f030509, 0x0f030907, 0x0f03090b, 0x0f050103, 0x0f050109, 0x0f050301, 0x0f05030d, 0x0f050503,
    0x0f050701, 0x0f050b03, 0x0f070105, 0x0f070705, 0x0f07070b, 0x0f070b07, 0x0f090103, 0x0f09010b,
    0x0f090307, 0x0f090501, 0x0f090b01, 0x0f0b0505, 0x0f0b0905, 0x0f0d0105, 0x0f0d0703, 0x0f0f0101,
};

namespace detail {
// The table entry of a type, found by value: a plain loop stays a constant expression in every
// build (GCC's UBSan makes the pointer test in tensor_type_info(TensorType) non-constant).
constexpr TensorTypeInfo type_info_entry(TensorType t) {
  for (const auto& e : tensor_type_table)
    if (e.type == t) return e;
  return {t, "unknown", 0, 0};
}
template <class Block>
constexpr bool block_matches_table() {
  constexpr TensorTypeInfo info = type_info_entry(Block::type);
  return std::is_trivial_v<Block> && std::is_standard_layout_v<Block> &&
         sizeof(Block) == info.block_bytes &&
         static_cast<uint32_t>(Block::block_size) == info.block_size;
}
}  // namespace detail

static_assert(detail::block_matches_table<BlockQ4_0>());
static_assert(detail::block_matches_table<BlockQ4_1>());
static_assert(detail::block_matches_table<BlockQ5_0>());
static_assert(detail::block_matches_table<BlockQ5_1>());
static_assert(detail::block_matches_table<BlockQ8_0>());
static_assert(detail::block_matches_table<BlockQ8_1>());
static_assert(detail::block_matches_table<BlockQ2_K>());
static_assert(detail::block_matches_table<BlockQ3_K>());
static_assert(detail::block_matches_table<BlockQ4_K>());
static_assert(detail::block_matches_table<BlockQ5_K>());
static_assert(detail::block_matches_table<BlockQ6_K>());
static_assert(detail::block_matches_table<BlockQ8_K>());
static_assert(detail::block_matches_table<BlockIQ4_NL>());
static_assert(detail::block_matches_table<BlockIQ4_XS>() && sizeof(BlockIQ4_XS) == 136);
static_assert(detail::block_matches_table<BlockIQ3_S>() && sizeof(BlockIQ3_S) == 110);

// ---------------------------------------------------------------------------------------
// Numeric helpers shared by the quantizers. They reproduce llama.cpp's reference arithmetic
// operation for operation (same float expressions, same evaluation order), because the
// quantized bytes must be identical to what `llama-quantize` writes.
//
// That only holds if the compiler keeps every a * b + c as two roundings: a fused multiply-add
// changes the bytes of most K-quant and IQ4_NL tensors. GCC fuses by default wherever the
// target has FMA (all of AArch64, x86 with -mfma/-march=native) and Clang does within an
// expression, so contraction is switched off for this section and restored after it. (The
// price: GCC does not inline these functions into callers built with other options; they are
// the reference path, the kernels layer has its own fast ones.) Clang ignores the pragma under
// an explicit -ffp-contract=fast, and MSVC is not covered: there the bytes may differ.
#if defined(__clang__)
#pragma float_control(push)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

namespace detail {

// Round to nearest, ties to even: adding 1.5 * 2^23 leaves no fraction bits in the sum, so
// the FPU's own rounding picks the integer, which is then read from the low mantissa bits.
// Exact for |x| < 2^22; outside that range (and for inf/nan) it returns the same meaningless
// value llama.cpp's helper does, and the callers clamp it. No undefined behaviour for any x.
inline int round_nearest(float x) {
  const float biased = x + 12582912.f;
  int32_t bits;
  std::memcpy(&bits, &biased, sizeof bits);
  return (bits & 0x007fffff) - 0x00400000;
}

// float -> int truncation (C's cast) made total: nan gives 0, out-of-range values saturate.
// Inside the int range it equals the plain cast, which is all the quantizers ever hit.
inline int trunc_to_int(float v) {
  if (!(v == v)) return 0;
  if (v >= 2147483647.f) return 2147483647;
  if (v <= -2147483648.f) return -2147483647 - 1;
  return static_cast<int>(v);
}
// C's (int8_t)v, which llama.cpp's legacy quantizers apply to values in [0, 32].
inline int trunc_to_i8(float v) { return static_cast<int8_t>(trunc_to_int(v)); }

// Index of the IQ4_NL level nearest to x (ties go to the upper level). The levels are sorted,
// so x belongs to level i once it reaches the midpoint of levels i-1 and i; comparing 2x with
// the sum of two neighbours keeps both sides exact. A four-step binary search over 16 levels.
inline int nearest_level_index(const int8_t* levels, int n_levels, float x) {
  const float twice = x + x;
  int idx = 0;
  for (int step = n_levels / 2; step > 0; step /= 2) {
    const int j = idx + step;
    if (twice >= static_cast<float>(levels[j - 1] + levels[j])) idx = j;
  }
  return idx;
}

// Scale for groups too small to matter (llama.cpp's GROUP_MAX_EPS).
inline constexpr float kGroupEps = 1e-15f;

// Symmetric quants L in [0, 2*nmax) with x ~ scale * (L - nmax), weighted by x^2: start from
// the scale that maps the value of largest magnitude to -nmax, then try 18 nearby scales
// (nmax +- 0.1 .. 0.9) and keep the one with the best weighted least-squares fit.
// (llama.cpp make_qx_quants with rmse_type 1 and no importance weights; used by Q6_K.)
inline float fit_symmetric_scale(int n, int nmax, const float* x, int8_t* L) {
  float amax = 0.f, vmax = 0.f;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      vmax = x[i];
    }
  }
  if (amax < kGroupEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = -nmax / vmax;
  float sumlx = 0.f, suml2 = 0.f;
  for (int i = 0; i < n; ++i) {
    const int l = std::max(-nmax, std::min(nmax - 1, round_nearest(iscale * x[i])));
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 != 0.f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int step = -9; step <= 9; ++step) {
    if (step == 0) continue;
    iscale = -(nmax + 0.1f * step) / vmax;
    sumlx = suml2 = 0.f;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(-nmax, std::min(nmax - 1, round_nearest(iscale * x[i])));
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    // compare sumlx^2 / suml2 (the error reduction) without dividing
    if (suml2 > 0.f && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = round_nearest(iscale * x[i]);
        L[i] = static_cast<int8_t>(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Symmetric 3-bit quants for Q3_K: first guess from the largest magnitude, then up to five
// rounds of coordinate descent that move one quant at a time when that improves the x^2-weighted
// fit. Returns the scale; L holds values in [0, 2*nmax). (llama.cpp make_q3_quants, do_rmse.)
inline float fit_q3_scale(int n, int nmax, const float* x, int8_t* L) {
  float amax = 0.f, vmax = 0.f;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      vmax = x[i];
    }
  }
  if (amax < kGroupEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  const float iscale = -nmax / vmax;
  float sumlx = 0.f, suml2 = 0.f;
  for (int i = 0; i < n; ++i) {
    const int l = std::max(-nmax, std::min(nmax - 1, round_nearest(iscale * x[i])));
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  for (int round = 0; round < 5; ++round) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * L[i];
      if (slx > 0.f) {
        float sl2 = suml2 - w * L[i] * L[i];
        int l = round_nearest(x[i] * sl2 / slx);
        l = std::max(-nmax, std::min(nmax - 1, l));
        if (l != L[i]) {
          slx += w * x[i] * l;
          sl2 += w * l * l;
          if (sl2 > 0.f && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<int8_t>(l);
            sumlx = slx;
            suml2 = sl2;
            ++changed;
          }
        }
      }
    }
    if (changed == 0) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Asymmetric quants L in [0, nmax] with x ~ scale * L - min (min >= 0 returned in *the_min):
// start from the full [min(x, 0), max(x)] range, then try nstep + 1 scales
// (nmax + rmin + rdelta * k) / range and, for each rounding, solve the weighted least-squares
// fit of scale and offset; keep the fit with the least weighted error (|e| or e^2).
// (llama.cpp make_qkx2_quants; used by Q2_K, Q4_K, Q5_K.)
inline float fit_scale_min(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                           float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep,
                           bool abs_error) {
  float vmin = x[0], vmax = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < vmin) vmin = x[i];
    if (x[i] > vmax) vmax = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (vmin > 0) vmin = 0;
  if (vmax == vmin) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -vmin;
    return 0.f;
  }
  float iscale = nmax / (vmax - vmin);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = round_nearest(iscale * (x[i] - vmin));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    float diff = scale * L[i] + vmin - x[i];
    diff = abs_error ? std::fabs(diff) : diff * diff;
    best_error += weights[i] * diff;
  }
  if (nstep < 1) {
    *the_min = -vmin;
    return scale;
  }
  for (int step = 0; step <= nstep; ++step) {
    iscale = (rmin + rdelta * step + nmax) / (vmax - vmin);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(0, std::min(nmax, round_nearest(iscale * (x[i] - vmin))));
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    // normal equations of min over (scale, offset) of sum w (scale * l + offset - x)^2
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (det > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
      if (this_min > 0) {  // the offset may only shift down; refit the scale alone
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float err = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * Laux[i] + this_min - x[i];
        diff = abs_error ? std::fabs(diff) : diff * diff;
        err += weights[i] * diff;
      }
      if (err < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = err;
        scale = this_scale;
        vmin = this_min;
      }
    }
  }
  *the_min = -vmin;
  return scale;
}

// Q4_K / Q5_K pack eight 6-bit scales and eight 6-bit mins in 12 bytes: bytes 0-3 hold scales
// 0-3 (low 6 bits), bytes 4-7 mins 0-3; scales/mins 4-7 keep their low nibbles in bytes 8-11
// and their top two bits in the spare top bits of bytes 0-7.
inline void unpack_scale_min_k4(int j, const uint8_t* q, uint8_t* scale, uint8_t* min) {
  if (j < 4) {
    *scale = q[j] & 63;
    *min = q[j + 4] & 63;
  } else {
    *scale = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *min = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}
inline void pack_scale_min_k4(int j, uint8_t ls, uint8_t lm, uint8_t* q) {
  if (j < 4) {
    q[j] = ls;
    q[j + 4] = lm;
  } else {
    q[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
    q[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
    q[j] |= static_cast<uint8_t>((lm >> 4) << 6);
  }
}

// Q3_K packs sixteen 6-bit scales in 12 bytes: low nibbles of scales 0-7 in bytes 0-7 (low
// half) and of 8-15 in bytes 0-7 (high half); the top two bits of scale j in byte 8 + j % 4 at
// bit 2 * (j / 4).
inline int q3k_scale(const uint8_t* s, int j) {
  const int low = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
  const int high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
  return (low | (high << 4)) - 32;
}

// Legacy blocks: the fifth bits of 32 values as one little-endian 32-bit word.
inline uint32_t load_qh(const uint8_t* qh) {
  return static_cast<uint32_t>(qh[0]) | static_cast<uint32_t>(qh[1]) << 8 |
         static_cast<uint32_t>(qh[2]) << 16 | static_cast<uint32_t>(qh[3]) << 24;
}
inline void store_qh(uint8_t* qh, uint32_t bits) {
  for (int k = 0; k < 4; ++k) qh[k] = static_cast<uint8_t>(bits >> (8 * k));
}

// Q2_K / Q3_K low bits: per 128 values, byte l of 32 holds values l, l+32, l+64, l+96 at
// bits 0, 2, 4, 6 (each L must already be in [0, 3]).
template <class T>
inline void pack_2bit_planes(const T* L, uint8_t* qs) {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const T* Lh = L + 128 * h;
      qs[32 * h + l] = static_cast<uint8_t>(Lh[l] | (Lh[l + 32] << 2) | (Lh[l + 64] << 4) | (Lh[l + 96] << 6));
    }
}

// Largest magnitude of a block and the signed value that has it (first one on ties).
inline float signed_absmax(const float* x, int n) {
  float amax = 0.f, vmax = 0.f;
  for (int j = 0; j < n; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      vmax = x[j];
    }
  }
  return vmax;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// Reference dequantization, one block at a time: y receives Block::block_size floats.

inline void dequantize_block(const BlockQ4_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int j = 0; j < kBlock32 / 2; ++j) {
    y[j] = ((b.qs[j] & 0x0F) - 8) * d;
    y[j + kBlock32 / 2] = ((b.qs[j] >> 4) - 8) * d;
  }
}

inline void dequantize_block(const BlockQ4_1& b, float* y) {
  const float d = fp16_to_fp32(b.d), m = fp16_to_fp32(b.m);
  for (int j = 0; j < kBlock32 / 2; ++j) {
    y[j] = (b.qs[j] & 0x0F) * d + m;
    y[j + kBlock32 / 2] = (b.qs[j] >> 4) * d + m;
  }
}

inline void dequantize_block(const BlockQ5_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  const uint32_t qh = detail::load_qh(b.qh);
  for (int j = 0; j < kBlock32 / 2; ++j) {
    const int hi0 = static_cast<int>((qh >> j) & 1) << 4;
    const int hi1 = static_cast<int>((qh >> (j + 16)) & 1) << 4;
    y[j] = (((b.qs[j] & 0x0F) | hi0) - 16) * d;
    y[j + kBlock32 / 2] = (((b.qs[j] >> 4) | hi1) - 16) * d;
  }
}

inline void dequantize_block(const BlockQ5_1& b, float* y) {
  const float d = fp16_to_fp32(b.d), m = fp16_to_fp32(b.m);
  const uint32_t qh = detail::load_qh(b.qh);
  for (int j = 0; j < kBlock32 / 2; ++j) {
    const int hi0 = static_cast<int>((qh >> j) & 1) << 4;
    const int hi1 = static_cast<int>((qh >> (j + 16)) & 1) << 4;
    y[j] = ((b.qs[j] & 0x0F) | hi0) * d + m;
    y[j + kBlock32 / 2] = ((b.qs[j] >> 4) | hi1) * d + m;
  }
}

inline void dequantize_block(const BlockQ8_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int j = 0; j < kBlock32; ++j) y[j] = b.qs[j] * d;
}

inline void dequantize_block(const BlockQ8_1& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int j = 0; j < kBlock32; ++j) y[j] = b.qs[j] * d;
}

// Q2_K: 2-bit quant of value 128 * h + 32 * s + l sits in qs[32 * h + l] at bits 2s..2s+1;
// sub-block of 16 values k uses scales[k].
inline void dequantize_block(const BlockQ2_K& b, float* y) {
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  int sub = 0;
  for (int half = 0; half < 2; ++half) {
    const uint8_t* q = b.qs + 32 * half;
    for (int shift = 0; shift < 8; shift += 2) {
      for (int part = 0; part < 2; ++part, ++sub) {
        const float dl = d * (b.scales[sub] & 0xF);
        const float ml = dmin * (b.scales[sub] >> 4);
        for (int l = 0; l < 16; ++l) *y++ = dl * ((q[16 * part + l] >> shift) & 3) - ml;
      }
    }
  }
}

// Q3_K: same bit positions as Q2_K for the low two bits; hmask[l] bit (value / 32) is the high
// bit, and a clear high bit means the quant is offset by -4.
inline void dequantize_block(const BlockQ3_K& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  int sub = 0;
  uint8_t mask = 1;
  for (int half = 0; half < 2; ++half) {
    const uint8_t* q = b.qs + 32 * half;
    for (int shift = 0; shift < 8; shift += 2, mask = static_cast<uint8_t>(mask << 1)) {
      for (int part = 0; part < 2; ++part, ++sub) {
        const float dl = d * detail::q3k_scale(b.scales, sub);
        for (int l = 0; l < 16; ++l) {
          const int idx = 16 * part + l;
          const int low = (q[idx] >> shift) & 3;
          *y++ = dl * (low - ((b.hmask[idx] & mask) ? 0 : 4));
        }
      }
    }
  }
}

// Q4_K: each 32 bytes of qs hold two sub-blocks of 32: low nibbles then high nibbles.
inline void dequantize_block(const BlockQ4_K& b, float* y) {
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  const uint8_t* q = b.qs;
  for (int sub = 0; sub < 8; sub += 2, q += 32) {
    uint8_t sc, m;
    detail::unpack_scale_min_k4(sub, b.scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    detail::unpack_scale_min_k4(sub + 1, b.scales, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
  }
}

// Q5_K: as Q4_K; sub-block k takes its fifth bit from bit k of qh[l].
inline void dequantize_block(const BlockQ5_K& b, float* y) {
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  const uint8_t* q = b.qs;
  for (int sub = 0; sub < 8; sub += 2, q += 32) {
    uint8_t sc, m;
    detail::unpack_scale_min_k4(sub, b.scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    detail::unpack_scale_min_k4(sub + 1, b.scales, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    const uint8_t bit1 = static_cast<uint8_t>(1u << sub), bit2 = static_cast<uint8_t>(2u << sub);
    for (int l = 0; l < 32; ++l) *y++ = d1 * ((q[l] & 0xF) + ((b.qh[l] & bit1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * ((q[l] >> 4) + ((b.qh[l] & bit2) ? 16 : 0)) - m2;
  }
}

// Q6_K: per 128 values, ql[0..63] hold low nibbles (values l, l+32 in ql[l], ql[l+32] low;
// l+64, l+96 in their high nibbles) and qh[0..31] the top two bits of the four values.
inline void dequantize_block(const BlockQ6_K& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  const uint8_t* ql = b.ql;
  const uint8_t* qh = b.qh;
  const int8_t* sc = b.scales;
  for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8) {
    for (int l = 0; l < 32; ++l) {
      const int s = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * sc[s] * q1;
      y[l + 32] = d * sc[s + 2] * q2;
      y[l + 64] = d * sc[s + 4] * q3;
      y[l + 96] = d * sc[s + 6] * q4;
    }
  }
}

inline void dequantize_block(const BlockQ8_K& b, float* y) {
  for (int j = 0; j < kBlockK; ++j) y[j] = b.d * b.qs[j];
}

inline void dequantize_block(const BlockIQ4_NL& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int j = 0; j < kBlock32 / 2; ++j) {
    y[j] = d * kIq4nlValues[b.qs[j] & 0xF];
    y[j + kBlock32 / 2] = d * kIq4nlValues[b.qs[j] >> 4];
  }
}

namespace detail {
// IQ4_XS: the signed 6-bit scale of sub-block ib (0..7).
inline int iq4xs_scale(const BlockIQ4_XS& b, int ib) {
  const int low = (b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
  const int high = (b.scales_h >> (2 * ib)) & 3;
  return (low | (high << 4)) - 32;
}
// IQ3_S: the odd multiplier 1 + 2 s of the 32 values of sub-block ib (0..7).
inline int iq3s_scale(const BlockIQ3_S& b, int ib) { return 1 + 2 * ((b.scales[ib / 2] >> (4 * (ib % 2))) & 0xF); }
// IQ3_S: the grid point of group g (0..63) of 4 values.
inline uint32_t iq3s_point(const BlockIQ3_S& b, int g) {
  return kIq3sGrid[b.qs[g] | (((b.qh[g / 8] >> (g % 8)) & 1) << 8)];
}
// IQ3_S: value i (0..255) is negative.
inline bool iq3s_negative(const BlockIQ3_S& b, int i) { return (b.signs[i / 8] >> (i % 8)) & 1; }
}  // namespace detail

inline void dequantize_block(const BlockIQ4_XS& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int ib = 0; ib < kBlockK / 32; ++ib, y += 32) {
    const float dl = d * static_cast<float>(detail::iq4xs_scale(b, ib));
    const uint8_t* qs = b.qs + 16 * ib;
    for (int j = 0; j < 16; ++j) {
      y[j] = dl * kIq4nlValues[qs[j] & 0xF];
      y[j + 16] = dl * kIq4nlValues[qs[j] >> 4];
    }
  }
}

inline void dequantize_block(const BlockIQ3_S& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int ib = 0; ib < kBlockK / 32; ++ib) {
    const float db = d * static_cast<float>(detail::iq3s_scale(b, ib));
    for (int g = 8 * ib; g < 8 * ib + 8; ++g) {
      const uint32_t point = detail::iq3s_point(b, g);
      for (int j = 0; j < 4; ++j) {
        const float v = db * static_cast<float>((point >> (8 * j)) & 0xFF);
        y[4 * g + j] = detail::iq3s_negative(b, 4 * g + j) ? -v : v;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Reference quantization, one block at a time: x holds Block::block_size floats. Each gives
// the bytes llama.cpp's `llama-quantize` writes without an importance matrix.

// Q4_0: the value of largest magnitude, with its sign, maps to -8, so [-8, 7] is fully used.
inline void quantize_block(const float* x, BlockQ4_0* y) {
  const float d = detail::signed_absmax(x, kBlock32) / -8;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  y->d = fp32_to_fp16(d);
  for (int j = 0; j < kBlock32 / 2; ++j) {
    // +8.5 then truncation rounds half up into [0, 16]; 16 (only +|max|) is clamped to 15
    const int q0 = std::min(15, detail::trunc_to_i8(x[j] * id + 8.5f));
    const int q1 = std::min(15, detail::trunc_to_i8(x[j + 16] * id + 8.5f));
    y->qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

// Q4_1: d = (max - min) / 15, m = min.
inline void quantize_block(const float* x, BlockQ4_1* y) {
  float vmin = 3.402823466e+38f, vmax = -3.402823466e+38f;
  for (int j = 0; j < kBlock32; ++j) {
    if (x[j] < vmin) vmin = x[j];
    if (x[j] > vmax) vmax = x[j];
  }
  const float d = (vmax - vmin) / 15;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  y->d = fp32_to_fp16(d);
  y->m = fp32_to_fp16(vmin);
  for (int j = 0; j < kBlock32 / 2; ++j) {
    const int q0 = std::min(15, detail::trunc_to_i8((x[j] - vmin) * id + 0.5f));
    const int q1 = std::min(15, detail::trunc_to_i8((x[j + 16] - vmin) * id + 0.5f));
    y->qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

// Q5_0: as Q4_0 with 32 levels (largest magnitude maps to -16).
inline void quantize_block(const float* x, BlockQ5_0* y) {
  const float d = detail::signed_absmax(x, kBlock32) / -16;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  y->d = fp32_to_fp16(d);
  uint32_t qh = 0;
  for (int j = 0; j < kBlock32 / 2; ++j) {
    const int q0 = std::min(31, detail::trunc_to_i8(x[j] * id + 16.5f));
    const int q1 = std::min(31, detail::trunc_to_i8(x[j + 16] * id + 16.5f));
    y->qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
    qh |= static_cast<uint32_t>((q0 >> 4) & 1) << j;
    qh |= static_cast<uint32_t>((q1 >> 4) & 1) << (j + 16);
  }
  detail::store_qh(y->qh, qh);
}

// Q5_1: d = (max - min) / 31, m = min.
inline void quantize_block(const float* x, BlockQ5_1* y) {
  float vmin = 3.402823466e+38f, vmax = -3.402823466e+38f;
  for (int j = 0; j < kBlock32; ++j) {
    if (x[j] < vmin) vmin = x[j];
    if (x[j] > vmax) vmax = x[j];
  }
  const float d = (vmax - vmin) / 31;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  y->d = fp32_to_fp16(d);
  y->m = fp32_to_fp16(vmin);
  uint32_t qh = 0;
  for (int j = 0; j < kBlock32 / 2; ++j) {
    const int q0 = static_cast<uint8_t>(detail::trunc_to_int((x[j] - vmin) * id + 0.5f));
    const int q1 = static_cast<uint8_t>(detail::trunc_to_int((x[j + 16] - vmin) * id + 0.5f));
    y->qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
    qh |= static_cast<uint32_t>((q0 >> 4) & 1) << j;
    qh |= static_cast<uint32_t>((q1 >> 4) & 1) << (j + 16);
  }
  detail::store_qh(y->qh, qh);
}

// Q8_0: d = absmax / 127, q = round(x / d) (half away from zero).
inline void quantize_block(const float* x, BlockQ8_0* y) {
  float amax = 0.f;
  for (int j = 0; j < kBlock32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  y->d = fp32_to_fp16(d);
  for (int j = 0; j < kBlock32; ++j)
    y->qs[j] = static_cast<int8_t>(detail::trunc_to_int(std::round(x[j] * id)));
}

// Q8_1: as Q8_0, plus s = d * sum(q) (rounded to fp16) for the kernels of Q4_1 / Q5_1.
inline void quantize_block(const float* x, BlockQ8_1* y) {
  float amax = 0.f;
  for (int j = 0; j < kBlock32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  y->d = fp32_to_fp16(d);
  int sum = 0;
  for (int j = 0; j < kBlock32; ++j) {
    y->qs[j] = static_cast<int8_t>(detail::trunc_to_int(std::round(x[j] * id)));
    sum += y->qs[j];
  }
  y->s = fp32_to_fp16(sum * d);
}

// Q2_K: per sub-block of 16, an asymmetric 2-bit fit (|x|-weighted, absolute error); the 16
// scales and 16 mins are then quantized to 4 bits against their maxima, and the values are
// re-quantized with the rounded scales.
inline void quantize_block(const float* x, BlockQ2_K* y) {
  uint8_t L[kBlockK], Laux[16];
  float weights[16], mins[16], scales[16];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 16; ++j) {
    for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
    scales[j] = detail::fit_scale_min(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux,
                                      -0.5f, 0.1f, 15, true);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float kLevels = 15.f;
  if (max_scale > 0) {
    const float iscale = kLevels / max_scale;
    for (int j = 0; j < 16; ++j)
      y->scales[j] = static_cast<uint8_t>(detail::round_nearest(iscale * scales[j]));
    y->d = fp32_to_fp16(max_scale / kLevels);
  } else {
    for (int j = 0; j < 16; ++j) y->scales[j] = 0;
    y->d = fp32_to_fp16(0.f);
  }
  if (max_min > 0) {
    const float iscale = kLevels / max_min;
    for (int j = 0; j < 16; ++j)
      y->scales[j] = static_cast<uint8_t>(y->scales[j] | (detail::round_nearest(iscale * mins[j]) << 4));
    y->dmin = fp32_to_fp16(max_min / kLevels);
  } else {
    y->dmin = fp32_to_fp16(0.f);
  }
  for (int j = 0; j < 16; ++j) {
    const float d = fp16_to_fp32(y->d) * (y->scales[j] & 0xF);
    if (d == 0.f) continue;  // keeps the first fit's quants, as llama.cpp does
    const float dm = fp16_to_fp32(y->dmin) * (y->scales[j] >> 4);
    for (int l = 0; l < 16; ++l) {
      const int q = detail::round_nearest((x[16 * j + l] + dm) / d);
      L[16 * j + l] = static_cast<uint8_t>(std::max(0, std::min(3, q)));
    }
  }
  detail::pack_2bit_planes(L, y->qs);
}

// Q3_K: per sub-block of 16 a symmetric 3-bit fit; the 16 signed scales are quantized to
// 6 bits against the one of largest magnitude, then the values are re-quantized.
inline void quantize_block(const float* x, BlockQ3_K* y) {
  int8_t L[kBlockK];
  float scales[16];
  float max_scale = 0, amax = 0;
  for (int j = 0; j < 16; ++j) {
    scales[j] = detail::fit_q3_scale(16, 4, x + 16 * j, L + 16 * j);
    const float a = std::fabs(scales[j]);
    if (a > amax) {
      amax = a;
      max_scale = scales[j];
    }
  }
  std::memset(y->scales, 0, sizeof y->scales);
  if (max_scale != 0.f) {
    const float iscale = -32.f / max_scale;
    for (int j = 0; j < 16; ++j) {
      int8_t l = static_cast<int8_t>(detail::round_nearest(iscale * scales[j]));
      l = static_cast<int8_t>(std::max(-32, std::min(31, static_cast<int>(l))) + 32);
      if (j < 8)
        y->scales[j] = static_cast<uint8_t>(l & 0xF);
      else
        y->scales[j - 8] = static_cast<uint8_t>(y->scales[j - 8] | ((l & 0xF) << 4));
      uint8_t& high = y->scales[j % 4 + 8];
      high = static_cast<uint8_t>(high | ((l >> 4) << (2 * (j / 4))));
    }
    y->d = fp32_to_fp16(1 / iscale);
  } else {
    y->d = fp32_to_fp16(0.f);
  }
  for (int j = 0; j < 16; ++j) {
    const float d = fp16_to_fp32(y->d) * static_cast<int8_t>(detail::q3k_scale(y->scales, j));
    if (d == 0.f) continue;
    for (int l = 0; l < 16; ++l) {
      const int q = detail::round_nearest(x[16 * j + l] / d);
      L[16 * j + l] = static_cast<int8_t>(std::max(-4, std::min(3, q)) + 4);
    }
  }
  // third bit of value j goes to hmask[j % 32] bit j / 32
  std::memset(y->hmask, 0, sizeof y->hmask);
  for (int j = 0; j < kBlockK; ++j) {
    if (L[j] > 3) {
      y->hmask[j % 32] = static_cast<uint8_t>(y->hmask[j % 32] | (1u << (j / 32)));
      L[j] = static_cast<int8_t>(L[j] - 4);
    }
  }
  detail::pack_2bit_planes(L, y->qs);
}

namespace detail {
// Shared by Q4_K (nmax 15) and Q5_K (nmax 31): per sub-block of 32, an asymmetric fit weighted
// by rms(x) + |x|; scales and mins to 6 bits against their maxima; re-quantize. L gets the quants.
inline void quantize_k4_scales(const float* x, int nmax, float rmin, float rdelta, int nstep,
                               uint16_t* d_out, uint16_t* dmin_out, uint8_t* packed, uint8_t* L) {
  uint8_t Laux[32];
  float weights[32], mins[8], scales[8];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float rms = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = rms + std::fabs(xs[l]);
    scales[j] = fit_scale_min(32, nmax, xs, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta, nstep, false);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  for (int j = 0; j < 8; ++j) {
    uint8_t ls = static_cast<uint8_t>(round_nearest(inv_scale * scales[j]));
    uint8_t lm = static_cast<uint8_t>(round_nearest(inv_min * mins[j]));
    ls = std::min<uint8_t>(63, ls);
    lm = std::min<uint8_t>(63, lm);
    pack_scale_min_k4(j, ls, lm, packed);
  }
  *d_out = fp32_to_fp16(max_scale / 63.f);
  *dmin_out = fp32_to_fp16(max_min / 63.f);
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    unpack_scale_min_k4(j, packed, &sc, &m);
    const float d = fp16_to_fp32(*d_out) * sc;
    if (d == 0.f) continue;
    const float dm = fp16_to_fp32(*dmin_out) * m;
    for (int l = 0; l < 32; ++l) {
      const int q = round_nearest((x[32 * j + l] + dm) / d);
      L[32 * j + l] = static_cast<uint8_t>(std::max(0, std::min(nmax, q)));
    }
  }
}
}  // namespace detail

inline void quantize_block(const float* x, BlockQ4_K* y) {
  uint8_t L[kBlockK];
  detail::quantize_k4_scales(x, 15, -1.f, 0.1f, 20, &y->d, &y->dmin, y->scales, L);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l)
      y->qs[32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | (L[64 * c + l + 32] << 4));
}

inline void quantize_block(const float* x, BlockQ5_K* y) {
  uint8_t L[kBlockK];
  detail::quantize_k4_scales(x, 31, -0.5f, 0.1f, 15, &y->d, &y->dmin, y->scales, L);
  std::memset(y->qh, 0, sizeof y->qh);
  for (int c = 0; c < 4; ++c) {
    const uint8_t bit1 = static_cast<uint8_t>(1u << (2 * c)), bit2 = static_cast<uint8_t>(2u << (2 * c));
    for (int l = 0; l < 32; ++l) {
      int q1 = L[64 * c + l], q2 = L[64 * c + l + 32];
      if (q1 > 15) {
        q1 -= 16;
        y->qh[l] |= bit1;
      }
      if (q2 > 15) {
        q2 -= 16;
        y->qh[l] |= bit2;
      }
      y->qs[32 * c + l] = static_cast<uint8_t>(q1 | (q2 << 4));
    }
  }
}

// Q6_K: per sub-block of 16 a symmetric 6-bit fit; the 16 signed scales go to int8 against the
// one of largest magnitude (which maps to -128); re-quantize.
inline void quantize_block(const float* x, BlockQ6_K* y) {
  int8_t L[kBlockK];
  float scales[16];
  float max_scale = 0, max_abs_scale = 0;
  for (int j = 0; j < 16; ++j) {
    scales[j] = detail::fit_symmetric_scale(16, 32, x + 16 * j, L + 16 * j);
    const float a = std::fabs(scales[j]);
    if (a > max_abs_scale) {
      max_abs_scale = a;
      max_scale = scales[j];
    }
  }
  if (max_abs_scale < detail::kGroupEps) {
    std::memset(y, 0, sizeof *y);
    return;
  }
  const float iscale = -128.f / max_scale;
  y->d = fp32_to_fp16(1 / iscale);
  for (int j = 0; j < 16; ++j)
    y->scales[j] = static_cast<int8_t>(std::min(127, detail::round_nearest(iscale * scales[j])));
  for (int j = 0; j < 16; ++j) {
    const float d = fp16_to_fp32(y->d) * y->scales[j];
    if (d == 0.f) continue;
    for (int l = 0; l < 16; ++l) {
      const int q = detail::round_nearest(x[16 * j + l] / d);
      L[16 * j + l] = static_cast<int8_t>(std::max(-32, std::min(31, q)) + 32);
    }
  }
  for (int h = 0; h < 2; ++h) {
    const int8_t* Lh = L + 128 * h;
    uint8_t* ql = y->ql + 64 * h;
    uint8_t* qh = y->qh + 32 * h;
    for (int l = 0; l < 32; ++l) {
      const int q1 = Lh[l], q2 = Lh[l + 32], q3 = Lh[l + 64], q4 = Lh[l + 96];
      ql[l] = static_cast<uint8_t>((q1 & 0xF) | ((q3 & 0xF) << 4));
      ql[l + 32] = static_cast<uint8_t>((q2 & 0xF) | ((q4 & 0xF) << 4));
      qh[l] = static_cast<uint8_t>((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
    }
  }
}

// Q8_K: float d with the largest magnitude mapped to -127, plus per-16 sums of the quants.
inline void quantize_block(const float* x, BlockQ8_K* y) {
  const float vmax = detail::signed_absmax(x, kBlockK);
  if (vmax == 0.f) {
    std::memset(y, 0, sizeof *y);
    return;
  }
  const float iscale = -127.f / vmax;
  for (int j = 0; j < kBlockK; ++j)
    y->qs[j] = static_cast<int8_t>(std::min(127, detail::round_nearest(iscale * x[j])));
  for (int g = 0; g < kBlockK / 16; ++g) {
    int sum = 0;
    for (int l = 0; l < 16; ++l) sum += y->qs[16 * g + l];
    y->bsums[g] = static_cast<int16_t>(sum);
  }
  y->d = 1 / iscale;
}

namespace detail {
// IQ4_NL's scale search over one block of 32 (also each sub-block of IQ4_XS): start from the
// scale mapping the value of largest magnitude to the extreme level, then try 15 more
// (+-7 steps) and keep the best x^2-weighted least-squares fit to the 16 levels. 0 for a
// block too small to matter. (llama.cpp's search path, ntry = 7, which llama-quantize takes.)
inline float fit_iq4_scale(const float* x) {
  constexpr int n = kBlock32;
  const int8_t* levels = kIq4nlValues;
  float weight[n];
  for (int j = 0; j < n; ++j) weight[j] = x[j] * x[j];
  float amax = 0, vmax = 0;
  for (int j = 0; j < n; ++j) {
    const float ax = std::fabs(x[j]);
    if (ax > amax) {
      amax = ax;
      vmax = x[j];
    }
  }
  if (amax < kGroupEps) return 0.f;
  float d = -vmax / levels[0];
  float id = 1 / d;
  float sumqx = 0, sumq2 = 0;
  for (int j = 0; j < n; ++j) {
    const float q = levels[nearest_level_index(levels, 16, id * x[j])];
    sumqx += weight[j] * q * x[j];
    sumq2 += weight[j] * q * q;
  }
  d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
  float best = d * sumqx;
  for (int step = -7; step <= 7; ++step) {
    id = (step + levels[0]) / vmax;
    sumqx = sumq2 = 0;
    for (int j = 0; j < n; ++j) {
      const float q = levels[nearest_level_index(levels, 16, id * x[j])];
      sumqx += weight[j] * q * x[j];
      sumq2 += weight[j] * q * q;
    }
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      d = sumqx / sumq2;
      best = d * sumqx;
    }
  }
  return d;
}

// The 32 values at x snapped to their nearest level under inverse scale id, packed as
// IQ4_NL nibbles (value j low, value j + 16 high).
inline void pack_iq4_levels(const float* x, float id, uint8_t* qs) {
  uint8_t L[kBlock32];
  for (int j = 0; j < kBlock32; ++j) L[j] = static_cast<uint8_t>(nearest_level_index(kIq4nlValues, 16, id * x[j]));
  for (int j = 0; j < kBlock32 / 2; ++j) qs[j] = static_cast<uint8_t>(L[j] | (L[j + kBlock32 / 2] << 4));
}
}  // namespace detail

// IQ4_NL: the block scale from fit_iq4_scale, then every value snapped to its nearest level.
inline void quantize_block(const float* x, BlockIQ4_NL* y) {
  const float scale = detail::fit_iq4_scale(x);
  y->d = fp32_to_fp16(scale);
  // quants from the unrounded scale, as llama.cpp does
  detail::pack_iq4_levels(x, scale != 0.f ? 1 / scale : 0.f, y->qs);
}

// IQ4_XS: each sub-block's IQ4_NL scale, then the super-block scale d maps the one of largest
// magnitude to -32; sub-block scales become round(scale / d) in [-32, 31] and the values are
// snapped again under the rounded scale d * l (d unrounded, as llama.cpp does).
inline void quantize_block(const float* x, BlockIQ4_XS* y) {
  float scales[kBlockK / 32];
  float max_scale = 0, amax_scale = 0;
  for (int ib = 0; ib < kBlockK / 32; ++ib) {
    scales[ib] = detail::fit_iq4_scale(x + 32 * ib);
    if (std::fabs(scales[ib]) > amax_scale) {
      amax_scale = std::fabs(scales[ib]);
      max_scale = scales[ib];
    }
  }
  const float d = -max_scale / 32;
  y->d = fp32_to_fp16(d);
  const float id = d != 0.f ? 1 / d : 0.f;
  y->scales_h = 0;
  for (int ib = 0; ib < kBlockK / 32; ++ib) {
    const int l = std::max(-32, std::min(31, detail::round_nearest(id * scales[ib])));
    const float dl = d * static_cast<float>(l);
    detail::pack_iq4_levels(x + 32 * ib, dl != 0.f ? 1 / dl : 0.f, y->qs + 16 * ib);
    const int biased = l + 32;
    if (ib % 2 == 0)
      y->scales_l[ib / 2] = static_cast<uint8_t>(biased & 0xF);
    else
      y->scales_l[ib / 2] = static_cast<uint8_t>(y->scales_l[ib / 2] | ((biased & 0xF) << 4));
    y->scales_h = static_cast<uint16_t>(y->scales_h | ((biased >> 4) << (2 * ib)));
  }
}

// IQ3_S has no quantizer here: llama.cpp's is a search over the grid's neighbourhoods (built
// at start-up from the grid), not yet written for tinyslm; quantize_row refuses the type.

// ---------------------------------------------------------------------------------------
// Typed rows: nblocks consecutive blocks.

template <class Block>
inline void dequantize_blocks(const Block* x, float* y, int64_t nblocks) {
  for (int64_t i = 0; i < nblocks; ++i) dequantize_block(x[i], y + i * Block::block_size);
}
template <class Block>
inline void quantize_blocks(const float* x, Block* y, int64_t nblocks) {
  for (int64_t i = 0; i < nblocks; ++i) quantize_block(x + i * Block::block_size, y + i);
}

// ---------------------------------------------------------------------------------------
// The block-type table: one row per GGUF type id, the single place that says, per type, its
// storage (name, values and bytes per block, from gguf.hpp's tensor_type_table, which the
// reader needs for every type), the activation format its dot product takes, the shape of
// its canonical decode (scale group, min), and its reference conversions. The kernels layer
// (kernels.hpp, block_kernels) adds each type's reference dot and fast kernels per SIMD path.

namespace detail {
// Activation formats. Each weight type is paired with the activation format llama.cpp pairs
// it with, so our sums round like its sums: legacy 32-blocks with Q8_0 (Q8_1 when the
// weights carry a min), K types with Q8_K, F16/BF16 with activations rounded to F16/BF16.
enum class ActFormat { q8_0, q8_1, q8_k, f16, bf16, f32 };

constexpr bool act_format_is_float(ActFormat f) {
  return f == ActFormat::f16 || f == ActFormat::bf16 || f == ActFormat::f32;
}
}  // namespace detail

// n values (a whole number of blocks, not checked here; quantize_row / dequantize_row check).
using DequantizeRowFn = void (*)(const void* src, float* dst, int64_t n);
using QuantizeRowFn = void (*)(const float* src, void* dst, int64_t n);

struct QuantTraits {
  TensorType type = TensorType::F32;
  const char* name = "unknown";
  int block_size = 0;          // values per block
  int block_bytes = 0;         // bytes per block
  float bits_per_weight = 0;   // 8 * block_bytes / block_size
  DequantizeRowFn dequantize = nullptr;  // nullptr: tinyslm cannot convert this type
  QuantizeRowFn quantize = nullptr;      // llama.cpp's reference quantizer without importance matrix
                                         // (nullptr: dequantize only, quantize_row refuses the type)
  detail::ActFormat act = detail::ActFormat::f32;  // activations its matmul dot takes
  bool integer_dot = false;    // weights decode to small integers (canonical form, kernels layer)
  int group = 32;              // values per scale group of that decode
  bool has_min = false;        // the decode carries a min per group
};
using BlockType = QuantTraits;

namespace detail {

template <class Block>
inline void dequantize_row_erased(const void* src, float* dst, int64_t n) {
  dequantize_blocks(static_cast<const Block*>(src), dst, n / Block::block_size);
}
template <class Block>
inline void quantize_row_erased(const float* src, void* dst, int64_t n) {
  quantize_blocks(src, static_cast<Block*>(dst), n / Block::block_size);
}

// Unquantized rows go through memcpy so rows need no alignment.
inline void dequantize_row_f32(const void* src, float* dst, int64_t n) {
  if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}
inline void quantize_row_f32(const float* src, void* dst, int64_t n) {
  if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}
inline void dequantize_row_f16(const void* src, float* dst, int64_t n) {
  const auto* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, p + 2 * i, 2);
    dst[i] = fp16_to_fp32(h);
  }
}
inline void quantize_row_f16(const float* src, void* dst, int64_t n) {
  auto* p = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = fp32_to_fp16(src[i]);
    std::memcpy(p + 2 * i, &h, 2);
  }
}
inline void dequantize_row_bf16(const void* src, float* dst, int64_t n) {
  const auto* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, p + 2 * i, 2);
    dst[i] = bf16_to_fp32(h);
  }
}
inline void quantize_row_bf16(const float* src, void* dst, int64_t n) {
  auto* p = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = fp32_to_bf16(src[i]);
    std::memcpy(p + 2 * i, &h, 2);
  }
}

// Weights as a matrix: act is the activation format, group / has_min the canonical decode.
struct MatmulShape {
  ActFormat act;
  bool integer_dot;
  int group;
  bool has_min;
};
inline constexpr MatmulShape kFloatWeights{ActFormat::f32, false, 32, false};

constexpr QuantTraits make_traits(TensorType t, DequantizeRowFn dq, QuantizeRowFn q, MatmulShape m) {
  const TensorTypeInfo info = type_info_entry(t);
  return {t,
          info.name,
          static_cast<int>(info.block_size),
          static_cast<int>(info.block_bytes),
          8.f * static_cast<float>(info.block_bytes) / static_cast<float>(info.block_size),
          dq,
          q,
          m.act,
          m.integer_dot,
          m.group,
          m.has_min};
}
template <class Block>
constexpr QuantTraits make_block_traits(MatmulShape m) {
  return make_traits(Block::type, &dequantize_row_erased<Block>, &quantize_row_erased<Block>, m);
}

// Q8_1 / Q8_K are activation formats only: matmul does not take them as weights.
inline constexpr MatmulShape kNoMatmul{ActFormat::q8_0, false, 32, false};

inline constexpr QuantTraits block_type_list[] = {
    make_traits(TensorType::F32, &dequantize_row_f32, &quantize_row_f32, kFloatWeights),
    make_traits(TensorType::F16, &dequantize_row_f16, &quantize_row_f16, {ActFormat::f16, false, 32, false}),
    make_traits(TensorType::BF16, &dequantize_row_bf16, &quantize_row_bf16, {ActFormat::bf16, false, 32, false}),
    make_block_traits<BlockQ4_0>({ActFormat::q8_0, true, 32, false}),
    make_block_traits<BlockQ4_1>({ActFormat::q8_1, true, 32, true}),
    make_block_traits<BlockQ5_0>({ActFormat::q8_0, true, 32, false}),
    make_block_traits<BlockQ5_1>({ActFormat::q8_1, true, 32, true}),
    make_block_traits<BlockQ8_0>({ActFormat::q8_0, true, 32, false}),
    make_block_traits<BlockQ8_1>(kNoMatmul),
    make_block_traits<BlockQ2_K>({ActFormat::q8_k, true, 16, true}),
    make_block_traits<BlockQ3_K>({ActFormat::q8_k, true, 16, false}),
    make_block_traits<BlockQ4_K>({ActFormat::q8_k, true, 32, true}),
    make_block_traits<BlockQ5_K>({ActFormat::q8_k, true, 32, true}),
    make_block_traits<BlockQ6_K>({ActFormat::q8_k, true, 16, false}),
    make_block_traits<BlockQ8_K>(kNoMatmul),
    make_block_traits<BlockIQ4_NL>({ActFormat::q8_0, true, 32, false}),
    make_block_traits<BlockIQ4_XS>({ActFormat::q8_k, true, 32, false}),
    make_traits(TensorType::IQ3_S, &dequantize_row_erased<BlockIQ3_S>, nullptr, {ActFormat::q8_k, true, 32, false}),
};

// GGUF type ids run from 0 to 39 (MXFP4); the table has a row for each, empty when unsupported.
inline constexpr uint32_t kTensorTypeIdLimit = 40;
constexpr auto make_block_type_table() {
  std::array<QuantTraits, kTensorTypeIdLimit> t{};
  for (const QuantTraits& q : block_type_list) t[static_cast<uint32_t>(q.type)] = q;
  return t;
}
inline constexpr auto block_type_table = make_block_type_table();
inline constexpr QuantTraits kUnknownBlockType{};

// The row of a type (an empty row, dequantize == nullptr, for types tinyslm cannot convert).
constexpr const QuantTraits& block_type(TensorType t) {
  const auto id = static_cast<uint32_t>(t);
  return id < kTensorTypeIdLimit ? block_type_table[id] : kUnknownBlockType;
}

// Thin aliases of the table's columns (older names).
constexpr ActFormat act_format_for(TensorType t) {
  return block_type(t).dequantize ? block_type(t).act : ActFormat::q8_0;
}
constexpr bool is_integer_weight_type(TensorType t) { return block_type(t).integer_dot; }

}  // namespace detail

// Traits of a type, or nullptr when tinyslm cannot convert it (IQ2_XXS, TQ1_0, ...).
inline const QuantTraits* quant_traits(TensorType t) {
  const QuantTraits& q = detail::block_type(t);
  return q.dequantize ? &q : nullptr;
}
inline bool is_supported(TensorType t) { return quant_traits(t) != nullptr; }

namespace detail {
inline Expected<const QuantTraits*> traits_for_row(TensorType t, int64_t n) {
  const QuantTraits* q = quant_traits(t);
  if (!q)
    return make_error(Errc::unsupported,
                      std::string("tensor type ") + tensor_type_name(t) + " is not supported");
  if (n < 0 || n % q->block_size != 0)
    return make_error(Errc::invalid_argument,
                      std::string("row of ") + std::to_string(n) + " values is not a whole number of " +
                          q->name + " blocks of " + std::to_string(q->block_size));
  return q;
}
}  // namespace detail

// n values of type t at src -> n floats at dst. Quantized rows are read as block structs, so
// src must be 2-byte aligned (4 for Q8_K), as every row inside a GGUF tensor is.
inline Status dequantize_row(TensorType t, const void* src, float* dst, int64_t n) {
  auto q = detail::traits_for_row(t, n);
  if (!q) return q.error();
  (*q)->dequantize(src, dst, n);
  return {};
}

// n floats at src -> n values of type t at dst (n / block_size * block_bytes bytes), the same
// bytes llama.cpp's reference quantizer writes without importance matrix. Same alignment rule
// for dst as for dequantize_row's src.
inline Status quantize_row(TensorType t, const float* src, void* dst, int64_t n) {
  auto q = detail::traits_for_row(t, n);
  if (!q) return q.error();
  if (!(*q)->quantize)
    return make_error(Errc::unsupported, std::string("quantizing to ") + (*q)->name + " is not supported (dequantize only)");
  (*q)->quantize(src, dst, n);
  return {};
}

#if defined(__clang__)
#pragma float_control(pop)
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
