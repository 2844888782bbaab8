// tinyslm state: the per-sequence recurrent state of hybrid models and its checkpoints.
//
// A short-convolution layer (lfm2) or a linear-attention layer (Gated DeltaNet) carries a
// state that summarises every token seen so far. Unlike a KV cache it cannot be cut back to
// an earlier position, so the store keeps a few checkpoints: copies of the whole state (every
// layer, as one unit) taken at chosen positions, typically the end of each prompt and of each
// reply. Returning to position p restores the checkpoint taken at p; a prefix with no
// checkpoint at its end is reused only up to the latest checkpoint inside it (position 0 is
// always restorable: the zero state).
//
// All memory is allocated once in create(): the live state and n_checkpoints slots.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "core.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

class RecurrentState {
 public:
  RecurrentState() = default;
  RecurrentState(RecurrentState&&) = default;
  RecurrentState& operator=(RecurrentState&&) = default;

  // layer_floats[il]: floats of layer il's state (0: the layer has none).
  static Expected<RecurrentState> create(std::span<const int64_t> layer_floats, int n_checkpoints) {
    RecurrentState s;
    uint64_t total = 0;
    s.offset_.reserve(layer_floats.size() + 1);
    for (int64_t n : layer_floats) {
      if (n < 0 || n > (int64_t{1} << 32))
        return make_error(Errc::invalid_argument, "recurrent state: bad layer size " + std::to_string(n));
      s.offset_.push_back(total);
      total += static_cast<uint64_t>(n);
    }
    s.offset_.push_back(total);
    s.floats_ = static_cast<size_t>(total);
    if (s.floats_ == 0) return s;
    const int slots = std::clamp(n_checkpoints, 0, 64);
    uint64_t all = 0;
    if (detail::mul_overflows(total, static_cast<uint64_t>(slots + 1), &all) || !s.buf_.allocate(static_cast<size_t>(all)))
      return make_error(Errc::out_of_memory, "recurrent state: cannot allocate " + std::to_string(all * 4 >> 20) +
                                                 " MiB (" + std::to_string(slots) + " checkpoints)");
    s.pos_.assign(static_cast<size_t>(slots), -1);
    s.clear();
    return s;
  }

  // Bytes create() allocates for these sizes (for memory estimates).
  static uint64_t bytes_for(std::span<const int64_t> layer_floats, int n_checkpoints) {
    uint64_t total = 0;
    for (int64_t n : layer_floats) total += static_cast<uint64_t>(std::max<int64_t>(n, 0));
    return total == 0 ? 0 : 4 * total * static_cast<uint64_t>(std::clamp(n_checkpoints, 0, 64) + 1);
  }

  bool empty() const { return floats_ == 0; }
  size_t floats() const { return floats_; }  // one copy of the whole state
  size_t bytes() const { return buf_.size() * sizeof(float); }

  // Layer il's live state (nullptr for a layer without one).
  float* layer(int64_t il) { return floats_ == 0 || size(il) == 0 ? nullptr : buf_.data() + offset_[static_cast<size_t>(il)]; }
  int64_t size(int64_t il) const {
    return static_cast<int64_t>(offset_[static_cast<size_t>(il) + 1] - offset_[static_cast<size_t>(il)]);
  }
  // The live state of every layer, contiguous (for save / load).
  std::span<float> live() { return {buf_.data(), floats_}; }
  std::span<const float> live() const { return {buf_.data(), floats_}; }

  // The zero state (no token seen); every checkpoint forgotten.
  void clear() {
    if (floats_ == 0) return;
    std::fill_n(buf_.data(), floats_, 0.0f);
    std::fill(pos_.begin(), pos_.end(), -1);
  }

  // Copies the live state into a slot as the state at position pos: the slot already holding
  // pos, else a free one, else the one with the lowest position (the least useful to a chat,
  // which returns to recent turns).
  void checkpoint(int64_t pos) {
    if (floats_ == 0 || pos_.empty() || pos <= 0) return;
    size_t slot = 0;
    for (size_t i = 0; i < pos_.size(); ++i) {
      if (pos_[i] == pos) {
        slot = i;
        break;
      }
      if (pos_[i] < pos_[slot]) slot = i;
    }
    std::memcpy(slot_data(slot), buf_.data(), floats_ * sizeof(float));
    pos_[slot] = pos;
  }

  // The longest prefix of at most n positions that restore() can return to.
  int64_t restorable(int64_t n) const {
    int64_t best = 0;
    for (int64_t p : pos_)
      if (p <= n && p > best) best = p;
    return best;
  }

  // Makes the live state the one at position pos (0: the zero state) and forgets the
  // checkpoints after it.
  Status restore(int64_t pos) {
    if (floats_ == 0) return {};
    if (pos == 0) {
      clear();
      return {};
    }
    for (size_t i = 0; i < pos_.size(); ++i)
      if (pos_[i] == pos) {
        std::memcpy(buf_.data(), slot_data(i), floats_ * sizeof(float));
        for (int64_t& p : pos_)
          if (p > pos) p = -1;
        return {};
      }
    return make_error(Errc::out_of_range, "recurrent state: no checkpoint at position " + std::to_string(pos));
  }

 private:
  float* slot_data(size_t i) { return buf_.data() + (i + 1) * floats_; }

  std::vector<uint64_t> offset_;  // n_layer + 1 offsets into one copy
  size_t floats_ = 0;
  AlignedBuffer<float> buf_;      // the live state, then one copy per checkpoint slot
  std::vector<int64_t> pos_;      // position of each slot's copy, -1 = free
};

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
