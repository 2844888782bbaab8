// Session layer: generate (prefix reuse, stop strings, cancellation, callbacks, context overflow),
// save / restore of the state, the Chat helper, memory_estimate.
//
// Golden: greedy generation on stories260K reproduces llama.cpp's greedy ids and text
// (../shared/golden/stories260K.json) for every prompt, byte for byte. Everything else is checked
// against a second session doing the same work the plain way (fresh evaluation).
#include <doctest/doctest.h>

#include <optional>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <unistd.h>
#include <string>
#include <vector>

#if defined(__GLIBC__) || defined(__linux__)
#include <malloc.h>
#endif

#include "json.hpp"
#include "test_support.hpp"
#include "tinyslm.hpp"

using namespace tinyslm;
using tinyslm_test::Json;

namespace {

const char* kStories = "models/stories260K.gguf";
const char* kSynthLlama3 = "models/synthetic/synth-llama3-tiny-F16.gguf";

GenerateOptions greedy(int32_t n) {
  GenerateOptions o;
  o.sampler.temperature = 0.0f;
  o.max_tokens = n;
  return o;
}

// Largest |a - b| relative to the range of a.
double rel_diff(std::span<const float> a, std::span<const float> b) {
  REQUIRE(a.size() == b.size());
  float lo = a[0], hi = a[0];
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    lo = std::min(lo, a[i]);
    hi = std::max(hi, a[i]);
    d = std::max(d, static_cast<double>(std::fabs(a[i] - b[i])));
  }
  return d / std::max(1e-6, static_cast<double>(hi - lo));
}

struct Loaded {
  Model model;
};

std::unique_ptr<Loaded> load(const char* rel) {
  const std::string path = tinyslm_test::shared_file(rel);
  if (path.empty()) return nullptr;
  auto m = Model::open(path);
  REQUIRE_MESSAGE(m, rel << ": " << (m ? "" : m.error().message()));
  return std::make_unique<Loaded>(Loaded{std::move(*m)});
}

Session make_session(const Model& m, SessionParams p = {}) {
  auto s = Session::create(m, p);
  REQUIRE_MESSAGE(s, (s ? "" : s.error().message()));
  return std::move(*s);
}

const char* kStory = "Once upon a time, there was a little girl named Lily. She";

}  // namespace

TEST_CASE("session: greedy generation reproduces llama.cpp's golden text (stories260K)" * doctest::test_suite("shared")) {
  auto L = load(kStories);
  const std::string gpath = tinyslm_test::shared_file("golden/stories260K.json");
  if (!L || gpath.empty()) return;
  const Json g = Json::parse(tinyslm_test::read_text(gpath));
  Session s = make_session(L->model, {.context = 2048, .threads = 1});
  const int n_gen = static_cast<int>(g["settings"]["n_gen"].as_int());
  int matched = 0;
  for (const Json& p : g["prompts"].items()) {
    const std::string id = p["id"].as_string();
    const std::string text = p["text"].as_string();
    auto toks = s.tokenize(text);
    REQUIRE(toks);
    CHECK_MESSAGE(*toks == p["eval_tokens"].int_list(), id);
    s.reset();
    std::string streamed;
    auto r = s.generate(text, greedy(n_gen), [&](std::string_view piece) {
      streamed += piece;
      return true;
    });
    REQUIRE_MESSAGE(r, id << ": " << (r ? "" : r.error().message()));
    const auto want_ids = p["greedy"]["tokens"].int_list();
    CHECK_MESSAGE(r->ids == want_ids, id);
    CHECK_MESSAGE(r->text == p["greedy"]["text"].as_string(), id);
    CHECK(streamed == r->text);
    CHECK(r->stop == (p["greedy"]["stopped_on_eog"].as_bool() ? StopReason::eog : StopReason::max_tokens));
    CHECK(r->stats.prompt_tokens == static_cast<int64_t>(toks->size()));
    CHECK(r->stats.prompt_evaluated == static_cast<int64_t>(toks->size()));
    CHECK(r->stats.generated == static_cast<int64_t>(r->ids.size()));
    if (r->ids == want_ids && r->text == p["greedy"]["text"].as_string()) ++matched;
  }
  MESSAGE("golden greedy prompts matched: " << matched << " of " << g["prompts"].size());
}

TEST_CASE("session: prompts tokenize as llama.cpp evaluated them (chat prompts of the synthetic models)" * doctest::test_suite("shared")) {
  for (const char* stem : {"synth-llama3-tiny-F16", "synth-gemma3-tiny-F16", "synth-phi3-tiny-F16",
                           "synth-qwen2-tiny-F16", "synth-qwen3-tiny-F16"}) {
    auto L = load((std::string("models/synthetic/") + stem + ".gguf").c_str());
    const std::string gpath = tinyslm_test::shared_file(std::string("golden/") + stem + ".json");
    if (!L || gpath.empty()) continue;
    const Json g = Json::parse(tinyslm_test::read_text(gpath));
    Session s = make_session(L->model, {.context = 512});
    int n = 0;
    for (const Json& p : g["prompts"].items()) {
      if (p["kind"].as_string() != "chat") continue;
      auto toks = s.tokenize(p["text"].as_string());
      REQUIRE(toks);
      CHECK_MESSAGE(*toks == p["eval_tokens"].int_list(), stem << " " << p["id"].as_string());
      ++n;
    }
    CHECK(n > 0);
  }
}

TEST_CASE("session: generate_ids drives the model without text; bad ids are refused" * doctest::test_suite("shared")) {
  auto L = load(kStories);
  if (!L) return;
  Session s = make_session(L->model, {.context = 128});
  CHECK(s.last_logits().empty());
  auto toks = s.tokenize(kStory);
  REQUIRE(toks);
  auto a = s.generate_ids(*toks, greedy(12));
  CHECK(s.last_logits().size() == static_cast<size_t>(L->model.hparams().n_vocab));
  REQUIRE(a);
  s.reset();
  auto b = s.generate(kStory, greedy(12));
  REQUIRE(b);
  CHECK(a->ids == b->ids);
  CHECK(a->text == b->text);

  std::vector<int32_t> bad = {1, 600};
  auto e = s.generate_ids(bad, greedy(4));
  REQUIRE(!e);
  CHECK(e.error().code() == Errc::out_of_range);
  auto empty = s.generate_ids(std::span<const int32_t>(), greedy(4));
  REQUIRE(!empty);
  CHECK(empty.error().code() == Errc::invalid_argument);
  GenerateOptions bad_opt = greedy(4);
  bad_opt.stop = {""};
  CHECK(!s.generate(kStory, bad_opt));
  GenerateOptions bad_topp = greedy(4);
  bad_topp.sampler.top_p = 0.0f;
  CHECK(!s.generate(kStory, bad_topp));
}

TEST_CASE("session: create refuses bad parameters" * doctest::test_suite("shared")) {
  auto L = load(kStories);
  if (!L) return;
  const int64_t train = L->model.hparams().n_ctx_train;
  auto big = Session::create(L->model, {.context = train + 1});
  REQUIRE(!big);
  CHECK(big.error().message().find("training context") != std::string::npos);
  CHECK(!Session::create(L->model, {.context = 64, .threads = 0}));
  CHECK(!Session::create(L->model, {.context = 64, .threads = 1, .batch = 0}));
  CHECK(!Session::create(L->model, {.context = -5}));
  auto whole = Session::create(L->model, {.context = 0});
  REQUIRE(whole);
  CHECK(whole->n_ctx() == train);
}

TEST_CASE("session: multi-turn prefix reuse evaluates only new tokens and matches a fresh session" * doctest::test_suite("shared")) {
  auto L = load(kStories);
  if (!L) return;
  Session a = make_session(L->model, {.context = 256, .batch = 16});
  auto r1 = a.generate(kStory, greedy(10));
  REQUIRE(r1);
  const std::string p2 = std::string(kStory) + " " + r1->text + " One day, she";
  auto t1 = a.tokenize(kStory);
  auto t2 = a.tokenize(p2);
  REQUIRE(t1);
  REQUIRE(t2);
  auto r2 = a.generate(p2, greedy(0));
  REQUIRE(r2);
  CHECK(r2->stats.prompt_reused >= static_cast<int64_t>(t1->size()) - 1);
  CHECK(r2->stats.prompt_evaluated == static_cast<int64_t>(t2->size()) - r2->stats.prompt_reused);
  CHECK(r2->stats.prompt_evaluated < static_cast<int64_t>(t2->size()) / 2);
  const std::vector<float> la(a.last_logits().begin(), a.last_logits().end());

  Session b = make_session(L->model, {.context = 256, .batch = 16});
  auto f2 = b.generate(p2, greedy(0));
  REQUIRE(f2);
  CHECK(f2->stats.prompt_reused == 0);
  CHECK(rel_diff(la, b.last_logits()) < 1e-4);

  // Continuing both gives the same tokens.
  auto c1 = a.generate(p2, greedy(16));
  auto c2 = b.generate(p2, greedy(16));
  REQUIRE(c1);
  REQUIRE(c2);
  CHECK(c1->stats.prompt_evaluated == 1);  // everything cached: only the last token again
  CHECK(c1->ids == c2->ids);
  CHECK(c1->text == c2->text);
}

TEST_CASE("session: stop strings are cut and never streamed" * doctest::test_suite("shared")) {
  auto L = load(kStories);
  if (!L) return;
  Session s = make_session(L->model, {.context = 256});
  auto full = s.generate(kStory, greedy(32));
  REQUIRE(full);
  const std::string T = full->text;
  REQUIRE(T.size() > 30);

  // A stop string from the middle of the text.
  const std::string stop = T.substr(15, 6);
  GenerateOptions o = greedy(32);
  o.stop = {"never-appears-xyz", stop};
  std::string streamed;
  std::vector<std::string> pieces;
  auto r = s.generate(kStory, o, [&](std::string_view p) {
    streamed += p;
    pieces.emplace_back(p);
    return true;
  });
  REQUIRE(r);
  CHECK(r->stop == StopReason::stop_string);
  CHECK(r->text == T.substr(0, T.find(stop)));
  CHECK(streamed == r->text);
  for (const auto& p : pieces) CHECK(!p.empty());

  // A stop string whose start appears but which never completes: everything comes out.
  GenerateOptions o2 = greedy(32);
  o2.stop = {T.substr(15, 4) + "\x01"};
  streamed.clear();
  auto r2 = s.generate(kStory, o2, [&](std::string_view p) {
    streamed += p;
    return true;
  });
  REQUIRE(r2);
  CHECK(r2->stop == StopReason::max_tokens);
  CHECK(r2->text == T);
  CHECK(streamed == T);
}

TEST_CASE("session: callback stop and cancellation" * doctest::test_suite("shared")) {
  auto L = load(kStories);
  if (!L) return;
  Session s = make_session(L->model, {.context = 256, .batch = 4});

  int calls = 0;
  std::string streamed;
  auto r = s.generate(kStory, greedy(32), [&](std::string_view p) {
    streamed += p;
    return ++calls < 3;
  });
  REQUIRE(r);
  CHECK(r->stop == StopReason::callback);
  CHECK(calls == 3);
  CHECK(r->text == streamed);
  CHECK(r->ids.size() < 32);

  // Cancelled from the callback: generation stops at the next token.
  std::atomic<bool> cancel{false};
  GenerateOptions o = greedy(32);
  o.cancel = &cancel;
  calls = 0;
  auto c = s.generate(kStory, o, [&](std::string_view) {
    if (++calls == 2) cancel = true;
    return true;
  });
  REQUIRE(c);
  CHECK(c->stop == StopReason::cancelled);
  CHECK(c->ids.size() == 2);

  // Cancelled from another thread at some moment: the cache always holds exactly the chunks
  // that were evaluated, and an interrupted prompt stops on a chunk boundary.
  {
    std::string long_prompt;
    for (int i = 0; i < 40; ++i) long_prompt += "The cat sat on the mat and looked at the bird. ";
    Session t = make_session(L->model, {.context = 2048, .batch = 8});
    auto toks = t.tokenize(long_prompt);
    REQUIRE(toks);
    std::atomic<bool> stop{false};
    GenerateOptions ot = greedy(64);
    ot.cancel = &stop;
    std::thread canceller([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
      stop = true;
    });
    auto rt = t.generate(long_prompt, ot);
    canceller.join();
    REQUIRE(rt);
    CHECK(t.n_past() == rt->stats.prompt_reused + rt->stats.prompt_evaluated + std::max<int64_t>(0, rt->stats.generated - 1));
    if (rt->stats.prompt_evaluated < static_cast<int64_t>(toks->size())) {
      CHECK(rt->stop == StopReason::cancelled);
      CHECK(rt->stats.prompt_evaluated % 8 == 0);
      CHECK(rt->ids.empty());
    }
    MESSAGE("cancelled after " << rt->stats.prompt_evaluated << " of " << toks->size() << " prompt tokens, "
                               << rt->ids.size() << " generated");
  }

  // Cancelled before the prompt: nothing evaluated, nothing generated.
  s.reset();
  cancel = true;
  auto p = s.generate(kStory, o);
  REQUIRE(p);
  CHECK(p->stop == StopReason::cancelled);
  CHECK(p->stats.prompt_evaluated == 0);
  CHECK(p->ids.empty());
  CHECK(s.n_past() == 0);
}

TEST_CASE("session: a full context is an error or a shift, as the caller chooses" * doctest::test_suite("shared")) {
  auto L = load(kStories);
  if (!L) return;
  std::string long_text;
  for (int i = 0; i < 6; ++i) long_text += "The little dog ran to the park and played with a red ball. ";

  Session e = make_session(L->model, {.context = 32});
  auto too_long = e.generate(long_text, greedy(4));
  REQUIRE(!too_long);
  CHECK(too_long.error().code() == Errc::out_of_range);
  CHECK(too_long.error().message().find("context holds 32") != std::string::npos);

  // Generation that reaches the end of the context stops there.
  auto toks = e.tokenize(kStory);
  REQUIRE(toks);
  auto full = e.generate(kStory, greedy(100));
  REQUIRE(full);
  CHECK(full->stop == StopReason::context_full);
  CHECK(e.n_past() == 32);
  CHECK(full->ids.size() == 32 - toks->size() + 1);

  // Shift: keeps BOS, drops the oldest half, continues; the cache then equals a fresh
  // evaluation of the tokens it holds.
  Session sh = make_session(L->model, {.context = 32, .overflow = OverflowPolicy::shift, .keep = 1});
  auto r = sh.generate(kStory, greedy(60));
  REQUIRE(r);
  CHECK(r->stop == StopReason::max_tokens);
  CHECK(r->ids.size() == 60);
  CHECK(r->stats.shifts >= 1);
  CHECK(sh.n_past() <= 32);
  CHECK(sh.tokens()[0] == sh.tokenizer().bos());
  const std::vector<int32_t> held(sh.tokens().begin(), sh.tokens().end());
  const std::vector<float> lg(sh.last_logits().begin(), sh.last_logits().end());
  Session fresh = make_session(L->model, {.context = 32});
  REQUIRE(fresh.generate_ids(held, greedy(0)));
  CHECK(rel_diff(lg, fresh.last_logits()) < 1e-4);
  // The shifted text so far agrees with an unshifted run up to the first shift.
  Session big = make_session(L->model, {.context = 128});
  auto nb = big.generate(kStory, greedy(60));
  REQUIRE(nb);
  const size_t first_shift = 32 - toks->size() + 1;
  CHECK(std::vector<int32_t>(r->ids.begin(), r->ids.begin() + static_cast<long>(first_shift)) ==
        std::vector<int32_t>(nb->ids.begin(), nb->ids.begin() + static_cast<long>(first_shift)));

  // A prompt longer than the context keeps its start and its most recent half.
  auto lp = sh.generate(long_text, greedy(2));
  REQUIRE(lp);
  CHECK(lp->stats.shifts >= 1);
  CHECK(lp->stats.prompt_reused + lp->stats.prompt_evaluated == 1 + (32 - 1) / 2);
}

TEST_CASE("session: save / restore round trip" * doctest::test_suite("shared")) {
  auto L = load(kStories);
  if (!L) return;
  Session a = make_session(L->model, {.context = 128});
  auto r1 = a.generate(kStory, greedy(6));
  REQUIRE(r1);
  const std::vector<uint8_t> state = a.save_state();
  const std::vector<int32_t> saved_tokens(a.tokens().begin(), a.tokens().end());
  const std::string p2 = std::string(kStory) + " " + r1->text + " Then";
  auto x = a.generate(p2, greedy(12));
  REQUIRE(x);

  // Into a fresh session with another context length.
  Session c = make_session(L->model, {.context = 256});
  auto st = c.load_state(state);
  REQUIRE_MESSAGE(st, (st ? "" : st.error().message()));
  CHECK(std::vector<int32_t>(c.tokens().begin(), c.tokens().end()) == saved_tokens);
  auto y = c.generate(p2, greedy(12));
  REQUIRE(y);
  CHECK(y->stats.prompt_reused == x->stats.prompt_reused);
  CHECK(y->ids == x->ids);
  CHECK(y->text == x->text);

  // Through a file.
  const std::string path =
      (std::filesystem::temp_directory_path() / ("tinyslm-state-" + std::to_string(::getpid()) + ".bin")).string();
  Session d = make_session(L->model, {.context = 128});
  REQUIRE(a.load_state(state));
  REQUIRE(a.save_state_file(path));
  REQUIRE(d.load_state_file(path));
  auto z = d.generate(p2, greedy(12));
  REQUIRE(z);
  CHECK(z->ids == x->ids);
  std::remove(path.c_str());
  CHECK(!d.load_state_file(path));  // gone: an I/O error
}

TEST_CASE("session: corrupted or foreign state is refused without changing the session" * doctest::test_suite("shared")) {
  auto L = load(kStories);
  if (!L) return;
  Session a = make_session(L->model, {.context = 128});
  REQUIRE(a.generate(kStory, greedy(4)));
  const std::vector<uint8_t> good = a.save_state();
  const std::vector<int32_t> before(a.tokens().begin(), a.tokens().end());

  auto expect_error = [&](std::vector<uint8_t> bytes, Errc code, const std::string& what) {
    auto st = a.load_state(bytes);
    CHECK_MESSAGE(!st, what);
    if (!st) CHECK_MESSAGE(st.error().code() == code, what << ": " << st.error().message());
    CHECK(std::vector<int32_t>(a.tokens().begin(), a.tokens().end()) == before);
  };
  expect_error({}, Errc::invalid_format, "empty");
  expect_error(std::vector<uint8_t>(good.begin(), good.end() - 1), Errc::invalid_format, "truncated by one byte");
  expect_error(std::vector<uint8_t>(good.begin(), good.begin() + 40), Errc::invalid_format, "header only");
  {
    auto b = good;
    b.push_back(0);
    expect_error(b, Errc::invalid_format, "trailing byte");
  }
  {
    auto b = good;
    b[0] ^= 1;
    expect_error(b, Errc::invalid_format, "magic");
  }
  {
    auto b = good;
    b[8] = 99;
    expect_error(b, Errc::unsupported, "version");
  }
  {
    auto b = good;
    b[16] ^= 0x40;
    expect_error(b, Errc::invalid_argument, "fingerprint");
  }
  {
    auto b = good;
    b[b.size() / 2] ^= 0x10;
    expect_error(b, Errc::invalid_format, "a flipped bit in the K/V rows");
  }
  {
    auto b = good;
    b[detail::kStateHeaderBytes - 8 + 3] = 0x10;  // token count: 2^28 more
    expect_error(b, Errc::out_of_range, "token count");
  }
  // Garbage of every small length never crashes.
  for (size_t n = 0; n < 200; n += 7) {
    std::vector<uint8_t> junk(n);
    for (size_t i = 0; i < n; ++i) junk[i] = static_cast<uint8_t>(i * 37 + 11);
    CHECK(!a.load_state(junk));
  }
  // Too many tokens for a smaller context.
  Session small = make_session(L->model, {.context = 8});
  auto st = small.load_state(good);
  REQUIRE(!st);
  CHECK(st.error().code() == Errc::out_of_range);

  // Another model.
  auto other = load(kSynthLlama3);
  if (!other) return;
  Session o = make_session(other->model, {.context = 128});
  auto so = o.load_state(good);
  REQUIRE(!so);
  CHECK(so.error().message().find("another model") != std::string::npos);
}

TEST_CASE("session: seeded sampling is deterministic" * doctest::test_suite("shared")) {
  auto L = load(kStories);
  if (!L) return;
  GenerateOptions o{.sampler = {.temperature = 0.9f, .top_p = 0.95f, .seed = 1234}, .max_tokens = 40};
  Session a = make_session(L->model, {.context = 256, .threads = 2});
  auto r1 = a.generate(kStory, o);
  a.reset();
  auto r2 = a.generate(kStory, o);
  Session b = make_session(L->model, {.context = 256, .threads = 2});
  auto r3 = b.generate(kStory, o);
  REQUIRE(r1);
  REQUIRE(r2);
  REQUIRE(r3);
  CHECK(r1->text == r2->text);
  CHECK(r1->text == r3->text);
  CHECK(r1->ids == r3->ids);
  o.sampler.seed = 99;
  auto r4 = b.generate(kStory, o);
  REQUIRE(r4);
  CHECK(r4->ids != r1->ids);
  // Reusing the cached prompt changes nothing.
  o.sampler.seed = 1234;
  auto r5 = b.generate(kStory, o);
  REQUIRE(r5);
  CHECK(r5->ids == r1->ids);
}

TEST_CASE("session: stats" * doctest::test_suite("shared")) {
  auto L = load(kStories);
  if (!L) return;
  Session s = make_session(L->model, {.context = 256});
  auto r = s.generate(kStory, greedy(20));
  REQUIRE(r);
  const auto& st = r->stats;
  CHECK(st.generated == 20);
  CHECK(st.prompt_tokens_per_s > 0);
  CHECK(st.generation_tokens_per_s > 0);
  CHECK(st.time_to_first_token_ms >= st.prompt_ms);
  CHECK(st.generation_ms > 0);
}

TEST_CASE("chat helper: templates, prefix reuse across turns, dropping whole messages" * doctest::test_suite("shared")) {
  for (const char* rel : {kSynthLlama3, "models/synthetic/synth-gemma3-tiny-F16.gguf",
                          "models/synthetic/synth-phi3-tiny-F16.gguf"}) {
    auto L = load(rel);
    if (!L) continue;
    const std::string model_name = rel;
    CAPTURE(model_name);
    Session s = make_session(L->model, {.context = 512});
    CHECK(s.chat_template().kind() != ChatTemplate::Kind::none);
    Chat chat(s, "You are terse.");
    auto r1 = chat.send("Hi", greedy(6));
    REQUIRE_MESSAGE(r1, (r1 ? "" : r1.error().message()));
    CHECK(chat.messages().size() == 2);
    const int64_t first_prompt = r1->stats.prompt_tokens;
    auto r2 = chat.send("Tell me more.", greedy(6));
    REQUIRE(r2);
    CHECK(chat.messages().size() == 4);
    // The second turn reuses (at least) the first prompt from the cache.
    CHECK(r2->stats.prompt_reused >= first_prompt - 1);
    CHECK(r2->stats.prompt_evaluated == r2->stats.prompt_tokens - r2->stats.prompt_reused);

    // Same answer as a fresh session given the whole rendered conversation.
    std::vector<ChatMessage> msgs = {{"system", "You are terse."}};
    msgs.insert(msgs.end(), chat.messages().begin(), chat.messages().begin() + 3);
    auto text = s.chat_template().apply(msgs, true);
    REQUIRE(text);
    Session f = make_session(L->model, {.context = 512});
    auto fr = f.generate(*text, greedy(6));
    REQUIRE(fr);
    CHECK(fr->ids == r2->ids);

    chat.reset();
    CHECK(chat.messages().empty());
    REQUIRE(chat.send("Again", greedy(4)));
  }

  auto L = load(kSynthLlama3);
  if (!L) return;
  // A small context: with drop_messages the oldest turns go, the system prompt stays.
  Session s = make_session(L->model, {.context = 160, .overflow = OverflowPolicy::drop_messages});
  Chat chat(s, "Be brief.");
  for (int turn = 0; turn < 8; ++turn) {
    auto r = chat.send("This is message number " + std::to_string(turn) + " of a long chat.", greedy(8));
    REQUIRE_MESSAGE(r, "turn " << turn << ": " << (r ? "" : r.error().message()));
  }
  CHECK(chat.dropped_messages() > 0);
  CHECK(chat.messages().front().role == "user");
  auto rendered = chat.render();
  REQUIRE(rendered);
  CHECK(rendered->find("Be brief.") != std::string::npos);
  CHECK(rendered->find("number 7") != std::string::npos);
  CHECK(rendered->find("number 0 ") == std::string::npos);

  // With the error policy the same chat fails clearly once it no longer fits, and the failed
  // message is not kept.
  Session e = make_session(L->model, {.context = 160});
  Chat echat(e, "Be brief.");
  bool failed = false;
  for (int turn = 0; turn < 12 && !failed; ++turn) {
    const size_t before = echat.messages().size();
    auto r = echat.send("This is message number " + std::to_string(turn) + " of a long chat.", greedy(8));
    if (!r) {
      failed = true;
      CHECK(r.error().code() == Errc::out_of_range);
      CHECK(echat.messages().size() == before);
    }
  }
  CHECK(failed);
}

TEST_CASE("memory_estimate: bounds what a session really uses" * doctest::test_suite("shared")) {
  for (const auto& [rel, ctx] : {std::pair<const char*, int64_t>{kStories, 256}, {kStories, 2048},
                                  {"models/synthetic/synth-gemma3-tiny-F16.gguf", 1024}}) {
    const std::string path = tinyslm_test::shared_file(rel);
    if (path.empty()) continue;
    auto est = memory_estimate(path, ctx);
    REQUIRE(est);
    auto f = GgufFile::open(path);
    REQUIRE(f);
    auto hp = read_hparams(*f);
    REQUIRE(hp);
    const uint64_t kv = static_cast<uint64_t>(hp->n_layer * ctx * hp->n_head_kv * (hp->head_dim_k + hp->head_dim_v) * 2);
    CHECK(est->kv_cache == kv);
    CHECK(est->total() >= kv);
#if defined(__SANITIZE_ADDRESS__)
#define TINYSLM_TEST_NO_MALLINFO 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TINYSLM_TEST_NO_MALLINFO 1
#endif
#endif
#if defined(__GLIBC__) && !defined(TINYSLM_TEST_NO_MALLINFO)
    // What the process really allocates: heap growth from opening the model to after a first
    // generation, plus the mapped tensor bytes.
    const auto heap = [] {
      struct mallinfo2 mi = mallinfo2();
      return static_cast<uint64_t>(mi.uordblks + mi.hblkhd);
    };
    const uint64_t h0 = heap();
    {
      auto m = Model::open(path);
      REQUIRE(m);
      Session s = make_session(*m, {.context = ctx});
      REQUIRE(s.generate(kStory, greedy(4)));
      const uint64_t used = heap() - h0 + m->weight_bytes();
      const double ratio = static_cast<double>(est->total()) / static_cast<double>(used);
      MESSAGE(std::string(rel) << ", context " << ctx << ": estimate " << est->total() << " bytes, measured " << used << " (ratio " << ratio
                         << ")");
      CHECK(ratio > 0.75);
      CHECK(ratio < 1.5);
    }
#endif
  }
  const std::string path = tinyslm_test::shared_file(kStories);
  if (path.empty()) return;
  CHECK(!memory_estimate(std::string("/nonexistent/model.gguf"), 256));
  auto f = GgufFile::open(path);
  REQUIRE(f);
  CHECK(!memory_estimate(*f, 256, 0));
}

TEST_CASE("session: prefill and step give what generate gives" * doctest::test_suite("shared")) {
  auto L = load(kStories);
  if (!L) return;
  Session s = make_session(L->model, {.context = 256, .batch = 8});
  auto toks = s.tokenize(kStory);
  REQUIRE(toks);
  auto want = s.generate_ids(*toks, greedy(16));
  REQUIRE(want);
  REQUIRE(want->stop == StopReason::max_tokens);

  // prefill reuses the cached prefix exactly as generate does: only the last token again.
  REQUIRE(s.prefill(*toks));
  CHECK(s.n_past() == static_cast<int64_t>(toks->size()));
  CHECK(std::vector<int32_t>(s.tokens().begin(), s.tokens().end()) == *toks);
  CHECK(s.last_logits().size() == static_cast<size_t>(L->model.hparams().n_vocab));
  auto sampler = s.make_sampler(greedy(0).sampler);
  REQUIRE(sampler);
  std::vector<int32_t> got;
  for (int i = 0; i < 16; ++i) {
    auto id = s.step(*sampler);
    REQUIRE(id);
    got.push_back(*id);
  }
  CHECK(got == want->ids);
  CHECK(s.n_past() == static_cast<int64_t>(toks->size() + 16));  // step evaluates every token it returns

  // generate_from_cache after prefill is generate_ids; it needs logits to start from.
  REQUIRE(s.prefill(*toks));
  auto more = s.generate_from_cache(greedy(16));
  REQUIRE(more);
  CHECK(more->ids == want->ids);
  CHECK(more->text == want->text);
  CHECK(more->stats.prompt_evaluated == 0);
  s.reset();
  auto none = s.generate_from_cache(greedy(4));
  REQUIRE(!none);
  CHECK(none.error().code() == Errc::invalid_argument);
  CHECK(!s.sample(*sampler));
  CHECK(!s.step(*sampler));

  // A sampled run through step equals the same settings through generate.
  GenerateOptions o{.sampler = {.temperature = 0.9f, .seed = 77}, .max_tokens = 12};
  auto sampled = s.generate_ids(*toks, o);
  REQUIRE(sampled);
  REQUIRE(s.prefill(*toks));
  auto seeded = s.make_sampler(o.sampler);
  REQUIRE(seeded);
  std::vector<int32_t> stepped;
  for (int i = 0; i < 12; ++i) {
    auto id = s.step(*seeded, o);
    REQUIRE(id);
    stepped.push_back(*id);
  }
  CHECK(stepped == sampled->ids);
}

TEST_CASE("session: prefill and append refuse bad input without touching the cache" * doctest::test_suite("shared")) {
  auto L = load(kStories);
  if (!L) return;
  Session s = make_session(L->model, {.context = 16});
  auto toks = s.tokenize(kStory);
  REQUIRE(toks);
  REQUIRE(s.prefill(std::span<const int32_t>(*toks).first(4)));
  const std::vector<int32_t> before(s.tokens().begin(), s.tokens().end());

  std::vector<int32_t> bad = {1, 600};
  auto e = s.prefill(bad);
  REQUIRE(!e);
  CHECK(e.error().code() == Errc::out_of_range);
  CHECK(e.error().message().find("prefill: token id 600 at index 1") != std::string::npos);
  CHECK(!s.prefill(std::span<const int32_t>()));
  CHECK(!s.append(-3));
  CHECK(std::vector<int32_t>(s.tokens().begin(), s.tokens().end()) == before);

  std::atomic<bool> cancel{true};
  auto c = s.prefill(std::span<const int32_t>(*toks).first(6), &cancel);
  REQUIRE(!c);
  CHECK(c.error().code() == Errc::cancelled);

  // A sampler for another vocabulary is refused.
  REQUIRE(s.prefill(std::span<const int32_t>(*toks).first(4)));
  auto other = Sampler::create(7, {});
  REQUIRE(other);
  CHECK(!s.sample(*other));

  // append on a full context: an error with the error policy...
  while (s.n_past() < s.n_ctx()) REQUIRE(s.append(toks->back()));
  auto full = s.append(toks->back());
  REQUIRE(!full);
  CHECK(full.error().code() == Errc::out_of_range);
  CHECK(s.n_past() == 16);
  // ...a shift with the shift policy.
  Session sh = make_session(L->model, {.context = 16, .overflow = OverflowPolicy::shift, .keep = 1});
  REQUIRE(sh.prefill(std::span<const int32_t>(*toks).first(toks->size() < 16 ? toks->size() : 16)));
  while (sh.n_past() < sh.n_ctx()) REQUIRE(sh.append(toks->back()));
  REQUIRE(sh.append(toks->back()));
  CHECK(sh.n_past() < 16);
  CHECK(sh.tokens()[0] == (*toks)[0]);
}

TEST_CASE("session: the logits hook and the sample hook" * doctest::test_suite("shared")) {
  auto L = load(kStories);
  if (!L) return;
  Session s = make_session(L->model, {.context = 256});
  auto plain = s.generate(kStory, greedy(12));
  REQUIRE(plain);
  const int32_t banned = plain->ids[0];

  // A logits hook that bans the greedy first token: it never appears, and the logits the
  // session reports stay the model's.
  GenerateOptions o = greedy(12);
  int logits_calls = 0;
  o.on_logits = [&](std::span<float> lg) {
    ++logits_calls;
    lg[static_cast<size_t>(banned)] = -INFINITY;
  };
  auto masked = s.generate(kStory, o);
  REQUIRE(masked);
  CHECK(logits_calls == static_cast<int>(masked->ids.size()));
  CHECK(std::find(masked->ids.begin(), masked->ids.end(), banned) == masked->ids.end());
  CHECK(masked->ids[0] != banned);
  CHECK(!std::isinf(s.last_logits()[static_cast<size_t>(banned)]));

  // Vetoing the same token from the sample hook gives the same text.
  GenerateOptions v = greedy(12);
  v.on_sample = [&](int32_t id, std::span<const float>) { return id == banned ? kVetoToken : id; };
  auto vetoed = s.generate(kStory, v);
  REQUIRE(vetoed);
  CHECK(vetoed->ids == masked->ids);
  CHECK(vetoed->text == masked->text);

  // Replacing every token with one id: that id is what is generated (and evaluated).
  GenerateOptions r = greedy(5);
  r.on_sample = [](int32_t, std::span<const float>) { return int32_t{300}; };
  auto replaced = s.generate(kStory, r);
  REQUIRE(replaced);
  CHECK(replaced->ids == std::vector<int32_t>(5, 300));
  CHECK(s.tokens().back() == 300);

  // A hook that vetoes everything, or picks a token outside the vocabulary, is an error.
  GenerateOptions all = greedy(3);
  all.on_sample = [](int32_t, std::span<const float>) { return kVetoToken; };
  auto never = s.generate(kStory, all);
  REQUIRE(!never);
  CHECK(never.error().message().find("vetoed every token") != std::string::npos);
  GenerateOptions outside = greedy(3);
  outside.on_sample = [](int32_t, std::span<const float>) { return int32_t{100000}; };
  auto oob = s.generate(kStory, outside);
  REQUIRE(!oob);
  CHECK(oob.error().code() == Errc::out_of_range);
}

TEST_CASE("session: a tokenizer that does not load is reported with its own error" * doctest::test_suite("shared")) {
  const std::string path = tinyslm_test::shared_file(kStories);
  if (path.empty()) return;
  auto src = GgufFile::open(path);
  REQUIRE(src);
  // stories260K without its vocabulary
  GgufWriter w;
  w.copy_metadata(*src);
  w.remove("tokenizer.ggml.tokens");
  for (const auto& t : src->tensors())
    REQUIRE(w.add_tensor(t.name, t.type, std::span<const uint64_t>(t.ne.data(), t.n_dims), t.data, t.n_bytes));
  const std::string out =
      (std::filesystem::temp_directory_path() / ("tinyslm-notok-" + std::to_string(::getpid()) + ".gguf")).string();
  {
    const std::vector<uint8_t> bytes = w.to_bytes();
    std::FILE* f = std::fopen(out.c_str(), "wb");
    REQUIRE(f);
    REQUIRE(std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size());
    std::fclose(f);
  }
  auto m = Model::open(out);
  std::remove(out.c_str());
  REQUIRE_MESSAGE(m, (m ? "" : m.error().message()));
  Session s = make_session(*m, {.context = 64});
  CHECK(!s.has_tokenizer());
  REQUIRE(s.tokenizer_error() != nullptr);
  const std::string why = s.tokenizer_error()->message();
  CHECK(why.find("tokenizer.ggml.tokens") != std::string::npos);
  auto t = s.tokenize("Hi");
  REQUIRE(!t);
  CHECK(t.error().message().find(why) != std::string::npos);
  CHECK(t.error().code() == s.tokenizer_error()->code());
  auto g = s.generate("Hi", greedy(2));
  REQUIRE(!g);
  CHECK(g.error().message() == t.error().message());
  // Token ids still work.
  const std::vector<int32_t> ids = {1, 300, 301};
  auto r = s.generate_ids(ids, greedy(3));
  REQUIRE(r);
  CHECK(r->ids.size() == 3);
  CHECK(r->text.empty());

  auto L = load(kStories);
  REQUIRE(L);
  Session fine = make_session(L->model, {.context = 64});
  CHECK(fine.tokenizer_error() == nullptr);
}

TEST_CASE("session: an incomplete character at the end is U+FFFD, or dropped on request" * doctest::test_suite("shared")) {
  auto L = load("models/synthetic/syn-olmoe-Q8_0.gguf");  // random weights: bytes cut mid-character
  if (!L) return;
  Session s = make_session(L->model, {.context = 128});
  int differed = 0;
  for (int32_t n = 1; n <= 24; ++n) {
    GenerateOptions keep = greedy(n), drop = greedy(n);
    drop.flush_partial_char = false;
    std::string streamed;
    auto a = s.generate("The quick brown fox", keep);
    auto b = s.generate("The quick brown fox", drop, [&](std::string_view p) {
      streamed += p;
      return true;
    });
    REQUIRE(a);
    REQUIRE(b);
    CHECK(a->ids == b->ids);
    CHECK(streamed == b->text);
    REQUIRE(a->text.compare(0, b->text.size(), b->text) == 0);
    const std::string rest = a->text.substr(b->text.size());
    if (!rest.empty()) {
      ++differed;
      CHECK(rest == "\xef\xbf\xbd");
    }
  }
  CHECK(differed > 0);
}

TEST_CASE("lifetimes: a session keeps its model loaded after the Model object is gone" * doctest::test_suite("shared")) {
  const std::string path = tinyslm_test::shared_file(kStories);
  if (path.empty()) return;
  auto first = Model::open(path);
  REQUIRE(first);
  Session reference = make_session(*first);
  auto want = reference.generate(kStory, greedy(8));
  REQUIRE(want);
  std::optional<Session> s;
  {
    auto m = Model::open(path);
    REQUIRE(m);
    s.emplace(make_session(*m));
    Model moved = std::move(*m);  // the handle moves away, then goes out of scope
  }
  auto got = s->generate(kStory, greedy(8));
  REQUIRE(got);
  CHECK(got->ids == want->ids);
  CHECK(s->model().hparams().n_vocab == first->hparams().n_vocab);
  // Copies of a Model share one loaded file.
  Model copy = *first;
  CHECK(&copy.gguf() == &first->gguf());
}
