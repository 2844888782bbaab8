// tinyslm gguf: the GGUF container (versions 2 and 3, little-endian).
//
// Layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata
// key/value pairs, the tensor infos, padding to `general.alignment` (default 32), then the
// tensor data. The reader validates every count, length, offset and size against the file
// before it allocates or reads, so a hostile file gets an Error, never a crash. It copies
// nothing: keys, strings and tensor data are views into the Source, which it owns.
#pragma once

#include <algorithm>
#include <array>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "core.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

// ---------------------------------------------------------------------------------------
// Tensor types: ggml's type ids as stored in GGUF tensor infos.

enum class TensorType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

// Storage facts of a tensor type: `block_size` values are stored in `block_bytes` bytes.
// The quant layer's block structs are checked against this table (one source of truth).
struct TensorTypeInfo {
  TensorType type;
  const char* name;
  uint32_t block_size;
  uint32_t block_bytes;
};

inline constexpr TensorTypeInfo tensor_type_table[] = {
    {TensorType::F32, "F32", 1, 4},           {TensorType::F16, "F16", 1, 2},
    {TensorType::Q4_0, "Q4_0", 32, 18},       {TensorType::Q4_1, "Q4_1", 32, 20},
    {TensorType::Q5_0, "Q5_0", 32, 22},       {TensorType::Q5_1, "Q5_1", 32, 24},
    {TensorType::Q8_0, "Q8_0", 32, 34},       {TensorType::Q8_1, "Q8_1", 32, 36},
    {TensorType::Q2_K, "Q2_K", 256, 84},      {TensorType::Q3_K, "Q3_K", 256, 110},
    {TensorType::Q4_K, "Q4_K", 256, 144},     {TensorType::Q5_K, "Q5_K", 256, 176},
    {TensorType::Q6_K, "Q6_K", 256, 210},     {TensorType::Q8_K, "Q8_K", 256, 292},
    {TensorType::IQ2_XXS, "IQ2_XXS", 256, 66}, {TensorType::IQ2_XS, "IQ2_XS", 256, 74},
    {TensorType::IQ3_XXS, "IQ3_XXS", 256, 98}, {TensorType::IQ1_S, "IQ1_S", 256, 50},
    {TensorType::IQ4_NL, "IQ4_NL", 32, 18},   {TensorType::IQ3_S, "IQ3_S", 256, 110},
    {TensorType::IQ2_S, "IQ2_S", 256, 82},    {TensorType::IQ4_XS, "IQ4_XS", 256, 136},
    {TensorType::I8, "I8", 1, 1},             {TensorType::I16, "I16", 1, 2},
    {TensorType::I32, "I32", 1, 4},           {TensorType::I64, "I64", 1, 8},
    {TensorType::F64, "F64", 1, 8},           {TensorType::IQ1_M, "IQ1_M", 256, 56},
    {TensorType::BF16, "BF16", 1, 2},         {TensorType::TQ1_0, "TQ1_0", 256, 54},
    {TensorType::TQ2_0, "TQ2_0", 256, 66},    {TensorType::MXFP4, "MXFP4", 32, 17},
};

// nullptr for an id that is not a known type.
inline constexpr const TensorTypeInfo* tensor_type_info(uint32_t id) {
  for (const auto& t : tensor_type_table)
    if (static_cast<uint32_t>(t.type) == id) return &t;
  return nullptr;
}
inline constexpr const TensorTypeInfo& tensor_type_info(TensorType t) {
  const TensorTypeInfo* info = tensor_type_info(static_cast<uint32_t>(t));
  TINYSLM_ASSERT(info != nullptr);
  return *info;
}
inline const char* tensor_type_name(TensorType t) {
  const TensorTypeInfo* info = tensor_type_info(static_cast<uint32_t>(t));
  return info ? info->name : "unknown";
}
// Looks a type up by its name ("Q4_K", case-insensitive); nullptr when unknown.
inline const TensorTypeInfo* tensor_type_by_name(std::string_view name) {
  for (const auto& t : tensor_type_table)
    if (detail::iequals_ascii(t.name, name)) return &t;
  return nullptr;
}

// Bytes of a row of `n` values of type t; false when n is not a whole number of blocks or
// the size overflows.
inline bool tensor_row_bytes(TensorType t, uint64_t n, uint64_t* out) {
  const auto& info = tensor_type_info(t);
  if (n % info.block_size != 0) return false;
  return !detail::mul_overflows(n / info.block_size, info.block_bytes, out);
}

// ---------------------------------------------------------------------------------------
// Metadata values

enum class GgufValueType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
  string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};

inline const char* gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::u8: return "u8";
    case GgufValueType::i8: return "i8";
    case GgufValueType::u16: return "u16";
    case GgufValueType::i16: return "i16";
    case GgufValueType::u32: return "u32";
    case GgufValueType::i32: return "i32";
    case GgufValueType::f32: return "f32";
    case GgufValueType::boolean: return "bool";
    case GgufValueType::string: return "string";
    case GgufValueType::array: return "array";
    case GgufValueType::u64: return "u64";
    case GgufValueType::i64: return "i64";
    case GgufValueType::f64: return "f64";
  }
  return "unknown";
}

namespace detail {

// Size of a fixed-size value type; 0 for string and array.
inline constexpr uint64_t gguf_scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::u8: case GgufValueType::i8: case GgufValueType::boolean: return 1;
    case GgufValueType::u16: case GgufValueType::i16: return 2;
    case GgufValueType::u32: case GgufValueType::i32: case GgufValueType::f32: return 4;
    case GgufValueType::u64: case GgufValueType::i64: case GgufValueType::f64: return 8;
    default: return 0;
  }
}
inline constexpr bool gguf_type_valid(uint32_t t) { return t <= 12; }
inline constexpr bool gguf_is_integer(GgufValueType t) {
  switch (t) {
    case GgufValueType::u8: case GgufValueType::i8: case GgufValueType::u16:
    case GgufValueType::i16: case GgufValueType::u32: case GgufValueType::i32:
    case GgufValueType::u64: case GgufValueType::i64: return true;
    default: return false;
  }
}
inline constexpr bool gguf_is_signed(GgufValueType t) {
  return t == GgufValueType::i8 || t == GgufValueType::i16 || t == GgufValueType::i32 ||
         t == GgufValueType::i64;
}

template <class T>
inline T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // GGUF is little-endian, as are all targets we support
  return v;
}

}  // namespace detail

class GgufArray;

// A metadata value: a view of its bytes inside the file. `type` says how to read it.
class GgufValue {
 public:
  GgufValue() = default;
  GgufValue(GgufValueType type, const uint8_t* payload, uint64_t bytes)
      : type_(type), payload_(payload), bytes_(bytes) {}

  GgufValueType type() const { return type_; }
  // Bytes this value occupies in the file (for arrays and strings: with their headers).
  uint64_t encoded_size() const { return bytes_; }

  bool is_integer() const { return detail::gguf_is_integer(type_); }
  bool is_float() const { return type_ == GgufValueType::f32 || type_ == GgufValueType::f64; }

  // Integer value widened; valid when is_integer() (or boolean).
  bool as_int64(int64_t* out) const;
  bool as_uint64(uint64_t* out) const;
  double as_double() const;  // any integer or float
  bool as_bool() const { return payload_[0] != 0; }
  std::string_view as_string() const {
    const uint64_t n = detail::load_le<uint64_t>(payload_);
    return {reinterpret_cast<const char*>(payload_ + 8), static_cast<size_t>(n)};
  }
  GgufArray as_array() const;

 private:
  GgufValueType type_ = GgufValueType::u8;
  const uint8_t* payload_ = nullptr;
  uint64_t bytes_ = 0;
};

// A validated array inside the file. Scalar elements are read in place; string and nested
// array elements are walked in order (each was bounds-checked when the file was opened).
class GgufArray {
 public:
  GgufArray() = default;
  GgufArray(GgufValueType elem, uint64_t count, const uint8_t* elems, uint64_t bytes)
      : elem_(elem), count_(count), elems_(elems), bytes_(bytes) {}

  GgufValueType element_type() const { return elem_; }
  uint64_t size() const { return count_; }
  bool empty() const { return count_ == 0; }
  // Bytes of the elements (after the type and count header).
  uint64_t element_bytes() const { return bytes_; }

  // Element i of a scalar array, as T (no conversion: the caller checks element_type()).
  template <class T>
  T at(uint64_t i) const {
    return detail::load_le<T>(elems_ + i * sizeof(T));
  }
  // Raw pointer to the elements of a scalar array.
  const uint8_t* data() const { return elems_; }

  // Calls f(GgufValue) for each element in order; stops early when f returns false.
  template <class F>
  void for_each(F&& f) const;

  // All elements of a string array (empty when it is not one).
  std::vector<std::string_view> strings() const {
    std::vector<std::string_view> out;
    if (elem_ != GgufValueType::string) return out;
    out.reserve(static_cast<size_t>(count_));
    for_each([&](const GgufValue& v) {
      out.push_back(v.as_string());
      return true;
    });
    return out;
  }

 private:
  GgufValueType elem_ = GgufValueType::u8;
  uint64_t count_ = 0;
  const uint8_t* elems_ = nullptr;
  uint64_t bytes_ = 0;
};

inline bool GgufValue::as_int64(int64_t* out) const {
  switch (type_) {
    case GgufValueType::u8: *out = detail::load_le<uint8_t>(payload_); return true;
    case GgufValueType::i8: *out = detail::load_le<int8_t>(payload_); return true;
    case GgufValueType::u16: *out = detail::load_le<uint16_t>(payload_); return true;
    case GgufValueType::i16: *out = detail::load_le<int16_t>(payload_); return true;
    case GgufValueType::u32: *out = detail::load_le<uint32_t>(payload_); return true;
    case GgufValueType::i32: *out = detail::load_le<int32_t>(payload_); return true;
    case GgufValueType::i64: *out = detail::load_le<int64_t>(payload_); return true;
    case GgufValueType::u64: {
      uint64_t v = detail::load_le<uint64_t>(payload_);
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
      *out = static_cast<int64_t>(v);
      return true;
    }
    case GgufValueType::boolean: *out = payload_[0] != 0; return true;
    default: return false;
  }
}

inline bool GgufValue::as_uint64(uint64_t* out) const {
  if (type_ == GgufValueType::u64) {
    *out = detail::load_le<uint64_t>(payload_);
    return true;
  }
  int64_t v = 0;
  if (!as_int64(&v) || v < 0) return false;
  *out = static_cast<uint64_t>(v);
  return true;
}

inline double GgufValue::as_double() const {
  if (type_ == GgufValueType::f32) return detail::load_le<float>(payload_);
  if (type_ == GgufValueType::f64) return detail::load_le<double>(payload_);
  if (type_ == GgufValueType::u64) return static_cast<double>(detail::load_le<uint64_t>(payload_));
  int64_t v = 0;
  as_int64(&v);
  return static_cast<double>(v);
}

inline GgufArray GgufValue::as_array() const {
  const auto elem = static_cast<GgufValueType>(detail::load_le<uint32_t>(payload_));
  const uint64_t count = detail::load_le<uint64_t>(payload_ + 4);
  return GgufArray(elem, count, payload_ + 12, bytes_ - 12);
}

namespace detail {
// Bytes a value of type t starting at p occupies. Only called on values the reader has
// already validated, so it stays inside the file.
inline uint64_t gguf_encoded_size(GgufValueType t, const uint8_t* p) {
  if (t == GgufValueType::string) return 8 + load_le<uint64_t>(p);
  if (t != GgufValueType::array) return gguf_scalar_size(t);
  const auto elem = static_cast<GgufValueType>(load_le<uint32_t>(p));
  const uint64_t count = load_le<uint64_t>(p + 4);
  if (elem != GgufValueType::string && elem != GgufValueType::array)
    return 12 + count * gguf_scalar_size(elem);
  uint64_t size = 12;
  for (uint64_t i = 0; i < count; ++i) size += gguf_encoded_size(elem, p + size);
  return size;
}
}  // namespace detail

template <class F>
void GgufArray::for_each(F&& f) const {
  const uint8_t* p = elems_;
  for (uint64_t i = 0; i < count_; ++i) {
    const uint64_t size = detail::gguf_encoded_size(elem_, p);
    if (!f(GgufValue(elem_, p, size))) return;
    p += size;
  }
}

struct GgufKv {
  std::string_view key;
  GgufValue value;
};

struct GgufTensorInfo {
  std::string_view name;
  TensorType type = TensorType::F32;
  uint32_t n_dims = 0;
  std::array<uint64_t, 4> ne = {1, 1, 1, 1};  // ne[0] is the row length (contiguous)
  uint64_t offset = 0;                        // from the start of the data section
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // into the Source

  uint64_t rows() const { return n_elements / (ne[0] ? ne[0] : 1); }
  std::string shape_string() const {
    std::string s = "[";
    for (uint32_t i = 0; i < n_dims; ++i) {
      if (i) s += ", ";
      s += std::to_string(ne[i]);
    }
    return s + "]";
  }
};

// Typed look-ups accept any stored type that converts without loss: an integer key may be
// stored as any integer type whose value fits T; a float key as f32 or f64.
template <class T>
struct GgufGet;

// ---------------------------------------------------------------------------------------
// The reader

class GgufFile {
 public:
  static constexpr uint32_t default_alignment = 32;
  static constexpr uint32_t max_tensor_dims = 4;
  static constexpr uint32_t max_array_nesting = 8;
  static constexpr uint64_t max_key_length = 65535;
  static constexpr uint64_t max_tensor_name_length = 64;

  static Expected<GgufFile> open(const std::string& path, LoadMode mode = LoadMode::map) {
    auto src = Source::open(path, mode);
    if (!src) return src.error();
    return from_source(std::move(*src));
  }
  // Caller-owned bytes: they must outlive the GgufFile.
  static Expected<GgufFile> from_memory(const void* data, size_t size,
                                        std::string name = "<memory>") {
    return from_source(Source::borrow(data, size, std::move(name)));
  }
  static Expected<GgufFile> from_source(Source src) {
    GgufFile f;
    f.source_ = std::move(src);
    auto st = f.parse();
    if (!st) return st.error();
    return f;
  }

  GgufFile(GgufFile&&) = default;
  GgufFile& operator=(GgufFile&&) = default;

  const std::string& name() const { return source_.name(); }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return source_.size(); }
  const Source& source() const { return source_; }

  const std::vector<GgufKv>& metadata() const { return kvs_; }
  const GgufKv* find(std::string_view key) const {
    auto it = std::lower_bound(kv_order_.begin(), kv_order_.end(), key,
                               [&](uint32_t i, std::string_view k) { return kvs_[i].key < k; });
    if (it == kv_order_.end() || kvs_[*it].key != key) return nullptr;
    return &kvs_[*it];
  }
  bool contains(std::string_view key) const { return find(key) != nullptr; }

  // get<uint32_t>("llama.block_count"): the value, or an error naming the file and key.
  template <class T>
  Expected<T> get(std::string_view key) const {
    const GgufKv* kv = find(key);
    if (!kv)
      return make_error(Errc::not_found,
                        name() + ": missing metadata key " + detail::quoted(key));
    return GgufGet<T>::read(*this, *kv);
  }
  // The value, or `fallback` when the key is absent; still an error on a wrong type.
  template <class T>
  Expected<T> get_or(std::string_view key, T fallback) const {
    const GgufKv* kv = find(key);
    if (!kv) return fallback;
    return GgufGet<T>::read(*this, *kv);
  }

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view tensor_name) const {
    auto it = std::lower_bound(
        tensor_order_.begin(), tensor_order_.end(), tensor_name,
        [&](uint32_t i, std::string_view k) { return tensors_[i].name < k; });
    if (it == tensor_order_.end() || tensors_[*it].name != tensor_name) return nullptr;
    return &tensors_[*it];
  }

  Error type_error(const GgufKv& kv, const char* expected) const {
    return make_error(Errc::type_mismatch, name() + ": metadata key " + detail::quoted(kv.key) +
                                               " has type " + gguf_value_type_name(kv.value.type()) +
                                               ", expected " + expected);
  }

 private:
  GgufFile() = default;

  struct Cursor {
    const uint8_t* base;
    uint64_t size;
    uint64_t pos;
    uint64_t remaining() const { return size - pos; }
  };

  Error truncated(const Cursor& c, const char* what) const {
    return make_error(Errc::invalid_format, name() + ": file truncated at byte " +
                                                std::to_string(c.pos) + " while reading " + what +
                                                " (file size " + std::to_string(c.size) + ")");
  }
  Error bad(std::string msg) const { return make_error(Errc::invalid_format, name() + ": " + msg); }

  template <class T>
  bool read(Cursor& c, T* out) const {
    if (c.remaining() < sizeof(T)) return false;
    *out = detail::load_le<T>(c.base + c.pos);
    c.pos += sizeof(T);
    return true;
  }

  // Reads a string's header and skips its bytes; the view points into the file.
  Status read_string(Cursor& c, std::string_view* out, const char* what, uint64_t max_len) const {
    uint64_t n;
    if (!read(c, &n)) return truncated(c, what);
    if (n > c.remaining())
      return bad(std::string(what) + " at byte " + std::to_string(c.pos - 8) + " has length " +
                 std::to_string(n) + ", past the end of the file");
    if (n > max_len)
      return bad(std::string(what) + " at byte " + std::to_string(c.pos - 8) + " has length " +
                 std::to_string(n) + " (at most " + std::to_string(max_len) + " allowed)");
    *out = std::string_view(reinterpret_cast<const char*>(c.base + c.pos), static_cast<size_t>(n));
    c.pos += n;
    return {};
  }

  // Checks a value of type t at the cursor and moves past it.
  Status skip_value(Cursor& c, GgufValueType t, uint32_t depth, std::string_view key) const {
    const uint64_t scalar = detail::gguf_scalar_size(t);
    if (scalar) {
      if (c.remaining() < scalar) return truncated(c, "a metadata value");
      c.pos += scalar;
      return {};
    }
    if (t == GgufValueType::string) {
      std::string_view s;
      return read_string(c, &s, "a metadata string", std::numeric_limits<uint64_t>::max());
    }
    // array: element type, count, elements
    if (depth >= max_array_nesting)
      return bad("metadata key " + detail::quoted(key) + ": arrays nested deeper than " +
                 std::to_string(max_array_nesting));
    uint32_t elem_raw;
    uint64_t count;
    if (!read(c, &elem_raw)) return truncated(c, "an array element type");
    if (!detail::gguf_type_valid(elem_raw))
      return bad("metadata key " + detail::quoted(key) + ": unknown array element type " +
                 std::to_string(elem_raw));
    if (!read(c, &count)) return truncated(c, "an array length");
    const auto elem = static_cast<GgufValueType>(elem_raw);
    // every element takes at least this many bytes, so the count is checked before any loop
    uint64_t min_elem = detail::gguf_scalar_size(elem);
    if (elem == GgufValueType::string) min_elem = 8;
    if (elem == GgufValueType::array) min_elem = 12;
    uint64_t need;
    if (detail::mul_overflows(count, min_elem, &need) || need > c.remaining())
      return bad("metadata key " + detail::quoted(key) + ": array of " + std::to_string(count) +
                 " " + gguf_value_type_name(elem) + " elements runs past the end of the file");
    if (elem != GgufValueType::string && elem != GgufValueType::array) {
      c.pos += need;
      return {};
    }
    for (uint64_t i = 0; i < count; ++i) {
      auto st = skip_value(c, elem, depth + 1, key);
      if (!st) return st;
    }
    return {};
  }

  // The whole file: header, metadata, tensor infos, then the tensors' placement.
  Status parse() {
    Cursor c{source_.data(), source_.size(), 0};
    uint64_t n_tensors = 0, n_kv = 0;
    if (auto st = parse_header(c, &n_tensors, &n_kv); !st) return st;
    if (auto st = parse_metadata(c, n_kv); !st) return st;
    if (auto st = read_alignment(); !st) return st;
    if (auto st = parse_tensor_infos(c, n_tensors); !st) return st;
    if (!detail::align_up(c.pos, alignment_, &data_offset_)) return bad("data offset overflows");
    if (auto st = index_tensor_names(); !st) return st;
    return place_tensors(c);
  }

  // Magic, version, counts; absurd counts fail here, before anything is allocated.
  Status parse_header(Cursor& c, uint64_t* n_tensors, uint64_t* n_kv) {
    if (c.size < 4) return truncated(c, "the magic");
    if (std::memcmp(c.base, "GGUF", 4) != 0) {
      return bad("not a GGUF file (magic bytes are " +
                 detail::quoted(std::string_view(reinterpret_cast<const char*>(c.base), 4)) +
                 ", expected 'GGUF')");
    }
    c.pos = 4;
    if (!read(c, &version_)) return truncated(c, "the version");
    if (version_ != 2 && version_ != 3) {
      const uint32_t swapped = (version_ >> 24) | ((version_ >> 8) & 0xff00u) |
                               ((version_ << 8) & 0xff0000u) | (version_ << 24);
      if (swapped >= 1 && swapped <= 3)
        return make_error(Errc::unsupported, name() + ": big-endian GGUF files are not supported");
      return make_error(Errc::unsupported, name() + ": unsupported GGUF version " +
                                               std::to_string(version_) +
                                               " (supported: 2 and 3)");
    }
    if (!read(c, n_tensors)) return truncated(c, "the tensor count");
    if (!read(c, n_kv)) return truncated(c, "the metadata count");
    // Lower bounds on the bytes each entry takes: a key/value is at least 8 (key length) + 4
    // (type) + 1 byte; a tensor info at least 8 (name length) + 4 (dims) + 4 (type) + 8 (offset).
    uint64_t need_kv, need_t, need;
    if (detail::mul_overflows(*n_kv, 13, &need_kv) || detail::mul_overflows(*n_tensors, 24, &need_t) ||
        detail::add_overflows(need_kv, need_t, &need) || need > c.remaining())
      return bad("header claims " + std::to_string(*n_kv) + " metadata entries and " +
                 std::to_string(*n_tensors) + " tensors, more than the file of " +
                 std::to_string(c.size) + " bytes can hold");
    return {};
  }

  // The key/value pairs (values validated and left in place), indexed by key; duplicates refused.
  Status parse_metadata(Cursor& c, uint64_t n_kv) {
    kvs_.reserve(static_cast<size_t>(n_kv));
    for (uint64_t i = 0; i < n_kv; ++i) {
      GgufKv kv;
      auto st = read_string(c, &kv.key, "a metadata key", max_key_length);
      if (!st) return st;
      if (kv.key.empty()) return bad("metadata entry " + std::to_string(i) + " has an empty key");
      uint32_t type_raw;
      if (!read(c, &type_raw)) return truncated(c, "a metadata value type");
      if (!detail::gguf_type_valid(type_raw))
        return bad("metadata key " + detail::quoted(kv.key) + " has unknown value type " +
                   std::to_string(type_raw));
      const auto type = static_cast<GgufValueType>(type_raw);
      const uint64_t start = c.pos;
      st = skip_value(c, type, 0, kv.key);
      if (!st) return st;
      kv.value = GgufValue(type, c.base + start, c.pos - start);
      kvs_.push_back(kv);
    }
    kv_order_.resize(kvs_.size());
    for (uint32_t i = 0; i < kv_order_.size(); ++i) kv_order_[i] = i;
    std::sort(kv_order_.begin(), kv_order_.end(),
              [&](uint32_t a, uint32_t b) { return kvs_[a].key < kvs_[b].key; });
    for (size_t i = 1; i < kv_order_.size(); ++i)
      if (kvs_[kv_order_[i]].key == kvs_[kv_order_[i - 1]].key)
        return bad("duplicate metadata key " + detail::quoted(kvs_[kv_order_[i]].key));
    return {};
  }

  Status read_alignment() {
    alignment_ = default_alignment;
    if (const GgufKv* a = find("general.alignment")) {
      if (a->value.type() != GgufValueType::u32) return type_error(*a, "u32");
      uint64_t a64 = 0;
      a->value.as_uint64(&a64);
      alignment_ = static_cast<uint32_t>(a64);
      if (!detail::is_power_of_two(alignment_))
        return bad("general.alignment is " + std::to_string(alignment_) +
                   ", which is not a power of two");
    }
    return {};
  }

  // One tensor info: name, dimensions (their product must not overflow), type, offset.
  Status parse_tensor_info(Cursor& c, GgufTensorInfo* out) {
    GgufTensorInfo& t = *out;
    auto st = read_string(c, &t.name, "a tensor name", max_tensor_name_length);
    if (!st) return st;
    const std::string who = "tensor " + detail::quoted(t.name);
    if (!read(c, &t.n_dims)) return truncated(c, "a tensor's dimension count");
    if (t.n_dims == 0 || t.n_dims > max_tensor_dims)
      return bad(who + " has " + std::to_string(t.n_dims) + " dimensions (1 to 4 allowed)");
    t.n_elements = 1;
    for (uint32_t d = 0; d < t.n_dims; ++d) {
      if (!read(c, &t.ne[d])) return truncated(c, "a tensor dimension");
      if (t.ne[d] > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          detail::mul_overflows(t.n_elements, t.ne[d], &t.n_elements) ||
          t.n_elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        return bad(who + " has dimensions " + t.shape_string() + " whose product overflows");
    }
    uint32_t type_raw;
    if (!read(c, &type_raw)) return truncated(c, "a tensor type");
    const TensorTypeInfo* info = tensor_type_info(type_raw);
    if (!info)
      return make_error(Errc::unsupported, name() + ": " + who + " has unknown tensor type " +
                                               std::to_string(type_raw));
    t.type = info->type;
    if (t.ne[0] % info->block_size != 0)
      return bad(who + " of type " + info->name + " has a row of " + std::to_string(t.ne[0]) +
                 " values, not a multiple of its block size " + std::to_string(info->block_size));
    if (detail::mul_overflows(t.n_elements / info->block_size, info->block_bytes, &t.n_bytes))
      return bad(who + " has a byte size that overflows");
    if (!read(c, &t.offset)) return truncated(c, "a tensor offset");
    return {};
  }

  Status parse_tensor_infos(Cursor& c, uint64_t n_tensors) {
    tensors_.reserve(static_cast<size_t>(n_tensors));
    for (uint64_t i = 0; i < n_tensors; ++i) {
      GgufTensorInfo t;
      if (auto st = parse_tensor_info(c, &t); !st) return st;
      tensors_.push_back(t);
    }
    return {};
  }

  Status index_tensor_names() {
    tensor_order_.resize(tensors_.size());
    for (uint32_t i = 0; i < tensor_order_.size(); ++i) tensor_order_[i] = i;
    std::sort(tensor_order_.begin(), tensor_order_.end(),
              [&](uint32_t a, uint32_t b) { return tensors_[a].name < tensors_[b].name; });
    for (size_t i = 1; i < tensor_order_.size(); ++i)
      if (tensors_[tensor_order_[i]].name == tensors_[tensor_order_[i - 1]].name)
        return bad("duplicate tensor name " + detail::quoted(tensors_[tensor_order_[i]].name));
    return {};
  }

  // Every tensor must be aligned, lie inside the file, and overlap no other tensor.
  Status place_tensors(const Cursor& c) {
    std::vector<uint32_t> by_offset(tensors_.size());
    for (uint32_t i = 0; i < by_offset.size(); ++i) by_offset[i] = i;
    std::sort(by_offset.begin(), by_offset.end(), [&](uint32_t a, uint32_t b) {
      return tensors_[a].offset < tensors_[b].offset;
    });
    uint64_t prev_end = 0;
    const GgufTensorInfo* prev = nullptr;
    for (uint32_t idx : by_offset) {
      GgufTensorInfo& t = tensors_[idx];
      const std::string who = "tensor " + detail::quoted(t.name);
      if (t.offset % alignment_ != 0)
        return bad(who + " has offset " + std::to_string(t.offset) + ", not a multiple of the " +
                   "alignment " + std::to_string(alignment_));
      uint64_t begin, end;
      if (detail::add_overflows(data_offset_, t.offset, &begin) ||
          detail::add_overflows(begin, t.n_bytes, &end) || end > c.size)
        return bad(who + " (" + std::to_string(t.n_bytes) + " bytes at data offset " +
                   std::to_string(t.offset) + ") extends past the end of the file (" +
                   std::to_string(c.size) + " bytes)");
      if (prev && t.offset < prev_end && t.n_bytes > 0)
        return bad(who + " overlaps tensor " + detail::quoted(prev->name));
      if (t.n_bytes > 0) {
        prev_end = t.offset + t.n_bytes;
        prev = &t;
      }
      t.data = c.base + begin;
    }
    return {};
  }

  Source source_;
  uint32_t version_ = 0;
  uint32_t alignment_ = default_alignment;
  uint64_t data_offset_ = 0;
  std::vector<GgufKv> kvs_;
  std::vector<uint32_t> kv_order_;
  std::vector<GgufTensorInfo> tensors_;
  std::vector<uint32_t> tensor_order_;

  template <class T>
  friend struct GgufGet;
};

template <class T>
struct GgufGet {
  static_assert(std::is_integral_v<T>, "unsupported metadata type");
  static Expected<T> read(const GgufFile& f, const GgufKv& kv) {
    if constexpr (std::is_same_v<T, bool>) {
      if (kv.value.type() != GgufValueType::boolean) return f.type_error(kv, "bool");
      return kv.value.as_bool();
    } else {
      if (!kv.value.is_integer()) return f.type_error(kv, "an integer");
      if constexpr (std::is_signed_v<T>) {
        int64_t v;
        if (!kv.value.as_int64(&v) || v < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
            v > static_cast<int64_t>(std::numeric_limits<T>::max()))
          return make_error(Errc::out_of_range, f.name() + ": metadata key " +
                                                    detail::quoted(kv.key) +
                                                    " holds a value out of range");
        return static_cast<T>(v);
      } else {
        uint64_t v;
        if (!kv.value.as_uint64(&v) || v > static_cast<uint64_t>(std::numeric_limits<T>::max()))
          return make_error(Errc::out_of_range, f.name() + ": metadata key " +
                                                    detail::quoted(kv.key) +
                                                    " holds a value out of range");
        return static_cast<T>(v);
      }
    }
  }
};
template <>
struct GgufGet<float> {
  static Expected<float> read(const GgufFile& f, const GgufKv& kv) {
    if (!kv.value.is_float() && !kv.value.is_integer()) return f.type_error(kv, "a number");
    return static_cast<float>(kv.value.as_double());
  }
};
template <>
struct GgufGet<double> {
  static Expected<double> read(const GgufFile& f, const GgufKv& kv) {
    if (!kv.value.is_float() && !kv.value.is_integer()) return f.type_error(kv, "a number");
    return kv.value.as_double();
  }
};
template <>
struct GgufGet<std::string_view> {
  static Expected<std::string_view> read(const GgufFile& f, const GgufKv& kv) {
    if (kv.value.type() != GgufValueType::string) return f.type_error(kv, "string");
    return kv.value.as_string();
  }
};
template <>
struct GgufGet<std::string> {
  static Expected<std::string> read(const GgufFile& f, const GgufKv& kv) {
    if (kv.value.type() != GgufValueType::string) return f.type_error(kv, "string");
    return std::string(kv.value.as_string());
  }
};
template <>
struct GgufGet<GgufArray> {
  static Expected<GgufArray> read(const GgufFile& f, const GgufKv& kv) {
    if (kv.value.type() != GgufValueType::array) return f.type_error(kv, "array");
    return kv.value.as_array();
  }
};

// A short human-readable rendering of a value; arrays longer than `max_elems` are abbreviated.
inline std::string format_value(const GgufValue& v, size_t max_elems = 8) {
  char buf[64];
  switch (v.type()) {
    case GgufValueType::string: {
      std::string_view s = v.as_string();
      std::string out = detail::quoted(s.substr(0, 160));
      if (s.size() > 160) out += " (" + std::to_string(s.size()) + " bytes)";
      return out;
    }
    case GgufValueType::boolean: return v.as_bool() ? "true" : "false";
    case GgufValueType::f32:
    case GgufValueType::f64: std::snprintf(buf, sizeof buf, "%g", v.as_double()); return buf;
    case GgufValueType::u64: {
      uint64_t u = 0;
      v.as_uint64(&u);
      return std::to_string(u);
    }
    case GgufValueType::array: {
      GgufArray a = v.as_array();
      std::string out = std::string(gguf_value_type_name(a.element_type())) + "[" +
                        std::to_string(a.size()) + "] [";
      size_t i = 0;
      a.for_each([&](const GgufValue& e) {
        if (i == max_elems) {
          out += ", ...";
          return false;
        }
        if (i) out += ", ";
        out += format_value(e, max_elems);
        ++i;
        return true;
      });
      return out + "]";
    }
    default: {
      int64_t x = 0;
      v.as_int64(&x);
      return std::to_string(x);
    }
  }
}

// ---------------------------------------------------------------------------------------
// The writer: metadata and tensors of any type, aligned as the reader (and llama.cpp) expect.

class GgufWriter {
 public:
  // Encoded payloads of metadata values, for set_raw (nested arrays, hand-made bad files).
  struct Encoded {
    GgufValueType type;
    std::vector<uint8_t> bytes;
  };
  template <class T>
  static void put(std::vector<uint8_t>& out, T v) {
    uint8_t b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    out.insert(out.end(), b, b + sizeof(T));
  }
  static void put_string(std::vector<uint8_t>& out, std::string_view s) {
    put<uint64_t>(out, s.size());
    out.insert(out.end(), s.begin(), s.end());
  }

  void set_version(uint32_t v) { version_ = v; }
  void set_alignment(uint32_t a) {
    alignment_ = a;
    set_u32("general.alignment", a);
  }

  void set_u8(std::string_view k, uint8_t v) { set_scalar(k, GgufValueType::u8, v); }
  void set_i8(std::string_view k, int8_t v) { set_scalar(k, GgufValueType::i8, v); }
  void set_u16(std::string_view k, uint16_t v) { set_scalar(k, GgufValueType::u16, v); }
  void set_i16(std::string_view k, int16_t v) { set_scalar(k, GgufValueType::i16, v); }
  void set_u32(std::string_view k, uint32_t v) { set_scalar(k, GgufValueType::u32, v); }
  void set_i32(std::string_view k, int32_t v) { set_scalar(k, GgufValueType::i32, v); }
  void set_u64(std::string_view k, uint64_t v) { set_scalar(k, GgufValueType::u64, v); }
  void set_i64(std::string_view k, int64_t v) { set_scalar(k, GgufValueType::i64, v); }
  void set_f32(std::string_view k, float v) { set_scalar(k, GgufValueType::f32, v); }
  void set_f64(std::string_view k, double v) { set_scalar(k, GgufValueType::f64, v); }
  void set_bool(std::string_view k, bool v) {
    set_scalar(k, GgufValueType::boolean, static_cast<uint8_t>(v ? 1 : 0));
  }
  void set_string(std::string_view k, std::string_view v) {
    Encoded e{GgufValueType::string, {}};
    put_string(e.bytes, v);
    set_raw(k, std::move(e));
  }
  template <class T>
  void set_array(std::string_view k, GgufValueType elem, std::span<const T> values) {
    TINYSLM_ASSERT(detail::gguf_scalar_size(elem) == sizeof(T));
    Encoded e{GgufValueType::array, {}};
    put<uint32_t>(e.bytes, static_cast<uint32_t>(elem));
    put<uint64_t>(e.bytes, values.size());
    for (const T& v : values) put<T>(e.bytes, v);
    set_raw(k, std::move(e));
  }
  void set_array_strings(std::string_view k, std::span<const std::string> values) {
    Encoded e{GgufValueType::array, {}};
    put<uint32_t>(e.bytes, static_cast<uint32_t>(GgufValueType::string));
    put<uint64_t>(e.bytes, values.size());
    for (const auto& v : values) put_string(e.bytes, v);
    set_raw(k, std::move(e));
  }
  // Copies every metadata entry of `src` (except general.alignment) into this writer.
  void copy_metadata(const GgufFile& src) {
    for (const auto& kv : src.metadata()) {
      if (kv.key == "general.alignment") continue;
      // GgufValue spans its payload exactly; rebuild the bytes through format-level access
      Encoded e{kv.value.type(), {}};
      append_value(e.bytes, kv.value);
      set_raw(kv.key, std::move(e));
    }
  }
  void set_raw(std::string_view k, Encoded e) {
    for (auto& kv : kvs_)
      if (kv.first == k) {
        kv.second = std::move(e);
        return;
      }
    kvs_.emplace_back(std::string(k), std::move(e));
  }
  void remove(std::string_view k) {
    kvs_.erase(std::remove_if(kvs_.begin(), kvs_.end(), [&](const auto& kv) { return kv.first == k; }),
               kvs_.end());
  }

  // Adds a tensor; `data` must hold exactly the bytes its type and shape need and is copied.
  Status add_tensor(std::string_view name, TensorType type, std::span<const uint64_t> shape,
                    const void* data, size_t bytes) {
    auto size = check_tensor(name, type, shape);
    if (!size) return size.error();
    if (*size != bytes)
      return make_error(Errc::invalid_argument,
                        "tensor " + detail::quoted(name) + ": " + std::to_string(bytes) +
                            " bytes given, " + std::to_string(*size) + " needed");
    Tensor t{std::string(name), type, {}, *size, {}, {}};
    t.shape.assign(shape.begin(), shape.end());
    const auto* p = static_cast<const uint8_t*>(data);
    t.data.assign(p, p + bytes);
    tensors_.push_back(std::move(t));
    return {};
  }
  // Adds a tensor whose bytes `fill(out, n)` produces when the file is written (large
  // generated models never sit in memory whole).
  Status add_tensor_generated(std::string_view name, TensorType type,
                              std::span<const uint64_t> shape,
                              std::function<void(uint8_t* out, size_t bytes)> fill) {
    auto size = check_tensor(name, type, shape);
    if (!size) return size.error();
    Tensor t{std::string(name), type, {}, *size, {}, std::move(fill)};
    t.shape.assign(shape.begin(), shape.end());
    tensors_.push_back(std::move(t));
    return {};
  }

  size_t tensor_count() const { return tensors_.size(); }

  // The whole file in memory.
  std::vector<uint8_t> to_bytes() const {
    std::vector<uint8_t> out = header();
    for (const auto& t : tensors_) {
      pad(out);
      size_t at = out.size();
      out.resize(at + t.bytes);
      emit(t, out.data() + at);
    }
    return out;
  }

  Status write_file(const std::string& path) const {
    std::FILE* f = detail::fopen_utf8(path, "wb");
    if (!f) return make_error(Errc::io, path + ": cannot create file");
    std::vector<uint8_t> head = header();
    bool ok = std::fwrite(head.data(), 1, head.size(), f) == head.size();
    uint64_t pos = head.size();
    std::vector<uint8_t> buf;
    for (const auto& t : tensors_) {
      if (!ok) break;
      const uint64_t padded = (pos + alignment_ - 1) / alignment_ * alignment_;
      static const uint8_t zeros[256] = {};
      for (uint64_t n = padded - pos; n > 0 && ok;) {
        const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, sizeof zeros));
        ok = std::fwrite(zeros, 1, chunk, f) == chunk;
        n -= chunk;
      }
      buf.resize(t.bytes);
      emit(t, buf.data());
      ok = ok && std::fwrite(buf.data(), 1, buf.size(), f) == buf.size();
      pos = padded + t.bytes;
    }
#if defined(__linux__)
    // A model file just written sits in the page cache in small pages, and stays there until
    // evicted; mapped like that it decodes 10-25% slower than when read in fresh (2 MB folios,
    // see LoadMode in core.hpp). For large files, flush and drop our pages so the first load
    // reads it anew.
    if (ok && pos >= (uint64_t(64) << 20) && std::fflush(f) == 0 && fdatasync(fileno(f)) == 0)
      (void)posix_fadvise(fileno(f), 0, 0, POSIX_FADV_DONTNEED);
#endif
    if (std::fclose(f) != 0) ok = false;
    if (!ok) return make_error(Errc::io, path + ": write failed");
    return {};
  }

 private:
  struct Tensor {
    std::string name;
    TensorType type;
    std::vector<uint64_t> shape;
    uint64_t bytes;
    std::vector<uint8_t> data;
    std::function<void(uint8_t*, size_t)> fill;
  };

  template <class T>
  void set_scalar(std::string_view k, GgufValueType type, T v) {
    Encoded e{type, {}};
    put<T>(e.bytes, v);
    set_raw(k, std::move(e));
  }

  static void append_value(std::vector<uint8_t>& out, const GgufValue& v) {
    switch (v.type()) {
      case GgufValueType::string: put_string(out, v.as_string()); return;
      case GgufValueType::array: {
        GgufArray a = v.as_array();
        put<uint32_t>(out, static_cast<uint32_t>(a.element_type()));
        put<uint64_t>(out, a.size());
        if (a.element_type() == GgufValueType::string || a.element_type() == GgufValueType::array) {
          a.for_each([&](const GgufValue& e) {
            append_value(out, e);
            return true;
          });
        } else {
          out.insert(out.end(), a.data(), a.data() + a.element_bytes());
        }
        return;
      }
      case GgufValueType::f32: put<float>(out, static_cast<float>(v.as_double())); return;
      case GgufValueType::f64: put<double>(out, v.as_double()); return;
      case GgufValueType::u64: {
        uint64_t u = 0;
        v.as_uint64(&u);
        put<uint64_t>(out, u);
        return;
      }
      default: {
        int64_t x = 0;
        v.as_int64(&x);
        const uint64_t n = detail::gguf_scalar_size(v.type());
        uint8_t b[8];
        std::memcpy(b, &x, 8);
        out.insert(out.end(), b, b + n);
        return;
      }
    }
  }

  Expected<uint64_t> check_tensor(std::string_view name, TensorType type,
                                  std::span<const uint64_t> shape) const {
    if (name.empty() || name.size() > GgufFile::max_tensor_name_length)
      return make_error(Errc::invalid_argument, "tensor name " + detail::quoted(name) +
                                                    " must have 1 to 64 bytes");
    for (const auto& t : tensors_)
      if (t.name == name)
        return make_error(Errc::invalid_argument, "duplicate tensor " + detail::quoted(name));
    if (shape.empty() || shape.size() > GgufFile::max_tensor_dims)
      return make_error(Errc::invalid_argument, "tensor " + detail::quoted(name) +
                                                    " needs 1 to 4 dimensions");
    uint64_t n = 1;
    for (uint64_t d : shape)
      if (detail::mul_overflows(n, d, &n))
        return make_error(Errc::invalid_argument, "tensor " + detail::quoted(name) + " too large");
    const auto& info = tensor_type_info(type);
    if (shape[0] % info.block_size != 0)
      return make_error(Errc::invalid_argument,
                        "tensor " + detail::quoted(name) + ": row length " +
                            std::to_string(shape[0]) + " is not a multiple of " + info.name +
                            "'s block size " + std::to_string(info.block_size));
    uint64_t bytes;
    if (detail::mul_overflows(n / info.block_size, info.block_bytes, &bytes))
      return make_error(Errc::invalid_argument, "tensor " + detail::quoted(name) + " too large");
    return bytes;
  }

  void pad(std::vector<uint8_t>& out) const {
    while (out.size() % alignment_) out.push_back(0);
  }

  void emit(const Tensor& t, uint8_t* dst) const {
    if (t.fill)
      t.fill(dst, static_cast<size_t>(t.bytes));
    else if (t.bytes)
      std::memcpy(dst, t.data.data(), static_cast<size_t>(t.bytes));
  }

  std::vector<uint8_t> header() const {
    std::vector<uint8_t> out(4);
    std::memcpy(out.data(), "GGUF", 4);
    put<uint32_t>(out, version_);
    put<uint64_t>(out, tensors_.size());
    put<uint64_t>(out, kvs_.size());
    for (const auto& [key, value] : kvs_) {
      put_string(out, key);
      put<uint32_t>(out, static_cast<uint32_t>(value.type));
      out.insert(out.end(), value.bytes.begin(), value.bytes.end());
    }
    uint64_t offset = 0;
    for (const auto& t : tensors_) {
      put_string(out, t.name);
      put<uint32_t>(out, static_cast<uint32_t>(t.shape.size()));
      for (uint64_t d : t.shape) put<uint64_t>(out, d);
      put<uint32_t>(out, static_cast<uint32_t>(t.type));
      offset = (offset + alignment_ - 1) / alignment_ * alignment_;
      put<uint64_t>(out, offset);
      offset += t.bytes;
    }
    pad(out);
    return out;
  }

  uint32_t version_ = 3;
  uint32_t alignment_ = GgufFile::default_alignment;
  std::vector<std::pair<std::string, Encoded>> kvs_;
  std::vector<Tensor> tensors_;
};

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
