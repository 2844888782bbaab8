// Helpers shared by the tests: where ../shared is, and small file utilities.
//
// Tests that read ../shared (real models, llama.cpp's golden outputs) belong to the doctest
// suite "shared": `TEST_CASE("name" * doctest::test_suite("shared"))`. The build registers
// each program twice: `test_x` runs every other test and must pass everywhere; `test_x_shared`
// runs the suite and is reported as skipped, never as passed, when the data is missing (see
// tests/CMakeLists.txt). Two checks keep the split honest:
//  - a test outside the suite that asks for ../shared fails (it would pass silently on a
//    machine without the data);
//  - when ../shared is absent, a test of the suite that ends without taking the skip path
//    (shared_file() returning "", or skip_shared()) prints kSkipNotTaken, which fails the run.
#pragma once

#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace tinyslm_test {

inline constexpr const char* kSharedSuite = "shared";
inline constexpr const char* kSkipNotTaken = "SHARED TEST DID NOT TAKE THE SKIP PATH";

namespace detail {

// What the listener below knows about the running test case.
struct SharedTracking {
  const doctest::TestCaseData* test = nullptr;
  bool skipped = false;
};
inline SharedTracking& shared_tracking() {
  static SharedTracking t;
  return t;
}

inline bool in_shared_suite(const doctest::TestCaseData* t) {
  return t && t->m_test_suite && std::strcmp(t->m_test_suite, kSharedSuite) == 0;
}

}  // namespace detail

// The shared models and golden outputs: $TINYSLM_SHARED, else ../shared beside the repo.
inline std::string shared_dir() {
  const doctest::TestCaseData* t = detail::shared_tracking().test;
  if (t && !detail::in_shared_suite(t))
    FAIL_CHECK("this test reads ../shared: declare it with * doctest::test_suite(\"shared\")");
  if (const char* e = std::getenv("TINYSLM_SHARED")) return e;
  return TINYSLM_TEST_SHARED_DIR;
}

inline bool file_exists(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return f.good();
}

// Prints the notice ctest turns into "skipped" and records that this test took the skip path.
inline void skip_shared(const std::string& what) {
  std::fprintf(stderr, "SKIPPED: %s not found (set TINYSLM_SHARED)\n", what.c_str());
  detail::shared_tracking().skipped = true;
}

// Path of a file under shared/, or "" (and a notice) when it is missing, so tests skip clearly.
inline std::string shared_file(const std::string& rel) {
  std::string p = shared_dir() + "/" + rel;
  if (!file_exists(p)) {
    skip_shared(p);
    return "";
  }
  return p;
}

inline std::vector<unsigned char> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

namespace detail {

// Follows each test case for the two checks described at the top of this file.
struct SharedListener : doctest::IReporter {
  explicit SharedListener(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData& t) override { shared_tracking() = {&t, false}; }
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {
    SharedTracking& s = shared_tracking();
    if (in_shared_suite(s.test) && !s.skipped) {
      const char* e = std::getenv("TINYSLM_SHARED");
      const std::string dir = e ? e : TINYSLM_TEST_SHARED_DIR;
      std::error_code ec;
      if (!std::filesystem::is_directory(dir, ec))
        std::fprintf(stderr, "%s: '%s' (%s is missing)\n", kSkipNotTaken, s.test->m_name, dir.c_str());
    }
    s = {};
  }
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

}  // namespace detail
}  // namespace tinyslm_test

DOCTEST_REGISTER_LISTENER("tinyslm_shared", 1, tinyslm_test::detail::SharedListener);

// Declares `var` as the path of shared/`rel`, or returns from the test (skipped) when missing.
#define TINYSLM_REQUIRE_SHARED(var, rel)                             \
  const std::string var = ::tinyslm_test::shared_file(rel);          \
  if (var.empty()) return
