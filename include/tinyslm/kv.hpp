// tinyslm kv: the key/value cache of one sequence.
//
// Storage allocated once for the whole context: [layer][kv head][position] rows of head_dim
// values (F16, or q8_0 / q4_0 blocks: kv_quant.hpp), so one head's keys are contiguous for the
// attention kernel. Positions are absolute; a chat turn
// keeps the common prefix (truncate) and evaluates only its new tokens. Sliding-window layers
// simply never read positions older than their window.
#pragma once

#include <cstdint>
#include <string>

#include "core.hpp"
#include "kv_quant.hpp"
#include "model.hpp"
#include "ops.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

class KvCache {
 public:
  KvCache() = default;
  KvCache(KvCache&&) = default;
  KvCache& operator=(KvCache&&) = default;

  // K and V rows of type tk / tv (kv_quant.hpp); a quantized type needs a head size its block
  // divides, as llama.cpp requires.
  static Expected<KvCache> create(const HParams& hp, int64_t n_ctx, KvType tk = KvType::f16,
                                  KvType tv = KvType::f16) {
    if (n_ctx <= 0 || n_ctx > (int64_t{1} << 24))
      return make_error(Errc::invalid_argument,
                        "KV cache: context length " + std::to_string(n_ctx) + " out of range");
    if (auto st = kv_check_head_dim(tk, hp.head_dim_k, "K"); !st) return st.error();
    if (auto st = kv_check_head_dim(tv, hp.head_dim_v, "V"); !st) return st.error();
    KvCache c;
    c.n_layer_ = hp.n_kv_layers();
    c.n_head_kv_ = hp.n_head_kv;
    c.head_dim_k_ = hp.head_dim_k;
    c.head_dim_v_ = hp.head_dim_v;
    c.n_ctx_ = n_ctx;
    c.type_k_ = tk;
    c.type_v_ = tv;
    c.row_k_ = kv_row_bytes(tk, hp.head_dim_k);
    c.row_v_ = kv_row_bytes(tv, hp.head_dim_v);
    uint64_t nk = 0, nv = 0;
    if (detail::mul_overflows(static_cast<uint64_t>(c.n_layer_ * hp.n_head_kv * c.row_k_),
                              static_cast<uint64_t>(n_ctx), &nk) ||
        detail::mul_overflows(static_cast<uint64_t>(c.n_layer_ * hp.n_head_kv * c.row_v_),
                              static_cast<uint64_t>(n_ctx), &nv) ||
        !c.k_.allocate(static_cast<size_t>(nk)) || !c.v_.allocate(static_cast<size_t>(nv)))
      return make_error(Errc::out_of_memory, "KV cache: cannot allocate " +
                                                 std::to_string((nk + nv) >> 20) + " MiB for " +
                                                 std::to_string(n_ctx) + " positions");
    return c;
  }

  int64_t n_ctx() const { return n_ctx_; }
  int64_t n_layer() const { return n_layer_; }        // cache slots (layers that own a cache)
  int64_t size() const { return n_past_; }           // positions filled
  int64_t free() const { return n_ctx_ - n_past_; }  // positions left
  size_t bytes() const { return k_.size() + v_.size(); }
  KvType type_k() const { return type_k_; }
  KvType type_v() const { return type_v_; }
  // Bytes of one position of one kv head.
  int64_t row_bytes_k() const { return row_k_; }
  int64_t row_bytes_v() const { return row_v_; }

  // Keeps the first n positions (a shared prompt prefix) and forgets the rest.
  Status truncate(int64_t n) {
    if (n < 0 || n > n_past_)
      return make_error(Errc::out_of_range, "KV cache: cannot truncate " + std::to_string(n_past_) +
                                                " positions to " + std::to_string(n));
    n_past_ = n;
    return {};
  }
  void clear() { n_past_ = 0; }

  // Fails (without changing anything) when n more positions do not fit.
  Status reserve_tokens(int64_t n) const {
    if (n < 0 || n > n_ctx_ - n_past_)
      return make_error(Errc::out_of_range,
                        "context full: " + std::to_string(n_past_) + " of " +
                            std::to_string(n_ctx_) + " positions used, " + std::to_string(n) +
                            " more requested");
    return {};
  }
  // Marks n more positions as filled (after their keys and values were stored).
  void advance(int64_t n) { n_past_ += n; }

  // This layer's caches: [n_head_kv][n_ctx] rows of row_bytes_k() / row_bytes_v().
  uint8_t* k_bytes(int64_t il) { return k_.data() + il * n_head_kv_ * n_ctx_ * row_k_; }
  uint8_t* v_bytes(int64_t il) { return v_.data() + il * n_head_kv_ * n_ctx_ * row_v_; }
  const uint8_t* k_bytes(int64_t il) const { return k_.data() + il * n_head_kv_ * n_ctx_ * row_k_; }
  const uint8_t* v_bytes(int64_t il) const { return v_.data() + il * n_head_kv_ * n_ctx_ * row_v_; }
  ops::KvRows k_rows(int64_t il) const { return {k_bytes(il), type_k_, row_k_}; }
  ops::KvRows v_rows(int64_t il) const { return {v_bytes(il), type_v_, row_v_}; }
  // The same as F16 values, [n_head_kv][n_ctx][head_dim] (only for an f16 K / V).
  uint16_t* k_layer(int64_t il) { return reinterpret_cast<uint16_t*>(k_bytes(il)); }
  uint16_t* v_layer(int64_t il) { return reinterpret_cast<uint16_t*>(v_bytes(il)); }
  const uint16_t* k_layer(int64_t il) const { return reinterpret_cast<const uint16_t*>(k_bytes(il)); }
  const uint16_t* v_layer(int64_t il) const { return reinterpret_cast<const uint16_t*>(v_bytes(il)); }

  // Stores the keys and values of one token (all kv heads, contiguous) at position pos.
  void store(int64_t il, int64_t pos, const float* k, const float* v) {
    uint8_t* kl = k_bytes(il);
    uint8_t* vl = v_bytes(il);
    for (int64_t g = 0; g < n_head_kv_; ++g) {
      kv_store_row(type_k_, k + g * head_dim_k_, head_dim_k_, kl + (g * n_ctx_ + pos) * row_k_);
      kv_store_row(type_v_, v + g * head_dim_v_, head_dim_v_, vl + (g * n_ctx_ + pos) * row_v_);
    }
  }

 private:
  int64_t n_layer_ = 0, n_head_kv_ = 0, head_dim_k_ = 0, head_dim_v_ = 0;
  int64_t n_ctx_ = 0, n_past_ = 0;
  KvType type_k_ = KvType::f16, type_v_ = KvType::f16;
  int64_t row_k_ = 0, row_v_ = 0;
  AlignedBuffer<uint8_t> k_, v_;
};

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
