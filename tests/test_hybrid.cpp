// Hybrid models (lfm2's short-convolution layers mixed with attention; smollm3's NoPE layers):
// the convolution against a double reference, the recurrent state store and its checkpoints,
// load-time refusal of inconsistent files, and, on ../shared/models/synthetic/syn-lfm2-*, the
// Session's promises: a multi-turn chat evaluates only each turn's new tokens and gives the
// logits of evaluating the whole conversation at once; save / load of the state; context
// shift; memory_estimate against what a context allocates; chat prompts tokenize to
// llama.cpp's eval_tokens. (Logits and greedy ids against llama.cpp: test_forward.)
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "json.hpp"
#include "model_builder.hpp"
#include "state_test_helpers.hpp"
#include "test_support.hpp"
#include "tinyslm.hpp"

using namespace tinyslm;
using tinyslm_test::Json;

namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

using tinyslm_test::fresh_logits;
using tinyslm_test::greedy;
using tinyslm_test::rel_diff;
using tinyslm_test::random_floats;

}  // namespace

TEST_CASE("conv: a chunked, threaded short convolution equals a double reference over the whole sequence") {
  const int64_t E = 40, L = 4, T = 11;  // 40 channels: split unevenly over threads
  const auto w = random_floats(static_cast<size_t>(E * L), 1);
  const auto input = random_floats(static_cast<size_t>(T * 3 * E), 2);  // rows [b | c | x]
  // Reference: u = b * x with zeros before the sequence; y = c * sum_k w[k] u[t - L + 1 + k].
  std::vector<double> ref(static_cast<size_t>(T * E));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t ch = 0; ch < E; ++ch) {
      double acc = 0;
      for (int64_t k = 0; k < L; ++k) {
        const int64_t j = t - (L - 1) + k;
        if (j < 0) continue;
        const float* row = input.data() + j * 3 * E;
        acc += static_cast<double>(w[static_cast<size_t>(ch * L + k)]) * row[ch] * row[2 * E + ch];
      }
      ref[static_cast<size_t>(t * E + ch)] = acc * input[static_cast<size_t>(t * 3 * E + E + ch)];
    }
  ThreadPool pool(3);
  for (const std::vector<int64_t>& chunks : {std::vector<int64_t>{11}, {1, 1, 1, 8}, {5, 1, 2, 3}, {2, 9}}) {
    for (int threads : {1, 3}) {
      CAPTURE(threads);
      std::vector<float> bcx = input, state(static_cast<size_t>((L - 1) * E), 0.0f), out(static_cast<size_t>(T * E));
      const ParallelFor par = threads > 1 ? pool.parallel() : ParallelFor{};
      int64_t t0 = 0;
      for (int64_t n : chunks) {
        short_conv(bcx.data() + t0 * 3 * E, 3 * E, n, E, L, w.data(), state.data(), out.data() + t0 * E, E, par);
        t0 += n;
      }
      REQUIRE(t0 == T);
      double worst = 0;
      for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::fabs(out[i] - ref[i]));
      CHECK(worst < 1e-5);
      // The state holds the last L - 1 values of u.
      for (int64_t r = 0; r < L - 1; ++r)
        for (int64_t ch = 0; ch < E; ++ch) {
          const float* row = input.data() + (T - (L - 1) + r) * 3 * E;
          CHECK(state[static_cast<size_t>(r * E + ch)] == doctest::Approx(row[ch] * row[2 * E + ch]));
        }
    }
  }
}

TEST_CASE("state: checkpoints restore exactly, the lowest position is replaced, position 0 is the zero state") {
  const std::vector<int64_t> sizes = {6, 0, 4};
  auto s = RecurrentState::create(sizes, 2);
  REQUIRE(s);
  CHECK(s->floats() == 10);
  CHECK(s->layer(1) == nullptr);
  CHECK(s->bytes() == RecurrentState::bytes_for(sizes, 2));
  auto fill = [&](float v) { for (float& x : s->live()) x = v; };
  fill(1.0f);
  s->checkpoint(5);
  fill(2.0f);
  s->checkpoint(9);
  fill(3.0f);
  s->checkpoint(12);  // replaces the checkpoint at 5
  CHECK(s->restorable(11) == 9);
  CHECK(s->restorable(8) == 0);
  CHECK(s->restorable(100) == 12);
  auto bad = s->restore(7);
  REQUIRE(!bad);
  CHECK(contains(bad.error().message(), "position 7"));
  REQUIRE(s->restore(9));
  for (float x : s->live()) CHECK(x == 2.0f);
  CHECK(s->restorable(100) == 9);  // the later checkpoint is gone
  REQUIRE(s->restore(0));
  for (float x : s->live()) CHECK(x == 0.0f);
  auto none = RecurrentState::create(std::vector<int64_t>{0, 0}, 4);
  REQUIRE(none);
  CHECK(none->empty());
  CHECK(none->bytes() == 0);
  CHECK(RecurrentState::bytes_for(std::vector<int64_t>{0, 0}, 4) == 0);
}

TEST_CASE("hybrid: inconsistent lfm2 files are refused at load, naming the key or tensor") {
  auto load_error = [](const tinyslm_test::ModelSpec& spec) {
    const auto bytes = tinyslm_test::model_bytes(spec);
    REQUIRE(!bytes.empty());
    auto m = tinyslm_test::load_model(bytes);
    REQUIRE(!m);
    return m.error().message();
  };
  const auto base = tinyslm_test::tiny_spec("lfm2", TensorType::Q8_0);
  {
    auto m = tinyslm_test::load_model(tinyslm_test::model_bytes(base));
    REQUIRE(m);
    const HParams& hp = m->hparams();
    CHECK(hp.layers[0].kind == LayerKind::short_conv);
    CHECK(hp.layers[1].kind == LayerKind::attention);
    CHECK(hp.layers[1].kv_layer == 0);
    CHECK(hp.n_kv_layers() == 1);
  }
  auto s = base;
  s.omit_tensor = "blk.2.shortconv.in_proj.weight";
  CHECK(contains(load_error(s), "blk.2.shortconv.in_proj.weight"));
  s = base;
  s.omit_tensor = "blk.1.attn_k.weight";  // an attention layer of the pattern
  CHECK(contains(load_error(s), "blk.1.attn_k.weight"));
  s = base;
  s.conv_kernel_key = 4;  // the kernel tensor is 3 wide
  std::string e = load_error(s);
  CHECK(contains(e, "blk.0.shortconv.conv.weight"));
  CHECK(contains(e, "l_cache 4"));
  s = base;
  s.conv_kernel_key = 1;
  CHECK(contains(load_error(s), "lfm2.shortconv.l_cache"));
  s = base;
  s.layer_head_kv = {0, 2};  // 2 entries, 3 layers
  CHECK(contains(load_error(s), "lfm2.attention.head_count_kv"));
  s = base;
  s.layer_head_kv = {0, 3, 0};  // 3 does not divide 4 heads
  CHECK(contains(load_error(s), "lfm2.attention.head_count_kv"));
  s = base;
  s.layer_head_kv = {0, 0, 0};
  CHECK(contains(load_error(s), "no attention layer"));
  s = base;
  s.layer_head_kv.clear();  // a scalar head_count_kv: no convolution layers named
  CHECK(contains(load_error(s), "per-layer array"));
}

TEST_CASE("hybrid: smollm3 runs layers (il + 1) % 4 == 0 without RoPE") {
  auto m = tinyslm_test::load_model(tinyslm_test::model_bytes(tinyslm_test::tiny_spec("smollm3", TensorType::F32)));
  REQUIRE(m);
  const auto& L = m->hparams().layers;
  REQUIRE(L.size() == 4);
  CHECK(L[0].rope);
  CHECK(L[1].rope);
  CHECK(L[2].rope);
  CHECK(!L[3].rope);
  CHECK(m->hparams().arch.rope == RopeStyle::normal);
}

TEST_CASE("hybrid: a multi-turn session on syn-lfm2 evaluates only new tokens and matches a fresh evaluation" *
          doctest::test_suite("shared")) {
  TINYSLM_REQUIRE_SHARED(path, "models/synthetic/syn-lfm2-F32.gguf");
  auto m = Model::open(path);
  REQUIRE(m);
  auto s = Session::create(*m, {.context = 2048});
  REQUIRE(s);
  const std::vector<int32_t> a = {1025, 300, 301, 302, 40, 41, 42, 43, 44, 45, 500, 600};
  const std::vector<int32_t> b = {1026, 700, 701, 702, 703, 10, 11};
  auto r1 = s->generate_ids(a, greedy(6));
  REQUIRE(r1);
  CHECK(r1->stats.prompt_evaluated == static_cast<int64_t>(a.size()));
  // Turn 2: the conversation so far (prompt, the whole reply), then the new message.
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
  // The same prompt again (regenerate): only its last token, from the checkpoint before it.
  auto r3 = s->generate_ids(p2, greedy(3));
  REQUIRE(r3);
  CHECK(r3->stats.prompt_evaluated == 1);
  REQUIRE(s->prefill(p2));
  CHECK(rel_diff(fresh2, s->last_logits()) < 1e-4);
  // A prompt that leaves the conversation inside turn 1: restarts from the latest checkpoint
  // at or before the shared prefix (here none is left: from the start).
  std::vector<int32_t> p4(a.begin(), a.begin() + 5);
  p4.insert(p4.end(), b.begin(), b.end());
  auto r4 = s->generate_ids(p4, greedy(0));
  REQUIRE(r4);
  CHECK(r4->stats.prompt_reused + r4->stats.prompt_evaluated == static_cast<int64_t>(p4.size()));
  CHECK(rel_diff(fresh_logits(*m, p4), s->last_logits()) < 1e-4);
}

TEST_CASE("hybrid: a Chat of several turns on syn-lfm2 reuses every earlier turn" * doctest::test_suite("shared")) {
  TINYSLM_REQUIRE_SHARED(path, "models/synthetic/syn-lfm2-Q8_0.gguf");
  auto m = Model::open(path);
  REQUIRE(m);
  auto s = Session::create(*m, {.context = 2048});
  REQUIRE(s);
  Chat chat(*s, "You are terse.");
  int64_t prev_prompt = 0;
  for (const char* msg : {"Hello there!", "What is 2 + 2?", "And three times that?"}) {
    CAPTURE(std::string(msg));
    auto r = chat.send(msg, greedy(5));
    REQUIRE_MESSAGE(r, (r ? "" : r.error().message()));
    const GenerateStats& st = r->stats;
    CHECK(st.prompt_reused + st.prompt_evaluated == st.prompt_tokens);
    CHECK(st.prompt_reused >= prev_prompt);  // at least the whole previous prompt
    prev_prompt = st.prompt_tokens;
  }
  // The last prompt evaluated at once gives the same logits.
  auto text = chat.render();
  REQUIRE(text);
  auto ids = s->tokenize(*text);
  REQUIRE(ids);
  REQUIRE(s->prefill(*ids));
  const auto cached = std::vector<float>(s->last_logits().begin(), s->last_logits().end());
  CHECK(rel_diff(fresh_logits(*m, *ids), cached) < 2e-3);
}

TEST_CASE("hybrid: drop_messages on syn-lfm2 keeps the conversation consistent" * doctest::test_suite("shared")) {
  TINYSLM_REQUIRE_SHARED(path, "models/synthetic/syn-lfm2-F32.gguf");
  auto m = Model::open(path);
  REQUIRE(m);
  auto s = Session::create(*m, {.context = 96, .overflow = OverflowPolicy::drop_messages});
  REQUIRE(s);
  Chat chat(*s, "Be brief.");
  for (int turn = 0; turn < 6; ++turn) {
    auto r = chat.send("Tell me something new about turn number " + std::to_string(turn) + ".", greedy(8));
    REQUIRE_MESSAGE(r, (r ? "" : r.error().message()));
  }
  CHECK(chat.dropped_messages() > 0);
  // What the cache holds gives the logits of evaluating it from scratch.
  const std::vector<int32_t> cached(s->tokens().begin(), s->tokens().end());
  CHECK(rel_diff(fresh_logits(*m, cached), s->last_logits()) < 1e-4);
}

TEST_CASE("hybrid: save_state / load_state carry the convolution state" * doctest::test_suite("shared")) {
  TINYSLM_REQUIRE_SHARED(path, "models/synthetic/syn-lfm2-F32.gguf");
  auto m = Model::open(path);
  REQUIRE(m);
  auto s2 = Session::create(*m, {.context = 512});
  REQUIRE(s2);
  const std::vector<uint8_t> state = tinyslm_test::check_state_round_trip(*m, *s2);
  // A state of the wrong size (cut inside the convolution state) is refused unchanged.
  std::vector<uint8_t> cut(state.begin(), state.end() - 12);
  const int64_t n_before = s2->n_past();
  CHECK(n_before == 16);  // 13 prompt tokens and 4 generated, the last not evaluated
  auto bad = s2->load_state(cut);
  REQUIRE(!bad);
  CHECK(s2->n_past() == n_before);
  // A state whose convolution part was changed fails the checksum.
  std::vector<uint8_t> flipped = state;
  flipped[flipped.size() - 20] ^= 1;
  CHECK(!s2->load_state(flipped));
}

TEST_CASE("hybrid: context shift on syn-lfm2 re-evaluates from a valid state" * doctest::test_suite("shared")) {
  TINYSLM_REQUIRE_SHARED(path, "models/synthetic/syn-lfm2-Q4_K_M.gguf");
  auto m = Model::open(path);
  REQUIRE(m);
  auto s = Session::create(*m, {.context = 32, .batch = 8, .overflow = OverflowPolicy::shift, .keep = 1});
  REQUIRE(s);
  const std::vector<int32_t> a = {1025, 300, 301, 302, 40, 41, 42, 43, 44, 45};
  auto r = s->generate_ids(a, greedy(60));
  REQUIRE(r);
  CHECK(r->stats.shifts > 0);
  CHECK(r->ids.size() == 60);
  // The last evaluated token's logits equal a fresh evaluation of the tokens now cached.
  const std::vector<int32_t> cached(s->tokens().begin(), s->tokens().end());
  std::vector<float> ours(s->last_logits().begin(), s->last_logits().end());
  CHECK(rel_diff(fresh_logits(*m, cached), ours) < 2e-2);
}

TEST_CASE("hybrid: memory_estimate counts the state a context allocates" * doctest::test_suite("shared")) {
  TINYSLM_REQUIRE_SHARED(path, "models/synthetic/syn-lfm2-Q8_0.gguf");
  auto f = GgufFile::open(path);
  REQUIRE(f);
  auto est = memory_estimate(*f, 1024);
  REQUIRE(est);
  auto m = Model::open(path);
  REQUIRE(m);
  auto ctx = Context::create(*m, {.n_ctx = 1024});
  REQUIRE(ctx);
  const HParams& hp = m->hparams();
  CHECK(hp.conv_kernel == 3);
  CHECK(est->state > 0);
  CHECK(est->state == ctx->state().bytes());
  // 3 convolution layers x (L - 1) rows x n_embd, live plus 4 checkpoints.
  CHECK(est->state == 4ull * 3 * 2 * 256 * 5);
  CHECK(est->kv_cache == ctx->kv().bytes());  // one attention layer's cache
  CHECK(est->kv_cache == 1ull * 1024 * 2 * (64 + 64) * 2);
}

TEST_CASE("hybrid: chat prompts of syn-lfm2 and syn-smollm3 tokenize to llama.cpp's eval_tokens" *
          doctest::test_suite("shared")) {
  for (const char* arch : {"lfm2", "smollm3"}) {
    CAPTURE(std::string(arch));
    TINYSLM_REQUIRE_SHARED(path, std::string("models/synthetic/syn-") + arch + "-Q8_0.gguf");
    TINYSLM_REQUIRE_SHARED(gpath, std::string("golden/synthetic/syn-") + arch + "-Q8_0.json");
    auto m = Model::open(path);
    REQUIRE(m);
    auto s = Session::create(*m, {.context = 512});
    REQUIRE(s);
    const Json g = Json::parse(tinyslm_test::read_text(gpath));
    int chats = 0;
    for (const Json& p : g["prompts"].items()) {
      if (p["kind"].as_string() != "chat") continue;
      ++chats;
      std::vector<ChatMessage> msgs;
      for (const Json& e : p["messages"].items()) msgs.push_back({e["role"].as_string(), e["content"].as_string()});
      auto text = s->chat_template().apply(msgs, true);
      REQUIRE(text);
      CHECK(*text == p["text"].as_string());  // rendered, minus the BOS text the tokenizer adds
      auto ids = s->tokenize(*text);
      REQUIRE(ids);
      CHECK(*ids == p["eval_tokens"].int_list());
    }
    CHECK(chats == 3);
  }
}
