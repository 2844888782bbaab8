// Gated DeltaNet (qwen35): the delta rule against a double-precision reference written from
// the formula (state S[i][j], key index first, not our transposed layout), and on
// ../shared/models/synthetic/syn-qwen35-*: a multi-turn session evaluates only new tokens and
// matches a fresh evaluation, save_state / load_state carry the recurrent state, and files
// whose metadata disagrees with the tensors are refused naming the key or tensor.
// (Logits and greedy ids against llama.cpp: test_forward.)
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "model_builder.hpp"
#include "state_test_helpers.hpp"
#include "test_support.hpp"
#include "tinyslm.hpp"

using namespace tinyslm;

namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

using tinyslm_test::fresh_logits;
using tinyslm_test::greedy;
using tinyslm_test::rel_diff;
using tinyslm_test::random_floats;

// The file's bytes with every occurrence of `from` replaced by `to` (same length).
std::vector<uint8_t> patched(const std::vector<unsigned char>& bytes, const std::string& from, const std::string& to) {
  REQUIRE(from.size() == to.size());
  std::vector<uint8_t> out(bytes.begin(), bytes.end());
  int found = 0;
  for (size_t i = 0; i + from.size() <= out.size(); ++i)
    if (std::memcmp(out.data() + i, from.data(), from.size()) == 0) {
      std::memcpy(out.data() + i, to.data(), to.size());
      ++found;
    }
  REQUIRE(found > 0);
  return out;
}

// The u32 value of metadata key `key` (a GGUF string: u64 length, bytes, then u32 type 4).
std::vector<uint8_t> with_u32(const std::vector<unsigned char>& bytes, const std::string& key, uint32_t v) {
  std::vector<uint8_t> out(bytes.begin(), bytes.end());
  for (size_t i = 8; i + key.size() + 8 <= out.size(); ++i)
    if (std::memcmp(out.data() + i, key.data(), key.size()) == 0 && out[i - 8] == key.size()) {
      uint32_t type = 0;
      std::memcpy(&type, out.data() + i + key.size(), 4);
      REQUIRE(type == 4);  // GGUF u32
      std::memcpy(out.data() + i + key.size() + 4, &v, 4);
      return out;
    }
  FAIL("key not found: " << key);
  return out;
}

std::string load_error(const std::vector<uint8_t>& bytes) {
  auto m = tinyslm_test::load_model(bytes, "syn-qwen35.gguf");
  REQUIRE(!m);
  return m.error().message();
}

}  // namespace

TEST_CASE("deltanet: the recurrence equals the delta rule in double precision") {
  const DeltaNetShape s{8, 2, 4, 4};  // d 8, 2 K heads, 4 V heads (tiled: V head h uses K head h % 2)
  const int64_t n = 7, d = s.d_state, C = s.channels(), H = s.n_v_heads;
  auto qkv = random_floats(static_cast<size_t>(n * C), 1, -1, 1);
  for (int64_t t = 0; t < n; ++t)  // q and k unit vectors, as the layer leaves them
    for (int64_t h = 0; h < 2 * s.n_k_heads; ++h) {
      float* x = qkv.data() + t * C + h * d;
      double ss = 0;
      for (int64_t i = 0; i < d; ++i) ss += static_cast<double>(x[i]) * x[i];
      for (int64_t i = 0; i < d; ++i) x[i] = static_cast<float>(x[i] / std::sqrt(ss));
    }
  std::vector<float> ba(static_cast<size_t>(n * 2 * H));
  const auto beta = random_floats(static_cast<size_t>(n * H), 2, 0.05, 0.95);
  const auto g = random_floats(static_cast<size_t>(n * H), 3, -1.5, -0.01);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < H; ++h) {
      ba[static_cast<size_t>(t * 2 * H + h)] = beta[static_cast<size_t>(t * H + h)];
      ba[static_cast<size_t>(t * 2 * H + H + h)] = g[static_cast<size_t>(t * H + h)];
    }
  const auto s0 = random_floats(static_cast<size_t>(H * d * d), 4, -0.5, 0.5);  // M[h][j][i] = S[i][j]
  const std::vector<float> in = qkv;
  std::vector<float> M = s0;
  for (int64_t h = 0; h < H; ++h) delta_net_recurrence(s, h, qkv.data(), C, ba.data(), 2 * H, n, M.data() + h * d * d);
  for (int64_t h = 0; h < H; ++h) {
    CAPTURE(h);
    std::vector<double> S(static_cast<size_t>(d * d));  // S[i * d + j]
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j < d; ++j) S[static_cast<size_t>(i * d + j)] = s0[static_cast<size_t>(h * d * d + j * d + i)];
    for (int64_t t = 0; t < n; ++t) {
      const float* q = in.data() + t * C + (h % s.n_k_heads) * d;
      const float* k = q + s.key_dim();
      const float* v = in.data() + t * C + 2 * s.key_dim() + h * d;
      const double b = beta[static_cast<size_t>(t * H + h)], decay = std::exp(double(g[static_cast<size_t>(t * H + h)]));
      for (auto& x : S) x *= decay;
      std::vector<double> u(static_cast<size_t>(d));  // beta (v - S^T k)
      for (int64_t j = 0; j < d; ++j) {
        double sk = 0;
        for (int64_t i = 0; i < d; ++i) sk += S[static_cast<size_t>(i * d + j)] * k[i];
        u[static_cast<size_t>(j)] = b * (v[j] - sk);
      }
      for (int64_t i = 0; i < d; ++i)
        for (int64_t j = 0; j < d; ++j) S[static_cast<size_t>(i * d + j)] += k[i] * u[static_cast<size_t>(j)];
      for (int64_t j = 0; j < d; ++j) {
        double o = 0;
        for (int64_t i = 0; i < d; ++i) o += S[static_cast<size_t>(i * d + j)] * q[i];
        o /= std::sqrt(static_cast<double>(d));
        CHECK(std::fabs(qkv[static_cast<size_t>(t * C + 2 * s.key_dim() + h * d + j)] - o) < 1e-5);
      }
    }
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j < d; ++j)
        CHECK(std::fabs(M[static_cast<size_t>(h * d * d + j * d + i)] - S[static_cast<size_t>(i * d + j)]) < 1e-5);
  }
}

TEST_CASE("deltanet: the chunked form equals the token-by-token rule") {
  for (const DeltaNetShape s : {DeltaNetShape{16, 2, 4, 4}, DeltaNetShape{32, 1, 2, 4}}) {
    for (const int64_t n : {int64_t{1}, int64_t{9}, int64_t{64}, int64_t{150}}) {
      CAPTURE(s.d_state);
      CAPTURE(n);
      const int64_t d = s.d_state, C = s.channels(), H = s.n_v_heads;
      auto qkv = random_floats(static_cast<size_t>(n * C), 10 + static_cast<uint64_t>(n), -1, 1);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t h = 0; h < 2 * s.n_k_heads; ++h) {
          float* x = qkv.data() + t * C + h * d;
          double ss = 0;
          for (int64_t i = 0; i < d; ++i) ss += static_cast<double>(x[i]) * x[i];
          for (int64_t i = 0; i < d; ++i) x[i] = static_cast<float>(x[i] / std::sqrt(ss));
        }
      auto ba = random_floats(static_cast<size_t>(n * 2 * H), 20, 0.05, 0.95);
      const auto g = random_floats(static_cast<size_t>(n * H), 30, -2.0, -0.001);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t h = 0; h < H; ++h) ba[static_cast<size_t>(t * 2 * H + H + h)] = g[static_cast<size_t>(t * H + h)];
      const auto s0 = random_floats(static_cast<size_t>(H * d * d), 40, -0.5, 0.5);
      std::vector<float> a = qkv, b = qkv, Ma = s0, Mb = s0;
      std::vector<float> scratch(static_cast<size_t>(delta_net_scratch_floats(s)));
      for (int64_t h = 0; h < H; ++h) {
        delta_net_recurrence(s, h, a.data(), C, ba.data(), 2 * H, n, Ma.data() + h * d * d);
        delta_net_chunked(s, h, b.data(), C, ba.data(), 2 * H, n, Mb.data() + h * d * d, scratch.data());
      }
      double out_err = 0, state_err = 0;
      for (size_t i = 0; i < a.size(); ++i) out_err = std::max(out_err, std::fabs(double(a[i]) - b[i]));
      for (size_t i = 0; i < Ma.size(); ++i) state_err = std::max(state_err, std::fabs(double(Ma[i]) - Mb[i]));
      CHECK(out_err < 2e-5);
      CHECK(state_err < 2e-5);
    }
  }
}

TEST_CASE("deltanet: a prompt in one batch (chunked) gives the logits of token-by-token decode" *
          doctest::test_suite("shared")) {
  TINYSLM_REQUIRE_SHARED(path, "models/synthetic/syn-qwen35-F32.gguf");
  auto m = Model::open(path);
  REQUIRE(m);
  std::vector<int32_t> ids;
  for (int i = 0; i < 150; ++i) ids.push_back(static_cast<int32_t>((i * 37 + 11) % 1024));
  for (const int threads : {1, 2}) {
    CAPTURE(threads);
    auto batch = Context::create(*m, {.n_ctx = 512, .n_threads = threads, .n_batch = 512, .all_logits = true});
    auto step = Context::create(*m, {.n_ctx = 512, .n_threads = 1});
    REQUIRE(batch);
    REQUIRE(step);
    REQUIRE(batch->eval(ids));
    for (size_t i = 0; i < ids.size(); ++i) {
      auto lg = step->eval(std::span<const int32_t>(&ids[i], 1));
      REQUIRE(lg);
      if (i % 10 == 9 || i + 1 == ids.size()) {
        CAPTURE(i);
        CHECK(rel_diff(*lg, batch->logits(static_cast<int64_t>(i))) < 1e-4);
      }
    }
  }
}

TEST_CASE("deltanet: a tiny qwen35: the plan, the RoPE sections, a missing tensor refused by name") {
  const auto spec = tinyslm_test::tiny_spec("qwen35", TensorType::Q8_0);
  auto m = tinyslm_test::load_model(tinyslm_test::model_bytes(spec));
  REQUIRE_MESSAGE(m, (m ? "" : m.error().message()));
  const HParams& hp = m->hparams();
  CHECK(hp.layers[0].kind == LayerKind::delta_net);
  CHECK(hp.layers[3].kind == LayerKind::attention);
  // Sections [3, 3, 2, 2] over 16 pairs: sector i % 10; sectors 8 (past 3 x 2 of the third)
  // and 9 (the fourth) take the fourth position, 0 for text.
  const std::vector<uint8_t> want = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1};
  CHECK(hp.rope_pair_pos == want);
  for (const char* t : {"blk.0.ssm_conv1d.weight", "blk.2.ssm_norm.weight", "blk.1.attn_gate.weight",
                        "blk.3.attn_k_norm.weight", "blk.0.post_attention_norm.weight"}) {
    auto s = spec;
    s.omit_tensor = t;
    auto bad = tinyslm_test::load_model(tinyslm_test::model_bytes(s));
    REQUIRE(!bad);
    CHECK(contains(bad.error().message(), t));
  }
}

TEST_CASE("deltanet: syn-qwen35's plan, state size and memory estimate" * doctest::test_suite("shared")) {
  TINYSLM_REQUIRE_SHARED(path, "models/synthetic/syn-qwen35-F32.gguf");
  auto m = Model::open(path);
  REQUIRE(m);
  const HParams& hp = m->hparams();
  REQUIRE(hp.layers.size() == 4);
  for (int il = 0; il < 3; ++il) CHECK(hp.layers[static_cast<size_t>(il)].kind == LayerKind::delta_net);
  CHECK(hp.layers[3].kind == LayerKind::attention);
  CHECK(hp.layers[3].attn_gate);
  CHECK(hp.n_kv_layers() == 1);
  // conv: (4 - 1) x (2 x 2 x 32 + 4 x 32) channels; S: 4 heads x 32 x 32.
  CHECK(hp.state_floats(0) == 3 * 256 + 4 * 32 * 32);
  CHECK(hp.state_floats(3) == 0);
  // Multi-section RoPE over 8 pairs, sections [3, 3, 2, 0]: every pair rotates by position.
  CHECK(hp.rope_pair_pos == std::vector<uint8_t>(8, 1));
  // memory_estimate: 3 DeltaNet layers' state, live plus 4 checkpoints, as a context allocates.
  auto f = GgufFile::open(path);
  REQUIRE(f);
  auto est = memory_estimate(*f, 1024);
  REQUIRE(est);
  auto ctx = Context::create(*m, {.n_ctx = 1024});
  REQUIRE(ctx);
  CHECK(est->state == 4ull * 3 * (3 * 256 + 4 * 32 * 32) * 5);
  CHECK(est->state == ctx->state().bytes());
}

TEST_CASE("deltanet: a multi-turn session on syn-qwen35 evaluates only new tokens and matches a fresh evaluation" *
          doctest::test_suite("shared")) {
  TINYSLM_REQUIRE_SHARED(path, "models/synthetic/syn-qwen35-F32.gguf");
  auto m = Model::open(path);
  REQUIRE(m);
  auto s = Session::create(*m, {.context = 2048});
  REQUIRE(s);
  const std::vector<int32_t> a = {1025, 300, 301, 302, 40, 41, 42, 43, 44, 45, 500, 600};
  const std::vector<int32_t> b = {1026, 700, 701, 702, 703, 10, 11};
  auto r1 = s->generate_ids(a, greedy(6));
  REQUIRE(r1);
  CHECK(r1->stats.prompt_evaluated == static_cast<int64_t>(a.size()));
  std::vector<int32_t> p2 = a;
  p2.insert(p2.end(), r1->ids.begin(), r1->ids.end());
  p2.insert(p2.end(), b.begin(), b.end());
  auto r2 = s->generate_ids(p2, greedy(0));
  REQUIRE(r2);
  // The reply's last token was sampled but never evaluated: it is new, with b.
  CHECK(r2->stats.prompt_reused == static_cast<int64_t>(a.size() + r1->ids.size() - 1));
  CHECK(r2->stats.prompt_evaluated == static_cast<int64_t>(b.size() + 1));
  const auto fresh2 = fresh_logits(*m, p2);
  CHECK(rel_diff(fresh2, s->last_logits()) < 1e-4);
  auto r3 = s->generate_ids(p2, greedy(3));  // regenerate: only the last token again
  REQUIRE(r3);
  CHECK(r3->stats.prompt_evaluated == 1);
  REQUIRE(s->prefill(p2));
  CHECK(rel_diff(fresh2, s->last_logits()) < 1e-4);
}

TEST_CASE("deltanet: a Chat of several turns on syn-qwen35 restarts each turn where the last one's messages end" *
          doctest::test_suite("shared")) {
  TINYSLM_REQUIRE_SHARED(path, "models/synthetic/syn-qwen35-F32.gguf");
  auto m = Model::open(path);
  REQUIRE(m);
  auto s = Session::create(*m, {.context = 2048});
  REQUIRE(s);
  // Qwen3.5's template renders the latest reply after "<think>\n\n</think>\n\n" and earlier
  // replies without it, so a turn's prompt agrees with the previous one only up to the end of
  // the previous messages (before "<|im_start|>assistant\n<think>\n"): the checkpoint Chat
  // asks for there is where each turn restarts; the rest is new to the prompt.
  Chat chat(*s, "You are terse.");
  std::vector<ChatMessage> history = {{"system", "You are terse."}};
  int64_t prev_messages_end = 0;
  for (const char* msg : {"Hello there!", "What is 2 + 2?", "And three times that?"}) {
    CAPTURE(std::string(msg));
    auto r = chat.send(msg, greedy(5));
    REQUIRE_MESSAGE(r, (r ? "" : r.error().message()));
    const GenerateStats& st = r->stats;
    CHECK(st.prompt_reused + st.prompt_evaluated == st.prompt_tokens);
    CHECK(st.prompt_reused == prev_messages_end);
    history.push_back({"user", msg});
    auto head = s->chat_template().apply(history, false);
    REQUIRE(head);
    auto head_ids = s->tokenize(*head);
    REQUIRE(head_ids);
    prev_messages_end = static_cast<int64_t>(head_ids->size());
    history.push_back({"assistant", r->text});
  }
  CHECK(prev_messages_end > 40);  // the third turn reused the first two
  auto text = chat.render();
  REQUIRE(text);
  auto ids = s->tokenize(*text);
  REQUIRE(ids);
  REQUIRE(s->prefill(*ids));
  const auto cached = std::vector<float>(s->last_logits().begin(), s->last_logits().end());
  CHECK(rel_diff(fresh_logits(*m, *ids), cached) < 1e-4);
}

TEST_CASE("deltanet: save_state / load_state carry the recurrent state" * doctest::test_suite("shared")) {
  TINYSLM_REQUIRE_SHARED(path, "models/synthetic/syn-qwen35-Q8_0.gguf");
  auto m = Model::open(path);
  REQUIRE(m);
  auto s2 = Session::create(*m, {.context = 512});
  REQUIRE(s2);
  const std::vector<uint8_t> state = tinyslm_test::check_state_round_trip(*m, *s2);
  std::vector<uint8_t> flipped = state;  // a changed recurrent state fails the checksum
  flipped[flipped.size() - 20] ^= 1;
  CHECK(!s2->load_state(flipped));
}

TEST_CASE("deltanet: inconsistent qwen35 files are refused at load, naming the key or tensor" *
          doctest::test_suite("shared")) {
  TINYSLM_REQUIRE_SHARED(path, "models/synthetic/syn-qwen35-F32.gguf");
  const auto bytes = tinyslm_test::read_bytes(path);
  REQUIRE(tinyslm_test::load_model(std::vector<uint8_t>(bytes.begin(), bytes.end())));
  // A tensor of the layer pattern missing (renamed).
  CHECK(contains(load_error(patched(bytes, "blk.1.ssm_a", "blk.1.ssm_X")), "blk.1.ssm_a"));
  CHECK(contains(load_error(patched(bytes, "blk.3.attn_q.weight", "blk.3.attn_X.weight")), "blk.3.attn_q.weight"));
  // The pattern moved: layer 3 becomes DeltaNet, layer 1 attention; their tensors do not fit.
  CHECK(contains(load_error(with_u32(bytes, "qwen35.full_attention_interval", 2)), "blk.1."));
  // State sizes disagreeing with the tensors.
  CHECK(contains(load_error(with_u32(bytes, "qwen35.ssm.conv_kernel", 3)), "blk.0.ssm_conv1d.weight"));
  CHECK(contains(load_error(with_u32(bytes, "qwen35.ssm.time_step_rank", 2)), "qwen35.ssm.inner_size"));
  CHECK(contains(load_error(with_u32(bytes, "qwen35.ssm.group_count", 3)), "qwen35.ssm.time_step_rank"));
  CHECK(contains(load_error(with_u32(bytes, "qwen35.ssm.conv_kernel", 0)), "qwen35.ssm.conv_kernel"));
  CHECK(contains(load_error(patched(bytes, "qwen35.ssm.inner_size", "qwen35.ssm.inner_sizX")), "qwen35.ssm.inner_size"));
  CHECK(contains(load_error(patched(bytes, "qwen35.rope.dimension_sections", "qwen35.rope.dimension_sectionX")),
                 "qwen35.rope.dimension_sections"));
  CHECK(contains(load_error(with_u32(bytes, "qwen35.full_attention_interval", 9)), "no attention layer"));
}
