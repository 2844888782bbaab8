// tinyslm kv: the key/value cache of one sequence.
//
// F16 storage allocated once for the whole context: [layer][kv head][position][head dim], so
// one head's keys are contiguous for the attention kernel. Positions are absolute; a chat turn
// keeps the common prefix (truncate) and evaluates only its new tokens. Sliding-window layers
// simply never read positions older than their window.
#pragma once

#include <cstdint>
#include <string>

#include "core.hpp"
#include "model.hpp"
#include "ops.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

class KvCache {
 public:
  KvCache() = default;
  KvCache(KvCache&&) = default;
  KvCache& operator=(KvCache&&) = default;

  static Expected<KvCache> create(const HParams& hp, int64_t n_ctx) {
    if (n_ctx <= 0 || n_ctx > (int64_t{1} << 24))
      return make_error(Errc::invalid_argument,
                        "KV cache: context length " + std::to_string(n_ctx) + " out of range");
    KvCache c;
    c.n_layer_ = hp.n_kv_layers();
    c.n_head_kv_ = hp.n_head_kv;
    c.head_dim_k_ = hp.head_dim_k;
    c.head_dim_v_ = hp.head_dim_v;
    c.n_ctx_ = n_ctx;
    uint64_t nk = 0, nv = 0;
    if (detail::mul_overflows(static_cast<uint64_t>(c.n_layer_ * hp.n_head_kv * hp.head_dim_k),
                              static_cast<uint64_t>(n_ctx), &nk) ||
        detail::mul_overflows(static_cast<uint64_t>(c.n_layer_ * hp.n_head_kv * hp.head_dim_v),
                              static_cast<uint64_t>(n_ctx), &nv) ||
        !c.k_.allocate(static_cast<size_t>(nk)) || !c.v_.allocate(static_cast<size_t>(nv)))
      return make_error(Errc::out_of_memory, "KV cache: cannot allocate " +
                                                 std::to_string((nk + nv) * 2 >> 20) + " MiB for " +
                                                 std::to_string(n_ctx) + " positions");
    return c;
  }

  int64_t n_ctx() const { return n_ctx_; }
  int64_t n_layer() const { return n_layer_; }        // cache slots (layers that own a cache)
  int64_t size() const { return n_past_; }           // positions filled
  int64_t free() const { return n_ctx_ - n_past_; }  // positions left
  size_t bytes() const { return (k_.size() + v_.size()) * sizeof(uint16_t); }

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

  // This layer's caches: [n_head_kv][n_ctx][head_dim].
  uint16_t* k_layer(int64_t il) { return k_.data() + il * n_head_kv_ * n_ctx_ * head_dim_k_; }
  uint16_t* v_layer(int64_t il) { return v_.data() + il * n_head_kv_ * n_ctx_ * head_dim_v_; }
  const uint16_t* k_layer(int64_t il) const { return k_.data() + il * n_head_kv_ * n_ctx_ * head_dim_k_; }
  const uint16_t* v_layer(int64_t il) const { return v_.data() + il * n_head_kv_ * n_ctx_ * head_dim_v_; }

  // Stores the keys and values of one token (all kv heads, contiguous) at position pos.
  void store(int64_t il, int64_t pos, const float* k, const float* v) {
    uint16_t* kl = k_layer(il);
    uint16_t* vl = v_layer(il);
    for (int64_t g = 0; g < n_head_kv_; ++g) {
      ops::f32_to_f16(k + g * head_dim_k_, kl + (g * n_ctx_ + pos) * head_dim_k_, head_dim_k_);
      ops::f32_to_f16(v + g * head_dim_v_, vl + (g * n_ctx_ + pos) * head_dim_v_, head_dim_v_);
    }
  }

 private:
  int64_t n_layer_ = 0, n_head_kv_ = 0, head_dim_k_ = 0, head_dim_v_ = 0;
  int64_t n_ctx_ = 0, n_past_ = 0;
  AlignedBuffer<uint16_t> k_, v_;
};

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
