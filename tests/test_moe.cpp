// MoE layer: the router against a plain scalar reference, the whole MoE FFN against a dense
// reference that evaluates every expert with dequantized weights and masks, prefill grouping
// against token-by-token decode, thread-count invariance, routing statistics, MoeConfig from
// the synthetic MoE models' metadata (values from their README), and every bad-input path.
//
// Bounds of the FFN comparisons (relative to each token's largest output magnitude):
//  - against a reference that rounds the activations exactly as the kernels do (Q8_0, Q8_1,
//    Q8_K quantization or F16/BF16 rounding of x before gate/up and of the SwiGLU output
//    before down, via quant.hpp): 1e-3. Only float summation order differs (we measure
//    1e-7 to 6e-7), except when a value sits on a rounding boundary and rounds one step the
//    other way: one step is amax/127 of its block, seen once at 1.7e-4.
//  - against the full-precision reference: F32 weights 1e-4 (activations stay F32; we measure
//    4e-7); F16 weights 5e-3 (activations rounded to F16, 11 bits: we measure 6e-4);
//    quantized weights 6e-2. Rounding to 8 bits moves each activation by up to amax/254 of
//    its block; the SwiGLU output is heavy-tailed, so Q8_K's one scale per 256 values costs
//    the most: we measure 1-2% for Q8_0 and up to 3.4% for Q8_K (Q4_K weights).
//  - prefill (GEMM) against decode (GEMV): identical with the scalar kernels. The SIMD GEMM
//    and GEMV kernels add the same products in other orders (1e-7 apart), and when such a
//    difference moves a SwiGLU output across a rounding boundary of its 8-bit quantization
//    the down projection sees one quantization step (amax/127 of the block) more or less:
//    bound 1e-3, as for the emulated reference (we measure 3e-7 on this data, 3e-4 on
//    other data).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "tinyslm/moe.hpp"
#include "tinyslm/threads.hpp"

using namespace tinyslm;

namespace {

constexpr double kBoundF32 = 1e-4;
constexpr double kBoundF16 = 5e-3;
constexpr double kBoundQuant = 0.06;
constexpr double kBoundEmulated = 1e-3;
constexpr double kBoundGemmGemv = 1e-3;

// Deterministic uniform values in [-1, 1) (splitmix64), the same on every platform.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform() { return static_cast<float>(static_cast<double>(next() >> 11) * 0x1.0p-53 * 2.0 - 1.0); }
};

// ---- scalar reference router ----------------------------------------------------------

struct RefRoute {
  std::vector<int> ids;
  std::vector<double> w;
  std::vector<double> probs;  // all experts, after gating
};

RefRoute ref_route(const MoeConfig& c, const std::vector<double>& logits) {
  RefRoute r;
  const int n = static_cast<int>(c.n_expert), k = static_cast<int>(c.n_expert_used);
  r.probs.resize(static_cast<size_t>(n));
  if (c.gating == MoeGating::softmax) {
    const double mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (int e = 0; e < n; ++e) sum += std::exp(logits[e] - mx);
    for (int e = 0; e < n; ++e) r.probs[e] = std::exp(logits[e] - mx) / sum;
  } else {
    for (int e = 0; e < n; ++e) r.probs[e] = 1.0 / (1.0 + std::exp(-logits[e]));
  }
  std::vector<int> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return r.probs[a] > r.probs[b]; });
  r.ids.assign(order.begin(), order.begin() + k);
  double sum = 0;
  for (int j = 0; j < k; ++j) {
    r.w.push_back(r.probs[r.ids[j]]);
    sum += r.w.back();
  }
  for (auto& v : r.w) {
    if (c.norm_weights) v /= sum;
    v *= c.weights_scale;
  }
  return r;
}

MoeConfig make_cfg(int64_t n_expert, int64_t k, MoeGating g, bool norm, float scale = 1.0f) {
  MoeConfig c;
  c.n_expert = n_expert;
  c.n_expert_used = k;
  c.expert_ff = 32;
  c.gating = g;
  c.norm_weights = norm;
  c.weights_scale = scale;
  return c;
}

void check_select(const MoeConfig& c, const std::vector<float>& logits) {
  std::vector<float> buf = logits;
  std::vector<int32_t> ids(static_cast<size_t>(c.n_expert_used));
  std::vector<float> w(static_cast<size_t>(c.n_expert_used));
  moe_select(c, buf.data(), ids.data(), w.data());
  const RefRoute r = ref_route(c, std::vector<double>(logits.begin(), logits.end()));
  for (int64_t j = 0; j < c.n_expert_used; ++j) {
    CHECK(ids[j] == r.ids[j]);
    CHECK(w[j] == doctest::Approx(r.w[j]).epsilon(1e-5));
  }
}

// ---- random MoE layers in memory ------------------------------------------------------

// A matrix of `rows` x `cols` random values stored as `type`, plus its dequantized floats.
struct Mat {
  TensorType type;
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> bytes;
  std::vector<float> deq;
};

Mat make_mat(TensorType type, int64_t rows, int64_t cols, float gain, Rng& rng) {
  Mat m{type, rows, cols, {}, {}};
  uint64_t rb = 0;
  REQUIRE(tensor_row_bytes(type, static_cast<uint64_t>(cols), &rb));
  m.bytes.resize(static_cast<size_t>(rb * rows));
  m.deq.resize(static_cast<size_t>(rows * cols));
  std::vector<float> row(static_cast<size_t>(cols));
  const float s = gain / std::sqrt(static_cast<float>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : row) v = rng.uniform() * s * 1.7f;
    REQUIRE(quantize_row(type, row.data(), m.bytes.data() + r * rb, cols));
    REQUIRE(dequantize_row(type, m.bytes.data() + r * rb, m.deq.data() + r * cols, cols));
  }
  return m;
}

MatrixRef ref_of(const Mat& m) { return {m.type, m.bytes.data(), m.rows, m.cols}; }

// A whole layer: stacked experts are one Mat of n_expert * rows rows.
struct TestLayer {
  MoeConfig cfg;
  int64_t E = 0;
  Mat router, gate, up, down, sgate, sup, sdown, sgi;
  MoeLayerWeights w;
};

TestLayer make_layer(const MoeConfig& cfg, int64_t E, TensorType t, uint64_t seed) {
  Rng rng(seed);
  TestLayer L;
  L.cfg = cfg;
  L.E = E;
  const int64_t X = cfg.n_expert, F = cfg.expert_ff;
  L.router = make_mat(TensorType::F32, X, E, 3.0f, rng);
  L.gate = make_mat(t, X * F, E, 1.0f, rng);
  L.up = make_mat(t, X * F, E, 1.0f, rng);
  L.down = make_mat(t, X * E, F, 1.0f, rng);
  uint64_t rb = 0;
  L.w.router = ref_of(L.router);
  REQUIRE(tensor_row_bytes(t, static_cast<uint64_t>(E), &rb));
  L.w.gate = MoeExperts{t, L.gate.bytes.data(), F, E, X, rb};
  L.w.up = MoeExperts{t, L.up.bytes.data(), F, E, X, rb};
  REQUIRE(tensor_row_bytes(t, static_cast<uint64_t>(F), &rb));
  L.w.down = MoeExperts{t, L.down.bytes.data(), E, F, X, rb};
  if (cfg.shared_expert) {
    L.sgate = make_mat(t, cfg.shared_ff, E, 1.0f, rng);
    L.sup = make_mat(t, cfg.shared_ff, E, 1.0f, rng);
    L.sdown = make_mat(t, E, cfg.shared_ff, 1.0f, rng);
    L.w.shared_gate = ref_of(L.sgate);
    L.w.shared_up = ref_of(L.sup);
    L.w.shared_down = ref_of(L.sdown);
    if (cfg.shared_gated) {
      L.sgi = make_mat(TensorType::F32, 1, E, 1.0f, rng);
      L.w.shared_gate_inp = ref_of(L.sgi);
    }
  }
  return L;
}

// Dequantized copy of bound weights (for the layers read from files).
struct Dense {
  int64_t E = 0;
  std::vector<float> router, gate, up, down, sgate, sup, sdown, sgi;
  TensorType tg = TensorType::F32, tu = TensorType::F32, td = TensorType::F32;
  TensorType tsg = TensorType::F32, tsu = TensorType::F32, tsd = TensorType::F32;
};

// x rounded the way the kernels round activations for weights of type t (quantized to Q8_0,
// Q8_1 or Q8_K, or rounded to F16/BF16, then expanded back).
std::vector<float> act_round(TensorType weight, const float* x, int64_t n) {
  const TensorType a = activation_type_for(weight);
  std::vector<float> out(x, x + n);
  if (a == TensorType::F32) return out;
  uint64_t rb = 0;
  REQUIRE(tensor_row_bytes(a, static_cast<uint64_t>(n), &rb));
  std::vector<uint8_t> q(static_cast<size_t>(rb));
  REQUIRE(quantize_row(a, x, q.data(), n));
  REQUIRE(dequantize_row(a, q.data(), out.data(), n));
  return out;
}

std::vector<float> deq_matrix(const MatrixRef& m) {
  std::vector<float> out(static_cast<size_t>(m.rows * m.cols));
  uint64_t rb = 0;
  REQUIRE(tensor_row_bytes(m.type, static_cast<uint64_t>(m.cols), &rb));
  for (int64_t r = 0; r < m.rows; ++r) REQUIRE(dequantize_row(m.type, m.data + r * rb, out.data() + r * m.cols, m.cols));
  return out;
}
std::vector<float> deq_experts(const MoeExperts& x) {
  return deq_matrix(MatrixRef{x.type, x.data, x.rows * x.n_expert, x.cols});
}

Dense dense_of(const MoeConfig& cfg, const MoeLayerWeights& w) {
  Dense d;
  d.E = w.n_embd();
  d.router = deq_matrix(w.router);
  d.gate = deq_experts(w.gate);
  d.up = deq_experts(w.up);
  d.down = deq_experts(w.down);
  d.tg = w.gate.type;
  d.tu = w.up.type;
  d.td = w.down.type;
  if (cfg.shared_expert) {
    d.tsg = w.shared_gate.type;
    d.tsu = w.shared_up.type;
    d.tsd = w.shared_down.type;
    d.sgate = deq_matrix(w.shared_gate);
    d.sup = deq_matrix(w.shared_up);
    d.sdown = deq_matrix(w.shared_down);
    if (cfg.shared_gated) d.sgi = deq_matrix(w.shared_gate_inp);
  }
  return d;
}

double dot(const float* a, const float* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// One SwiGLU FFN (rows of gate/up at g/u, down at dn) on x, in double. With `emulate`, the
// inputs of each product are first rounded as the kernels round activations (types tg, tu, td).
std::vector<double> ref_swiglu(const float* g, const float* u, const float* dn, int64_t F, int64_t E, const float* x,
                               bool emulate, TensorType tg, TensorType tu, TensorType td) {
  const auto xg = emulate ? act_round(tg, x, E) : std::vector<float>(x, x + E);
  const auto xu = emulate ? act_round(tu, x, E) : std::vector<float>(x, x + E);
  std::vector<float> h(static_cast<size_t>(F));
  for (int64_t r = 0; r < F; ++r) {
    const double a = dot(g + r * E, xg.data(), E), b = dot(u + r * E, xu.data(), E);
    h[r] = static_cast<float>(a / (1.0 + std::exp(-a)) * b);
  }
  if (emulate) h = act_round(td, h.data(), F);
  std::vector<double> y(static_cast<size_t>(E));
  for (int64_t r = 0; r < E; ++r) y[r] = dot(dn + r * F, h.data(), F);
  return y;
}

// Dense reference: every expert evaluated, masked by the reference router's weights.
struct RefOut {
  std::vector<double> y;
  RefRoute route;
  double kth_gap = 0;  // probability gap between the k-th and (k+1)-th expert
};

RefOut ref_ffn(const MoeConfig& c, const Dense& d, const float* x, bool emulate) {
  const int64_t E = d.E, X = c.n_expert, F = c.expert_ff, k = c.n_expert_used;
  std::vector<double> logits(static_cast<size_t>(X));
  for (int64_t e = 0; e < X; ++e) logits[e] = dot(d.router.data() + e * E, x, E);
  RefOut o;
  o.route = ref_route(c, logits);
  std::vector<double> p = o.route.probs;
  std::sort(p.begin(), p.end(), std::greater<double>());
  o.kth_gap = k < X ? p[k - 1] - p[k] : 1.0;
  std::vector<double> mask(static_cast<size_t>(X), 0.0);
  for (int64_t j = 0; j < k; ++j) mask[o.route.ids[j]] = o.route.w[j];
  o.y.assign(static_cast<size_t>(E), 0.0);
  for (int64_t e = 0; e < X; ++e) {
    const auto ye = ref_swiglu(d.gate.data() + e * F * E, d.up.data() + e * F * E, d.down.data() + e * E * F, F, E, x,
                                 emulate, d.tg, d.tu, d.td);
    for (int64_t r = 0; r < E; ++r) o.y[r] += mask[e] * ye[r];
  }
  if (c.shared_expert) {
    double gs = 1.0;
    if (c.shared_gated) gs = 1.0 / (1.0 + std::exp(-dot(d.sgi.data(), x, E)));
    const auto ys = ref_swiglu(d.sgate.data(), d.sup.data(), d.sdown.data(), c.shared_ff, E, x, emulate, d.tsg, d.tsu, d.tsd);
    for (int64_t r = 0; r < E; ++r) o.y[r] += gs * ys[r];
  }
  return o;
}

std::vector<float> random_x(int64_t n, int64_t E, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(n * E));
  for (auto& v : x) v = rng.uniform() * 1.7f;
  return x;
}

// Runs moe_ffn on n tokens and compares with the dense references: `exact` (weights and
// activations in full precision) within `bound`, `emulated` (activations rounded as the
// kernels round them) within `bound_emulated`. Errors are relative to each token's largest
// output magnitude; returns the worst of each.
struct Errors {
  double exact = 0, emulated = 0;
};

Errors compare_with_reference(const MoeConfig& c, const MoeLayerWeights& w, const Dense& d, int64_t n, uint64_t seed,
                              int threads, double bound, double bound_emulated) {
  const int64_t E = w.n_embd();
  const auto x = random_x(n, E, seed);
  std::vector<float> out(static_cast<size_t>(n * E));
  ThreadPool pool(threads);
  MoeScratch s;
  REQUIRE(s.reserve(c, E, n, threads));
  const auto st = moe_ffn(c, w, x.data(), n, out.data(), s, pool.parallel());
  REQUIRE_MESSAGE(st, (st ? "" : st.error().message()));
  Errors worst;
  int compared = 0;
  for (int64_t i = 0; i < n; ++i) {
    const RefOut r = ref_ffn(c, d, x.data() + i * E, false);
    if (r.kth_gap < 1e-4) continue;  // a near-tie could be routed either way by float rounding
    ++compared;
    for (int64_t j = 0; j < c.n_expert_used; ++j) {
      CHECK(s.selected(i)[j] == r.route.ids[j]);
      CHECK(s.selected_weights(i)[j] == doctest::Approx(r.route.w[j]).epsilon(1e-4));
    }
    const RefOut re = ref_ffn(c, d, x.data() + i * E, true);
    double mx = 0, err = 0, err_e = 0;
    for (int64_t e = 0; e < E; ++e) {
      mx = std::max(mx, std::fabs(r.y[e]));
      err = std::max(err, std::fabs(r.y[e] - out[i * E + e]));
      err_e = std::max(err_e, std::fabs(re.y[e] - out[i * E + e]));
    }
    worst.exact = std::max(worst.exact, err / mx);
    worst.emulated = std::max(worst.emulated, err_e / mx);
  }
  CHECK(compared >= n / 2);
  CHECK(worst.exact <= bound);
  CHECK(worst.emulated <= bound_emulated);
  return worst;
}

}  // namespace

// ---------------------------------------------------------------------------------------

TEST_CASE("router: random logits against the scalar reference") {
  Rng rng(1);
  for (int64_t n : {4, 8, 12, 32, 60, 128}) {
    for (int64_t k : {int64_t{1}, int64_t{2}, n / 2, n}) {
      for (auto g : {MoeGating::softmax, MoeGating::sigmoid}) {
        for (bool norm : {false, true}) {
          std::vector<float> logits(static_cast<size_t>(n));
          for (auto& v : logits) v = rng.uniform() * 4.0f;
          check_select(make_cfg(n, k, g, norm), logits);
          check_select(make_cfg(n, k, g, norm, 2.5f), logits);
        }
      }
    }
  }
}

struct Picked {
  std::vector<int32_t> ids;
  std::vector<float> w;
};

Picked pick(const MoeConfig& c, std::vector<float> logits) {
  Picked p{std::vector<int32_t>(static_cast<size_t>(c.n_expert_used)), std::vector<float>(static_cast<size_t>(c.n_expert_used))};
  moe_select(c, logits.data(), p.ids.data(), p.w.data());
  return p;
}

TEST_CASE("router: ties go to the lower expert id") {
  for (auto g : {MoeGating::softmax, MoeGating::sigmoid}) {
    // Equal logits everywhere: the first k ids, in order, with equal weights.
    const Picked same = pick(make_cfg(8, 3, g, false), std::vector<float>(8, 0.5f));
    CHECK(same.ids == std::vector<int32_t>{0, 1, 2});
    CHECK(same.w[0] == same.w[1]);
    CHECK(same.w[1] == same.w[2]);
    // Ties among the largest values, some after a smaller value.
    const std::vector<float> l = {1.0f, 3.0f, 3.0f, 0.0f, 3.0f, 2.0f, 3.0f};
    check_select(make_cfg(7, 2, g, true), l);
    check_select(make_cfg(7, 3, g, false), l);
    CHECK(pick(make_cfg(7, 5, g, false), l).ids == std::vector<int32_t>{1, 2, 4, 6, 5});
    CHECK(pick(make_cfg(7, 7, g, false), l).ids == std::vector<int32_t>{1, 2, 4, 6, 5, 0, 3});
  }
}

TEST_CASE("router: k = 1, k = n_expert, renormalisation and scale") {
  const std::vector<float> l = {0.3f, -1.0f, 2.0f, 0.7f, 1.9f};
  const std::vector<double> ld(l.begin(), l.end());
  Picked p = pick(make_cfg(5, 1, MoeGating::softmax, true), l);
  CHECK(p.ids[0] == 2);
  CHECK(p.w[0] == 1.0f);  // one renormalised weight is exactly 1
  p = pick(make_cfg(5, 1, MoeGating::softmax, false), l);
  CHECK(p.ids[0] == 2);
  CHECK(p.w[0] == doctest::Approx(ref_route(make_cfg(5, 1, MoeGating::softmax, false), ld).w[0]));
  CHECK(p.w[0] < 0.5f);
  // All experts: every id once, by decreasing probability; softmax weights sum to 1 either way.
  for (bool norm : {false, true}) {
    p = pick(make_cfg(5, 5, MoeGating::softmax, norm), l);
    CHECK(p.ids == std::vector<int32_t>{2, 4, 3, 0, 1});
    CHECK(p.w[0] + p.w[1] + p.w[2] + p.w[3] + p.w[4] == doctest::Approx(1.0f).epsilon(1e-6));
  }
  // Sigmoid: weights are independent probabilities unless renormalised; the scale comes last.
  p = pick(make_cfg(5, 2, MoeGating::sigmoid, false), l);
  CHECK(p.w[0] == doctest::Approx(1.0 / (1.0 + std::exp(-2.0))));
  CHECK(p.w[1] == doctest::Approx(1.0 / (1.0 + std::exp(-1.9))));
  p = pick(make_cfg(5, 2, MoeGating::sigmoid, true, 3.0f), l);
  CHECK(p.w[0] + p.w[1] == doctest::Approx(3.0f));
  p = pick(make_cfg(5, 5, MoeGating::sigmoid, false), l);
  CHECK(p.ids == std::vector<int32_t>{2, 4, 3, 0, 1});
  CHECK(p.w[0] + p.w[1] + p.w[2] + p.w[3] + p.w[4] > 1.5f);
  // Renormalisation keeps the sum at least 2^-14: tiny probabilities are not blown up.
  MoeConfig tiny = make_cfg(3, 1, MoeGating::sigmoid, true);
  p = pick(tiny, {-30.0f, -31.0f, -32.0f});
  CHECK(p.ids[0] == 0);
  CHECK(p.w[0] == doctest::Approx(1.0 / (1.0 + std::exp(30.0)) / 6.103515625e-5));
}

TEST_CASE("moe_ffn: random layers against the dense reference (F32, Q8_0, Q4_K, mixed shapes)") {
  struct Case {
    const char* what;
    TensorType type;
    int64_t E, X, k, F;
    bool norm, shared, gated;
    MoeGating g;
    double bound;
  };
  const Case cases[] = {
      {"F32 mixtral-like", TensorType::F32, 64, 8, 2, 96, true, false, false, MoeGating::softmax, kBoundF32},
      {"F32 qwen2moe-like", TensorType::F32, 64, 12, 4, 32, false, true, true, MoeGating::softmax, kBoundF32},
      {"F16 sigmoid", TensorType::F16, 64, 6, 3, 32, true, false, false, MoeGating::sigmoid, kBoundF16},
      {"Q8_0 olmoe-like", TensorType::Q8_0, 128, 32, 8, 64, false, false, false, MoeGating::softmax, kBoundQuant},
      {"Q8_0 shared gated", TensorType::Q8_0, 128, 12, 4, 64, false, true, true, MoeGating::softmax, kBoundQuant},
      {"Q4_K qwen3moe-like", TensorType::Q4_K, 256, 16, 4, 256, true, false, false, MoeGating::softmax, kBoundQuant},
      {"Q4_K shared ungated", TensorType::Q4_K, 256, 4, 2, 256, true, true, false, MoeGating::softmax, kBoundQuant},
  };
  uint64_t seed = 100;
  for (const auto& cs : cases) {
    CAPTURE(cs.what);
    MoeConfig c = make_cfg(cs.X, cs.k, cs.g, cs.norm);
    c.expert_ff = cs.F;
    c.shared_expert = cs.shared;
    c.shared_ff = cs.shared ? 2 * cs.F : 0;
    c.shared_gated = cs.gated;
    TestLayer L = make_layer(c, cs.E, cs.type, ++seed);
    const Dense d = dense_of(c, L.w);
    for (int threads : {1, 2}) {
      const Errors dec = compare_with_reference(c, L.w, d, 1, seed * 7 + threads, threads, cs.bound, kBoundEmulated);
      const Errors pre = compare_with_reference(c, L.w, d, 15, seed * 11 + threads, threads, cs.bound, kBoundEmulated);
      std::printf("moe_ffn %-20s threads %d: error decode %.1e / prefill %.1e (bound %.0e); "
                  "against the emulated rounding %.1e / %.1e\n",
                  cs.what, threads, dec.exact, pre.exact, cs.bound, dec.emulated, pre.emulated);
    }
  }
}

// Runs one layer as one batch and token by token, on pools of 1 and 2 threads.
struct PathOutputs {
  std::vector<float> batch1, batch2, tok1, tok2;
};

PathOutputs run_paths(const MoeConfig& c, const MoeLayerWeights& w, const std::vector<float>& x, int64_t n,
                      MoeStats* stats) {
  const int64_t E = w.n_embd();
  PathOutputs o;
  for (auto* v : {&o.batch1, &o.batch2, &o.tok1, &o.tok2}) v->resize(static_cast<size_t>(n * E));
  for (int threads : {1, 2}) {
    ThreadPool pool(threads);
    MoeScratch s;
    REQUIRE(s.reserve(c, E, n, threads));
    MoeStats* st = threads == 1 ? stats : nullptr;
    float* batch = (threads == 1 ? o.batch1 : o.batch2).data();
    float* tok = (threads == 1 ? o.tok1 : o.tok2).data();
    REQUIRE(moe_ffn(c, w, x.data(), n, batch, s, pool.parallel(), st, 1));
    for (int64_t i = 0; i < n; ++i) REQUIRE(moe_ffn(c, w, x.data() + i * E, 1, tok + i * E, s, pool.parallel(), st, 2));
  }
  return o;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Prefill and decode use the same code for everything but the matmul kernels: GEMM for the
// experts with two or more tokens, GEMV for one. The scalar kernels compute every row the
// same way for any token count, so there the two paths agree to the bit. On the SIMD path
// the difference is bounded by kBoundGemmGemv (see the top of the file).
TEST_CASE("moe_ffn: prefill grouping equals token-by-token decode; any thread count; stats add up") {
  for (TensorType t : {TensorType::F32, TensorType::Q8_0, TensorType::Q4_K}) {
    CAPTURE(tensor_type_name(t));
    MoeConfig c = make_cfg(16, 4, MoeGating::softmax, true);
    c.expert_ff = 256;
    c.shared_expert = true;
    c.shared_ff = 256;
    c.shared_gated = true;
    const int64_t E = 256, n = 37;
    TestLayer L = make_layer(c, E, t, 7);
    const auto x = random_x(n, E, 8);

    REQUIRE(set_simd_level(SimdLevel::scalar));
    const PathOutputs sc = run_paths(c, L.w, x, n, nullptr);
    reset_simd_level();
    CHECK(same_bits(sc.batch1, sc.tok1));
    CHECK(same_bits(sc.batch1, sc.batch2));
    CHECK(same_bits(sc.tok1, sc.tok2));

    MoeStats stats;
    stats.init(3, c.n_expert);
    const PathOutputs o = run_paths(c, L.w, x, n, &stats);
    CHECK(same_bits(o.batch1, o.batch2));
    CHECK(same_bits(o.tok1, o.tok2));
    double worst = 0, mx = 0;
    for (size_t i = 0; i < o.tok1.size(); ++i) {
      worst = std::max(worst, static_cast<double>(std::fabs(o.tok1[i] - o.batch1[i])));
      mx = std::max(mx, static_cast<double>(std::fabs(o.batch1[i])));
    }
    std::printf("prefill vs decode, %s weights, %s kernels: largest difference %.2e of the largest output\n",
                tensor_type_name(t), simd_level_name(active_simd_level()), worst / mx);
    CHECK(worst <= kBoundGemmGemv * mx);

    // Statistics: n * k selections per layer, the same counts from both paths.
    CHECK(stats.layer_total(0) == 0);
    CHECK(stats.layer_total(1) == static_cast<uint64_t>(n * c.n_expert_used));
    CHECK(stats.layer_total(2) == static_cast<uint64_t>(n * c.n_expert_used));
    for (int64_t e = 0; e < c.n_expert; ++e) CHECK(stats.count(1, e) == stats.count(2, e));
    stats.reset();
    CHECK(stats.layer_total(1) == 0);
    CHECK(stats.layer_total(2) == 0);
  }
}

// ---- the synthetic MoE models ---------------------------------------------------------

TEST_CASE("MoeConfig from the synthetic MoE models, layers bound and evaluated against the reference" * doctest::test_suite("shared")) {
  struct Want {
    const char* file;
    int64_t n_expert, k, ff;
    bool norm, shared;
    int64_t shared_ff;
  };
  // Values from shared/models/synthetic/README-syn.md and README-synth.md (the generator's
  // own description of each file), and llama.cpp's per-family routing rules.
  const Want wants[] = {
      {"syn-mixtral-Q8_0.gguf", 8, 2, 256, true, false, 0},
      {"syn-mixtral-Q4_K_M.gguf", 8, 2, 256, true, false, 0},
      {"syn-qwen2moe-Q8_0.gguf", 12, 4, 128, false, true, 512},
      {"syn-qwen2moe-Q4_K_M.gguf", 12, 4, 128, false, true, 512},
      {"syn-qwen3moe-Q8_0.gguf", 16, 4, 256, true, false, 0},
      {"syn-qwen3moe-Q4_K_M.gguf", 16, 4, 256, true, false, 0},
      {"syn-olmoe-Q8_0.gguf", 32, 8, 64, false, false, 0},
      {"syn-olmoe-Q4_K_M.gguf", 32, 8, 64, false, false, 0},
      {"synth-qwen3moe-tiny-F16.gguf", 4, 2, 256, true, false, 0},
  };
  for (const auto& want : wants) {
    CAPTURE(want.file);
    const std::string path = tinyslm_test::shared_file(std::string("models/synthetic/") + want.file);
    if (path.empty()) return;
    auto f = GgufFile::open(path);
    REQUIRE(f);
    auto c = read_moe_config(*f);
    REQUIRE_MESSAGE(c, (c ? "" : c.error().message()));
    CHECK(c->n_expert == want.n_expert);
    CHECK(c->n_expert_used == want.k);
    CHECK(c->expert_ff == want.ff);
    CHECK(c->gating == MoeGating::softmax);
    CHECK(c->norm_weights == want.norm);
    CHECK(c->weights_scale == 1.0f);
    CHECK(c->shared_expert == want.shared);
    CHECK(c->shared_gated == want.shared);
    CHECK(c->shared_ff == want.shared_ff);
    const auto arch = f->get<std::string>("general.architecture");
    REQUIRE(arch);
    const auto E = f->get<uint32_t>(*arch + ".embedding_length");
    const auto n_layer = f->get<uint32_t>(*arch + ".block_count");
    REQUIRE(E);
    REQUIRE(n_layer);
    for (uint32_t il = 0; il < *n_layer; ++il) {
      auto w = bind_moe_layer(*f, *c, il, *E);
      REQUIRE_MESSAGE(w, (w ? "" : w.error().message()));
      // Bytes read per decoded token: k / n_expert of the stacked tensors, plus the rest whole.
      const std::string p = "blk." + std::to_string(il) + ".";
      auto tb = [&](const char* name) -> uint64_t {
        const GgufTensorInfo* t = f->find_tensor(p + name);
        return t ? t->n_bytes : 0;
      };
      const uint64_t stacked = tb("ffn_gate_exps.weight") + tb("ffn_up_exps.weight") + tb("ffn_down_exps.weight");
      CHECK(stacked % static_cast<uint64_t>(c->n_expert) == 0);
      CHECK(moe_decode_bytes(*c, *w) == stacked / static_cast<uint64_t>(c->n_expert) * static_cast<uint64_t>(c->n_expert_used) +
                                            tb("ffn_gate_inp.weight") + tb("ffn_gate_shexp.weight") +
                                            tb("ffn_up_shexp.weight") + tb("ffn_down_shexp.weight") +
                                            tb("ffn_gate_inp_shexp.weight"));
      if (il == 0) {
        const Dense d = dense_of(*c, *w);
        const bool f16 = w->gate.type == TensorType::F16;
        const Errors err = compare_with_reference(*c, *w, d, 6, 5 + il, 2, f16 ? kBoundF16 : kBoundQuant, kBoundEmulated);
        std::printf("%-30s layer 0 (gate %s, down %s): error %.1e, against the emulated rounding %.1e\n", want.file,
                    tensor_type_name(w->gate.type), tensor_type_name(w->down.type), err.exact, err.emulated);
      }
    }
  }
  // A dense file: no experts.
  const std::string dense = tinyslm_test::shared_file("models/synthetic/syn-qwen3-Q8_0.gguf");
  if (dense.empty()) return;
  auto f = GgufFile::open(dense);
  REQUIRE(f);
  auto c = read_moe_config(*f);
  REQUIRE(c);
  CHECK(!c->enabled());
}

// ---- bad inputs -----------------------------------------------------------------------

namespace {

struct MemFile {
  std::vector<uint8_t> bytes;
  Expected<GgufFile> open() { return GgufFile::from_memory(bytes.data(), bytes.size()); }
};

// A tiny qwen2moe-shaped file (E 32, 4 experts, top 2, ff 32, shared 32) with optional edits.
struct FileSpec {
  std::string arch = "qwen2moe";
  int64_t n_expert = 4, k = 2, ff = 32, shared_ff = 32;
  int64_t gating = -1;      // -1: key absent
  int norm = -1;            // -1: absent; else the bool
  bool norm_as_int = false; // store expert_weights_norm with the wrong type
  float scale = 0.0f;       // 0: absent
  int64_t router_rows = 4;  // experts in ffn_gate_inp
  int64_t exps_n = 4;       // experts in the stacked tensors
  bool drop_down = false;
  bool exps_2d = false;
  bool drop_shared_gate_inp = false;
};

MemFile make_file(const FileSpec& p) {
  GgufWriter w;
  const int64_t E = 32;
  w.set_string("general.architecture", p.arch);
  const std::string a = p.arch;
  w.set_u32(a + ".embedding_length", E);
  w.set_u32(a + ".block_count", 1);
  w.set_u32(a + ".feed_forward_length", 64);
  w.set_i32(a + ".expert_count", static_cast<int32_t>(p.n_expert));
  w.set_i32(a + ".expert_used_count", static_cast<int32_t>(p.k));
  w.set_u32(a + ".expert_feed_forward_length", static_cast<uint32_t>(p.ff));
  w.set_u32(a + ".expert_shared_feed_forward_length", static_cast<uint32_t>(p.shared_ff));
  if (p.gating >= 0) w.set_u32(a + ".expert_gating_func", static_cast<uint32_t>(p.gating));
  if (p.norm >= 0) {
    if (p.norm_as_int) w.set_u32(a + ".expert_weights_norm", static_cast<uint32_t>(p.norm));
    else w.set_bool(a + ".expert_weights_norm", p.norm != 0);
  }
  if (p.scale != 0.0f) w.set_f32(a + ".expert_weights_scale", p.scale);
  auto add = [&](const std::string& name, std::vector<uint64_t> shape) {
    uint64_t n = 1;
    for (auto s : shape) n *= s;
    std::vector<float> v(static_cast<size_t>(n), 0.01f);
    REQUIRE(w.add_tensor(name, TensorType::F32, shape, v.data(), v.size() * sizeof(float)));
  };
  const uint64_t ff = static_cast<uint64_t>(p.ff), X = static_cast<uint64_t>(p.exps_n);
  add("blk.0.ffn_gate_inp.weight", {static_cast<uint64_t>(E), static_cast<uint64_t>(p.router_rows)});
  if (p.exps_2d) add("blk.0.ffn_gate_exps.weight", {static_cast<uint64_t>(E), ff * X});
  else add("blk.0.ffn_gate_exps.weight", {static_cast<uint64_t>(E), ff, X});
  add("blk.0.ffn_up_exps.weight", {static_cast<uint64_t>(E), ff, X});
  if (!p.drop_down) add("blk.0.ffn_down_exps.weight", {ff, static_cast<uint64_t>(E), X});
  add("blk.0.ffn_gate_shexp.weight", {static_cast<uint64_t>(E), static_cast<uint64_t>(p.shared_ff)});
  add("blk.0.ffn_up_shexp.weight", {static_cast<uint64_t>(E), static_cast<uint64_t>(p.shared_ff)});
  add("blk.0.ffn_down_shexp.weight", {static_cast<uint64_t>(p.shared_ff), static_cast<uint64_t>(E)});
  if (!p.drop_shared_gate_inp) add("blk.0.ffn_gate_inp_shexp.weight", {static_cast<uint64_t>(E)});
  return MemFile{w.to_bytes()};
}

Error config_error(const FileSpec& p) {
  MemFile m = make_file(p);
  auto f = m.open();
  REQUIRE(f);
  auto c = read_moe_config(*f);
  REQUIRE(!c);
  return c.error();
}

Error bind_error(const FileSpec& p) {
  MemFile m = make_file(p);
  auto f = m.open();
  REQUIRE(f);
  auto c = read_moe_config(*f);
  REQUIRE(c);
  auto w = bind_moe_layer(*f, *c, 0, 32);
  REQUIRE(!w);
  return w.error();
}

}  // namespace

TEST_CASE("read_moe_config: good file, key overrides, bad metadata") {
  {
    MemFile m = make_file({});
    auto f = m.open();
    REQUIRE(f);
    auto c = read_moe_config(*f);
    REQUIRE(c);
    CHECK(c->n_expert == 4);
    CHECK(c->shared_ff == 32);
    CHECK(!c->norm_weights);
    auto w = bind_moe_layer(*f, *c, 0, 32);
    REQUIRE(w);
  }
  {
    FileSpec p;
    p.gating = 2;
    p.norm = 1;
    p.scale = 2.5f;
    MemFile m = make_file(p);
    auto f = m.open();
    REQUIRE(f);
    auto c = read_moe_config(*f);
    REQUIRE(c);
    CHECK(c->gating == MoeGating::sigmoid);
    CHECK(c->norm_weights);
    CHECK(c->weights_scale == 2.5f);
  }
  FileSpec p;
  p.k = 5;  // more used than exist
  CHECK(config_error(p).code() == Errc::invalid_format);
  p = {};
  p.k = 0;
  CHECK(config_error(p).code() == Errc::invalid_format);
  p = {};
  p.n_expert = 0;  // used count without experts
  CHECK(config_error(p).code() == Errc::invalid_format);
  p = {};
  p.n_expert = -3;
  CHECK(config_error(p).code() == Errc::invalid_format);
  p = {};
  p.n_expert = 100000;
  p.k = 2;
  CHECK(config_error(p).code() == Errc::invalid_format);
  p = {};
  p.gating = 4;  // sqrt-softplus: not supported
  CHECK(config_error(p).code() == Errc::unsupported);
  p = {};
  p.norm = 1;
  p.norm_as_int = true;
  CHECK(config_error(p).code() == Errc::type_mismatch);
  p = {};
  p.arch = "deepseek2";
  CHECK(config_error(p).code() == Errc::unsupported);
  p = {};
  p.ff = 0;
  p.arch = "qwen3moe";  // falls back to feed_forward_length / k = 32: fine
  {
    MemFile m = make_file(p);
    auto f = m.open();
    REQUIRE(f);
    auto c = read_moe_config(*f);
    REQUIRE(c);
    CHECK(c->expert_ff == 32);
    CHECK(!c->shared_expert);  // the shared-length key is ignored outside qwen2moe, as in llama.cpp
  }
  p = {};
  p.arch = "llama";
  {
    MemFile m = make_file(p);
    auto f = m.open();
    REQUIRE(f);
    auto c = read_moe_config(*f);
    REQUIRE(c);
    CHECK(c->expert_ff == 64);  // llama (Mixtral) experts are feed_forward_length wide
    CHECK(c->norm_weights);
    CHECK(!c->shared_expert);
  }
}

TEST_CASE("bind_moe_layer: missing and mis-shaped tensors") {
  FileSpec p;
  p.router_rows = 5;
  CHECK(bind_error(p).code() == Errc::invalid_format);
  p = {};
  p.exps_n = 3;
  CHECK(bind_error(p).code() == Errc::invalid_format);
  p = {};
  p.exps_2d = true;
  CHECK(bind_error(p).code() == Errc::invalid_format);
  p = {};
  p.drop_down = true;
  CHECK(bind_error(p).code() == Errc::not_found);
  p = {};
  p.drop_shared_gate_inp = true;
  CHECK(bind_error(p).code() == Errc::not_found);
  {
    MemFile m = make_file({});
    auto f = m.open();
    REQUIRE(f);
    auto c = read_moe_config(*f);
    REQUIRE(c);
    auto w = bind_moe_layer(*f, *c, 1, 32);  // no layer 1
    REQUIRE(!w);
    CHECK(w.error().code() == Errc::not_found);
    w = bind_moe_layer(*f, *c, 0, 64);  // wrong n_embd
    REQUIRE(!w);
    CHECK(w.error().code() == Errc::invalid_format);
    w = bind_moe_layer(*f, MoeConfig{}, 0, 32);
    REQUIRE(!w);
    CHECK(w.error().code() == Errc::invalid_argument);
  }
}

TEST_CASE("moe_ffn and MoeScratch: bad arguments") {
  MoeConfig c = make_cfg(8, 2, MoeGating::softmax, true);
  c.expert_ff = 32;
  const int64_t E = 32;
  TestLayer L = make_layer(c, E, TensorType::F32, 3);
  MoeScratch s;
  CHECK(s.reserve(c, 0, 4, 1).error().code() == Errc::invalid_argument);
  CHECK(s.reserve(c, E, 0, 1).error().code() == Errc::invalid_argument);
  CHECK(s.reserve(MoeConfig{}, E, 4, 1).error().code() == Errc::invalid_argument);
  REQUIRE(s.reserve(c, E, 4, 1));
  const auto x = random_x(8, E, 1);
  std::vector<float> out(static_cast<size_t>(8 * E));
  ThreadPool pool1(1), pool2(2);
  CHECK(moe_ffn(c, L.w, x.data(), 4, out.data(), s, pool1.parallel()));
  CHECK(moe_ffn(c, L.w, x.data(), 0, out.data(), s, pool1.parallel()));
  CHECK(moe_ffn(c, L.w, x.data(), 5, out.data(), s, pool1.parallel()).error().code() == Errc::invalid_argument);
  CHECK(moe_ffn(c, L.w, x.data(), -1, out.data(), s, pool1.parallel()).error().code() == Errc::invalid_argument);
  CHECK(moe_ffn(c, L.w, nullptr, 1, out.data(), s, pool1.parallel()).error().code() == Errc::invalid_argument);
  CHECK(moe_ffn(c, L.w, x.data(), 1, nullptr, s, pool1.parallel()).error().code() == Errc::invalid_argument);
  CHECK(moe_ffn(c, L.w, x.data(), 1, out.data(), s, pool2.parallel()).error().code() == Errc::invalid_argument);
  MoeConfig c3 = c;
  c3.n_expert_used = 3;
  CHECK(moe_ffn(c3, L.w, x.data(), 1, out.data(), s, pool1.parallel()).error().code() == Errc::invalid_argument);
  MoeConfig cs = c;
  cs.shared_expert = true;
  cs.shared_ff = 16;
  CHECK(moe_ffn(cs, L.w, x.data(), 1, out.data(), s, pool1.parallel()).error().code() == Errc::invalid_argument);
  MoeLayerWeights unbound;
  CHECK(moe_ffn(c, unbound, x.data(), 1, out.data(), s, pool1.parallel()).error().code() == Errc::invalid_argument);
  MoeStats stats;
  stats.init(2, c.n_expert);
  CHECK(moe_ffn(c, L.w, x.data(), 1, out.data(), s, pool1.parallel(), &stats, 2).error().code() ==
        Errc::invalid_argument);
  MoeStats wrong;
  wrong.init(2, 4);
  CHECK(moe_ffn(c, L.w, x.data(), 1, out.data(), s, pool1.parallel(), &wrong, 0).error().code() ==
        Errc::invalid_argument);
  // An expert type the kernels cannot multiply: matmul's error comes back, from both paths.
  MoeLayerWeights bad = L.w;
  bad.up.type = TensorType::IQ2_XXS;
  auto st = moe_ffn(c, bad, x.data(), 1, out.data(), s, pool1.parallel());
  REQUIRE(!st);
  CHECK(st.error().code() == Errc::unsupported);
  st = moe_ffn(c, bad, x.data(), 3, out.data(), s, pool1.parallel());
  REQUIRE(!st);
  CHECK(st.error().code() == Errc::unsupported);
  // Stacked experts whose row size does not match their type (a hand-made MoeExperts).
  bad = L.w;
  bad.down.row_bytes += 4;
  st = moe_ffn(c, bad, x.data(), 1, out.data(), s, pool1.parallel());
  REQUIRE(!st);
  CHECK(st.error().code() == Errc::invalid_argument);
}
