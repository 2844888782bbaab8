// tokenize: text to token ids with a model's own tokenizer.
//
//   tokenize -m MODEL (-p TEXT | -f FILE) [--no-bos] [--no-parse-special] [--pieces]
//   tokenize -m MODEL --bench [--no-cache] [-f FILE]   # speed on 1 MiB of mixed text
//
// Prints the ids space separated on one line. Like llama-tokenize, special tokens written in
// the text (e.g. "<|im_start|>") are recognised unless --no-parse-special is given.
#include <tinyslm.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

namespace {

int fail(const std::string& msg) {
  std::fprintf(stderr, "tokenize: %s\n", msg.c_str());
  return 1;
}

void usage() {
  std::fprintf(stderr,
               "usage: tokenize -m MODEL (-p TEXT | -f FILE) [--no-bos] [--no-parse-special] [--pieces]\n"
               "       tokenize -m MODEL --bench [--no-cache] [-f FILE]\n");
}

// 1 MiB of mixed text: English sentences, Korean sentences and C++/Python code, built from word
// lists with a fixed pseudo-random generator so words recur with a natural skew but the text
// does not repeat verbatim.
std::string bench_text() {
  static const char* en[] = {
      "the", "of", "and", "a", "to", "in", "is", "was", "that", "for", "it", "with", "as", "on", "be", "at",
      "by", "this", "had", "not", "are", "but", "from", "or", "have", "an", "they", "which", "one", "you",
      "were", "her", "all", "she", "there", "would", "their", "we", "him", "been", "has", "when", "who",
      "will", "more", "no", "if", "out", "so", "said", "what", "up", "its", "about", "into", "than", "them",
      "can", "only", "other", "new", "some", "could", "time", "these", "two", "may", "then", "do", "first",
      "any", "my", "now", "such", "like", "our", "over", "man", "me", "even", "most", "made", "after",
      "also", "did", "many", "before", "must", "through", "back", "years", "where", "much", "your", "way",
      "well", "down", "should", "because", "each", "just", "those", "people", "how", "too", "little",
      "state", "good", "very", "make", "world", "still", "own", "see", "men", "work", "long", "get", "here",
      "between", "both", "life", "being", "under", "never", "day", "same", "another", "know", "while",
      "last", "might", "us", "great", "old", "year", "off", "come", "since", "against", "go", "came",
      "right", "used", "take", "three", "clockmaker", "village", "forest", "gear", "patience", "river",
      "mountain", "library", "engine", "tokenizer", "whisper", "lantern", "harvest", "quantum", "Seoul",
      "London", "Alice", "Bob", "don't", "it's", "we'll", "they're", "I'm", "You've"};
  static const char* ko[] = {"대한민국의", "수도는", "서울이다", "서울은", "한강을", "끼고", "있으며",
                             "인구는", "약", "천만", "명이다", "오늘", "날씨가", "맑아서", "우리는",
                             "공원에", "산책을", "나갔다", "한국어", "토크나이저", "테스트입니다",
                             "띄어쓰기와", "받침을", "확인합니다", "학교에서", "친구들과", "점심을",
                             "먹었다", "도서관은", "조용하다", "내일은", "비가", "올", "것이다"};
  static const char* code[] = {
      "for (int i = 0; i < n; ++i) {\n", "    sum += a[i] * b[i];\n", "}\n", "return result;\n",
      "std::vector<int> v = {", "if (x == nullptr) return;\n", "def ", "(self, x):\n", "    return x + ",
      "import numpy as np\n", "#include <vector>\n", "auto it = map.find(key);\n", "    print(f\"{value}\")\n",
      "class Parser:\n", "    pass\n", "};\n", "    // TODO: handle errors\n", "x = [i ** 2 for i in range(",
      ")]\n", "const char* name = \"tinyslm\";\n"};
  uint64_t state = 0x9E3779B97F4A7C15ull;
  auto next = [&](uint32_t n) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const uint32_t r = static_cast<uint32_t>(state >> 33);
    return (r % n + r % (n / 2 + 1) * (r & 1)) % n;  // skewed towards small indices
  };
  std::string out;
  const size_t target = 1u << 20;
  while (out.size() < target) {
    const uint32_t kind = next(10);
    if (kind < 5) {  // an English sentence
      const uint32_t len = 5 + next(15);
      for (uint32_t w = 0; w < len; ++w) {
        std::string word = en[next(std::size(en))];
        if (w == 0) word[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(word[0])));
        out += word;
        out += (w + 1 == len) ? ". " : (next(12) == 0 ? ", " : " ");
      }
      if (next(4) == 0) out += "\n";
    } else if (kind < 8) {  // a Korean sentence
      const uint32_t len = 3 + next(8);
      for (uint32_t w = 0; w < len; ++w) {
        out += ko[next(std::size(ko))];
        out += (w + 1 == len) ? ". " : " ";
      }
      if (next(3) == 0) out += "\n";
    } else {  // some code with fresh numbers and identifiers
      const uint32_t len = 2 + next(6);
      for (uint32_t w = 0; w < len; ++w) {
        out += code[next(std::size(code))];
        if (next(3) == 0) out += "var_" + std::to_string(next(5000)) + " = " + std::to_string(next(100000)) + ";\n";
      }
    }
  }
  out.resize(target);
  // Do not end inside a UTF-8 character.
  while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xC0) == 0x80) out.pop_back();
  if (!out.empty() && static_cast<unsigned char>(out.back()) >= 0xC0) out.pop_back();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, text, file;
  bool have_text = false, add_special = true, parse_special = true, bench = false, pieces = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) return nullptr;
      (void)flag;
      return argv[++i];
    };
    if (a == "-m" || a == "--model") {
      const char* v = next("-m");
      if (!v) return fail("-m needs a model path");
      model_path = v;
    } else if (a == "-p" || a == "--prompt") {
      const char* v = next("-p");
      if (!v) return fail("-p needs a text");
      text = v;
      have_text = true;
    } else if (a == "-f" || a == "--file") {
      const char* v = next("-f");
      if (!v) return fail("-f needs a file name");
      file = v;
    } else if (a == "--no-bos") {
      add_special = false;
    } else if (a == "--no-parse-special") {
      parse_special = false;
    } else if (a == "--pieces") {
      pieces = true;
    } else if (a == "--bench") {
      bench = true;
    } else if (a == "--no-cache") {  // benchmark without the per-call word cache
      tinyslm::detail::tokenizer_tuning().cache_min_bytes = SIZE_MAX;
    } else if (a == "-h" || a == "--help") {
      usage();
      return 0;
    } else {
      usage();
      return fail("unknown argument '" + a + "'");
    }
  }
  if (model_path.empty()) return fail("missing -m MODEL");
  if (!file.empty()) {
    if (have_text) return fail("give either -p or -f, not both");
    std::ifstream in(file, std::ios::binary);
    if (!in) return fail("cannot open '" + file + "'");
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    have_text = true;
  }
  if (!have_text && !bench) return fail("missing -p TEXT or -f FILE");

  auto gguf = tinyslm::GgufFile::open(model_path);
  if (!gguf) return fail(gguf.error().message());
  auto tok = tinyslm::Tokenizer::from_gguf(*gguf);
  if (!tok) return fail(tok.error().message());

  if (bench) {
    if (!have_text) text = bench_text();
    if (const char* dump = std::getenv("TINYSLM_BENCH_DUMP")) {  // keep the text for other tools
      std::ofstream o(dump, std::ios::binary);
      o << text;
    }
    double best = 1e30;
    size_t n_tokens = 0;
    for (int rep = 0; rep < 3; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      auto ids = tok->encode(text, false, false);
      const auto t1 = std::chrono::steady_clock::now();
      if (!ids) return fail(ids.error().message());
      n_tokens = ids->size();
      best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
    }
    const double mb = static_cast<double>(text.size()) / (1024.0 * 1024.0);
    std::printf("model %s, %s tokenizer (pre '%s'), %.2f MiB -> %zu tokens, best of 3: %.1f ms, %.2f MiB/s\n",
                model_path.c_str(),
                tok->kind() == tinyslm::Tokenizer::Kind::spm ? "SPM"
                : tok->kind() == tinyslm::Tokenizer::Kind::bpe ? "BPE"
                                                               : "WordPiece",
                tok->pre().c_str(), mb, n_tokens, best * 1e3, mb / best);
    return 0;
  }

  auto ids = tok->encode(text, add_special, parse_special);
  if (!ids) return fail(ids.error().message());
  std::string line;
  for (size_t i = 0; i < ids->size(); ++i) {
    if (i) line.push_back(' ');
    line += std::to_string((*ids)[i]);
  }
  std::printf("%s\n", line.c_str());
  if (pieces) {
    for (int32_t id : *ids) {
      auto p = tok->token_to_piece(id);
      std::printf("%6d -> '%.*s'\n", id, static_cast<int>(p->size()), p->data());
    }
  }
  return 0;
}
