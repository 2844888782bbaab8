// The programs under examples/, run as a user runs them (their folder: $TINYSLM_BIN_DIR, else
// ../examples beside this test): piped chat with and without a chat template, perplexity against
// llama.cpp's golden values, and every bad input giving a one-line error and a non-zero exit
// (never a crash or a signal).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "json.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;

// Under a sanitizer the programs are several times slower: the quantized perplexity runs (the
// same code path as F32 up to the kernels, which their own tests cover) are left to Release.
#if defined(__SANITIZE_ADDRESS__)
#define TINYSLM_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TINYSLM_TEST_SANITIZED 1
#endif
#endif
#if defined(TINYSLM_TEST_SANITIZED)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
using tinyslm_test::Json;

namespace {

std::string bin_dir() {
  if (const char* e = std::getenv("TINYSLM_BIN_DIR")) return e;
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "examples";
  return (self.parent_path().parent_path() / "examples").string();
}

// Path of a built program, or "" (and a notice) when it was not built.
std::string program(const std::string& name) {
  const std::string p = bin_dir() + "/" + name;
  if (!fs::exists(p)) {
    std::fprintf(stderr, "SKIPPED: program %s not found (set TINYSLM_BIN_DIR)\n", p.c_str());
    return "";
  }
  return p;
}

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

fs::path work_dir() {
  const fs::path d = fs::temp_directory_path() / ("tinyslm-programs-" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

struct Run {
  int exit_code = -1;   // when exited normally
  bool signaled = false;
  std::string out, err;
};

// Runs a program with arguments, feeding `input` on stdin.
Run run(const std::string& prog, const std::vector<std::string>& args, const std::string& input = "") {
  const fs::path in = work_dir() / "stdin.txt", err = work_dir() / "stderr.txt";
  {
    std::ofstream f(in, std::ios::binary);
    f << input;
  }
  // exec, so that a signal reaches us as a signal and not as the shell's 128 + n
  std::string cmd = "exec " + quote(prog);
  for (const auto& a : args) {
    cmd += ' ';
    cmd += quote(a);
  }
  cmd += " <" + quote(in.string()) + " 2>" + quote(err.string());
  Run r;
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  r.signaled = WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) >= 128);
  r.err = tinyslm_test::read_text(err.string());
  return r;
}

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < s.size()) {
    size_t e = s.find('\n', at);
    if (e == std::string::npos) e = s.size();
    out.push_back(s.substr(at, e - at));
    at = e + 1;
  }
  return out;
}

// A failure the way the programs must fail: non-zero exit, no signal, one error line
// "<name>: ..." on stderr (a usage text or "notice:" lines may come with it).
void check_clean_failure(const std::string& name, const std::vector<std::string>& args, const std::string& input = "") {
  const std::string prog = program(name);
  if (prog.empty()) return;
  std::string shown = name;
  for (const auto& a : args) shown += " " + (a.size() > 40 ? a.substr(0, 40) + "..." : a);
  CAPTURE(shown);
  const Run r = run(prog, args, input);
  CAPTURE(r.err);
  CHECK(!r.signaled);
  CHECK(r.exit_code > 0);
  int error_lines = 0, other_lines = 0;
  for (const auto& l : lines(r.err)) {
    if (l.rfind(name + ": ", 0) == 0) ++error_lines;
    else if (l.rfind("usage:", 0) == 0 || l.rfind("notice:", 0) == 0 || l.empty() || l[0] == ' ' || l[0] == '\t') continue;
    else ++other_lines;
  }
  CHECK(error_lines == 1);
  CHECK(other_lines == 0);
}

}  // namespace

TEST_CASE("chat: piped input, with a chat template and without" * doctest::test_suite("shared")) {
  const std::string chat = program("chat");
  if (chat.empty()) return;
  for (const char* rel : {"models/synthetic/synth-llama3-tiny-F16.gguf", "models/synthetic/synth-gemma3-tiny-F16.gguf"}) {
    const std::string model = tinyslm_test::shared_file(rel);
    if (model.empty()) continue;
    CAPTURE(rel);
    const Run r = run(chat, {"-m", model, "--temp", "0", "-n", "12"}, "Hi\n/quit\n");
    CAPTURE(r.err);
    CHECK(!r.signaled);
    CHECK(r.exit_code == 0);
    CHECK(r.out.size() > 1);  // a reply, then a newline
    CHECK(r.err.find("tokens/s") != std::string::npos);
    CHECK(r.err.find("no chat template") == std::string::npos);

    // Two turns and a reset; end of input ends the program too.
    const Run t = run(chat, {"-m", model, "--temp", "0.7", "--seed", "3", "-n", "6", "-sys", "Be brief."},
                      "Hi\nAnd again\n/reset\nHello\n");
    CAPTURE(t.err);
    CHECK(t.exit_code == 0);
    size_t stats = 0;
    for (const auto& l : lines(t.err)) stats += l.find("tokens/s") != std::string::npos;
    CHECK(stats == 3);
    CHECK(t.err.find("reset") != std::string::npos);
  }

  const std::string stories = tinyslm_test::shared_file("models/stories260K.gguf");
  if (stories.empty()) return;
  const Run r = run(chat, {"-m", stories, "-n", "16", "--seed", "1"}, "Hi\n/quit\n");
  CAPTURE(r.err);
  CHECK(!r.signaled);
  CHECK(r.exit_code == 0);
  CHECK(r.out.size() > 1);
  CHECK(r.err.find("no chat template") != std::string::npos);
  CHECK(r.err.find("tokens/s") != std::string::npos);

  // Same seed, same reply.
  const Run r2 = run(chat, {"-m", stories, "-n", "16", "--seed", "1"}, "Hi\n/quit\n");
  CHECK(r2.out == r.out);
}

TEST_CASE("perplexity: matches llama-perplexity within 1%" * doctest::test_suite("shared")) {
  const std::string ppl = program("perplexity");
  const std::string text = tinyslm_test::shared_file("golden/ppl.txt");
  if (ppl.empty() || text.empty()) return;
  struct Case {
    const char* model;
    const char* golden;
  };
  for (const Case c : {Case{"models/stories260K.gguf", "golden/stories260K.json"},
                       Case{"models/quant/stories260K-Q8_0.gguf", "golden/stories260K-Q8_0.json"},
                       Case{"models/quant/stories260K-Q4_0.gguf", "golden/stories260K-Q4_0.json"},
                       Case{"models/quant/stories260K-Q4_K_M.gguf", "golden/stories260K-Q4_K_M.json"}}) {
    if (kSanitized && std::string(c.model).find("quant/") != std::string::npos) continue;
    const std::string model = tinyslm_test::shared_file(c.model);
    const std::string gpath = tinyslm_test::shared_file(c.golden);
    if (model.empty() || gpath.empty()) continue;
    const Json g = Json::parse(tinyslm_test::read_text(gpath));
    const double want = g["perplexity"]["ppl"].as_number();
    const Run r = run(ppl, {"-m", model, "-f", text, "-c", "128", "-t", "2"});
    const std::string model_name = c.model;
    CAPTURE(model_name);
    CAPTURE(r.err);
    REQUIRE(r.exit_code == 0);
    const size_t at = r.out.find("PPL = ");
    REQUIRE(at != std::string::npos);
    const double got = std::atof(r.out.c_str() + at + 6);
    MESSAGE(std::string(c.model) << ": PPL " << got << " (llama.cpp " << want << ")");
    CHECK(std::fabs(got - want) <= 0.01 * want);
  }
}

TEST_CASE("programs: bad input gives a one-line error and a non-zero exit" * doctest::test_suite("shared")) {
  const std::string stories = tinyslm_test::shared_file("models/stories260K.gguf");
  const std::string synth = tinyslm_test::shared_file("models/synthetic/synth-llama3-tiny-F16.gguf");
  const std::string text = tinyslm_test::shared_file("golden/ppl.txt");
  if (stories.empty() || synth.empty() || text.empty()) return;
  const std::string missing = (work_dir() / "no-such-model.gguf").string();
  const std::string not_gguf = (work_dir() / "not-a-model.gguf").string();
  const std::string truncated = (work_dir() / "truncated.gguf").string();
  {
    std::ofstream(not_gguf, std::ios::binary) << "this is plain text, not a model\n";
    const std::string bytes = tinyslm_test::read_text(stories);
    std::ofstream(truncated, std::ios::binary) << bytes.substr(0, bytes.size() / 3);
  }
  const std::string out = (work_dir() / "out.gguf").string();
  const std::string too_big = "1000000";
  const std::string long_line(4000, 'a');

  for (const auto& m : {missing, not_gguf, truncated}) {
    check_clean_failure("chat", {"-m", m}, "Hi\n");
    check_clean_failure("complete", {"-m", m, "-p", "Hi", "-n", "4"});
    check_clean_failure("perplexity", {"-m", m, "-f", text, "-c", "128"});
    check_clean_failure("tokenize", {"-m", m, "-p", "Hi"});
    check_clean_failure("quantize", {m, out, "Q8_0"});
    check_clean_failure("inspect", {m});
  }
  // A context larger than the model allows (stories260K: 2048).
  check_clean_failure("chat", {"-m", stories, "-c", too_big}, "Hi\n");
  check_clean_failure("complete", {"-m", stories, "-p", "Hi", "-n", "4", "-c", too_big});
  check_clean_failure("perplexity", {"-m", stories, "-f", text, "-c", too_big});
  // A prompt longer than the context.
  check_clean_failure("chat", {"-m", stories, "-c", "32"}, long_line + "\n");
  check_clean_failure("chat", {"-m", synth, "-c", "32", "-sys", long_line}, "Hi\n");
  check_clean_failure("complete", {"-m", stories, "-f", text, "-n", "4", "-c", "64"});
  check_clean_failure("perplexity", {"-m", stories, "-f", text, "-c", "2048"});  // text too short for it
  // A quantized KV cache on stories260K (head size 8: llama.cpp refuses it too), an unknown cache type.
  check_clean_failure("chat", {"-m", stories, "-ctk", "q8_0"}, "Hi\n");
  check_clean_failure("complete", {"-m", stories, "-p", "Hi", "-n", "4", "--cache-type-v", "q4_0"});
  check_clean_failure("perplexity", {"-m", stories, "-f", text, "-c", "128", "-ctk", "q8_0", "-ctv", "q8_0"});
  check_clean_failure("complete", {"-m", stories, "-p", "Hi", "-n", "4", "-ctk", "q5_1"});
  check_clean_failure("perplexity", {"-m", stories, "-f", text, "-c", "128", "-ctv"});
  // -t 0.
  check_clean_failure("chat", {"-m", stories, "-t", "0"}, "Hi\n");
  check_clean_failure("complete", {"-m", stories, "-p", "Hi", "-n", "4", "-t", "0"});
  check_clean_failure("perplexity", {"-m", stories, "-f", text, "-c", "128", "-t", "0"});
  check_clean_failure("quantize", {stories, out, "Q8_0", "-t", "0"});
  // Unknown flags, flags without values, bad values.
  // Speculative decoding: an unknown drafter, a draft length out of range.
  check_clean_failure("complete", {"-m", stories, "-p", "Hi", "-n", "4", "--spec-type", "eagle"});
  check_clean_failure("complete", {"-m", stories, "-p", "Hi", "-n", "4", "--draft-max", "-1"});
  check_clean_failure("complete", {"-m", stories, "-p", "Hi", "-n", "4", "--draft-n-min", "x"});
  check_clean_failure("chat", {"-m", stories, "--spec-type", "ngram"}, "Hi\n");
  check_clean_failure("chat", {"-m", stories, "--draft", "1000"}, "Hi\n");
  check_clean_failure("chat", {"-m", stories, "--no-such-flag"}, "Hi\n");
  check_clean_failure("chat", {"-m", stories, "--temp"}, "Hi\n");
  check_clean_failure("chat", {"-m", stories, "--top-p", "abc"}, "Hi\n");
  check_clean_failure("chat", {}, "Hi\n");
  check_clean_failure("complete", {"-m", stories, "-p", "Hi", "--no-such-flag"});
  check_clean_failure("perplexity", {"-m", stories, "-f", text, "--no-such-flag"});
  check_clean_failure("perplexity", {"-m", stories, "-f", (work_dir() / "no-such-text.txt").string(), "-c", "128"});
  check_clean_failure("perplexity", {"-m", stories});
  check_clean_failure("tokenize", {"-m", stories, "-p", "Hi", "--no-such-flag"});
  check_clean_failure("quantize", {stories, out, "NOT_A_TYPE"});
  check_clean_failure("quantize", {"--no-such-flag", stories, out, "Q8_0"});
  check_clean_failure("inspect", {"--no-such-flag", stories});
  std::error_code ec;
  fs::remove_all(work_dir(), ec);
}

TEST_CASE("complete: greedy output on stories260K equals llama.cpp's, byte for byte" * doctest::test_suite("shared")) {
  const std::string prog = program("complete");
  const std::string model = tinyslm_test::shared_file("models/stories260K.gguf");
  const std::string golden = tinyslm_test::shared_file("golden/stories260K.json");
  if (prog.empty() || model.empty() || golden.empty()) return;
  const Json g = Json::parse(tinyslm_test::read_text(golden));
  int checked = 0;
  for (const auto& p : g["prompts"].items()) {
    if (p["kind"].as_string() != "text") continue;
    CAPTURE(p["id"].as_string());
    const fs::path prompt = work_dir() / "greedy_prompt.txt";
    {
      std::ofstream f(prompt, std::ios::binary);
      f << p["text"].as_string();
    }
    const auto& want = p["greedy"]["tokens"].int_list();
    const Run r = run(prog, {"-m", model, "-f", prompt.string(), "-n", std::to_string(want.size()), "--temp", "0", "--ids"});
    CAPTURE(r.err);
    REQUIRE(r.exit_code == 0);
    // stdout: the streamed text, a newline, then the generated ids on the last line
    const auto out_lines = lines(r.out);
    REQUIRE(out_lines.size() >= 2);
    std::vector<int32_t> ids;
    for (const char* s = out_lines.back().c_str(); *s;) {
      char* end = nullptr;
      const long v = std::strtol(s, &end, 10);
      if (end == s) break;
      ids.push_back(static_cast<int32_t>(v));
      s = end;
    }
    CHECK(ids == want);
    const std::string text = r.out.substr(0, r.out.size() - out_lines.back().size() - 1);
    std::string expected = p["greedy"]["text"].as_string();
    CHECK(text == expected + "\n");
    ++checked;
  }
  CHECK(checked >= 9);  // the golden file has 9 text prompts (and 3 chat prompts)
}
