// tinyslm kv_quant: the element types of the KV cache and attention over a quantized cache.
//
// A cache row (one position of one kv head) is head_dim values stored as f16, or as q8_0 / q4_0
// blocks of 32 (the ggml block structs of quant.hpp), as llama.cpp's -ctk / -ctv choose. With a
// quantized cache, attention never dequantizes the prefix: each query head is quantized to
// q8_0 once and dotted with the K blocks in integers (as llama.cpp's flash attention does with
// its vec_dot_type), and each V row is scaled into an f32 accumulator straight from its blocks.
// The softmax is then in f32 (no fp16 rounding of the probabilities), as llama.cpp's flash
// attention does for a quantized V. An all-f16 cache keeps ops::attention (ops.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "core.hpp"
#include "ops.hpp"
#include "quant.hpp"

#if defined(TINYSLM_SIMD_X86)
#include <immintrin.h>
#define TINYSLM_KVQ_X86 1
#define TINYSLM_KVQ_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TINYSLM_KVQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#endif
#if defined(__GNUC__) || defined(__clang__)
#define TINYSLM_OPS_KVQ_INLINE __attribute__((always_inline)) inline
#else
#define TINYSLM_OPS_KVQ_INLINE inline
#endif

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

enum class KvType : uint8_t { f16 = 0, q8_0 = 1, q4_0 = 2 };

inline const char* kv_type_name(KvType t) {
  switch (t) {
    case KvType::f16: return "f16";
    case KvType::q8_0: return "q8_0";
    case KvType::q4_0: return "q4_0";
  }
  return "?";
}

// llama.cpp's spellings of -ctk / -ctv.
inline Expected<KvType> parse_kv_type(std::string_view s) {
  for (KvType t : {KvType::f16, KvType::q8_0, KvType::q4_0})
    if (s == kv_type_name(t)) return t;
  return make_error(Errc::invalid_argument,
                    "unsupported KV cache type '" + std::string(s) + "' (supported: f16, q8_0, q4_0)");
}

// Values per block: a row must be a whole number of blocks.
inline int64_t kv_block_size(KvType t) { return t == KvType::f16 ? 1 : kBlock32; }

// Bytes of one cache row of n values (n a multiple of the block size).
inline int64_t kv_row_bytes(KvType t, int64_t n) {
  switch (t) {
    case KvType::f16: return 2 * n;
    case KvType::q8_0: return n / kBlock32 * static_cast<int64_t>(sizeof(BlockQ8_0));
    case KvType::q4_0: return n / kBlock32 * static_cast<int64_t>(sizeof(BlockQ4_0));
  }
  return 0;
}

// Refuses a head size the block does not divide, in llama.cpp's words ("K" or "V").
inline Status kv_check_head_dim(KvType t, int64_t head_dim, const char* which) {
  const int64_t bs = kv_block_size(t);
  if (head_dim <= 0 || head_dim % bs != 0)
    return make_error(Errc::unsupported, std::string(which) + " cache type " + kv_type_name(t) + " with block size " +
                                             std::to_string(bs) + " does not divide n_embd_head_" +
                                             (which[0] == 'K' ? "k" : "v") + "=" + std::to_string(head_dim));
  return {};
}

// Stores n floats as one cache row of type t.
inline void kv_store_row(KvType t, const float* x, int64_t n, uint8_t* row) {
  switch (t) {
    case KvType::f16: ops::f32_to_f16(x, reinterpret_cast<uint16_t*>(row), n); return;
    case KvType::q8_0:
      for (int64_t b = 0; b < n / kBlock32; ++b) quantize_block(x + b * kBlock32, reinterpret_cast<BlockQ8_0*>(row) + b);
      return;
    case KvType::q4_0:
      for (int64_t b = 0; b < n / kBlock32; ++b) quantize_block(x + b * kBlock32, reinterpret_cast<BlockQ4_0*>(row) + b);
      return;
  }
}

// One cache row back to floats (tests, tools; attention does not use it).
inline void kv_load_row(KvType t, const uint8_t* row, int64_t n, float* x) {
  if (t == KvType::f16) return ops::f16_to_f32(reinterpret_cast<const uint16_t*>(row), x, n);
  for (int64_t b = 0; b < n / kBlock32; ++b) {
    float* o = x + b * kBlock32;
    if (t == KvType::q8_0) {
      const BlockQ8_0& k = reinterpret_cast<const BlockQ8_0*>(row)[b];
      for (int j = 0; j < kBlock32; ++j) o[j] = fp16_to_fp32(k.d) * k.qs[j];
    } else {
      const BlockQ4_0& k = reinterpret_cast<const BlockQ4_0*>(row)[b];
      for (int j = 0; j < kBlock32 / 2; ++j) {
        o[j] = fp16_to_fp32(k.d) * ((k.qs[j] & 15) - 8);
        o[j + 16] = fp16_to_fp32(k.d) * ((k.qs[j] >> 4) - 8);
      }
    }
  }
}

namespace ops {

// One layer of a cache: [n_head_kv][cache_ctx] rows of row_bytes.
struct KvRows {
  const uint8_t* data = nullptr;
  KvType type = KvType::f16;
  int64_t row_bytes = 0;
};

namespace detail {

// ---------------------------------------------------------------------------------------
// Scalar reference kernels. q: the query head as q8_0 blocks (nb of them).

inline float kq_dot_q8_0_scalar(const BlockQ8_0* k, const BlockQ8_0* q, int64_t nb) {
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t isum = 0;
    for (int j = 0; j < kBlock32; ++j) isum += k[b].qs[j] * q[b].qs[j];
    sum += static_cast<float>(isum) * (fp16_to_fp32(k[b].d) * fp16_to_fp32(q[b].d));
  }
  return sum;
}

inline float kq_dot_q4_0_scalar(const BlockQ4_0* k, const BlockQ8_0* q, int64_t nb) {
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t isum = 0;
    for (int j = 0; j < kBlock32 / 2; ++j)
      isum += ((k[b].qs[j] & 15) - 8) * q[b].qs[j] + ((k[b].qs[j] >> 4) - 8) * q[b].qs[j + 16];
    sum += static_cast<float>(isum) * (fp16_to_fp32(k[b].d) * fp16_to_fp32(q[b].d));
  }
  return sum;
}

// acc[0, 32 nb) += w * (row as floats).
inline void v_mad_q8_0_scalar(const BlockQ8_0* v, int64_t nb, float w, float* acc) {
  for (int64_t b = 0; b < nb; ++b) {
    const float c = w * fp16_to_fp32(v[b].d);
    for (int j = 0; j < kBlock32; ++j) acc[b * kBlock32 + j] += c * static_cast<float>(v[b].qs[j]);
  }
}

inline void v_mad_q4_0_scalar(const BlockQ4_0* v, int64_t nb, float w, float* acc) {
  for (int64_t b = 0; b < nb; ++b) {
    const float c = w * fp16_to_fp32(v[b].d);
    for (int j = 0; j < kBlock32 / 2; ++j) {
      acc[b * kBlock32 + j] += c * static_cast<float>((v[b].qs[j] & 15) - 8);
      acc[b * kBlock32 + j + 16] += c * static_cast<float>((v[b].qs[j] >> 4) - 8);
    }
  }
}

// Queries a prefill work item takes together (they share every cache row they read).
inline constexpr int64_t kQueryBlock = 4;

// The heads of one GQA group read each cache row once: M query heads, q holds M x nb blocks,
// scores s[m * ld + j] and sums acc[m * hv ..] per head m.
struct GroupRows {
  const uint8_t* rows;  // n rows of rb bytes
  int64_t rb, n, nb, m;
};

// s[m ld + j] = K row j . q_m for a q8_0 / q4_0 cache.
inline void kq_scores_scalar(KvType t, const GroupRows& g, const BlockQ8_0* q, float* s, int64_t ld) {
  for (int64_t j = 0; j < g.n; ++j) {
    const uint8_t* r = g.rows + j * g.rb;
    for (int64_t m = 0; m < g.m; ++m)
      s[m * ld + j] = t == KvType::q8_0 ? kq_dot_q8_0_scalar(reinterpret_cast<const BlockQ8_0*>(r), q + m * g.nb, g.nb)
                                        : kq_dot_q4_0_scalar(reinterpret_cast<const BlockQ4_0*>(r), q + m * g.nb, g.nb);
  }
}

// acc_m += sum_j p[m ld + j] * V row j for a q8_0 / q4_0 cache.
inline void v_mix_scalar(KvType t, const GroupRows& g, const float* p, int64_t ld, float* acc) {
  const int64_t hv = g.nb * kBlock32;
  for (int64_t j = 0; j < g.n; ++j) {
    const uint8_t* r = g.rows + j * g.rb;
    for (int64_t m = 0; m < g.m; ++m) {
      if (t == KvType::q8_0) v_mad_q8_0_scalar(reinterpret_cast<const BlockQ8_0*>(r), g.nb, p[m * ld + j], acc + m * hv);
      else v_mad_q4_0_scalar(reinterpret_cast<const BlockQ4_0*>(r), g.nb, p[m * ld + j], acc + m * hv);
    }
  }
}

// Scale, optional soft-cap and an f32 softmax of s[0, n), in place.
TINYSLM_OPS_KVQ_INLINE void softmax_f32_body(float* s, int64_t n, float scale, float softcap) {
  const float inv = softmax_exp_body(s, n, scale, softcap);
  for (int64_t j = 0; j < n; ++j) s[j] *= inv;
}
inline void softmax_f32_scalar(float* s, int64_t n, float scale, float softcap) { softmax_f32_body(s, n, scale, softcap); }

#if defined(TINYSLM_KVQ_X86)
// ---------------------------------------------------------------------------------------
// x86: 32 signed bytes per block. The K . q products use the sign trick (|k| unsigned times
// q with k's sign) so one unsigned-by-signed multiply-add covers a block; AVX-512 VNNI does
// it in one vpdpbusd, AVX2 in vpmaddubsw + vpmaddwd. Eight rows are reduced together.

// The 32 values of a q4_0 block as signed bytes (-8..7), in element order.
TINYSLM_KVQ_AVX2 inline __m256i q4_0_bytes(const uint8_t* qs) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  return _mm256_sub_epi8(_mm256_and_si256(both, _mm256_set1_epi8(15)), _mm256_set1_epi8(8));
}

template <KvType T>
TINYSLM_KVQ_AVX2 __attribute__((always_inline)) inline __m256i kv_block_bytes(const uint8_t* blk) {
  if constexpr (T == KvType::q8_0) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
  else return q4_0_bytes(blk + 2);
}

template <KvType T>
inline constexpr int64_t kBlockBytes = T == KvType::q8_0 ? int64_t(sizeof(BlockQ8_0)) : int64_t(sizeof(BlockQ4_0));

TINYSLM_KVQ_AVX2 __attribute__((always_inline)) inline float kv_block_scale(const uint8_t* blk) {
  uint16_t d;
  std::memcpy(&d, blk, 2);
  return _cvtsh_ss(d);
}

// The eight sums of a0..a7, in order.
TINYSLM_KVQ_AVX2 __attribute__((always_inline)) inline __m256 hsum8(const __m256* a) {
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
TINYSLM_KVQ_AVX2 __attribute__((always_inline)) inline float hsum1(__m256 a) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2)));
}

#define TINYSLM_KVQ_SCORES(TARGET, SUFFIX, MADD)                                                               \
  template <KvType T>                                                                                          \
  TARGET __attribute__((always_inline)) inline __m256 row_dot_##SUFFIX(const uint8_t* r, const BlockQ8_0* q,   \
                                                                       int64_t nb) {                           \
    __m256 acc = _mm256_setzero_ps();                                                                          \
    for (int64_t b = 0; b < nb; ++b) {                                                                         \
      const uint8_t* blk = r + b * kBlockBytes<T>;                                                             \
      const __m256i kx = kv_block_bytes<T>(blk);                                                               \
      const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[b].qs));                        \
      const __m256i p32 = MADD(_mm256_sign_epi8(kx, kx), _mm256_sign_epi8(qy, kx));                            \
      acc = _mm256_fmadd_ps(_mm256_set1_ps(kv_block_scale(blk) * _cvtsh_ss(q[b].d)), _mm256_cvtepi32_ps(p32), acc); \
    }                                                                                                          \
    return acc;                                                                                                \
  }                                                                                                            \
  template <KvType T>                                                                                          \
  TARGET inline void kq_scores_##SUFFIX(const GroupRows& g, const BlockQ8_0* q, float* s, int64_t ld) {       \
    int64_t j = 0;                                                                                             \
    for (; j + 8 <= g.n; j += 8)                                                                               \
      for (int64_t m = 0; m < g.m; ++m) {                                                                      \
        __m256 acc[8];                                                                                         \
        for (int r = 0; r < 8; ++r) acc[r] = row_dot_##SUFFIX<T>(g.rows + (j + r) * g.rb, q + m * g.nb, g.nb); \
        _mm256_storeu_ps(s + m * ld + j, hsum8(acc));                                                          \
      }                                                                                                        \
    for (; j < g.n; ++j)                                                                                       \
      for (int64_t m = 0; m < g.m; ++m) s[m * ld + j] = hsum1(row_dot_##SUFFIX<T>(g.rows + j * g.rb, q + m * g.nb, g.nb)); \
  }

TINYSLM_KVQ_AVX2 __attribute__((always_inline)) inline __m256i madd_u8s8_avx2(__m256i u, __m256i v) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, v), _mm256_set1_epi16(1));
}
TINYSLM_KVQ_AVX512 __attribute__((always_inline)) inline __m256i madd_u8s8_vnni(__m256i u, __m256i v) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, v);
}
TINYSLM_KVQ_SCORES(TINYSLM_KVQ_AVX2, avx2, madd_u8s8_avx2)
TINYSLM_KVQ_SCORES(TINYSLM_KVQ_AVX512, avx512, madd_u8s8_vnni)
#undef TINYSLM_KVQ_SCORES

// acc_m += sum_j p[m ld + j] * V row j: each block's 32 bytes widened to floats once per row,
// then scaled by p * d into every head's sum.
template <KvType T>
TINYSLM_KVQ_AVX2 inline void v_mix_avx2(const GroupRows& g, const float* p, int64_t ld, float* acc) {
  const int64_t hv = g.nb * kBlock32;
  for (int64_t j = 0; j < g.n; ++j) {
    const uint8_t* r = g.rows + j * g.rb;
    for (int64_t b = 0; b < g.nb; ++b) {
      const uint8_t* blk = r + b * kBlockBytes<T>;
      const float d = kv_block_scale(blk);
      const __m256i x = kv_block_bytes<T>(blk);
      const __m128i lo = _mm256_castsi256_si128(x), hi = _mm256_extracti128_si256(x, 1);
      const __m256 v0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
      const __m256 v1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
      const __m256 v2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
      const __m256 v3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
      for (int64_t m = 0; m < g.m; ++m) {
        const __m256 c = _mm256_set1_ps(p[m * ld + j] * d);
        float* a = acc + m * hv + b * kBlock32;
        _mm256_storeu_ps(a, _mm256_fmadd_ps(c, v0, _mm256_loadu_ps(a)));
        _mm256_storeu_ps(a + 8, _mm256_fmadd_ps(c, v1, _mm256_loadu_ps(a + 8)));
        _mm256_storeu_ps(a + 16, _mm256_fmadd_ps(c, v2, _mm256_loadu_ps(a + 16)));
        _mm256_storeu_ps(a + 24, _mm256_fmadd_ps(c, v3, _mm256_loadu_ps(a + 24)));
      }
    }
  }
}

TINYSLM_KVQ_AVX2 inline void softmax_f32_avx2(float* s, int64_t n, float scale, float softcap) {
  softmax_f32_body(s, n, scale, softcap);
}
TINYSLM_KVQ_AVX512 inline void softmax_f32_avx512(float* s, int64_t n, float scale, float softcap) {
  softmax_f32_body(s, n, scale, softcap);
}
#endif

// The paths the active SIMD level picks.
inline void kq_scores(KvType t, const GroupRows& g, const BlockQ8_0* q, float* s, int64_t ld) {
#if defined(TINYSLM_KVQ_X86)
  const int w = active_x86_width();
  if (w == 2) return t == KvType::q8_0 ? kq_scores_avx512<KvType::q8_0>(g, q, s, ld) : kq_scores_avx512<KvType::q4_0>(g, q, s, ld);
  if (w == 1) return t == KvType::q8_0 ? kq_scores_avx2<KvType::q8_0>(g, q, s, ld) : kq_scores_avx2<KvType::q4_0>(g, q, s, ld);
#endif
  kq_scores_scalar(t, g, q, s, ld);
}

inline void v_mix(KvType t, const GroupRows& g, const float* p, int64_t ld, float* acc) {
#if defined(TINYSLM_KVQ_X86)
  if (active_x86_width() >= 1)
    return t == KvType::q8_0 ? v_mix_avx2<KvType::q8_0>(g, p, ld, acc) : v_mix_avx2<KvType::q4_0>(g, p, ld, acc);
#endif
  v_mix_scalar(t, g, p, ld, acc);
}

inline void softmax_f32(float* s, int64_t n, float scale, float softcap) {
#if defined(TINYSLM_KVQ_X86)
  const int w = active_x86_width();
  if (w == 2) return softmax_f32_avx512(s, n, scale, softcap);
  if (w == 1) return softmax_f32_avx2(s, n, scale, softcap);
#endif
  softmax_f32_scalar(s, n, scale, softcap);
}

// f16 rows in a mixed cache (one of K, V quantized): converted row by row into tmp.
inline void kq_scores_f16(const uint8_t* rows, int64_t rb, int64_t n, const float* q, int64_t hk, float* tmp, float* s) {
  for (int64_t j = 0; j < n; ++j) {
    f16_to_f32(reinterpret_cast<const uint16_t*>(rows + j * rb), tmp, hk);
    float sum = 0.0f;
    for (int64_t d = 0; d < hk; ++d) sum += tmp[d] * q[d];
    s[j] = sum;
  }
}
inline void v_mix_f16(const uint8_t* rows, int64_t rb, int64_t n, const float* p, int64_t hv, float* tmp, float* acc) {
  for (int64_t j = 0; j < n; ++j) {
    f16_to_f32(reinterpret_cast<const uint16_t*>(rows + j * rb), tmp, hv);
    for (int64_t d = 0; d < hv; ++d) acc[d] += p[j] * tmp[d];
  }
}

// Heads h0 .. h0 + m - 1 (one GQA group's, m <= scratch.group) for nq <= kQueryBlock
// consecutive queries at positions p0 .. p0 + nq - 1, whose rows together span [lo, lo + n):
// every (query, head) pair is one vector of the kernels, so each cache row is read once for all
// of them; each keeps only its own causal window in the softmax. w: the thread's scratch row,
// laid out as AttentionScratch::row_floats sizes it.
struct GroupQuery {
  const float* q;  // query 0's row of n_head heads; query r at q + r * q_stride
  float* out;
  int64_t q_stride, out_stride;
  int64_t h0, m, nq, p0, lo, n;
  const uint8_t* krows;  // row lo
  const uint8_t* vrows;
};

inline void quant_group(const AttentionShape& a, KvRows k, KvRows v, const GroupQuery& gq, float* w, int64_t ld,
                        int64_t group) {
  const int64_t hk = a.head_dim_k, hv = a.head_dim_v, M = gq.m * gq.nq, n = gq.n, G = group * kQueryBlock;
  float* s = w;                             // M rows of ld scores
  float* qbuf = w + G * ld;                 // q8_0 blocks of M vectors, or one f16-rounded q
  float* acc = qbuf + 2 * G * hk + 2 * hk;  // M sums of hv, then an f16 V row
  const auto qvec = [&](int64_t x) { return gq.q + x / gq.m * gq.q_stride + (gq.h0 + x % gq.m) * hk; };
  if (k.type == KvType::f16) {
    for (int64_t x = 0; x < M; ++x) {
      for (int64_t d = 0; d < hk; ++d) qbuf[d] = round_to_f16(qvec(x)[d]);
      kq_scores_f16(gq.krows, k.row_bytes, n, qbuf, hk, qbuf + hk, s + x * ld);
    }
  } else {
    BlockQ8_0* qq = reinterpret_cast<BlockQ8_0*>(qbuf);
    const int64_t nb = hk / kBlock32;
    for (int64_t x = 0; x < M; ++x)
      for (int64_t b = 0; b < nb; ++b) quantize_block(qvec(x) + b * kBlock32, qq + x * nb + b);
    kq_scores(k.type, GroupRows{gq.krows, k.row_bytes, n, nb, M}, qq, s, ld);
  }
  for (int64_t x = 0; x < M; ++x) {
    const int64_t p = gq.p0 + x / gq.m, first = a.n_swa > 0 && p - a.n_swa + 1 > gq.lo ? p - a.n_swa + 1 : gq.lo;
    const int64_t a0 = first - gq.lo, a1 = p + 1 - gq.lo;  // this query's rows [a0, a1)
    float* sx = s + x * ld;
    softmax_f32(sx + a0, a1 - a0, a.scale, a.softcap);
    for (int64_t j = 0; j < a0; ++j) sx[j] = 0.0f;
    for (int64_t j = a1; j < n; ++j) sx[j] = 0.0f;
  }
  for (int64_t d = 0; d < M * hv; ++d) acc[d] = 0.0f;
  if (v.type == KvType::f16) {
    for (int64_t x = 0; x < M; ++x) v_mix_f16(gq.vrows, v.row_bytes, n, s + x * ld, hv, acc + M * hv, acc + x * hv);
  } else {
    v_mix(v.type, GroupRows{gq.vrows, v.row_bytes, n, hv / kBlock32, M}, s, ld, acc);
  }
  for (int64_t x = 0; x < M; ++x)
    std::memcpy(gq.out + x / gq.m * gq.out_stride + (gq.h0 + x % gq.m) * hv, acc + x * hv,
                static_cast<size_t>(hv) * sizeof(float));
}

}  // namespace detail

// Causal attention, as ops::attention (same q, out and window rules), over a cache with at least
// one of K and V quantized. One (head, query) per work item, computed whole by one thread, so
// the thread count never changes a result. Needs AttentionScratch::rows only.
inline void attention_quant(const AttentionShape& a, const float* q, int64_t q_stride, int64_t n_tokens, int64_t pos0,
                            KvRows k, KvRows v, int64_t cache_ctx, float* out, int64_t out_stride,
                            AttentionScratch& scratch, const ParallelFor& par) {
  const int64_t group = a.n_head / a.n_head_kv, m_max = std::min(group, scratch.group);
  const int64_t subs = (group + m_max - 1) / m_max;  // head batches per group (1 unless a layer is wider)
  const int64_t qb = n_tokens > 2 ? detail::kQueryBlock : 1, n_qb = (n_tokens + qb - 1) / qb;
  const auto window = [&](int64_t p) { return a.n_swa > 0 && p - a.n_swa + 1 > 0 ? p - a.n_swa + 1 : int64_t(0); };
  par([&](int t, int nt) {
    int64_t b, e;
    ParallelFor::split(a.n_head_kv * subs * n_qb, t, nt, 1, &b, &e);
    float* w = scratch.rows.data() + t * scratch.row_stride;
    for (int64_t it = b; it < e; ++it) {
      const int64_t gs = it / n_qb, i0 = it % n_qb * qb, g = gs / subs, h0 = g * group + gs % subs * m_max;
      const int64_t nq = std::min(qb, n_tokens - i0), p0 = pos0 + i0, lo = window(p0);
      const detail::GroupQuery gq{q + i0 * q_stride,
                                  out + i0 * out_stride,
                                  q_stride,
                                  out_stride,
                                  h0,
                                  std::min(m_max, (g + 1) * group - h0),
                                  nq,
                                  p0,
                                  lo,
                                  p0 + nq - lo,
                                  k.data + (g * cache_ctx + lo) * k.row_bytes,
                                  v.data + (g * cache_ctx + lo) * v.row_bytes};
      detail::quant_group(a, k, v, gq, w, scratch.n_ctx, scratch.group);
    }
  });
}

}  // namespace ops
}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#undef TINYSLM_OPS_KVQ_INLINE
#if defined(TINYSLM_KVQ_X86)
#undef TINYSLM_KVQ_AVX2
#undef TINYSLM_KVQ_AVX512
#undef TINYSLM_KVQ_X86
#endif
