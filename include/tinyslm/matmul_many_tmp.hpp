// TEMPORARY stand-in for kernels.hpp's matmul_many (being written on another branch).
#pragma once
#include <span>
#include <string_view>
#include "kernels.hpp"
#include "threads.hpp"
namespace tinyslm {
inline namespace v0 {
struct MatmulOut { MatrixRef w; float* y; int64_t ldy; std::string_view name = {}; };
inline Status matmul_many(std::span<const MatmulOut> outs, const float* x, int64_t n, MatmulScratch& s,
                          ParallelFor par) {
  if (outs.empty() || n == 0) return {};
  auto ctx = [](const MatmulOut& o, Status st) -> Status {
    if (!st && !o.name.empty()) return Error(st.error()).context(std::string(o.name));
    return st;
  };
  bool same = true;
  for (const auto& o : outs) same = same && activation_type_for(o.w.type) == activation_type_for(outs[0].w.type);
  if (n == 1 && par.n_threads > 1 && same) {
    if (auto st = quantize_activations(outs[0].w.type, x, 1, outs[0].w.cols, s, ParallelFor{}); !st)
      return ctx(outs[0], st);
    for (const auto& o : outs)
      if (o.w.cols != outs[0].w.cols) return ctx(o, make_error(Errc::invalid_argument, "matmul_many: cols differ"));
    std::atomic<int> failed{-1};
    par([&](int t, int nt) {
      for (size_t k = 0; k < outs.size(); ++k) {
        const MatmulOut& o = outs[k];
        int64_t b, e;
        ParallelFor::split(o.w.rows, t, nt, kMatmulRowGrain, &b, &e);
        if (b >= e) continue;
        uint64_t rb = 0;
        tensor_row_bytes(o.w.type, static_cast<uint64_t>(o.w.cols), &rb);
        const MatrixRef ref{o.w.type, o.w.data + static_cast<size_t>(b) * rb, e - b, o.w.cols};
        int expected = -1;
        if (!matmul_quantized(ref, 1, o.y + b, o.ldy, s, ParallelFor{}))
          failed.compare_exchange_strong(expected, static_cast<int>(k));
      }
    });
    if (failed.load() >= 0) {
      const MatmulOut& o = outs[static_cast<size_t>(failed.load())];
      return ctx(o, matmul_quantized(o.w, 1, o.y, o.ldy, s, ParallelFor{}));
    }
    return {};
  }
  int fmt = -1;
  for (const auto& o : outs) {
    const int f = static_cast<int>(activation_type_for(o.w.type));
    if (f != fmt || s.quantized_cols() != o.w.cols) {
      if (auto st = quantize_activations(o.w.type, x, n, o.w.cols, s, par); !st) return ctx(o, st);
      fmt = f;
    }
    if (auto st = matmul_quantized(o.w, n, o.y, o.ldy, s, par); !st) return ctx(o, st);
  }
  return {};
}
}  // namespace v0
}  // namespace tinyslm
