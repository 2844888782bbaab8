// tinyslm quant: GGUF block formats and their reference (scalar) conversions.
//
// Every block type is one POD struct with ggml's byte layout; its size is checked against
// gguf.hpp's tensor_type_table, the single source of truth for block sizes. Scales in fp16
// are kept as raw uint16_t bits (convert with fp16_to_fp32 / fp32_to_fp16 from core.hpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core.hpp"
#include "gguf.hpp"

namespace tinyslm {
inline namespace v0 {

// Values per block: the legacy formats and IQ4_NL use 32, the K formats a super-block of 256
// made of 16 or 8 sub-blocks.
inline constexpr int kBlock32 = 32;
inline constexpr int kBlockK = 256;
// Number of 6-bit scale/min pairs packed into 12 bytes in Q4_K / Q5_K (and Q3_K's 12 bytes).
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

namespace detail {
template <class Block>
constexpr bool block_matches_table() {
  return std::is_trivial_v<Block> && std::is_standard_layout_v<Block> &&
         sizeof(Block) == tensor_type_info(Block::type).block_bytes &&
         static_cast<uint32_t>(Block::block_size) == tensor_type_info(Block::type).block_size;
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

}  // namespace v0
}  // namespace tinyslm
