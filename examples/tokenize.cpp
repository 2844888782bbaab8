// tokenize: text to token ids with a model's own tokenizer.
//
//   tokenize -m MODEL (-p TEXT | -f FILE) [--no-bos] [--no-parse-special] [--pieces]
//   tokenize -m MODEL --bench [-f FILE]     # tokenization speed on 1 MiB of mixed text
//
// Prints the ids space separated on one line. Like llama-tokenize, special tokens written in
// the text (e.g. "<|im_start|>") are recognised unless --no-parse-special is given.
#include <tinyslm.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
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
               "       tokenize -m MODEL --bench [-f FILE]\n");
}

// 1 MiB of English prose, Korean prose and source code, interleaved.
std::string bench_text() {
  const char* english =
      "Once upon a time, in a small village at the edge of a great forest, there lived an old "
      "clockmaker who could mend anything that ticked. Children brought him broken toys; farmers "
      "brought him rusty scales. \"Patience,\" he would say, \"is the gear that turns all others.\"\n";
  const char* korean =
      "대한민국의 수도는 서울이다. 서울은 한강을 끼고 있으며, 인구는 약 천만 명이다. "
      "오늘 날씨가 맑아서 우리는 공원에 산책을 나갔다. 한국어 토크나이저 테스트입니다.\n";
  const char* code =
      "#include <vector>\nint sum(const std::vector<int>& v) {\n    int s = 0;\n"
      "    for (int x : v) s += x;  // accumulate\n    return s;\n}\n"
      "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
      "    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n";
  std::string out;
  const size_t target = 1u << 20;
  uint32_t counter = 0;
  while (out.size() < target) {
    out += english;
    out += korean;
    out += code;
    out += "value_" + std::to_string(counter * 7919u % 100003u) + " = " + std::to_string(counter * 31u) + ";\n";
    ++counter;
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
