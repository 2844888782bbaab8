// tinyslm forward: the transformer forward pass for a batch of tokens.
//
// A Context holds everything one sequence needs besides the weights: the KV cache, the thread
// pool and every scratch buffer, all allocated once in create() from one ContextPlan (which
// memory_estimate also reads, so the estimate and the allocation cannot drift apart). eval()
// runs the tokens in chunks of at most n_batch: a chunk of many tokens multiplies each weight
// matrix once for all of them (GEMM, prefill); a single token is a matrix-vector product
// (GEMV, decode). The chunk runs named blocks chosen by the model's per-layer plan:
//
//   embed -> for each layer: attention_block, then ffn_block or moe_block -> output_head
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "conv.hpp"
#include "core.hpp"
#include "deltanet.hpp"
#include "kernels.hpp"
#include "kv.hpp"
#include "model.hpp"
#include "moe.hpp"
#include "ops.hpp"
#include "quant.hpp"
#include "state.hpp"
#include "threads.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

struct ContextParams {
  int64_t n_ctx = 2048;     // positions in the KV cache (allocated once)
  int n_threads = 1;        // 1 = no extra threads at all
  int64_t n_batch = 512;    // most tokens per forward chunk
  bool all_logits = false;  // keep the logits of every token of an eval (else only the last)
  KvType type_k = KvType::f16;  // KV cache element types (llama.cpp's -ctk / -ctv)
  KvType type_v = KvType::f16;
  int n_state_checkpoints = 4;  // hybrid models: copies of the recurrent state kept for prefix reuse
  ThreadPlacement placement = {};  // where the workers run (threads.hpp); default: anywhere
  int64_t verify_rows = 0;  // most tokens of an eval_all call (speculative verification); 0: none
};

// A gated attention layer's row: [q | k | v | gate | attn_q's raw [query | gate] per head].
inline int64_t gated_qkv_width(const LayerPlan& l) { return 4 * l.q_dim() + l.k_dim() + l.v_dim(); }

// Every buffer a Context allocates, sized from the hyper-parameters and the parameters alone.
struct ContextPlan {
  int64_t n_ctx = 0, n_batch = 0;
  int n_threads = 1;
  // Activation rows of one chunk (floats per token).
  int64_t w_embd = 0;       // residual stream, normed input, projection output
  int64_t w_qkv = 0;        // [q | k | v]
  int64_t w_att = 0;        // attention output
  int64_t w_ffn = 0;        // [gate | up]
  int64_t n_rot = 0;        // two RoPE tables (global, sliding) of n_rot values per token
  int64_t logit_rows = 1;
  int64_t n_vocab = 0;
  ops::AttentionShape attn;  // the widest attention of any layer
  int64_t mm_cols = 0;       // widest matmul input
  bool moe = false;
  MoeScratchSizes moe_sizes;
  uint64_t kv_bytes = 0;
  uint64_t state_bytes = 0;  // recurrent state of hybrid models and its checkpoints
  std::vector<int64_t> state_floats;  // per layer
  bool kv_f16 = true;  // both K and V f16: attention converts the prefix to f32 scratch
  int64_t dn_scratch = 0;    // DeltaNet chunked prefill, floats per thread

  static Expected<ContextPlan> make(const HParams& hp, int64_t n_vocab, const ContextParams& p) {
    if (p.n_ctx <= 0 || p.n_batch <= 0 || p.n_threads <= 0)
      return make_error(Errc::invalid_argument, "context: n_ctx, n_batch and n_threads must be positive");
    ContextPlan c;
    c.n_ctx = p.n_ctx;
    c.n_batch = std::min(p.n_batch, p.n_ctx);
    c.n_threads = p.n_threads;
    c.w_embd = hp.n_embd;
    c.attn = {hp.n_head, hp.n_head_kv, hp.head_dim_k, hp.head_dim_v, 1.0f, 0.0f, 0};
    for (const LayerPlan& l : hp.layers) {
      c.w_qkv = std::max(c.w_qkv, l.q_dim() + l.k_dim() + l.v_dim());
      c.w_att = std::max(c.w_att, l.attn_out_dim());
      c.w_ffn = std::max(c.w_ffn, 2 * l.n_ff);
      c.attn.n_head = std::max(c.attn.n_head, l.n_head);
      c.attn.n_head_kv = std::max(c.attn.n_head_kv, l.n_head_kv);
      c.attn.head_dim_k = std::max(c.attn.head_dim_k, l.head_dim_k);
      c.attn.head_dim_v = std::max(c.attn.head_dim_v, l.head_dim_v);
      if (l.kind == LayerKind::short_conv) {  // [b | c | x] in the QKV rows, y in the attention rows
        c.w_qkv = std::max(c.w_qkv, 3 * hp.n_embd);
        c.w_att = std::max(c.w_att, hp.n_embd);
      }
      if (l.kind == LayerKind::delta_net) {  // [mix | z | beta | alpha] rows, the convolved mix
        c.w_qkv = std::max(c.w_qkv, hp.delta_net.proj_width());
        c.w_att = std::max(c.w_att, hp.delta_net.channels());
        c.dn_scratch = delta_net_scratch_floats(hp.delta_net);
      }
      if (l.attn_gate) c.w_qkv = std::max(c.w_qkv, gated_qkv_width(l));
    }
    c.n_rot = hp.n_rot;
    c.logit_rows = p.all_logits ? c.n_batch : std::clamp<int64_t>(p.verify_rows, 1, c.n_batch);
    c.n_vocab = n_vocab;
    c.mm_cols = std::max({hp.n_embd, c.w_att, c.w_ffn / 2});
    c.moe = hp.moe.enabled();
    if (c.moe) c.moe_sizes = moe_scratch_sizes(hp.moe, hp.n_embd, c.n_batch, c.n_threads);
    if (auto st = kv_check_head_dim(p.type_k, hp.head_dim_k, "K"); !st) return st.error();
    if (auto st = kv_check_head_dim(p.type_v, hp.head_dim_v, "V"); !st) return st.error();
    const auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
    for (int64_t il = 0; il < hp.n_layer; ++il) c.state_floats.push_back(hp.state_floats(il));
    c.state_bytes = RecurrentState::bytes_for(c.state_floats, p.n_state_checkpoints);
    c.kv_bytes = u(hp.n_kv_layers()) * u(c.n_ctx) * u(hp.n_head_kv) *
                 u(kv_row_bytes(p.type_k, hp.head_dim_k) + kv_row_bytes(p.type_v, hp.head_dim_v));
    c.kv_f16 = p.type_k == KvType::f16 && p.type_v == KvType::f16;
    return c;
  }

  // Floats of the activation buffers: x, xn, proj (n_embd), qkv, att, ffn, RoPE tables.
  uint64_t activation_floats() const {
    return static_cast<uint64_t>(n_batch) * static_cast<uint64_t>(3 * w_embd + w_qkv + w_att + w_ffn + 2 * n_rot);
  }
  // Attention scratch as AttentionScratch::reserve sizes it.
  uint64_t attention_bytes() const {
    const uint64_t ctx16 = static_cast<uint64_t>((n_ctx + 15) / 16 * 16);
    const uint64_t hk = static_cast<uint64_t>(attn.head_dim_k), hv = static_cast<uint64_t>(attn.head_dim_v);
    const uint64_t row = static_cast<uint64_t>(ops::AttentionScratch::row_floats(attn, static_cast<int64_t>(ctx16), kv_f16));
    const uint64_t copies = kv_f16 ? static_cast<uint64_t>(attn.n_head_kv) * (hk + hv) * ctx16 + 64 : 0;
    return 4 * (copies + row * static_cast<uint64_t>(n_threads));
  }
  uint64_t moe_bytes() const {
    if (!moe) return 0;
    const MoeScratchSizes& z = moe_sizes;
    return 4 * static_cast<uint64_t>(z.floats() + z.ints()) + MatmulScratch::reserve_bytes(z.mm_rows, z.mm_cols) +
           static_cast<uint64_t>(z.thread_mm) * MatmulScratch::reserve_bytes(1, z.mm_cols);
  }
  // Everything besides the KV cache and the logits.
  uint64_t compute_bytes() const {
    return 4 * activation_floats() + attention_bytes() + MatmulScratch::reserve_bytes(n_batch, mm_cols) + moe_bytes() +
           4 * static_cast<uint64_t>(dn_scratch) * static_cast<uint64_t>(n_threads);
  }
  uint64_t logit_bytes() const { return 4 * static_cast<uint64_t>(logit_rows) * static_cast<uint64_t>(n_vocab); }
};

class Context {
 public:
  static Expected<Context> create(const Model& model, const ContextParams& params = {});

  Context() = default;  // empty: assign the result of create() before use
  Context(Context&&) = default;
  Context& operator=(Context&&) = default;

  // Runs `tokens` at positions n_past() .. n_past() + size - 1 and appends them to the cache.
  // Returns the logits (n_vocab floats) of the last token, valid until the next call.
  // Fails without changing the cache on an out-of-range token id or when the context is full.
  Expected<std::span<const float>> eval(std::span<const int32_t> tokens);
  // eval that keeps every token's logits (logits(i)) whatever all_logits says, for at most
  // max_eval_all() tokens: a speculative draft is verified in one forward.
  Expected<std::span<const float>> eval_all(std::span<const int32_t> tokens);
  int64_t max_eval_all() const { return plan_.logit_rows; }
  // Makes row i of the last eval the last logits, as if the eval had ended at token i (after
  // the cache was truncated past a rejected draft).
  void keep_logits(int64_t i) {
    if (i < 0 || i >= n_logits_) return;
    const size_t nv = static_cast<size_t>(hp().n_vocab);
    if (i > 0) std::memmove(logits_.data(), logits_.data() + static_cast<size_t>(i) * nv, nv * sizeof(float));
    n_logits_ = 1;
  }

  // With all_logits: the logits of token i of the last eval (which then had at most n_batch tokens).
  std::span<const float> logits(int64_t i) const {
    return {logits_.data() + i * hp().n_vocab, static_cast<size_t>(hp().n_vocab)};
  }
  std::span<const float> last_logits() const { return logits(n_logits_ - 1); }
  // The same logits, writable (for logit processors run before sampling).
  std::span<float> last_logits_mut() {
    return {logits_.data() + (n_logits_ - 1) * hp().n_vocab, static_cast<size_t>(hp().n_vocab)};
  }

  int64_t n_past() const { return kv_.size(); }
  int64_t n_ctx() const { return kv_.n_ctx(); }
  // Keeps the first n positions of the cache (a shared prefix) for the next eval. A hybrid
  // model's recurrent state returns to n only from a checkpoint (or n == n_past()).
  Status truncate(int64_t n) {
    if (!rs_.empty() && n != kv_.size()) {
      if (n < 0 || n > kv_.size()) return kv_.truncate(n);
      if (auto st = rs_.restore(n); !st) return st;
    }
    return kv_.truncate(n);
  }
  void reset() {
    kv_.clear();
    rs_.clear();
  }
  // The longest prefix of at most n cached positions truncate() can keep: n, except on a
  // hybrid model, whose state is restorable only at n_past() and at its checkpoints.
  int64_t restorable(int64_t n) const {
    if (rs_.empty() || n >= kv_.size()) return std::min(n, kv_.size());
    return rs_.restorable(n);
  }
  // Keeps a copy of the recurrent state at n_past() (nothing for a model without one).
  void checkpoint() { rs_.checkpoint(kv_.size()); }
  RecurrentState& state() { return rs_; }
  const RecurrentState& state() const { return rs_; }

  // The model this context runs (the context holds a share of it, so it stays loaded).
  const Model& model() const { return model_; }
  int n_threads() const { return pool_ ? pool_->size() : 0; }
  const ContextParams& params() const { return params_; }
  const ContextPlan& plan() const { return plan_; }
  KvCache& kv() { return kv_; }
  const KvCache& kv() const { return kv_; }

  // Mixture of experts: how often each expert of each layer was selected since creation or
  // the last reset_moe_stats(): one count per token and selected expert, so n tokens give
  // n * k per layer, except that without all_logits the last layer of a chunk runs (and
  // counts) only the chunk's last token. nullptr for a dense model.
  const MoeStats* moe_stats() const { return hp().moe.enabled() ? &moe_stats_ : nullptr; }
  void reset_moe_stats() { moe_stats_.reset(); }

 private:
  const HParams& hp() const { return model_.hparams(); }
  Status allocate();
  template <class Fn>
  void for_rows(int64_t rows, Fn&& fn);
  Status matmul_into(const Weight& w, const float* in, int64_t rows, float* out, int64_t ldy);
  Status forward_chunk(const int32_t* tokens, int64_t n, bool last_chunk, bool all_rows);
  // The named blocks of the forward pass (n tokens in the chunk; m rows go past attention).
  Status embed(const int32_t* tokens, int64_t n);
  void rope_tables(int64_t pos0, int64_t n);
  void qk_prepare(const LayerWeights& L, const LayerPlan& p, int64_t i, int64_t pos, int64_t ld);
  Status attention_block(int64_t il, int64_t n, int64_t r0, int64_t pos0);
  Status conv_block(int64_t il, int64_t n, int64_t r0);
  Status delta_net_block(int64_t il, int64_t n, int64_t r0);
  Status ffn_block(int64_t il, int64_t m);
  Status moe_block(int64_t il, int64_t m);
  void ffn_residual(const LayerWeights& L, int64_t m);
  Status output_head(int64_t rows);

  Model model_;
  ContextParams params_;
  ContextPlan plan_;
  ParallelFor par_;
  std::unique_ptr<ThreadPool> pool_;
  KvCache kv_;
  RecurrentState rs_;  // per-sequence state of short-convolution layers
  MatmulScratch mm_;
  ops::AttentionScratch attn_;
  MoeScratch moe_scratch_;
  MoeStats moe_stats_;

  // Activations of one chunk, [n_batch][width] each.
  AlignedBuffer<float> x_;      // residual stream, n_embd
  AlignedBuffer<float> xn_;     // normalised input of a block, n_embd
  AlignedBuffer<float> qkv_;    // [q | k | v] per token
  AlignedBuffer<float> att_;    // attention output, n_head * head_dim_v
  AlignedBuffer<float> proj_;   // output of attn_output / ffn_down, n_embd
  AlignedBuffer<float> ffn_;    // [gate | up] per token, 2 * n_ff
  AlignedBuffer<float> rope_;   // cos/sin per token: [n_batch][n_rot] global, then sliding
  AlignedBuffer<float> logits_; // [1 or n_batch][n_vocab]
  AlignedBuffer<float> dn_scratch_;  // DeltaNet chunked prefill, per thread
  int64_t n_logits_ = 0;
};

inline Expected<Context> Context::create(const Model& model, const ContextParams& params) {
  if (!model) return make_error(Errc::invalid_argument, "context: the model is not loaded");
  auto plan = ContextPlan::make(model.hparams(), model.hparams().n_vocab, params);
  if (!plan) return plan.error();
  Context c;
  c.model_ = model;
  c.params_ = params;
  c.params_.n_batch = plan->n_batch;
  c.plan_ = *plan;
  if (auto st = c.allocate(); !st) return st.error();
  return c;
}

// Allocates what the plan lists: the KV cache, the activations, the attention, matmul and
// MoE scratch.
inline Status Context::allocate() {
  const HParams& h = hp();
  const ContextPlan& p = plan_;
  pool_ = std::make_unique<ThreadPool>(p.n_threads, params_.placement);
  auto kv = KvCache::create(h, p.n_ctx, params_.type_k, params_.type_v);
  if (!kv) return kv.error();
  kv_ = std::move(*kv);
  auto rs = RecurrentState::create(p.state_floats, params_.n_state_checkpoints);
  if (!rs) return rs.error();
  rs_ = std::move(*rs);
  const auto sz = [](int64_t a, int64_t b) { return static_cast<size_t>(a * b); };
  const int64_t B = p.n_batch;
  const bool ok = x_.allocate(sz(B, p.w_embd)) && xn_.allocate(sz(B, p.w_embd)) && qkv_.allocate(sz(B, p.w_qkv)) &&
                  att_.allocate(sz(B, p.w_att)) && proj_.allocate(sz(B, p.w_embd)) &&
                  ffn_.allocate(sz(B, std::max<int64_t>(p.w_ffn, 1))) && rope_.allocate(sz(2 * B, p.n_rot)) &&
                  logits_.allocate(sz(p.logit_rows, p.n_vocab)) && attn_.reserve(p.attn, p.n_ctx, p.n_threads, p.kv_f16);
  if (!ok || (p.dn_scratch > 0 && !dn_scratch_.allocate(sz(p.dn_scratch, p.n_threads))))
    return make_error(Errc::out_of_memory, "context: cannot allocate the activation buffers");
  if (auto st = mm_.reserve(B, p.mm_cols); !st) return st;
  if (p.moe) {
    if (auto st = moe_scratch_.reserve(h.moe, h.n_embd, B, p.n_threads); !st) return st;
    moe_stats_.init(h.n_layer, h.moe.n_expert);
  }
  par_ = pool_->parallel();
  return {};
}

inline Expected<std::span<const float>> Context::eval(std::span<const int32_t> tokens) {
  if (!model_) return make_error(Errc::invalid_argument, "eval: the context was not created");
  const HParams& h = hp();
  if (tokens.empty()) return make_error(Errc::invalid_argument, "eval: no tokens");
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= h.n_vocab)
      return make_error(Errc::out_of_range, "eval: token id " + std::to_string(tokens[i]) +
                                                " at index " + std::to_string(i) +
                                                " is outside the vocabulary (" +
                                                std::to_string(h.n_vocab) + " tokens)");
  if (auto st = kv_.reserve_tokens(static_cast<int64_t>(tokens.size())); !st) return st.error();
  const int64_t B = params_.n_batch, n = static_cast<int64_t>(tokens.size());
  if (params_.all_logits && n > B)
    return make_error(Errc::invalid_argument, "eval: with all_logits at most n_batch (" +
                                                  std::to_string(B) + ") tokens per call");
  for (int64_t at = 0; at < n; at += B) {
    const int64_t m = std::min(B, n - at);
    if (auto st = forward_chunk(tokens.data() + at, m, at + m == n, params_.all_logits); !st) return st.error();
  }
  return last_logits();
}

inline Expected<std::span<const float>> Context::eval_all(std::span<const int32_t> tokens) {
  if (static_cast<int64_t>(tokens.size()) > max_eval_all())
    return make_error(Errc::invalid_argument, "eval_all: at most " + std::to_string(max_eval_all()) +
                                                  " tokens per call");
  if (params_.all_logits || tokens.empty()) return eval(tokens);
  if (!model_) return make_error(Errc::invalid_argument, "eval: the context was not created");
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= hp().n_vocab)
      return make_error(Errc::out_of_range, "eval_all: token id " + std::to_string(tokens[i]) +
                                                " is outside the vocabulary");
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (auto st = kv_.reserve_tokens(n); !st) return st.error();
  if (auto st = forward_chunk(tokens.data(), n, true, true); !st) return st.error();
  return last_logits();
}

// fn(i) for rows i in [0, rows), split over the threads; a few rows (decode) run inline,
// where a fork-join would cost more than the work.
template <class Fn>
inline void Context::for_rows(int64_t rows, Fn&& fn) {
  if (rows < 4) {
    for (int64_t i = 0; i < rows; ++i) fn(i);
    return;
  }
  par_([&](int t, int nt) {
    int64_t b, e;
    ParallelFor::split(rows, t, nt, 1, &b, &e);
    for (int64_t i = b; i < e; ++i) fn(i);
  });
}

inline Status Context::matmul_into(const Weight& w, const float* in, int64_t rows, float* out, int64_t ldy) {
  const MatmulOut o[1] = {{w.ref(), out, ldy, w.name}};
  return matmul_many(o, in, rows, mm_, par_);
}

// The forward pass of one chunk of n tokens at positions pos0 .. pos0 + n - 1.
inline Status Context::forward_chunk(const int32_t* tokens, int64_t n, bool last_chunk, bool all_rows) {
  const HParams& h = hp();
  const bool want_all = all_rows;
  const int64_t pos0 = kv_.size();
  // 1. Token embeddings and the RoPE angles of every position.
  if (auto st = embed(tokens, n); !st) return st;
  rope_tables(pos0, n);
  for (int64_t il = 0; il < h.n_layer; ++il) {
    // In the last layer only the rows whose logits are wanted go past attention.
    const bool trim = il == h.n_layer - 1 && !want_all;
    const int64_t r0 = trim ? n - 1 : 0, m = n - r0;
    // 2. Attention (norm, QKV, RoPE, cache, attention, output projection, residual), or
    //    the short convolution of a hybrid model.
    const LayerKind kind = h.layers[static_cast<size_t>(il)].kind;
    const bool conv = kind == LayerKind::short_conv;
    if (kind == LayerKind::delta_net) {
      if (auto st = delta_net_block(il, n, r0); !st) return st;
    } else if (auto st = conv ? conv_block(il, n, r0) : attention_block(il, n, r0, pos0); !st) {
      return st;
    }
    // 3. Feed-forward: dense or mixture of experts, then its residual.
    const bool moe = h.layers[static_cast<size_t>(il)].ffn == FfnKind::moe;
    if (auto st = moe ? moe_block(il, m) : ffn_block(il, m); !st) return st;
  }
  kv_.advance(n);
  // 4. Final norm and output head: only for the last token unless all logits are wanted.
  if (!last_chunk && !want_all) return {};
  return output_head(want_all ? n : 1);
}

// One dequantised embedding row per token, scaled by sqrt(n_embd) for gemma.
inline Status Context::embed(const int32_t* tokens, int64_t n) {
  const HParams& h = hp();
  const Weight& te = model_.weights().token_embd;
  const int64_t E = h.n_embd;
  float* x = x_.data();
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* row = te.data + static_cast<size_t>(tokens[i]) * te.row_bytes();
    if (auto st = dequantize_row(te.type, row, x + i * E, E); !st) return st;
    if (h.embed_scale != 1.0f) ops::scale(x + i * E, h.embed_scale, E);
  }
  return {};
}

// RoPE angles of each position: table 0 global, table 1 for sliding-window layers.
inline void Context::rope_tables(int64_t pos0, int64_t n) {
  const HParams& h = hp();
  float* global = rope_.data();
  float* sliding = rope_.data() + params_.n_batch * h.n_rot;
  const float* factors = h.rope_freq_factors.empty() ? nullptr : h.rope_freq_factors.data();
  for (int64_t i = 0; i < n; ++i) {
    ops::rope_angles(pos0 + i, h.n_rot, h.rope_base, h.rope_freq_scale, factors, global + i * h.n_rot);
    if (h.any_swa())
      ops::rope_angles(pos0 + i, h.n_rot, h.rope_base_swa, h.rope_freq_scale_swa, factors, sliding + i * h.n_rot);
    for (size_t r = 0; r < h.rope_pair_pos.size(); ++r)  // multi-section pairs rotated by position 0
      if (!h.rope_pair_pos[r]) {
        global[i * h.n_rot + 2 * static_cast<int64_t>(r)] = 1.0f;
        global[i * h.n_rot + 2 * static_cast<int64_t>(r) + 1] = 0.0f;
      }
  }
}

// Token i of the chunk: biases, QK-norm (per head or over the whole projection), RoPE, Q
// pre-scaling; then its K and V into the cache at position pos.
inline void Context::qk_prepare(const LayerWeights& L, const LayerPlan& p, int64_t i, int64_t pos, int64_t ld) {
  const HParams& h = hp();
  const int64_t Q = p.q_dim(), K = p.k_dim(), V = p.v_dim(), hk = p.head_dim_k;
  float* q = qkv_.data() + i * ld;
  float* k = q + Q;
  float* v = k + K;
  if (!L.bq.empty()) ops::add(q, L.bq.data(), Q);
  if (!L.bk.empty()) ops::add(k, L.bk.data(), K);
  if (!L.bv.empty()) ops::add(v, L.bv.data(), V);
  const bool whole = h.arch.qk_norm == QkNorm::whole;
  if (!L.q_norm.empty() && whole) ops::rms_norm(q, L.q_norm.data(), q, Q, h.rms_eps);
  else if (!L.q_norm.empty())
    for (int64_t hh = 0; hh < p.n_head; ++hh) ops::rms_norm(q + hh * hk, L.q_norm.data(), q + hh * hk, hk, h.rms_eps);
  if (!L.k_norm.empty() && whole) ops::rms_norm(k, L.k_norm.data(), k, K, h.rms_eps);
  else if (!L.k_norm.empty())
    for (int64_t hh = 0; hh < p.n_head_kv; ++hh) ops::rms_norm(k + hh * hk, L.k_norm.data(), k + hh * hk, hk, h.rms_eps);
  if (p.rope) {
    const auto layout = h.arch.rope == RopeStyle::neox ? ops::RopeLayout::neox : ops::RopeLayout::normal;
    const float* cs = rope_.data() + (p.rope_table * params_.n_batch + i) * h.n_rot;
    ops::rope_apply(q, p.n_head, hk, h.n_rot, cs, layout);
    ops::rope_apply(k, p.n_head_kv, hk, h.n_rot, cs, layout);
  }
  if (h.arch.scale_q) ops::scale(q, h.attn_scale, Q);
  kv_.store(p.kv_layer, pos, k, v);
}

// Attention norm, Q/K/V, causal attention over the cache (sliding window on SWA layers),
// output projection, optional post-norm and the residual; rows r0.. go on (the last layer
// keeps only the last row), moved to the front of the residual stream.
inline Status Context::attention_block(int64_t il, int64_t n, int64_t r0, int64_t pos0) {
  const HParams& h = hp();
  const LayerWeights& L = model_.weights().layers[static_cast<size_t>(il)];
  const LayerPlan& p = h.layers[static_cast<size_t>(il)];
  const int64_t E = h.n_embd, Q = p.q_dim(), K = p.k_dim(), A = p.attn_out_dim();
  const int64_t QKV = p.attn_gate ? gated_qkv_width(p) : Q + K + p.v_dim(), G = Q + K + p.v_dim();
  float* x = x_.data();
  float* xn = xn_.data();
  float* qkv = qkv_.data();
  for_rows(n, [&](int64_t i) { ops::rms_norm(x + i * E, L.attn_norm.data(), xn + i * E, E, h.rms_eps); });
  if (p.attn_gate) {  // attn_q into the raw tail of each row, then split into q and the gate
    const MatmulOut outs[3] = {{L.wq.ref(), qkv + G + Q, QKV, L.wq.name},
                               {L.wk.ref(), qkv + Q, QKV, L.wk.name},
                               {L.wv.ref(), qkv + Q + K, QKV, L.wv.name}};
    if (auto st = matmul_many(outs, xn, n, mm_, par_); !st) return st;
    for_rows(n, [&](int64_t i) { split_query_gate(qkv + i * QKV + G + Q, p.n_head, p.head_dim_k, qkv + i * QKV, qkv + i * QKV + G); });
  } else if (L.wqkv) {
    if (auto st = matmul_into(L.wqkv, xn, n, qkv, QKV); !st) return st;
  } else {
    const MatmulOut outs[3] = {{L.wq.ref(), qkv, QKV, L.wq.name},
                               {L.wk.ref(), qkv + Q, QKV, L.wk.name},
                               {L.wv.ref(), qkv + Q + K, QKV, L.wv.name}};
    if (auto st = matmul_many(outs, xn, n, mm_, par_); !st) return st;
  }
  for_rows(n, [&](int64_t i) { qk_prepare(L, p, i, pos0 + i, QKV); });
  const ops::AttentionShape shape{p.n_head, p.n_head_kv, p.head_dim_k, p.head_dim_v,
                                  h.arch.scale_q ? 1.0f : h.attn_scale, h.attn_softcap, p.sliding ? h.n_swa : 0};
  const int64_t m = n - r0;
  if (plan_.kv_f16)
    ops::attention(shape, qkv + r0 * QKV, QKV, m, pos0 + r0, kv_.k_layer(p.kv_layer), kv_.v_layer(p.kv_layer),
                   kv_.n_ctx(), att_.data(), A, attn_, par_);
  else
    ops::attention_quant(shape, qkv + r0 * QKV, QKV, m, pos0 + r0, kv_.k_rows(p.kv_layer), kv_.v_rows(p.kv_layer),
                         kv_.n_ctx(), att_.data(), A, attn_, par_);
  if (p.attn_gate)
    for_rows(m, [&](int64_t i) { apply_output_gate(att_.data() + i * A, qkv + (r0 + i) * QKV + G, A); });
  float* proj = proj_.data();
  if (auto st = matmul_into(L.wo, att_.data(), m, proj, E); !st) return st;
  if (r0 > 0) std::memmove(x, x + r0 * E, static_cast<size_t>(E) * sizeof(float));
  for_rows(m, [&](int64_t i) {
    float* pr = proj + i * E;
    if (!L.bo.empty()) ops::add(pr, L.bo.data(), E);
    if (!L.post_attn_norm.empty()) ops::rms_norm(pr, L.post_attn_norm.data(), pr, E, h.rms_eps);
    ops::add(x + i * E, pr, E);
    ops::rms_norm(x + i * E, L.ffn_norm.data(), xn + i * E, E, h.rms_eps);
  });
  return {};
}

// Norm, in_proj, the gated causal convolution over every row (the state must see them all),
// out_proj on rows r0.., residual and the FFN norm, as attention_block ends.
inline Status Context::conv_block(int64_t il, int64_t n, int64_t r0) {
  const HParams& h = hp();
  const LayerWeights& L = model_.weights().layers[static_cast<size_t>(il)];
  const int64_t E = h.n_embd, m = n - r0;
  float* x = x_.data();
  float* xn = xn_.data();
  float* bcx = qkv_.data();
  for_rows(n, [&](int64_t i) { ops::rms_norm(x + i * E, L.attn_norm.data(), xn + i * E, E, h.rms_eps); });
  if (auto st = matmul_into(L.conv_in, xn, n, bcx, 3 * E); !st) return st;
  short_conv(bcx, 3 * E, n, E, h.conv_kernel, L.conv_kernel.data(), rs_.layer(il), att_.data(), E, par_);
  float* proj = proj_.data();
  if (auto st = matmul_into(L.conv_out, att_.data() + r0 * E, m, proj, E); !st) return st;
  if (r0 > 0) std::memmove(x, x + r0 * E, static_cast<size_t>(E) * sizeof(float));
  for_rows(m, [&](int64_t i) {
    ops::add(x + i * E, proj + i * E, E);
    ops::rms_norm(x + i * E, L.ffn_norm.data(), xn + i * E, E, h.rms_eps);
  });
  return {};
}

// Norm; the [mix | z | beta | alpha] projections; convolution + SiLU of the mix over every
// row (the state must see them all); gates; the delta rule per V head over the rows in order;
// the gated norm and ssm_out on rows r0..; residual and the FFN norm, as attention_block ends.
inline Status Context::delta_net_block(int64_t il, int64_t n, int64_t r0) {
  const HParams& h = hp();
  const LayerWeights& L = model_.weights().layers[static_cast<size_t>(il)];
  const DeltaNetShape& s = h.delta_net;
  const int64_t E = h.n_embd, C = s.channels(), V = s.value_dim(), W = s.proj_width(), m = n - r0;
  float* x = x_.data();
  float* xn = xn_.data();
  float* proj_in = qkv_.data();
  float* mix = att_.data();  // convolved [q | k | v] rows of C; v becomes the output
  for_rows(n, [&](int64_t i) { ops::rms_norm(x + i * E, L.attn_norm.data(), xn + i * E, E, h.rms_eps); });
  const MatmulOut outs[4] = {{L.ssm_qkv.ref(), proj_in, W, L.ssm_qkv.name},
                             {L.ssm_gate.ref(), proj_in + C, W, L.ssm_gate.name},
                             {L.ssm_beta.ref(), proj_in + C + V, W, L.ssm_beta.name},
                             {L.ssm_alpha.ref(), proj_in + C + V + s.n_v_heads, W, L.ssm_alpha.name}};
  if (auto st = matmul_many(outs, xn, n, mm_, par_); !st) return st;
  float* state = rs_.layer(il);
  delta_net_conv(s, proj_in, W, n, L.ssm_conv.data(), state, mix, C, par_);
  for_rows(n, [&](int64_t i) {
    delta_net_prepare(s, mix + i * C, proj_in + i * W + C + V, L.ssm_dt_bias.data(), L.ssm_a.data(), h.rms_eps);
  });
  float* S = state + s.conv_state_floats();
  const int64_t dd = s.d_state * s.d_state;
  if (n < kDeltaNetChunkMin) {  // decode: one token at a time
    for_rows(s.n_v_heads, [&](int64_t hv) { delta_net_recurrence(s, hv, mix, C, proj_in + C + V, W, n, S + hv * dd); });
  } else {  // prefill: chunks of tokens with matrix products, the heads split over the threads
    par_([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(s.n_v_heads, t, nt, 1, &b, &e);
      float* scratch = dn_scratch_.data() + t * plan_.dn_scratch;
      for (int64_t hv = b; hv < e; ++hv) delta_net_chunked(s, hv, mix, C, proj_in + C + V, W, n, S + hv * dd, scratch);
    });
  }
  // Rows r0..: the gated norm, compacted into dense rows of V (increasing order: a row never
  // lands on an unread one, since V <= C).
  for (int64_t i = 0; i < m; ++i) {
    const float* o = mix + (r0 + i) * C + 2 * s.key_dim();
    delta_net_gated_norm(s, o, L.ssm_norm.data(), proj_in + (r0 + i) * W + C, mix + i * V, h.rms_eps);
  }
  float* proj = proj_.data();
  if (auto st = matmul_into(L.ssm_out, mix, m, proj, E); !st) return st;
  if (r0 > 0) std::memmove(x, x + r0 * E, static_cast<size_t>(E) * sizeof(float));
  for_rows(m, [&](int64_t i) {
    ops::add(x + i * E, proj + i * E, E);
    ops::rms_norm(x + i * E, L.ffn_norm.data(), xn + i * E, E, h.rms_eps);
  });
  return {};
}

// The dense FFN of m rows of xn: [gate | up] GEMM(s), gated activation, down projection.
inline Status Context::ffn_block(int64_t il, int64_t m) {
  const HParams& h = hp();
  const LayerWeights& L = model_.weights().layers[static_cast<size_t>(il)];
  const int64_t F = h.layers[static_cast<size_t>(il)].n_ff;
  float* ffn = ffn_.data();
  if (L.ffn_gate) {
    const MatmulOut outs[2] = {{L.ffn_gate.ref(), ffn, 2 * F, L.ffn_gate.name},
                               {L.ffn_up.ref(), ffn + F, 2 * F, L.ffn_up.name}};
    if (auto st = matmul_many(outs, xn_.data(), m, mm_, par_); !st) return st;
  } else if (auto st = matmul_into(L.ffn_up, xn_.data(), m, ffn, 2 * F); !st) {  // fused [gate; up]
    return st;
  }
  const bool gelu = h.arch.activation == FfnActivation::gelu_tanh;
  for_rows(m, [&](int64_t i) {
    float* g = ffn + i * 2 * F;
    if (gelu) ops::gelu_mul(g, g + F, g, F);
    else ops::silu_mul(g, g + F, g, F);
  });
  // The activations sit in the gate half of each row; compact them into dense rows for the
  // down projection (in increasing row order, so no row overwrites an unread one).
  for (int64_t i = 1; i < m; ++i) std::memmove(ffn + i * F, ffn + i * 2 * F, static_cast<size_t>(F) * sizeof(float));
  if (auto st = matmul_into(L.ffn_down, ffn, m, proj_.data(), h.n_embd); !st) return st;
  ffn_residual(L, m);
  return {};
}

// The MoE step (router, the chosen experts, their weighted sum) in the dense FFN's place.
inline Status Context::moe_block(int64_t il, int64_t m) {
  const LayerWeights& L = model_.weights().layers[static_cast<size_t>(il)];
  if (auto st = moe_ffn(hp().moe, L.experts, xn_.data(), m, proj_.data(), moe_scratch_, par_, &moe_stats_, il); !st)
    return Error(st.error()).context("layer " + std::to_string(il));
  ffn_residual(L, m);
  return {};
}

// Optional post-FFN norm, then the residual add.
inline void Context::ffn_residual(const LayerWeights& L, int64_t m) {
  const HParams& h = hp();
  const int64_t E = h.n_embd;
  float* x = x_.data();
  float* proj = proj_.data();
  for_rows(m, [&](int64_t i) {
    float* pr = proj + i * E;
    if (!L.post_ffn_norm.empty()) ops::rms_norm(pr, L.post_ffn_norm.data(), pr, E, h.rms_eps);
    ops::add(x + i * E, pr, E);
  });
}

// Final norm of `rows` residual rows (after the trimmed last layer, row 0 is the last token),
// output head, bias and soft-cap.
inline Status Context::output_head(int64_t rows) {
  const HParams& h = hp();
  const ModelWeights& w = model_.weights();
  const int64_t E = h.n_embd;
  for (int64_t i = 0; i < rows; ++i) ops::rms_norm(x_.data() + i * E, w.output_norm.data(), xn_.data() + i * E, E, h.rms_eps);
  if (auto st = matmul_into(w.output, xn_.data(), rows, logits_.data(), h.n_vocab); !st) return st;
  for_rows(rows, [&](int64_t i) {
    float* lg = logits_.data() + i * h.n_vocab;
    if (!w.output_bias.empty()) ops::add(lg, w.output_bias.data(), h.n_vocab);
    if (h.final_softcap > 0.0f) ops::soft_cap(lg, h.n_vocab, h.final_softcap);
  });
  n_logits_ = rows;
  return {};
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
