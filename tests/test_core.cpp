// Tests of the core layer: Expected/Error, checked arithmetic, aligned buffers, model sources,
// CPU feature detection, ParallelFor splitting.
#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "test_support.hpp"
#include "tinyslm/core.hpp"
#include "tinyslm/model.hpp"

using namespace tinyslm;

namespace {
Expected<int> parse_positive(int x) {
  if (x <= 0) return make_error(Errc::invalid_argument, "x must be positive, got " + std::to_string(x));
  return x * 2;
}
Expected<int> chained(int x) {
  TINYSLM_TRY(v, parse_positive(x));
  return v + 1;
}
std::string temp_path(const char* name) {
  return std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") + "/tinyslm_test_" +
         name + "_" + std::to_string(reinterpret_cast<uintptr_t>(&name) & 0xffff);
}
}  // namespace

TEST_CASE("Expected carries a value or an error") {
  auto ok = parse_positive(3);
  REQUIRE(ok);
  CHECK(*ok == 6);
  auto bad = parse_positive(-1);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code() == Errc::invalid_argument);
  CHECK(bad.error().message() == "x must be positive, got -1");
  CHECK(bad.value_or(7) == 7);

  CHECK(*chained(2) == 5);
  CHECK(chained(0).error().code() == Errc::invalid_argument);

  Expected<std::string> s = std::string("hello");
  Expected<std::string> moved = std::move(s);
  CHECK(*moved == "hello");
  Expected<std::string> copy = moved;
  copy = Error(Errc::io, "boom");
  CHECK_FALSE(copy);
  CHECK(*moved == "hello");

  Status st;
  CHECK(st);
  Status failed = make_error(Errc::unsupported, "nope");
  CHECK_FALSE(failed);
  CHECK(failed.error().code() == Errc::unsupported);

  Error e(Errc::not_found, "key missing");
  e.context("model.gguf");
  CHECK(e.message() == "model.gguf: key missing");
  CHECK(std::string(errc_name(Errc::io)) == "I/O error");
}

#if !defined(TINYSLM_NO_EXCEPTIONS)
TEST_CASE("Expected::value on an error throws when exceptions are on") {
  auto bad = parse_positive(0);
  CHECK_THROWS(bad.value());
}
#endif

TEST_CASE("checked arithmetic detects overflow") {
  uint64_t out;
  CHECK_FALSE(detail::add_overflows(1, 2, &out));
  CHECK(out == 3);
  CHECK(detail::add_overflows(UINT64_MAX, 1, &out));
  CHECK_FALSE(detail::mul_overflows(1ull << 31, 1ull << 32, &out));
  CHECK(out == 1ull << 63);
  CHECK(detail::mul_overflows(1ull << 32, 1ull << 32, &out));
  CHECK_FALSE(detail::mul_overflows(0, UINT64_MAX, &out));
  CHECK(out == 0);
  CHECK(detail::align_up(33, 32, &out));
  CHECK(out == 64);
  CHECK(detail::align_up(64, 32, &out));
  CHECK(out == 64);
  CHECK_FALSE(detail::align_up(UINT64_MAX - 3, 32, &out));
  CHECK(detail::is_power_of_two(1));
  CHECK(detail::is_power_of_two(4096));
  CHECK_FALSE(detail::is_power_of_two(0));
  CHECK_FALSE(detail::is_power_of_two(96));
}

TEST_CASE("AlignedBuffer is aligned, movable and refuses absurd sizes") {
  AlignedBuffer<float> b;
  REQUIRE(b.allocate(1000));
  CHECK(reinterpret_cast<uintptr_t>(b.data()) % 64 == 0);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i);
  AlignedBuffer<float> c = std::move(b);
  CHECK(b.data() == nullptr);
  CHECK(c.size() == 1000);
  CHECK(c[999] == 999.0f);
  AlignedBuffer<double> huge;
  CHECK_FALSE(huge.allocate(SIZE_MAX / 4));
  CHECK(huge.empty());
}

TEST_CASE("Source maps, reads and borrows the same bytes") {
  const std::string path = temp_path("source");
  std::vector<char> bytes(10000);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7);
  {
    std::ofstream f(path, std::ios::binary);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  auto mapped = Source::open(path, LoadMode::map);
  auto read = Source::open(path, LoadMode::read);
  REQUIRE(mapped);
  REQUIRE(read);
  CHECK(mapped->is_mapped());
  CHECK_FALSE(read->is_mapped());
  REQUIRE(mapped->size() == bytes.size());
  REQUIRE(read->size() == bytes.size());
  CHECK(std::memcmp(mapped->data(), bytes.data(), bytes.size()) == 0);
  CHECK(std::memcmp(read->data(), bytes.data(), bytes.size()) == 0);
  Source moved = std::move(*mapped);
  CHECK(std::memcmp(moved.data(), bytes.data(), bytes.size()) == 0);
  CHECK(moved.name() == path);

  auto borrowed = Source::borrow(bytes.data(), bytes.size(), "asset");
  CHECK(borrowed.data() == reinterpret_cast<const uint8_t*>(bytes.data()));
  CHECK(borrowed.name() == "asset");
  std::remove(path.c_str());
}

// Files of 2 MB and more are read into anonymous memory starting on a 2 MB boundary (Linux:
// advised for transparent huge pages); the bytes, the size and moves must be unaffected.
TEST_CASE("Source reads a multi-megabyte file into its own memory, byte for byte") {
  const std::string path = temp_path("source_big");
  std::vector<char> bytes((size_t(5) << 20) + 12345);
  uint32_t v = 1;
  for (auto& b : bytes) b = static_cast<char>((v = v * 1103515245u + 12345u) >> 24);
  {
    std::ofstream f(path, std::ios::binary);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  auto read = Source::open(path, LoadMode::read);
  REQUIRE(read);
  CHECK_FALSE(read->is_mapped());
  REQUIRE(read->size() == bytes.size());
  CHECK(std::memcmp(read->data(), bytes.data(), bytes.size()) == 0);
#if defined(__linux__)
  CHECK(reinterpret_cast<uintptr_t>(read->data()) % (uintptr_t(2) << 20) == 0);
#endif
  Source moved = std::move(*read);
  CHECK(read->data() == nullptr);
  CHECK(moved.size() == bytes.size());
  CHECK(std::memcmp(moved.data(), bytes.data(), bytes.size()) == 0);
  Source assigned;
  assigned = std::move(moved);
  CHECK(std::memcmp(assigned.data(), bytes.data(), bytes.size()) == 0);
  auto mapped = Source::open(path, LoadMode::map);
  REQUIRE(mapped);
  CHECK(std::memcmp(mapped->data(), bytes.data(), bytes.size()) == 0);
  std::remove(path.c_str());
}

TEST_CASE("Source reports missing files and directories") {
  auto missing = Source::open("/nonexistent/dir/model.gguf");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code() == Errc::io);
  CHECK(missing.error().message().find("/nonexistent/dir/model.gguf") != std::string::npos);
  for (LoadMode mode : {LoadMode::map, LoadMode::read}) {
    auto dir = Source::open("/tmp", mode);
    REQUIRE_FALSE(dir);
    CHECK(dir.error().code() == Errc::io);
#if !defined(_WIN32)
    CHECK(dir.error().message().find("not a regular file") != std::string::npos);
#endif
  }
}

// Paths are UTF-8 everywhere; on Windows they go through CreateFileW / _wfopen, not the ANSI
// code page.
TEST_CASE("Source opens and writes files whose UTF-8 names are not ASCII") {
  const std::string path = temp_path("\xD0\xBC\xD0\xBE\xD0\xB4\xD0\xB5\xD0\xBB\xD1\x8C_\xF0\x9F\x98\x80");  // "модель_😀"
  const std::string bytes = "GGUF and more bytes";
  std::FILE* f = detail::fopen_utf8(path, "wb");
  REQUIRE(f);
  CHECK(std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size());
  CHECK(std::fclose(f) == 0);
  for (LoadMode mode : {LoadMode::map, LoadMode::read}) {
    auto s = Source::open(path, mode);
    REQUIRE_MESSAGE(s, s.error().message());
    CHECK(std::string(reinterpret_cast<const char*>(s->data()), s->size()) == bytes);
  }
#if defined(_WIN32)
  auto bad = Source::open(std::string("bad\xff.gguf"));
  REQUIRE_FALSE(bad);
  CHECK(bad.error().message().find("not UTF-8") != std::string::npos);
  _wremove(detail::widen_utf8(path).c_str());
#else
  std::remove(path.c_str());
#endif
}

#if !defined(_WIN32)
// A sparse 5 GB file: mapped whole on a 64-bit system (no page is touched); refused with a
// clear error where size_t is 32 bits (a 32-bit struct stat cannot even hold its size).
TEST_CASE("Source of a file over 4 GB: mapped on 64-bit, 'too large for this address space' on 32-bit") {
  const std::string path = temp_path("sparse5g");
  const uint64_t size = uint64_t(5) << 30;
#if defined(__USE_LARGEFILE64) || defined(__BIONIC__)
  const int fd = ::open64(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
  const bool made = fd >= 0 && ::ftruncate64(fd, static_cast<off64_t>(size)) == 0;
#else
  const int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
  const bool made = fd >= 0 && ::ftruncate(fd, static_cast<off_t>(size)) == 0;
#endif
  if (fd >= 0) ::close(fd);
  if (!made) {
    MESSAGE("cannot create a sparse 5 GB file here; not checked");
    std::remove(path.c_str());
    return;
  }
  auto s = Source::open(path, LoadMode::map);
  if constexpr (sizeof(size_t) >= 8) {
    REQUIRE_MESSAGE(s, s.error().message());
    CHECK(s->size() == size);
  } else {
    REQUIRE_FALSE(s);
    CHECK(s.error().message().find("too large for this address space") != std::string::npos);
    auto r = Source::open(path, LoadMode::read);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().find("too large for this address space") != std::string::npos);
  }
  std::remove(path.c_str());
}
#endif

TEST_CASE("Source of an empty file is empty, not an error") {
  const std::string path = temp_path("empty");
  { std::ofstream f(path, std::ios::binary); }
  auto s = Source::open(path);
  REQUIRE(s);
  CHECK(s->size() == 0);
  std::remove(path.c_str());
}

TEST_CASE("CPU feature flags are consistent") {
  CpuFeatures f = detect_cpu_features();
  if (f.has_avx512()) CHECK(f.has_avx2_fma());
  if (f.has_avx512_vnni()) CHECK(f.has_avx512());
  if (f.avx2) CHECK(f.avx);
#if defined(__AVX2__)
  CHECK(f.avx2);  // compiled for AVX2, so the CPU running it has it
#endif
#if defined(__aarch64__)
  CHECK(f.neon);
#endif
}

TEST_CASE("ParallelFor::split covers every item once, in order") {
  for (int64_t count : {0, 1, 5, 31, 32, 33, 1000, 4097}) {
    for (int n : {1, 2, 3, 7}) {
      for (int64_t grain : {1, 4, 32}) {
        int64_t expect_begin = 0;
        for (int t = 0; t < n; ++t) {
          int64_t b, e;
          ParallelFor::split(count, t, n, grain, &b, &e);
          CHECK(b == expect_begin);
          CHECK(e >= b);
          if (e < count) CHECK((e - b) % grain == 0);
          expect_begin = e;
        }
        CHECK(expect_begin == count);
      }
    }
  }
  ParallelFor serial;
  int calls = 0;
  serial([&](int t, int n) {
    CHECK(t == 0);
    CHECK(n == 1);
    ++calls;
  });
  CHECK(calls == 1);
}

TEST_CASE("fp16 and bf16 conversions round-trip and round to nearest even") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_fp32(static_cast<uint16_t>(h));
    if (f != f) continue;  // nan payloads need not survive
    CHECK(fp32_to_fp16(f) == h);
  }
  CHECK(fp32_to_fp16(1.0f) == 0x3c00);
  CHECK(fp32_to_fp16(65504.0f) == 0x7bff);
  CHECK(fp32_to_fp16(65520.0f) == 0x7c00);  // halfway to the next binade rounds to inf
  CHECK(fp32_to_fp16(1.0f + 1.0f / 2048) == 0x3c00);  // tie, even mantissa stays
  CHECK(fp32_to_fp16(1.0f + 3.0f / 2048) == 0x3c02);  // tie, odd mantissa rounds up
  CHECK(fp16_to_fp32(0x0001) == 5.9604644775390625e-8f);
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_fp32(static_cast<uint16_t>(h));
    if (f != f) continue;
    CHECK(fp32_to_bf16(f) == h);
  }
  CHECK(fp32_to_bf16(1.00390625f) == 0x3f80);  // tie to even
}

// The default configuration (threads, exceptions, no Highway) lives in tinyslm::v0; other
// configurations get other inline namespaces (noexcept_check asserts v0_noexcept).
static_assert(std::is_same_v<tinyslm::Model, tinyslm::v0::Model>);
TEST_CASE("ABI tag names the default configuration") { CHECK(std::string(TINYSLM_ABI_TAG) == "v0"); }
