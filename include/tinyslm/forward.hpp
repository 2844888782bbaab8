// tinyslm forward: the transformer forward pass for a batch of tokens.
//
// A Context holds everything one sequence needs besides the weights: the KV cache, the thread
// pool and every scratch buffer, all allocated once in create(). eval() runs the tokens in
// chunks of at most n_batch: a chunk of many tokens multiplies each weight matrix once for all
// of them (GEMM, prefill); a single token is a matrix-vector product (GEMV, decode).
#pragma once

#include <algorithm>
#include <atomic>
#include <initializer_list>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "core.hpp"
#include "kernels.hpp"
#include "kv.hpp"
#include "model.hpp"
#include "moe.hpp"
#include "ops.hpp"
#include "quant.hpp"
#include "threads.hpp"

namespace tinyslm {
inline namespace v0 {

struct ContextParams {
  int64_t n_ctx = 2048;     // positions in the KV cache (allocated once, F16)
  int n_threads = 1;        // 1 = no extra threads at all
  int64_t n_batch = 512;    // most tokens per forward chunk
  bool all_logits = false;  // keep the logits of every token of an eval (else only the last)
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

  // With all_logits: the logits of token i of the last eval (which then had at most n_batch tokens).
  std::span<const float> logits(int64_t i) const {
    return {logits_.data() + i * hp().n_vocab, static_cast<size_t>(hp().n_vocab)};
  }
  std::span<const float> last_logits() const { return logits(n_logits_ - 1); }

  int64_t n_past() const { return kv_.size(); }
  int64_t n_ctx() const { return kv_.n_ctx(); }
  // Keeps the first n positions of the cache (a shared prefix) for the next eval.
  Status truncate(int64_t n) { return kv_.truncate(n); }
  void reset() { kv_.clear(); }

  const Model& model() const { return *model_; }
  int n_threads() const { return pool_ ? pool_->size() : 0; }
  const ContextParams& params() const { return params_; }
  KvCache& kv() { return kv_; }
  const KvCache& kv() const { return kv_; }

  // Mixture of experts: how often each expert of each layer was selected since creation or
  // the last reset_moe_stats(): one count per token and selected expert, so n tokens give
  // n * k per layer, except that without all_logits the last layer of a chunk runs (and
  // counts) only the chunk's last token. nullptr for a dense model.
  const MoeStats* moe_stats() const { return moe_.enabled() ? &moe_stats_ : nullptr; }
  void reset_moe_stats() { moe_stats_.reset(); }

 private:
  const HParams& hp() const { return model_->hparams(); }
  Status forward_chunk(const int32_t* tokens, int64_t n, bool last_chunk);

  const Model* model_ = nullptr;
  ContextParams params_;
  std::unique_ptr<ThreadPool> pool_;
  KvCache kv_;
  MatmulScratch mm_;
  std::vector<MatmulScratch> thread_mm_;  // decode: one per thread (see mm_rows below)
  ops::AttentionScratch attn_;
  // Mixture of experts (n_expert > 0): the routing configuration, each layer's experts
  // (pointers into the mapped file) and the MoE step's buffers.
  MoeConfig moe_;
  std::vector<MoeLayerWeights> moe_layers_;
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
  int64_t n_logits_ = 0;
};

inline Expected<Context> Context::create(const Model& model, const ContextParams& params) {
  const HParams& hp = model.hparams();
  Context c;
  c.model_ = &model;
  c.params_ = params;
  if (params.n_ctx <= 0 || params.n_batch <= 0 || params.n_threads <= 0)
    return make_error(Errc::invalid_argument, "context: n_ctx, n_batch and n_threads must be positive");
  c.params_.n_batch = std::min(params.n_batch, params.n_ctx);
  const int64_t B = c.params_.n_batch;
  c.pool_ = std::make_unique<ThreadPool>(params.n_threads);

  auto kv = KvCache::create(hp, params.n_ctx);
  if (!kv) return kv.error();
  c.kv_ = std::move(*kv);

  const int64_t E = hp.n_embd, QKV = hp.q_dim() + hp.k_dim() + hp.v_dim();
  const int64_t A = hp.n_head * hp.head_dim_v, F = hp.n_ff;
  const int64_t max_cols = std::max({E, A, F});
  ops::AttentionShape shape{hp.n_head, hp.n_head_kv, hp.head_dim_k, hp.head_dim_v, 1.0f, 0.0f, 0};
  const auto sz = [](int64_t a, int64_t b) { return static_cast<size_t>(a * b); };
  bool ok = c.x_.allocate(sz(B, E)) && c.xn_.allocate(sz(B, E)) && c.qkv_.allocate(sz(B, QKV)) &&
            c.att_.allocate(sz(B, A)) && c.proj_.allocate(sz(B, E)) &&
            c.ffn_.allocate(sz(B, 2 * F)) && c.rope_.allocate(sz(2 * B, hp.n_rot)) &&
            c.logits_.allocate(sz(params.all_logits ? B : 1, hp.n_vocab)) &&
            c.attn_.reserve(shape, params.n_ctx, params.n_threads);
  if (!ok) return make_error(Errc::out_of_memory, "context: cannot allocate the activation buffers");
  auto st = c.mm_.reserve(B, max_cols);
  if (!st) return st.error();
  c.thread_mm_ = std::vector<MatmulScratch>(static_cast<size_t>(params.n_threads));
  for (auto& t : c.thread_mm_)
    if (auto ts = t.reserve(1, max_cols); !ts) return ts.error();
  if (hp.n_expert > 0) {
    auto cfg = read_moe_config(model.gguf());
    if (!cfg) return cfg.error();
    c.moe_ = *cfg;
    for (int64_t il = 0; il < hp.n_layer; ++il) {
      auto lw = bind_moe_layer(model.gguf(), c.moe_, il, E);
      if (!lw) return lw.error();
      c.moe_layers_.push_back(std::move(*lw));
    }
    if (auto ms = c.moe_scratch_.reserve(c.moe_, E, B, params.n_threads); !ms) return ms.error();
    c.moe_stats_.init(hp.n_layer, c.moe_.n_expert);
  }
  return c;
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
    if (auto st = forward_chunk(tokens.data() + at, m, at + m == n); !st) return st.error();
  }
  return last_logits();
}

// The forward pass of one chunk of n tokens at positions pos0 .. pos0 + n - 1.
inline Status Context::forward_chunk(const int32_t* tokens, int64_t n, bool last_chunk) {
  const HParams& h = hp();
  const ModelWeights& w = model_->weights();
  const ArchInfo& arch = h.arch;
  const ParallelFor par = pool_->parallel();
  const int64_t pos0 = kv_.size();
  const int64_t E = h.n_embd, Q = h.q_dim(), K = h.k_dim(), V = h.v_dim(), F = h.n_ff;
  const int64_t QKV = Q + K + V, A = h.n_head * h.head_dim_v;
  const int64_t hk = h.head_dim_k;
  const bool want_all = params_.all_logits;
  const auto rope_layout = arch.rope == RopeStyle::neox ? ops::RopeLayout::neox : ops::RopeLayout::normal;
  float* x = x_.data();
  float* xn = xn_.data();
  float* qkv = qkv_.data();
  float* att = att_.data();
  float* proj = proj_.data();
  float* ffn = ffn_.data();

  // Rows [r0, r0 + rows) of a buffer of `width` values per token, split over the threads.
  auto for_rows = [&](int64_t r0, int64_t rows, auto&& fn) {
    if (rows < 4) {  // decode: a fork-join costs more than this row's work
      for (int64_t i = r0; i < r0 + rows; ++i) fn(i);
      return;
    }
    par([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(rows, t, nt, 1, &b, &e);
      for (int64_t i = r0 + b; i < r0 + e; ++i) fn(i);
    });
  };
  // y = W x for `rows` tokens. Several matrices with the same input (Q, K, V; gate, up) go
  // together: in decode (one token, several threads) every thread multiplies its share of
  // each matrix's rows in one fork-join, instead of two fork-joins per matrix. A row's dot
  // product is the same whichever thread computes it, so results do not depend on the split.
  struct Out {
    const Weight* w;
    float* y;
  };
  auto mm_group = [&](std::initializer_list<Out> outs, const float* in, int64_t rows, int64_t ldy) -> Status {
    if (rows > 1 || par.n_threads <= 1) {
      for (const Out& o : outs) {
        const MatrixRef ref{o.w->type, o.w->data, o.w->rows, o.w->cols};
        auto st = matmul(ref, in, rows, o.y, ldy, mm_, par);
        if (!st) return Error(st.error()).context(std::string(o.w->name));
      }
      return {};
    }
    std::atomic<int> failed{-1};
    par([&](int t, int nt) {
      int k = 0;
      for (const Out& o : outs) {
        int64_t b, e;
        ParallelFor::split(o.w->rows, t, nt, kMatmulRowGrain, &b, &e);
        if (b < e) {
          const MatrixRef ref{o.w->type, o.w->data + static_cast<size_t>(b) * o.w->row_bytes(), e - b, o.w->cols};
          int expected = -1;
          if (!matmul(ref, in, 1, o.y + b, ldy, thread_mm_[static_cast<size_t>(t)], ParallelFor{}))
            failed.compare_exchange_strong(expected, k);
        }
        ++k;
      }
    });
    if (failed.load() >= 0) {
      // Redo the failing product on one thread for its error message.
      const Out& o = *(outs.begin() + failed.load());
      const MatrixRef ref{o.w->type, o.w->data, o.w->rows, o.w->cols};
      auto st = matmul(ref, in, rows, o.y, ldy, mm_, ParallelFor{});
      if (!st) return Error(st.error()).context(std::string(o.w->name));
    }
    return {};
  };
  auto mm = [&](const Weight& wt, const float* in, int64_t rows, float* out, int64_t ldy) -> Status {
    return mm_group({Out{&wt, out}}, in, rows, ldy);
  };

  // 1. Token embeddings (one dequantised row each), scaled by sqrt(n_embd) for gemma.
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* row = w.token_embd.data + static_cast<size_t>(tokens[i]) * w.token_embd.row_bytes();
    auto st = dequantize_row(w.token_embd.type, row, x + i * E, E);
    if (!st) return st;
    if (h.embed_scale != 1.0f) ops::scale(x + i * E, h.embed_scale, E);
  }

  // RoPE angles of each position, for global and (when different) sliding-window layers.
  float* cs_global = rope_.data();
  float* cs_swa = rope_.data() + params_.n_batch * h.n_rot;
  const float* freq_factors = h.rope_freq_factors.empty() ? nullptr : h.rope_freq_factors.data();
  const bool any_swa = !h.layer_swa.empty();
  for (int64_t i = 0; i < n; ++i) {
    ops::rope_angles(pos0 + i, h.n_rot, h.rope_base, h.rope_freq_scale, freq_factors, cs_global + i * h.n_rot);
    if (any_swa)
      ops::rope_angles(pos0 + i, h.n_rot, h.rope_base_swa, h.rope_freq_scale_swa, freq_factors, cs_swa + i * h.n_rot);
  }

  for (int64_t il = 0; il < h.n_layer; ++il) {
    const LayerWeights& L = w.layers[static_cast<size_t>(il)];
    const bool swa = h.is_swa(il);
    // In the last layer only the rows whose logits are wanted go past attention.
    const bool trim = il == h.n_layer - 1 && !want_all;
    const int64_t r0 = trim ? n - 1 : 0, m = n - r0;

    // 2. Attention norm.
    for_rows(0, n, [&](int64_t i) { ops::rms_norm(x + i * E, L.attn_norm.data(), xn + i * E, E, h.rms_eps); });

    // 3. Q, K, V projections into [q | k | v] rows (one GEMM each, or one fused).
    if (L.wqkv) {
      if (auto st = mm(L.wqkv, xn, n, qkv, QKV); !st) return st;
    } else {
      if (auto st = mm_group({Out{&L.wq, qkv}, Out{&L.wk, qkv + Q}, Out{&L.wv, qkv + Q + K}}, xn, n, QKV); !st)
        return st;
    }

    // 4. Biases, per-head QK-norm, RoPE, Q pre-scaling; then K and V into the cache.
    const float* cs = swa ? cs_swa : cs_global;
    for_rows(0, n, [&](int64_t i) {
      float* q = qkv + i * QKV;
      float* k = q + Q;
      float* v = k + K;
      if (!L.bq.empty()) ops::add(q, L.bq.data(), Q);
      if (!L.bk.empty()) ops::add(k, L.bk.data(), K);
      if (!L.bv.empty()) ops::add(v, L.bv.data(), V);
      // QK-norm per head, or over the whole projection (olmoe: the weight spans all heads).
      if (static_cast<int64_t>(L.q_norm.size()) == Q && Q != hk) ops::rms_norm(q, L.q_norm.data(), q, Q, h.rms_eps);
      else if (!L.q_norm.empty())
        for (int64_t hh = 0; hh < h.n_head; ++hh) ops::rms_norm(q + hh * hk, L.q_norm.data(), q + hh * hk, hk, h.rms_eps);
      if (static_cast<int64_t>(L.k_norm.size()) == K && K != hk) ops::rms_norm(k, L.k_norm.data(), k, K, h.rms_eps);
      else if (!L.k_norm.empty())
        for (int64_t hh = 0; hh < h.n_head_kv; ++hh) ops::rms_norm(k + hh * hk, L.k_norm.data(), k + hh * hk, hk, h.rms_eps);
      ops::rope_apply(q, h.n_head, hk, h.n_rot, cs + i * h.n_rot, rope_layout);
      ops::rope_apply(k, h.n_head_kv, hk, h.n_rot, cs + i * h.n_rot, rope_layout);
      if (arch.scale_q) ops::scale(q, h.attn_scale, Q);
      kv_.store(il, pos0 + i, k, v);
    });

    // 5. Causal attention over the cache (sliding window on SWA layers).
    ops::AttentionShape shape{h.n_head, h.n_head_kv, hk, h.head_dim_v,
                              arch.scale_q ? 1.0f : h.attn_scale, h.attn_softcap, swa ? h.n_swa : 0};
    ops::attention(shape, qkv + r0 * QKV, QKV, m, pos0 + r0, kv_.k_layer(il), kv_.v_layer(il),
                   kv_.n_ctx(), att, A, attn_, par);

    // 6. Output projection, optional post-norm, residual.
    if (auto st = mm(L.wo, att, m, proj, E); !st) return st;
    if (trim) std::memmove(x, x + r0 * E, static_cast<size_t>(E) * sizeof(float));
    for_rows(0, m, [&](int64_t i) {
      float* p = proj + i * E;
      if (!L.bo.empty()) ops::add(p, L.bo.data(), E);
      if (!L.post_attn_norm.empty()) ops::rms_norm(p, L.post_attn_norm.data(), p, E, h.rms_eps);
      ops::add(x + i * E, p, E);
      ops::rms_norm(x + i * E, L.ffn_norm.data(), xn + i * E, E, h.rms_eps);
    });

    // 7. Feed-forward: the MoE step (router, the chosen experts, their weighted sum), or the
    //    dense [gate | up] GEMM(s), gated activation and down projection.
    if (L.moe) {
      if (auto st = moe_ffn(moe_, moe_layers_[static_cast<size_t>(il)], xn, m, proj, moe_scratch_, par, &moe_stats_, il);
          !st)
        return Error(st.error()).context("layer " + std::to_string(il));
    } else {
      if (L.ffn_gate) {
        if (auto st = mm_group({Out{&L.ffn_gate, ffn}, Out{&L.ffn_up, ffn + F}}, xn, m, 2 * F); !st) return st;
      } else {
        if (auto st = mm(L.ffn_up, xn, m, ffn, 2 * F); !st) return st;  // fused [gate; up]
      }
      for_rows(0, m, [&](int64_t i) {
        float* g = ffn + i * 2 * F;
        if (arch.activation == FfnActivation::gelu_tanh) ops::gelu_mul(g, g + F, g, F);
        else ops::silu_mul(g, g + F, g, F);
      });
      // The activations sit in the gate half of each row; compact them into dense rows for
      // the down projection (in increasing row order, so no row overwrites an unread one).
      for (int64_t i = 1; i < m; ++i)
        std::memmove(ffn + i * F, ffn + i * 2 * F, static_cast<size_t>(F) * sizeof(float));
      if (auto st = mm(L.ffn_down, ffn, m, proj, E); !st) return st;
    }
    for_rows(0, m, [&](int64_t i) {
      float* p = proj + i * E;
      if (!L.post_ffn_norm.empty()) ops::rms_norm(p, L.post_ffn_norm.data(), p, E, h.rms_eps);
      ops::add(x + i * E, p, E);
    });
  }

  // 8. Final norm and output head: only for the last token unless all logits are wanted.
  kv_.advance(n);
  if (!last_chunk && !want_all) return {};
  const int64_t rows = want_all ? n : 1;
  const float* src = x;  // after the trimmed last layer, row 0 is the last token
  for (int64_t i = 0; i < rows; ++i) ops::rms_norm(src + i * E, w.output_norm.data(), xn + i * E, E, h.rms_eps);
  if (auto st = mm(w.output, xn, rows, logits_.data(), h.n_vocab); !st) return st;
  for_rows(0, rows, [&](int64_t i) {
    float* lg = logits_.data() + i * h.n_vocab;
    if (!w.output_bias.empty()) ops::add(lg, w.output_bias.data(), h.n_vocab);
    if (h.final_softcap > 0.0f) ops::soft_cap(lg, h.n_vocab, h.final_softcap);
  });
  n_logits_ = rows;
  return {};
}

}  // namespace v0
}  // namespace tinyslm
