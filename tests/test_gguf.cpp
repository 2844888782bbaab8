// Tests of the gguf layer: the reader on every real file in ../shared, the writer's round
// trip, typed look-ups, and every malformed-file path (each feeds the bad bytes and checks
// the error). Allocation during hostile parses is measured and bounded by the file size.
#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <set>
#include <filesystem>
#include <map>
#include <new>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "tinyslm/gguf.hpp"

using namespace tinyslm;
using tinyslm_test::shared_file;

// ---------------------------------------------------------------------------------------
// Allocation accounting: while `g_counting` is set, every operator new adds its size.

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

namespace {
std::atomic<bool> g_counting{false};
std::atomic<uint64_t> g_allocated{0};
}  // namespace

void* operator new(std::size_t n) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocated += n;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace {

// Parses bytes held in an exactly-sized heap copy (so sanitizers see any over-read) and
// returns the result, checking that the parse allocated at most a bounded multiple of the
// file size: the index holds one small entry per key or tensor actually present.
// Every buffer parse_bytes saw, valid or not; it lives until the program ends (so returned
// files stay valid) and doubles as the fuzzer's seed corpus.
std::deque<std::vector<uint8_t>> g_arena;

Expected<GgufFile> parse_bytes(const std::vector<uint8_t>& bytes) {
  auto& arena = g_arena;
  arena.emplace_back(bytes);
  const std::vector<uint8_t>& kept = arena.back();
  g_allocated = 0;
  g_counting = true;
  auto f = GgufFile::from_memory(kept.data(), kept.size(), "test.gguf");
  g_counting = false;
  const uint64_t limit = 8 * static_cast<uint64_t>(bytes.size()) + 4096;
  CHECK_MESSAGE(g_allocated.load() <= limit, "parse allocated " << g_allocated.load()
                                                                 << " bytes for a file of "
                                                                 << bytes.size());
  return f;
}

// Hand-assembles GGUF bytes, valid or not.
struct Raw {
  std::vector<uint8_t> b;
  template <class T>
  Raw& put(T v) {
    GgufWriter::put<T>(b, v);
    return *this;
  }
  Raw& str(std::string_view s) {
    GgufWriter::put_string(b, s);
    return *this;
  }
  Raw& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    for (char c : {'G', 'G', 'U', 'F'}) b.push_back(static_cast<uint8_t>(c));
    return put<uint32_t>(version).put<uint64_t>(n_tensors).put<uint64_t>(n_kv);
  }
  Raw& kv_u32(std::string_view key, uint32_t v) {
    return str(key).put<uint32_t>(static_cast<uint32_t>(GgufValueType::u32)).put<uint32_t>(v);
  }
  Raw& tensor(std::string_view name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name).put<uint32_t>(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) put<uint64_t>(d);
    return put<uint32_t>(type).put<uint64_t>(offset);
  }
  Raw& pad(size_t align = 32) {
    while (b.size() % align) b.push_back(0);
    return *this;
  }
  Raw& zeros(size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }
};

// Expects a parse failure with `code` whose message contains `needle`.
void expect_error(const std::vector<uint8_t>& bytes, Errc code, const std::string& needle) {
  auto f = parse_bytes(bytes);
  REQUIRE_FALSE(f);
  CHECK(f.error().code() == code);
  CHECK_MESSAGE(f.error().message().find(needle) != std::string::npos,
                "message was: " << f.error().message());
  CHECK(f.error().message().rfind("test.gguf", 0) == 0);  // names the file
}

GgufWriter small_valid_writer() {
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.block_count", 2);
  std::vector<float> t(64);
  for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<float>(i);
  const uint64_t shape[] = {16, 4};
  REQUIRE(w.add_tensor("a", TensorType::F32, shape, t.data(), t.size() * 4));
  const uint64_t shape_b[] = {32};
  std::vector<uint8_t> q(34, 1);
  REQUIRE(w.add_tensor("b", TensorType::Q8_0, shape_b, q.data(), q.size()));
  return w;
}

std::vector<uint8_t> small_valid_file() { return small_valid_writer().to_bytes(); }

}  // namespace

// ---------------------------------------------------------------------------------------

TEST_CASE("tensor type table is self-consistent") {
  for (const auto& t : tensor_type_table) {
    const TensorTypeInfo* by_id = tensor_type_info(static_cast<uint32_t>(t.type));
    REQUIRE(by_id != nullptr);
    CHECK(by_id->type == t.type);
    CHECK(tensor_type_by_name(t.name) == by_id);
    CHECK(t.block_size > 0);
    CHECK(t.block_bytes > 0);
  }
  CHECK(tensor_type_info(4u) == nullptr);  // removed Q4_2
  CHECK(tensor_type_info(1000u) == nullptr);
  CHECK(tensor_type_by_name("q4_k") == &tensor_type_info(TensorType::Q4_K));
  CHECK(tensor_type_by_name("Q9_9") == nullptr);
  uint64_t bytes;
  CHECK(tensor_row_bytes(TensorType::Q4_0, 64, &bytes));
  CHECK(bytes == 36);
  CHECK_FALSE(tensor_row_bytes(TensorType::Q4_K, 64, &bytes));
}

TEST_CASE("writer round trip: every value type, nested arrays, tensors, alignment") {
  for (uint32_t align : {1u, 8u, 32u, 64u, 4096u}) {
    GgufWriter w;
    if (align != 32) w.set_alignment(align);
    w.set_u8("v.u8", 250);
    w.set_i8("v.i8", -120);
    w.set_u16("v.u16", 65000);
    w.set_i16("v.i16", -32000);
    w.set_u32("v.u32", 4000000000u);
    w.set_i32("v.i32", -2000000000);
    w.set_u64("v.u64", 1ull << 63);
    w.set_i64("v.i64", -(1ll << 62));
    w.set_f32("v.f32", 0.125f);
    w.set_f64("v.f64", -2.5e300);
    w.set_bool("v.bool", true);
    w.set_string("v.str", std::string("with\0nul", 8));
    const std::vector<int32_t> ints = {1, -2, 3};
    w.set_array<int32_t>("v.arr_i32", GgufValueType::i32, ints);
    const std::vector<std::string> strs = {"a", "", "ccc"};
    w.set_array_strings("v.arr_str", strs);
    // [[1, 2], [3]] of u8, built as raw bytes
    GgufWriter::Encoded nested{GgufValueType::array, {}};
    GgufWriter::put<uint32_t>(nested.bytes, static_cast<uint32_t>(GgufValueType::array));
    GgufWriter::put<uint64_t>(nested.bytes, 2);
    for (std::vector<uint8_t> inner : {std::vector<uint8_t>{1, 2}, std::vector<uint8_t>{3}}) {
      GgufWriter::put<uint32_t>(nested.bytes, static_cast<uint32_t>(GgufValueType::u8));
      GgufWriter::put<uint64_t>(nested.bytes, inner.size());
      nested.bytes.insert(nested.bytes.end(), inner.begin(), inner.end());
    }
    w.set_raw("v.nested", nested);
    w.set_u32("v.replaced", 1);
    w.set_u32("v.replaced", 2);

    std::mt19937 rng(align);
    std::vector<uint8_t> q4(18 * 8), f16(2 * 24);
    for (auto& x : q4) x = static_cast<uint8_t>(rng());
    for (auto& x : f16) x = static_cast<uint8_t>(rng());
    const uint64_t s1[] = {64, 4};
    const uint64_t s2[] = {2, 3, 4};
    REQUIRE(w.add_tensor("blk.0.q4", TensorType::Q4_0, s1, q4.data(), q4.size()));
    REQUIRE(w.add_tensor("blk.0.f16", TensorType::F16, s2, f16.data(), f16.size()));
    REQUIRE(w.add_tensor_generated("gen", TensorType::F32, std::span<const uint64_t>(s1, 1),
                                   [](uint8_t* out, size_t n) {
                                     for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(i);
                                   }));

    auto bytes = w.to_bytes();
    auto f = parse_bytes(bytes);
    REQUIRE_MESSAGE(f, f.error().message());
    CHECK(f->version() == 3);
    CHECK(f->alignment() == align);
    CHECK(*f->get<uint8_t>("v.u8") == 250);
    CHECK(*f->get<int8_t>("v.i8") == -120);
    CHECK(*f->get<uint16_t>("v.u16") == 65000);
    CHECK(*f->get<int16_t>("v.i16") == -32000);
    CHECK(*f->get<uint32_t>("v.u32") == 4000000000u);
    CHECK(*f->get<int32_t>("v.i32") == -2000000000);
    CHECK(*f->get<uint64_t>("v.u64") == 1ull << 63);
    CHECK(*f->get<int64_t>("v.i64") == -(1ll << 62));
    CHECK(*f->get<float>("v.f32") == 0.125f);
    CHECK(*f->get<double>("v.f64") == -2.5e300);
    CHECK(*f->get<bool>("v.bool") == true);
    CHECK(*f->get<std::string>("v.str") == std::string("with\0nul", 8));
    CHECK(*f->get<uint32_t>("v.replaced") == 2);
    auto arr = f->get<GgufArray>("v.arr_i32");
    REQUIRE(arr);
    CHECK(arr->element_type() == GgufValueType::i32);
    REQUIRE(arr->size() == 3);
    CHECK(arr->at<int32_t>(1) == -2);
    auto sarr = f->get<GgufArray>("v.arr_str");
    REQUIRE(sarr);
    CHECK(sarr->strings() == std::vector<std::string_view>{"a", "", "ccc"});
    auto nest = f->get<GgufArray>("v.nested");
    REQUIRE(nest);
    std::vector<std::vector<int>> seen;
    nest->for_each([&](const GgufValue& v) {
      GgufArray inner = v.as_array();
      std::vector<int> row;
      for (uint64_t i = 0; i < inner.size(); ++i) row.push_back(inner.at<uint8_t>(i));
      seen.push_back(row);
      return true;
    });
    CHECK(seen == std::vector<std::vector<int>>{{1, 2}, {3}});

    REQUIRE(f->tensors().size() == 3);
    const GgufTensorInfo* t = f->find_tensor("blk.0.q4");
    REQUIRE(t);
    CHECK(t->type == TensorType::Q4_0);
    CHECK(t->n_dims == 2);
    CHECK(t->ne[0] == 64);
    CHECK(t->ne[1] == 4);
    CHECK(t->n_elements == 256);
    CHECK(t->n_bytes == q4.size());
    CHECK(std::memcmp(t->data, q4.data(), q4.size()) == 0);
    CHECK((f->data_offset() + t->offset) % align == 0);
    const GgufTensorInfo* t2 = f->find_tensor("blk.0.f16");
    REQUIRE(t2);
    CHECK(t2->shape_string() == "[2, 3, 4]");
    CHECK(std::memcmp(t2->data, f16.data(), f16.size()) == 0);
    const GgufTensorInfo* g = f->find_tensor("gen");
    REQUIRE(g);
    CHECK(g->data[255] == 255);
    CHECK(f->find_tensor("missing") == nullptr);

    // copy_metadata reproduces every value byte for byte
    GgufWriter w2;
    w2.copy_metadata(*f);
    auto f2 = parse_bytes(w2.to_bytes());
    REQUIRE(f2);
    for (const auto& kv : f->metadata()) {
      if (kv.key == "general.alignment") continue;
      const GgufKv* other = f2->find(kv.key);
      REQUIRE(other);
      CHECK(format_value(other->value, 100) == format_value(kv.value, 100));
    }
  }
}

TEST_CASE("writer writes the same bytes to a file as to memory") {
  GgufWriter w = small_valid_writer();
  const auto bytes = w.to_bytes();
  const std::string path = std::filesystem::temp_directory_path().string() + "/tinyslm_writer.gguf";
  REQUIRE(w.write_file(path));
  CHECK(tinyslm_test::read_bytes(path) == std::vector<unsigned char>(bytes.begin(), bytes.end()));
  auto f = GgufFile::open(path);
  REQUIRE(f);
  CHECK(f->tensors().size() == 2);
  std::filesystem::remove(path);
}

TEST_CASE("writer rejects bad tensors") {
  GgufWriter w;
  std::vector<uint8_t> d(100);
  const uint64_t bad_row[] = {10};
  CHECK_FALSE(w.add_tensor("x", TensorType::Q4_0, bad_row, d.data(), 18));
  const uint64_t ok_row[] = {32};
  CHECK_FALSE(w.add_tensor("x", TensorType::Q4_0, ok_row, d.data(), 17));  // wrong byte count
  REQUIRE(w.add_tensor("x", TensorType::Q4_0, ok_row, d.data(), 18));
  CHECK_FALSE(w.add_tensor("x", TensorType::Q4_0, ok_row, d.data(), 18));  // duplicate
  CHECK_FALSE(w.add_tensor("", TensorType::Q4_0, ok_row, d.data(), 18));
  CHECK_FALSE(w.add_tensor(std::string(65, 'n'), TensorType::Q4_0, ok_row, d.data(), 18));
  CHECK_FALSE(w.add_tensor("y", TensorType::F32, std::span<const uint64_t>(), d.data(), 4));
  const uint64_t five[] = {1, 1, 1, 1, 1};
  CHECK_FALSE(w.add_tensor("z", TensorType::F32, five, d.data(), 4));
}

TEST_CASE("typed look-ups: missing keys, wrong types, out-of-range values") {
  GgufWriter w;
  w.set_u32("a.u32", 300);
  w.set_i32("a.neg", -1);
  w.set_string("a.str", "hi");
  w.set_f32("a.f32", 1.5f);
  w.set_u64("a.big", 1ull << 40);
  auto f = parse_bytes(w.to_bytes());
  REQUIRE(f);
  auto missing = f->get<uint32_t>("llama.block_count");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code() == Errc::not_found);
  CHECK(missing.error().message() == "test.gguf: missing metadata key 'llama.block_count'");
  auto wrong = f->get<uint32_t>("a.str");
  REQUIRE_FALSE(wrong);
  CHECK(wrong.error().code() == Errc::type_mismatch);
  CHECK(wrong.error().message().find("'a.str' has type string") != std::string::npos);
  CHECK(f->get<std::string>("a.u32").error().code() == Errc::type_mismatch);
  CHECK(f->get<uint8_t>("a.u32").error().code() == Errc::out_of_range);
  CHECK(*f->get<uint16_t>("a.u32") == 300);
  CHECK(*f->get<int64_t>("a.u32") == 300);
  CHECK(f->get<uint32_t>("a.neg").error().code() == Errc::out_of_range);
  CHECK(*f->get<int32_t>("a.neg") == -1);
  CHECK(f->get<uint32_t>("a.big").error().code() == Errc::out_of_range);
  CHECK(*f->get<uint64_t>("a.big") == 1ull << 40);
  CHECK(*f->get<float>("a.u32") == 300.0f);  // an integer is a number
  CHECK(f->get<float>("a.str").error().code() == Errc::type_mismatch);
  CHECK(f->get<GgufArray>("a.u32").error().code() == Errc::type_mismatch);
  CHECK(*f->get_or<uint32_t>("x.absent", 7) == 7);
  CHECK(*f->get_or<uint32_t>("a.u32", 7) == 300);
  CHECK_FALSE(f->get_or<uint32_t>("a.str", 7));
  CHECK(*f->get_or<std::string_view>("a.str", "x") == "hi");
}

// ---------------------------------------------------------------------------------------
// Malformed files

TEST_CASE("bad magic, versions and endianness") {
  expect_error({}, Errc::invalid_format, "truncated at byte 0");
  expect_error({'G', 'G'}, Errc::invalid_format, "truncated");
  expect_error({'G', 'G', 'M', 'L', 1, 0, 0, 0}, Errc::invalid_format, "not a GGUF file");
  expect_error({'\x7f', 'E', 'L', 'F', 2, 1, 1, 0}, Errc::invalid_format, "not a GGUF file");
  for (uint32_t v : {0u, 1u, 4u, 0xffffffffu}) {
    Raw r;
    r.header(0, 0, v);
    expect_error(r.b, Errc::unsupported, "unsupported GGUF version " + std::to_string(v));
  }
  Raw be;
  be.header(0, 0, 0x03000000u);
  expect_error(be.b, Errc::unsupported, "big-endian");
  Raw v2;
  v2.header(0, 0, 2);
  CHECK(parse_bytes(v2.b));
}

TEST_CASE("the legacy version 1 file is refused with a clear error" * doctest::test_suite("shared")) {
  const std::string path = shared_file("models/legacy/tinyllamas-stories-260k-f32.gguf");
  if (path.empty()) return;
  auto f = GgufFile::open(path);
  REQUIRE_FALSE(f);
  CHECK(f.error().code() == Errc::unsupported);
  CHECK(f.error().message() == path + ": unsupported GGUF version 1 (supported: 2 and 3)");
}

TEST_CASE("absurd counts fail before allocating") {
  const uint64_t huge = 1ull << 62;
  Raw t;
  t.header(huge, 0);
  expect_error(t.b, Errc::invalid_format, "more than the file");
  Raw k;
  k.header(0, huge);
  expect_error(k.b, Errc::invalid_format, "more than the file");
  Raw both;
  both.header(UINT64_MAX, UINT64_MAX);
  expect_error(both.b, Errc::invalid_format, "more than the file");
  Raw few;  // a count one larger than what the file holds
  few.header(0, 2).kv_u32("a", 1);
  expect_error(few.b, Errc::invalid_format, "");
}

TEST_CASE("strings and arrays whose lengths run past the end") {
  Raw key_len;
  key_len.header(0, 1).put<uint64_t>(1ull << 62).zeros(16);
  expect_error(key_len.b, Errc::invalid_format, "past the end");
  Raw str;
  str.header(0, 1).str("k").put<uint32_t>(8).put<uint64_t>(100).zeros(10);
  expect_error(str.b, Errc::invalid_format, "past the end");
  Raw arr;
  arr.header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(4).put<uint64_t>(1ull << 62).zeros(16);
  expect_error(arr.b, Errc::invalid_format, "runs past the end");
  Raw arr_ovf;  // count * element size overflows 64 bits
  arr_ovf.header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(10).put<uint64_t>(1ull << 61).zeros(16);
  expect_error(arr_ovf.b, Errc::invalid_format, "runs past the end");
  Raw sarr;
  sarr.header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(8).put<uint64_t>(1000000).zeros(64);
  expect_error(sarr.b, Errc::invalid_format, "runs past the end");
  Raw sarr2;  // the count fits, but one string's length does not
  sarr2.header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(8).put<uint64_t>(2).str("ok").put<uint64_t>(1ull << 40).zeros(8);
  expect_error(sarr2.b, Errc::invalid_format, "past the end");
  Raw empty_key;
  empty_key.header(0, 1).str("").put<uint32_t>(4).put<uint32_t>(1);
  expect_error(empty_key.b, Errc::invalid_format, "empty key");
  Raw long_key;
  long_key.header(0, 1).str(std::string(70000, 'k')).put<uint32_t>(4).put<uint32_t>(1);
  expect_error(long_key.b, Errc::invalid_format, "at most 65535");
}

TEST_CASE("unknown value types, deep nesting, duplicate keys") {
  for (uint32_t bad : {13u, 100u, 0xffffffffu}) {
    Raw r;
    r.header(0, 1).str("k").put<uint32_t>(bad).zeros(8);
    expect_error(r.b, Errc::invalid_format, "unknown value type " + std::to_string(bad));
    Raw a;
    a.header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(bad).put<uint64_t>(1).zeros(8);
    expect_error(a.b, Errc::invalid_format, "unknown array element type");
  }
  Raw deep;
  deep.header(0, 1).str("k").put<uint32_t>(9);
  for (int i = 0; i < 20; ++i) deep.put<uint32_t>(9).put<uint64_t>(1);
  deep.put<uint32_t>(4).put<uint64_t>(0);
  expect_error(deep.b, Errc::invalid_format, "nested deeper");
  Raw dup;
  dup.header(0, 2).kv_u32("same", 1).kv_u32("same", 2);
  expect_error(dup.b, Errc::invalid_format, "duplicate metadata key 'same'");
}

TEST_CASE("alignment must be a u32 power of two") {
  for (uint32_t a : {0u, 3u, 48u}) {
    Raw r;
    r.header(0, 1).kv_u32("general.alignment", a);
    expect_error(r.b, Errc::invalid_format, "general.alignment is " + std::to_string(a));
  }
  Raw wrong_type;
  wrong_type.header(0, 1).str("general.alignment").put<uint32_t>(10).put<uint64_t>(32);
  expect_error(wrong_type.b, Errc::type_mismatch, "general.alignment");
}

TEST_CASE("bad tensor infos") {
  auto one_tensor = [](std::vector<uint64_t> ne, uint32_t type, uint64_t offset, size_t data) {
    Raw r;
    r.header(1, 0).tensor("t", ne, type, offset).pad().zeros(data);
    return r.b;
  };
  CHECK(parse_bytes(one_tensor({8}, 0, 0, 32)));  // the baseline is valid
  expect_error(one_tensor({8}, 4, 0, 32), Errc::unsupported, "unknown tensor type 4");
  expect_error(one_tensor({8}, 1000, 0, 32), Errc::unsupported, "unknown tensor type 1000");
  expect_error(one_tensor({}, 0, 0, 32), Errc::invalid_format, "0 dimensions");
  expect_error(one_tensor({1, 1, 1, 1, 1}, 0, 0, 32), Errc::invalid_format, "5 dimensions");
  expect_error(one_tensor({1ull << 32, 1ull << 32}, 0, 0, 32), Errc::invalid_format, "overflows");
  expect_error(one_tensor({1ull << 63}, 0, 0, 32), Errc::invalid_format, "overflows");
  expect_error(one_tensor({1ull << 40, 1ull << 22}, 0, 0, 32), Errc::invalid_format, "overflows");
  expect_error(one_tensor({1ull << 40}, 0, 0, 32), Errc::invalid_format, "past the end");
  expect_error(one_tensor({8}, 0, 1ull << 62, 32), Errc::invalid_format, "past the end");
  expect_error(one_tensor({8}, 0, UINT64_MAX / 32 * 32, 32), Errc::invalid_format, "past the end");
  expect_error(one_tensor({8}, 0, 16, 64), Errc::invalid_format, "not a multiple of the alignment");
  expect_error(one_tensor({16}, 2, 0, 64), Errc::invalid_format, "not a multiple of its block size");
  expect_error(one_tensor({8}, 0, 0, 31), Errc::invalid_format, "past the end");

  Raw long_name;
  long_name.header(1, 0).tensor(std::string(65, 'x'), {8}, 0, 0).pad().zeros(32);
  expect_error(long_name.b, Errc::invalid_format, "at most 64");

  Raw dup;
  dup.header(2, 0).tensor("t", {8}, 0, 0).tensor("t", {8}, 0, 32).pad().zeros(64);
  expect_error(dup.b, Errc::invalid_format, "duplicate tensor name 't'");

  Raw overlap;
  overlap.header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {8}, 0, 32).pad().zeros(96);
  expect_error(overlap.b, Errc::invalid_format, "overlaps");

  Raw disjoint;  // out of order but disjoint is fine
  disjoint.header(2, 0).tensor("a", {8}, 0, 32).tensor("b", {8}, 0, 0).pad().zeros(64);
  CHECK(parse_bytes(disjoint.b));

  Raw truncated_info;
  truncated_info.header(1, 0).str("tensor_name_x").put<uint32_t>(2).put<uint64_t>(8);
  expect_error(truncated_info.b, Errc::invalid_format, "truncated");
}

TEST_CASE("truncation at every header position of a real file" * doctest::test_suite("shared")) {
  std::vector<uint8_t> bytes;
  std::string path = shared_file("models/stories260K.gguf");
  if (!path.empty()) {
    auto b = tinyslm_test::read_bytes(path);
    bytes.assign(b.begin(), b.end());
  } else {
    bytes = small_valid_file();
  }
  auto full = parse_bytes(bytes);
  REQUIRE(full);
  const uint64_t header_end = full->data_offset();
  REQUIRE(header_end < bytes.size());
  int failures = 0;
  for (uint64_t len = 0; len < header_end; ++len) {
    std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + static_cast<long>(len));
    auto f = GgufFile::from_memory(prefix.data(), prefix.size(), "cut.gguf");
    if (!f) ++failures;
    if (!f) CHECK(f.error().code() == Errc::invalid_format);
  }
  CHECK(failures == static_cast<int>(header_end));
  // and cuts inside the tensor data
  for (uint64_t len : {header_end, (header_end + bytes.size()) / 2, uint64_t(bytes.size() - 1)}) {
    std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + static_cast<long>(len));
    auto f = GgufFile::from_memory(prefix.data(), prefix.size(), "cut.gguf");
    REQUIRE_FALSE(f);
    CHECK(f.error().message().find("past the end of the file") != std::string::npos);
  }
}

TEST_CASE("random byte corruption never crashes") {
  auto base = small_valid_file();
  std::mt19937 rng(1234);
  int ok = 0, bad = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    auto b = base;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < flips; ++i) {
      const size_t pos = rng() % b.size();
      b[pos] = (rng() % 2) ? static_cast<uint8_t>(rng()) : static_cast<uint8_t>(b[pos] ^ (1u << (rng() % 8)));
    }
    auto f = parse_bytes(b);
    if (f) {
      ++ok;
      for (const auto& t : f->tensors()) {  // whatever parsed must be inside the bytes
        CHECK(t.data >= f->source().data());
        CHECK(t.data + t.n_bytes <= f->source().data() + f->source().size());
      }
      for (const auto& kv : f->metadata()) (void)format_value(kv.value, 4);
    } else {
      ++bad;
    }
  }
  CHECK(ok + bad == 3000);
  CHECK(bad > 0);
}

// ---------------------------------------------------------------------------------------
// Every real file in ../shared, checked against what its provenance notes say.

namespace {

// Rows like "| file.gguf | arch | ... | F32 x5, Q4_0 x15 | ..." from the READMEs in shared/.
struct Expected_ {
  std::string arch;
  std::map<std::string, int> types;  // upper-case type name -> count
};

std::string upper(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

std::vector<std::string> cells(const std::string& line) {
  std::vector<std::string> out;
  std::stringstream ss(line);
  std::string cell;
  std::getline(ss, cell, '|');
  while (std::getline(ss, cell, '|')) {
    size_t a = cell.find_first_not_of(" `"), b = cell.find_last_not_of(" `");
    out.push_back(a == std::string::npos ? "" : cell.substr(a, b - a + 1));
  }
  return out;
}

}  // namespace

TEST_CASE("every model in ../shared parses with the documented architecture and tensors" * doctest::test_suite("shared")) {
  const std::string root = tinyslm_test::shared_dir() + "/models";
  if (!std::filesystem::exists(root)) {
    tinyslm_test::skip_shared(root);
    return;
  }
  // Expectations transcribed from the provenance notes (written by other tools than ours).
  std::map<std::string, Expected_> expect;
  expect["stories260K.gguf"] = {"llama", {{"F32", 48}}};
  expect["llama-2-tiny-random.gguf"] = {"llama", {{"F16", 9}, {"F32", 3}}};
  {
    // synthetic/README.md: | file | arch | tokenizer | layers | tensor types | ...
    std::stringstream in(tinyslm_test::read_text(root + "/synthetic/README.md"));
    for (std::string line; std::getline(in, line);) {
      auto c = cells(line);
      if (c.size() < 5 || c[0].find(".gguf") == std::string::npos) continue;
      Expected_ e{c[1], {}};
      std::stringstream types(c[4]);
      for (std::string item; std::getline(types, item, ',');) {
        std::stringstream it(item);
        std::string name, count;
        it >> name >> count;
        e.types[upper(name)] = std::stoi(count.substr(1));
      }
      expect[c[0]] = e;
    }
  }
  CHECK(expect.size() >= 30);

  int checked = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(root)) {
    if (entry.path().extension() != ".gguf") continue;
    const std::string file = entry.path().filename().string();
    auto f = GgufFile::open(entry.path().string());
    if (entry.path().parent_path().filename() == "legacy") {
      CHECK_FALSE(f);
      continue;
    }
    REQUIRE_MESSAGE(f, f.error().message());
    ++checked;
    for (const auto& t : f->tensors()) CHECK(t.data + t.n_bytes <= f->source().data() + f->file_size());
    auto arch = f->get<std::string>("general.architecture");
    REQUIRE_MESSAGE(arch, file);
    auto it = expect.find(file);
    if (it == expect.end()) continue;
    CHECK_MESSAGE(*arch == it->second.arch, file);
    std::map<std::string, int> types;
    for (const auto& t : f->tensors()) types[tensor_type_name(t.type)]++;
    CHECK_MESSAGE(types == it->second.types, file);
  }
  CHECK(checked >= 60);
}

// With TINYSLM_FUZZ_SEED_DIR set, writes every small file the tests above built (valid and
// malformed) there, as the seed corpus of fuzz/fuzz_gguf.cpp. Runs last (doctest orders test
// cases by file and line).
TEST_CASE("write the fuzzer seed corpus when asked") {
  const char* dir = std::getenv("TINYSLM_FUZZ_SEED_DIR");
  if (!dir) return;
  std::filesystem::create_directories(dir);
  std::set<std::string> unique;
  for (const auto& b : g_arena)
    if (b.size() <= 65536) unique.emplace(b.begin(), b.end());
  int n = 0;
  for (const auto& b : unique) {
    std::ofstream out(std::string(dir) + "/seed_" + std::to_string(n++), std::ios::binary);
    out.write(b.data(), static_cast<std::streamsize>(b.size()));
  }
  CHECK(n > 50);
}
