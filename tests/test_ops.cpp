// ops: norms, RoPE, softmax, soft-capping, activations, F16 conversions and attention, each
// against a plain double formula written here, plus the properties the formulas promise
// (rotations keep lengths and depend only on relative positions, softmax sums to 1 and ignores
// a shift, ...). Random data from fixed seeds. Every bound below is derived in its comment.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "model_builder.hpp"
#include "tinyslm.hpp"

using namespace tinyslm;

namespace {

// Deterministic uniform values in [-1, 1) (splitmix64), the same on every platform.
struct TestRng {
  uint64_t s;
  uint64_t next() { return tinyslm_test::splitmix64(s); }
  float uniform() { return static_cast<float>(static_cast<double>(next() >> 11) * 0x1.0p-53 * 2.0 - 1.0); }
  std::vector<float> vec(size_t n, float amp) {
    std::vector<float> v(n);
    for (auto& x : v) x = amp * uniform();
    return v;
  }
};

// IEEE binary16 from its fields, independently of the library.
double half_value(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
  double v;
  if (exp == 0) v = std::ldexp(man, -24);
  else if (exp == 31) v = man ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else v = std::ldexp(1024 + man, exp - 25);
  return sign ? -v : v;
}

constexpr double kF32 = 0x1.0p-24;  // unit roundoff of float

}  // namespace

TEST_CASE("ops: rms_norm and layer_norm against double, with and without weights, in place") {
  TestRng rng{1};
  for (int64_t n : {1, 7, 64, 203, 1000}) {
    CAPTURE(n);
    const auto x = rng.vec(static_cast<size_t>(n), 5.0f);
    const auto w = rng.vec(static_cast<size_t>(n), 2.0f);
    const auto b = rng.vec(static_cast<size_t>(n), 1.0f);
    const float eps = 1e-5f;
    double ss = 0, sum = 0;
    for (float v : x) ss += static_cast<double>(v) * v, sum += v;
    const double rms_scale = 1 / std::sqrt(ss / n + eps);
    const double mean = sum / n;
    double var = 0;
    for (float v : x) var += (v - mean) * (v - mean);
    const double ln_scale = 1 / std::sqrt(var / n + eps);
    // Each output is a product of a few float operations on values of magnitude |ref|: a
    // relative error of a few float roundings, 8 of them is generous for n up to 1000 (the
    // sums run in double).
    auto close = [](double got, double ref) { return std::fabs(got - ref) <= 8 * kF32 * (std::fabs(ref) + 1e-3); };
    std::vector<float> y(static_cast<size_t>(n));
    ops::rms_norm(x.data(), w.data(), y.data(), n, eps);
    for (int64_t i = 0; i < n; ++i) CHECK(close(y[i], x[i] * rms_scale * w[i]));
    ops::rms_norm(x.data(), nullptr, y.data(), n, eps);
    double ms = 0;
    for (int64_t i = 0; i < n; ++i) {
      CHECK(close(y[i], x[i] * rms_scale));
      ms += static_cast<double>(y[i]) * y[i];
    }
    CHECK(ms / n == doctest::Approx(ss / n / (ss / n + eps)).epsilon(1e-5));  // unit mean square up to eps
    std::vector<float> z = x;
    ops::rms_norm(z.data(), w.data(), z.data(), n, eps);  // y aliasing x
    for (int64_t i = 0; i < n; ++i) CHECK(close(z[i], x[i] * rms_scale * w[i]));

    ops::layer_norm(x.data(), w.data(), b.data(), y.data(), n, eps);
    // (x - mean) loses up to |mean| * eps_f32 absolutely before the scaling.
    auto close_ln = [&](double got, double ref, double wi) {
      return std::fabs(got - ref) <= 8 * kF32 * (std::fabs(ref) + (std::fabs(mean) + 1) * ln_scale * std::fabs(wi) + 1e-3);
    };
    for (int64_t i = 0; i < n; ++i) CHECK(close_ln(y[i], (x[i] - mean) * ln_scale * w[i] + b[i], w[i]));
    ops::layer_norm(x.data(), nullptr, nullptr, y.data(), n, eps);
    if (n > 1) {
      double m2 = 0, v2 = 0;
      for (float v : y) m2 += v;
      m2 /= n;
      for (float v : y) v2 += (v - m2) * (v - m2);
      CHECK(std::fabs(m2) < 1e-5);
      CHECK(v2 / n == doctest::Approx(var / n / (var / n + eps)).epsilon(1e-4));
    }
    z = x;
    ops::layer_norm(z.data(), w.data(), b.data(), z.data(), n, eps);
    for (int64_t i = 0; i < n; ++i) CHECK(close_ln(z[i], (x[i] - mean) * ln_scale * w[i] + b[i], w[i]));
  }
  // Scaling the input does not change an RMS norm (eps negligible against the mean square).
  const auto x = rng.vec(256, 1.0f);
  std::vector<float> a(256), c(256), big(256);
  for (size_t i = 0; i < 256; ++i) big[i] = x[i] * 1024.0f;  // exact: a power of two
  ops::rms_norm(x.data(), nullptr, a.data(), 256, 0.0f);
  ops::rms_norm(big.data(), nullptr, c.data(), 256, 0.0f);
  for (size_t i = 0; i < 256; ++i) CHECK(std::fabs(a[i] - c[i]) <= 4 * kF32 * std::fabs(a[i]) + 1e-7);
}

TEST_CASE("ops: rope_angles against double; rope_apply in both layouts is a rotation of relative position") {
  TestRng rng{2};
  for (int64_t n_rot : {2, 16, 64, 128}) {
    for (int64_t pos : {0, 1, 17, 4095}) {
      for (float scale : {1.0f, 0.25f}) {
        std::vector<float> ff(static_cast<size_t>(n_rot / 2));
        for (auto& f : ff) f = 1.0f + 3.0f * std::fabs(rng.uniform());
        for (const float* factors : {static_cast<const float*>(nullptr), static_cast<const float*>(ff.data())}) {
          std::vector<float> cs(static_cast<size_t>(n_rot));
          ops::rope_angles(pos, n_rot, 10000.0f, scale, factors, cs.data());
          for (int64_t i = 0; i < n_rot / 2; ++i) {
            const double theta = pos * static_cast<double>(scale) * std::pow(10000.0, -2.0 * i / n_rot) /
                                 (factors ? factors[i] : 1.0);
            // The angle is built by i float multiplications by a float power (each within one
            // rounding), then divided and scaled: relative error up to (i + 4) roundings of
            // theta, plus one rounding of cos / sin themselves.
            const double tol = (static_cast<double>(i) + 4) * 2 * kF32 * theta + 4 * kF32;
            CHECK(std::fabs(cs[2 * i] - std::cos(theta)) <= tol);
            CHECK(std::fabs(cs[2 * i + 1] - std::sin(theta)) <= tol);
          }
        }
      }
    }
  }

  // rope_apply against the rotation written out, both layouts, several heads, a partial n_rot.
  const int64_t n_heads = 3, head_dim = 40, n_rot = 32, half = n_rot / 2;
  for (auto layout : {ops::RopeLayout::normal, ops::RopeLayout::neox}) {
    CAPTURE(static_cast<int>(layout));
    auto pair_of = [&](int64_t i) {
      return layout == ops::RopeLayout::normal ? std::pair<int64_t, int64_t>{2 * i, 2 * i + 1}
                                               : std::pair<int64_t, int64_t>{i, i + half};
    };
    auto rotated = [&](const std::vector<float>& x, int64_t pos) {
      std::vector<float> cs(static_cast<size_t>(n_rot)), y = x;
      ops::rope_angles(pos, n_rot, 10000.0f, 1.0f, nullptr, cs.data());
      ops::rope_apply(y.data(), n_heads, head_dim, n_rot, cs.data(), layout);
      return y;
    };
    const auto x = rng.vec(static_cast<size_t>(n_heads * head_dim), 1.0f);
    std::vector<float> cs(static_cast<size_t>(n_rot));
    ops::rope_angles(11, n_rot, 10000.0f, 1.0f, nullptr, cs.data());
    const auto y = rotated(x, 11);
    for (int64_t h = 0; h < n_heads; ++h) {
      const float* xh = x.data() + h * head_dim;
      const float* yh = y.data() + h * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const auto [a, b] = pair_of(i);
        const double c = cs[2 * i], s = cs[2 * i + 1];
        // two products and a sum of values below sqrt(2): three roundings (or fewer, fused)
        CHECK(std::fabs(yh[a] - (xh[a] * c - xh[b] * s)) <= 8 * kF32);
        CHECK(std::fabs(yh[b] - (xh[a] * s + xh[b] * c)) <= 8 * kF32);
        // A rotation keeps each pair's length.
        const double la = std::hypot(xh[a], xh[b]), lb = std::hypot(yh[a], yh[b]);
        CHECK(std::fabs(la - lb) <= 8 * kF32);
      }
      for (int64_t d = n_rot; d < head_dim; ++d) CHECK(yh[d] == xh[d]);  // past n_rot: untouched
    }
    // q.k after RoPE depends on the positions' difference only: (m, n) and (m + 100, n + 100).
    const auto q = rng.vec(static_cast<size_t>(n_heads * head_dim), 1.0f);
    const auto k = rng.vec(static_cast<size_t>(n_heads * head_dim), 1.0f);
    auto dot = [&](const std::vector<float>& a, const std::vector<float>& b) {
      double d = 0;
      for (size_t i = 0; i < a.size(); ++i) d += static_cast<double>(a[i]) * b[i];
      return d;
    };
    // Bound: pair i of each head contributes |q_i| |k_i| times the angle errors of its four
    // rotations (the rope_angles bound above), plus float rounding of the products.
    double bound = 1e-5;
    for (int64_t h = 0; h < n_heads; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const auto [a, b] = pair_of(i);
        const double lq = std::hypot(q[h * head_dim + a], q[h * head_dim + b]);
        const double lk = std::hypot(k[h * head_dim + a], k[h * head_dim + b]);
        const double w = std::pow(10000.0, -2.0 * i / n_rot);
        bound += lq * lk * ((i + 4.0) * 2 * kF32 * w * (107 + 103 + 7 + 3) + 16 * kF32);
      }
    CHECK(std::fabs(dot(rotated(q, 7), rotated(k, 3)) - dot(rotated(q, 107), rotated(k, 103))) <= bound);
    CHECK(std::fabs(dot(rotated(q, 5), rotated(k, 5)) - dot(q, k)) <= 1e-4);  // same position: no change
  }
}

TEST_CASE("ops: softmax and soft_cap against double") {
  TestRng rng{3};
  for (int64_t n : {1, 5, 64, 1000}) {
    for (float amp : {1.0f, 30.0f, 1e4f}) {
      CAPTURE(n);
      CAPTURE(amp);
      auto x = rng.vec(static_cast<size_t>(n), amp);
      const auto orig = x;
      const double mx = *std::max_element(orig.begin(), orig.end());
      double sum = 0;
      for (float v : orig) sum += std::exp(v - mx);
      ops::softmax(x.data(), n);
      double total = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double ref = std::exp(orig[i] - mx) / sum;
        // exp within a few roundings (plus the rounding of x - max, relative |x| eps), then one
        // multiplication by 1/sum.
        CHECK(std::fabs(x[i] - ref) <= ref * (8 * kF32 + 2 * kF32 * std::fabs(orig[i] - mx)) + 1e-30);
        CHECK(x[i] >= 0);
        total += x[i];
      }
      CHECK(total == doctest::Approx(1.0).epsilon(n * 4 * kF32 + 1e-6));
      // A shift of every input changes nothing: x + 64 is rounded to 2^-17 at most, which moves
      // each exponent by up to 4e-6 and each probability by twice that relatively (its own and
      // the sum's), well within 4e-5.
      if (amp <= 30.0f) {
        auto shifted = orig;
        for (auto& v : shifted) v += 64.0f;
        ops::softmax(shifted.data(), n);
        for (int64_t i = 0; i < n; ++i) CHECK(std::fabs(shifted[i] - x[i]) <= 4e-5 * (x[i] + 1e-6));
      }
    }
  }
  // -inf (a masked position) gets exactly 0.
  std::vector<float> m = {1.0f, -INFINITY, 2.0f, -INFINITY};
  ops::softmax(m.data(), 4);
  CHECK(m[1] == 0.0f);
  CHECK(m[3] == 0.0f);
  CHECK(m[0] + m[2] == doctest::Approx(1.0f));

  for (float cap : {5.0f, 30.0f, 50.0f}) {
    auto x = rng.vec(300, 4 * cap);
    x.push_back(0.0f);
    x.push_back(1e30f);
    x.push_back(-1e30f);
    const auto orig = x;
    ops::soft_cap(x.data(), static_cast<int64_t>(x.size()), cap);
    for (size_t i = 0; i < x.size(); ++i) {
      const double ref = cap * std::tanh(static_cast<double>(orig[i]) / cap);
      CHECK(std::fabs(x[i] - ref) <= 4 * kF32 * cap);
      CHECK(std::fabs(x[i]) <= cap);
      CHECK((orig[i] >= 0) == (x[i] >= 0));  // odd and monotone: keeps the sign
    }
    CHECK(x[300] == 0.0f);
  }
}

TEST_CASE("ops: silu_mul and gelu_mul against double over a wide range, in place") {
  TestRng rng{4};
  for (int64_t n : {1, 7, 8, 33, 1000}) {
    CAPTURE(n);
    auto g = rng.vec(static_cast<size_t>(n), 30.0f);
    const auto u = rng.vec(static_cast<size_t>(n), 2.0f);
    std::vector<float> out(static_cast<size_t>(n));
    ops::silu_mul(g.data(), u.data(), out.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double x = g[i], ref = x / (1 + std::exp(-x)) * u[i];
      // The exp approximation is within 4e-7 relative (test_forward checks it); a few roundings
      // more for the division and product.
      CHECK(std::fabs(out[i] - ref) <= 1e-6 * (std::fabs(ref) + std::fabs(x * u[i]) * 1e-3) + 1e-30);
    }
    ops::gelu_mul(g.data(), u.data(), out.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double x = g[i];
      const double ref = 0.5 * x * (1 + std::tanh(0.7978845608028654 * x * (1 + 0.044715 * x * x))) * u[i];
      // tanh near -1 cancels in 1 + tanh: the error is relative to |x u|, not to the result.
      CHECK(std::fabs(out[i] - ref) <= 2e-6 * std::fabs(x * u[i]) + 1e-30);
    }
    auto g2 = g;
    ops::silu_mul(g2.data(), u.data(), g2.data(), n);  // out aliasing g
    for (int64_t i = 0; i < n; ++i) {
      const double x = g[i], ref = x / (1 + std::exp(-x)) * u[i];
      CHECK(std::fabs(g2[i] - ref) <= 1e-6 * (std::fabs(ref) + std::fabs(x * u[i]) * 1e-3) + 1e-30);
    }
  }
}

TEST_CASE("ops: f16 conversions of every half value, and float -> half rounds to nearest even") {
  // Every half value decodes to its IEEE value (in vectors of odd length: the SIMD tails too).
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> dec(65536);
  ops::f16_to_f32(all.data(), dec.data(), 65535);
  ops::f16_to_f32(all.data() + 65535, dec.data() + 65535, 1);
  int nan_ok = 0;
  for (uint32_t i = 0; i < 65536; ++i) {
    const double ref = half_value(static_cast<uint16_t>(i));
    if (std::isnan(ref)) nan_ok += std::isnan(dec[i]) ? 1 : 0;
    else CHECK(static_cast<double>(dec[i]) == ref);
  }
  CHECK(nan_ok == 2 * 1023);

  // Random floats across the half range, plus exact halves and halfway points.
  TestRng rng{5};
  std::vector<float> x;
  for (int i = 0; i < 20000; ++i) x.push_back(std::ldexp(rng.uniform(), static_cast<int>(rng.next() % 40) - 26));
  for (uint32_t h : {0x0001u, 0x03ffu, 0x0400u, 0x3c00u, 0x3c01u, 0x7bffu}) {
    const double v = half_value(static_cast<uint16_t>(h)), up = half_value(static_cast<uint16_t>(h + 1));
    x.push_back(static_cast<float>(v));
    x.push_back(static_cast<float>((v + up) / 2));  // a tie: to the even mantissa
  }
  x.push_back(65504.0f);
  x.push_back(1e6f);
  x.push_back(-1e6f);
  std::vector<uint16_t> h(x.size());
  ops::f32_to_f16(x.data(), h.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    CAPTURE(x[i]);
    const double got = half_value(h[i]);
    if (std::fabs(x[i]) >= 65520.0f) {  // beyond the largest half + half an ulp: infinity
      CHECK(std::isinf(got));
      CHECK((got > 0) == (x[i] > 0));
      continue;
    }
    // Nearest: neither neighbour of the result is closer; on a tie the mantissa is even.
    const uint16_t mag = h[i] & 0x7fff;
    const double err = std::fabs(got - x[i]);
    for (int d : {-1, 1}) {
      const int m = mag + d;
      if (m < 0 || m > 0x7bff) continue;
      const double other = half_value(static_cast<uint16_t>((h[i] & 0x8000) | m));
      const double e2 = std::fabs(other - x[i]);
      CHECK(err <= e2);
      if (err == e2) CHECK((mag & 1) == 0);
    }
  }
}

namespace {

struct AttnCase {
  int64_t n_head, n_head_kv, hk, hv, n_swa, pos0, n_tok;
  float softcap;
};

// Checks ops::attention on `c` against softmax attention in double over the same F16 keys and
// values. Error bound per (query, head), derived: Q is rounded to F16 (relative 2^-11 per value),
// so each score moves by at most eps = 2^-11 * scale * sum_c |q_c k_c| (soft-capping has slope
// <= 1); perturbing every score by at most eps scales every probability by e^(+-2 eps), so the
// output moves by at most (e^(2 eps) - 1) * max|v|. The probabilities are rounded to F16 too
// (relative 2^-11 each): another 2^-11 * max|v|, doubled for the float sums.
void check_attention(const AttnCase& c, const ParallelFor& par, ops::AttentionScratch& scratch, uint64_t seed) {
  const int64_t ctx = c.pos0 + c.n_tok + 3;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.hk));
  ops::AttentionShape a{c.n_head, c.n_head_kv, c.hk, c.hv, scale, c.softcap, c.n_swa};
  REQUIRE(scratch.reserve(a, ctx, 2));
  TestRng rng{seed};
  const auto q = rng.vec(static_cast<size_t>(c.n_tok * c.n_head * c.hk), 2.0f);
  std::vector<uint16_t> k16(static_cast<size_t>(c.n_head_kv * ctx * c.hk)), v16(static_cast<size_t>(c.n_head_kv * ctx * c.hv));
  std::vector<float> kv(k16.size()), vv(v16.size()), tmp(std::max(k16.size(), v16.size()));
  for (auto& x : tmp) x = 2 * rng.uniform();
  ops::f32_to_f16(tmp.data(), k16.data(), static_cast<int64_t>(k16.size()));
  for (auto& x : tmp) x = rng.uniform();
  ops::f32_to_f16(tmp.data(), v16.data(), static_cast<int64_t>(v16.size()));
  for (size_t i = 0; i < k16.size(); ++i) kv[i] = static_cast<float>(half_value(k16[i]));
  for (size_t i = 0; i < v16.size(); ++i) vv[i] = static_cast<float>(half_value(v16[i]));

  const int64_t qw = c.n_head * c.hk, ow = c.n_head * c.hv;
  std::vector<float> out(static_cast<size_t>(c.n_tok * ow), NAN);
  ops::attention(a, q.data(), qw, c.n_tok, c.pos0, k16.data(), v16.data(), ctx, out.data(), ow, scratch, par);
  for (int64_t i = 0; i < c.n_tok; ++i) {
    const int64_t p = c.pos0 + i, lo = c.n_swa > 0 ? std::max<int64_t>(0, p - c.n_swa + 1) : 0;
    for (int64_t h = 0; h < c.n_head; ++h) {
      const int64_t g = h / (c.n_head / c.n_head_kv);
      const float* qh = q.data() + i * qw + h * c.hk;
      std::vector<double> s;
      double eps = 0, vmax = 0;
      for (int64_t j = lo; j <= p; ++j) {
        const float* kj = kv.data() + (g * ctx + j) * c.hk;
        double d = 0, mag = 0;
        for (int64_t e = 0; e < c.hk; ++e) d += static_cast<double>(qh[e]) * kj[e], mag += std::fabs(qh[e] * kj[e]);
        d *= scale;
        if (c.softcap > 0) d = c.softcap * std::tanh(d / c.softcap);
        s.push_back(d);
        eps = std::max(eps, 0x1.0p-11 * scale * mag);
        for (int64_t e = 0; e < c.hv; ++e) vmax = std::max(vmax, std::fabs(static_cast<double>(vv[(g * ctx + j) * c.hv + e])));
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (auto& x : s) sum += (x = std::exp(x - mx));
      const double bound = vmax * (std::expm1(2 * eps) + 0x1.0p-10) + 1e-6;
      for (int64_t e = 0; e < c.hv; ++e) {
        double ref = 0;
        for (int64_t j = lo; j <= p; ++j) ref += s[static_cast<size_t>(j - lo)] / sum * vv[(g * ctx + j) * c.hv + e];
        CHECK(std::fabs(out[i * ow + h * c.hv + e] - ref) <= bound);
      }
    }
  }
}

}  // namespace

TEST_CASE("ops: attention against double: prefill and decode, groups, sliding window, soft-cap, chunks") {
  ThreadPool pool(2);
  ops::AttentionScratch scratch;
  const AttnCase cases[] = {
      // n_head kv  hk   hv  swa pos0 n_tok softcap
      {4, 2, 64, 64, 0, 0, 23, 0.0f},     // prefill from position 0, blocks of 4 and a tail
      {4, 2, 64, 64, 0, 9, 13, 0.0f},     // a later prefill chunk over cached positions
      {3, 1, 48, 48, 5, 0, 17, 0.0f},     // sliding window, one KV head for three
      {8, 2, 64, 32, 7, 20, 6, 0.0f},     // window cutting into the cached part; hv != hk
      {2, 2, 128, 128, 0, 4, 9, 50.0f},   // soft-capped scores (gemma2)
      {2, 2, 128, 128, 3, 30, 1, 10.0f},  // decode, window and cap together
      {4, 4, 64, 64, 0, 15, 2, 0.0f},     // two queries: the decode path
      {4, 1, 32, 32, 4, 40, 1, 0.0f},     // decode in a short window, far into the cache
  };
  uint64_t seed = 10;
  for (const AttnCase& c : cases) {
    CAPTURE(c.hk);
    CAPTURE(c.n_swa);
    CAPTURE(c.pos0);
    CAPTURE(c.n_tok);
    check_attention(c, pool.parallel(), scratch, seed++);
    check_attention(c, ParallelFor{}, scratch, seed++);
  }
}
