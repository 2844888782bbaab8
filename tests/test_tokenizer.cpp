// Tokenizer tests: llama.cpp's vocabulary test strings (ids of the original Hugging Face
// tokenizers), llama.cpp's golden tokenizations, bad input, and StreamDecoder properties.
#include <doctest/doctest.h>

#include <map>
#include <memory>
#include <random>

#include "json.hpp"
#include "test_support.hpp"
#include "tinyslm/tokenizer.hpp"

using tinyslm::Tokenizer;

namespace {

std::string hex_of(std::string_view s) {
  static const char* h = "0123456789abcdef";
  std::string o;
  for (unsigned char c : s) {
    o.push_back(h[c >> 4]);
    o.push_back(h[c & 15]);
  }
  return o;
}

std::string ids_str(const std::vector<int32_t>& v) {
  std::string s;
  for (int32_t x : v) s += std::to_string(x) + " ";
  return s;
}

// Loads (once) the tokenizer of a model file found anywhere under shared/models.
const Tokenizer* tokenizer_for(const std::string& file) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto it = cache.find(file);
  if (it != cache.end()) return it->second.get();
  std::string path;
  for (const char* dir : {"models/", "models/vocab/", "models/quant/", "models/synthetic/"}) {
    std::string p = tinyslm_test::shared_dir() + "/" + dir + file;
    if (tinyslm_test::file_exists(p)) {
      path = p;
      break;
    }
  }
  std::unique_ptr<Tokenizer> tok;
  if (!path.empty()) {
    auto f = tinyslm::GgufFile::open(path);
    REQUIRE_MESSAGE(f, path);
    auto t = Tokenizer::from_gguf(*f);
    REQUIRE_MESSAGE(t, (t ? "" : t.error().message()));
    tok = std::make_unique<Tokenizer>(std::move(*t));
  }
  const Tokenizer* r = tok.get();
  cache[file] = std::move(tok);
  return r;
}

std::vector<std::string> split_inp(const std::string& text) {
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> out;
  size_t pos = 0;
  while (true) {
    size_t m = text.find(sep, pos);
    if (m == std::string::npos) break;
    out.push_back(text.substr(pos, m - pos));
    pos = m + sep.size();
  }
  return out;
}

std::vector<int32_t> parse_ids(const std::string& line) {
  std::vector<int32_t> v;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && line[i] == ' ') ++i;
    if (i >= line.size()) break;
    size_t j = i;
    while (j < line.size() && line[j] != ' ') ++j;
    v.push_back(std::stoi(line.substr(i, j - i)));
    i = j;
  }
  return v;
}

}  // namespace

TEST_CASE("vocab test strings match the original tokenizers (models/vocab/*.gguf.inp/.out)" * doctest::test_suite("shared")) {
  const char* vocabs[] = {"llama-spm", "phi-3",   "gpt-2",  "starcoder", "refact",
                          "deepseek-coder", "deepseek-llm", "falcon", "mpt", "bert-bge"};
  int total_ok = 0, total = 0;
  for (const char* v : vocabs) {
    const std::string base = std::string("models/vocab/ggml-vocab-") + v + ".gguf";
    const std::string gguf = tinyslm_test::shared_file(base);
    if (gguf.empty()) return;
    const Tokenizer* tok = tokenizer_for(std::string("ggml-vocab-") + v + ".gguf");
    REQUIRE(tok);
    const auto strings = split_inp(tinyslm_test::read_text(gguf + ".inp"));
    std::vector<std::string> lines;
    {
      std::string out = tinyslm_test::read_text(gguf + ".out");
      size_t p = 0;
      while (p < out.size()) {
        size_t e = out.find('\n', p);
        if (e == std::string::npos) e = out.size();
        lines.push_back(out.substr(p, e - p));
        p = e + 1;
      }
    }
    REQUIRE(strings.size() == lines.size());
    int ok = 0;
    for (size_t i = 0; i < strings.size(); ++i) {
      auto ids = tok->encode(strings[i], false, false);
      REQUIRE(ids);
      const auto want = parse_ids(lines[i]);
      if (*ids == want) {
        ++ok;
      } else {
        FAIL_CHECK(v << " string " << i << " '" << strings[i] << "': got " << ids_str(*ids) << " want "
                     << ids_str(want));
      }
    }
    MESSAGE(std::string(v) << ": " << ok << "/" << strings.size() << " strings match");
    total_ok += ok;
    total += static_cast<int>(strings.size());
  }
  MESSAGE("all vocabularies: " << total_ok << "/" << total);
}

TEST_CASE("golden tokenizations of llama.cpp (golden-tokenize-v1)" * doctest::test_suite("shared")) {
  const std::string dir = tinyslm_test::shared_file("golden/README.md");
  if (dir.empty()) return;
  std::vector<std::string> files;
  // Every *.tokenize.json in golden/, golden/vocab/ and golden/synthetic/vocab-*.
  const std::string root = tinyslm_test::shared_dir() + "/golden/";
  FILE* p = popen(("cd '" + root + "' && ls *.tokenize.json vocab/*.tokenize.json synthetic/vocab-*.tokenize.json").c_str(), "r");
  REQUIRE(p);
  char line[512];
  while (fgets(line, sizeof line, p)) {
    std::string s(line);
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    if (!s.empty()) files.push_back(s);
  }
  pclose(p);
  REQUIRE(files.size() >= 40);
  for (const std::string& file : files) {
    const auto j = tinyslm_test::Json::parse(tinyslm_test::read_text(root + file));
    REQUIRE(j["schema"].as_string() == "golden-tokenize-v1");
    const Tokenizer* tok = tokenizer_for(j["model"]["file"].as_string());
    REQUIRE_MESSAGE(tok, "model of " << file << " not found");
    int n = 0, ok = 0;
    for (const auto& it : j["items"].items()) {
      ++n;
      const std::string text = tinyslm_test::from_hex(it["text_hex"].as_string());
      const std::string id = it["id"].as_string();
      bool good = true;
      auto check_ids = [&](bool add, bool parse, const char* key) {
        auto ids = tok->encode(text, add, parse);
        REQUIRE(ids);
        const auto want = it[key].int_list();
        if (*ids != want) {
          good = false;
          FAIL_CHECK(file << " " << id << " " << key << ": got " << ids_str(*ids) << " want " << ids_str(want));
        }
      };
      check_ids(false, false, "tokens");
      check_ids(true, false, "tokens_add_special");
      check_ids(false, true, "tokens_parse_special");
      const auto toks = it["tokens"].int_list();
      const auto& pieces = it["pieces_hex"].items();
      REQUIRE(pieces.size() == toks.size());
      for (size_t k = 0; k < toks.size(); ++k) {
        auto piece = tok->token_to_piece(toks[k]);
        REQUIRE(piece);
        if (hex_of(*piece) != pieces[k].as_string()) {
          good = false;
          FAIL_CHECK(file << " " << id << " piece " << k << ": got " << hex_of(*piece) << " want "
                          << pieces[k].as_string());
        }
      }
      // llama.cpp's detokenized text leaves control and unknown tokens out.
      auto dec = tok->decode(toks, {false, true});
      REQUIRE(dec);
      if (*dec != it["detokenized"].as_string()) {
        good = false;
        FAIL_CHECK(file << " " << id << " detokenized: got '" << *dec << "' want '" << it["detokenized"].as_string() << "'");
      }
      if (it["roundtrip_exact"].as_bool() && *dec != text) {
        good = false;
        FAIL_CHECK(file << " " << id << ": decode does not round-trip");
      }
      ok += good;
    }
    MESSAGE(file << ": " << ok << "/" << n << " items match");
  }
}

TEST_CASE("bad input never crashes and gives clear results" * doctest::test_suite("shared")) {
  const std::string spm_path = tinyslm_test::shared_file("models/vocab/ggml-vocab-llama-spm.gguf");
  if (spm_path.empty()) return;
  const Tokenizer* spm = tokenizer_for("ggml-vocab-llama-spm.gguf");
  const Tokenizer* bpe = tokenizer_for("ggml-vocab-gpt-2.gguf");
  const Tokenizer* l3 = tokenizer_for("synth-llama3-tiny-F16.gguf");
  REQUIRE(spm);
  REQUIRE(bpe);
  REQUIRE(l3);
  const std::string bad[] = {
      std::string("\xff\xfe abc", 6),             // bytes that never start UTF-8
      std::string("\xc3", 1),                      // truncated 2-byte sequence
      std::string("a\xe2\x82", 3),                 // truncated 3-byte sequence at the end
      std::string("\xed\xa0\x80 lone surrogate"),  // UTF-8-encoded lone surrogate U+D800
      std::string("\xf4\x90\x80\x80 beyond U+10FFFF"),
      std::string("nul\0byte", 8),
      std::string("\xc0\xaf overlong"),
  };
  for (const Tokenizer* t : {spm, bpe, l3}) {
    for (const std::string& s : bad) {
      auto ids = t->encode(s, true, true);
      REQUIRE(ids);
      CHECK(!ids->empty());
      for (int32_t id : *ids) CHECK(t->valid(id));
      auto dec = t->decode(*ids);
      REQUIRE(dec);
    }
  }
  // SPM keeps raw bytes through byte tokens. As in llama.cpp, a stray lead byte can swallow
  // the bytes of a following "\u2581" (escaped space), which then come back as those bytes.
  for (const std::string& s : bad) {
    auto ids = spm->encode(s, false, false);
    REQUIRE(ids);
    const std::string d = *spm->decode(*ids);
    std::string unescaped;
    for (size_t k = 0; k < d.size(); ++k) {
      if (d.compare(k, 3, "\xe2\x96\x81") == 0) {
        unescaped.push_back(' ');
        k += 2;
      } else {
        unescaped.push_back(d[k]);
      }
    }
    CHECK(unescaped == s);
  }
  // A NUL byte is an ordinary character.
  {
    auto ids = bpe->encode(std::string("a\0b", 3), false, false);
    REQUIRE(ids);
    CHECK(*bpe->decode(*ids) == std::string("a\0b", 3));
  }
  // Byte-level BPE reads each invalid byte as U+FFFD (documented, as llama.cpp).
  {
    auto ids = bpe->encode(std::string("x\xff", 2), false, false);
    REQUIRE(ids);
    CHECK(*bpe->decode(*ids) == "x\xef\xbf\xbd");
  }
  // Unknown ids in decode, token_to_piece and the stream decoder are errors.
  for (int32_t id : {-1, spm->n_vocab(), 1 << 30}) {
    const int32_t ids[] = {1, id};
    auto d = spm->decode(ids);
    REQUIRE(!d);
    CHECK(d.error().code() == tinyslm::Errc::out_of_range);
    CHECK(!spm->token_to_piece(id));
    tinyslm::StreamDecoder sd(*spm);
    CHECK(!sd.push(id));
  }
  // Special tokens are matched in text only with parse_special.
  {
    auto plain = l3->encode("<|eot_id|>", false, false);
    auto parsed = l3->encode("<|eot_id|>", false, true);
    REQUIRE(plain);
    REQUIRE(parsed);
    REQUIRE(parsed->size() == 1);
    CHECK((*parsed)[0] == l3->find_token("<|eot_id|>"));
    CHECK(plain->size() > 1);
    CHECK(l3->is_eog((*parsed)[0]));
  }
  // A model file without a vocabulary is a clear error.
  {
    tinyslm::GgufWriter w;
    w.set_string("general.architecture", "llama");
    const std::vector<uint8_t> bytes = w.to_bytes();
    auto f = tinyslm::GgufFile::from_source(tinyslm::Source::borrow(bytes.data(), bytes.size(), "novocab"));
    REQUIRE(f);
    auto t = Tokenizer::from_gguf(*f);
    REQUIRE(!t);
    CHECK(t.error().code() == tinyslm::Errc::not_found);
  }
}

namespace {
// A small vocabulary written with our own GGUF writer.
std::vector<uint8_t> make_vocab(const std::string& model, const std::vector<std::string>& tokens,
                                const std::vector<std::string>& merges, const std::vector<int32_t>& types,
                                const std::vector<float>& scores, const std::string& pre = "") {
  tinyslm::GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string("tokenizer.ggml.model", model);
  if (!pre.empty()) w.set_string("tokenizer.ggml.pre", pre);
  w.set_array_strings("tokenizer.ggml.tokens", tokens);
  if (!merges.empty()) w.set_array_strings("tokenizer.ggml.merges", merges);
  if (!types.empty()) w.set_array<int32_t>("tokenizer.ggml.token_type", tinyslm::GgufValueType::i32, types);
  if (!scores.empty()) w.set_array<float>("tokenizer.ggml.scores", tinyslm::GgufValueType::f32, scores);
  return w.to_bytes();
}
tinyslm::Expected<Tokenizer> load_vocab(const std::vector<uint8_t>& bytes) {
  auto f = tinyslm::GgufFile::from_source(tinyslm::Source::borrow(bytes.data(), bytes.size(), "vocab"));
  if (!f) return f.error();
  return Tokenizer::from_gguf(*f);
}
}  // namespace

TEST_CASE("malformed tokenizer metadata gives clear errors") {
  using tinyslm::Errc;
  const std::vector<std::string> toks = {"<unk>", "<s>", "</s>", "a", "b", "ab"};
  // Unsupported tokenizer model and pre-tokenizer.
  auto t1 = load_vocab(make_vocab("t5", toks, {}, {}, {}));
  REQUIRE(!t1);
  CHECK(t1.error().code() == Errc::unsupported);
  auto t2 = load_vocab(make_vocab("gpt2", toks, {"a b"}, {}, {}, "no-such-pre"));
  REQUIRE(!t2);
  CHECK(t2.error().code() == Errc::unsupported);
  // BPE without merges.
  auto t3 = load_vocab(make_vocab("gpt2", toks, {}, {}, {}, "gpt-2"));
  REQUIRE(!t3);
  CHECK(t3.error().code() == Errc::not_found);
  // Too few scores / token types.
  auto t4 = load_vocab(make_vocab("llama", toks, {}, {}, {0.f, 1.f}));
  REQUIRE(!t4);
  CHECK(t4.error().code() == Errc::invalid_format);
  auto t5 = load_vocab(make_vocab("llama", toks, {}, {2, 3}, {}));
  REQUIRE(!t5);
  CHECK(t5.error().code() == Errc::invalid_format);
  // Empty vocabulary.
  auto t6 = load_vocab(make_vocab("llama", {}, {}, {}, {}));
  REQUIRE(!t6);
  CHECK(t6.error().code() == Errc::invalid_format);
  // A tokens key of the wrong type.
  {
    tinyslm::GgufWriter w;
    w.set_string("tokenizer.ggml.model", "llama");
    w.set_u32("tokenizer.ggml.tokens", 5);
    const auto bytes = w.to_bytes();
    auto t = load_vocab(bytes);
    REQUIRE(!t);
    CHECK(t.error().code() == Errc::type_mismatch);
  }
}

TEST_CASE("tiny SentencePiece vocabulary: scores decide merges, bytes fall back") {
  // ids: 0 <unk>, 1 <s>, 2 </s>, 3 ▁, 4 a, 5 b, 6 ab, 7 ▁a, 8 <0x0A>, 9 <0xC3>, 10 <0xA9>
  const std::vector<std::string> toks = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "a", "b", "ab", "\xe2\x96\x81" "a",
                                         "<0x0A>", "<0xC3>", "<0xA9>"};
  const std::vector<int32_t> types = {2, 3, 3, 1, 1, 1, 1, 1, 6, 6, 6};
  // "▁a" scores higher than "ab": "▁ab" becomes ▁a + b.
  auto t = load_vocab(make_vocab("llama", toks, {}, types, {0, 0, 0, -1, -2, -2, -3, -1.5f, 0, 0, 0}));
  REQUIRE(t);
  CHECK(*t->encode("ab", false, false) == std::vector<int32_t>{7, 5});
  CHECK(*t->encode("ab", true, false) == std::vector<int32_t>{1, 7, 5});
  // An unknown character becomes its UTF-8 bytes (é = C3 A9), a missing byte token <unk>.
  CHECK(*t->encode("\xc3\xa9\n", false, false) == std::vector<int32_t>{3, 9, 10, 8});
  CHECK(*t->encode("z", false, false) == std::vector<int32_t>{3, 0});
  CHECK(*t->decode(std::vector<int32_t>{7, 5, 9, 10}) == "ab\xc3\xa9");
  // Special tokens only with parse_special; a space is put after them.
  CHECK(*t->encode("</s>a", false, true) == std::vector<int32_t>{2, 7});
  CHECK(t->is_eog(2));
  CHECK(t->bos() == 1);
  CHECK(t->eos() == 2);
  CHECK(t->add_bos());
}

TEST_CASE("1 MB input stays fast (no quadratic merge loop)" * doctest::test_suite("shared")) {
  if (tinyslm_test::shared_file("models/vocab/ggml-vocab-llama-spm.gguf").empty()) return;
  const Tokenizer* spm = tokenizer_for("ggml-vocab-llama-spm.gguf");
  const Tokenizer* bpe = tokenizer_for("ggml-vocab-gpt-2.gguf");
  // One long word with no spaces is the worst case for per-word BPE.
  std::string big(1 << 20, 'a');
  for (size_t i = 0; i < big.size(); i += 7) big[i] = static_cast<char>('a' + (i % 26));
  for (const Tokenizer* t : {spm, bpe}) {
    auto ids = t->encode(big, false, false);
    REQUIRE(ids);
    CHECK(ids->size() > 1000);
    CHECK(*t->decode(*ids) == big);
  }
}

TEST_CASE("fast paths (word caches, SentencePiece cuts) give the plain algorithm's ids" * doctest::test_suite("shared")) {
  const std::string strings_path = tinyslm_test::shared_file("golden/tokenize-strings.jsonl");
  if (strings_path.empty()) return;
  // Random concatenations of the golden test strings, 200 KB.
  std::vector<std::string> pool;
  {
    const std::string all = tinyslm_test::read_text(strings_path);
    size_t p = 0;
    while (p < all.size()) {
      size_t e = all.find('\n', p);
      if (e == std::string::npos) e = all.size();
      if (e > p) pool.push_back(tinyslm_test::Json::parse(all.substr(p, e - p))["text"].as_string());
      p = e + 1;
    }
  }
  REQUIRE(pool.size() > 20);
  std::mt19937 rng(7);
  std::string text;
  const char* specials[] = {"<|user|>", "<|assistant|>", "<|end|>", "<s>", "</s>", "<|eot_id|>",
                            "<|start_header_id|>", "<|endoftext|>", "<|im_start|>"};
  while (text.size() < 200000) {
    text += pool[rng() % pool.size()];
    text += (rng() % 3 == 0) ? "\n" : " ";
    if (rng() % 4 == 0) text += specials[rng() % std::size(specials)];
  }
  auto& tune = tinyslm::detail::tokenizer_tuning();
  for (const char* file : {"ggml-vocab-llama-spm.gguf", "ggml-vocab-phi-3.gguf", "ggml-vocab-baichuan.gguf",
                           "ggml-vocab-gpt-2.gguf", "ggml-vocab-deepseek-llm.gguf", "synth-llama3-tiny-F16.gguf",
                           "synth-phi3-tiny-F16.gguf", "synth-qwen2-tiny-F16.gguf"}) {
    const Tokenizer* t = tokenizer_for(file);
    REQUIRE(t);
    auto fast = t->encode(text, true, true);
    tune.cache_min_bytes = SIZE_MAX;
    tune.spm_cut = false;
    tune.special_filter = false;
    auto plain = t->encode(text, true, true);
    tune = tinyslm::detail::TokenizerTuning{};
    REQUIRE(fast);
    REQUIRE(plain);
    CHECK_MESSAGE(*fast == *plain, file);
  }
}

TEST_CASE("StreamDecoder: whole characters only, same text as decode" * doctest::test_suite("shared")) {
  if (tinyslm_test::shared_file("models/vocab/ggml-vocab-llama-spm.gguf").empty()) return;
  std::mt19937 rng(1234);
  for (const char* file : {"ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf", "synth-qwen2-tiny-F16.gguf",
                           "ggml-vocab-phi-3.gguf"}) {
    const Tokenizer* t = tokenizer_for(file);
    REQUIRE(t);
    for (int round = 0; round < 200; ++round) {
      std::vector<int32_t> ids(1 + rng() % 40);
      for (auto& id : ids) {
        // Mix byte tokens (to split characters) with random ones.
        id = (rng() % 2) ? static_cast<int32_t>(rng() % std::min(t->n_vocab(), 300))
                         : static_cast<int32_t>(rng() % t->n_vocab());
      }
      const bool special = round % 2;
      tinyslm::StreamDecoder sd(*t, special);
      std::string streamed;
      for (int32_t id : ids) {
        auto piece = sd.push(id);
        REQUIRE(piece);
        CHECK(tinyslm::utf8_sanitize(*piece) == *piece);  // valid UTF-8 every time
        streamed += *piece;
      }
      streamed += sd.flush();
      auto whole = t->decode(ids, {special, false});
      REQUIRE(whole);
      CHECK(streamed == tinyslm::utf8_sanitize(*whole));
    }
  }
  // A character split over byte tokens comes out once complete.
  const Tokenizer* spm = tokenizer_for("ggml-vocab-llama-spm.gguf");
  const int32_t b0 = spm->find_token("<0xEC>"), b1 = spm->find_token("<0x84>"), b2 = spm->find_token("<0x9C>");
  REQUIRE(b0 >= 0);
  tinyslm::StreamDecoder sd(*spm);
  CHECK(*sd.push(b0) == "");
  CHECK(*sd.push(b1) == "");
  CHECK(*sd.push(b2) == "\xec\x84\x9c");
  CHECK(sd.pending_bytes() == 0);
  // The SentencePiece leading space of the first token is dropped, later ones kept.
  sd.reset();
  const int32_t hello = spm->find_token("\xe2\x96\x81Hello");
  REQUIRE(hello >= 0);
  CHECK(*sd.push(hello) == "Hello");
  CHECK(*sd.push(hello) == " Hello");
}

TEST_CASE("pre-tokenizer table: each tokenizer.ggml.pre name once, each loads with its flags") {
  using tinyslm::detail::find_pre_tokenizer;
  using tinyslm::detail::pre_tokenizers;
  const std::vector<std::string> toks = {"<unk>", "<s>", "</s>", "a", "b", "ab"};
  for (size_t i = 0; i < std::size(pre_tokenizers); ++i) {
    const auto& p = pre_tokenizers[i];
    CAPTURE(std::string(p.name));
    for (size_t j = 0; j < i; ++j) CHECK(pre_tokenizers[j].name != p.name);
    CHECK(find_pre_tokenizer(p.name) == &p);
    auto t = load_vocab(make_vocab("gpt2", toks, {"a b"}, {}, {}, std::string(p.name)));
    REQUIRE(t);
    CHECK(t->kind() == Tokenizer::Kind::bpe);
    CHECK(t->pre() == p.name);
    CHECK(t->add_bos() == p.flags.add_bos);
    CHECK(*t->encode("ab", false) == std::vector<int32_t>{5});
  }
  CHECK(find_pre_tokenizer("no-such-pre") == nullptr);
  // Only byte-level BPE vocabularies read the pre-tokenizer name.
  CHECK(load_vocab(make_vocab("llama", toks, {}, {}, {}, "no-such-pre")));
  auto bad_pre = load_vocab(make_vocab("gpt2", toks, {"a b"}, {}, {}, "no-such-pre"));
  REQUIRE(!bad_pre);
  CHECK(bad_pre.error().message() == "vocab: unsupported pre-tokenizer 'no-such-pre'");
  auto bad_model = load_vocab(make_vocab("t5", toks, {}, {}, {}));
  REQUIRE(!bad_model);
  CHECK(bad_model.error().message() == "vocab: unsupported tokenizer model 't5'");
}

TEST_CASE("per-model defaults: BOS/EOS/UNK ids and flags of llama, bert and gpt2 vocabularies") {
  std::vector<std::string> toks;
  for (int i = 0; i < 128; ++i) toks.push_back(std::to_string(i));
  auto spm = load_vocab(make_vocab("llama", toks, {}, {}, {}));
  REQUIRE(spm);
  CHECK(spm->kind() == Tokenizer::Kind::spm);
  CHECK((spm->bos() == 1 && spm->eos() == 2 && spm->unk() == 0));
  CHECK((spm->add_bos() && !spm->add_eos() && spm->add_space_prefix()));
  auto wpm = load_vocab(make_vocab("bert", toks, {}, {}, {}));
  REQUIRE(wpm);
  CHECK(wpm->kind() == Tokenizer::Kind::wpm);
  CHECK((wpm->bos() == 101 && wpm->eos() == Tokenizer::no_token && wpm->unk() == 100));
  CHECK((wpm->add_bos() && !wpm->add_space_prefix()));
  auto bpe = load_vocab(make_vocab("gpt2", toks, {"1 2"}, {}, {}));
  REQUIRE(bpe);
  CHECK(bpe->kind() == Tokenizer::Kind::bpe);
  CHECK((bpe->bos() == 11 && bpe->eos() == 11 && bpe->unk() == Tokenizer::no_token));
  CHECK((!bpe->add_bos() && !bpe->add_space_prefix()));
}

TEST_CASE("qwen35 pre-tokenizer: combining marks stay inside letter runs (qwen2 splits them off)") {
  using tinyslm::detail::PreTokenizer;
  auto words = [](PreTokenizer pre, std::vector<uint32_t> cps) {
    std::vector<uint8_t> flags;
    for (uint32_t c : cps) flags.push_back(tinyslm::detail::unicode_flags(c));
    std::vector<size_t> w, scratch;
    tinyslm::detail::pre_tokenize(pre, cps.data(), flags.data(), cps.size(), w, scratch);
    return w;
  };
  // "cafe" + U+0301 (combining acute) + "!"
  const std::vector<uint32_t> cafe = {'c', 'a', 'f', 'e', 0x301, '!'};
  CHECK(words(PreTokenizer::qwen2, cafe) == std::vector<size_t>{4, 2});
  CHECK(words(PreTokenizer::qwen35, cafe) == std::vector<size_t>{5, 1});
  // A mark after a space opens a letter run that takes the space as its prefix.
  const std::vector<uint32_t> mark_first = {' ', 0x301, 'a', '1', '2'};
  CHECK(words(PreTokenizer::qwen2, mark_first) == std::vector<size_t>{2, 1, 1, 1});
  CHECK(words(PreTokenizer::qwen35, mark_first) == std::vector<size_t>{3, 1, 1});
  const auto* p = tinyslm::detail::find_pre_tokenizer("qwen35");
  REQUIRE(p);
  CHECK((p->pre == PreTokenizer::qwen35 && !p->flags.clean_spaces && !p->flags.ignore_merges));
}

TEST_CASE("gemma4 vocabulary: '</s>' is plain text when '<|tool_response>' ends generation" * doctest::test_suite("shared")) {
  const Tokenizer* t = tokenizer_for("syn-gemma4-F32.gguf");
  if (!t) return;
  const int32_t s_end = t->find_token("</s>"), turn_end = t->find_token("<turn|>");
  REQUIRE(s_end >= 0);
  REQUIRE(turn_end >= 0);
  CHECK(!t->is_eog(s_end));
  CHECK(t->is_eog(turn_end));
  CHECK(t->is_eog(t->find_token("<|tool_response>")));
  auto ids = t->encode("</s><turn|>", false, true);
  REQUIRE(ids);
  CHECK(ids->back() == turn_end);
  CHECK(std::find(ids->begin(), ids->end(), s_end) == ids->end());
  // Without Gemma 4's tool-response token "</s>" stays an end-of-generation token.
  const Tokenizer* llama = tokenizer_for("ggml-vocab-llama-spm.gguf");
  REQUIRE(llama);
  CHECK(llama->is_eog(llama->find_token("</s>")));
}
