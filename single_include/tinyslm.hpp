// tinyslm — single-header edition.
// GENERATED FILE, DO NOT EDIT: made by scripts/amalgamate.py from include/.
// Edit the headers under include/ and run `python3 scripts/amalgamate.py`.
#pragma once

// ---- begin tinyslm.hpp ----
// tinyslm: run small language models from GGUF files on the CPU.
// This umbrella header includes every layer, lowest first (see DESIGN.md).


// ---- begin tinyslm/core.hpp ----
// tinyslm core: configuration macros, Error / Expected, checked arithmetic, aligned buffers,
// model sources (memory-mapped file, plain read, caller-owned memory), half-precision
// conversions and CPU feature detection. Every other layer includes this one.

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#if defined(_WIN32)
#ifndef NOMINMAX
#define NOMINMAX
#endif
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#else
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#define TINYSLM_ARCH_X86 1
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
#define TINYSLM_ARCH_ARM64 1
#if defined(__linux__)
#include <sys/auxv.h>
#endif
#if defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#endif

#define TINYSLM_VERSION_MAJOR 0
#define TINYSLM_VERSION_MINOR 1
#define TINYSLM_VERSION_PATCH 0

// Exceptions are never required: the library reports errors as values. This only decides
// whether Expected::value() on an error throws (when exceptions are on) or aborts.
#if !defined(TINYSLM_NO_EXCEPTIONS) && !defined(__cpp_exceptions) && !defined(__EXCEPTIONS) && \
    !defined(_CPPUNWIND)
#define TINYSLM_NO_EXCEPTIONS 1
#endif
#if !defined(TINYSLM_NO_EXCEPTIONS)
#include <stdexcept>
#endif

#ifndef TINYSLM_ASSERT
#define TINYSLM_ASSERT(cond) \
  do {                       \
    if (!(cond)) std::abort(); \
  } while (0)
#endif

// Allocation hooks: define both to route the library's large buffers elsewhere.
#if !defined(TINYSLM_ALIGNED_ALLOC) || !defined(TINYSLM_ALIGNED_FREE)
#undef TINYSLM_ALIGNED_ALLOC
#undef TINYSLM_ALIGNED_FREE
#define TINYSLM_ALIGNED_ALLOC(alignment, size) \
  ::operator new((size), std::align_val_t(alignment), std::nothrow)
#define TINYSLM_ALIGNED_FREE(ptr, alignment) ::operator delete((ptr), std::align_val_t(alignment))
#endif

#if defined(__GNUC__) || defined(__clang__)
#define TINYSLM_LIKELY(x) __builtin_expect(!!(x), 1)
#define TINYSLM_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define TINYSLM_LIKELY(x) (x)
#define TINYSLM_UNLIKELY(x) (x)
#endif

// The inline namespace every declaration lives in names the configuration macros that change
// the layout of types or the bodies of inline functions (threads, Highway, exceptions), so two
// copies of the library built with different settings in one app do not violate the ODR: their
// symbols differ (v0, v0_nothreads, v0_hwy_noexcept, ...).
#if defined(TINYSLM_NO_THREADS)
#define TINYSLM_ABI_THREADS_ _nothreads
#else
#define TINYSLM_ABI_THREADS_
#endif
#if defined(TINYSLM_USE_HIGHWAY)
#define TINYSLM_ABI_HWY_ _hwy
#else
#define TINYSLM_ABI_HWY_
#endif
#if defined(TINYSLM_NO_EXCEPTIONS)
#define TINYSLM_ABI_EXC_ _noexcept
#else
#define TINYSLM_ABI_EXC_
#endif
#define TINYSLM_ABI_CAT_(a, b, c, d) a##b##c##d
#define TINYSLM_ABI_NAME_(a, b, c, d) TINYSLM_ABI_CAT_(a, b, c, d)
#define TINYSLM_ABI_NAMESPACE TINYSLM_ABI_NAME_(v0, TINYSLM_ABI_THREADS_, TINYSLM_ABI_HWY_, TINYSLM_ABI_EXC_)
#define TINYSLM_ABI_STR2_(x) #x
#define TINYSLM_ABI_STR_(x) TINYSLM_ABI_STR2_(x)
// The inline namespace's name as a string, e.g. "v0_nothreads".
#define TINYSLM_ABI_TAG TINYSLM_ABI_STR_(TINYSLM_ABI_NAMESPACE)

#define TINYSLM_TRY(var, expr)                                  \
  auto var##_tinyslm_expected = (expr);                         \
  if (!var##_tinyslm_expected) return var##_tinyslm_expected.error(); \
  auto& var = *var##_tinyslm_expected

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

// ---------------------------------------------------------------------------------------
// Errors

enum class Errc : int {
  ok = 0,
  io,                // the file could not be opened, mapped or read
  invalid_format,    // the bytes are not what the format says they must be
  unsupported,       // well-formed but not supported (a version, a type, an architecture)
  invalid_argument,  // the caller passed something unusable
  not_found,         // a key or tensor is missing
  type_mismatch,     // a key exists with another type
  out_of_range,      // a value or index outside what is allowed (context full, token id)
  out_of_memory,
  cancelled,
};

inline const char* errc_name(Errc c) {
  switch (c) {
    case Errc::ok: return "ok";
    case Errc::io: return "I/O error";
    case Errc::invalid_format: return "invalid format";
    case Errc::unsupported: return "unsupported";
    case Errc::invalid_argument: return "invalid argument";
    case Errc::not_found: return "not found";
    case Errc::type_mismatch: return "type mismatch";
    case Errc::out_of_range: return "out of range";
    case Errc::out_of_memory: return "out of memory";
    case Errc::cancelled: return "cancelled";
  }
  return "unknown error";
}

// An error code and a message for a person: it names the file, tensor or key at fault.
class Error {
 public:
  Error() = default;
  Error(Errc code, std::string message) : code_(code), message_(std::move(message)) {}

  Errc code() const { return code_; }
  const std::string& message() const { return message_; }

  // Prepends context ("model.gguf: ") to the message.
  Error& context(std::string_view prefix) {
    message_.insert(0, std::string(prefix) + ": ");
    return *this;
  }

 private:
  Errc code_ = Errc::ok;
  std::string message_;
};

namespace detail {
[[noreturn]] inline void bad_expected_access(const Error& e) {
#if defined(TINYSLM_NO_EXCEPTIONS)
  (void)e;
  std::abort();
#else
  throw std::runtime_error(e.message());
#endif
}
}  // namespace detail

// A value or an Error. Constructible from either; test with `if (x)`, read with `*x`.
template <class T>
class [[nodiscard]] Expected {
 public:
  using value_type = T;

  template <class U = T,
            std::enable_if_t<std::is_constructible_v<T, U&&> &&
                                 !std::is_same_v<std::remove_cvref_t<U>, Expected> &&
                                 !std::is_same_v<std::remove_cvref_t<U>, Error>,
                             int> = 0>
  Expected(U&& v) : has_(true) {  // NOLINT(google-explicit-constructor)
    new (&storage_.value) T(std::forward<U>(v));
  }
  Expected(Error e) : has_(false) {  // NOLINT(google-explicit-constructor)
    new (&storage_.error) Error(std::move(e));
  }
  Expected(const Expected& o) : has_(o.has_) {
    if (has_)
      new (&storage_.value) T(o.storage_.value);
    else
      new (&storage_.error) Error(o.storage_.error);
  }
  Expected(Expected&& o) noexcept(std::is_nothrow_move_constructible_v<T>) : has_(o.has_) {
    if (has_)
      new (&storage_.value) T(std::move(o.storage_.value));
    else
      new (&storage_.error) Error(std::move(o.storage_.error));
  }
  Expected& operator=(Expected o) {
    destroy();
    has_ = o.has_;
    if (has_)
      new (&storage_.value) T(std::move(o.storage_.value));
    else
      new (&storage_.error) Error(std::move(o.storage_.error));
    return *this;
  }
  ~Expected() { destroy(); }

  bool has_value() const { return has_; }
  explicit operator bool() const { return has_; }

  T& value() & {
    if (!has_) detail::bad_expected_access(storage_.error);
    return storage_.value;
  }
  const T& value() const& {
    if (!has_) detail::bad_expected_access(storage_.error);
    return storage_.value;
  }
  T&& value() && {
    if (!has_) detail::bad_expected_access(storage_.error);
    return std::move(storage_.value);
  }
  template <class U>
  T value_or(U&& fallback) const& {
    return has_ ? storage_.value : static_cast<T>(std::forward<U>(fallback));
  }

  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& {
    TINYSLM_ASSERT(!has_);
    return storage_.error;
  }
  Error&& error() && {
    TINYSLM_ASSERT(!has_);
    return std::move(storage_.error);
  }

 private:
  void destroy() {
    if (has_)
      storage_.value.~T();
    else
      storage_.error.~Error();
  }
  union Storage {
    Storage() {}
    ~Storage() {}
    T value;
    Error error;
  } storage_;
  bool has_;
};

template <>
class [[nodiscard]] Expected<void> {
 public:
  Expected() = default;
  Expected(Error e) : error_(std::move(e)), has_(false) {}  // NOLINT(google-explicit-constructor)
  bool has_value() const { return has_; }
  explicit operator bool() const { return has_; }
  void value() const {
    if (!has_) detail::bad_expected_access(error_);
  }
  const Error& error() const {
    TINYSLM_ASSERT(!has_);
    return error_;
  }

 private:
  Error error_;
  bool has_ = true;
};

using Status = Expected<void>;

inline Error make_error(Errc code, std::string message) { return Error(code, std::move(message)); }

// ---------------------------------------------------------------------------------------
// Checked arithmetic: every size computed from file contents goes through these.

namespace detail {

inline bool add_overflows(uint64_t a, uint64_t b, uint64_t* out) {
  *out = a + b;
  return *out < a;
}
inline bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) {
  *out = a * b;
  return a != 0 && *out / a != b;
}

// Rounds x up to a multiple of `align` (a power of two); false on overflow.
inline bool align_up(uint64_t x, uint64_t align, uint64_t* out) {
  uint64_t t;
  if (add_overflows(x, align - 1, &t)) return false;
  *out = t & ~(align - 1);
  return true;
}

inline bool is_power_of_two(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

// ASCII case-insensitive equality (type and mix names such as "q4_k_m").
inline bool iequals_ascii(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'a' && x <= 'z') x = static_cast<char>(x - 'a' + 'A');
    if (y >= 'a' && y <= 'z') y = static_cast<char>(y - 'a' + 'A');
    if (x != y) return false;
  }
  return true;
}

inline std::string quoted(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      static const char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[u >> 4];
      out += hex[u & 15];
    } else {
      out += c;
    }
    if (out.size() > 200) {
      out += "...";
      break;
    }
  }
  out += "'";
  return out;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// Aligned, owned, uninitialised storage (64-byte alignment: one cache line, one AVX-512 vector).

template <class T>
class AlignedBuffer {
  static_assert(std::is_trivially_copyable_v<T>, "AlignedBuffer holds plain data only");

 public:
  static constexpr size_t alignment = 64;

  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept : data_(o.data_), size_(o.size_) {
    o.data_ = nullptr;
    o.size_ = 0;
  }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~AlignedBuffer() { release(); }

  // Allocates n elements (contents unspecified); false when the allocation fails.
  [[nodiscard]] bool allocate(size_t n) {
    release();
    if (n == 0) return true;
    if (n > std::numeric_limits<size_t>::max() / sizeof(T)) return false;
    void* p = TINYSLM_ALIGNED_ALLOC(alignment, n * sizeof(T));
    if (!p) return false;
    data_ = static_cast<T*>(p);
    size_ = n;
    return true;
  }
  void release() {
    if (data_) TINYSLM_ALIGNED_FREE(data_, alignment);
    data_ = nullptr;
    size_ = 0;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }
  T* begin() { return data_; }
  T* end() { return data_ + size_; }
  std::span<T> span() { return {data_, size_}; }
  std::span<const T> span() const { return {data_, size_}; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

// ---------------------------------------------------------------------------------------
// Model sources: where the bytes of a GGUF file live.

enum class LoadMode {
  map,        // memory-map the file, falling back to reading it when mapping fails
  read,       // read the whole file into an owned buffer
};

// Page size and decode speed (Linux): decode streams every weight once per token, and with
// 4 KB pages that means a TLB miss per 4 KB and a hardware prefetcher that restarts at every
// page boundary. Mappings are advised MADV_HUGEPAGE, so a file read into the page cache
// through the mapping lands in 2 MB folios where the file system supports them (ext4, xfs
// on recent kernels); a file the page cache already holds in small pages (one just written,
// e.g. by mkmodel or a download) stays that way until evicted. LoadMode::read copies the
// file into anonymous memory advised the same way, which gets 2 MB pages whenever
// transparent huge pages are enabled (`always` or `madvise`).

// Owned, uninitialised bytes for data that is streamed (model weights): from 2 MB up, on Linux,
// anonymous memory starting on a 2 MB boundary and advised MADV_HUGEPAGE; otherwise (smaller,
// other systems, or when mapping fails) an AlignedBuffer.
class PageBuffer {
 public:
  PageBuffer() = default;
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;
  PageBuffer(PageBuffer&& o) noexcept { *this = std::move(o); }
  PageBuffer& operator=(PageBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      map_ = std::exchange(o.map_, nullptr);
      map_size_ = std::exchange(o.map_size_, 0);
      huge_ = std::exchange(o.huge_, false);
      heap_ = std::move(o.heap_);
    }
    return *this;
  }
  ~PageBuffer() { release(); }

  // n bytes (contents unspecified); false when the allocation fails.
  [[nodiscard]] bool allocate(size_t n) {
    release();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    constexpr size_t kHuge = size_t(2) << 20;
    if (n >= kHuge && n <= SIZE_MAX - kHuge) {
      void* m = mmap(nullptr, n + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m != MAP_FAILED) {
        map_ = m;
        map_size_ = n + kHuge;
        data_ = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(m) + kHuge - 1) & ~uintptr_t(kHuge - 1));
        size_ = n;
        huge_ = madvise(data_, n, MADV_HUGEPAGE) == 0;
        return true;
      }
    }
#endif
    if (!heap_.allocate(n)) return false;
    data_ = heap_.data();
    size_ = n;
    return true;
  }
  void release() {
#if !defined(_WIN32)
    if (map_) munmap(map_, map_size_);
#endif
    map_ = nullptr;
    map_size_ = 0;
    heap_.release();
    data_ = nullptr;
    size_ = 0;
    huge_ = false;
  }

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool huge() const { return huge_; }  // advised for 2 MB pages

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  void* map_ = nullptr;  // the whole anonymous mapping (data_ is 2 MB aligned inside it)
  size_t map_size_ = 0;
  bool huge_ = false;
  AlignedBuffer<uint8_t> heap_;
};

// The bytes of a model file. Owns a mapping or a buffer, or borrows caller memory
// (for instance an Android asset or an array embedded in the program) that must outlive it.
class Source {
 public:
  Source() = default;
  Source(const Source&) = delete;
  Source& operator=(const Source&) = delete;
  Source(Source&& o) noexcept { *this = std::move(o); }
  Source& operator=(Source&& o) noexcept {
    if (this != &o) {
      reset();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      kind_ = std::exchange(o.kind_, Kind::none);
      buffer_ = std::move(o.buffer_);
      name_ = std::move(o.name_);
#if defined(_WIN32)
      mapping_ = std::exchange(o.mapping_, nullptr);
#endif
    }
    return *this;
  }
  ~Source() { reset(); }

  static Expected<Source> open(const std::string& path, LoadMode mode = LoadMode::map) {
    if (mode == LoadMode::map) {
      auto mapped = map_file(path);
      if (mapped) return mapped;
      if (mapped.error().code() != Errc::unsupported) return mapped;
    }
    return read_file(path);
  }

  // Borrows [data, data + size); nothing is copied.
  static Source borrow(const void* data, size_t size, std::string name = "<memory>") {
    Source s;
    s.data_ = static_cast<const uint8_t*>(data);
    s.size_ = size;
    s.kind_ = Kind::borrowed;
    s.name_ = std::move(name);
    return s;
  }

  static Expected<Source> map_file(const std::string& path);
  static Expected<Source> read_file(const std::string& path);

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& name() const { return name_; }
  bool is_mapped() const { return kind_ == Kind::mapped; }

 private:
  enum class Kind { none, mapped, owned, borrowed };

  void reset() {
    if (kind_ == Kind::mapped && data_) {
#if defined(_WIN32)
      UnmapViewOfFile(data_);
      if (mapping_) CloseHandle(mapping_);
      mapping_ = nullptr;
#else
      munmap(const_cast<uint8_t*>(data_), size_);
#endif
    }
    buffer_.release();
    data_ = nullptr;
    size_ = 0;
    kind_ = Kind::none;
  }

  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  Kind kind_ = Kind::none;
  PageBuffer buffer_;  // LoadMode::read
  std::string name_;
#if defined(_WIN32)
  HANDLE mapping_ = nullptr;
#endif
};

namespace detail {
#if defined(_WIN32)
// The wide-character Win32 functions take UTF-16; tinyslm paths are UTF-8 (the A functions
// would read them in the ANSI code page). Empty when the bytes are not UTF-8.
inline std::wstring widen_utf8(const std::string& s) {
  if (s.empty() || s.size() > static_cast<size_t>(INT32_MAX)) return {};
  const int len = static_cast<int>(s.size());
  const int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s.data(), len, nullptr, 0);
  if (n <= 0) return {};
  std::wstring w(static_cast<size_t>(n), L'\0');
  if (MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s.data(), len, w.data(), n) != n) return {};
  return w;
}

inline Expected<HANDLE> open_for_read(const std::string& path) {
  const std::wstring w = widen_utf8(path);
  if (w.empty()) return make_error(Errc::io, path + ": cannot open file (the path is empty or not UTF-8)");
  HANDLE file = CreateFileW(w.c_str(), GENERIC_READ, FILE_SHARE_READ, nullptr, OPEN_EXISTING,
                            FILE_ATTRIBUTE_NORMAL, nullptr);
  if (file == INVALID_HANDLE_VALUE)
    return make_error(Errc::io, path + ": cannot open file (error " + std::to_string(GetLastError()) + ")");
  return file;
}

// The file's size, which must fit this process's address space to be mapped or read.
inline Expected<size_t> file_size(HANDLE file, const std::string& path) {
  LARGE_INTEGER size;
  if (!GetFileSizeEx(file, &size)) return make_error(Errc::io, path + ": cannot read the file size");
  if (static_cast<uint64_t>(size.QuadPart) > SIZE_MAX)
    return make_error(Errc::io, path + ": file too large for this address space (" +
                                    std::to_string(size.QuadPart) + " bytes)");
  return static_cast<size_t>(size.QuadPart);
}
#else
// O_LARGEFILE (0 where off_t is 64-bit already) lets a 32-bit build without
// _FILE_OFFSET_BITS=64 open a file over 2 GB; open() would fail with EOVERFLOW.
#if defined(O_LARGEFILE)
inline constexpr int kOpenLargeFile = O_LARGEFILE;
#else
inline constexpr int kOpenLargeFile = 0;
#endif

inline Expected<int> open_for_read(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | kOpenLargeFile);
  if (fd < 0) return make_error(Errc::io, path + ": cannot open file (" + std::strerror(errno) + ")");
  return fd;
}

// The size of a regular file, which must fit this process's address space to be mapped or
// read. stat64 where the C library has it (glibc with _LARGEFILE64_SOURCE, which g++ defines,
// and Android): a 32-bit struct stat cannot hold a size over 2 GB and fstat fails.
inline Expected<size_t> file_size(int fd, const std::string& path) {
#if defined(__USE_LARGEFILE64) || defined(__BIONIC__)
  struct stat64 st {};
  const int rc = fstat64(fd, &st);
#else
  struct stat st {};
  const int rc = fstat(fd, &st);
#endif
  const auto too_large = [&](std::string what) {
    return make_error(Errc::io, path + ": file too large for this address space" + what);
  };
  if (rc != 0) {
    if (errno == EOVERFLOW) return too_large("");
    return make_error(Errc::io, path + ": cannot read the file size (" + std::strerror(errno) + ")");
  }
  if (!S_ISREG(st.st_mode)) return make_error(Errc::io, path + ": not a regular file");
  if (st.st_size < 0) return make_error(Errc::io, path + ": cannot read the file size");
  if (static_cast<uint64_t>(st.st_size) > SIZE_MAX)
    return too_large(" (" + std::to_string(static_cast<uint64_t>(st.st_size)) + " bytes)");
  return static_cast<size_t>(st.st_size);
}
#endif

// std::fopen with a UTF-8 path (on Windows through _wfopen, which takes UTF-16).
inline std::FILE* fopen_utf8(const std::string& path, const char* mode) {
#if defined(_WIN32)
  const std::wstring w = widen_utf8(path);
  const std::string m(mode);
  if (w.empty()) return nullptr;
  return _wfopen(w.c_str(), std::wstring(m.begin(), m.end()).c_str());
#else
  return std::fopen(path.c_str(), mode);
#endif
}
}  // namespace detail

#if defined(_WIN32)
inline Expected<Source> Source::map_file(const std::string& path) {
  auto file = detail::open_for_read(path);
  if (!file) return file.error();
  auto size = detail::file_size(*file, path);
  if (!size) {
    CloseHandle(*file);
    return size.error();
  }
  Source s;
  s.name_ = path;
  s.kind_ = Kind::mapped;
  if (*size == 0) {
    CloseHandle(*file);
    s.kind_ = Kind::borrowed;
    return s;
  }
  HANDLE mapping = CreateFileMappingW(*file, nullptr, PAGE_READONLY, 0, 0, nullptr);
  CloseHandle(*file);
  if (!mapping) return make_error(Errc::unsupported, path + ": cannot map the file");
  void* view = MapViewOfFile(mapping, FILE_MAP_READ, 0, 0, 0);
  if (!view) {
    CloseHandle(mapping);
    return make_error(Errc::unsupported, path + ": cannot map the file");
  }
  s.mapping_ = mapping;
  s.data_ = static_cast<const uint8_t*>(view);
  s.size_ = *size;
  return s;
}

inline Expected<Source> Source::read_file(const std::string& path) {
  auto file = detail::open_for_read(path);
  if (!file) return file.error();
  auto size = detail::file_size(*file, path);
  if (!size) {
    CloseHandle(*file);
    return size.error();
  }
  Source s;
  s.name_ = path;
  s.kind_ = Kind::owned;
  if (!s.buffer_.allocate(*size)) {
    CloseHandle(*file);
    return make_error(Errc::out_of_memory, path + ": cannot allocate a buffer for the file");
  }
  size_t done = 0;
  while (done < s.buffer_.size()) {
    DWORD chunk = static_cast<DWORD>(std::min<size_t>(s.buffer_.size() - done, 1u << 30));
    DWORD got = 0;
    if (!ReadFile(*file, s.buffer_.data() + done, chunk, &got, nullptr) || got == 0) {
      CloseHandle(*file);
      return make_error(Errc::io, path + ": read failed");
    }
    done += got;
  }
  CloseHandle(*file);
  s.data_ = s.buffer_.data();
  s.size_ = s.buffer_.size();
  return s;
}
#else
inline Expected<Source> Source::map_file(const std::string& path) {
  auto fd = detail::open_for_read(path);
  if (!fd) return fd.error();
  auto size = detail::file_size(*fd, path);
  if (!size) {
    ::close(*fd);
    return size.error();
  }
  Source s;
  s.name_ = path;
  if (*size == 0) {
    ::close(*fd);
    s.kind_ = Kind::borrowed;
    return s;
  }
  void* p = mmap(nullptr, *size, PROT_READ, MAP_SHARED, *fd, 0);
  ::close(*fd);
  if (p == MAP_FAILED) return make_error(Errc::unsupported, path + ": cannot map the file");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  (void)madvise(p, *size, MADV_HUGEPAGE);  // a hint; failure is harmless
#endif
  s.kind_ = Kind::mapped;
  s.data_ = static_cast<const uint8_t*>(p);
  s.size_ = *size;
  return s;
}

inline Expected<Source> Source::read_file(const std::string& path) {
  auto fd = detail::open_for_read(path);
  if (!fd) return fd.error();
  auto file_size = detail::file_size(*fd, path);
  if (!file_size) {
    ::close(*fd);
    return file_size.error();
  }
  Source s;
  s.name_ = path;
  const size_t size = *file_size;
  s.kind_ = Kind::owned;
  if (!s.buffer_.allocate(size)) {
    ::close(*fd);
    return make_error(Errc::out_of_memory, path + ": cannot allocate a buffer for the file");
  }
  uint8_t* dst = s.buffer_.data();
  size_t done = 0;
  while (done < size) {
    ssize_t got = ::read(*fd, dst + done, size - done);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      ::close(*fd);
      return make_error(Errc::io, path + ": read failed");
    }
    done += static_cast<size_t>(got);
  }
  ::close(*fd);
  s.data_ = dst;
  s.size_ = size;
  return s;
}
#endif

// ---------------------------------------------------------------------------------------
// How a lower layer (kernels) spreads work over threads without knowing the pool (threads
// layer): run(fn) calls fn(thread_index, n_threads) once per thread and returns when all
// are done. A default-constructed ParallelFor runs fn(0, 1) on the calling thread.

struct ParallelFor {
  using Task = void (*)(void* arg, int thread, int n_threads);
  void* ctx = nullptr;
  int n_threads = 1;
  void (*dispatch)(void* ctx, Task task, void* arg) = nullptr;

  template <class F>
  void operator()(F&& f) const {
    if (!dispatch || n_threads <= 1) {
      f(0, 1);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    dispatch(
        ctx, [](void* arg, int t, int n) { (*static_cast<Fn*>(arg))(t, n); },
        const_cast<void*>(static_cast<const void*>(&f)));
  }

  // The half-open share [begin, end) of `count` items for thread t of n: contiguous, in
  // order, sizes differing by at most one, a multiple of `grain` except the last.
  static void split(int64_t count, int t, int n, int64_t grain, int64_t* begin, int64_t* end) {
    const int64_t units = (count + grain - 1) / grain;
    const int64_t per = units / n, extra = units % n;
    const int64_t b = t * per + (t < extra ? t : extra);
    const int64_t e = b + per + (t < extra ? 1 : 0);
    *begin = b * grain < count ? b * grain : count;
    *end = e * grain < count ? e * grain : count;
  }
};

// ---------------------------------------------------------------------------------------
// Half-precision floats, stored as raw bits.

inline float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf or nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // subnormal half: value = mant * 2^-24, exactly representable in f32
    float f = static_cast<float>(mant) * 5.9604644775390625e-8f;
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

// Round to nearest even, as the hardware conversion does.
inline uint16_t fp32_to_fp16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (abs < 0x38800000u) {
    // result is subnormal or zero: scale so the mantissa lands in the low 10 bits
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  const uint32_t rem = r & 0x1fffu;
  r >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) ++r;
  return static_cast<uint16_t>(sign | r);
}

inline float bf16_to_fp32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

inline uint16_t fp32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet nan
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

// ---------------------------------------------------------------------------------------
// CPU features, detected once per call (cheap; callers cache the result).

struct CpuFeatures {
  // x86
  bool sse42 = false, avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vnni = false, avx512bf16 = false, avx_vnni = false;
  // arm64
  bool neon = false, dotprod = false, i8mm = false, fp16 = false;

  // The kernel families in use: AVX-512 means F+BW+VL+DQ with OS support for the state.
  bool has_avx2_fma() const { return avx2 && fma && f16c; }
  bool has_avx512() const { return avx512f && avx512bw && avx512vl && avx512dq && has_avx2_fma(); }
  bool has_avx512_vnni() const { return has_avx512() && avx512vnni; }
};

namespace detail {
#if defined(TINYSLM_ARCH_X86)
inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
#if defined(_MSC_VER) && !defined(__clang__)
  int regs[4];
  __cpuidex(regs, static_cast<int>(leaf), static_cast<int>(sub));
  for (int i = 0; i < 4; ++i) r[i] = static_cast<uint32_t>(regs[i]);
#else
  __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
#endif
}
inline uint64_t xgetbv0() {
#if defined(_MSC_VER) && !defined(__clang__)
  return _xgetbv(0);
#else
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
#endif
}
#endif
}  // namespace detail

inline CpuFeatures detect_cpu_features() {
  CpuFeatures f;
#if defined(TINYSLM_ARCH_X86)
  uint32_t r[4];
  detail::cpuid(0, 0, r);
  const uint32_t max_leaf = r[0];
  if (max_leaf < 1) return f;
  detail::cpuid(1, 0, r);
  const bool osxsave = (r[2] >> 27) & 1;
  f.sse42 = (r[2] >> 20) & 1;
  const bool avx_cpu = (r[2] >> 28) & 1;
  const bool fma_cpu = (r[2] >> 12) & 1;
  const bool f16c_cpu = (r[2] >> 29) & 1;
  uint64_t xcr0 = osxsave ? detail::xgetbv0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;            // XMM and YMM state
  const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM hi256, hi16 ZMM
  f.avx = avx_cpu && os_avx;
  f.fma = fma_cpu && f.avx;
  f.f16c = f16c_cpu && f.avx;
  if (max_leaf >= 7) {
    detail::cpuid(7, 0, r);
    f.avx2 = f.avx && ((r[1] >> 5) & 1);
    f.avx512f = os_avx512 && ((r[1] >> 16) & 1);
    f.avx512dq = f.avx512f && ((r[1] >> 17) & 1);
    f.avx512bw = f.avx512f && ((r[1] >> 30) & 1);
    f.avx512vl = f.avx512f && ((r[1] >> 31) & 1);
    f.avx512vnni = f.avx512f && ((r[2] >> 11) & 1);
    const uint32_t max_sub = r[0];
    if (max_sub >= 1) {
      detail::cpuid(7, 1, r);
      f.avx_vnni = f.avx2 && ((r[0] >> 4) & 1);
      f.avx512bf16 = f.avx512f && ((r[0] >> 5) & 1);
    }
  }
#elif defined(TINYSLM_ARCH_ARM64)
  f.neon = true;  // mandatory on AArch64
#if defined(__linux__)
  const unsigned long hw = getauxval(AT_HWCAP);
  const unsigned long hw2 = getauxval(AT_HWCAP2);
  f.fp16 = (hw >> 9) & 1;      // HWCAP_FPHP
  f.dotprod = (hw >> 20) & 1;  // HWCAP_ASIMDDP
  f.i8mm = (hw2 >> 13) & 1;    // HWCAP2_I8MM
#elif defined(__APPLE__)
  auto flag = [](const char* name) {
    int v = 0;
    size_t len = sizeof(v);
    return sysctlbyname(name, &v, &len, nullptr, 0) == 0 && v != 0;
  };
  f.fp16 = flag("hw.optional.arm.FEAT_FP16");
  f.dotprod = flag("hw.optional.arm.FEAT_DotProd");
  f.i8mm = flag("hw.optional.arm.FEAT_I8MM");
#elif defined(__ARM_FEATURE_DOTPROD)
  f.dotprod = true;
#endif
#endif
  return f;
}

// ---------------------------------------------------------------------------------------
// The SIMD path: one resolver for every kernel (matmul, activation quantization, ops).
//
// avxvnni: the AVX2 kernels with vpdpbusd on 256-bit vectors. It runs on CPUs with AVX-VNNI
// (VEX encoding) and, through the EVEX encoding of the same instruction, on CPUs with AVX-512
// VL + VNNI, where it is never the default (avx512 is faster) but can be forced, which is how
// it is tested on an AVX-512 machine.

#if defined(TINYSLM_ARCH_X86) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TINYSLM_SIMD_X86 1  // the AVX2 / AVX-512 kernels are compiled in
#endif
#if defined(TINYSLM_ARCH_ARM64) && defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define TINYSLM_SIMD_NEON 1
#endif

enum class SimdLevel : int { scalar = 0, avx2 = 1, avx512 = 2, neon = 3, highway = 4, avxvnni = 5 };
inline constexpr int kSimdLevelCount = 6;

inline const char* simd_level_name(SimdLevel l) {
  switch (l) {
    case SimdLevel::scalar: return "scalar";
    case SimdLevel::avx2: return "avx2";
    case SimdLevel::avx512: return "avx512";
    case SimdLevel::neon: return "neon";
    case SimdLevel::highway: return "highway";
    case SimdLevel::avxvnni: return "avxvnni";
  }
  return "unknown";
}

// Whether this build and this CPU can run a path.
inline bool simd_level_supported(SimdLevel l) {
  static const CpuFeatures f = detect_cpu_features();
  switch (l) {
    case SimdLevel::scalar: return true;
#if defined(TINYSLM_SIMD_X86)
    case SimdLevel::avx2: return f.has_avx2_fma();
    case SimdLevel::avx512: return f.has_avx512_vnni();
    case SimdLevel::avxvnni: return f.has_avx2_fma() && (f.avx_vnni || f.has_avx512_vnni());
#endif
#if defined(TINYSLM_SIMD_NEON)
    case SimdLevel::neon: return f.neon && f.dotprod;
#endif
#if defined(TINYSLM_USE_HIGHWAY)
    case SimdLevel::highway: return true;
#endif
    default: return false;
  }
}

// The best native path (Highway is used only when asked for).
inline SimdLevel best_simd_level() {
  for (SimdLevel l : {SimdLevel::avx512, SimdLevel::avxvnni, SimdLevel::avx2, SimdLevel::neon})
    if (simd_level_supported(l)) return l;
  return SimdLevel::scalar;
}

namespace detail {
inline std::atomic<int>& simd_override() {
  static std::atomic<int> v{-1};
  return v;
}
inline SimdLevel env_simd_level() {
  static const SimdLevel level = [] {
    const char* e = std::getenv("TINYSLM_SIMD");
    if (!e) return best_simd_level();
    const std::string_view s(e);
    for (int i = 0; i < kSimdLevelCount; ++i) {
      const auto l = static_cast<SimdLevel>(i);
      if (s == simd_level_name(l)) return simd_level_supported(l) ? l : best_simd_level();
    }
    return best_simd_level();
  }();
  return level;
}
}  // namespace detail

// The path every kernel uses: set_simd_level's choice, else TINYSLM_SIMD (read once), else
// the best. SimdLevel::scalar runs no SIMD code at all.
inline SimdLevel active_simd_level() {
  const int o = detail::simd_override().load(std::memory_order_relaxed);
  return o >= 0 ? static_cast<SimdLevel>(o) : detail::env_simd_level();
}

// The x86 vector width the element-wise ops may use on the active path: 0 none, 1 AVX2,
// 2 AVX-512 (the avx2 and avxvnni paths keep to 256-bit vectors).
inline int active_x86_width() {
  switch (active_simd_level()) {
    case SimdLevel::avx512: return 2;
    case SimdLevel::avx2:
    case SimdLevel::avxvnni: return 1;
    default: return 0;
  }
}

// Forces a path for the whole process (for tests and benchmarks); fails when this build or
// CPU cannot run it. reset_simd_level() returns to the default.
inline Status set_simd_level(SimdLevel l) {
  if (!simd_level_supported(l))
    return make_error(Errc::unsupported, std::string("SIMD path ") + simd_level_name(l) +
                                             " is not available on this CPU or build");
  detail::simd_override().store(static_cast<int>(l), std::memory_order_relaxed);
  return {};
}
inline void reset_simd_level() { detail::simd_override().store(-1, std::memory_order_relaxed); }

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/core.hpp ----

// ---- begin tinyslm/gguf.hpp ----
// tinyslm gguf: the GGUF container (versions 2 and 3, little-endian).
//
// Layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata
// key/value pairs, the tensor infos, padding to `general.alignment` (default 32), then the
// tensor data. The reader validates every count, length, offset and size against the file
// before it allocates or reads, so a hostile file gets an Error, never a crash. It copies
// nothing: keys, strings and tensor data are views into the Source, which it owns.

#include <algorithm>
#include <array>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>


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
// ---- end tinyslm/gguf.hpp ----

// ---- begin tinyslm/quant.hpp ----
// tinyslm quant: GGUF block formats and their reference (scalar) conversions.
//
// Every block type is one POD struct with ggml's byte layout; its size is checked against
// gguf.hpp's tensor_type_table, the single source of truth for block sizes. block_type_table
// (end of this file) is the one per-type table of everything else. Scales in fp16
// are kept as raw uint16_t bits (convert with fp16_to_fp32 / fp32_to_fp16 from core.hpp).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>


namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

// Values per block: the legacy formats and IQ4_NL use 32, the K formats a super-block of 256
// made of 16 or 8 sub-blocks.
inline constexpr int kBlock32 = 32;
inline constexpr int kBlockK = 256;
// Bytes of packed 6-bit sub-block scales (and mins) in Q3_K, Q4_K and Q5_K.
inline constexpr int kScaleBytesK = 12;

// ---------------------------------------------------------------------------------------
// Block structs (ggml layout). x = d * q (+ m) for the legacy types; see each comment.

// 4.5 bits/weight: x = d * (q - 8), q in [0, 15]; low nibbles hold values 0..15, high 16..31.
struct BlockQ4_0 {
  static constexpr TensorType type = TensorType::Q4_0;
  static constexpr int block_size = kBlock32;
  uint16_t d;
  uint8_t qs[kBlock32 / 2];
};

// 5.0 bits/weight: x = d * q + m, q in [0, 15].
struct BlockQ4_1 {
  static constexpr TensorType type = TensorType::Q4_1;
  static constexpr int block_size = kBlock32;
  uint16_t d;
  uint16_t m;
  uint8_t qs[kBlock32 / 2];
};

// 5.5 bits/weight: x = d * (q - 16), q in [0, 31]; the fifth bit of value j is bit j of qh.
struct BlockQ5_0 {
  static constexpr TensorType type = TensorType::Q5_0;
  static constexpr int block_size = kBlock32;
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kBlock32 / 2];
};

// 6.0 bits/weight: x = d * q + m, q in [0, 31].
struct BlockQ5_1 {
  static constexpr TensorType type = TensorType::Q5_1;
  static constexpr int block_size = kBlock32;
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kBlock32 / 2];
};

// 8.5 bits/weight: x = d * q, q in [-127, 127].
struct BlockQ8_0 {
  static constexpr TensorType type = TensorType::Q8_0;
  static constexpr int block_size = kBlock32;
  uint16_t d;
  int8_t qs[kBlock32];
};

// 9.0 bits/weight (activations): as Q8_0 plus s = d * sum(qs), used by the Q4_1/Q5_1 dots.
struct BlockQ8_1 {
  static constexpr TensorType type = TensorType::Q8_1;
  static constexpr int block_size = kBlock32;
  uint16_t d;
  uint16_t s;
  int8_t qs[kBlock32];
};

// 2.625 bits/weight: 16 sub-blocks of 16; scales[i] = scale (low 4 bits) | min (high 4 bits);
// x = d * scale * q - dmin * min, q in [0, 3], four values per byte.
struct BlockQ2_K {
  static constexpr TensorType type = TensorType::Q2_K;
  static constexpr int block_size = kBlockK;
  uint8_t scales[kBlockK / 16];
  uint8_t qs[kBlockK / 4];
  uint16_t d;
  uint16_t dmin;
};

// 3.4375 bits/weight: 16 sub-blocks of 16 with 6-bit signed scales (offset 32) packed in
// 12 bytes; low 2 bits of q in qs, the third bit in hmask (set = no -4 offset);
// x = d * (scale - 32) * (q - 4), q in [0, 7].
struct BlockQ3_K {
  static constexpr TensorType type = TensorType::Q3_K;
  static constexpr int block_size = kBlockK;
  uint8_t hmask[kBlockK / 8];
  uint8_t qs[kBlockK / 4];
  uint8_t scales[kScaleBytesK];
  uint16_t d;
};

// 4.5 bits/weight: 8 sub-blocks of 32 with 6-bit scale and min packed in 12 bytes;
// x = d * scale * q - dmin * min, q in [0, 15].
struct BlockQ4_K {
  static constexpr TensorType type = TensorType::Q4_K;
  static constexpr int block_size = kBlockK;
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kScaleBytesK];
  uint8_t qs[kBlockK / 2];
};

// 5.5 bits/weight: as Q4_K with a fifth bit per value in qh; q in [0, 31].
struct BlockQ5_K {
  static constexpr TensorType type = TensorType::Q5_K;
  static constexpr int block_size = kBlockK;
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kScaleBytesK];
  uint8_t qh[kBlockK / 8];
  uint8_t qs[kBlockK / 2];
};

// 6.5625 bits/weight: 16 sub-blocks of 16 with int8 scales; low 4 bits of q in ql, high 2
// bits in qh; x = d * scale * (q - 32), q in [0, 63].
struct BlockQ6_K {
  static constexpr TensorType type = TensorType::Q6_K;
  static constexpr int block_size = kBlockK;
  uint8_t ql[kBlockK / 2];
  uint8_t qh[kBlockK / 4];
  int8_t scales[kBlockK / 16];
  uint16_t d;
};

// 9.125 bits/weight (activations for the K dots): float scale, x = d * q, and the sums of
// each group of 16 quants (bsums) so the kernels can apply the K types' mins cheaply.
struct BlockQ8_K {
  static constexpr TensorType type = TensorType::Q8_K;
  static constexpr int block_size = kBlockK;
  float d;
  int8_t qs[kBlockK];
  int16_t bsums[kBlockK / 16];
};

// 4.5 bits/weight: x = d * kIq4nlValues[q], q in [0, 15], nibbles ordered as in Q4_0.
struct BlockIQ4_NL {
  static constexpr TensorType type = TensorType::IQ4_NL;
  static constexpr int block_size = kBlock32;
  uint16_t d;
  uint8_t qs[kBlock32 / 2];
};

// The 16 non-uniform levels of IQ4_NL (denser near zero, where weights cluster).
inline constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

// 4.25 bits/weight: 8 sub-blocks of 32 on IQ4_NL's levels, each with a 6-bit scale stored
// offset by 32 (low 4 bits in scales_l, two per byte; top 2 bits in scales_h, two per
// sub-block); x = d * (scale - 32) * kIq4nlValues[q]; each sub-block's 16 bytes of qs hold
// its nibbles as an IQ4_NL block does.
struct BlockIQ4_XS {
  static constexpr TensorType type = TensorType::IQ4_XS;
  static constexpr int block_size = kBlockK;
  uint16_t d;
  uint16_t scales_h;
  uint8_t scales_l[kBlockK / 64];
  uint8_t qs[kBlockK / 2];
};

// 3.4375 bits/weight: the 256 values in groups of 4, each group a point of a 512-entry grid
// of magnitudes (kIq3sGrid: 4 odd values 1..15) chosen by 9 bits (low 8 in qs, the ninth in
// qh, one bit per group), with one sign bit per value (signs, set = negative) and a 4-bit
// scale s per 32 values (two per byte of scales); x = d * (1 + 2 s) * grid * sign.
struct BlockIQ3_S {
  static constexpr TensorType type = TensorType::IQ3_S;
  static constexpr int block_size = kBlockK;
  uint16_t d;
  uint8_t qs[kBlockK / 4];
  uint8_t qh[kBlockK / 32];
  uint8_t signs[kBlockK / 8];
  uint8_t scales[kBlockK / 64];
};

// IQ3_S's grid: entry i packs the magnitudes of a group of 4 values, byte j = value j.
// Only 512 of the 8^4 combinations of odd magnitudes, the ones that occur most in real weights.
inline constexpr uint32_t kIq3sGrid[512] = {
    0x01010101, 0x01010103, 0x01010105, 0x0101010b, 0x0101010f, 0x01010301, 0x01010303, 0x01010305,
    0x01010309, 0x0101030d, 0x01010501, 0x01010503, 0x0101050b, 0x01010707, 0x01010901, 0x01010905,
    0x0101090b, 0x0101090f, 0x01010b03, 0x01010b07, 0x01010d01, 0x01010d05, 0x01010f03, 0x01010f09,
    0x01010f0f, 0x01030101, 0x01030103, 0x01030105, 0x01030109, 0x01030301, 0x01030303, 0x0103030b,
    0x01030501, 0x01030507, 0x0103050f, 0x01030703, 0x0103070b, 0x01030909, 0x01030d03, 0x01030d0b,
    0x01030f05, 0x01050101, 0x01050103, 0x0105010b, 0x0105010f, 0x01050301, 0x01050307, 0x0105030d,
    0x01050503, 0x0105050b, 0x01050701, 0x01050709, 0x01050905, 0x0105090b, 0x0105090f, 0x01050b03,
    0x01050b07, 0x01050f01, 0x01050f07, 0x01070107, 0x01070303, 0x0107030b, 0x01070501, 0x01070505,
    0x01070703, 0x01070707, 0x0107070d, 0x01070909, 0x01070b01, 0x01070b05, 0x01070d0f, 0x01070f03,
    0x01070f0b, 0x01090101, 0x01090307, 0x0109030f, 0x01090503, 0x01090509, 0x01090705, 0x01090901,
    0x01090907, 0x01090b03, 0x01090f01, 0x010b0105, 0x010b0109, 0x010b0501, 0x010b0505, 0x010b050d,
    0x010b0707, 0x010b0903, 0x010b090b, 0x010b090f, 0x010b0d0d, 0x010b0f07, 0x010d010d, 0x010d0303,
    0x010d0307, 0x010d0703, 0x010d0b05, 0x010d0f03, 0x010f0101, 0x010f0105, 0x010f0109, 0x010f0501,
    0x010f0505, 0x010f050d, 0x010f0707, 0x010f0b01, 0x010f0b09, 0x03010101, 0x03010103, 0x03010105,
    0x03010109, 0x03010301, 0x03010303, 0x03010307, 0x0301030b, 0x0301030f, 0x03010501, 0x03010505,
    0x03010703, 0x03010709, 0x0301070d, 0x03010b09, 0x03010b0d, 0x03010d03, 0x03010f05, 0x03030101,
    0x03030103, 0x03030107, 0x0303010d, 0x03030301, 0x03030309, 0x03030503, 0x03030701, 0x03030707,
    0x03030903, 0x03030b01, 0x03030b05, 0x03030f01, 0x03030f0d, 0x03050101, 0x03050305, 0x0305030b,
    0x0305030f, 0x03050501, 0x03050509, 0x03050705, 0x03050901, 0x03050907, 0x03050b0b, 0x03050d01,
    0x03050f05, 0x03070103, 0x03070109, 0x0307010f, 0x03070301, 0x03070307, 0x03070503, 0x0307050f,
    0x03070701, 0x03070709, 0x03070903, 0x03070d05, 0x03070f01, 0x03090107, 0x0309010b, 0x03090305,
    0x03090309, 0x03090703, 0x03090707, 0x03090905, 0x0309090d, 0x03090b01, 0x03090b09, 0x030b0103,
    0x030b0301, 0x030b0307, 0x030b0503, 0x030b0701, 0x030b0705, 0x030b0b03, 0x030d0501, 0x030d0509,
    0x030d050f, 0x030d0909, 0x030d090d, 0x030f0103, 0x030f0107, 0x030f0301, 0x030f0305, 0x030f0503,
    0x030f070b, 0x030f0903, 0x030f0d05, 0x030f0f01, 0x05010101, 0x05010103, 0x05010107, 0x0501010b,
    0x0501010f, 0x05010301, 0x05010305, 0x05010309, 0x0501030d, 0x05010503, 0x05010507, 0x0501050f,
    0x05010701, 0x05010705, 0x05010903, 0x05010907, 0x0501090b, 0x05010b01, 0x05010b05, 0x05010d0f,
    0x05010f01, 0x05010f07, 0x05010f0b, 0x05030101, 0x05030105, 0x05030301, 0x05030307, 0x0503030f,
    0x05030505, 0x0503050b, 0x05030703, 0x05030709, 0x05030905, 0x05030b03, 0x05050103, 0x05050109,
    0x0505010f, 0x05050503, 0x05050507, 0x05050701, 0x0505070f, 0x05050903, 0x05050b07, 0x05050b0f,
    0x05050f03, 0x05050f09, 0x05070101, 0x05070105, 0x0507010b, 0x05070303, 0x05070505, 0x05070509,
    0x05070703, 0x05070707, 0x05070905, 0x05070b01, 0x05070d0d, 0x05090103, 0x0509010f, 0x05090501,
    0x05090507, 0x05090705, 0x0509070b, 0x05090903, 0x05090f05, 0x05090f0b, 0x050b0109, 0x050b0303,
    0x050b0505, 0x050b070f, 0x050b0901, 0x050b0b07, 0x050b0f01, 0x050d0101, 0x050d0105, 0x050d010f,
    0x050d0503, 0x050d0b0b, 0x050d0d03, 0x050f010b, 0x050f0303, 0x050f050d, 0x050f0701, 0x050f0907,
    0x050f0b01, 0x07010105, 0x07010303, 0x07010307, 0x0701030b, 0x0701030f, 0x07010505, 0x07010703,
    0x07010707, 0x0701070b, 0x07010905, 0x07010909, 0x0701090f, 0x07010b03, 0x07010d07, 0x07010f03,
    0x07030103, 0x07030107, 0x0703010b, 0x07030309, 0x07030503, 0x07030507, 0x07030901, 0x07030d01,
    0x07030f05, 0x07030f0d, 0x07050101, 0x07050305, 0x07050501, 0x07050705, 0x07050709, 0x07050b01,
    0x07070103, 0x07070301, 0x07070309, 0x07070503, 0x07070507, 0x0707050f, 0x07070701, 0x07070903,
    0x07070907, 0x0707090f, 0x07070b0b, 0x07070f07, 0x07090107, 0x07090303, 0x0709030d, 0x07090505,
    0x07090703, 0x07090b05, 0x07090d01, 0x07090d09, 0x070b0103, 0x070b0301, 0x070b0305, 0x070b050b,
    0x070b0705, 0x070b0909, 0x070b0b0d, 0x070b0f07, 0x070d030d, 0x070d0903, 0x070f0103, 0x070f0107,
    0x070f0501, 0x070f0505, 0x070f070b, 0x09010101, 0x09010109, 0x09010305, 0x09010501, 0x09010509,
    0x0901050f, 0x09010705, 0x09010903, 0x09010b01, 0x09010f01, 0x09030105, 0x0903010f, 0x09030303,
    0x09030307, 0x09030505, 0x09030701, 0x0903070b, 0x09030907, 0x09030b03, 0x09030b0b, 0x09050103,
    0x09050107, 0x09050301, 0x0905030b, 0x09050503, 0x09050707, 0x09050901, 0x09050b0f, 0x09050d05,
    0x09050f01, 0x09070109, 0x09070303, 0x09070307, 0x09070501, 0x09070505, 0x09070703, 0x0907070b,
    0x09090101, 0x09090105, 0x09090509, 0x0909070f, 0x09090901, 0x09090f03, 0x090b010b, 0x090b010f,
    0x090b0503, 0x090b0d05, 0x090d0307, 0x090d0709, 0x090d0d01, 0x090f0301, 0x090f030b, 0x090f0701,
    0x090f0907, 0x090f0b03, 0x0b010105, 0x0b010301, 0x0b010309, 0x0b010505, 0x0b010901, 0x0b010909,
    0x0b01090f, 0x0b010b05, 0x0b010d0d, 0x0b010f09, 0x0b030103, 0x0b030107, 0x0b03010b, 0x0b030305,
    0x0b030503, 0x0b030705, 0x0b030f05, 0x0b050101, 0x0b050303, 0x0b050507, 0x0b050701, 0x0b05070d,
    0x0b050b07, 0x0b070105, 0x0b07010f, 0x0b070301, 0x0b07050f, 0x0b070909, 0x0b070b03, 0x0b070d0b,
    0x0b070f07, 0x0b090103, 0x0b090109, 0x0b090501, 0x0b090705, 0x0b09090d, 0x0b0b0305, 0x0b0b050d,
    0x0b0b0b03, 0x0b0b0b07, 0x0b0d0905, 0x0b0f0105, 0x0b0f0109, 0x0b0f0505, 0x0d010303, 0x0d010307,
    0x0d01030b, 0x0d010703, 0x0d010707, 0x0d010d01, 0x0d030101, 0x0d030501, 0x0d03050f, 0x0d030d09,
    0x0d050305, 0x0d050709, 0x0d050905, 0x0d050b0b, 0x0d050d05, 0x0d050f01, 0x0d070101, 0x0d070309,
    0x0d070503, 0x0d070901, 0x0d09050b, 0x0d090907, 0x0d090d05, 0x0d0b0101, 0x0d0b0107, 0x0d0b0709,
    0x0d0b0d01, 0x0d0d010b, 0x0d0d0901, 0x0d0f0303, 0x0d0f0307, 0x0f010101, 0x0f010109, 0x0f01010f,
    0x0f010501, 0x0f010505, 0x0f01070d, 0x0f010901, 0x0f010b09, 0x0f010d05, 0x0f030105, 0x0f030303,
    0x0f030509, 0x0f030907, 0x0f03090b, 0x0f050103, 0x0f050109, 0x0f050301, 0x0f05030d, 0x0f050503,
    0x0f050701, 0x0f050b03, 0x0f070105, 0x0f070705, 0x0f07070b, 0x0f070b07, 0x0f090103, 0x0f09010b,
    0x0f090307, 0x0f090501, 0x0f090b01, 0x0f0b0505, 0x0f0b0905, 0x0f0d0105, 0x0f0d0703, 0x0f0f0101,
};

namespace detail {
// The table entry of a type, found by value: a plain loop stays a constant expression in every
// build (GCC's UBSan makes the pointer test in tensor_type_info(TensorType) non-constant).
constexpr TensorTypeInfo type_info_entry(TensorType t) {
  for (const auto& e : tensor_type_table)
    if (e.type == t) return e;
  return {t, "unknown", 0, 0};
}
template <class Block>
constexpr bool block_matches_table() {
  constexpr TensorTypeInfo info = type_info_entry(Block::type);
  return std::is_trivial_v<Block> && std::is_standard_layout_v<Block> &&
         sizeof(Block) == info.block_bytes &&
         static_cast<uint32_t>(Block::block_size) == info.block_size;
}
}  // namespace detail

static_assert(detail::block_matches_table<BlockQ4_0>());
static_assert(detail::block_matches_table<BlockQ4_1>());
static_assert(detail::block_matches_table<BlockQ5_0>());
static_assert(detail::block_matches_table<BlockQ5_1>());
static_assert(detail::block_matches_table<BlockQ8_0>());
static_assert(detail::block_matches_table<BlockQ8_1>());
static_assert(detail::block_matches_table<BlockQ2_K>());
static_assert(detail::block_matches_table<BlockQ3_K>());
static_assert(detail::block_matches_table<BlockQ4_K>());
static_assert(detail::block_matches_table<BlockQ5_K>());
static_assert(detail::block_matches_table<BlockQ6_K>());
static_assert(detail::block_matches_table<BlockQ8_K>());
static_assert(detail::block_matches_table<BlockIQ4_NL>());
static_assert(detail::block_matches_table<BlockIQ4_XS>() && sizeof(BlockIQ4_XS) == 136);
static_assert(detail::block_matches_table<BlockIQ3_S>() && sizeof(BlockIQ3_S) == 110);

// ---------------------------------------------------------------------------------------
// Numeric helpers shared by the quantizers. They reproduce llama.cpp's reference arithmetic
// operation for operation (same float expressions, same evaluation order), because the
// quantized bytes must be identical to what `llama-quantize` writes.
//
// That only holds if the compiler keeps every a * b + c as two roundings: a fused multiply-add
// changes the bytes of most K-quant and IQ4_NL tensors. GCC fuses by default wherever the
// target has FMA (all of AArch64, x86 with -mfma/-march=native) and Clang does within an
// expression, so contraction is switched off for this section and restored after it. (The
// price: GCC does not inline these functions into callers built with other options; they are
// the reference path, the kernels layer has its own fast ones.) Clang ignores the pragma under
// an explicit -ffp-contract=fast, and MSVC is not covered: there the bytes may differ.
#if defined(__clang__)
#pragma float_control(push)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

namespace detail {

// Round to nearest, ties to even: adding 1.5 * 2^23 leaves no fraction bits in the sum, so
// the FPU's own rounding picks the integer, which is then read from the low mantissa bits.
// Exact for |x| < 2^22; outside that range (and for inf/nan) it returns the same meaningless
// value llama.cpp's helper does, and the callers clamp it. No undefined behaviour for any x.
inline int round_nearest(float x) {
  const float biased = x + 12582912.f;
  int32_t bits;
  std::memcpy(&bits, &biased, sizeof bits);
  return (bits & 0x007fffff) - 0x00400000;
}

// float -> int truncation (C's cast) made total: nan gives 0, out-of-range values saturate.
// Inside the int range it equals the plain cast, which is all the quantizers ever hit.
inline int trunc_to_int(float v) {
  if (!(v == v)) return 0;
  if (v >= 2147483647.f) return 2147483647;
  if (v <= -2147483648.f) return -2147483647 - 1;
  return static_cast<int>(v);
}
// C's (int8_t)v, which llama.cpp's legacy quantizers apply to values in [0, 32].
inline int trunc_to_i8(float v) { return static_cast<int8_t>(trunc_to_int(v)); }

// Index of the IQ4_NL level nearest to x (ties go to the upper level). The levels are sorted,
// so x belongs to level i once it reaches the midpoint of levels i-1 and i; comparing 2x with
// the sum of two neighbours keeps both sides exact. A four-step binary search over 16 levels.
inline int nearest_level_index(const int8_t* levels, int n_levels, float x) {
  const float twice = x + x;
  int idx = 0;
  for (int step = n_levels / 2; step > 0; step /= 2) {
    const int j = idx + step;
    if (twice >= static_cast<float>(levels[j - 1] + levels[j])) idx = j;
  }
  return idx;
}

// Scale for groups too small to matter (llama.cpp's GROUP_MAX_EPS).
inline constexpr float kGroupEps = 1e-15f;

// Symmetric quants L in [0, 2*nmax) with x ~ scale * (L - nmax), weighted by x^2: start from
// the scale that maps the value of largest magnitude to -nmax, then try 18 nearby scales
// (nmax +- 0.1 .. 0.9) and keep the one with the best weighted least-squares fit.
// (llama.cpp make_qx_quants with rmse_type 1 and no importance weights; used by Q6_K.)
inline float fit_symmetric_scale(int n, int nmax, const float* x, int8_t* L) {
  float amax = 0.f, vmax = 0.f;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      vmax = x[i];
    }
  }
  if (amax < kGroupEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = -nmax / vmax;
  float sumlx = 0.f, suml2 = 0.f;
  for (int i = 0; i < n; ++i) {
    const int l = std::max(-nmax, std::min(nmax - 1, round_nearest(iscale * x[i])));
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 != 0.f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int step = -9; step <= 9; ++step) {
    if (step == 0) continue;
    iscale = -(nmax + 0.1f * step) / vmax;
    sumlx = suml2 = 0.f;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(-nmax, std::min(nmax - 1, round_nearest(iscale * x[i])));
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    // compare sumlx^2 / suml2 (the error reduction) without dividing
    if (suml2 > 0.f && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = round_nearest(iscale * x[i]);
        L[i] = static_cast<int8_t>(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Symmetric 3-bit quants for Q3_K: first guess from the largest magnitude, then up to five
// rounds of coordinate descent that move one quant at a time when that improves the x^2-weighted
// fit. Returns the scale; L holds values in [0, 2*nmax). (llama.cpp make_q3_quants, do_rmse.)
inline float fit_q3_scale(int n, int nmax, const float* x, int8_t* L) {
  float amax = 0.f, vmax = 0.f;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      vmax = x[i];
    }
  }
  if (amax < kGroupEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  const float iscale = -nmax / vmax;
  float sumlx = 0.f, suml2 = 0.f;
  for (int i = 0; i < n; ++i) {
    const int l = std::max(-nmax, std::min(nmax - 1, round_nearest(iscale * x[i])));
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  for (int round = 0; round < 5; ++round) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * L[i];
      if (slx > 0.f) {
        float sl2 = suml2 - w * L[i] * L[i];
        int l = round_nearest(x[i] * sl2 / slx);
        l = std::max(-nmax, std::min(nmax - 1, l));
        if (l != L[i]) {
          slx += w * x[i] * l;
          sl2 += w * l * l;
          if (sl2 > 0.f && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<int8_t>(l);
            sumlx = slx;
            suml2 = sl2;
            ++changed;
          }
        }
      }
    }
    if (changed == 0) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Asymmetric quants L in [0, nmax] with x ~ scale * L - min (min >= 0 returned in *the_min):
// start from the full [min(x, 0), max(x)] range, then try nstep + 1 scales
// (nmax + rmin + rdelta * k) / range and, for each rounding, solve the weighted least-squares
// fit of scale and offset; keep the fit with the least weighted error (|e| or e^2).
// (llama.cpp make_qkx2_quants; used by Q2_K, Q4_K, Q5_K.)
inline float fit_scale_min(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                           float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep,
                           bool abs_error) {
  float vmin = x[0], vmax = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < vmin) vmin = x[i];
    if (x[i] > vmax) vmax = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (vmin > 0) vmin = 0;
  if (vmax == vmin) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -vmin;
    return 0.f;
  }
  float iscale = nmax / (vmax - vmin);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = round_nearest(iscale * (x[i] - vmin));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    float diff = scale * L[i] + vmin - x[i];
    diff = abs_error ? std::fabs(diff) : diff * diff;
    best_error += weights[i] * diff;
  }
  if (nstep < 1) {
    *the_min = -vmin;
    return scale;
  }
  for (int step = 0; step <= nstep; ++step) {
    iscale = (rmin + rdelta * step + nmax) / (vmax - vmin);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(0, std::min(nmax, round_nearest(iscale * (x[i] - vmin))));
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    // normal equations of min over (scale, offset) of sum w (scale * l + offset - x)^2
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (det > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
      if (this_min > 0) {  // the offset may only shift down; refit the scale alone
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float err = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * Laux[i] + this_min - x[i];
        diff = abs_error ? std::fabs(diff) : diff * diff;
        err += weights[i] * diff;
      }
      if (err < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = err;
        scale = this_scale;
        vmin = this_min;
      }
    }
  }
  *the_min = -vmin;
  return scale;
}

// Q4_K / Q5_K pack eight 6-bit scales and eight 6-bit mins in 12 bytes: bytes 0-3 hold scales
// 0-3 (low 6 bits), bytes 4-7 mins 0-3; scales/mins 4-7 keep their low nibbles in bytes 8-11
// and their top two bits in the spare top bits of bytes 0-7.
inline void unpack_scale_min_k4(int j, const uint8_t* q, uint8_t* scale, uint8_t* min) {
  if (j < 4) {
    *scale = q[j] & 63;
    *min = q[j + 4] & 63;
  } else {
    *scale = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *min = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}
inline void pack_scale_min_k4(int j, uint8_t ls, uint8_t lm, uint8_t* q) {
  if (j < 4) {
    q[j] = ls;
    q[j + 4] = lm;
  } else {
    q[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
    q[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
    q[j] |= static_cast<uint8_t>((lm >> 4) << 6);
  }
}

// Q3_K packs sixteen 6-bit scales in 12 bytes: low nibbles of scales 0-7 in bytes 0-7 (low
// half) and of 8-15 in bytes 0-7 (high half); the top two bits of scale j in byte 8 + j % 4 at
// bit 2 * (j / 4).
inline int q3k_scale(const uint8_t* s, int j) {
  const int low = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
  const int high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
  return (low | (high << 4)) - 32;
}

// Legacy blocks: the fifth bits of 32 values as one little-endian 32-bit word.
inline uint32_t load_qh(const uint8_t* qh) {
  return static_cast<uint32_t>(qh[0]) | static_cast<uint32_t>(qh[1]) << 8 |
         static_cast<uint32_t>(qh[2]) << 16 | static_cast<uint32_t>(qh[3]) << 24;
}
inline void store_qh(uint8_t* qh, uint32_t bits) {
  for (int k = 0; k < 4; ++k) qh[k] = static_cast<uint8_t>(bits >> (8 * k));
}

// Q2_K / Q3_K low bits: per 128 values, byte l of 32 holds values l, l+32, l+64, l+96 at
// bits 0, 2, 4, 6 (each L must already be in [0, 3]).
template <class T>
inline void pack_2bit_planes(const T* L, uint8_t* qs) {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const T* Lh = L + 128 * h;
      qs[32 * h + l] = static_cast<uint8_t>(Lh[l] | (Lh[l + 32] << 2) | (Lh[l + 64] << 4) | (Lh[l + 96] << 6));
    }
}

// Largest magnitude of a block and the signed value that has it (first one on ties).
inline float signed_absmax(const float* x, int n) {
  float amax = 0.f, vmax = 0.f;
  for (int j = 0; j < n; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      vmax = x[j];
    }
  }
  return vmax;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// Reference dequantization, one block at a time: y receives Block::block_size floats.

inline void dequantize_block(const BlockQ4_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int j = 0; j < kBlock32 / 2; ++j) {
    y[j] = ((b.qs[j] & 0x0F) - 8) * d;
    y[j + kBlock32 / 2] = ((b.qs[j] >> 4) - 8) * d;
  }
}

inline void dequantize_block(const BlockQ4_1& b, float* y) {
  const float d = fp16_to_fp32(b.d), m = fp16_to_fp32(b.m);
  for (int j = 0; j < kBlock32 / 2; ++j) {
    y[j] = (b.qs[j] & 0x0F) * d + m;
    y[j + kBlock32 / 2] = (b.qs[j] >> 4) * d + m;
  }
}

inline void dequantize_block(const BlockQ5_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  const uint32_t qh = detail::load_qh(b.qh);
  for (int j = 0; j < kBlock32 / 2; ++j) {
    const int hi0 = static_cast<int>((qh >> j) & 1) << 4;
    const int hi1 = static_cast<int>((qh >> (j + 16)) & 1) << 4;
    y[j] = (((b.qs[j] & 0x0F) | hi0) - 16) * d;
    y[j + kBlock32 / 2] = (((b.qs[j] >> 4) | hi1) - 16) * d;
  }
}

inline void dequantize_block(const BlockQ5_1& b, float* y) {
  const float d = fp16_to_fp32(b.d), m = fp16_to_fp32(b.m);
  const uint32_t qh = detail::load_qh(b.qh);
  for (int j = 0; j < kBlock32 / 2; ++j) {
    const int hi0 = static_cast<int>((qh >> j) & 1) << 4;
    const int hi1 = static_cast<int>((qh >> (j + 16)) & 1) << 4;
    y[j] = ((b.qs[j] & 0x0F) | hi0) * d + m;
    y[j + kBlock32 / 2] = ((b.qs[j] >> 4) | hi1) * d + m;
  }
}

inline void dequantize_block(const BlockQ8_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int j = 0; j < kBlock32; ++j) y[j] = b.qs[j] * d;
}

inline void dequantize_block(const BlockQ8_1& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int j = 0; j < kBlock32; ++j) y[j] = b.qs[j] * d;
}

// Q2_K: 2-bit quant of value 128 * h + 32 * s + l sits in qs[32 * h + l] at bits 2s..2s+1;
// sub-block of 16 values k uses scales[k].
inline void dequantize_block(const BlockQ2_K& b, float* y) {
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  int sub = 0;
  for (int half = 0; half < 2; ++half) {
    const uint8_t* q = b.qs + 32 * half;
    for (int shift = 0; shift < 8; shift += 2) {
      for (int part = 0; part < 2; ++part, ++sub) {
        const float dl = d * (b.scales[sub] & 0xF);
        const float ml = dmin * (b.scales[sub] >> 4);
        for (int l = 0; l < 16; ++l) *y++ = dl * ((q[16 * part + l] >> shift) & 3) - ml;
      }
    }
  }
}

// Q3_K: same bit positions as Q2_K for the low two bits; hmask[l] bit (value / 32) is the high
// bit, and a clear high bit means the quant is offset by -4.
inline void dequantize_block(const BlockQ3_K& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  int sub = 0;
  uint8_t mask = 1;
  for (int half = 0; half < 2; ++half) {
    const uint8_t* q = b.qs + 32 * half;
    for (int shift = 0; shift < 8; shift += 2, mask = static_cast<uint8_t>(mask << 1)) {
      for (int part = 0; part < 2; ++part, ++sub) {
        const float dl = d * detail::q3k_scale(b.scales, sub);
        for (int l = 0; l < 16; ++l) {
          const int idx = 16 * part + l;
          const int low = (q[idx] >> shift) & 3;
          *y++ = dl * (low - ((b.hmask[idx] & mask) ? 0 : 4));
        }
      }
    }
  }
}

// Q4_K: each 32 bytes of qs hold two sub-blocks of 32: low nibbles then high nibbles.
inline void dequantize_block(const BlockQ4_K& b, float* y) {
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  const uint8_t* q = b.qs;
  for (int sub = 0; sub < 8; sub += 2, q += 32) {
    uint8_t sc, m;
    detail::unpack_scale_min_k4(sub, b.scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    detail::unpack_scale_min_k4(sub + 1, b.scales, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
  }
}

// Q5_K: as Q4_K; sub-block k takes its fifth bit from bit k of qh[l].
inline void dequantize_block(const BlockQ5_K& b, float* y) {
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  const uint8_t* q = b.qs;
  for (int sub = 0; sub < 8; sub += 2, q += 32) {
    uint8_t sc, m;
    detail::unpack_scale_min_k4(sub, b.scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    detail::unpack_scale_min_k4(sub + 1, b.scales, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    const uint8_t bit1 = static_cast<uint8_t>(1u << sub), bit2 = static_cast<uint8_t>(2u << sub);
    for (int l = 0; l < 32; ++l) *y++ = d1 * ((q[l] & 0xF) + ((b.qh[l] & bit1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * ((q[l] >> 4) + ((b.qh[l] & bit2) ? 16 : 0)) - m2;
  }
}

// Q6_K: per 128 values, ql[0..63] hold low nibbles (values l, l+32 in ql[l], ql[l+32] low;
// l+64, l+96 in their high nibbles) and qh[0..31] the top two bits of the four values.
inline void dequantize_block(const BlockQ6_K& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  const uint8_t* ql = b.ql;
  const uint8_t* qh = b.qh;
  const int8_t* sc = b.scales;
  for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8) {
    for (int l = 0; l < 32; ++l) {
      const int s = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * sc[s] * q1;
      y[l + 32] = d * sc[s + 2] * q2;
      y[l + 64] = d * sc[s + 4] * q3;
      y[l + 96] = d * sc[s + 6] * q4;
    }
  }
}

inline void dequantize_block(const BlockQ8_K& b, float* y) {
  for (int j = 0; j < kBlockK; ++j) y[j] = b.d * b.qs[j];
}

inline void dequantize_block(const BlockIQ4_NL& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int j = 0; j < kBlock32 / 2; ++j) {
    y[j] = d * kIq4nlValues[b.qs[j] & 0xF];
    y[j + kBlock32 / 2] = d * kIq4nlValues[b.qs[j] >> 4];
  }
}

namespace detail {
// IQ4_XS: the signed 6-bit scale of sub-block ib (0..7).
inline int iq4xs_scale(const BlockIQ4_XS& b, int ib) {
  const int low = (b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
  const int high = (b.scales_h >> (2 * ib)) & 3;
  return (low | (high << 4)) - 32;
}
// IQ3_S: the odd multiplier 1 + 2 s of the 32 values of sub-block ib (0..7).
inline int iq3s_scale(const BlockIQ3_S& b, int ib) { return 1 + 2 * ((b.scales[ib / 2] >> (4 * (ib % 2))) & 0xF); }
// IQ3_S: the grid point of group g (0..63) of 4 values.
inline uint32_t iq3s_point(const BlockIQ3_S& b, int g) {
  return kIq3sGrid[b.qs[g] | (((b.qh[g / 8] >> (g % 8)) & 1) << 8)];
}
// IQ3_S: value i (0..255) is negative.
inline bool iq3s_negative(const BlockIQ3_S& b, int i) { return (b.signs[i / 8] >> (i % 8)) & 1; }
}  // namespace detail

inline void dequantize_block(const BlockIQ4_XS& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int ib = 0; ib < kBlockK / 32; ++ib, y += 32) {
    const float dl = d * static_cast<float>(detail::iq4xs_scale(b, ib));
    const uint8_t* qs = b.qs + 16 * ib;
    for (int j = 0; j < 16; ++j) {
      y[j] = dl * kIq4nlValues[qs[j] & 0xF];
      y[j + 16] = dl * kIq4nlValues[qs[j] >> 4];
    }
  }
}

inline void dequantize_block(const BlockIQ3_S& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int ib = 0; ib < kBlockK / 32; ++ib) {
    const float db = d * static_cast<float>(detail::iq3s_scale(b, ib));
    for (int g = 8 * ib; g < 8 * ib + 8; ++g) {
      const uint32_t point = detail::iq3s_point(b, g);
      for (int j = 0; j < 4; ++j) {
        const float v = db * static_cast<float>((point >> (8 * j)) & 0xFF);
        y[4 * g + j] = detail::iq3s_negative(b, 4 * g + j) ? -v : v;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Reference quantization, one block at a time: x holds Block::block_size floats. Each gives
// the bytes llama.cpp's `llama-quantize` writes without an importance matrix.

// Q4_0: the value of largest magnitude, with its sign, maps to -8, so [-8, 7] is fully used.
inline void quantize_block(const float* x, BlockQ4_0* y) {
  const float d = detail::signed_absmax(x, kBlock32) / -8;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  y->d = fp32_to_fp16(d);
  for (int j = 0; j < kBlock32 / 2; ++j) {
    // +8.5 then truncation rounds half up into [0, 16]; 16 (only +|max|) is clamped to 15
    const int q0 = std::min(15, detail::trunc_to_i8(x[j] * id + 8.5f));
    const int q1 = std::min(15, detail::trunc_to_i8(x[j + 16] * id + 8.5f));
    y->qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

// Q4_1: d = (max - min) / 15, m = min.
inline void quantize_block(const float* x, BlockQ4_1* y) {
  float vmin = 3.402823466e+38f, vmax = -3.402823466e+38f;
  for (int j = 0; j < kBlock32; ++j) {
    if (x[j] < vmin) vmin = x[j];
    if (x[j] > vmax) vmax = x[j];
  }
  const float d = (vmax - vmin) / 15;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  y->d = fp32_to_fp16(d);
  y->m = fp32_to_fp16(vmin);
  for (int j = 0; j < kBlock32 / 2; ++j) {
    const int q0 = std::min(15, detail::trunc_to_i8((x[j] - vmin) * id + 0.5f));
    const int q1 = std::min(15, detail::trunc_to_i8((x[j + 16] - vmin) * id + 0.5f));
    y->qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

// Q5_0: as Q4_0 with 32 levels (largest magnitude maps to -16).
inline void quantize_block(const float* x, BlockQ5_0* y) {
  const float d = detail::signed_absmax(x, kBlock32) / -16;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  y->d = fp32_to_fp16(d);
  uint32_t qh = 0;
  for (int j = 0; j < kBlock32 / 2; ++j) {
    const int q0 = std::min(31, detail::trunc_to_i8(x[j] * id + 16.5f));
    const int q1 = std::min(31, detail::trunc_to_i8(x[j + 16] * id + 16.5f));
    y->qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
    qh |= static_cast<uint32_t>((q0 >> 4) & 1) << j;
    qh |= static_cast<uint32_t>((q1 >> 4) & 1) << (j + 16);
  }
  detail::store_qh(y->qh, qh);
}

// Q5_1: d = (max - min) / 31, m = min.
inline void quantize_block(const float* x, BlockQ5_1* y) {
  float vmin = 3.402823466e+38f, vmax = -3.402823466e+38f;
  for (int j = 0; j < kBlock32; ++j) {
    if (x[j] < vmin) vmin = x[j];
    if (x[j] > vmax) vmax = x[j];
  }
  const float d = (vmax - vmin) / 31;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  y->d = fp32_to_fp16(d);
  y->m = fp32_to_fp16(vmin);
  uint32_t qh = 0;
  for (int j = 0; j < kBlock32 / 2; ++j) {
    const int q0 = static_cast<uint8_t>(detail::trunc_to_int((x[j] - vmin) * id + 0.5f));
    const int q1 = static_cast<uint8_t>(detail::trunc_to_int((x[j + 16] - vmin) * id + 0.5f));
    y->qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
    qh |= static_cast<uint32_t>((q0 >> 4) & 1) << j;
    qh |= static_cast<uint32_t>((q1 >> 4) & 1) << (j + 16);
  }
  detail::store_qh(y->qh, qh);
}

// Q8_0: d = absmax / 127, q = round(x / d) (half away from zero).
inline void quantize_block(const float* x, BlockQ8_0* y) {
  float amax = 0.f;
  for (int j = 0; j < kBlock32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  y->d = fp32_to_fp16(d);
  for (int j = 0; j < kBlock32; ++j)
    y->qs[j] = static_cast<int8_t>(detail::trunc_to_int(std::round(x[j] * id)));
}

// Q8_1: as Q8_0, plus s = d * sum(q) (rounded to fp16) for the kernels of Q4_1 / Q5_1.
inline void quantize_block(const float* x, BlockQ8_1* y) {
  float amax = 0.f;
  for (int j = 0; j < kBlock32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  y->d = fp32_to_fp16(d);
  int sum = 0;
  for (int j = 0; j < kBlock32; ++j) {
    y->qs[j] = static_cast<int8_t>(detail::trunc_to_int(std::round(x[j] * id)));
    sum += y->qs[j];
  }
  y->s = fp32_to_fp16(sum * d);
}

// Q2_K: per sub-block of 16, an asymmetric 2-bit fit (|x|-weighted, absolute error); the 16
// scales and 16 mins are then quantized to 4 bits against their maxima, and the values are
// re-quantized with the rounded scales.
inline void quantize_block(const float* x, BlockQ2_K* y) {
  uint8_t L[kBlockK], Laux[16];
  float weights[16], mins[16], scales[16];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 16; ++j) {
    for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
    scales[j] = detail::fit_scale_min(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux,
                                      -0.5f, 0.1f, 15, true);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float kLevels = 15.f;
  if (max_scale > 0) {
    const float iscale = kLevels / max_scale;
    for (int j = 0; j < 16; ++j)
      y->scales[j] = static_cast<uint8_t>(detail::round_nearest(iscale * scales[j]));
    y->d = fp32_to_fp16(max_scale / kLevels);
  } else {
    for (int j = 0; j < 16; ++j) y->scales[j] = 0;
    y->d = fp32_to_fp16(0.f);
  }
  if (max_min > 0) {
    const float iscale = kLevels / max_min;
    for (int j = 0; j < 16; ++j)
      y->scales[j] = static_cast<uint8_t>(y->scales[j] | (detail::round_nearest(iscale * mins[j]) << 4));
    y->dmin = fp32_to_fp16(max_min / kLevels);
  } else {
    y->dmin = fp32_to_fp16(0.f);
  }
  for (int j = 0; j < 16; ++j) {
    const float d = fp16_to_fp32(y->d) * (y->scales[j] & 0xF);
    if (d == 0.f) continue;  // keeps the first fit's quants, as llama.cpp does
    const float dm = fp16_to_fp32(y->dmin) * (y->scales[j] >> 4);
    for (int l = 0; l < 16; ++l) {
      const int q = detail::round_nearest((x[16 * j + l] + dm) / d);
      L[16 * j + l] = static_cast<uint8_t>(std::max(0, std::min(3, q)));
    }
  }
  detail::pack_2bit_planes(L, y->qs);
}

// Q3_K: per sub-block of 16 a symmetric 3-bit fit; the 16 signed scales are quantized to
// 6 bits against the one of largest magnitude, then the values are re-quantized.
inline void quantize_block(const float* x, BlockQ3_K* y) {
  int8_t L[kBlockK];
  float scales[16];
  float max_scale = 0, amax = 0;
  for (int j = 0; j < 16; ++j) {
    scales[j] = detail::fit_q3_scale(16, 4, x + 16 * j, L + 16 * j);
    const float a = std::fabs(scales[j]);
    if (a > amax) {
      amax = a;
      max_scale = scales[j];
    }
  }
  std::memset(y->scales, 0, sizeof y->scales);
  if (max_scale != 0.f) {
    const float iscale = -32.f / max_scale;
    for (int j = 0; j < 16; ++j) {
      int8_t l = static_cast<int8_t>(detail::round_nearest(iscale * scales[j]));
      l = static_cast<int8_t>(std::max(-32, std::min(31, static_cast<int>(l))) + 32);
      if (j < 8)
        y->scales[j] = static_cast<uint8_t>(l & 0xF);
      else
        y->scales[j - 8] = static_cast<uint8_t>(y->scales[j - 8] | ((l & 0xF) << 4));
      uint8_t& high = y->scales[j % 4 + 8];
      high = static_cast<uint8_t>(high | ((l >> 4) << (2 * (j / 4))));
    }
    y->d = fp32_to_fp16(1 / iscale);
  } else {
    y->d = fp32_to_fp16(0.f);
  }
  for (int j = 0; j < 16; ++j) {
    const float d = fp16_to_fp32(y->d) * static_cast<int8_t>(detail::q3k_scale(y->scales, j));
    if (d == 0.f) continue;
    for (int l = 0; l < 16; ++l) {
      const int q = detail::round_nearest(x[16 * j + l] / d);
      L[16 * j + l] = static_cast<int8_t>(std::max(-4, std::min(3, q)) + 4);
    }
  }
  // third bit of value j goes to hmask[j % 32] bit j / 32
  std::memset(y->hmask, 0, sizeof y->hmask);
  for (int j = 0; j < kBlockK; ++j) {
    if (L[j] > 3) {
      y->hmask[j % 32] = static_cast<uint8_t>(y->hmask[j % 32] | (1u << (j / 32)));
      L[j] = static_cast<int8_t>(L[j] - 4);
    }
  }
  detail::pack_2bit_planes(L, y->qs);
}

namespace detail {
// Shared by Q4_K (nmax 15) and Q5_K (nmax 31): per sub-block of 32, an asymmetric fit weighted
// by rms(x) + |x|; scales and mins to 6 bits against their maxima; re-quantize. L gets the quants.
inline void quantize_k4_scales(const float* x, int nmax, float rmin, float rdelta, int nstep,
                               uint16_t* d_out, uint16_t* dmin_out, uint8_t* packed, uint8_t* L) {
  uint8_t Laux[32];
  float weights[32], mins[8], scales[8];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float rms = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = rms + std::fabs(xs[l]);
    scales[j] = fit_scale_min(32, nmax, xs, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta, nstep, false);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  for (int j = 0; j < 8; ++j) {
    uint8_t ls = static_cast<uint8_t>(round_nearest(inv_scale * scales[j]));
    uint8_t lm = static_cast<uint8_t>(round_nearest(inv_min * mins[j]));
    ls = std::min<uint8_t>(63, ls);
    lm = std::min<uint8_t>(63, lm);
    pack_scale_min_k4(j, ls, lm, packed);
  }
  *d_out = fp32_to_fp16(max_scale / 63.f);
  *dmin_out = fp32_to_fp16(max_min / 63.f);
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    unpack_scale_min_k4(j, packed, &sc, &m);
    const float d = fp16_to_fp32(*d_out) * sc;
    if (d == 0.f) continue;
    const float dm = fp16_to_fp32(*dmin_out) * m;
    for (int l = 0; l < 32; ++l) {
      const int q = round_nearest((x[32 * j + l] + dm) / d);
      L[32 * j + l] = static_cast<uint8_t>(std::max(0, std::min(nmax, q)));
    }
  }
}
}  // namespace detail

inline void quantize_block(const float* x, BlockQ4_K* y) {
  uint8_t L[kBlockK];
  detail::quantize_k4_scales(x, 15, -1.f, 0.1f, 20, &y->d, &y->dmin, y->scales, L);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l)
      y->qs[32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | (L[64 * c + l + 32] << 4));
}

inline void quantize_block(const float* x, BlockQ5_K* y) {
  uint8_t L[kBlockK];
  detail::quantize_k4_scales(x, 31, -0.5f, 0.1f, 15, &y->d, &y->dmin, y->scales, L);
  std::memset(y->qh, 0, sizeof y->qh);
  for (int c = 0; c < 4; ++c) {
    const uint8_t bit1 = static_cast<uint8_t>(1u << (2 * c)), bit2 = static_cast<uint8_t>(2u << (2 * c));
    for (int l = 0; l < 32; ++l) {
      int q1 = L[64 * c + l], q2 = L[64 * c + l + 32];
      if (q1 > 15) {
        q1 -= 16;
        y->qh[l] |= bit1;
      }
      if (q2 > 15) {
        q2 -= 16;
        y->qh[l] |= bit2;
      }
      y->qs[32 * c + l] = static_cast<uint8_t>(q1 | (q2 << 4));
    }
  }
}

// Q6_K: per sub-block of 16 a symmetric 6-bit fit; the 16 signed scales go to int8 against the
// one of largest magnitude (which maps to -128); re-quantize.
inline void quantize_block(const float* x, BlockQ6_K* y) {
  int8_t L[kBlockK];
  float scales[16];
  float max_scale = 0, max_abs_scale = 0;
  for (int j = 0; j < 16; ++j) {
    scales[j] = detail::fit_symmetric_scale(16, 32, x + 16 * j, L + 16 * j);
    const float a = std::fabs(scales[j]);
    if (a > max_abs_scale) {
      max_abs_scale = a;
      max_scale = scales[j];
    }
  }
  if (max_abs_scale < detail::kGroupEps) {
    std::memset(y, 0, sizeof *y);
    return;
  }
  const float iscale = -128.f / max_scale;
  y->d = fp32_to_fp16(1 / iscale);
  for (int j = 0; j < 16; ++j)
    y->scales[j] = static_cast<int8_t>(std::min(127, detail::round_nearest(iscale * scales[j])));
  for (int j = 0; j < 16; ++j) {
    const float d = fp16_to_fp32(y->d) * y->scales[j];
    if (d == 0.f) continue;
    for (int l = 0; l < 16; ++l) {
      const int q = detail::round_nearest(x[16 * j + l] / d);
      L[16 * j + l] = static_cast<int8_t>(std::max(-32, std::min(31, q)) + 32);
    }
  }
  for (int h = 0; h < 2; ++h) {
    const int8_t* Lh = L + 128 * h;
    uint8_t* ql = y->ql + 64 * h;
    uint8_t* qh = y->qh + 32 * h;
    for (int l = 0; l < 32; ++l) {
      const int q1 = Lh[l], q2 = Lh[l + 32], q3 = Lh[l + 64], q4 = Lh[l + 96];
      ql[l] = static_cast<uint8_t>((q1 & 0xF) | ((q3 & 0xF) << 4));
      ql[l + 32] = static_cast<uint8_t>((q2 & 0xF) | ((q4 & 0xF) << 4));
      qh[l] = static_cast<uint8_t>((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
    }
  }
}

// Q8_K: float d with the largest magnitude mapped to -127, plus per-16 sums of the quants.
inline void quantize_block(const float* x, BlockQ8_K* y) {
  const float vmax = detail::signed_absmax(x, kBlockK);
  if (vmax == 0.f) {
    std::memset(y, 0, sizeof *y);
    return;
  }
  const float iscale = -127.f / vmax;
  for (int j = 0; j < kBlockK; ++j)
    y->qs[j] = static_cast<int8_t>(std::min(127, detail::round_nearest(iscale * x[j])));
  for (int g = 0; g < kBlockK / 16; ++g) {
    int sum = 0;
    for (int l = 0; l < 16; ++l) sum += y->qs[16 * g + l];
    y->bsums[g] = static_cast<int16_t>(sum);
  }
  y->d = 1 / iscale;
}

namespace detail {
// IQ4_NL's scale search over one block of 32 (also each sub-block of IQ4_XS): start from the
// scale mapping the value of largest magnitude to the extreme level, then try 15 more
// (+-7 steps) and keep the best x^2-weighted least-squares fit to the 16 levels. 0 for a
// block too small to matter. (llama.cpp's search path, ntry = 7, which llama-quantize takes.)
inline float fit_iq4_scale(const float* x) {
  constexpr int n = kBlock32;
  const int8_t* levels = kIq4nlValues;
  float weight[n];
  for (int j = 0; j < n; ++j) weight[j] = x[j] * x[j];
  float amax = 0, vmax = 0;
  for (int j = 0; j < n; ++j) {
    const float ax = std::fabs(x[j]);
    if (ax > amax) {
      amax = ax;
      vmax = x[j];
    }
  }
  if (amax < kGroupEps) return 0.f;
  float d = -vmax / levels[0];
  float id = 1 / d;
  float sumqx = 0, sumq2 = 0;
  for (int j = 0; j < n; ++j) {
    const float q = levels[nearest_level_index(levels, 16, id * x[j])];
    sumqx += weight[j] * q * x[j];
    sumq2 += weight[j] * q * q;
  }
  d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
  float best = d * sumqx;
  for (int step = -7; step <= 7; ++step) {
    id = (step + levels[0]) / vmax;
    sumqx = sumq2 = 0;
    for (int j = 0; j < n; ++j) {
      const float q = levels[nearest_level_index(levels, 16, id * x[j])];
      sumqx += weight[j] * q * x[j];
      sumq2 += weight[j] * q * q;
    }
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      d = sumqx / sumq2;
      best = d * sumqx;
    }
  }
  return d;
}

// The 32 values at x snapped to their nearest level under inverse scale id, packed as
// IQ4_NL nibbles (value j low, value j + 16 high).
inline void pack_iq4_levels(const float* x, float id, uint8_t* qs) {
  uint8_t L[kBlock32];
  for (int j = 0; j < kBlock32; ++j) L[j] = static_cast<uint8_t>(nearest_level_index(kIq4nlValues, 16, id * x[j]));
  for (int j = 0; j < kBlock32 / 2; ++j) qs[j] = static_cast<uint8_t>(L[j] | (L[j + kBlock32 / 2] << 4));
}
}  // namespace detail

// IQ4_NL: the block scale from fit_iq4_scale, then every value snapped to its nearest level.
inline void quantize_block(const float* x, BlockIQ4_NL* y) {
  const float scale = detail::fit_iq4_scale(x);
  y->d = fp32_to_fp16(scale);
  // quants from the unrounded scale, as llama.cpp does
  detail::pack_iq4_levels(x, scale != 0.f ? 1 / scale : 0.f, y->qs);
}

// IQ4_XS: each sub-block's IQ4_NL scale, then the super-block scale d maps the one of largest
// magnitude to -32; sub-block scales become round(scale / d) in [-32, 31] and the values are
// snapped again under the rounded scale d * l (d unrounded, as llama.cpp does).
inline void quantize_block(const float* x, BlockIQ4_XS* y) {
  float scales[kBlockK / 32];
  float max_scale = 0, amax_scale = 0;
  for (int ib = 0; ib < kBlockK / 32; ++ib) {
    scales[ib] = detail::fit_iq4_scale(x + 32 * ib);
    if (std::fabs(scales[ib]) > amax_scale) {
      amax_scale = std::fabs(scales[ib]);
      max_scale = scales[ib];
    }
  }
  const float d = -max_scale / 32;
  y->d = fp32_to_fp16(d);
  const float id = d != 0.f ? 1 / d : 0.f;
  y->scales_h = 0;
  for (int ib = 0; ib < kBlockK / 32; ++ib) {
    const int l = std::max(-32, std::min(31, detail::round_nearest(id * scales[ib])));
    const float dl = d * static_cast<float>(l);
    detail::pack_iq4_levels(x + 32 * ib, dl != 0.f ? 1 / dl : 0.f, y->qs + 16 * ib);
    const int biased = l + 32;
    if (ib % 2 == 0)
      y->scales_l[ib / 2] = static_cast<uint8_t>(biased & 0xF);
    else
      y->scales_l[ib / 2] = static_cast<uint8_t>(y->scales_l[ib / 2] | ((biased & 0xF) << 4));
    y->scales_h = static_cast<uint16_t>(y->scales_h | ((biased >> 4) << (2 * ib)));
  }
}

// IQ3_S has no quantizer here: llama.cpp's is a search over the grid's neighbourhoods (built
// at start-up from the grid), not yet written for tinyslm; quantize_row refuses the type.

// ---------------------------------------------------------------------------------------
// Typed rows: nblocks consecutive blocks.

template <class Block>
inline void dequantize_blocks(const Block* x, float* y, int64_t nblocks) {
  for (int64_t i = 0; i < nblocks; ++i) dequantize_block(x[i], y + i * Block::block_size);
}
template <class Block>
inline void quantize_blocks(const float* x, Block* y, int64_t nblocks) {
  for (int64_t i = 0; i < nblocks; ++i) quantize_block(x + i * Block::block_size, y + i);
}

// ---------------------------------------------------------------------------------------
// The block-type table: one row per GGUF type id, the single place that says, per type, its
// storage (name, values and bytes per block, from gguf.hpp's tensor_type_table, which the
// reader needs for every type), the activation format its dot product takes, the shape of
// its canonical decode (scale group, min), and its reference conversions. The kernels layer
// (kernels.hpp, block_kernels) adds each type's reference dot and fast kernels per SIMD path.

namespace detail {
// Activation formats. Each weight type is paired with the activation format llama.cpp pairs
// it with, so our sums round like its sums: legacy 32-blocks with Q8_0 (Q8_1 when the
// weights carry a min), K types with Q8_K, F16/BF16 with activations rounded to F16/BF16.
enum class ActFormat { q8_0, q8_1, q8_k, f16, bf16, f32 };

constexpr bool act_format_is_float(ActFormat f) {
  return f == ActFormat::f16 || f == ActFormat::bf16 || f == ActFormat::f32;
}
}  // namespace detail

// n values (a whole number of blocks, not checked here; quantize_row / dequantize_row check).
using DequantizeRowFn = void (*)(const void* src, float* dst, int64_t n);
using QuantizeRowFn = void (*)(const float* src, void* dst, int64_t n);

struct QuantTraits {
  TensorType type = TensorType::F32;
  const char* name = "unknown";
  int block_size = 0;          // values per block
  int block_bytes = 0;         // bytes per block
  float bits_per_weight = 0;   // 8 * block_bytes / block_size
  DequantizeRowFn dequantize = nullptr;  // nullptr: tinyslm cannot convert this type
  QuantizeRowFn quantize = nullptr;      // llama.cpp's reference quantizer without importance matrix
                                         // (nullptr: dequantize only, quantize_row refuses the type)
  detail::ActFormat act = detail::ActFormat::f32;  // activations its matmul dot takes
  bool integer_dot = false;    // weights decode to small integers (canonical form, kernels layer)
  int group = 32;              // values per scale group of that decode
  bool has_min = false;        // the decode carries a min per group
};
using BlockType = QuantTraits;

namespace detail {

template <class Block>
inline void dequantize_row_erased(const void* src, float* dst, int64_t n) {
  dequantize_blocks(static_cast<const Block*>(src), dst, n / Block::block_size);
}
template <class Block>
inline void quantize_row_erased(const float* src, void* dst, int64_t n) {
  quantize_blocks(src, static_cast<Block*>(dst), n / Block::block_size);
}

// Unquantized rows go through memcpy so rows need no alignment.
inline void dequantize_row_f32(const void* src, float* dst, int64_t n) {
  if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}
inline void quantize_row_f32(const float* src, void* dst, int64_t n) {
  if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}
inline void dequantize_row_f16(const void* src, float* dst, int64_t n) {
  const auto* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, p + 2 * i, 2);
    dst[i] = fp16_to_fp32(h);
  }
}
inline void quantize_row_f16(const float* src, void* dst, int64_t n) {
  auto* p = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = fp32_to_fp16(src[i]);
    std::memcpy(p + 2 * i, &h, 2);
  }
}
inline void dequantize_row_bf16(const void* src, float* dst, int64_t n) {
  const auto* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, p + 2 * i, 2);
    dst[i] = bf16_to_fp32(h);
  }
}
inline void quantize_row_bf16(const float* src, void* dst, int64_t n) {
  auto* p = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = fp32_to_bf16(src[i]);
    std::memcpy(p + 2 * i, &h, 2);
  }
}

// Weights as a matrix: act is the activation format, group / has_min the canonical decode.
struct MatmulShape {
  ActFormat act;
  bool integer_dot;
  int group;
  bool has_min;
};
inline constexpr MatmulShape kFloatWeights{ActFormat::f32, false, 32, false};

constexpr QuantTraits make_traits(TensorType t, DequantizeRowFn dq, QuantizeRowFn q, MatmulShape m) {
  const TensorTypeInfo info = type_info_entry(t);
  return {t,
          info.name,
          static_cast<int>(info.block_size),
          static_cast<int>(info.block_bytes),
          8.f * static_cast<float>(info.block_bytes) / static_cast<float>(info.block_size),
          dq,
          q,
          m.act,
          m.integer_dot,
          m.group,
          m.has_min};
}
template <class Block>
constexpr QuantTraits make_block_traits(MatmulShape m) {
  return make_traits(Block::type, &dequantize_row_erased<Block>, &quantize_row_erased<Block>, m);
}

// Q8_1 / Q8_K are activation formats only: matmul does not take them as weights.
inline constexpr MatmulShape kNoMatmul{ActFormat::q8_0, false, 32, false};

inline constexpr QuantTraits block_type_list[] = {
    make_traits(TensorType::F32, &dequantize_row_f32, &quantize_row_f32, kFloatWeights),
    make_traits(TensorType::F16, &dequantize_row_f16, &quantize_row_f16, {ActFormat::f16, false, 32, false}),
    make_traits(TensorType::BF16, &dequantize_row_bf16, &quantize_row_bf16, {ActFormat::bf16, false, 32, false}),
    make_block_traits<BlockQ4_0>({ActFormat::q8_0, true, 32, false}),
    make_block_traits<BlockQ4_1>({ActFormat::q8_1, true, 32, true}),
    make_block_traits<BlockQ5_0>({ActFormat::q8_0, true, 32, false}),
    make_block_traits<BlockQ5_1>({ActFormat::q8_1, true, 32, true}),
    make_block_traits<BlockQ8_0>({ActFormat::q8_0, true, 32, false}),
    make_block_traits<BlockQ8_1>(kNoMatmul),
    make_block_traits<BlockQ2_K>({ActFormat::q8_k, true, 16, true}),
    make_block_traits<BlockQ3_K>({ActFormat::q8_k, true, 16, false}),
    make_block_traits<BlockQ4_K>({ActFormat::q8_k, true, 32, true}),
    make_block_traits<BlockQ5_K>({ActFormat::q8_k, true, 32, true}),
    make_block_traits<BlockQ6_K>({ActFormat::q8_k, true, 16, false}),
    make_block_traits<BlockQ8_K>(kNoMatmul),
    make_block_traits<BlockIQ4_NL>({ActFormat::q8_0, true, 32, false}),
    make_block_traits<BlockIQ4_XS>({ActFormat::q8_k, true, 32, false}),
    make_traits(TensorType::IQ3_S, &dequantize_row_erased<BlockIQ3_S>, nullptr, {ActFormat::q8_k, true, 32, false}),
};

// GGUF type ids run from 0 to 39 (MXFP4); the table has a row for each, empty when unsupported.
inline constexpr uint32_t kTensorTypeIdLimit = 40;
constexpr auto make_block_type_table() {
  std::array<QuantTraits, kTensorTypeIdLimit> t{};
  for (const QuantTraits& q : block_type_list) t[static_cast<uint32_t>(q.type)] = q;
  return t;
}
inline constexpr auto block_type_table = make_block_type_table();
inline constexpr QuantTraits kUnknownBlockType{};

// The row of a type (an empty row, dequantize == nullptr, for types tinyslm cannot convert).
constexpr const QuantTraits& block_type(TensorType t) {
  const auto id = static_cast<uint32_t>(t);
  return id < kTensorTypeIdLimit ? block_type_table[id] : kUnknownBlockType;
}

// Thin aliases of the table's columns (older names).
constexpr ActFormat act_format_for(TensorType t) {
  return block_type(t).dequantize ? block_type(t).act : ActFormat::q8_0;
}
constexpr bool is_integer_weight_type(TensorType t) { return block_type(t).integer_dot; }

}  // namespace detail

// Traits of a type, or nullptr when tinyslm cannot convert it (IQ2_XXS, TQ1_0, ...).
inline const QuantTraits* quant_traits(TensorType t) {
  const QuantTraits& q = detail::block_type(t);
  return q.dequantize ? &q : nullptr;
}
inline bool is_supported(TensorType t) { return quant_traits(t) != nullptr; }

namespace detail {
inline Expected<const QuantTraits*> traits_for_row(TensorType t, int64_t n) {
  const QuantTraits* q = quant_traits(t);
  if (!q)
    return make_error(Errc::unsupported,
                      std::string("tensor type ") + tensor_type_name(t) + " is not supported");
  if (n < 0 || n % q->block_size != 0)
    return make_error(Errc::invalid_argument,
                      std::string("row of ") + std::to_string(n) + " values is not a whole number of " +
                          q->name + " blocks of " + std::to_string(q->block_size));
  return q;
}
}  // namespace detail

// n values of type t at src -> n floats at dst. Quantized rows are read as block structs, so
// src must be 2-byte aligned (4 for Q8_K), as every row inside a GGUF tensor is.
inline Status dequantize_row(TensorType t, const void* src, float* dst, int64_t n) {
  auto q = detail::traits_for_row(t, n);
  if (!q) return q.error();
  (*q)->dequantize(src, dst, n);
  return {};
}

// n floats at src -> n values of type t at dst (n / block_size * block_bytes bytes), the same
// bytes llama.cpp's reference quantizer writes without importance matrix. Same alignment rule
// for dst as for dequantize_row's src.
inline Status quantize_row(TensorType t, const float* src, void* dst, int64_t n) {
  auto q = detail::traits_for_row(t, n);
  if (!q) return q.error();
  if (!(*q)->quantize)
    return make_error(Errc::unsupported, std::string("quantizing to ") + (*q)->name + " is not supported (dequantize only)");
  (*q)->quantize(src, dst, n);
  return {};
}

#if defined(__clang__)
#pragma float_control(pop)
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/quant.hpp ----

// ---- begin tinyslm/quantize_model.hpp ----
// tinyslm quantize_model: convert a whole GGUF model to another block type or to one of the
// usual mixes (Q4_K_M and friends), keeping every other tensor and all metadata.
//
// The per-tensor choice follows llama.cpp's llama-quantize without an importance matrix, so
// a file we write matches the one it writes for the same input and type: norms, routers and
// 1-D tensors stay as they are; the output matrix (or the embedding when it is tied to the
// output) gets Q6_K in the K mixes; attn_v and ffn_down of some layers get more bits; a row
// length that does not fit the block size falls back to a smaller block type. Tensors are
// written in llama-quantize's order: non-layer tensors first, then by layer, by name within.

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>
#if !defined(TINYSLM_NO_THREADS)
#include <thread>
#endif


namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

// A target: a single type ("Q8_0", "F16") or a mix ("Q4_K_M"); `pure` forces one type.
struct QuantizeOptions {
  std::string target = "Q4_K_M";
  bool pure = false;   // every quantizable tensor gets the target's base type (no mix rules)
  int threads = 1;     // worker threads for the conversion
};

// What happens to one tensor.
struct TensorPlan {
  const GgufTensorInfo* tensor = nullptr;
  TensorType to = TensorType::F32;
  bool quantizable = false;  // a weight matrix (else copied as is)
  bool fell_back = false;    // its row length did not fit the mix's choice
};

namespace detail {

// The mixes llama-quantize names, with llama.cpp's file-type id for general.file_type.
struct QuantMix {
  const char* name;
  uint32_t file_type;
  TensorType base;
};

inline constexpr QuantMix quant_mixes[] = {
    {"F32", 0, TensorType::F32},       {"F16", 1, TensorType::F16},
    {"BF16", 32, TensorType::BF16},    {"Q4_0", 2, TensorType::Q4_0},
    {"Q4_1", 3, TensorType::Q4_1},     {"Q8_0", 7, TensorType::Q8_0},
    {"Q5_0", 8, TensorType::Q5_0},     {"Q5_1", 9, TensorType::Q5_1},
    {"Q2_K", 10, TensorType::Q2_K},    {"Q3_K_S", 11, TensorType::Q3_K},
    {"Q3_K_M", 12, TensorType::Q3_K},  {"Q3_K", 12, TensorType::Q3_K},
    {"Q3_K_L", 13, TensorType::Q3_K},  {"Q4_K_S", 14, TensorType::Q4_K},
    {"Q4_K_M", 15, TensorType::Q4_K},  {"Q4_K", 15, TensorType::Q4_K},
    {"Q5_K_S", 16, TensorType::Q5_K},  {"Q5_K_M", 17, TensorType::Q5_K},
    {"Q5_K", 17, TensorType::Q5_K},    {"Q6_K", 18, TensorType::Q6_K},
    {"IQ4_NL", 25, TensorType::IQ4_NL},
};

inline const QuantMix* find_quant_mix(std::string_view name) {
  for (const auto& m : quant_mixes)
    if (iequals_ascii(m.name, name)) return &m;
  return nullptr;
}

}  // namespace detail

// The name llama.cpp gives a general.file_type value ("Q4_K_M"), or nullptr when unknown.
inline const char* file_type_name(uint32_t file_type) {
  for (const auto& m : detail::quant_mixes)
    if (m.file_type == file_type) return m.name;
  return nullptr;
}

namespace detail {

inline bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}
inline bool contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

// Layer index from "blk.N.", or -1.
inline int tensor_layer(std::string_view name) {
  if (name.substr(0, 4) != "blk.") return -1;
  int v = 0;
  size_t i = 4;
  if (i >= name.size() || name[i] < '0' || name[i] > '9') return -1;
  for (; i < name.size() && name[i] >= '0' && name[i] <= '9'; ++i) {
    v = v * 10 + (name[i] - '0');
    if (v > 1000000) return -1;
  }
  return (i < name.size() && name[i] == '.') ? v : -1;
}

// Weight matrices are quantized; norms, routers and positional tables are not.
inline bool is_quantizable(const GgufTensorInfo& t) {
  if (t.n_dims < 2) return false;
  const std::string_view n = t.name;
  if (!ends_with(n, "weight")) return false;
  if (contains(n, "_norm.weight")) return false;
  if (contains(n, "ffn_gate_inp.weight")) return false;
  if (n == "position_embd.weight" || n == "token_types.weight") return false;
  if (contains(n, "ssm_conv1d")) return false;
  return true;
}

inline bool is_block_quantized(TensorType t) { return tensor_type_info(t).block_size > 1; }

// llama-quantize's choice of extra bits for the first, last and every third layer.
inline bool more_bits_layer(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

inline TensorType fallback_type(TensorType t) {
  switch (t) {
    case TensorType::Q2_K:
    case TensorType::Q3_K: return TensorType::Q4_0;
    case TensorType::Q4_K: return TensorType::Q5_0;
    case TensorType::Q5_K: return TensorType::Q5_1;
    case TensorType::Q6_K: return TensorType::Q8_0;
    default: return TensorType::F16;
  }
}

inline uint32_t first_u32(const GgufFile& f, const std::string& key, uint32_t fallback) {
  const GgufKv* kv = f.find(key);
  if (!kv) return fallback;
  if (kv->value.type() == GgufValueType::array) {
    GgufArray a = kv->value.as_array();
    if (a.size() == 0 || !detail::gguf_is_integer(a.element_type())) return fallback;
    uint32_t out = fallback;
    a.for_each([&](const GgufValue& v) {
      uint64_t u = 0;
      if (v.as_uint64(&u)) out = static_cast<uint32_t>(u);
      return false;
    });
    return out;
  }
  uint64_t u = 0;
  return kv->value.as_uint64(&u) ? static_cast<uint32_t>(u) : fallback;
}

}  // namespace detail

namespace detail {

// llama-quantize's per-tensor choices (no importance matrix), with the counters they keep over
// the tensors in write order.
struct MixChooser {
  const QuantMix& mix;
  std::string_view m;  // the mix's name
  bool tied = false;
  uint32_t n_layer = 0, n_gqa = 1, n_expert = 0;
  int n_attn_v = 0, i_attn_v = 0, i_ffn_down = 0;

  bool k_m() const { return m == "Q4_K_M" || m == "Q4_K" || m == "Q5_K_M" || m == "Q5_K"; }
  static bool is_attn_v(std::string_view n) {
    return contains(n, "attn_v.weight") || contains(n, "attn_qkv.weight") || contains(n, "attn_kv_b.weight");
  }

  TensorType attn_v(TensorType to) {
    if (m == "Q2_K") to = n_gqa >= 4 ? TensorType::Q4_K : TensorType::Q3_K;
    else if (m == "Q3_K_M" || m == "Q3_K") to = i_attn_v < 2 ? TensorType::Q5_K : TensorType::Q4_K;
    else if (m == "Q3_K_L") to = TensorType::Q5_K;
    else if (m == "IQ4_NL" && n_gqa >= 4) to = TensorType::Q5_K;
    else if (k_m() && more_bits_layer(i_attn_v, n_attn_v)) to = TensorType::Q6_K;
    else if (m == "Q4_K_S" && i_attn_v < 4) to = TensorType::Q5_K;
    if (n_expert == 8) to = TensorType::Q8_0;
    ++i_attn_v;
    return to;
  }

  TensorType ffn_down(std::string_view n, TensorType to) {
    int layer = i_ffn_down;
    if (n_expert > 1) layer = std::max(0, tensor_layer(n));
    const int nl = static_cast<int>(n_layer);
    if (m == "Q2_K") to = TensorType::Q3_K;
    else if (m == "Q3_K_M" || m == "Q3_K") to = layer < nl / 16 ? TensorType::Q5_K : TensorType::Q4_K;  // non-falcon rule
    else if (m == "Q3_K_L") to = TensorType::Q5_K;
    else if ((m == "Q4_K_M" || m == "Q4_K") && more_bits_layer(layer, nl)) to = TensorType::Q6_K;
    else if (m == "IQ4_NL" && layer < nl / 8) to = TensorType::Q5_K;
    else if ((m == "Q5_K_M" || m == "Q5_K") && more_bits_layer(layer, nl)) to = TensorType::Q6_K;
    else if (m == "Q4_K_S" && layer < nl / 8) to = TensorType::Q5_K;
    ++i_ffn_down;
    return to;
  }

  TensorType attn_output(TensorType to) const {
    if (n_expert == 8) {
      if (m == "Q2_K" || m == "Q3_K_S" || m == "Q3_K_M" || m == "Q3_K" || m == "IQ4_NL" || m == "Q4_K_S" ||
          m == "Q4_K_M" || m == "Q4_K")
        to = TensorType::Q5_K;
    } else if (m == "Q2_K") {
      to = TensorType::Q3_K;
    } else if (m == "Q3_K_M" || m == "Q3_K") {
      to = TensorType::Q4_K;
    } else if (m == "Q3_K_L") {
      to = TensorType::Q5_K;
    }
    return to;
  }

  // The mix's type for one tensor (before the block-size fallback).
  TensorType choose(const GgufTensorInfo& t) {
    const std::string_view n = t.name;
    TensorType to = mix.base;
    const bool is_output = n == "output.weight", is_embd = n == "token_embd.weight";
    if (is_output || (tied && is_embd)) {
      if (t.ne[0] % tensor_type_info(to).block_size != 0) to = TensorType::Q8_0;
      else if (to != TensorType::Q8_0) to = TensorType::Q6_K;
    } else if (is_embd) {
      // an untied embedding keeps the base type
    } else if (is_attn_v(n)) {
      to = attn_v(to);
    } else if (contains(n, "attn_k.weight")) {
      if (n_expert == 8) to = TensorType::Q8_0;
    } else if (contains(n, "ffn_down")) {
      to = ffn_down(n, to);
    } else if (contains(n, "attn_output.weight")) {
      to = attn_output(to);
    }
    return to;
  }
};

// Rows that are not whole blocks of the chosen type fall back to a wider type, then F16.
inline TensorType fit_block(const GgufTensorInfo& t, TensorType to, bool* fell_back) {
  if (is_block_quantized(to) && t.ne[0] % tensor_type_info(to).block_size != 0) {
    to = fallback_type(to);
    if (t.ne[0] % tensor_type_info(to).block_size != 0) to = TensorType::F16;
    *fell_back = true;
  }
  return to;
}

}  // namespace detail

// The type each tensor of `in` gets, in the order they will be written.
inline Expected<std::vector<TensorPlan>> plan_quantization(const GgufFile& in, const QuantizeOptions& opt) {
  const detail::QuantMix* mix = detail::find_quant_mix(opt.target);
  if (!mix) return make_error(Errc::invalid_argument, "unknown quantization type '" + opt.target + "'");
  if (!quant_traits(mix->base))
    return make_error(Errc::unsupported, "quantization to " + std::string(mix->name) + " is not supported");

  const std::string arch = in.get_or<std::string>("general.architecture", "").value_or("");
  detail::MixChooser chooser{*mix, mix->name};
  chooser.n_layer = detail::first_u32(in, arch + ".block_count", 0);
  const uint32_t n_head = detail::first_u32(in, arch + ".attention.head_count", 1);
  const uint32_t n_head_kv = detail::first_u32(in, arch + ".attention.head_count_kv", n_head);
  chooser.n_expert = detail::first_u32(in, arch + ".expert_count", 0);
  chooser.n_gqa = n_head_kv ? n_head / n_head_kv : 1;
  chooser.tied = in.find_tensor("output.weight") == nullptr;

  std::vector<TensorPlan> plan;
  for (const auto& t : in.tensors()) plan.push_back({&t, t.type, detail::is_quantizable(t), false});
  std::stable_sort(plan.begin(), plan.end(), [](const TensorPlan& a, const TensorPlan& b) {
    const int la = detail::tensor_layer(a.tensor->name), lb = detail::tensor_layer(b.tensor->name);
    return la != lb ? la < lb : a.tensor->name < b.tensor->name;
  });
  for (const auto& p : plan) chooser.n_attn_v += detail::MixChooser::is_attn_v(p.tensor->name);

  for (auto& p : plan) {
    if (!p.quantizable) continue;
    const std::string_view n = p.tensor->name;
    TensorType to = mix->base;
    if (detail::is_block_quantized(mix->base) && !opt.pure) to = chooser.choose(*p.tensor);
    to = detail::fit_block(*p.tensor, to, &p.fell_back);
    if (!quant_traits(to))
      return make_error(Errc::unsupported, "tensor " + detail::quoted(n) + " would need type " +
                                               tensor_type_name(to) + ", which is not supported");
    if (to != p.tensor->type && !quant_traits(p.tensor->type))
      return make_error(Errc::unsupported, "tensor " + detail::quoted(n) + " has type " +
                                               tensor_type_name(p.tensor->type) +
                                               ", which cannot be converted");
    p.to = to;
  }
  return plan;
}

// Converts `in` and writes the result to `out_path`.
inline Status quantize_model(const GgufFile& in, const std::string& out_path, const QuantizeOptions& opt) {
  auto plan = plan_quantization(in, opt);
  if (!plan) return plan.error();
  const detail::QuantMix* mix = detail::find_quant_mix(opt.target);

  GgufWriter w;
  w.copy_metadata(in);
  w.set_u32("general.quantization_version", 2);
  w.set_u32("general.file_type", mix->file_type);

  const int threads = std::max(1, opt.threads);
  for (const auto& p : *plan) {
    const GgufTensorInfo& t = *p.tensor;
    std::span<const uint64_t> shape(t.ne.data(), t.n_dims);
    if (p.to == t.type) {
      auto st = w.add_tensor_generated(t.name, t.type, shape, [&t](uint8_t* out, size_t bytes) {
        std::memcpy(out, t.data, bytes);
      });
      if (!st) return st;
      continue;
    }
    const TensorType to = p.to;
    auto st = w.add_tensor_generated(t.name, to, shape, [&t, to, threads](uint8_t* out, size_t) {
      const int64_t cols = static_cast<int64_t>(t.ne[0]);
      const int64_t rows = static_cast<int64_t>(t.n_elements / t.ne[0]);
      uint64_t in_row = 0, out_row = 0;
      tensor_row_bytes(t.type, t.ne[0], &in_row);
      tensor_row_bytes(to, t.ne[0], &out_row);
      auto work = [&](int64_t r0, int64_t r1) {
        std::vector<float> row(static_cast<size_t>(cols));
        for (int64_t r = r0; r < r1; ++r) {
          (void)dequantize_row(t.type, t.data + static_cast<uint64_t>(r) * in_row, row.data(), cols);
          (void)quantize_row(to, row.data(), out + static_cast<uint64_t>(r) * out_row, cols);
        }
      };
#if !defined(TINYSLM_NO_THREADS)
      if (threads > 1 && rows >= 2 * threads) {
        std::vector<std::thread> pool;
        for (int i = 0; i < threads; ++i) {
          int64_t b, e;
          ParallelFor::split(rows, i, threads, 1, &b, &e);
          pool.emplace_back(work, b, e);
        }
        for (auto& th : pool) th.join();
        return;
      }
#endif
      work(0, rows);
    });
    if (!st) return st;
  }
  return w.write_file(out_path);
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/quantize_model.hpp ----

// ---- begin tinyslm/kernels_scalar.hpp ----
// tinyslm kernels, scalar part: activation quantization into the kernels' working layout,
// the "canonical" decode of every weight block type (small integers + float scales), and
// the scalar reference dot products. The SIMD paths (kernels_avx2.hpp, kernels_avx512.hpp,
// kernels_neon.hpp, kernels_hwy.hpp) are tested against these; they stay readable and stay forever.

#include <cmath>
#include <cstdint>
#include <cstring>


namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace detail {

// ---------------------------------------------------------------------------------------
// Activation rows (ActFormat and the weight type -> format pairing: quant.hpp's block_type_table).

// One activation row in the kernels' layout (pointers into MatmulScratch). For the integer
// formats: qs holds the quants in natural order; da16[g] the scale of values 16g..16g+15
// (the block's d, repeated); m32 / m16 the "min" terms per 32 / 16 values (Q8_1: the block's
// s = d * sum, rounded to fp16 as stored; Q8_K: d * sum of the group); sum16 the integer sum
// of each 16 quants; corr4[l] = -128 * (sum of quants 4l..4l+3), the correction the VNNI
// kernels need after turning signed weights into unsigned bytes (w + 128).
struct ActRow {
  const int8_t* qs = nullptr;
  const float* da16 = nullptr;
  const float* m32 = nullptr;
  const float* m16 = nullptr;
  const int32_t* sum16 = nullptr;
  const int32_t* corr4 = nullptr;
  const float* da32 = nullptr;  // the activation scale of each 32 values (da16[2g])
  const float* xf = nullptr;  // float formats: the (rounded) values
};

// Activations of 8 tokens interleaved for the x86 panel GEMMs, so one pointer and constant
// offsets reach every token: q holds 4-byte words as [k/4][8 tokens]; c16 / c32 the
// corrections -128 * (sum of 16 / 32 quants) as [k/16][8] / [k/32][8]; d16 the scale per 16
// values as [k/16][8]; m16 / m32 the min terms likewise. Tokens past n are zeros.
inline constexpr int kTileTokens = 8;
struct TokenTile {
  const int32_t* q;
  const int32_t* c16;
  const int32_t* c32;
  const float* d16;
  const float* m16;
  const float* m32;
};

// A matmul kernel: rows [r0, r1) of y (y[i * ldy + r]) for n tokens of one weight type, from
// the token rows `acts` (and, for the x86 GEMMs, their tiles, else nullptr).
using RowsFn = void (*)(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts,
                        const TokenTile* tiles, int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1);

// llama.cpp's nearest_int: round half to even through the float mantissa.
inline int nearest_int_q8k(float v) {
  float t = v + 12582912.f;
  int32_t i;
  std::memcpy(&i, &t, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// Quantizes one row of k values (k a multiple of the block size) into the kernels' layout.
// Bit-exact with quant.hpp's reference quantize_row for Q8_0 / Q8_1 / Q8_K.
inline void quantize_activation_row(ActFormat fmt, const float* x, int64_t k, int8_t* qs, float* da16,
                                    float* m32, float* m16, int32_t* sum16, int32_t* corr4, float* xf) {
  switch (fmt) {
    case ActFormat::f32:
      if (xf && xf != x) std::memcpy(xf, x, static_cast<size_t>(k) * sizeof(float));
      return;
    case ActFormat::f16:
      for (int64_t i = 0; i < k; ++i) xf[i] = fp16_to_fp32(fp32_to_fp16(x[i]));
      return;
    case ActFormat::bf16:
      for (int64_t i = 0; i < k; ++i) xf[i] = bf16_to_fp32(fp32_to_bf16(x[i]));
      return;
    case ActFormat::q8_0:
    case ActFormat::q8_1:
      for (int64_t b = 0; b < k / 32; ++b) {
        const float* xb = x + b * 32;
        float amax = 0.f;
        for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
        const float d = amax / 127.f;
        const float id = d != 0.f ? 1.f / d : 0.f;
        int sum = 0;
        for (int j = 0; j < 32; ++j) {
          const int q = static_cast<int>(std::round(xb[j] * id));
          qs[b * 32 + j] = static_cast<int8_t>(q);
          sum += q;
        }
        const float dh = fp16_to_fp32(fp32_to_fp16(d));
        da16[2 * b] = da16[2 * b + 1] = dh;
        m32[b] = fmt == ActFormat::q8_1 ? fp16_to_fp32(fp32_to_fp16(d * static_cast<float>(sum))) : 0.f;
      }
      break;
    case ActFormat::q8_k:
      for (int64_t b = 0; b < k / 256; ++b) {
        const float* xb = x + b * 256;
        int8_t* q = qs + b * 256;
        float amax = 0.f, maxv = 0.f;
        for (int j = 0; j < 256; ++j) {
          const float ax = std::fabs(xb[j]);
          if (ax > amax) {
            amax = ax;
            maxv = xb[j];
          }
        }
        float d = 0.f;
        if (amax == 0.f) {
          std::memset(q, 0, 256);
        } else {
          const float iscale = -127.f / maxv;
          for (int j = 0; j < 256; ++j) {
            const int v = nearest_int_q8k(iscale * xb[j]);
            q[j] = static_cast<int8_t>(v < 127 ? v : 127);
          }
          d = 1.f / iscale;
        }
        for (int g = 0; g < 16; ++g) da16[b * 16 + g] = d;
      }
      break;
  }
  for (int64_t g = 0; g < k / 16; ++g) {
    int s = 0;
    for (int j = 0; j < 16; ++j) s += qs[g * 16 + j];
    sum16[g] = s;
    if (fmt == ActFormat::q8_k) m16[g] = da16[g] * static_cast<float>(s);
  }
  if (fmt == ActFormat::q8_k)
    for (int64_t g = 0; g < k / 32; ++g) m32[g] = da16[2 * g] * static_cast<float>(sum16[2 * g] + sum16[2 * g + 1]);
  if (corr4)
    for (int64_t l = 0; l < k / 4; ++l)
      corr4[l] = -128 * (qs[4 * l] + qs[4 * l + 1] + qs[4 * l + 2] + qs[4 * l + 3]);
}

// ---------------------------------------------------------------------------------------
// Canonical decode of weight blocks. Every integer weight type becomes, per native block,
// small signed integers w (|w| <= 127 for all types but Q8_0, whose -128 is still an int8)
// in natural order plus, per group of G values (G = 32, or 16 for Q2_K/Q3_K/Q6_K), a float
// scale sw and a float min mw, such that the block's dot with an activation row is
//     sum_g  sw[g] * da(g) * sum_{i in g} w[i] * a[i]  +  mw[g] * M(g)
// where da(g) is the activation scale and M(g) the activation's min term (m32 or m16).
// This is the form every SIMD path consumes; the K types' integer sub-block scales are
// folded into sw (d * scale), which rounds like llama.cpp up to one float rounding.

struct WeightTraits {
  int block_values;   // values per native block
  int block_bytes;    // bytes per native block
  int group;          // G: values per scale group
  bool has_min;       // uses mw / M terms
};

// The decode shape of a type, read from the block-type table.
constexpr WeightTraits weight_traits(TensorType t) {
  const QuantTraits& q = block_type(t);
  return {q.block_size, q.block_bytes, q.group, q.has_min};
}

// Q4_K / Q5_K: 8 six-bit scales and 8 six-bit mins packed into 12 bytes.
inline void unpack_scales_k4(const uint8_t* s, uint8_t sc[8], uint8_t mn[8]) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 63;
    mn[j] = s[j + 4] & 63;
  }
  for (int j = 4; j < 8; ++j) {
    sc[j] = static_cast<uint8_t>((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
    mn[j] = static_cast<uint8_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// Q3_K: 16 six-bit scales (offset 32) packed into 12 bytes.
inline void unpack_scales_q3k(const uint8_t* s, int sc[16]) {
  for (int j = 0; j < 16; ++j) {
    const int lo = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
    const int hi = (s[8 + (j % 4)] >> (2 * (j / 4))) & 3;
    sc[j] = (lo | (hi << 4)) - 32;
  }
}

// Decodes one native block of type T at `blk` into w[block_values], sw[], mw[] (mw may be
// untouched for types without a min).
template <TensorType T>
inline void decode_block_ref(const uint8_t* blk, int8_t* w, float* sw, float* mw) {
  if constexpr (T == TensorType::Q4_0) {
    const auto* b = reinterpret_cast<const BlockQ4_0*>(blk);
    for (int i = 0; i < 16; ++i) {
      w[i] = static_cast<int8_t>((b->qs[i] & 0xF) - 8);
      w[i + 16] = static_cast<int8_t>((b->qs[i] >> 4) - 8);
    }
    sw[0] = fp16_to_fp32(b->d);
  } else if constexpr (T == TensorType::Q4_1) {
    const auto* b = reinterpret_cast<const BlockQ4_1*>(blk);
    for (int i = 0; i < 16; ++i) {
      w[i] = static_cast<int8_t>(b->qs[i] & 0xF);
      w[i + 16] = static_cast<int8_t>(b->qs[i] >> 4);
    }
    sw[0] = fp16_to_fp32(b->d);
    mw[0] = fp16_to_fp32(b->m);
  } else if constexpr (T == TensorType::Q5_0 || T == TensorType::Q5_1) {
    const bool q50 = T == TensorType::Q5_0;
    const uint8_t* qs = q50 ? reinterpret_cast<const BlockQ5_0*>(blk)->qs : reinterpret_cast<const BlockQ5_1*>(blk)->qs;
    const uint8_t* qhp = q50 ? reinterpret_cast<const BlockQ5_0*>(blk)->qh : reinterpret_cast<const BlockQ5_1*>(blk)->qh;
    const uint32_t qh = static_cast<uint32_t>(qhp[0]) | (static_cast<uint32_t>(qhp[1]) << 8) |
                        (static_cast<uint32_t>(qhp[2]) << 16) | (static_cast<uint32_t>(qhp[3]) << 24);
    const int off = q50 ? 16 : 0;
    for (int i = 0; i < 16; ++i) {
      w[i] = static_cast<int8_t>(((qs[i] & 0xF) | (((qh >> i) & 1) << 4)) - off);
      w[i + 16] = static_cast<int8_t>(((qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4)) - off);
    }
    if (q50) {
      sw[0] = fp16_to_fp32(reinterpret_cast<const BlockQ5_0*>(blk)->d);
    } else {
      sw[0] = fp16_to_fp32(reinterpret_cast<const BlockQ5_1*>(blk)->d);
      mw[0] = fp16_to_fp32(reinterpret_cast<const BlockQ5_1*>(blk)->m);
    }
  } else if constexpr (T == TensorType::Q8_0) {
    const auto* b = reinterpret_cast<const BlockQ8_0*>(blk);
    std::memcpy(w, b->qs, 32);
    sw[0] = fp16_to_fp32(b->d);
  } else if constexpr (T == TensorType::IQ4_NL) {
    const auto* b = reinterpret_cast<const BlockIQ4_NL*>(blk);
    for (int i = 0; i < 16; ++i) {
      w[i] = kIq4nlValues[b->qs[i] & 0xF];
      w[i + 16] = kIq4nlValues[b->qs[i] >> 4];
    }
    sw[0] = fp16_to_fp32(b->d);
  } else if constexpr (T == TensorType::Q4_K || T == TensorType::Q5_K) {
    const bool q5 = T == TensorType::Q5_K;
    const auto* b4 = reinterpret_cast<const BlockQ4_K*>(blk);
    const auto* b5 = reinterpret_cast<const BlockQ5_K*>(blk);
    const float d = fp16_to_fp32(q5 ? b5->d : b4->d);
    const float dmin = fp16_to_fp32(q5 ? b5->dmin : b4->dmin);
    const uint8_t* qs = q5 ? b5->qs : b4->qs;
    uint8_t sc[8], mn[8];
    unpack_scales_k4(q5 ? b5->scales : b4->scales, sc, mn);
    for (int c = 0; c < 4; ++c) {
      for (int l = 0; l < 32; ++l) {
        int lo = qs[32 * c + l] & 0xF, hi = qs[32 * c + l] >> 4;
        if (q5) {
          lo |= ((b5->qh[l] >> (2 * c)) & 1) << 4;
          hi |= ((b5->qh[l] >> (2 * c + 1)) & 1) << 4;
        }
        w[64 * c + l] = static_cast<int8_t>(lo);
        w[64 * c + 32 + l] = static_cast<int8_t>(hi);
      }
    }
    for (int j = 0; j < 8; ++j) {
      sw[j] = d * static_cast<float>(sc[j]);
      mw[j] = -dmin * static_cast<float>(mn[j]);
    }
  } else if constexpr (T == TensorType::Q6_K) {
    const auto* b = reinterpret_cast<const BlockQ6_K*>(blk);
    const float d = fp16_to_fp32(b->d);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = b->ql + 64 * h;
      const uint8_t* qh = b->qh + 32 * h;
      int8_t* o = w + 128 * h;
      for (int l = 0; l < 32; ++l) {
        o[l] = static_cast<int8_t>(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
        o[l + 32] = static_cast<int8_t>(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
        o[l + 64] = static_cast<int8_t>(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
        o[l + 96] = static_cast<int8_t>(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
      }
    }
    for (int g = 0; g < 16; ++g) sw[g] = d * static_cast<float>(b->scales[g]);
  } else if constexpr (T == TensorType::Q3_K) {
    const auto* b = reinterpret_cast<const BlockQ3_K*>(blk);
    const float d = fp16_to_fp32(b->d);
    int sc[16];
    unpack_scales_q3k(b->scales, sc);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* q = b->qs + 32 * h;
      for (int j = 0; j < 4; ++j) {
        const int bit = 4 * h + j;
        for (int l = 0; l < 32; ++l) {
          const int low = (q[l] >> (2 * j)) & 3;
          const int high = (b->hmask[l] >> bit) & 1;
          w[128 * h + 32 * j + l] = static_cast<int8_t>(low - (high ? 0 : 4));
        }
      }
    }
    for (int g = 0; g < 16; ++g) sw[g] = d * static_cast<float>(sc[g]);
  } else if constexpr (T == TensorType::IQ4_XS) {
    const auto* b = reinterpret_cast<const BlockIQ4_XS*>(blk);
    const float d = fp16_to_fp32(b->d);
    for (int ib = 0; ib < 8; ++ib) {
      const uint8_t* qs = b->qs + 16 * ib;
      for (int i = 0; i < 16; ++i) {
        w[32 * ib + i] = kIq4nlValues[qs[i] & 0xF];
        w[32 * ib + 16 + i] = kIq4nlValues[qs[i] >> 4];
      }
      sw[ib] = d * static_cast<float>(iq4xs_scale(*b, ib));
    }
  } else if constexpr (T == TensorType::IQ3_S) {
    const auto* b = reinterpret_cast<const BlockIQ3_S*>(blk);
    const float d = fp16_to_fp32(b->d);
    for (int g = 0; g < 64; ++g) {
      const uint32_t point = iq3s_point(*b, g);
      for (int j = 0; j < 4; ++j) {
        const int v = static_cast<int>((point >> (8 * j)) & 0xFF);
        w[4 * g + j] = static_cast<int8_t>(iq3s_negative(*b, 4 * g + j) ? -v : v);
      }
    }
    for (int ib = 0; ib < 8; ++ib) sw[ib] = d * static_cast<float>(iq3s_scale(*b, ib));
  } else if constexpr (T == TensorType::Q2_K) {
    const auto* b = reinterpret_cast<const BlockQ2_K*>(blk);
    const float d = fp16_to_fp32(b->d);
    const float dmin = fp16_to_fp32(b->dmin);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* q = b->qs + 32 * h;
      for (int j = 0; j < 4; ++j)
        for (int l = 0; l < 32; ++l)
          w[128 * h + 32 * j + l] = static_cast<int8_t>((q[l] >> (2 * j)) & 3);
    }
    for (int g = 0; g < 16; ++g) {
      sw[g] = d * static_cast<float>(b->scales[g] & 0xF);
      mw[g] = -dmin * static_cast<float>(b->scales[g] >> 4);
    }
  }
}


// The same for a type known at run time (the canonical decode of any integer weight type).
inline void decode_block_scalar(TensorType t, const uint8_t* blk, int8_t* w, float* sw, float* mw) {
  switch (t) {
    case TensorType::Q4_0: return decode_block_ref<TensorType::Q4_0>(blk, w, sw, mw);
    case TensorType::Q4_1: return decode_block_ref<TensorType::Q4_1>(blk, w, sw, mw);
    case TensorType::Q5_0: return decode_block_ref<TensorType::Q5_0>(blk, w, sw, mw);
    case TensorType::Q5_1: return decode_block_ref<TensorType::Q5_1>(blk, w, sw, mw);
    case TensorType::Q8_0: return decode_block_ref<TensorType::Q8_0>(blk, w, sw, mw);
    case TensorType::IQ4_NL: return decode_block_ref<TensorType::IQ4_NL>(blk, w, sw, mw);
    case TensorType::Q2_K: return decode_block_ref<TensorType::Q2_K>(blk, w, sw, mw);
    case TensorType::Q3_K: return decode_block_ref<TensorType::Q3_K>(blk, w, sw, mw);
    case TensorType::Q4_K: return decode_block_ref<TensorType::Q4_K>(blk, w, sw, mw);
    case TensorType::Q5_K: return decode_block_ref<TensorType::Q5_K>(blk, w, sw, mw);
    case TensorType::Q6_K: return decode_block_ref<TensorType::Q6_K>(blk, w, sw, mw);
    case TensorType::IQ4_XS: return decode_block_ref<TensorType::IQ4_XS>(blk, w, sw, mw);
    case TensorType::IQ3_S: return decode_block_ref<TensorType::IQ3_S>(blk, w, sw, mw);
    default: return;
  }
}

// The scalar reference: dot of one weight row (k values of type t) with one activation row.
// Integer sums per group are exact; the float combination follows the canonical formula
// above in group order.
template <TensorType T>
inline float dot_row_ref(const uint8_t* row, int64_t k, const ActRow& a) {
  constexpr WeightTraits tr = weight_traits(T);
  int8_t w[256];
  float sw[16], mw[16];
  float acc = 0.f;
  const int gpb = tr.block_values / tr.group;
  for (int64_t b = 0; b < k / tr.block_values; ++b) {
    decode_block_ref<T>(row + b * tr.block_bytes, w, sw, mw);
    for (int g = 0; g < gpb; ++g) {
      const int64_t base = b * tr.block_values + static_cast<int64_t>(g) * tr.group;
      int32_t isum = 0;
      for (int i = 0; i < tr.group; ++i) isum += static_cast<int32_t>(w[g * tr.group + i]) * a.qs[base + i];
      acc += (sw[g] * a.da16[base / 16]) * static_cast<float>(isum);
      if (tr.has_min) acc += mw[g] * (tr.group == 32 ? a.m32[base / 32] : a.m16[base / 16]);
    }
  }
  return acc;
}

inline float dot_row_scalar(TensorType t, const uint8_t* row, int64_t k, const ActRow& a) {
  switch (t) {
    case TensorType::Q4_0: return dot_row_ref<TensorType::Q4_0>(row, k, a);
    case TensorType::Q4_1: return dot_row_ref<TensorType::Q4_1>(row, k, a);
    case TensorType::Q5_0: return dot_row_ref<TensorType::Q5_0>(row, k, a);
    case TensorType::Q5_1: return dot_row_ref<TensorType::Q5_1>(row, k, a);
    case TensorType::Q8_0: return dot_row_ref<TensorType::Q8_0>(row, k, a);
    case TensorType::IQ4_NL: return dot_row_ref<TensorType::IQ4_NL>(row, k, a);
    case TensorType::Q2_K: return dot_row_ref<TensorType::Q2_K>(row, k, a);
    case TensorType::Q3_K: return dot_row_ref<TensorType::Q3_K>(row, k, a);
    case TensorType::Q4_K: return dot_row_ref<TensorType::Q4_K>(row, k, a);
    case TensorType::Q5_K: return dot_row_ref<TensorType::Q5_K>(row, k, a);
    case TensorType::Q6_K: return dot_row_ref<TensorType::Q6_K>(row, k, a);
    case TensorType::IQ4_XS: return dot_row_ref<TensorType::IQ4_XS>(row, k, a);
    case TensorType::IQ3_S: return dot_row_ref<TensorType::IQ3_S>(row, k, a);
    default: return 0.f;
  }
}

// Float weight rows: F32 / F16 / BF16 against float activations (already rounded to the
// weight type by quantize_activation_row), accumulated in float in index order.
inline float load_weight_float(TensorType t, const uint8_t* row, int64_t i) {
  if (t == TensorType::F32) {
    float v;
    std::memcpy(&v, row + 4 * i, 4);
    return v;
  }
  uint16_t h;
  std::memcpy(&h, row + 2 * i, 2);
  return t == TensorType::F16 ? fp16_to_fp32(h) : bf16_to_fp32(h);
}

inline float dot_row_float_scalar(TensorType t, const uint8_t* row, int64_t k, const float* x) {
  float acc = 0.f;
  for (int64_t i = 0; i < k; ++i) acc += load_weight_float(t, row, i) * x[i];
  return acc;
}

// The scalar path of every weight type, in RowsFn form (the reference the SIMD paths are
// tested against).
template <TensorType T>
inline void rows_scalar(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, const TokenTile*,
                        int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = data + r * row_bytes;
    for (int64_t i = 0; i < n; ++i) {
      if constexpr (block_type(T).integer_dot)
        y[i * ldy + r] = dot_row_ref<T>(row, k, acts[i]);
      else
        y[i * ldy + r] = dot_row_float_scalar(T, row, k, acts[i].xf);
    }
  }
}

}  // namespace detail
}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/kernels_scalar.hpp ----

// ---- begin tinyslm/kernels_avx2.hpp ----
// tinyslm kernels, x86-64 256-bit paths: AVX2 (+FMA, F16C) and AVX-VNNI (the same kernels
// with 256-bit vpdpbusd, see dot4_u8s8). kernels_avx512.hpp builds on this file.
//
// Every function here carries a target attribute, so the header compiles without -march
// flags and kernels.hpp only calls a path after detect_cpu_features() said the CPU has it.
//
// Integer weights:
//  - GEMV, few tokens (n <= 8), for Q4_0/Q5_0/Q8_0/Q4_K/Q6_K: fused kernels that unpack each
//    block in registers and dot it with up to 4 tokens at a time. maddubs takes the unsigned
//    codes and the offset is removed exactly with the activation's sums of 16 (Q8_0: the sign
//    trick); AVX-VNNI does the same with vpdpbusd.
//  - The other types, and more tokens, go through the canonical decode of kernels_scalar.hpp
//    (SIMD for the common types, decode_chunk), one 512-value chunk of a row at a time in L1,
//    reused for up to 16 tokens.
//  - GEMM (n >= kGemmMinTokensAvx2): 8-row panels, maddubs or vpdpbusd on activations
//    a + 128 (panel8_kernel); with vpdpbusd nothing saturates, so Q8_0, IQ4_NL and IQ4_XS take it too.
//    gemm_panels is the panel driver shared with the AVX-512 GEMM.
// Float weights (F32/F16/BF16) use a 4-row x up-to-4-token dot-product tile (float_rows_t,
// shared with AVX-512).

#include <cstdint>
#include <cstring>
#include <type_traits>


#if defined(TINYSLM_SIMD_X86)
#define TINYSLM_KERNELS_X86 1
#include <immintrin.h>

#define TINYSLM_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))

// GCC 12 warns about its own _mm512_undefined_* helpers once they are inlined here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace detail {
namespace x86 {

// Values decoded per chunk of a row (a multiple of 256, so K super-blocks are never split).
inline constexpr int64_t kChunk = 512;
// Token count from which the AVX-512 panel GEMM beats running the GEMV kernel per token.
inline constexpr int64_t kGemmMinTokens = 4;
// On AVX2 the panel GEMM takes over from the fused GEMV above this many tokens.
inline constexpr int64_t kGemmMinTokensAvx2 = 9;

// ---------------------------------------------------------------------------------------
// SIMD canonical decode (AVX2 instructions; inlined into the AVX-512 kernels as well).

TINYSLM_TARGET_AVX2 inline float f16_scalar(uint16_t h) { return _cvtsh_ss(h); }

// 0xFF in byte i where bit i of `bits` is set.
TINYSLM_TARGET_AVX2 inline __m256i bits_to_bytes(uint32_t bits) {
  const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), shuf);
  v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
}

// The 32 nibbles of a 16-byte legacy block in natural order (low nibbles first).
TINYSLM_TARGET_AVX2 inline __m256i nibbles32(const uint8_t* qs) {
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i m4 = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(x, 4), m4), _mm_and_si128(x, m4));
}

// Legacy blocks of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL): the 32 weights, the block scale
// for both groups of 16, and the min (Q4_1 / Q5_1).
template <TensorType T>
TINYSLM_TARGET_AVX2 __attribute__((always_inline)) inline void decode_legacy_avx2(const uint8_t* blk, int8_t* o,
                                                                                 float* s, float* mw) {
  __m256i v;
  if constexpr (T == TensorType::Q8_0) {
    v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(reinterpret_cast<const BlockQ8_0*>(blk)->qs));
  } else if constexpr (T == TensorType::IQ4_NL) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
    v = _mm256_shuffle_epi8(table, nibbles32(reinterpret_cast<const BlockIQ4_NL*>(blk)->qs));
  } else if constexpr (T == TensorType::Q4_0) {
    v = _mm256_sub_epi8(nibbles32(reinterpret_cast<const BlockQ4_0*>(blk)->qs), _mm256_set1_epi8(8));
  } else if constexpr (T == TensorType::Q4_1) {
    v = nibbles32(reinterpret_cast<const BlockQ4_1*>(blk)->qs);
  } else {  // Q5_0 / Q5_1: the fifth bit of value i is bit i of qh
    using B = std::conditional_t<T == TensorType::Q5_0, BlockQ5_0, BlockQ5_1>;
    const auto* b = reinterpret_cast<const B*>(blk);
    uint32_t qh;
    std::memcpy(&qh, b->qh, 4);
    v = _mm256_or_si256(nibbles32(b->qs), _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
    if constexpr (T == TensorType::Q5_0) v = _mm256_sub_epi8(v, _mm256_set1_epi8(16));
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), v);
  uint16_t d;
  std::memcpy(&d, blk, 2);  // every legacy block starts with its fp16 scale (then Q4_1 / Q5_1: the min)
  s[0] = s[1] = f16_scalar(d);
  if constexpr (T == TensorType::Q4_1 || T == TensorType::Q5_1) {
    uint16_t m;
    std::memcpy(&m, blk + 2, 2);
    mw[0] = f16_scalar(m);
  }
}

// Q4_K / Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins.
template <TensorType T>
TINYSLM_TARGET_AVX2 __attribute__((always_inline)) inline void decode_k4_avx2(const uint8_t* blk, int8_t* o, float* s,
                                                                             float* mw) {
  constexpr bool q5 = T == TensorType::Q5_K;
  using B = std::conditional_t<q5, BlockQ5_K, BlockQ4_K>;
  const auto* b = reinterpret_cast<const B*>(blk);
  const float d = f16_scalar(b->d), dmin = f16_scalar(b->dmin);
  uint8_t sc[8], mn[8];
  unpack_scales_k4(b->scales, sc, mn);
  const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
  __m256i hb = _mm256_setzero_si256();
  if constexpr (q5) hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qh));
  for (int c = 0; c < 4; ++c) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qs + 32 * c));
    __m256i lo = _mm256_and_si256(x, m4);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
    if constexpr (q5) {
      const __m256i blo = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c)), one);
      const __m256i bhi = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c + 1)), one);
      lo = _mm256_or_si256(lo, _mm256_slli_epi16(blo, 4));
      hi = _mm256_or_si256(hi, _mm256_slli_epi16(bhi, 4));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 64 * c), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 64 * c + 32), hi);
  }
  for (int g = 0; g < 8; ++g) {
    s[2 * g] = s[2 * g + 1] = d * static_cast<float>(sc[g]);
    mw[g] = -dmin * static_cast<float>(mn[g]);
  }
}

// Q6_K: 16 sub-blocks of 16 with int8 scales.
TINYSLM_TARGET_AVX2 __attribute__((always_inline)) inline void decode_q6_k_avx2(const uint8_t* blk, int8_t* o, float* s) {
  const auto* b = reinterpret_cast<const BlockQ6_K*>(blk);
  const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3), off = _mm256_set1_epi8(32);
  for (int h = 0; h < 2; ++h) {
    const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->ql + 64 * h));
    const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->ql + 64 * h + 32));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qh + 32 * h));
    const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
    const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
    const __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
    const __m256i h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
    int8_t* oh = o + 128 * h;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(oh), _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l0, m4), h0), off));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(oh + 32), _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l1, m4), h1), off));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(oh + 64),
                        _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h2), off));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(oh + 96),
                        _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h3), off));
  }
  const float d = f16_scalar(b->d);
  for (int g = 0; g < 16; ++g) s[g] = d * static_cast<float>(b->scales[g]);
}

// Q2_K / Q3_K: 2-bit codes (Q3_K: plus the hmask bit, minus 4), 16 sub-blocks of 16.
template <TensorType T>
TINYSLM_TARGET_AVX2 __attribute__((always_inline)) inline void decode_k23_avx2(const uint8_t* blk, int8_t* o, float* s,
                                                                              float* mw) {
  constexpr bool q3 = T == TensorType::Q3_K;
  using B = std::conditional_t<q3, BlockQ3_K, BlockQ2_K>;
  const auto* b = reinterpret_cast<const B*>(blk);
  const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1), four = _mm256_set1_epi8(4);
  __m256i hm = _mm256_setzero_si256();
  if constexpr (q3) hm = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->hmask));
  for (int h = 0; h < 2; ++h) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qs + 32 * h));
    for (int jj = 0; jj < 4; ++jj) {
      __m256i v = _mm256_and_si256(_mm256_srl_epi16(x, _mm_cvtsi32_si128(2 * jj)), m3);
      if constexpr (q3) {  // value = low two bits - 4, unless the hmask bit is set
        const __m256i hb = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(4 * h + jj)), one);
        v = _mm256_sub_epi8(_mm256_add_epi8(v, _mm256_slli_epi16(hb, 2)), four);
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 128 * h + 32 * jj), v);
    }
  }
  const float d = f16_scalar(b->d);
  if constexpr (q3) {
    int sc[16];
    unpack_scales_q3k(b->scales, sc);
    for (int g = 0; g < 16; ++g) s[g] = d * static_cast<float>(sc[g]);
  } else {
    const float dmin = f16_scalar(b->dmin);
    for (int g = 0; g < 16; ++g) {
      s[g] = d * static_cast<float>(b->scales[g] & 0xF);
      mw[g] = -dmin * static_cast<float>(b->scales[g] >> 4);
    }
  }
}

// IQ4_XS: 8 sub-blocks of 32, each an IQ4_NL block under its own 6-bit scale.
TINYSLM_TARGET_AVX2 __attribute__((always_inline)) inline void decode_iq4_xs_avx2(const uint8_t* blk, int8_t* o,
                                                                                 float* s) {
  const auto* b = reinterpret_cast<const BlockIQ4_XS*>(blk);
  const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
  for (int ib = 0; ib < 8; ++ib)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 32 * ib), _mm256_shuffle_epi8(table, nibbles32(b->qs + 16 * ib)));
  const float d = f16_scalar(b->d);
  for (int ib = 0; ib < 8; ++ib) s[2 * ib] = s[2 * ib + 1] = d * static_cast<float>(iq4xs_scale(*b, ib));
}

// IQ3_S: per 32 values, 8 grid points fetched with one gather (index: 8 bits of qs, the
// ninth from qh moved to bit 8), then negated where the sign bit is set.
TINYSLM_TARGET_AVX2 __attribute__((always_inline)) inline void decode_iq3_s_avx2(const uint8_t* blk, int8_t* o,
                                                                                float* s) {
  const auto* b = reinterpret_cast<const BlockIQ3_S*>(blk);
  const __m256i to_bit8 = _mm256_setr_epi32(8, 7, 6, 5, 4, 3, 2, 1);
  const __m256i bit8 = _mm256_set1_epi32(256);
  for (int ib = 0; ib < 8; ++ib) {
    const __m256i low = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b->qs + 8 * ib)));
    const __m256i high = _mm256_and_si256(_mm256_sllv_epi32(_mm256_set1_epi32(b->qh[ib]), to_bit8), bit8);
    const __m256i mag = _mm256_i32gather_epi32(reinterpret_cast<const int*>(kIq3sGrid), _mm256_or_si256(low, high), 4);
    uint32_t sign_bits;
    std::memcpy(&sign_bits, b->signs + 4 * ib, 4);
    const __m256i neg = bits_to_bytes(sign_bits);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 32 * ib), _mm256_sub_epi8(_mm256_xor_si256(mag, neg), neg));
  }
  const float d = f16_scalar(b->d);
  for (int ib = 0; ib < 8; ++ib) s[2 * ib] = s[2 * ib + 1] = d * static_cast<float>(iq3s_scale(*b, ib));
}

// Decodes the native blocks of type T covering values [v0, v0 + nv) of `row` into w / sw16
// (a scale per 16 values) / mw (a min per group of the type, indexed from v0).
template <TensorType T>
TINYSLM_TARGET_AVX2 inline void decode_chunk(const uint8_t* row, int64_t v0, int64_t nv, int8_t* w, float* sw16,
                                             float* mw) {
  constexpr WeightTraits tr = weight_traits(T);
  constexpr int gpb = tr.block_values / tr.group;
  const int64_t b0 = v0 / tr.block_values, nb = nv / tr.block_values;
  for (int64_t j = 0; j < nb; ++j) {
    const uint8_t* blk = row + (b0 + j) * tr.block_bytes;
    int8_t* o = w + j * tr.block_values;
    float* s = sw16 + j * (tr.block_values / 16);
    if constexpr (T == TensorType::Q4_K || T == TensorType::Q5_K)
      decode_k4_avx2<T>(blk, o, s, mw + j * gpb);
    else if constexpr (T == TensorType::Q6_K)
      decode_q6_k_avx2(blk, o, s);
    else if constexpr (T == TensorType::Q2_K || T == TensorType::Q3_K)
      decode_k23_avx2<T>(blk, o, s, mw + j * gpb);
    else if constexpr (T == TensorType::IQ4_XS)
      decode_iq4_xs_avx2(blk, o, s);
    else if constexpr (T == TensorType::IQ3_S)
      decode_iq3_s_avx2(blk, o, s);
    else
      decode_legacy_avx2<T>(blk, o, s, mw + j * gpb);
  }
}

// ---------------------------------------------------------------------------------------
// Activation quantization, bit-exact with quantize_activation_row (kernels_scalar.hpp).

TINYSLM_TARGET_AVX2 inline float hmax256(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// roundf (half away from zero), exactly: trunc, then step away when the dropped part >= 0.5.
TINYSLM_TARGET_AVX2 inline __m256i round_away_epi32(__m256 v) {
  const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 sign = _mm256_and_ps(v, _mm256_set1_ps(-0.f));
  const __m256 frac = _mm256_andnot_ps(_mm256_set1_ps(-0.f), _mm256_sub_ps(v, t));
  const __m256 step = _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ),
                                    _mm256_or_ps(sign, _mm256_set1_ps(1.f)));
  return _mm256_cvttps_epi32(_mm256_add_ps(t, step));
}

// Packs 4 x 8 int32 (each in [-127, 127]) into 32 int8 in order.
TINYSLM_TARGET_AVX2 inline __m256i pack_32(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
  const __m256i q = _mm256_packs_epi16(ab, cd);
  return _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// Q8_0 / Q8_1 blocks of 32: quants, the fp16-rounded scale per 16 values and (Q8_1) s = d * sum.
TINYSLM_TARGET_AVX2 inline void quantize_q8_0_blocks_avx2(ActFormat fmt, const float* x, int64_t k, int8_t* qs,
                                                          float* da16, float* m32) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t b = 0; b < k / 32; ++b) {
    const float* xb = x + b * 32;
    __m256 v[4];
    __m256 am = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(xb + 8 * j);
      am = _mm256_max_ps(am, _mm256_and_ps(v[j], abs_mask));
    }
    const float amax = hmax256(am);
    const float d = amax / 127.f;
    const float id = d != 0.f ? 1.f / d : 0.f;
    const __m256 idv = _mm256_set1_ps(id);
    __m256i q[4];
    for (int j = 0; j < 4; ++j) q[j] = round_away_epi32(_mm256_mul_ps(v[j], idv));
    const __m256i q8 = pack_32(q[0], q[1], q[2], q[3]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + b * 32), q8);
    const float dh = _cvtsh_ss(_cvtss_sh(d, 0));
    da16[2 * b] = da16[2 * b + 1] = dh;
    if (fmt == ActFormat::q8_1) {
      const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
      m32[b] = _cvtsh_ss(_cvtss_sh(d * static_cast<float>(_mm_cvtsi128_si32(s4)), 0));
    } else {
      m32[b] = 0.f;
    }
  }
}

// Q8_K super-blocks of 256: quants and the float scale (repeated per 16 values).
TINYSLM_TARGET_AVX2 inline void quantize_q8_k_blocks_avx2(const float* x, int64_t k, int8_t* qs, float* da16) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t b = 0; b < k / 256; ++b) {
    const float* xb = x + b * 256;
    __m256 am = _mm256_setzero_ps();
    for (int j = 0; j < 32; ++j) am = _mm256_max_ps(am, _mm256_and_ps(_mm256_loadu_ps(xb + 8 * j), abs_mask));
    const float amax = hmax256(am);
    float d = 0.f;
    if (amax == 0.f) {
      std::memset(qs + b * 256, 0, 256);
    } else {
      float maxv = 0.f;
      for (int j = 0; j < 256; ++j)
        if (std::fabs(xb[j]) == amax) {
          maxv = xb[j];
          break;
        }
      const float iscale = -127.f / maxv;
      const __m256 is = _mm256_set1_ps(iscale);
      const __m256i hi = _mm256_set1_epi32(127);
      for (int j = 0; j < 8; ++j) {
        __m256i q[4];
        for (int u = 0; u < 4; ++u)
          q[u] = _mm256_min_epi32(
              _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + 32 * j + 8 * u), is),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)),
              hi);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + b * 256 + 32 * j), pack_32(q[0], q[1], q[2], q[3]));
      }
      d = 1.f / iscale;
    }
    for (int g = 0; g < 16; ++g) da16[b * 16 + g] = d;
  }
}

TINYSLM_TARGET_AVX2 inline void quantize_activation_row_avx2(ActFormat fmt, const float* x, int64_t k, int8_t* qs,
                                                             float* da16, float* m32, float* m16, int32_t* sum16,
                                                             int32_t* corr4) {
  if (fmt == ActFormat::q8_k)
    quantize_q8_k_blocks_avx2(x, k, qs, da16);
  else
    quantize_q8_0_blocks_avx2(fmt, x, k, qs, da16, m32);
  // Sums of 4 (for corr4) and of 16 quants.
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  for (int64_t v = 0; v < k; v += 32) {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + v));
    const __m256i s4 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q), ones16);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(corr4 + v / 4), _mm256_mullo_epi32(s4, _mm256_set1_epi32(-128)));
    alignas(32) int32_t t[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), s4);
    sum16[v / 16] = t[0] + t[1] + t[2] + t[3];
    sum16[v / 16 + 1] = t[4] + t[5] + t[6] + t[7];
  }
  if (fmt == ActFormat::q8_k) {
    for (int64_t g = 0; g < k / 16; ++g) m16[g] = da16[g] * static_cast<float>(sum16[g]);
    for (int64_t g = 0; g < k / 32; ++g) m32[g] = da16[2 * g] * static_cast<float>(sum16[2 * g] + sum16[2 * g + 1]);
  }
}

// Sum over groups of mw[g] * M(g) for a chunk starting at value v0 (8 groups per step).
TINYSLM_TARGET_AVX2 inline float chunk_min_term(const WeightTraits& tr, const float* mw, int64_t v0, int64_t nv,
                                                const ActRow& a) {
  const int64_t ng = nv / tr.group;
  const float* m = tr.group == 32 ? a.m32 + v0 / 32 : a.m16 + v0 / 16;
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= ng; g += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(mw + g), _mm256_loadu_ps(m + g), acc);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float r = _mm_cvtss_f32(s);
  for (; g < ng; ++g) r += mw[g] * m[g];
  return r;
}

// ---------------------------------------------------------------------------------------
// Dot of a decoded chunk with one activation row.

TINYSLM_TARGET_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The 256-bit integer dot step: each int32 lane of the result is the sum of 4 products of
// unsigned bytes u and signed bytes s (lane i: bytes 4i..4i+3), added to acc. V selects how:
//   0 (AVX2): vpmaddubsw + vpmaddwd; the int16 pair sums saturate, so callers keep
//     |u * s| pairs below 2^15 (they do: codes <= 63, or the sign trick for Q8_0);
//   1 (AVX-VNNI): vpdpbusd in its VEX encoding (Alder Lake and later, Zen 5 desktop);
//   2: the same instruction in its EVEX encoding (AVX-512 VL + VNNI). Same arithmetic as 1,
//     no saturation; it lets CPUs with AVX-512 VNNI but no AVX-VNNI run (and test) the
//     256-bit VNNI kernels.
// Written as inline assembly so these functions keep the plain AVX2 target attribute; the
// dispatcher runs V = 1 only when CPUID reports AVX-VNNI and V = 2 only with AVX-512 VNNI.
inline constexpr int kDotAvx2 = 0, kDotAvxVnni = 1, kDotEvex256 = 2;

template <int V>
TINYSLM_TARGET_AVX2 inline __m256i dot4_u8s8(__m256i acc, __m256i u, __m256i s) {
  if constexpr (V == kDotAvx2) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
  } else if constexpr (V == kDotAvxVnni) {
    __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(s));
    return acc;
  } else {
    __asm__("%{evex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(s));
    return acc;
  }
}

// AVX2: 32 values per step; lanes of the int32 sums cover 4 consecutive values, like vpdpbusd.
template <int V>
TINYSLM_TARGET_AVX2 inline float dot_chunk_avx2(const int8_t* w, const float* sw16, int64_t nv, const int8_t* aq,
                                                const float* da16) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  const __m256i idx = _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0);
  for (int64_t v = 0; v < nv; v += 32) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + v));
    const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aq + v));
    const __m256i p32 = dot4_u8s8<V>(_mm256_setzero_si256(), _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv));
    const __m128 s2 = _mm_mul_ps(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sw16 + v / 16))),
                                 _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(da16 + v / 16))));
    const __m256 s = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(s2), idx);
    if ((v / 32) & 1)
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), s, acc1);
    else
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), s, acc0);
  }
  return hsum256(_mm256_add_ps(acc0, acc1));
}


// ---------------------------------------------------------------------------------------
// GEMV-style driver: each row is decoded chunk by chunk once and dotted with every token.

#define TINYSLM_X86_GEMV_BODY(DOT)                                                             \
  constexpr WeightTraits tr = weight_traits(T);                                               \
  alignas(64) int8_t w[kChunk];                                                               \
  alignas(64) float sw16[kChunk / 16 + 4];                                                    \
  alignas(64) float mw[kChunk / 16];                                                          \
  float acc[16];                                                                              \
  for (int64_t r = r0; r < r1; ++r) {                                                         \
    const uint8_t* row = data + r * row_bytes;                                                \
    for (int64_t i0 = 0; i0 < n; i0 += 16) {                                                  \
      const int64_t ni = n - i0 < 16 ? n - i0 : 16;                                           \
      for (int64_t i = 0; i < ni; ++i) acc[i] = 0.f;                                          \
      for (int64_t v0 = 0; v0 < k; v0 += kChunk) {                                            \
        const int64_t nv = k - v0 < kChunk ? k - v0 : kChunk;                                 \
        decode_chunk<T>(row, v0, nv, w, sw16, mw);                                            \
        for (int64_t i = 0; i < ni; ++i) {                                                    \
          const ActRow& a = acts[i0 + i];                                                     \
          acc[i] += DOT;                                                                      \
          if constexpr (tr.has_min) acc[i] += chunk_min_term(tr, mw, v0, nv, a);              \
        }                                                                                     \
      }                                                                                       \
      for (int64_t i = 0; i < ni; ++i) y[(i0 + i) * ldy + r] = acc[i];                        \
    }                                                                                         \
  }

template <int V, TensorType T>
TINYSLM_TARGET_AVX2 inline void int_rows_gemv_avx2(const uint8_t* data, int64_t row_bytes, int64_t k,
                                                   const ActRow* acts, int64_t n, float* y, int64_t ldy, int64_t r0,
                                                   int64_t r1) {
  TINYSLM_X86_GEMV_BODY(dot_chunk_avx2<V>(w, sw16, nv, a.qs + v0, a.da16 + v0 / 16))
}

// ---------------------------------------------------------------------------------------
// AVX2 fused GEMV for the common types. Without VNNI, maddubs multiplies unsigned by signed
// bytes into saturating int16 pairs, so the weights enter as their unsigned codes q (at most
// 63 here, so no pair can saturate) and the offset is taken out exactly afterwards:
// sum (q - off) a = sum q a - off * sum a, with sum a from the activation's sums of 16.
// Q8_0 uses the sign trick instead (|w| x sign(a, w), at most 2 * 128 * 127).

template <int V>
TINYSLM_TARGET_AVX2 inline __m256i madd_u8s8(__m256i u, __m256i s) {
  return dot4_u8s8<V>(_mm256_setzero_si256(), u, s);
}

// Adds an int32 to lane 0 (lanes are summed later, so this adds it to the total).
TINYSLM_TARGET_AVX2 inline __m256i add_lane0(__m256i v, int32_t c) {
  return _mm256_add_epi32(v, _mm256_zextsi128_si256(_mm_cvtsi32_si128(c)));
}

template <int V, TensorType T, int N>
TINYSLM_TARGET_AVX2 inline void gemv_row_legacy_avx2(const uint8_t* row, int64_t k, const ActRow* acts, float* out) {
  constexpr int bb = T == TensorType::Q8_0 ? 34 : T == TensorType::Q5_0 ? 22 : 18;
  __m256 acc[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < k / 32; ++b) {
    const uint8_t* p = row + b * bb;
    uint16_t h;
    std::memcpy(&h, p, 2);
    const float d = f16_scalar(h);
    __m256i q;
    int off = 0;
    if constexpr (T == TensorType::Q8_0) {
      q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
    } else if constexpr (T == TensorType::Q5_0) {
      uint32_t qh;
      std::memcpy(&qh, p + 2, 4);
      q = _mm256_or_si256(nibbles32(p + 6), _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
      off = 16;
    } else {
      q = nibbles32(p + 2);
      off = 8;
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; ++i) {
      const ActRow& a = acts[i];
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs + b * 32));
      __m256i t;
      if constexpr (T == TensorType::Q8_0) {
        t = madd_u8s8<V>(_mm256_sign_epi8(q, q), _mm256_sign_epi8(av, q));
      } else {
        t = add_lane0(madd_u8s8<V>(q, av), -off * (a.sum16[2 * b] + a.sum16[2 * b + 1]));
      }
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(d * a.da32[b]), acc[i]);
    }
  }
  for (int i = 0; i < N; ++i) out[i] = hsum256(acc[i]);
}

template <int V, TensorType T, int N>
TINYSLM_TARGET_AVX2 inline void gemv_row_k_avx2(const uint8_t* row, int64_t k, const ActRow* acts, float* out) {
  __m256 acc[N];
  float accs[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm256_setzero_ps(), accs[i] = 0.f;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t b = 0; b < k / 256; ++b) {
    const int64_t v = b * 256;
    if constexpr (T == TensorType::Q4_K) {
      const auto* blk = reinterpret_cast<const BlockQ4_K*>(row + b * sizeof(BlockQ4_K));
      const float d = f16_scalar(blk->d), dmin = f16_scalar(blk->dmin);
      uint8_t sc[8], mn[8];
      unpack_scales_k4(blk->scales, sc, mn);
      __m256i q[8];
      for (int c = 0; c < 4; ++c) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->qs + 32 * c));
        q[2 * c] = _mm256_and_si256(x, m4);
        q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
      }
#pragma GCC unroll 4
      for (int i = 0; i < N; ++i) {
        const ActRow& a = acts[i];
        __m256i isum = _mm256_setzero_si256();
        int32_t ms = 0;
        for (int j = 0; j < 8; ++j) {
          const __m256i t = madd_u8s8<V>(q[j], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs + v + 32 * j)));
          isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(t, _mm256_set1_epi32(sc[j])));
          ms += mn[j] * (a.sum16[v / 16 + 2 * j] + a.sum16[v / 16 + 2 * j + 1]);
        }
        const float da = a.da16[v / 16];
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * da), acc[i]);
        accs[i] -= dmin * da * static_cast<float>(ms);
      }
    } else {  // Q6_K
      const auto* blk = reinterpret_cast<const BlockQ6_K*>(row + b * sizeof(BlockQ6_K));
      const float d = f16_scalar(blk->d);
      const __m256i m3 = _mm256_set1_epi8(3);
      __m256i q[8];
      for (int h = 0; h < 2; ++h) {
        const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->ql + 64 * h));
        const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->ql + 64 * h + 32));
        const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->qh + 32 * h));
        q[4 * h] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
        q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
        q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
        q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
      }
      // Per-lane scales: lanes 0-3 of vector j cover values 32 j .. 32 j + 15 (group 2 j).
      const __m256i sc16 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk->scales)));
      const __m256i sc16b = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk->scales + 8)));
#pragma GCC unroll 4
      for (int i = 0; i < N; ++i) {
        const ActRow& a = acts[i];
        __m256i isum = _mm256_setzero_si256();
        for (int j = 0; j < 8; ++j) {
          const int g = 2 * j;
          const __m256i t = madd_u8s8<V>(q[j], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs + v + 32 * j)));
          const __m256i src = j < 4 ? sc16 : sc16b;
          const int gl = g % 8;
          const __m256i scl = _mm256_permutevar8x32_epi32(src, _mm256_setr_epi32(gl, gl, gl, gl, gl + 1, gl + 1, gl + 1, gl + 1));
          // the -32 offset of each group of 16, weighted by its scale
          const int32_t corr = -32 * (blk->scales[g] * a.sum16[v / 16 + g] + blk->scales[g + 1] * a.sum16[v / 16 + g + 1]);
          isum = add_lane0(_mm256_add_epi32(isum, _mm256_mullo_epi32(t, scl)), corr);
        }
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * a.da16[v / 16]), acc[i]);
      }
    }
  }
  for (int i = 0; i < N; ++i) out[i] = hsum256(acc[i]) + accs[i];
}

template <int V, TensorType T, int N>
TINYSLM_TARGET_AVX2 inline void gemv_rows_fused_avx2(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts,
                                                     float* y, int64_t ldy, int64_t r0, int64_t r1) {
  float out[N];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = data + r * row_bytes;
    if constexpr (T == TensorType::Q4_K || T == TensorType::Q6_K)
      gemv_row_k_avx2<V, T, N>(row, k, acts, out);
    else
      gemv_row_legacy_avx2<V, T, N>(row, k, acts, out);
    for (int i = 0; i < N; ++i) y[i * ldy + r] = out[i];
  }
}

template <int V, TensorType T>
inline bool gemv_fused_avx2_n(int64_t n, const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, float* y,
                              int64_t ldy, int64_t r0, int64_t r1) {
  // Tokens 4 at a time, so each block is unpacked once per 4 tokens.
  for (int64_t i0 = 0; i0 < n; i0 += 4) {
    float* yi = y + i0 * ldy;
    switch (n - i0 < 4 ? n - i0 : 4) {
      case 1: gemv_rows_fused_avx2<V, T, 1>(data, row_bytes, k, acts + i0, yi, ldy, r0, r1); break;
      case 2: gemv_rows_fused_avx2<V, T, 2>(data, row_bytes, k, acts + i0, yi, ldy, r0, r1); break;
      case 3: gemv_rows_fused_avx2<V, T, 3>(data, row_bytes, k, acts + i0, yi, ldy, r0, r1); break;
      default: gemv_rows_fused_avx2<V, T, 4>(data, row_bytes, k, acts + i0, yi, ldy, r0, r1); break;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------
// Token tiles for the panel GEMMs (TokenTile, kernels_scalar.hpp).

// Per tile, the element counts of each array for k values.
inline int64_t tile_q_words(int64_t k) { return k / 4 * kTileTokens; }
inline int64_t tile_g16(int64_t k) { return k / 16 * kTileTokens; }
inline int64_t tile_g32(int64_t k) { return k / 32 * kTileTokens; }

// Builds tile `ti` (tokens 8 ti .. 8 ti + 7) from the activation rows.
// `unsigned_q`: store the quants as a + 128 (unsigned bytes), for the AVX2 GEMM.
inline void build_token_tile(const ActRow* acts, int64_t n, int64_t k, int64_t ti, int32_t* q, int32_t* c16,
                             int32_t* c32, float* d16, float* m16, float* m32, bool unsigned_q = false) {
  for (int c = 0; c < kTileTokens; ++c) {
    const int64_t i = ti * kTileTokens + c;
    if (i < n) {
      const ActRow& a = acts[i];
      for (int64_t w = 0; w < k / 4; ++w) {
        uint32_t word;
        std::memcpy(&word, a.qs + 4 * w, 4);
        if (unsigned_q) word ^= 0x80808080u;
        std::memcpy(&q[w * kTileTokens + c], &word, 4);
      }
      for (int64_t g = 0; g < k / 16; ++g) {
        c16[g * kTileTokens + c] = -128 * a.sum16[g];
        d16[g * kTileTokens + c] = a.da16[g];
        m16[g * kTileTokens + c] = a.m16[g];
      }
      for (int64_t g = 0; g < k / 32; ++g) {
        c32[g * kTileTokens + c] = -128 * (a.sum16[2 * g] + a.sum16[2 * g + 1]);
        m32[g * kTileTokens + c] = a.m32[g];
      }
    } else {
      for (int64_t w = 0; w < k / 4; ++w) q[w * kTileTokens + c] = unsigned_q ? static_cast<int32_t>(0x80808080u) : 0;
      for (int64_t g = 0; g < k / 16; ++g) c16[g * kTileTokens + c] = 0, d16[g * kTileTokens + c] = 0.f, m16[g * kTileTokens + c] = 0.f;
      for (int64_t g = 0; g < k / 32; ++g) c32[g * kTileTokens + c] = 0, m32[g * kTileTokens + c] = 0.f;
    }
  }
}


// ---------------------------------------------------------------------------------------
// AVX2 GEMM on interleaved 8-row panels (no VNNI). maddubs takes the activations as unsigned
// bytes a + 128 (tiles built with unsigned_q) and the weights as signed bytes; with |w| <= 32
// two products never saturate an int16 (2 * 255 * 32), and even two maddubs results add
// up without overflow, so pairs of 4-byte steps share one madd. The +128 is taken out
// exactly per row: -128 * (sum of the row's 16 weights), kept in the panel. Types with
// larger weights (Q8_0, IQ4_NL, IQ4_XS) use the decoded-chunk path.

inline bool avx2_gemm_supports(int v, TensorType t) {
  return is_integer_weight_type(t) &&
         (v != kDotAvx2 || (t != TensorType::Q8_0 && t != TensorType::IQ4_NL && t != TensorType::IQ4_XS));
}

struct alignas(32) Panel8 {
  int8_t w[kChunk / 4][8][4];   // w[q][r] = weights 4q..4q+3 of row r (signed)
  float s16[kChunk / 16][8];    // weight scale per 16 values, per row
  float mw[kChunk / 16][8];     // min per group, per row
  int32_t corr16[kChunk / 16][8];  // -128 * sum of the row's 16 weights
};

template <TensorType T>
TINYSLM_TARGET_AVX2 inline void fill_panel8(const uint8_t* data, int64_t row_bytes,
                                            int64_t r0, int nr, int64_t v0, int64_t nv, Panel8& p) {
  constexpr WeightTraits tr = weight_traits(T);
  alignas(64) int8_t w[kChunk];
  alignas(64) float sw16[kChunk / 16 + 4];
  alignas(64) float mw[kChunk / 16];
  const int64_t nq = nv / 4;
  for (int r = 0; r < 8; ++r) {
    if (r < nr) {
      decode_chunk<T>(data + (r0 + r) * row_bytes, v0, nv, w, sw16, mw);
      for (int64_t q = 0; q < nq; ++q) std::memcpy(&p.w[q][r][0], w + 4 * q, 4);
      for (int64_t g = 0; g < nv / 16; ++g) {
        int32_t sum = 0;
        for (int i = 0; i < 16; ++i) sum += w[16 * g + i];
        p.s16[g][r] = sw16[g];
        p.corr16[g][r] = -128 * sum;
      }
      if (tr.has_min)
        for (int64_t g = 0; g < nv / tr.group; ++g) p.mw[g][r] = mw[g];
    } else {
      for (int64_t q = 0; q < nq; ++q) std::memset(&p.w[q][r][0], 0, 4);
      for (int64_t g = 0; g < nv / 16; ++g) p.s16[g][r] = 0.f, p.corr16[g][r] = 0;
      if (tr.has_min)
        for (int64_t g = 0; g < nv / tr.group; ++g) p.mw[g][r] = 0.f;
    }
  }
}

// acc[c] (8 rows) for 4 tokens (c0 .. c0 + 3 of the tile).
template <int V, int G, bool Min>
TINYSLM_TARGET_AVX2 inline void panel8_kernel(const Panel8& p, int64_t v0, int64_t nv, const TokenTile& t, int c0,
                                              __m256* out) {
  constexpr int C = 4, T = kTileTokens;
  const int32_t* q4 = t.q + v0 / 4 * T + c0;
  const float* dd = t.d16 + v0 / 16 * T + c0;
  const float* mm = (G == 32 ? t.m32 + v0 / 32 * T : t.m16 + v0 / 16 * T) + c0;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[C];
  for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
  for (int64_t g = 0; g < nv / G; ++g) {
    __m256i corr = _mm256_load_si256(reinterpret_cast<const __m256i*>(&p.corr16[g * (G / 16)][0]));
    if (G == 32) corr = _mm256_add_epi32(corr, _mm256_load_si256(reinterpret_cast<const __m256i*>(&p.corr16[2 * g + 1][0])));
    __m256i isum[C];
    for (int c = 0; c < C; ++c) isum[c] = corr;
    const int64_t q0 = g * (G / 4);
#pragma GCC unroll 4
    for (int q = 0; q < G / 4; q += 2) {
      const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(&p.w[q0 + q][0][0]));
      const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(&p.w[q0 + q + 1][0][0]));
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        const __m256i a0 = _mm256_set1_epi32(q4[(q0 + q) * T + c]);
        const __m256i a1 = _mm256_set1_epi32(q4[(q0 + q + 1) * T + c]);
        if constexpr (V == kDotAvx2) {
          const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(a0, w0), _mm256_maddubs_epi16(a1, w1));
          isum[c] = _mm256_add_epi32(isum[c], _mm256_madd_epi16(p16, ones));
        } else {
          isum[c] = dot4_u8s8<V>(dot4_u8s8<V>(isum[c], a0, w0), a1, w1);
        }
      }
    }
    const __m256 s = _mm256_load_ps(&p.s16[g * (G / 16)][0]);
    const float* dg = dd + g * (G / 16) * T;
    for (int c = 0; c < C; ++c) {
      acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[c]), _mm256_mul_ps(s, _mm256_set1_ps(dg[c])), acc[c]);
      if (Min) acc[c] = _mm256_fmadd_ps(_mm256_load_ps(&p.mw[g][0]), _mm256_set1_ps(mm[g * T + c]), acc[c]);
    }
  }
  for (int c = 0; c < C; ++c) out[c] = acc[c];
}

template <int V, int G, bool Min>
TINYSLM_TARGET_AVX2 inline void panel8_tokens(const Panel8& p, int64_t v0, int64_t nv, const TokenTile* tiles, int64_t n,
                                              float* y, int64_t ldy, int64_t r0, int nr, bool first) {
  alignas(32) int32_t mk[8];
  for (int r = 0; r < 8; ++r) mk[r] = r < nr ? -1 : 0;
  const __m256i mask = _mm256_load_si256(reinterpret_cast<const __m256i*>(mk));
  __m256 acc[4];
  for (int64_t i0 = 0; i0 < n; i0 += 4) {
    panel8_kernel<V, G, Min>(p, v0, nv, tiles[i0 / kTileTokens], static_cast<int>(i0 % kTileTokens), acc);
    const int64_t nc = n - i0 < 4 ? n - i0 : 4;
    for (int64_t c = 0; c < nc; ++c) {
      float* yp = y + (i0 + c) * ldy + r0;
      __m256 v = acc[c];
      if (!first) v = _mm256_add_ps(_mm256_maskload_ps(yp, mask), v);
      _mm256_maskstore_ps(yp, mask, v);
    }
  }
}


// The panel GEMM driver of both vector widths: rows in panels of Gemm::kRows, each decoded one
// kChunk of k at a time (Gemm::fill) and multiplied with every token tile by the micro-kernel
// of the type's scale group and min (Gemm::tokens), partial sums added into y.
template <class Gemm, TensorType T>
inline void gemm_panels(const uint8_t* data, int64_t row_bytes, int64_t k, const TokenTile* tiles,
                        int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  constexpr WeightTraits tr = weight_traits(T);
  typename Gemm::Panel p;
  for (int64_t rp = r0; rp < r1; rp += Gemm::kRows) {
    const int nr = static_cast<int>(r1 - rp < Gemm::kRows ? r1 - rp : Gemm::kRows);
    for (int64_t v0 = 0; v0 < k; v0 += kChunk) {
      const int64_t nv = k - v0 < kChunk ? k - v0 : kChunk;
      Gemm::template fill<T>(data, row_bytes, rp, nr, v0, nv, p);
      const bool first = v0 == 0;
      if constexpr (tr.group == 32 && tr.has_min)
        Gemm::template tokens<32, true>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
      else if constexpr (tr.group == 32)
        Gemm::template tokens<32, false>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
      else if constexpr (tr.has_min)
        Gemm::template tokens<16, true>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
      else
        Gemm::template tokens<16, false>(p, v0, nv, tiles, n, y, ldy, rp, nr, first);
    }
  }
}

template <int V>
struct GemmAvx2 {
  using Panel = Panel8;
  static constexpr int kRows = 8;
  template <TensorType T>
  static void fill(const uint8_t* data, int64_t row_bytes, int64_t r0, int nr, int64_t v0, int64_t nv, Panel& p) {
    fill_panel8<T>(data, row_bytes, r0, nr, v0, nv, p);
  }
  template <int G, bool Min>
  static void tokens(const Panel& p, int64_t v0, int64_t nv, const TokenTile* tiles, int64_t n, float* y, int64_t ldy,
                     int64_t r0, int nr, bool first) {
    panel8_tokens<V, G, Min>(p, v0, nv, tiles, n, y, ldy, r0, nr, first);
  }
};


// ---------------------------------------------------------------------------------------
// Float weights: 4 rows x up to 4 tokens per tile, vectors over k, one horizontal sum each.

template <TensorType T>
TINYSLM_TARGET_AVX2 inline __m256 load8_weights(const uint8_t* row, int64_t i) {
  if constexpr (T == TensorType::F32) return _mm256_loadu_ps(reinterpret_cast<const float*>(row + 4 * i));
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i));
  if constexpr (T == TensorType::F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <TensorType T, int R, int C>
TINYSLM_TARGET_AVX2 inline void float_tile_avx2(const uint8_t* const* rows, int64_t k, const float* const* xs, float* out) {
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 xv[C];
    for (int c = 0; c < C; ++c) xv[c] = _mm256_loadu_ps(xs[c] + i);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = load8_weights<T>(rows[r], i);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      float s = hsum256(acc[r][c]);
      for (int64_t j = i; j < k; ++j) s += load_weight_float(T, rows[r], j) * xs[c][j];
      out[r * C + c] = s;
    }
}

template <TensorType T>
struct FloatTileAvx2 {
  template <int R, int C>
  static void run(const uint8_t* const* rows, int64_t k, const float* const* xs, float* out) {
    float_tile_avx2<T, R, C>(rows, k, xs, out);
  }
};

// Float rows, 4 rows x up to 4 tokens per tile (Tile: FloatTileAvx2 / FloatTileAvx512).
template <class Tile, TensorType T>
inline void float_rows_t(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, int64_t n, float* y,
                         int64_t ldy, int64_t r0, int64_t r1) {
  if (n > 4) {
    // Many tokens: block k so a tile of 4 tokens stays in L1 while the rows stream past it;
    // partial sums of each k block are added into y.
    constexpr int64_t kb = 1024;
    const int64_t wsize = T == TensorType::F32 ? 4 : 2;
    for (int64_t k0 = 0; k0 < k; k0 += kb) {
      const int64_t nk = k - k0 < kb ? k - k0 : kb;
      for (int64_t i0 = 0; i0 < n; i0 += 4) {
        const int nc = static_cast<int>(n - i0 < 4 ? n - i0 : 4);
        const float* xs[4];
        for (int c = 0; c < 4; ++c) xs[c] = acts[i0 + (c < nc ? c : 0)].xf + k0;
        for (int64_t r = r0; r < r1; r += 4) {
          const int nr = static_cast<int>(r1 - r < 4 ? r1 - r : 4);
          const uint8_t* rows[4];
          for (int j = 0; j < 4; ++j) rows[j] = data + (r + (j < nr ? j : 0)) * row_bytes + k0 * wsize;
          float out[16];
          switch (nc) {
            case 4: Tile::template run<4, 4>(rows, nk, xs, out); break;
            case 3: Tile::template run<4, 3>(rows, nk, xs, out); break;
            case 2: Tile::template run<4, 2>(rows, nk, xs, out); break;
            default: Tile::template run<4, 1>(rows, nk, xs, out); break;
          }
          for (int j = 0; j < nr; ++j)
            for (int c = 0; c < nc; ++c) {
              float& dst = y[(i0 + c) * ldy + r + j];
              dst = k0 == 0 ? out[j * nc + c] : dst + out[j * nc + c];
            }
        }
      }
    }
    return;
  }
  for (int64_t r = r0; r < r1; r += 4) {
    const int nr = static_cast<int>(r1 - r < 4 ? r1 - r : 4);
    const uint8_t* rows[4];
    for (int j = 0; j < 4; ++j) rows[j] = data + (r + (j < nr ? j : 0)) * row_bytes;
    for (int64_t i0 = 0; i0 < n; i0 += 4) {
      const int nc = static_cast<int>(n - i0 < 4 ? n - i0 : 4);
      const float* xs[4];
      for (int c = 0; c < 4; ++c) xs[c] = acts[i0 + (c < nc ? c : 0)].xf;
      float out[16];
      // Every (row, token) pair is summed the same way whatever the tile shape.
      switch (nc) {
        case 4: Tile::template run<4, 4>(rows, k, xs, out); break;
        case 3: Tile::template run<4, 3>(rows, k, xs, out); break;
        case 2: Tile::template run<4, 2>(rows, k, xs, out); break;
        default: Tile::template run<4, 1>(rows, k, xs, out); break;
      }
      for (int j = 0; j < nr; ++j)
        for (int c = 0; c < nc; ++c) y[(i0 + c) * ldy + r + j] = out[j * nc + c];
    }
  }
}

// ---------------------------------------------------------------------------------------
// Entries of the block-type table (RowsFn): rows [r0, r1) of one weight type for n tokens.

template <int V, TensorType T>
inline void rows_avx2_dot(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, const TokenTile* tiles,
                          int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if constexpr (!block_type(T).integer_dot) {
    float_rows_t<FloatTileAvx2<T>, T>(data, row_bytes, k, acts, n, y, ldy, r0, r1);
  } else {
    constexpr bool fused = T == TensorType::Q4_0 || T == TensorType::Q5_0 || T == TensorType::Q8_0 ||
                           T == TensorType::Q4_K || T == TensorType::Q6_K;
    if (tiles && avx2_gemm_supports(V, T)) {
      gemm_panels<GemmAvx2<V>, T>(data, row_bytes, k, tiles, n, y, ldy, r0, r1);
      return;
    }
    // More than 8 tokens: the decoded-chunk path reuses a decode for 16 tokens.
    if constexpr (fused) {
      if (n <= 8) {
        gemv_fused_avx2_n<V, T>(n, data, row_bytes, k, acts, y, ldy, r0, r1);
        return;
      }
    }
    int_rows_gemv_avx2<V, T>(data, row_bytes, k, acts, n, y, ldy, r0, r1);
  }
}

template <TensorType T>
inline void rows_avx2(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, const TokenTile* tiles,
                      int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  rows_avx2_dot<kDotAvx2, T>(data, row_bytes, k, acts, tiles, n, y, ldy, r0, r1);
}

// AVX-VNNI in its VEX encoding, or through AVX-512's EVEX encoding on CPUs without AVX-VNNI.
template <TensorType T>
inline void rows_avxvnni(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, const TokenTile* tiles,
                         int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  static const bool evex = !detect_cpu_features().avx_vnni;
  if (evex)
    rows_avx2_dot<kDotEvex256, T>(data, row_bytes, k, acts, tiles, n, y, ldy, r0, r1);
  else
    rows_avx2_dot<kDotAvxVnni, T>(data, row_bytes, k, acts, tiles, n, y, ldy, r0, r1);
}


}  // namespace x86
}  // namespace detail
}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif  // TINYSLM_SIMD_X86
// ---- end tinyslm/kernels_avx2.hpp ----

// ---- begin tinyslm/kernels_avx512.hpp ----
// tinyslm kernels, x86-64 AVX-512 path (F/BW/VL/DQ + VNNI), on top of kernels_avx2.hpp (whose
// SIMD decode, activation quantization, token tiles and drivers it shares).
//
//  - GEMV, few tokens (n < kGemmMinTokens), for every integer type but IQ3_S (decoded chunks): fused kernels that unpack
//    each block in registers straight into unsigned bytes u = w + 128 and vpdpbusd them with
//    every token, with the exact integer correction -128 * sum(a) (corr4, precomputed per 4
//    activations). With one token, Q4_0 / Q5_0 / Q4_K rearrange the activation once per call
//    into the order their nibbles unpack to (gemv_row_legacy_prep, gemv_row_q4_k_prep), so a
//    group of values unpacks with one AND / shift / AND.
//  - GEMM (n >= kGemmMinTokens): a panel of 16 rows is decoded and interleaved so one zmm
//    holds 4 consecutive bytes of each of the 16 rows; the micro-kernel broadcasts 4 activation
//    bytes of a token per vpdpbusd (tokens interleaved 8 at a time, TokenTile) and keeps 8
//    tokens x 16 rows of accumulators in registers, so scales are applied once per group of
//    16/32 values per (row, token). Panels are built on the fly from the GGUF bytes (no
//    repacked copy of the weights: no extra memory, no load-time cost).
// Float weights: the 4 x 4 tile of kernels_avx2.hpp with 512-bit vectors.

#include <cstdint>
#include <cstring>


#if defined(TINYSLM_KERNELS_X86)

#define TINYSLM_TARGET_AVX512 \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace detail {
namespace x86 {

// AVX-512 VNNI: 64 values per step on unsigned bytes w + 128, corrected by corr4.
TINYSLM_TARGET_AVX512 inline float dot_chunk_avx512(const int8_t* w, const float* sw16, int64_t nv, const int8_t* aq,
                                                    const int32_t* corr4, const float* da16) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  int64_t v = 0;
  for (; v + 128 <= nv; v += 128) {
    const __m512i u0 = _mm512_xor_si512(_mm512_loadu_si512(w + v), flip);
    const __m512i u1 = _mm512_xor_si512(_mm512_loadu_si512(w + v + 64), flip);
    const __m512i t0 = _mm512_dpbusd_epi32(_mm512_loadu_si512(corr4 + v / 4), u0, _mm512_loadu_si512(aq + v));
    const __m512i t1 = _mm512_dpbusd_epi32(_mm512_loadu_si512(corr4 + v / 4 + 16), u1, _mm512_loadu_si512(aq + v + 64));
    const __m512 s0 = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_mul_ps(_mm_loadu_ps(sw16 + v / 16), _mm_loadu_ps(da16 + v / 16))));
    const __m512 s1 = _mm512_permutexvar_ps(
        idx, _mm512_castps128_ps512(_mm_mul_ps(_mm_loadu_ps(sw16 + v / 16 + 4), _mm_loadu_ps(da16 + v / 16 + 4))));
    acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t0), s0, acc0);
    acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t1), s1, acc1);
  }
  for (; v + 64 <= nv; v += 64) {
    const __m512i u0 = _mm512_xor_si512(_mm512_loadu_si512(w + v), flip);
    const __m512i t0 = _mm512_dpbusd_epi32(_mm512_loadu_si512(corr4 + v / 4), u0, _mm512_loadu_si512(aq + v));
    const __m512 s0 = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_mul_ps(_mm_loadu_ps(sw16 + v / 16), _mm_loadu_ps(da16 + v / 16))));
    acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t0), s0, acc0);
  }
  if (v < nv) {  // 32 values left
    const __m256i u = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + v)), _mm256_set1_epi8(static_cast<char>(0x80)));
    const __m256i t = _mm256_dpbusd_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(corr4 + v / 4)), u,
                                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aq + v)));
    const __m512 s = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_castsi128_ps(_mm_unpacklo_epi64(
                                                    _mm_castps_si128(_mm_mul_ps(_mm_loadu_ps(sw16 + v / 16), _mm_loadu_ps(da16 + v / 16))),
                                                    _mm_setzero_si128()))));
    acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi256_si512(t)), s, acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}


template <TensorType T>
TINYSLM_TARGET_AVX512 inline void int_rows_gemv_avx512(const uint8_t* data, int64_t row_bytes, int64_t k,
                                                       const ActRow* acts, int64_t n, float* y, int64_t ldy, int64_t r0,
                                                       int64_t r1) {
  TINYSLM_X86_GEMV_BODY(dot_chunk_avx512(w, sw16, nv, a.qs + v0, a.corr4 + v0 / 4, a.da16 + v0 / 16))
}
#undef TINYSLM_X86_GEMV_BODY

// ---------------------------------------------------------------------------------------
// AVX-512 VNNI fused GEMV for the common types: each block is unpacked in registers straight
// into unsigned bytes u = w + 128 (no trip through memory), vpdpbusd'd against up to N
// tokens, and scaled. Two legacy blocks (64 values) or one K super-block per step.

// 64 bytes u = w + 128 of two consecutive legacy blocks (natural order). `single` leaves
// the second block's bytes unspecified (its scale is forced to zero by the caller).
template <TensorType T>
TINYSLM_TARGET_AVX512 inline __m512i legacy_pair_u8(const uint8_t* b0, const uint8_t* b1) {
  if constexpr (T == TensorType::Q8_0) {
    const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 2))),
                                         _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b1 + 2)), 1);
    return _mm512_xor_si512(z, _mm512_set1_epi8(static_cast<char>(0x80)));
  } else {
    constexpr int off = T == TensorType::Q4_1 ? 4 : T == TensorType::Q5_0 ? 6 : T == TensorType::Q5_1 ? 8 : 2;
    // [b0 qs, b0 qs, b1 qs, b1 qs]: the second copy of each block's bytes is shifted right
    // by 4 (a masked shift), so one AND leaves [b0 0-15, b0 16-31, b1 0-15, b1 16-31].
    const __m256i x0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + off)));
    const __m256i x1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b1 + off)));
    const __m512i x = _mm512_inserti64x4(_mm512_castsi256_si512(x0), x1, 1);
    __m512i z = _mm512_and_si512(_mm512_mask_srli_epi16(x, static_cast<__mmask32>(0xFF00FF00u), x, 4), _mm512_set1_epi8(0x0F));
    if constexpr (T == TensorType::Q5_0 || T == TensorType::Q5_1) {
      uint32_t h0, h1;
      std::memcpy(&h0, b0 + off - 4, 4);
      std::memcpy(&h1, b1 + off - 4, 4);
      const __mmask64 bits = static_cast<__mmask64>(h0) | (static_cast<__mmask64>(h1) << 32);
      z = _mm512_or_si512(z, _mm512_and_si512(_mm512_movm_epi8(bits), _mm512_set1_epi8(0x10)));
    }
    if constexpr (T == TensorType::Q4_0) return _mm512_add_epi8(z, _mm512_set1_epi8(120));
    if constexpr (T == TensorType::Q5_0) return _mm512_add_epi8(z, _mm512_set1_epi8(112));
    if constexpr (T == TensorType::IQ4_NL) {
      const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
      return _mm512_xor_si512(_mm512_shuffle_epi8(table, z), _mm512_set1_epi8(static_cast<char>(0x80)));
    }
    return _mm512_or_si512(z, _mm512_set1_epi8(static_cast<char>(0x80)));  // Q4_1, Q5_1: w >= 0
  }
}

template <TensorType T, int N>
TINYSLM_TARGET_AVX512 inline void gemv_row_legacy(const uint8_t* row, int64_t k, const ActRow* acts, float* out) {
  constexpr bool has_min = T == TensorType::Q4_1 || T == TensorType::Q5_1;
  constexpr int bb = T == TensorType::Q8_0 ? 34 : T == TensorType::Q4_1 ? 20 : T == TensorType::Q5_0 ? 22
                   : T == TensorType::Q5_1 ? 24 : 18;
  const int64_t nb = k / 32;
  const __m512i half_idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  __m512 acc[N];
  __m128 accm[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm512_setzero_ps(), accm[i] = _mm_setzero_ps();
  int64_t b = 0;
  // Four blocks per step: one scale computation for two vectors of 64 values.
  const __m512i idx01 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i idx23 = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  for (; b + 4 <= nb; b += 4) {
    const uint8_t* p = row + b * bb;
    const __m512i u01 = legacy_pair_u8<T>(p, p + bb);
    const __m512i u23 = legacy_pair_u8<T>(p + 2 * bb, p + 3 * bb);
    uint16_t h[4];
    for (int j = 0; j < 4; ++j) std::memcpy(&h[j], p + j * bb, 2);
    uint64_t hw;
    std::memcpy(&hw, h, 8);
    const __m128 dw = _mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(hw)));
    __m128 mw = _mm_setzero_ps();
    if constexpr (has_min) {
      for (int j = 0; j < 4; ++j) std::memcpy(&h[j], p + j * bb + 2, 2);
      std::memcpy(&hw, h, 8);
      mw = _mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(hw)));
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; ++i) {
      const ActRow& a = acts[i];
      const __m512i t01 = _mm512_dpbusd_epi32(_mm512_loadu_si512(a.corr4 + b * 8), u01, _mm512_loadu_si512(a.qs + b * 32));
      const __m512i t23 = _mm512_dpbusd_epi32(_mm512_loadu_si512(a.corr4 + b * 8 + 16), u23, _mm512_loadu_si512(a.qs + b * 32 + 64));
      const __m512 s4 = _mm512_castps128_ps512(_mm_mul_ps(dw, _mm_loadu_ps(a.da32 + b)));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t01), _mm512_permutexvar_ps(idx01, s4), acc[i]);
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t23), _mm512_permutexvar_ps(idx23, s4), acc[i]);
      if constexpr (has_min) accm[i] = _mm_fmadd_ps(mw, _mm_loadu_ps(a.m32 + b), accm[i]);
    }
  }
  for (; b < nb; b += 2) {
    const bool pair = b + 1 < nb;
    const uint8_t* b0 = row + b * bb;
    const uint8_t* b1 = pair ? b0 + bb : b0;
    const __m512i u = legacy_pair_u8<T>(b0, b1);
    uint16_t h0, h1;
    std::memcpy(&h0, b0, 2);
    std::memcpy(&h1, b1, 2);
    const __m128 dw = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(h0 | (pair ? static_cast<uint32_t>(h1) << 16 : 0u))));
    __m128 mw = _mm_setzero_ps();
    if constexpr (has_min) {
      std::memcpy(&h0, b0 + 2, 2);
      std::memcpy(&h1, b1 + 2, 2);
      mw = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(h0 | (pair ? static_cast<uint32_t>(h1) << 16 : 0u))));
    }
    const __mmask16 m16 = pair ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>(0x00FF);
#pragma GCC unroll 4
    for (int i = 0; i < N; ++i) {
      const ActRow& a = acts[i];
      const __m512i t = _mm512_dpbusd_epi32(_mm512_maskz_loadu_epi32(m16, a.corr4 + b * 8), u,
                                            _mm512_maskz_loadu_epi32(m16, a.qs + b * 32));
      const __m128 da = _mm_setr_ps(a.da16[2 * b], pair ? a.da16[2 * b + 2] : 0.f, 0.f, 0.f);
      const __m512 sc = _mm512_permutexvar_ps(half_idx, _mm512_castps128_ps512(_mm_mul_ps(dw, da)));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sc, acc[i]);
      if constexpr (has_min)
        accm[i] = _mm_fmadd_ps(mw, _mm_setr_ps(a.m32[b], pair ? a.m32[b + 1] : 0.f, 0.f, 0.f), accm[i]);
    }
  }
  for (int i = 0; i < N; ++i) {
    float r = _mm512_reduce_add_ps(acc[i]);
    if constexpr (has_min) r += hsum256(_mm256_zextps128_ps256(accm[i]));
    out[i] = r;
  }
}

// One Q6_K super-block as unsigned bytes u = w + 128 (four vectors of 64 values) and its
// integer sub-block scales spread over the int32 lanes of each vector.
TINYSLM_TARGET_AVX512 __attribute__((always_inline)) inline void unpack_q6_k_u8(const BlockQ6_K* b6, __m512i* u,
                                                                               __m512i* scl) {
  const __m512i scv = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b6->scales)));
  // Per half h (128 values): the 64 ql bytes give values [0, 64) in their low nibbles and
  // [64, 128) in their high ones, already in order; the 32 qh bytes are broadcast to both
  // 256-bit halves and the upper copy shifted right by 2, so bits 0-1 / 4-5 of each byte
  // are the high bits of the low / high nibble's value.
  const __m512i m4z = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
  const __m512i off = _mm512_set1_epi8(96);  // u = (q - 32) + 128
  for (int h = 0; h < 2; ++h) {
    const __m512i l = _mm512_loadu_si512(b6->ql + 64 * h);
    const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b6->qh + 32 * h)));
    const __m512i qs = _mm512_mask_srli_epi16(q, static_cast<__mmask32>(0xFFFF0000u), q, 2);
    const __m512i lo = _mm512_or_si512(_mm512_and_si512(l, m4z), _mm512_and_si512(_mm512_slli_epi16(qs, 4), m30));
    const __m512i hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4z), _mm512_and_si512(qs, m30));
    u[2 * h] = _mm512_add_epi8(lo, off);
    u[2 * h + 1] = _mm512_add_epi8(hi, off);
  }
  for (int j = 0; j < 4; ++j) {
    const int g = 4 * j;
    scl[j] = _mm512_permutexvar_epi32(_mm512_setr_epi32(g, g, g, g, g + 1, g + 1, g + 1, g + 1, g + 2, g + 2, g + 2, g + 2,
                                                        g + 3, g + 3, g + 3, g + 3),
                                      scv);
  }
}

// Q4_K / Q5_K / Q6_K: integer sub-block scales applied with vpmulld, one float scale per
// super-block (as llama.cpp does), mins through the activation's sums of 16.
template <TensorType T, int N>
TINYSLM_TARGET_AVX512 inline void gemv_row_k(const uint8_t* row, int64_t k, const ActRow* acts, float* out) {
  const int64_t nb = k / 256;
  __m512 acc[N];
  __m256 accm[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm512_setzero_ps(), accm[i] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t b = 0; b < nb; ++b) {
    __m512i u[4], scl[4];
    float d;
    __m256 mnf = _mm256_setzero_ps();  // -dmin * min of each sub-block of 32
    if constexpr (T == TensorType::Q4_K || T == TensorType::Q5_K) {
      constexpr bool q5 = T == TensorType::Q5_K;
      const auto* b4 = reinterpret_cast<const BlockQ4_K*>(row + b * sizeof(BlockQ4_K));
      const auto* b5 = reinterpret_cast<const BlockQ5_K*>(row + b * sizeof(BlockQ5_K));
      d = f16_scalar(q5 ? b5->d : b4->d);
      const float dmin = f16_scalar(q5 ? b5->dmin : b4->dmin);
      // The 12 scale bytes as three words: 6-bit scales and mins of sub-blocks 0-3 sit in
      // words 0 and 1, those of 4-7 are split between word 2 (low 4 bits) and the top two
      // bits of words 0 and 1.
      uint32_t w3[3];
      std::memcpy(w3, q5 ? b5->scales : b4->scales, 12);
      const uint32_t sc_lo = w3[0] & 0x3f3f3f3fu, mn_lo = w3[1] & 0x3f3f3f3fu;
      const uint32_t sc_hi = (w3[2] & 0x0f0f0f0fu) | (((w3[0] >> 6) & 0x03030303u) << 4);
      const uint32_t mn_hi = ((w3[2] >> 4) & 0x0f0f0f0fu) | (((w3[1] >> 6) & 0x03030303u) << 4);
      const __m128i sc8 = _mm_setr_epi32(static_cast<int>(sc_lo), static_cast<int>(sc_hi), 0, 0);
      const __m128i mn8 = _mm_setr_epi32(static_cast<int>(mn_lo), static_cast<int>(mn_hi), 0, 0);
      const __m512i scv = _mm512_cvtepu8_epi32(sc8);
      mnf = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mn8)), _mm256_set1_ps(-dmin));
      const uint8_t* qs = q5 ? b5->qs : b4->qs;
      const __m256i hb = q5 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b5->qh)) : _mm256_setzero_si256();
      for (int c = 0; c < 4; ++c) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
        __m256i lo = _mm256_and_si256(x, m4), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
        if constexpr (q5) {
          const __m256i one = _mm256_set1_epi8(1);
          lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c)), one), 4));
          hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c + 1)), one), 4));
        }
        u[c] = _mm512_or_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), _mm512_set1_epi8(static_cast<char>(0x80)));
        scl[c] = _mm512_permutexvar_epi32(_mm512_setr_epi32(2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c + 1,
                                                            2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1),
                                          scv);
      }
    } else {  // Q6_K
      const auto* b6 = reinterpret_cast<const BlockQ6_K*>(row + b * sizeof(BlockQ6_K));
      d = f16_scalar(b6->d);
      unpack_q6_k_u8(b6, u, scl);
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; ++i) {
      const ActRow& a = acts[i];
      const int64_t v = b * 256;
      __m512i isum = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m512i t = _mm512_dpbusd_epi32(_mm512_loadu_si512(a.corr4 + (v + 64 * j) / 4), u[j], _mm512_loadu_si512(a.qs + v + 64 * j));
        isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(t, scl[j]));
      }
      const float da = a.da16[v / 16];
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * da), acc[i]);
      if constexpr (T != TensorType::Q6_K) accm[i] = _mm256_fmadd_ps(mnf, _mm256_loadu_ps(a.m32 + v / 32), accm[i]);
    }
  }
  for (int i = 0; i < N; ++i) out[i] = _mm512_reduce_add_ps(acc[i]) + hsum256(accm[i]);
}

// Q2_K / Q3_K: 2-bit codes (Q3_K: plus the hmask bit, minus 4), 16 sub-blocks of 16 with
// integer scales (Q2_K: and mins) applied like Q6_K's.
template <TensorType T, int N>
TINYSLM_TARGET_AVX512 inline void gemv_row_k23(const uint8_t* row, int64_t k, const ActRow* acts, float* out) {
  constexpr bool q3 = T == TensorType::Q3_K;
  const int64_t nb = k / 256;
  __m512 acc[N], accm[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm512_setzero_ps(), accm[i] = _mm512_setzero_ps();
  const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
  for (int64_t b = 0; b < nb; ++b) {
    const auto* b2 = reinterpret_cast<const BlockQ2_K*>(row + b * sizeof(BlockQ2_K));
    const auto* b3 = reinterpret_cast<const BlockQ3_K*>(row + b * sizeof(BlockQ3_K));
    const uint8_t* qs = q3 ? b3->qs : b2->qs;
    __m512i u[4], scl[4];
    __m512i scv;
    __m512 mnf = _mm512_setzero_ps();
    float d;
    if constexpr (q3) {
      d = f16_scalar(b3->d);
      uint32_t a[3];
      std::memcpy(a, b3->scales, 12);
      const uint32_t lo4 = 0x0f0f0f0fu, lo2 = 0x03030303u;
      const uint32_t s0 = (a[0] & lo4) | (((a[2] >> 0) & lo2) << 4), s1 = (a[1] & lo4) | (((a[2] >> 2) & lo2) << 4);
      const uint32_t s2 = ((a[0] >> 4) & lo4) | (((a[2] >> 4) & lo2) << 4);
      const uint32_t s3 = ((a[1] >> 4) & lo4) | (((a[2] >> 6) & lo2) << 4);
      const __m128i sc8 = _mm_setr_epi32(static_cast<int>(s0), static_cast<int>(s1), static_cast<int>(s2), static_cast<int>(s3));
      scv = _mm512_sub_epi32(_mm512_cvtepu8_epi32(sc8), _mm512_set1_epi32(32));
    } else {
      d = f16_scalar(b2->d);
      const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b2->scales));
      scv = _mm512_cvtepu8_epi32(_mm_and_si128(sc8, _mm_set1_epi8(0x0F)));
      mnf = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(0x0F)))),
                          _mm512_set1_ps(-f16_scalar(b2->dmin)));
    }
    const __m256i hm = q3 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b3->hmask)) : _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
      const int h = j / 2;
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * h));
      __m256i v[2];
      for (int e = 0; e < 2; ++e) {
        const int jj = 2 * (j % 2) + e;
        v[e] = _mm256_and_si256(_mm256_srl_epi16(x, _mm_cvtsi32_si128(2 * jj)), m3);
        if constexpr (q3) {
          const __m256i hb = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(4 * h + jj)), one);
          v[e] = _mm256_add_epi8(v[e], _mm256_slli_epi16(hb, 2));  // code + 4 * bit, in 0..7
        }
      }
      // u = w + 128: Q3_K w = code + 4 * bit - 4; Q2_K w = code.
      u[j] = _mm512_add_epi8(_mm512_inserti64x4(_mm512_castsi256_si512(v[0]), v[1], 1), _mm512_set1_epi8(q3 ? 124 : static_cast<char>(128)));
      const int g = 4 * j;
      scl[j] = _mm512_permutexvar_epi32(
          _mm512_setr_epi32(g, g, g, g, g + 1, g + 1, g + 1, g + 1, g + 2, g + 2, g + 2, g + 2, g + 3, g + 3, g + 3, g + 3), scv);
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; ++i) {
      const ActRow& a = acts[i];
      const int64_t v0 = b * 256;
      __m512i isum = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m512i t = _mm512_dpbusd_epi32(_mm512_loadu_si512(a.corr4 + (v0 + 64 * j) / 4), u[j], _mm512_loadu_si512(a.qs + v0 + 64 * j));
        isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(t, scl[j]));
      }
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * a.da16[v0 / 16]), acc[i]);
      if constexpr (!q3) accm[i] = _mm512_fmadd_ps(mnf, _mm512_loadu_ps(a.m16 + v0 / 16), accm[i]);
    }
  }
  for (int i = 0; i < N; ++i) out[i] = _mm512_reduce_add_ps(acc[i]) + (q3 ? 0.f : _mm512_reduce_add_ps(accm[i]));
}

// Q4_0 / Q5_0 decode (one token), the activation rearranged once per call so each group of
// four blocks unpacks with one word permute and one AND / shift / AND:
//  - the four 16-byte qs fields are gathered into one zmm (vpermt2w over two overlapping
//    64-byte loads covering the group), so the low nibbles give [b0 v0-15, b1 v0-15, b2 ..,
//    b3 ..] and the high nibbles [b0 v16-31, b1 .., b2 .., b3 ..];
//  - the activation is stored in the same two orders (lo, hi), so both vpdpbusd land in the
//    same lanes: lane j holds 8 products of block j / 4, and one scale vector serves both;
//  - the code q (Q4_0 0..15, Q5_0 0..31) enters vpdpbusd unsigned and w = q - off (8, 16) is
//    restored exactly by starting each lane at -off * (sum of its 8 activations);
//  - the fp16 scales (and Q5_0's high-bit words) come out of the same loads with one vpermw.
inline constexpr int64_t kPrepMax = 16384;  // longest row these paths take (values)
struct alignas(64) LegacyPrep {
  int8_t q[kPrepMax];            // per group of 128: lo order (64 bytes), then hi order
  int32_t corr[kPrepMax / 8];    // per group: 16 lanes of -off * sum
  float da[kPrepMax / 32];       // activation scale per block
};

template <int Shift>  // off = 1 << Shift
TINYSLM_TARGET_AVX512 inline void prepare_legacy(const ActRow& a, int64_t k, LegacyPrep& p) {
  const __m512i lo_idx = _mm512_setr_epi64(0, 1, 4, 5, 8, 9, 12, 13);
  const __m512i hi_idx = _mm512_setr_epi64(2, 3, 6, 7, 10, 11, 14, 15);
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t g = 0; g < k / 128; ++g) {
    const __m512i a01 = _mm512_loadu_si512(a.qs + 128 * g), a23 = _mm512_loadu_si512(a.qs + 128 * g + 64);
    const __m512i lo = _mm512_permutex2var_epi64(a01, lo_idx, a23), hi = _mm512_permutex2var_epi64(a01, hi_idx, a23);
    _mm512_store_si512(p.q + 128 * g, lo);
    _mm512_store_si512(p.q + 128 * g + 64, hi);
    const __m512i s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, lo), ones, hi);
    _mm512_store_si512(p.corr + 16 * g, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(s, Shift)));
  }
  for (int64_t b = 0; b < k / 32; ++b) p.da[b] = a.da32[b];
}

// Word index w of a group, read from A = bytes [0, 64) or B = bytes [Bo, Bo + 64).
template <int Bo>
constexpr int group_word(int w) { return w < 32 ? w : 32 + w - Bo / 2; }

template <TensorType T>
TINYSLM_TARGET_AVX512 inline float gemv_row_legacy_prep(const uint8_t* row, int64_t k, const LegacyPrep& p, const ActRow& a) {
  constexpr bool q5 = T == TensorType::Q5_0;
  constexpr int bb = q5 ? 22 : 18, qw = q5 ? 3 : 1, bw = bb / 2;  // qs word offset, block words
  constexpr int Bo = 4 * bb - 64;                                   // second load: the group's last 64 bytes
  auto pair = [](int lo_w, int hi_w) { return (group_word<Bo>(hi_w) << 16) | group_word<Bo>(lo_w); };
  const __m512i qs_idx = _mm512_setr_epi32(
      pair(qw + 0, qw + 1), pair(qw + 2, qw + 3), pair(qw + 4, qw + 5), pair(qw + 6, qw + 7),
      pair(bw + qw + 0, bw + qw + 1), pair(bw + qw + 2, bw + qw + 3), pair(bw + qw + 4, bw + qw + 5), pair(bw + qw + 6, bw + qw + 7),
      pair(2 * bw + qw + 0, 2 * bw + qw + 1), pair(2 * bw + qw + 2, 2 * bw + qw + 3), pair(2 * bw + qw + 4, 2 * bw + qw + 5),
      pair(2 * bw + qw + 6, 2 * bw + qw + 7), pair(3 * bw + qw + 0, 3 * bw + qw + 1), pair(3 * bw + qw + 2, 3 * bw + qw + 3),
      pair(3 * bw + qw + 4, 3 * bw + qw + 5), pair(3 * bw + qw + 6, 3 * bw + qw + 7));
  // Words 0-3: the four scales; Q5_0 words 4-7 / 8-11: low / high halves of the four qh.
  const __m512i hdr_idx = _mm512_setr_epi32(pair(0, bw), pair(2 * bw, 3 * bw), pair(1, bw + 1), pair(2 * bw + 1, 3 * bw + 1),
                                            pair(2, bw + 2), pair(2 * bw + 2, 3 * bw + 2), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i lane_idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  __m512 acc = _mm512_setzero_ps();
  const int64_t nb = k / 32;
  int64_t b = 0;
#pragma GCC unroll 2
  for (; b + 4 <= nb; b += 4) {
    const uint8_t* g = row + b * bb;
    const __m512i A = _mm512_loadu_si512(g), B = _mm512_loadu_si512(g + Bo);
    const __m512i z = _mm512_permutex2var_epi16(A, qs_idx, B);
    __m512i lo = _mm512_and_si512(z, m4), hi = _mm512_and_si512(_mm512_srli_epi16(z, 4), m4);
    // Q4_0's scales all sit in A: a one-source permute is cheaper.
    const __m512i hdr = q5 ? _mm512_permutex2var_epi16(A, hdr_idx, B) : _mm512_permutexvar_epi16(hdr_idx, A);
    if constexpr (q5) {
      const __m256i h = _mm512_castsi512_si256(hdr);
      const __m512i bit = _mm512_set1_epi8(0x10);
      lo = _mm512_mask_add_epi8(lo, _cvtu64_mask64(static_cast<uint64_t>(_mm256_extract_epi64(h, 1))), lo, bit);
      hi = _mm512_mask_add_epi8(hi, _cvtu64_mask64(static_cast<uint64_t>(_mm256_extract_epi64(h, 2))), hi, bit);
    }
    const int64_t gi = b / 4;
    __m512i t = _mm512_dpbusd_epi32(_mm512_load_si512(p.corr + 16 * gi), lo, _mm512_load_si512(p.q + 128 * gi));
    t = _mm512_dpbusd_epi32(t, hi, _mm512_load_si512(p.q + 128 * gi + 64));
    const __m128 dw = _mm_cvtph_ps(_mm512_castsi512_si128(hdr));
    const __m512 s4 = _mm512_castps128_ps512(_mm_mul_ps(dw, _mm_loadu_ps(p.da + b)));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_permutexvar_ps(lane_idx, s4), acc);
  }
  const __m512i half_idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  for (; b < nb; b += 2) {  // the last 1-3 blocks: natural order, as gemv_row_legacy
    const bool two = b + 1 < nb;
    const uint8_t* b0 = row + b * bb;
    const uint8_t* b1 = two ? b0 + bb : b0;
    const __m512i u = legacy_pair_u8<T>(b0, b1);
    uint16_t h0, h1;
    std::memcpy(&h0, b0, 2);
    std::memcpy(&h1, b1, 2);
    const __m128 dw = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(h0 | (two ? static_cast<uint32_t>(h1) << 16 : 0u))));
    const __mmask16 m16 = two ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>(0x00FF);
    const __m512i t = _mm512_dpbusd_epi32(_mm512_maskz_loadu_epi32(m16, a.corr4 + b * 8), u,
                                          _mm512_maskz_loadu_epi32(m16, a.qs + b * 32));
    const __m128 da = _mm_setr_ps(a.da16[2 * b], two ? a.da16[2 * b + 2] : 0.f, 0.f, 0.f);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_permutexvar_ps(half_idx, _mm512_castps128_ps512(_mm_mul_ps(dw, da))), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// Q4_K decode (one token): each 64 qs bytes hold values [0, 32) + [64, 96) of their 128 in
// the low nibbles and [32, 64) + [96, 128) in the high ones, so the activation is rearranged
// once per call into that order and one AND / shift / AND unpacks 128 values. The code q in
// 0..15 is the weight itself (the min is separate), so vpdpbusd needs no correction.
TINYSLM_TARGET_AVX512 inline void prepare_q4_k(const ActRow& a, int64_t k, LegacyPrep& p) {
  const __m512i lo_idx = _mm512_setr_epi64(0, 1, 2, 3, 8, 9, 10, 11);
  const __m512i hi_idx = _mm512_setr_epi64(4, 5, 6, 7, 12, 13, 14, 15);
  for (int64_t g = 0; g < k / 128; ++g) {
    const __m512i a01 = _mm512_loadu_si512(a.qs + 128 * g), a23 = _mm512_loadu_si512(a.qs + 128 * g + 64);
    _mm512_store_si512(p.q + 128 * g, _mm512_permutex2var_epi64(a01, lo_idx, a23));
    _mm512_store_si512(p.q + 128 * g + 64, _mm512_permutex2var_epi64(a01, hi_idx, a23));
  }
}

// Inlined into the row loop, and its super-block loop unrolled by two (measured side by side
// from memory, 2 MB pages, 1 thread: rows of 2048 values 18.8 -> 21.8 GB/s, of 1024 19 -> 21.7).
TINYSLM_TARGET_AVX512 __attribute__((always_inline)) inline float gemv_row_q4_k_prep(const uint8_t* row, int64_t k, const LegacyPrep& p, const ActRow& a) {
  const int64_t nb = k / 256;
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  // Sub-block (of 32) of each lane: low nibbles of the first 64 bytes cover sub-blocks 0 and
  // 2, high nibbles 1 and 3; the second 64 bytes 4, 6 and 5, 7.
  const __m512i i0 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
  const __m512i i1 = _mm512_setr_epi32(1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m512i i2 = _mm512_setr_epi32(4, 4, 4, 4, 4, 4, 4, 4, 6, 6, 6, 6, 6, 6, 6, 6);
  const __m512i i3 = _mm512_setr_epi32(5, 5, 5, 5, 5, 5, 5, 5, 7, 7, 7, 7, 7, 7, 7, 7);
  __m512 acc = _mm512_setzero_ps();
  __m256 accm = _mm256_setzero_ps();
#pragma GCC unroll 2
  for (int64_t b = 0; b < nb; ++b) {
    const auto* blk = reinterpret_cast<const BlockQ4_K*>(row + b * sizeof(BlockQ4_K));
    const float d = f16_scalar(blk->d), dmin = f16_scalar(blk->dmin);
    uint32_t w3[3];
    std::memcpy(w3, blk->scales, 12);  // the 6-bit scales / mins, as in gemv_row_k
    const uint32_t sc_lo = w3[0] & 0x3f3f3f3fu, mn_lo = w3[1] & 0x3f3f3f3fu;
    const uint32_t sc_hi = (w3[2] & 0x0f0f0f0fu) | (((w3[0] >> 6) & 0x03030303u) << 4);
    const uint32_t mn_hi = ((w3[2] >> 4) & 0x0f0f0f0fu) | (((w3[1] >> 6) & 0x03030303u) << 4);
    const __m128i sc8 = _mm_setr_epi32(static_cast<int>(sc_lo), static_cast<int>(sc_hi), 0, 0);
    const __m512i scw = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(sc8));
    const __m256 mnf = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_setr_epi32(static_cast<int>(mn_lo), static_cast<int>(mn_hi), 0, 0))),
                                     _mm256_set1_ps(-dmin));
    const __m512i z0 = _mm512_loadu_si512(blk->qs), z1 = _mm512_loadu_si512(blk->qs + 64);
    const int8_t* q = p.q + 256 * b;
    const __m512i zero = _mm512_setzero_si512();
    const __m512i t0 = _mm512_dpbusd_epi32(zero, _mm512_and_si512(z0, m4), _mm512_load_si512(q));
    const __m512i t1 = _mm512_dpbusd_epi32(zero, _mm512_and_si512(_mm512_srli_epi16(z0, 4), m4), _mm512_load_si512(q + 64));
    const __m512i t2 = _mm512_dpbusd_epi32(zero, _mm512_and_si512(z1, m4), _mm512_load_si512(q + 128));
    const __m512i t3 = _mm512_dpbusd_epi32(zero, _mm512_and_si512(_mm512_srli_epi16(z1, 4), m4), _mm512_load_si512(q + 192));
    // Each lane of t is at most 4 * 15 * 127 (int16): vpdpwssd scales it and adds.
    __m512i isum = _mm512_dpwssd_epi32(zero, t0, _mm512_maskz_permutexvar_epi16(0x55555555u, i0, scw));
    isum = _mm512_dpwssd_epi32(isum, t1, _mm512_maskz_permutexvar_epi16(0x55555555u, i1, scw));
    isum = _mm512_dpwssd_epi32(isum, t2, _mm512_maskz_permutexvar_epi16(0x55555555u, i2, scw));
    isum = _mm512_dpwssd_epi32(isum, t3, _mm512_maskz_permutexvar_epi16(0x55555555u, i3, scw));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * a.da16[b * 16]), acc);
    accm = _mm256_fmadd_ps(mnf, _mm256_loadu_ps(a.m32 + b * 8), accm);
  }
  return _mm512_reduce_add_ps(acc) + hsum256(accm);
}

// Q6_K decode (one token): the codes q in 0..63 enter vpdpbusd unsigned (no offset), so
// each lane's sum of 4 products stays within int16 (4 * 63 * 127); vpdpwssd then multiplies
// the lanes by their sub-block scales (in the low word of each dword, high word zero) and
// adds. The -32 offset comes out per sub-block of 16 through the activation's sums, kept
// negated as int16 once per call: isum starts at 32 * sum(sc * -s16).
struct alignas(64) Q6Prep {
  int16_t s16[kPrepMax / 16];  // minus the activation's sum of each 16 values
};

// Inlined into the row loop and unrolled by two, like gemv_row_q4_k_prep (rows of 2048
// values: 23.4 -> 25.8 GB/s from memory at 1 thread).
TINYSLM_TARGET_AVX512 __attribute__((always_inline)) inline float gemv_row_q6_k_prep(const uint8_t* row, int64_t k, const Q6Prep& p, const ActRow& a) {
  const int64_t nb = k / 256;
  const __m512i m4 = _mm512_set1_epi8(0x0F), m33 = _mm512_set1_epi8(0x33);
  const __m512i idx0 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512i idx1 = _mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
  const __m512i idx2 = _mm512_setr_epi32(8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11);
  const __m512i idx3 = _mm512_setr_epi32(12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15);
  const __mmask32 even = 0x55555555u;
  __m512 acc = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int64_t b = 0; b < nb; ++b) {
    const auto* b6 = reinterpret_cast<const BlockQ6_K*>(row + b * sizeof(BlockQ6_K));
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b6->scales)));
    const __m512i scw = _mm512_castsi256_si512(sc16);
    const int64_t v = b * 256;
    // -32 * sum over sub-blocks of sc * s16, two sub-blocks per lane of 8.
    const __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(sc16, _mm256_load_si256(reinterpret_cast<const __m256i*>(p.s16 + v / 16))), 5);
    __m512i isum = _mm512_zextsi256_si512(corr);
    const __m512i l0 = _mm512_loadu_si512(b6->ql), l1 = _mm512_loadu_si512(b6->ql + 64);
    const __m512i q0 = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b6->qh)));
    const __m512i q1 = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b6->qh + 32)));
    // Keep bits 0-1 and 4-5 of each qh byte (upper copy shifted by 2 first); one bitwise
    // select (vpternlogd 0xE4: C ? A : B with C = 0x0F) then joins a nibble of ql with its two
    // high bits, and whatever a 16-bit shift carries across bytes lands where ql is taken.
    const __m512i qs0 = _mm512_and_si512(_mm512_mask_srli_epi16(q0, static_cast<__mmask32>(0xFFFF0000u), q0, 2), m33);
    const __m512i qs1 = _mm512_and_si512(_mm512_mask_srli_epi16(q1, static_cast<__mmask32>(0xFFFF0000u), q1, 2), m33);
    const __m512i u0 = _mm512_ternarylogic_epi32(l0, _mm512_slli_epi16(qs0, 4), m4, 0xE4);
    const __m512i u1 = _mm512_ternarylogic_epi32(_mm512_srli_epi16(l0, 4), qs0, m4, 0xE4);
    const __m512i u2 = _mm512_ternarylogic_epi32(l1, _mm512_slli_epi16(qs1, 4), m4, 0xE4);
    const __m512i u3 = _mm512_ternarylogic_epi32(_mm512_srli_epi16(l1, 4), qs1, m4, 0xE4);
    const __m512i zero = _mm512_setzero_si512();
    const __m512i t0 = _mm512_dpbusd_epi32(zero, u0, _mm512_loadu_si512(a.qs + v));
    const __m512i t1 = _mm512_dpbusd_epi32(zero, u1, _mm512_loadu_si512(a.qs + v + 64));
    const __m512i t2 = _mm512_dpbusd_epi32(zero, u2, _mm512_loadu_si512(a.qs + v + 128));
    const __m512i t3 = _mm512_dpbusd_epi32(zero, u3, _mm512_loadu_si512(a.qs + v + 192));
    isum = _mm512_dpwssd_epi32(isum, t0, _mm512_maskz_permutexvar_epi16(even, idx0, scw));
    isum = _mm512_dpwssd_epi32(isum, t1, _mm512_maskz_permutexvar_epi16(even, idx1, scw));
    isum = _mm512_dpwssd_epi32(isum, t2, _mm512_maskz_permutexvar_epi16(even, idx2, scw));
    isum = _mm512_dpwssd_epi32(isum, t3, _mm512_maskz_permutexvar_epi16(even, idx3, scw));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(f16_scalar(b6->d) * a.da16[v / 16]), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// IQ4_XS, few tokens: two sub-blocks (64 values) per zmm. Their 32 bytes of nibbles are laid
// out as [first, first, second, second] in the four 128-bit lanes, shifted by 0 / 4 per lane
// so each lane holds 16 codes, then looked up in the level table biased by +128 (unsigned
// bytes for vpdpbusd, whose +128 is taken out by corr4).
template <int N>
TINYSLM_TARGET_AVX512 inline void gemv_row_iq4_xs(const uint8_t* row, int64_t k, const ActRow* acts, float* out) {
  const auto* blocks = reinterpret_cast<const BlockIQ4_XS*>(row);
  const __m512i table = _mm512_broadcast_i32x4(
      _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)), _mm_set1_epi8(static_cast<char>(0x80))));
  const long long by4 = 0x0004000400040004;
  const __m512i shifts = _mm512_set_epi64(by4, by4, 0, 0, by4, by4, 0, 0);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  __m512 acc[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < k / kBlockK; ++b) {
    const BlockIQ4_XS& blk = blocks[b];
    const float d = f16_scalar(blk.d);
    for (int j = 0; j < 4; ++j) {
      const __m512i x = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 32 * j)));
      const __m512i codes = _mm512_and_si512(_mm512_srlv_epi16(_mm512_shuffle_i64x2(x, x, 0x50), shifts), m4);
      const __m512i u = _mm512_shuffle_epi8(table, codes);
      const float s0 = d * static_cast<float>(iq4xs_scale(blk, 2 * j));
      const float s1 = d * static_cast<float>(iq4xs_scale(blk, 2 * j + 1));
      const int64_t v = b * kBlockK + 64 * j;
      for (int i = 0; i < N; ++i) {
        const ActRow& a = acts[i];
        const __m512i dp = _mm512_dpbusd_epi32(_mm512_loadu_si512(a.corr4 + v / 4), u, _mm512_loadu_si512(a.qs + v));
        const float da = a.da16[v / 16];
        const __m512 sv = _mm512_insertf32x8(_mm512_set1_ps(s0 * da), _mm256_set1_ps(s1 * da), 1);
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), sv, acc[i]);
      }
    }
  }
  for (int i = 0; i < N; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

template <TensorType T, int N>
TINYSLM_TARGET_AVX512 inline void gemv_rows_fused(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts,
                                                  float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if constexpr ((T == TensorType::Q4_0 || T == TensorType::Q5_0) && N == 1) {
    if (k <= kPrepMax) {
      LegacyPrep prep;
      prepare_legacy<T == TensorType::Q4_0 ? 3 : 4>(acts[0], k, prep);
      for (int64_t r = r0; r < r1; ++r) y[r] = gemv_row_legacy_prep<T>(data + r * row_bytes, k, prep, acts[0]);
      return;
    }
  }
  if constexpr (T == TensorType::Q4_K && N == 1) {
    if (k <= kPrepMax) {
      LegacyPrep prep;
      prepare_q4_k(acts[0], k, prep);
      for (int64_t r = r0; r < r1; ++r) y[r] = gemv_row_q4_k_prep(data + r * row_bytes, k, prep, acts[0]);
      return;
    }
  }
  if constexpr (T == TensorType::Q6_K && N == 1) {
    if (k <= kPrepMax) {
      Q6Prep prep;
      for (int64_t g = 0; g < k / 16; ++g) prep.s16[g] = static_cast<int16_t>(-acts[0].sum16[g]);
      for (int64_t r = r0; r < r1; ++r) y[r] = gemv_row_q6_k_prep(data + r * row_bytes, k, prep, acts[0]);
      return;
    }
  }
  float out[N];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = data + r * row_bytes;
    if constexpr (T == TensorType::Q4_K || T == TensorType::Q5_K || T == TensorType::Q6_K)
      gemv_row_k<T, N>(row, k, acts, out);
    else if constexpr (T == TensorType::Q2_K || T == TensorType::Q3_K)
      gemv_row_k23<T, N>(row, k, acts, out);
    else if constexpr (T == TensorType::IQ4_XS)
      gemv_row_iq4_xs<N>(row, k, acts, out);
    else
      gemv_row_legacy<T, N>(row, k, acts, out);
    for (int i = 0; i < N; ++i) y[i * ldy + r] = out[i];
  }
}

template <TensorType T>
inline bool gemv_fused_n(int64_t n, const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, float* y,
                         int64_t ldy, int64_t r0, int64_t r1) {
  switch (n) {
    case 1: gemv_rows_fused<T, 1>(data, row_bytes, k, acts, y, ldy, r0, r1); return true;
    case 2: gemv_rows_fused<T, 2>(data, row_bytes, k, acts, y, ldy, r0, r1); return true;
    case 3: gemv_rows_fused<T, 3>(data, row_bytes, k, acts, y, ldy, r0, r1); return true;
    default: return false;
  }
}


// ---------------------------------------------------------------------------------------
// AVX-512 VNNI GEMM on interleaved 16-row panels.

struct alignas(64) Panel {
  uint8_t u[kChunk / 4][16][4];   // u[q][r] = bytes 4q..4q+3 of row r, plus 128
  float s16[kChunk / 16][16];     // weight scale of each 16 values, per row
  float mw[kChunk / 16][16];      // min per group, per row
};

// Decodes rows [r0, r0 + nr) (nr <= 16) for values [v0, v0 + nv) into the panel.
template <TensorType T>
TINYSLM_TARGET_AVX512 inline void fill_panel(const uint8_t* data, int64_t row_bytes,
                                             int64_t r0, int nr, int64_t v0, int64_t nv, Panel& p) {
  constexpr WeightTraits tr = weight_traits(T);
  alignas(64) int8_t w[kChunk];
  alignas(64) float sw16[kChunk / 16 + 4];
  alignas(64) float mw[kChunk / 16];
  const int64_t nq = nv / 4;
  for (int r = 0; r < 16; ++r) {
    if (r < nr) {
      decode_chunk<T>(data + (r0 + r) * row_bytes, v0, nv, w, sw16, mw);
      // Scatter 4-byte words of the row into column r of the panel (bytes flipped to w + 128).
      const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
      const __m512i vidx = _mm512_set_epi32(15 * 16, 14 * 16, 13 * 16, 12 * 16, 11 * 16, 10 * 16, 9 * 16, 8 * 16, 7 * 16,
                                            6 * 16, 5 * 16, 4 * 16, 3 * 16, 2 * 16, 16, 0);
      for (int64_t q = 0; q < nq; q += 16) {
        const __mmask16 m = nq - q >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (nq - q)) - 1u);
        const __m512i v = _mm512_xor_si512(_mm512_maskz_loadu_epi32(m, w + 4 * q), flip);
        _mm512_mask_i32scatter_epi32(&p.u[q][r][0], m, vidx, v, 4);
      }
      for (int64_t g = 0; g < nv / 16; ++g) p.s16[g][r] = sw16[g];
      if (tr.has_min)
        for (int64_t g = 0; g < nv / tr.group; ++g) p.mw[g][r] = mw[g];
    } else {
      for (int64_t q = 0; q < nq; ++q) std::memset(&p.u[q][r][0], 0x80, 4);
      for (int64_t g = 0; g < nv / 16; ++g) p.s16[g][r] = 0.f;
      if (tr.has_min)
        for (int64_t g = 0; g < nv / tr.group; ++g) p.mw[g][r] = 0.f;
    }
  }
}

// acc[c] (16 rows, c < 8 tokens) = panel (values [0, nv) of the chunk at v0) times the
// tile's tokens. The q and c loops are interleaved so the 8 integer sums are independent
// chains; each vpdpbusd takes its 4 activation bytes as an embedded broadcast.
// vpdpbusd with the signed operand broadcast from memory ({1to16}): compilers do not fold
// the broadcast themselves, and a separate vpbroadcastd costs a vector-pipe slot.
TINYSLM_TARGET_AVX512 inline __m512i dpbusd_bcast(__m512i acc, __m512i u8, const int32_t* s8x4) {
#if defined(__GNUC__) && !defined(TINYSLM_NO_INLINE_ASM)
  __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u8), "m"(*s8x4));
  return acc;
#else
  return _mm512_dpbusd_epi32(acc, u8, _mm512_set1_epi32(*s8x4));
#endif
}

template <int G, bool Min>
TINYSLM_TARGET_AVX512 inline void panel_kernel(const Panel& p, int64_t v0, int64_t nv, const TokenTile& t, __m512* out) {
  constexpr int C = kTileTokens;
  const int32_t* q4 = t.q + v0 / 4 * C;
  const int32_t* cc = G == 32 ? t.c32 + v0 / 32 * C : t.c16 + v0 / 16 * C;
  const float* dd = t.d16 + v0 / 16 * C;
  const float* mm = G == 32 ? t.m32 + v0 / 32 * C : t.m16 + v0 / 16 * C;
  __m512 acc[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) acc[c] = _mm512_setzero_ps();
  for (int64_t g = 0; g < nv / G; ++g) {
    __m512i wq[G / 4];
#pragma GCC unroll 8
    for (int q = 0; q < G / 4; ++q) wq[q] = _mm512_load_si512(&p.u[g * (G / 4) + q][0][0]);
    __m512i isum[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) isum[c] = _mm512_set1_epi32(cc[g * C + c]);
    const int32_t* qg = q4 + g * (G / 4) * C;
#pragma GCC unroll 8
    for (int q = 0; q < G / 4; ++q) {
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) isum[c] = dpbusd_bcast(isum[c], wq[q], qg + q * C + c);
    }
    const __m512 s = _mm512_load_ps(&p.s16[g * (G / 16)][0]);
    const float* dg = dd + g * (G / 16) * C;
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[c]), _mm512_mul_ps(s, _mm512_set1_ps(dg[c])), acc[c]);
      if (Min) acc[c] = _mm512_fmadd_ps(_mm512_load_ps(&p.mw[g][0]), _mm512_set1_ps(mm[g * C + c]), acc[c]);
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) out[c] = acc[c];
}

template <int G, bool Min>
TINYSLM_TARGET_AVX512 inline void panel_tokens(const Panel& p, int64_t v0, int64_t nv, const TokenTile* tiles, int64_t n,
                                               float* y, int64_t ldy, int64_t r0, int nr, bool first) {
  const __mmask16 mask = static_cast<__mmask16>((1u << nr) - 1u);
  __m512 acc[kTileTokens];
  for (int64_t i0 = 0; i0 < n; i0 += kTileTokens) {
    panel_kernel<G, Min>(p, v0, nv, tiles[i0 / kTileTokens], acc);
    const int64_t nc = n - i0 < kTileTokens ? n - i0 : kTileTokens;
    for (int64_t c = 0; c < nc; ++c) {
      float* yp = y + (i0 + c) * ldy + r0;
      __m512 v = acc[c];
      if (!first) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, yp), v);
      _mm512_mask_storeu_ps(yp, mask, v);
    }
  }
}

template <TensorType T>
TINYSLM_TARGET_AVX512 inline __m512 load16_weights(const uint8_t* row, int64_t i) {
  if constexpr (T == TensorType::F32) return _mm512_loadu_ps(row + 4 * i);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * i));
  if constexpr (T == TensorType::F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <TensorType T>
TINYSLM_TARGET_AVX512 inline __m512 load16_weights_masked(const uint8_t* row, int64_t i, __mmask16 m) {
  if constexpr (T == TensorType::F32) return _mm512_maskz_loadu_ps(m, row + 4 * i);
  const __m256i h = _mm256_maskz_loadu_epi16(m, row + 2 * i);
  if constexpr (T == TensorType::F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <TensorType T, int R, int C>
TINYSLM_TARGET_AVX512 inline void float_tile_avx512(const uint8_t* const* rows, int64_t k, const float* const* xs,
                                                    float* out) {
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m512 xv[C];
    for (int c = 0; c < C; ++c) xv[c] = _mm512_loadu_ps(xs[c] + i);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = load16_weights<T>(rows[r], i);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  if (i < k) {
    const __mmask16 m = static_cast<__mmask16>((1u << (k - i)) - 1u);
    __m512 xv[C];
    for (int c = 0; c < C; ++c) xv[c] = _mm512_maskz_loadu_ps(m, xs[c] + i);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = load16_weights_masked<T>(rows[r], i, m);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) out[r * C + c] = _mm512_reduce_add_ps(acc[r][c]);
}

struct GemmAvx512 {
  using Panel = x86::Panel;
  static constexpr int kRows = 16;
  template <TensorType T>
  static void fill(const uint8_t* data, int64_t row_bytes, int64_t r0, int nr, int64_t v0, int64_t nv, Panel& p) {
    fill_panel<T>(data, row_bytes, r0, nr, v0, nv, p);
  }
  template <int G, bool Min>
  static void tokens(const Panel& p, int64_t v0, int64_t nv, const TokenTile* tiles, int64_t n, float* y, int64_t ldy,
                     int64_t r0, int nr, bool first) {
    panel_tokens<G, Min>(p, v0, nv, tiles, n, y, ldy, r0, nr, first);
  }
};

template <TensorType T>
struct FloatTileAvx512 {
  template <int R, int C>
  static void run(const uint8_t* const* rows, int64_t k, const float* const* xs, float* out) {
    float_tile_avx512<T, R, C>(rows, k, xs, out);
  }
};

// Types with a fused GEMV above; the others (IQ3_S) decode chunks.
template <TensorType T>
constexpr bool has_fused_gemv() {
  return T != TensorType::IQ3_S;
}

// The block-type table's AVX-512 entry (RowsFn) of weight type T.
template <TensorType T>
inline void rows_avx512(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, const TokenTile* tiles,
                        int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if constexpr (!block_type(T).integer_dot) {
    float_rows_t<FloatTileAvx512<T>, T>(data, row_bytes, k, acts, n, y, ldy, r0, r1);
  } else if (tiles) {
    gemm_panels<GemmAvx512, T>(data, row_bytes, k, tiles, n, y, ldy, r0, r1);
  } else {
    if constexpr (has_fused_gemv<T>())
      if (gemv_fused_n<T>(n, data, row_bytes, k, acts, y, ldy, r0, r1)) return;
    int_rows_gemv_avx512<T>(data, row_bytes, k, acts, n, y, ldy, r0, r1);
  }
}


}  // namespace x86
}  // namespace detail
}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif  // TINYSLM_KERNELS_X86
// ---- end tinyslm/kernels_avx512.hpp ----

// ---- begin tinyslm/kernels_neon.hpp ----
// tinyslm kernels, AArch64 path: NEON with the dot-product extension (sdot).
//
// Integer weights are decoded chunk by chunk into the canonical form of kernels_scalar.hpp
// (NEON unpacking for Q4_0 / Q8_0 / Q4_K / Q6_K / IQ4_XS / IQ3_S, the scalar decode for the others) and
// multiplied with signed sdot (int8 x int8 -> int32, exact), one int32 sum per 16 values,
// then scaled in float. Each decoded chunk is reused for up to 16 tokens, so prefill reads
// every weight once per 16 tokens. Float weights use a 4-row x 1-token NEON tile.
// Functions carry target("+dotprod"), and the dispatcher only calls them when the OS
// reports the feature (getauxval / sysctl), so the header builds for baseline armv8-a.

#include <cstdint>
#include <cstring>


#if defined(TINYSLM_SIMD_NEON)
#define TINYSLM_KERNELS_ARM 1
#include <arm_neon.h>

#if defined(__clang__)
#define TINYSLM_TARGET_NEON __attribute__((target("dotprod")))
#else
#define TINYSLM_TARGET_NEON __attribute__((target("arch=armv8.2-a+dotprod")))
#endif

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace detail {
namespace arm {

inline constexpr int64_t kChunk = 512;

// Decodes native blocks covering values [v0, v0 + nv) of `row` (as x86::decode_chunk in kernels_avx2.hpp).
TINYSLM_TARGET_NEON inline void decode_chunk(TensorType t, const uint8_t* row, int64_t v0, int64_t nv, int8_t* w,
                                             float* sw16, float* mw) {
  const WeightTraits tr = weight_traits(t);
  const int64_t b0 = v0 / tr.block_values, nb = nv / tr.block_values;
  const uint8x16_t m4 = vdupq_n_u8(0x0F);
  for (int64_t j = 0; j < nb; ++j) {
    const uint8_t* blk = row + (b0 + j) * tr.block_bytes;
    int8_t* o = w + j * tr.block_values;
    float* s = sw16 + j * (tr.block_values / 16);
    if (t == TensorType::Q4_0) {
      const auto* b = reinterpret_cast<const BlockQ4_0*>(blk);
      const uint8x16_t x = vld1q_u8(b->qs);
      const int8x16_t eight = vdupq_n_s8(8);
      vst1q_s8(o, vsubq_s8(vreinterpretq_s8_u8(vandq_u8(x, m4)), eight));
      vst1q_s8(o + 16, vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(x, 4)), eight));
      s[0] = s[1] = fp16_to_fp32(b->d);
    } else if (t == TensorType::Q8_0) {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(blk);
      vst1q_s8(o, vld1q_s8(b->qs));
      vst1q_s8(o + 16, vld1q_s8(b->qs + 16));
      s[0] = s[1] = fp16_to_fp32(b->d);
    } else if (t == TensorType::Q4_K) {
      const auto* b = reinterpret_cast<const BlockQ4_K*>(blk);
      const float d = fp16_to_fp32(b->d), dmin = fp16_to_fp32(b->dmin);
      uint8_t sc[8], mn[8];
      unpack_scales_k4(b->scales, sc, mn);
      for (int c = 0; c < 4; ++c)
        for (int h = 0; h < 2; ++h) {
          const uint8x16_t x = vld1q_u8(b->qs + 32 * c + 16 * h);
          vst1q_u8(reinterpret_cast<uint8_t*>(o + 64 * c + 16 * h), vandq_u8(x, m4));
          vst1q_u8(reinterpret_cast<uint8_t*>(o + 64 * c + 32 + 16 * h), vshrq_n_u8(x, 4));
        }
      for (int g = 0; g < 8; ++g) {
        s[2 * g] = s[2 * g + 1] = d * static_cast<float>(sc[g]);
        mw[j * 8 + g] = -dmin * static_cast<float>(mn[g]);
      }
    } else if (t == TensorType::Q6_K) {
      const auto* b = reinterpret_cast<const BlockQ6_K*>(blk);
      const uint8x16_t m3 = vdupq_n_u8(3);
      const int8x16_t off = vdupq_n_s8(32);
      for (int h = 0; h < 2; ++h)
        for (int p = 0; p < 2; ++p) {
          const uint8x16_t l0 = vld1q_u8(b->ql + 64 * h + 16 * p);
          const uint8x16_t l1 = vld1q_u8(b->ql + 64 * h + 32 + 16 * p);
          const uint8x16_t qh = vld1q_u8(b->qh + 32 * h + 16 * p);
          int8_t* oh = o + 128 * h + 16 * p;
          const uint8x16_t q0 = vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8(vandq_u8(qh, m3), 4));
          const uint8x16_t q1 = vorrq_u8(vandq_u8(l1, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 2), m3), 4));
          const uint8x16_t q2 = vorrq_u8(vshrq_n_u8(l0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 4), m3), 4));
          const uint8x16_t q3 = vorrq_u8(vshrq_n_u8(l1, 4), vshlq_n_u8(vshrq_n_u8(qh, 6), 4));
          vst1q_s8(oh, vsubq_s8(vreinterpretq_s8_u8(q0), off));
          vst1q_s8(oh + 32, vsubq_s8(vreinterpretq_s8_u8(q1), off));
          vst1q_s8(oh + 64, vsubq_s8(vreinterpretq_s8_u8(q2), off));
          vst1q_s8(oh + 96, vsubq_s8(vreinterpretq_s8_u8(q3), off));
        }
      const float d = fp16_to_fp32(b->d);
      for (int g = 0; g < 16; ++g) s[g] = d * static_cast<float>(b->scales[g]);
    } else if (t == TensorType::IQ4_XS) {
      const auto* b = reinterpret_cast<const BlockIQ4_XS*>(blk);
      const int8x16_t table = vld1q_s8(kIq4nlValues);
      for (int ib = 0; ib < 8; ++ib) {
        const uint8x16_t x = vld1q_u8(b->qs + 16 * ib);
        vst1q_s8(o + 32 * ib, vqtbl1q_s8(table, vandq_u8(x, m4)));
        vst1q_s8(o + 32 * ib + 16, vqtbl1q_s8(table, vshrq_n_u8(x, 4)));
      }
      const float d = fp16_to_fp32(b->d);
      for (int ib = 0; ib < 8; ++ib) s[2 * ib] = s[2 * ib + 1] = d * static_cast<float>(iq4xs_scale(*b, ib));
    } else if (t == TensorType::IQ3_S) {
      // 16 values (4 grid points) per step; a set sign bit selects the negated magnitude.
      const auto* b = reinterpret_cast<const BlockIQ3_S*>(blk);
      const uint8x16_t bit = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
      for (int h = 0; h < 16; ++h) {
        uint32_t points[4];
        for (int q = 0; q < 4; ++q) points[q] = iq3s_point(*b, 4 * h + q);
        const int8x16_t mag = vreinterpretq_s8_u8(vld1q_u8(reinterpret_cast<const uint8_t*>(points)));
        const uint8x16_t neg = vtstq_u8(vcombine_u8(vdup_n_u8(b->signs[2 * h]), vdup_n_u8(b->signs[2 * h + 1])), bit);
        vst1q_s8(o + 16 * h, vbslq_s8(neg, vnegq_s8(mag), mag));
      }
      const float d = fp16_to_fp32(b->d);
      for (int ib = 0; ib < 8; ++ib) s[2 * ib] = s[2 * ib + 1] = d * static_cast<float>(iq3s_scale(*b, ib));
    } else {
      float sw[16], m[16];
      decode_block_scalar(t, blk, o, sw, m);
      for (int g = 0; g < tr.block_values / 16; ++g) s[g] = sw[tr.group == 16 ? g : g / 2];
      if (tr.has_min)
        for (int g = 0; g < tr.block_values / tr.group; ++g) mw[j * (tr.block_values / tr.group) + g] = m[g];
    }
  }
}

// Dot of a decoded chunk with one activation row: 64 values per step, one int32 sum per 16.
TINYSLM_TARGET_NEON inline float dot_chunk(const int8_t* w, const float* sw16, int64_t nv, const int8_t* aq,
                                           const float* da16) {
  float32x4_t acc = vdupq_n_f32(0.f);
  int64_t v = 0;
  for (; v + 64 <= nv; v += 64) {
    int32x4_t t[4];
    for (int j = 0; j < 4; ++j) t[j] = vdotq_s32(vdupq_n_s32(0), vld1q_s8(w + v + 16 * j), vld1q_s8(aq + v + 16 * j));
    const int32x4_t g = vpaddq_s32(vpaddq_s32(t[0], t[1]), vpaddq_s32(t[2], t[3]));  // sums of 16
    const float32x4_t s = vmulq_f32(vld1q_f32(sw16 + v / 16), vld1q_f32(da16 + v / 16));
    acc = vfmaq_f32(acc, vcvtq_f32_s32(g), s);
  }
  float r = vaddvq_f32(acc);
  for (; v < nv; v += 16) {
    const int32x4_t t = vdotq_s32(vdupq_n_s32(0), vld1q_s8(w + v), vld1q_s8(aq + v));
    r += (sw16[v / 16] * da16[v / 16]) * static_cast<float>(vaddvq_s32(t));
  }
  return r;
}

inline float chunk_min_term(const WeightTraits& tr, const float* mw, int64_t v0, int64_t nv, const ActRow& a) {
  float acc = 0.f;
  if (tr.group == 32) {
    for (int64_t g = 0; g < nv / 32; ++g) acc += mw[g] * a.m32[v0 / 32 + g];
  } else {
    for (int64_t g = 0; g < nv / 16; ++g) acc += mw[g] * a.m16[v0 / 16 + g];
  }
  return acc;
}

TINYSLM_TARGET_NEON inline void int_rows(TensorType t, const uint8_t* data, int64_t row_bytes, int64_t k,
                                         const ActRow* acts, int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const WeightTraits tr = weight_traits(t);
  alignas(64) int8_t w[kChunk];
  alignas(64) float sw16[kChunk / 16 + 4];
  alignas(64) float mw[kChunk / 16];
  float acc[16];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = data + r * row_bytes;
    for (int64_t i0 = 0; i0 < n; i0 += 16) {
      const int64_t ni = n - i0 < 16 ? n - i0 : 16;
      for (int64_t i = 0; i < ni; ++i) acc[i] = 0.f;
      for (int64_t v0 = 0; v0 < k; v0 += kChunk) {
        const int64_t nv = k - v0 < kChunk ? k - v0 : kChunk;
        decode_chunk(t, row, v0, nv, w, sw16, mw);
        for (int64_t i = 0; i < ni; ++i) {
          const ActRow& a = acts[i0 + i];
          acc[i] += dot_chunk(w, sw16, nv, a.qs + v0, a.da16 + v0 / 16);
          if (tr.has_min) acc[i] += chunk_min_term(tr, mw, v0, nv, a);
        }
      }
      for (int64_t i = 0; i < ni; ++i) y[(i0 + i) * ldy + r] = acc[i];
    }
  }
}

TINYSLM_TARGET_NEON inline float32x4_t load4_weights(TensorType t, const uint8_t* row, int64_t i) {
  if (t == TensorType::F32) return vld1q_f32(reinterpret_cast<const float*>(row + 4 * i));
  const uint16x4_t h = vld1_u16(reinterpret_cast<const uint16_t*>(row + 2 * i));
  if (t == TensorType::F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
  return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

TINYSLM_TARGET_NEON inline void float_rows(TensorType t, const uint8_t* data, int64_t row_bytes, int64_t k,
                                           const ActRow* acts, int64_t n, float* y, int64_t ldy, int64_t r0,
                                           int64_t r1) {
  for (int64_t r = r0; r < r1; r += 4) {
    const int nr = static_cast<int>(r1 - r < 4 ? r1 - r : 4);
    const uint8_t* rows[4];
    for (int j = 0; j < 4; ++j) rows[j] = data + (r + (j < nr ? j : 0)) * row_bytes;
    for (int64_t i = 0; i < n; ++i) {
      const float* x = acts[i].xf;
      float32x4_t acc[4] = {vdupq_n_f32(0.f), vdupq_n_f32(0.f), vdupq_n_f32(0.f), vdupq_n_f32(0.f)};
      int64_t v = 0;
      for (; v + 4 <= k; v += 4) {
        const float32x4_t xv = vld1q_f32(x + v);
        for (int j = 0; j < 4; ++j) acc[j] = vfmaq_f32(acc[j], load4_weights(t, rows[j], v), xv);
      }
      for (int j = 0; j < nr; ++j) {
        float s = vaddvq_f32(acc[j]);
        for (int64_t e = v; e < k; ++e) s += load_weight_float(t, rows[j], e) * x[e];
        y[i * ldy + r + j] = s;
      }
    }
  }
}

// The block-type table's NEON entry (RowsFn) of weight type T.
template <TensorType T>
inline void rows_neon(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, const TokenTile*,
                      int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if constexpr (block_type(T).integer_dot)
    int_rows(T, data, row_bytes, k, acts, n, y, ldy, r0, r1);
  else
    float_rows(T, data, row_bytes, k, acts, n, y, ldy, r0, r1);
}

}  // namespace arm
}  // namespace detail
}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#endif  // TINYSLM_SIMD_NEON
// ---- end tinyslm/kernels_neon.hpp ----

// ---- begin tinyslm/kernels_hwy.hpp ----
// tinyslm kernels, Highway path (only when TINYSLM_USE_HIGHWAY is defined; link hwy).
//
// Highway's static-dispatch API: the vector width is the best one the compile flags allow
// (SSE2/SSSE3/SSE4 without -march on x86-64, NEON on AArch64, AVX2/AVX-512 with -march).
// Integer weights are decoded to the canonical form of kernels_scalar.hpp (Q4_0 and Q8_0
// with Highway ops, the other types with the scalar decode) and multiplied with widening
// int8 -> int16 -> int32 multiply-accumulates, exact; F32 weights use a float MulAdd loop.
// F16/BF16 fall back to the scalar reference. Selected with set_simd_level(highway) or
// TINYSLM_SIMD=highway, never by default.

#include <cstdint>
#include <cstring>


#if defined(TINYSLM_USE_HIGHWAY)
#include <hwy/highway.h>

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace detail {
namespace hwy_kernels {

namespace hn = hwy::HWY_NAMESPACE;

// Sum of 16 products of int8 values, exact: widened to int32 lanes (as many as the target
// has, up to 16), multiplied and added.
inline int32_t dot16_i8(const int8_t* w, const int8_t* a) {
  const hn::CappedTag<int32_t, 16> d32;
  const hn::Rebind<int8_t, decltype(d32)> d8;
  const int n = static_cast<int>(hn::Lanes(d32));
  auto acc = hn::Zero(d32);
  for (int j = 0; j < 16; j += n)
    acc = hn::Add(acc, hn::Mul(hn::PromoteTo(d32, hn::LoadU(d8, w + j)), hn::PromoteTo(d32, hn::LoadU(d8, a + j))));
  return hn::GetLane(hn::SumOfLanes(d32, acc));
}

// Canonical decode of one block; Q4_0 and Q8_0 with Highway ops.
inline void decode_block(TensorType t, const uint8_t* blk, int8_t* w, float* sw, float* mw) {
  if (t == TensorType::Q4_0 || t == TensorType::Q8_0) {
    const hn::CappedTag<int16_t, 16> d16;
    const hn::Rebind<uint8_t, decltype(d16)> du8;
    const hn::Rebind<int8_t, decltype(d16)> di8;
    const int n = static_cast<int>(hn::Lanes(d16));
    if (t == TensorType::Q4_0) {
      const auto* b = reinterpret_cast<const BlockQ4_0*>(blk);
      for (int j = 0; j < 16; j += n) {
        const auto x = hn::PromoteTo(d16, hn::LoadU(du8, b->qs + j));  // bytes as int16 0..255
        const auto lo = hn::Sub(hn::And(x, hn::Set(d16, 0x0F)), hn::Set(d16, 8));
        const auto hi = hn::Sub(hn::ShiftRight<4>(x), hn::Set(d16, 8));
        hn::StoreU(hn::DemoteTo(di8, lo), di8, w + j);
        hn::StoreU(hn::DemoteTo(di8, hi), di8, w + 16 + j);
      }
      sw[0] = fp16_to_fp32(b->d);
    } else {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(blk);
      for (int j = 0; j < 32; j += n) hn::StoreU(hn::LoadU(di8, b->qs + j), di8, w + j);
      sw[0] = fp16_to_fp32(b->d);
    }
    return;
  }
  decode_block_scalar(t, blk, w, sw, mw);
}

// One row against one activation row, in the canonical formula's group order.
inline float dot_row(TensorType t, const uint8_t* row, int64_t k, const ActRow& a) {
  const WeightTraits tr = weight_traits(t);
  alignas(64) int8_t w[256];
  float sw[16], mw[16];
  float acc = 0.f;
  const int gpb = tr.block_values / tr.group;
  for (int64_t b = 0; b < k / tr.block_values; ++b) {
    decode_block(t, row + b * tr.block_bytes, w, sw, mw);
    for (int g = 0; g < gpb; ++g) {
      const int64_t base = b * tr.block_values + static_cast<int64_t>(g) * tr.group;
      int32_t isum = 0;
      for (int h = 0; h < tr.group; h += 16) isum += dot16_i8(w + g * tr.group + h, a.qs + base + h);
      acc += (sw[g] * a.da16[base / 16]) * static_cast<float>(isum);
      if (tr.has_min) acc += mw[g] * (tr.group == 32 ? a.m32[base / 32] : a.m16[base / 16]);
    }
  }
  return acc;
}

inline float dot_f32(const float* w, const float* x, int64_t k) {
  const hn::ScalableTag<float> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  auto acc0 = hn::Zero(df), acc1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * lanes <= k; i += 2 * lanes) {
    acc0 = hn::MulAdd(hn::LoadU(df, w + i), hn::LoadU(df, x + i), acc0);
    acc1 = hn::MulAdd(hn::LoadU(df, w + i + lanes), hn::LoadU(df, x + i + lanes), acc1);
  }
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
  for (; i < k; ++i) s += w[i] * x[i];
  return s;
}

// The block-type table's Highway entry (RowsFn) of weight type T (F32 and the integer types;
// F16 / BF16 weights have none and take the scalar path).
template <TensorType T>
inline void rows_highway(const uint8_t* data, int64_t row_bytes, int64_t k, const ActRow* acts, const TokenTile*,
                         int64_t n, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if constexpr (T == TensorType::F32) {
    for (int64_t r = r0; r < r1; ++r) {
      const auto* row = reinterpret_cast<const float*>(data + r * row_bytes);
      for (int64_t i = 0; i < n; ++i) y[i * ldy + r] = dot_f32(row, acts[i].xf, k);
    }
  } else {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t i = 0; i < n; ++i) y[i * ldy + r] = dot_row(T, data + r * row_bytes, k, acts[i]);
  }
}

}  // namespace hwy_kernels
}  // namespace detail
}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#endif  // TINYSLM_USE_HIGHWAY
// ---- end tinyslm/kernels_hwy.hpp ----

// ---- begin tinyslm/kernels.hpp ----
// tinyslm kernels: matrix times activations for every weight block type, with a scalar
// reference and SIMD paths chosen at run time from the CPU's features (one binary runs
// everywhere and never executes an instruction the CPU lacks).
//
//   y[i * ldy + r] = sum_k W[r][k] * x[i * cols + k]      (i < n tokens, r < rows)
//
// Activations are quantized once per row into the format llama.cpp pairs with the weight
// type (Q8_0, Q8_1, Q8_K, or rounded to F16/BF16), then every inner loop is an integer dot
// product. Few tokens (decode: n == 1, bound by memory bandwidth) run GEMV kernels that
// unpack each weight block once for all n tokens; from 4 tokens (AVX-512) or 9 (AVX2) on,
// register-tiled GEMM kernels on 16- / 8-row panels (prefill). Threads take rows in chunks of multiples of 16 from
// a shared counter, and every row's arithmetic is the same whatever the split, so the result
// does not depend on the thread count or the schedule.
//
// quantize_activations() + matmul_quantized() split the two steps, so one input quantized
// once feeds several matrices (Q/K/V, gate/up).
//
// matmul_many() does that for a list of outputs of one input, and with one token spreads the
// rows of all of them over the threads in a single fork-join.
//
// Paths: scalar (always), AVX2+FMA+F16C and AVX-VNNI (kernels_avx2.hpp), AVX-512 BW/VL/DQ with
// VNNI (kernels_avx512.hpp), NEON with dotprod (kernels_neon.hpp), Highway static dispatch
// (kernels_hwy.hpp, when TINYSLM_USE_HIGHWAY). Which one runs is active_simd_level() (core.hpp:
// set_simd_level(), else TINYSLM_SIMD=scalar|avx2|avxvnni|avx512|neon|highway, else the best);
// block_kernels, one row per weight type, holds each type's kernel per path.

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string_view>


namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

namespace detail {

// ---------------------------------------------------------------------------------------
// The block-type table, kernels half: per GGUF type id, the type's row of quant.hpp's
// block_type_table (storage, activation format, reference conversions) and its matmul kernel
// per SimdLevel: rows[scalar] is the reference, the others the fast paths; nullptr means the
// scalar one (not a neighbouring SIMD path: the x86 GEMM tiles are built for one path).

struct BlockKernels {
  const QuantTraits* format = &kUnknownBlockType;
  RowsFn rows[kSimdLevelCount] = {};
};

template <TensorType T>
constexpr BlockKernels make_block_kernels() {
  BlockKernels k;
  k.format = &block_type_table[static_cast<uint32_t>(T)];
  k.rows[static_cast<int>(SimdLevel::scalar)] = &rows_scalar<T>;
#if defined(TINYSLM_KERNELS_X86)
  k.rows[static_cast<int>(SimdLevel::avx2)] = &x86::rows_avx2<T>;
  k.rows[static_cast<int>(SimdLevel::avxvnni)] = &x86::rows_avxvnni<T>;
  k.rows[static_cast<int>(SimdLevel::avx512)] = &x86::rows_avx512<T>;
#endif
#if defined(TINYSLM_KERNELS_ARM)
  k.rows[static_cast<int>(SimdLevel::neon)] = &arm::rows_neon<T>;
#endif
#if defined(TINYSLM_USE_HIGHWAY)
  if constexpr (T != TensorType::F16 && T != TensorType::BF16)
    k.rows[static_cast<int>(SimdLevel::highway)] = &hwy_kernels::rows_highway<T>;
#endif
  return k;
}

inline constexpr BlockKernels block_kernel_list[] = {
    make_block_kernels<TensorType::F32>(),  make_block_kernels<TensorType::F16>(),
    make_block_kernels<TensorType::BF16>(), make_block_kernels<TensorType::Q4_0>(),
    make_block_kernels<TensorType::Q4_1>(), make_block_kernels<TensorType::Q5_0>(),
    make_block_kernels<TensorType::Q5_1>(), make_block_kernels<TensorType::Q8_0>(),
    make_block_kernels<TensorType::IQ4_NL>(), make_block_kernels<TensorType::Q2_K>(),
    make_block_kernels<TensorType::Q3_K>(), make_block_kernels<TensorType::Q4_K>(),
    make_block_kernels<TensorType::Q5_K>(), make_block_kernels<TensorType::Q6_K>(),
    make_block_kernels<TensorType::IQ4_XS>(), make_block_kernels<TensorType::IQ3_S>(),
};

constexpr auto make_block_kernel_table() {
  std::array<BlockKernels, kTensorTypeIdLimit> t{};
  for (const BlockKernels& k : block_kernel_list) t[static_cast<uint32_t>(k.format->type)] = k;
  return t;
}
inline constexpr auto block_kernels_table = make_block_kernel_table();
inline constexpr BlockKernels kNoKernels{};

// The row of a type (no kernels for types matmul does not take).
constexpr const BlockKernels& block_kernels(TensorType t) {
  const auto id = static_cast<uint32_t>(t);
  return id < kTensorTypeIdLimit ? block_kernels_table[id] : kNoKernels;
}

// The kernel of weight type t on path `level` (nullptr: matmul does not take the type).
inline RowsFn rows_kernel(TensorType t, SimdLevel level) {
  const BlockKernels& k = block_kernels(t);
  if (RowsFn f = k.rows[static_cast<int>(level)]) return f;
  return k.rows[static_cast<int>(SimdLevel::scalar)];
}

}  // namespace detail

// Weight types matmul accepts.
inline bool matmul_supports(TensorType t) {
  return detail::block_kernels(t).rows[static_cast<int>(SimdLevel::scalar)] != nullptr;
}

// The activation type a weight type is multiplied with (Q8_0, Q8_1, Q8_K, F16, BF16, F32).
inline TensorType activation_type_for(TensorType weight) {
  switch (detail::act_format_for(weight)) {
    case detail::ActFormat::q8_0: return TensorType::Q8_0;
    case detail::ActFormat::q8_1: return TensorType::Q8_1;
    case detail::ActFormat::q8_k: return TensorType::Q8_K;
    case detail::ActFormat::f16: return TensorType::F16;
    case detail::ActFormat::bf16: return TensorType::BF16;
    case detail::ActFormat::f32: return TensorType::F32;
  }
  return TensorType::F32;
}

// A weight matrix in GGUF layout: `rows` rows of `cols` values, each row tensor_row_bytes
// long, rows contiguous.
struct MatrixRef {
  TensorType type;
  const uint8_t* data;
  int64_t rows;
  int64_t cols;
};

// Activation buffers for matmul. reserve() sizes them for up to max_n tokens of max_cols
// values up front (once per session); matmul grows them itself if a call needs more, which
// is the only allocation it ever makes.
class MatmulScratch {
 public:
  Status reserve(int64_t max_n, int64_t max_cols) { return ensure(max_n, max_cols, true); }
  // Bytes reserve(n, k) allocates (for memory estimates): per row of k values padded to 256,
  // the int8 copy, the float copy, corr4 (k/4 words), da16/m16/sum16 (k/16 each), m32/da32
  // (k/32 each), and the row descriptor.
  static uint64_t reserve_bytes(int64_t n, int64_t k) {
    const uint64_t kp = static_cast<uint64_t>((k + 255) / 256 * 256), rows = static_cast<uint64_t>(n);
    return rows * (kp + 4 * kp + 4 * (kp / 4) + 3 * 4 * (kp / 16) + 2 * 4 * (kp / 32) + sizeof(detail::ActRow));
  }

  // Internal: makes room for n rows of k values; float buffers only when `need_float`.
  Status ensure(int64_t n, int64_t k, bool need_float) {
    if (n < 0 || k < 0) return make_error(Errc::invalid_argument, "matmul scratch: negative size");
    const int64_t kp = (k + 255) / 256 * 256;
    uint64_t total = 0;
    if (detail::mul_overflows(static_cast<uint64_t>(n), static_cast<uint64_t>(kp), &total) ||
        total > (uint64_t{1} << 40))
      return make_error(Errc::invalid_argument, "matmul scratch: size overflows");
    if (n > cap_n_ || kp > cap_k_) {
      const int64_t nn = n > cap_n_ ? n : cap_n_;
      const int64_t kk = kp > cap_k_ ? kp : cap_k_;
      const auto sz = static_cast<size_t>(nn * kk);
      if (!qs_.allocate(sz) || !corr4_.allocate(sz / 4) || !da16_.allocate(sz / 16) ||
          !m16_.allocate(sz / 16) || !sum16_.allocate(sz / 16) || !m32_.allocate(sz / 32) || !da32_.allocate(sz / 32) ||
          !acts_.allocate(static_cast<size_t>(nn)))
        return alloc_failed();
      xf_.release();
      q_fmt_ = -1;
      cap_n_ = nn;
      cap_k_ = kk;
      fill_rows();
    }
    if (need_float && xf_.size() < static_cast<size_t>(cap_n_ * cap_k_)) {
      if (!xf_.allocate(static_cast<size_t>(cap_n_ * cap_k_))) return alloc_failed();
      fill_rows();
    }
    return {};
  }

  // What quantize_activations last stored (format id, rows, row length, tiles built).
  // tiled_level: the SimdLevel the token tiles were built for, or -1.
  void set_quantized(int fmt, int64_t n, int64_t k, int tiled_level) {
    q_fmt_ = fmt;
    q_n_ = n;
    q_k_ = k;
    q_tiled_ = tiled_level;
  }
  int quantized_format() const { return q_fmt_; }
  int64_t quantized_n() const { return q_n_; }
  int64_t quantized_cols() const { return q_k_; }
  int quantized_tiled_level() const { return q_tiled_; }

  // The activation rows, one per token (valid after ensure / reserve).
  const detail::ActRow* rows() const { return acts_.data(); }

#if defined(TINYSLM_KERNELS_X86)
  // Token tiles for the AVX-512 GEMM: room for n tokens of k values.
  Status ensure_tiles(int64_t n, int64_t k) {
    namespace x = detail::x86;
    const int64_t nt = (n + detail::kTileTokens - 1) / detail::kTileTokens;
    if (nt > tiles_n_ || k > tiles_k_) {
      const int64_t tn = nt > tiles_n_ ? nt : tiles_n_, tk = k > tiles_k_ ? k : tiles_k_;
      const auto q = static_cast<size_t>(tn * x::tile_q_words(tk)), g16 = static_cast<size_t>(tn * x::tile_g16(tk)),
                 g32 = static_cast<size_t>(tn * x::tile_g32(tk));
      if (!tq_.allocate(q) || !tc16_.allocate(g16) || !tc32_.allocate(g32) || !td16_.allocate(g16) ||
          !tm16_.allocate(g16) || !tm32_.allocate(g32) || !tiles_.allocate(static_cast<size_t>(tn)))
        return alloc_failed();
      tiles_n_ = tn;
      tiles_k_ = tk;
    }
    return {};
  }
  // Builds tile ti for the current n tokens of k values (after quantize).
  void build_tile(int64_t ti, int64_t n, int64_t k, bool unsigned_q) {
    namespace x = detail::x86;
    int32_t* q = tq_.data() + ti * x::tile_q_words(k);
    int32_t* c16 = tc16_.data() + ti * x::tile_g16(k);
    int32_t* c32 = tc32_.data() + ti * x::tile_g32(k);
    float* d16 = td16_.data() + ti * x::tile_g16(k);
    float* m16 = tm16_.data() + ti * x::tile_g16(k);
    float* m32 = tm32_.data() + ti * x::tile_g32(k);
    x::build_token_tile(acts_.data(), n, k, ti, q, c16, c32, d16, m16, m32, unsigned_q);
    tiles_[static_cast<size_t>(ti)] = {q, c16, c32, d16, m16, m32};
  }
  const detail::TokenTile* tiles() const { return tiles_.data(); }
#endif
  // The token tiles of the last quantize_activations (nullptr where no path uses tiles).
  const detail::TokenTile* tiles_or_null() const {
#if defined(TINYSLM_KERNELS_X86)
    return tiles_.data();
#else
    return nullptr;
#endif
  }

  detail::ActRow row(int64_t i) const {
    detail::ActRow a;
    a.qs = qs_.data() + i * cap_k_;
    a.da16 = da16_.data() + i * (cap_k_ / 16);
    a.m16 = m16_.data() + i * (cap_k_ / 16);
    a.sum16 = sum16_.data() + i * (cap_k_ / 16);
    a.m32 = m32_.data() + i * (cap_k_ / 32);
    a.corr4 = corr4_.data() + i * (cap_k_ / 4);
    a.da32 = da32_.data() + i * (cap_k_ / 32);
    a.xf = xf_.empty() ? nullptr : xf_.data() + i * cap_k_;
    return a;
  }

  // Quantizes token row i (k values) for weights of format fmt (SIMD when `simd`; the
  // result is bit-identical either way).
  void quantize(detail::ActFormat fmt, int64_t i, const float* x, int64_t k, bool simd = false) {
    quantize_row_only(fmt, i, x, k, simd);
    if (!detail::act_format_is_float(fmt)) {
      const float* d16 = da16_.data() + i * (cap_k_ / 16);
      float* d32 = da32_.data() + i * (cap_k_ / 32);
      for (int64_t g = 0; g < k / 32; ++g) d32[g] = d16[2 * g];
    }
  }

 private:
  void quantize_row_only(detail::ActFormat fmt, int64_t i, const float* x, int64_t k, bool simd) {
#if defined(TINYSLM_KERNELS_X86)
    if (simd && !detail::act_format_is_float(fmt)) {
      detail::x86::quantize_activation_row_avx2(fmt, x, k, qs_.data() + i * cap_k_, da16_.data() + i * (cap_k_ / 16),
                                                m32_.data() + i * (cap_k_ / 32), m16_.data() + i * (cap_k_ / 16),
                                                sum16_.data() + i * (cap_k_ / 16), corr4_.data() + i * (cap_k_ / 4));
      return;
    }
#endif
    (void)simd;
    detail::quantize_activation_row(fmt, x, k, qs_.data() + i * cap_k_, da16_.data() + i * (cap_k_ / 16),
                                    m32_.data() + i * (cap_k_ / 32), m16_.data() + i * (cap_k_ / 16),
                                    sum16_.data() + i * (cap_k_ / 16), corr4_.data() + i * (cap_k_ / 4),
                                    detail::act_format_is_float(fmt) ? xf_.data() + i * cap_k_ : nullptr);
  }

  void fill_rows() {
    for (int64_t i = 0; i < cap_n_; ++i) acts_[static_cast<size_t>(i)] = row(i);
  }
  static Error alloc_failed() { return make_error(Errc::out_of_memory, "matmul scratch: allocation failed"); }
  AlignedBuffer<int8_t> qs_;
  AlignedBuffer<int32_t> corr4_;
  AlignedBuffer<float> da16_, m16_, m32_, da32_, xf_;
  AlignedBuffer<int32_t> sum16_;
  AlignedBuffer<detail::ActRow> acts_;
#if defined(TINYSLM_KERNELS_X86)
  AlignedBuffer<int32_t> tq_, tc16_, tc32_;
  AlignedBuffer<float> td16_, tm16_, tm32_;
  AlignedBuffer<detail::TokenTile> tiles_;
  int64_t tiles_n_ = 0, tiles_k_ = 0;
#endif
  int64_t cap_n_ = 0, cap_k_ = 0;
  int q_fmt_ = -1;
  int64_t q_n_ = 0, q_k_ = 0;
  int q_tiled_ = -1;
};

// Rows are handed to threads in multiples of this (the GEMM tile height).
inline constexpr int64_t kMatmulRowGrain = 16;

namespace detail {

// Row lengths must be whole blocks of the weight type and of its activation type.
inline Status check_cols(TensorType t, int64_t cols) {
  const QuantTraits& q = block_type(t);
  const int64_t act_block = q.act == ActFormat::q8_k ? 256 : 32;
  const int64_t need_block = q.integer_dot ? act_block : 1;
  if (cols % need_block != 0 || cols % static_cast<int64_t>(tensor_type_info(t).block_size) != 0)
    return make_error(Errc::invalid_argument, std::string("matmul: row length ") + std::to_string(cols) +
                                                  " is not a multiple of the " + tensor_type_name(t) + " block size");
  return {};
}

inline Status check_matrix(const MatrixRef& w) {
  if (!matmul_supports(w.type))
    return make_error(Errc::unsupported, std::string("matmul: weight type ") + tensor_type_name(w.type) +
                                             " is not supported");
  if (w.rows < 0 || w.cols <= 0)
    return make_error(Errc::invalid_argument, "matmul: bad matrix shape " + std::to_string(w.rows) + " x " +
                                                  std::to_string(w.cols));
  if (!w.data) return make_error(Errc::invalid_argument, "matmul: null weights");
  return check_cols(w.type, w.cols);
}

// Checks of one product y = W x (n tokens) shared by matmul and matmul_many.
inline Status check_product(const MatrixRef& w, int64_t n, const float* y, int64_t ldy) {
  if (auto st = check_matrix(w); !st) return st.error();
  if (n < 0) return make_error(Errc::invalid_argument, "matmul: negative token count");
  if (n == 0 || w.rows == 0) return {};
  if (!y) return make_error(Errc::invalid_argument, "matmul: null output");
  if (ldy < w.rows) return make_error(Errc::invalid_argument, "matmul: ldy is smaller than the row count");
  return {};
}

inline int64_t matrix_row_bytes(const MatrixRef& w) {
  uint64_t row_bytes = 0;
  return tensor_row_bytes(w.type, static_cast<uint64_t>(w.cols), &row_bytes) ? static_cast<int64_t>(row_bytes) : -1;
}

// Whether activation quantization takes the AVX2 code (bit-identical to the scalar one).
inline bool simd_quantize(SimdLevel level) {
  return level == SimdLevel::avx2 || level == SimdLevel::avx512 || level == SimdLevel::avxvnni;
}

// Quantizes the n rows of x into the scratch rows [0, n) for weights of format fmt.
inline void quantize_rows(MatmulScratch& scratch, ActFormat fmt, const float* x, int64_t n, int64_t cols,
                          bool simd, const ParallelFor& par) {
  // A few tokens (decode) are quantized on the calling thread: cheaper than waking the pool.
  if (n * cols <= 32768) {
    for (int64_t i = 0; i < n; ++i) scratch.quantize(fmt, i, x + i * cols, cols, simd);
    return;
  }
  par([&](int t, int nt) {
    int64_t b, e;
    ParallelFor::split(n, t, nt, 1, &b, &e);
    for (int64_t i = b; i < e; ++i) scratch.quantize(fmt, i, x + i * cols, cols, simd);
  });
}

// Builds the x86 GEMM token tiles when path `level` multiplies n tokens as a GEMM; returns
// whether it did.
inline Expected<bool> build_gemm_tiles(MatmulScratch& scratch, SimdLevel level, ActFormat fmt, int64_t n, int64_t cols,
                                       const ParallelFor& par) {
#if defined(TINYSLM_KERNELS_X86)
  // The GEMM kernels take the quantized tokens interleaved 8 at a time (AVX2: as a + 128).
  const bool avx2_tiles = level == SimdLevel::avx2 || level == SimdLevel::avxvnni;
  if (act_format_is_float(fmt) || !((level == SimdLevel::avx512 && n >= x86::kGemmMinTokens) ||
                                    (avx2_tiles && n >= x86::kGemmMinTokensAvx2)))
    return false;
  if (auto st = scratch.ensure_tiles(n, cols); !st) return st.error();
  const int64_t ntiles = (n + kTileTokens - 1) / kTileTokens;
  par([&](int t, int nt) {
    int64_t b, e;
    ParallelFor::split(ntiles, t, nt, 1, &b, &e);
    for (int64_t ti = b; ti < e; ++ti) scratch.build_tile(ti, n, cols, avx2_tiles);
  });
  return true;
#else
  (void)scratch, (void)level, (void)fmt, (void)n, (void)cols, (void)par;
  return false;
#endif
}

// Runs kernel f over all rows of w, handed out in chunks (multiples of kMatmulRowGrain) from a
// shared counter, so a thread slowed down by other work (or a small core) takes fewer; every
// row is computed the same way whichever thread takes it, so the result does not depend on
// the schedule.
inline void run_rows(RowsFn f, const MatrixRef& w, int64_t row_bytes, const ActRow* acts, const TokenTile* tiles,
                     int64_t n, float* y, int64_t ldy, const ParallelFor& par) {
  const int nthreads = par.n_threads < 1 ? 1 : par.n_threads;
  int64_t chunk = w.rows / (int64_t{8} * nthreads);
  chunk = chunk < kMatmulRowGrain ? kMatmulRowGrain : (chunk + kMatmulRowGrain - 1) / kMatmulRowGrain * kMatmulRowGrain;
  std::atomic<int64_t> next{0};
  par([&](int, int) {
    for (;;) {
      const int64_t b = next.fetch_add(chunk, std::memory_order_relaxed);
      if (b >= w.rows) break;
      const int64_t e = b + chunk < w.rows ? b + chunk : w.rows;
      f(w.data, row_bytes, w.cols, acts, tiles, n, y, ldy, b, e);
    }
  });
}

}  // namespace detail

// Quantizes n rows of `cols` activations into `scratch`, in the format that weights of
// `weight_type` pair with (activation_type_for). matmul_quantized() then multiplies them
// with any matrix whose type has the same activation type and whose row length is `cols`,
// e.g. the Q, K and V projections of one input quantized once.
inline Status quantize_activations(TensorType weight_type, const float* x, int64_t n, int64_t cols,
                                   MatmulScratch& scratch, const ParallelFor& par) {
  if (!matmul_supports(weight_type))
    return make_error(Errc::unsupported, std::string("matmul: weight type ") + tensor_type_name(weight_type) +
                                             " is not supported");
  if (n < 0 || cols <= 0) return make_error(Errc::invalid_argument, "matmul: bad activation shape");
  if (auto st = detail::check_cols(weight_type, cols); !st) return st.error();
  if (n > 0 && !x) return make_error(Errc::invalid_argument, "matmul: null activations");
  const detail::ActFormat fmt = detail::act_format_for(weight_type);
  if (auto st = scratch.ensure(n, cols, detail::act_format_is_float(fmt)); !st) return st.error();
  const SimdLevel level = active_simd_level();
  detail::quantize_rows(scratch, fmt, x, n, cols, detail::simd_quantize(level), par);
  auto tiled = detail::build_gemm_tiles(scratch, level, fmt, n, cols, par);
  if (!tiled) return tiled.error();
  scratch.set_quantized(static_cast<int>(fmt), n, cols, *tiled ? static_cast<int>(level) : -1);
  return {};
}

// y[i * ldy + r] = sum_k W[r][k] * a[i][k] for the n activation rows last quantized into
// `scratch` by quantize_activations (n must match, and w's type must pair with the same
// activation type, and w.cols with the quantized row length).
inline Status matmul_quantized(const MatrixRef& w, int64_t n, float* y, int64_t ldy, const MatmulScratch& scratch,
                               const ParallelFor& par) {
  if (auto st = detail::check_product(w, n, y, ldy); !st) return st.error();
  if (n == 0 || w.rows == 0) return {};
  if (scratch.quantized_format() != static_cast<int>(detail::act_format_for(w.type)) || scratch.quantized_n() != n ||
      scratch.quantized_cols() != w.cols)
    return make_error(Errc::invalid_argument, std::string("matmul: the scratch does not hold ") + std::to_string(n) +
                                                  " activation rows of " + std::to_string(w.cols) + " values for " +
                                                  tensor_type_name(w.type) + " weights");
  const int64_t row_bytes = detail::matrix_row_bytes(w);
  if (row_bytes < 0) return make_error(Errc::invalid_argument, "matmul: bad row length");
  const SimdLevel level = active_simd_level();
  const bool tiled = scratch.quantized_tiled_level() == static_cast<int>(level);
  detail::run_rows(detail::rows_kernel(w.type, level), w, row_bytes, scratch.rows(), tiled ? scratch.tiles_or_null() : nullptr,
                   n, y, ldy, par);
  return {};
}

// y[i * ldy + r] = sum_k W[r][k] * x[i * cols + k] for i < n, r < rows. x is n rows of
// w.cols floats; ldy >= w.rows. Same result for any thread count.
inline Status matmul(const MatrixRef& w, const float* x, int64_t n, float* y, int64_t ldy, MatmulScratch& scratch,
                     const ParallelFor& par) {
  if (auto st = detail::check_matrix(w); !st) return st.error();
  if (n < 0) return make_error(Errc::invalid_argument, "matmul: negative token count");
  if (n == 0 || w.rows == 0) return {};
  if (!x || !y) return make_error(Errc::invalid_argument, "matmul: null pointer");
  if (ldy < w.rows) return make_error(Errc::invalid_argument, "matmul: ldy is smaller than the row count");
  if (auto st = quantize_activations(w.type, x, n, w.cols, scratch, par); !st) return st.error();
  return matmul_quantized(w, n, y, ldy, scratch, par);
}

// One product of matmul_many: y (rows of ldy floats) = w times the shared input; `name`
// prefixes its errors.
struct MatmulOut {
  MatrixRef w;
  float* y;
  int64_t ldy;
  std::string_view name = {};
};

namespace detail {

inline Error named(Error e, std::string_view name) { return name.empty() ? e : std::move(e.context(name)); }

// One token, several threads: x quantized once per activation format into scratch row
// `slot` of that format, then the rows of every output spread over the threads in one
// fork-join (chunks of multiples of kMatmulRowGrain taken from a shared counter).
// Most products of one matmul_many fork-join (an MoE decode step has 2 per selected expert).
inline constexpr size_t kMatmulManyMaxOuts = 64;

inline Status matmul_many_one_token(std::span<const MatmulOut> outs, const float* x, MatmulScratch& scratch,
                                    const ParallelFor& par) {
  constexpr size_t kMaxOuts = kMatmulManyMaxOuts;
  int slot[kMaxOuts];
  ActFormat formats[kMaxOuts];
  int n_formats = 0;
  bool any_float = false;
  for (size_t j = 0; j < outs.size(); ++j) {
    const ActFormat f = act_format_for(outs[j].w.type);
    int s = 0;
    while (s < n_formats && formats[s] != f) ++s;
    if (s == n_formats) formats[n_formats++] = f;
    slot[j] = s;
    any_float = any_float || act_format_is_float(f);
  }
  const int64_t cols = outs[0].w.cols;
  if (auto st = scratch.ensure(n_formats, cols, any_float); !st) return st.error();
  const SimdLevel level = active_simd_level();
  for (int s = 0; s < n_formats; ++s) scratch.quantize(formats[s], s, x, cols, simd_quantize(level));
  scratch.set_quantized(-1, 0, 0, -1);  // the rows hold several formats: no matmul_quantized after this
  RowsFn kernels[kMaxOuts];
  int64_t row_bytes[kMaxOuts];
  for (size_t j = 0; j < outs.size(); ++j) {
    kernels[j] = rows_kernel(outs[j].w.type, level);
    row_bytes[j] = matrix_row_bytes(outs[j].w);
  }
  // The rows of all outputs in chunks claimed from one counter (as run_rows does), so a thread
  // slowed by another process takes fewer and the others are not left waiting.
  int64_t chunk[kMaxOuts], first[kMaxOuts + 1];
  first[0] = 0;
  for (size_t j = 0; j < outs.size(); ++j) {
    chunk[j] = outs[j].w.rows / (int64_t{4} * par.n_threads);
    chunk[j] = chunk[j] < kMatmulRowGrain ? kMatmulRowGrain : (chunk[j] + kMatmulRowGrain - 1) / kMatmulRowGrain * kMatmulRowGrain;
    first[j + 1] = first[j] + (outs[j].w.rows + chunk[j] - 1) / chunk[j];
  }
  std::atomic<int64_t> next{0};
  par([&](int, int) {
    size_t j = 0;
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < first[outs.size()];
         c = next.fetch_add(1, std::memory_order_relaxed)) {
      while (c >= first[j + 1]) ++j;  // claims only grow: j never moves back
      const MatmulOut& o = outs[j];
      const int64_t b = (c - first[j]) * chunk[j], e = b + chunk[j] < o.w.rows ? b + chunk[j] : o.w.rows;
      kernels[j](o.w.data, row_bytes[j], cols, scratch.rows() + slot[j], nullptr, 1, o.y, o.ldy, b, e);
    }
  });
  return {};
}

}  // namespace detail

// y_j = W_j x for every output j: x (n rows of w.cols floats, all outputs have the same cols)
// is quantized ONCE per activation format, then: n == 1 and par has several threads -> the
// rows of ALL matrices are split over the threads in ONE fork-join; n > 1 -> each product as
// matmul does, reusing the quantized x. Bit-identical to calling matmul per output. Errors
// carry the output's name as context.
inline Status matmul_many(std::span<const MatmulOut> outs, const float* x, int64_t n, MatmulScratch& scratch,
                          ParallelFor par) {
  for (const MatmulOut& o : outs) {
    if (auto st = detail::check_product(o.w, n, o.y, o.ldy); !st) return detail::named(st.error(), o.name);
    if (o.w.cols != outs[0].w.cols)
      return detail::named(make_error(Errc::invalid_argument, "matmul_many: outputs of different row lengths (" +
                                                                  std::to_string(o.w.cols) + " vs " +
                                                                  std::to_string(outs[0].w.cols) + ")"),
                           o.name);
    if (n > 0 && o.w.rows > 0 && !x) return detail::named(make_error(Errc::invalid_argument, "matmul: null pointer"), o.name);
  }
  if (n == 0 || outs.empty()) return {};
  if (n == 1 && par.n_threads > 1 && outs.size() <= detail::kMatmulManyMaxOuts) return detail::matmul_many_one_token(outs, x, scratch, par);
  for (size_t j = 0; j < outs.size(); ++j) {
    const detail::ActFormat fmt = detail::act_format_for(outs[j].w.type);
    bool seen = false;  // an earlier output of this format did them all
    for (size_t i = 0; i < j && !seen; ++i) seen = detail::act_format_for(outs[i].w.type) == fmt;
    if (seen) continue;
    if (auto st = quantize_activations(outs[j].w.type, x, n, outs[j].w.cols, scratch, par); !st)
      return detail::named(st.error(), outs[j].name);
    for (size_t i = j; i < outs.size(); ++i) {
      if (detail::act_format_for(outs[i].w.type) != fmt) continue;
      if (auto st = matmul_quantized(outs[i].w, n, outs[i].y, outs[i].ldy, scratch, par); !st)
        return detail::named(st.error(), outs[i].name);
    }
  }
  return {};
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#undef TINYSLM_TARGET_AVX2
#undef TINYSLM_TARGET_AVX512
#undef TINYSLM_TARGET_NEON
#undef TINYSLM_X86_GEMV_BODY
// ---- end tinyslm/kernels.hpp ----

// ---- begin tinyslm/ops.hpp ----
// tinyslm ops: the element-wise and attention kernels of the forward pass (kernels layer).
//
// RMSNorm / LayerNorm, RoPE (normal and NeoX, frequency base, linear scaling, per-pair
// frequency factors), softmax, SwiGLU / GeGLU, soft-capping, and causal attention over an
// F16 KV cache with GQA and a sliding window. Each kernel is plain scalar code written so the
// compiler vectorises it; the hot ones are compiled a second and third time for AVX2 and
// AVX-512 (function target attributes) and picked at run time from active_simd_level() (core.hpp,
// the resolver matmul uses too: avx512 -> AVX-512, avx2 / avxvnni -> AVX2, any other -> scalar),
// so one binary runs anywhere.
// Every reduction has a fixed order: results do not depend on the number of threads.

#include <cmath>
#include <cstdint>
#include <cstring>


#if defined(TINYSLM_ARCH_X86) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define TINYSLM_OPS_X86 1
#define TINYSLM_OPS_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TINYSLM_OPS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#endif
#if defined(__GNUC__) || defined(__clang__)
#define TINYSLM_OPS_INLINE __attribute__((always_inline)) inline
#else
#define TINYSLM_OPS_INLINE inline
#endif

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace ops {

namespace detail {

inline uint32_t f32_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// x rounded to the nearest fp16 value (ties to even), kept as a float. Exact for the fp16
// normal range, which is all attention inputs use; branch-free so it vectorises.
TINYSLM_OPS_INLINE float round_to_f16(float x) {
  uint32_t u = f32_bits(x);
  u += 0xfffu + ((u >> 13) & 1u);
  return bits_f32(u & 0xffffe000u);
}

// exp(x) for float, branch-free (vectorises): 2^n * p(r) with x = n ln2 + r, |r| <= ln2/2,
// p a degree-6 polynomial; relative error below 2 ulp on [-87, 88], 0 below -87.
TINYSLM_OPS_INLINE float exp_f32(float x) {
  const float hi = 88.3762626647949f, lo = -87.3365447505531f;
  const bool underflow = x < lo;
  x = x > hi ? hi : (x < lo ? lo : x);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const int32_t e = static_cast<int32_t>(n);
  const float scale = bits_f32(static_cast<uint32_t>(e + 127) << 23);
  const float out = p * scale;
  return underflow ? 0.0f : out;
}

TINYSLM_OPS_INLINE float tanh_f32(float x) {
  // tanh(x) = 1 - 2 / (exp(2x) + 1), saturating cleanly for large |x|
  const float e = exp_f32(2.0f * x);
  return 1.0f - 2.0f / (e + 1.0f);
}

// ---- bodies compiled once per instruction set ----

TINYSLM_OPS_INLINE void silu_mul_body(const float* g, const float* u, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] / (1.0f + exp_f32(-g[i])) * u[i];
}

TINYSLM_OPS_INLINE void gelu_mul_body(const float* g, const float* u, float* out, int64_t n) {
  const float c = 0.79788456080286535587989211986876f;  // sqrt(2/pi)
  for (int64_t i = 0; i < n; ++i) {
    const float x = g[i];
    const float t = tanh_f32(c * x * (1.0f + 0.044715f * x * x));
    out[i] = 0.5f * x * (1.0f + t) * u[i];
  }
}

// s[j] = sum_d q[d] * kt[d][j]: one query against keys [0, n) stored transposed (rows of
// ld floats, readable up to 64 past n). Blocks of 64 keys stay in registers over d.
TINYSLM_OPS_INLINE void scores_body(const float* q, const float* kt, int64_t ld, int64_t hd,
                                    int64_t n, float* s) {
  constexpr int64_t kB = 64;
  for (int64_t jb = 0; jb < n; jb += kB) {
    float acc[kB] = {};
    for (int64_t d = 0; d < hd; ++d) {
      const float qd = q[d];
      const float* row = kt + d * ld + jb;
      for (int64_t j = 0; j < kB; ++j) acc[j] += qd * row[j];
    }
    const int64_t m = n - jb < kB ? n - jb : kB;
    for (int64_t j = 0; j < m; ++j) s[jb + j] = acc[j];
  }
}

// Four queries at once (prefill): s[r * ss + j] = sum_d q[r * hd + d] * kt[d][j]. Each key
// row is loaded once for the four; the same sums in the same order as scores_body.
TINYSLM_OPS_INLINE void scores4_body(const float* q, int64_t hd, const float* kt, int64_t ld, int64_t n,
                                     float* s, int64_t ss) {
  constexpr int64_t kB = 32;
  for (int64_t jb = 0; jb < n; jb += kB) {
    float acc[4][kB] = {};
    for (int64_t d = 0; d < hd; ++d) {
      const float* row = kt + d * ld + jb;
      for (int r = 0; r < 4; ++r) {
        const float qd = q[r * hd + d];
        for (int64_t j = 0; j < kB; ++j) acc[r][j] += qd * row[j];
      }
    }
    const int64_t m = n - jb < kB ? n - jb : kB;
    for (int r = 0; r < 4; ++r)
      for (int64_t j = 0; j < m; ++j) s[r * ss + jb + j] = acc[r][j];
  }
}

// Four queries at once: out[r][d] = sum_j p[r * ps + j] * v[j][d] (p is zero outside a
// query's window, which adds exact zeros).
template <int64_t HD>
TINYSLM_OPS_INLINE void mix4_fixed(const float* p, int64_t ps, const float* v, int64_t n, float* out,
                                   int64_t os) {
  float acc[4][HD] = {};
  for (int64_t j = 0; j < n; ++j) {
    const float* row = v + j * HD;
    for (int r = 0; r < 4; ++r) {
      const float pj = p[r * ps + j];
      for (int64_t d = 0; d < HD; ++d) acc[r][d] += pj * row[d];
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int64_t d = 0; d < HD; ++d) out[r * os + d] = acc[r][d];
}

TINYSLM_OPS_INLINE void mix4_body(const float* p, int64_t ps, const float* v, int64_t hd, int64_t n,
                                  float* out, int64_t os) {
  if (hd == 64) return mix4_fixed<64>(p, ps, v, n, out, os);
  for (int r = 0; r < 4; ++r) {
    float* o = out + r * os;
    for (int64_t d = 0; d < hd; ++d) o[d] = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      const float pj = p[r * ps + j];
      const float* row = v + j * hd;
      for (int64_t d = 0; d < hd; ++d) o[d] += pj * row[d];
    }
  }
}

// s[j] = q . k[j] for keys stored row by row (decode: one query, no transposition). Each
// dot sums 16 lanes, then folds them in a fixed order.
TINYSLM_OPS_INLINE void scores_rows_body(const float* q, const float* k, int64_t hd, int64_t n, float* s) {
  for (int64_t j = 0; j < n; ++j) {
    const float* row = k + j * hd;
    float acc[16] = {};
    int64_t d = 0;
    for (; d + 16 <= hd; d += 16)
      for (int l = 0; l < 16; ++l) acc[l] += q[d + l] * row[d + l];
    for (int l = 0; d < hd; ++d, ++l) acc[l] += q[d] * row[d];
    for (int w = 8; w >= 1; w /= 2)
      for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
    s[j] = acc[0];
  }
}

// out[d] = sum_j p[j] * v[j][d], in order of j; the accumulators stay in registers for the
// common head sizes.
template <int64_t HD>
TINYSLM_OPS_INLINE void mix_values_fixed(const float* p, const float* v, int64_t n, float* out) {
  float acc[HD] = {};
  for (int64_t j = 0; j < n; ++j) {
    const float pj = p[j];
    const float* row = v + j * HD;
    for (int64_t d = 0; d < HD; ++d) acc[d] += pj * row[d];
  }
  for (int64_t d = 0; d < HD; ++d) out[d] = acc[d];
}

TINYSLM_OPS_INLINE void mix_values_body(const float* p, const float* v, int64_t hd, int64_t n,
                                        float* out) {
  if (hd == 64) return mix_values_fixed<64>(p, v, n, out);
  if (hd == 128) return mix_values_fixed<128>(p, v, n, out);
  for (int64_t d = 0; d < hd; ++d) out[d] = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    const float pj = p[j];
    const float* row = v + j * hd;
    for (int64_t d = 0; d < hd; ++d) out[d] += pj * row[d];
  }
}

// Sum of x[0, n) in double, over 16 lanes folded in a fixed order (vectorises; the order
// depends only on n).
TINYSLM_OPS_INLINE double sum_lanes(const float* x, int64_t n) {
  double acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] += static_cast<double>(x[i + l]);
  for (int l = 0; i < n; ++i, ++l) acc[l] += static_cast<double>(x[i]);
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

TINYSLM_OPS_INLINE float max_lanes(const float* x, int64_t n) {
  float acc[16];
  for (int l = 0; l < 16; ++l) acc[l] = -INFINITY;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] = x[i + l] > acc[l] ? x[i + l] : acc[l];
  for (int l = 0; i < n; ++i, ++l) acc[l] = x[i] > acc[l] ? x[i] : acc[l];
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] = acc[l + w] > acc[l] ? acc[l + w] : acc[l];
  return acc[0];
}

// Scale, optional soft-cap and exp(s - max) of s[0, n) in place; returns 1 / the sum (summed in
// double), the factor that normalises them. Both softmaxes of attention start here.
TINYSLM_OPS_INLINE float softmax_exp_body(float* s, int64_t n, float scale, float softcap) {
  if (softcap > 0.0f) {
    const float inv = 1.0f / softcap;
    for (int64_t j = 0; j < n; ++j) s[j] = softcap * tanh_f32(s[j] * scale * inv);
  } else {
    for (int64_t j = 0; j < n; ++j) s[j] *= scale;
  }
  const float mx = max_lanes(s, n);
  for (int64_t j = 0; j < n; ++j) s[j] = exp_f32(s[j] - mx);
  return static_cast<float>(1.0 / sum_lanes(s, n));
}

// Softmax of s[0, n) after scale and optional soft-cap; the probabilities are rounded to
// fp16 as llama.cpp's F16-cache attention does.
TINYSLM_OPS_INLINE void softmax_body(float* s, int64_t n, float scale, float softcap) {
  const float inv = softmax_exp_body(s, n, scale, softcap);
  for (int64_t j = 0; j < n; ++j) s[j] = round_to_f16(s[j] * inv);
}

// Sum of squares in double over 16 lanes (RMSNorm).
TINYSLM_OPS_INLINE double sum_squares_body(const float* x, int64_t n) {
  double acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] += static_cast<double>(x[i + l]) * static_cast<double>(x[i + l]);
  for (int l = 0; l < 16 && i < n; ++i, ++l) acc[l] += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

#define TINYSLM_OPS_VARIANTS(name, params, args)                                  \
  inline void name##_scalar params { name##_body args; }                          \
  TINYSLM_OPS_VARIANT_X86(name, params, args)                                     \
  inline void name params {                                                       \
    TINYSLM_OPS_DISPATCH_X86(name, args)                                          \
    name##_scalar args;                                                           \
  }
#define TINYSLM_OPS_VARIANTS_R(ret, name, params, args)                         \
  inline ret name##_scalar params { return name##_body args; }                   \
  TINYSLM_OPS_VARIANT_X86_R(ret, name, params, args)                             \
  inline ret name params {                                                       \
    TINYSLM_OPS_DISPATCH_X86_R(name, args)                                       \
    return name##_scalar args;                                                   \
  }
#if defined(TINYSLM_OPS_X86)
#define TINYSLM_OPS_VARIANT_X86_R(ret, name, params, args)                        \
  TINYSLM_OPS_AVX2 inline ret name##_avx2 params { return name##_body args; }     \
  TINYSLM_OPS_AVX512 inline ret name##_avx512 params { return name##_body args; }
#define TINYSLM_OPS_DISPATCH_X86_R(name, args)             \
  switch (active_x86_width()) {                            \
    case 2: return name##_avx512 args;                     \
    case 1: return name##_avx2 args;                       \
    default: break;                                        \
  }
#define TINYSLM_OPS_VARIANT_X86(name, params, args)                   \
  TINYSLM_OPS_AVX2 inline void name##_avx2 params { name##_body args; } \
  TINYSLM_OPS_AVX512 inline void name##_avx512 params { name##_body args; }
#define TINYSLM_OPS_DISPATCH_X86(name, args)                 \
  switch (active_x86_width()) {                              \
    case 2: name##_avx512 args; return;                      \
    case 1: name##_avx2 args; return;                        \
    default: break;                                          \
  }
#else
#define TINYSLM_OPS_VARIANT_X86(name, params, args)
#define TINYSLM_OPS_DISPATCH_X86(name, args)
#define TINYSLM_OPS_VARIANT_X86_R(ret, name, params, args)
#define TINYSLM_OPS_DISPATCH_X86_R(name, args)
#endif

TINYSLM_OPS_VARIANTS(silu_mul, (const float* g, const float* u, float* out, int64_t n),
                     (g, u, out, n))
TINYSLM_OPS_VARIANTS(gelu_mul, (const float* g, const float* u, float* out, int64_t n),
                     (g, u, out, n))
TINYSLM_OPS_VARIANTS(scores, (const float* q, const float* kt, int64_t ld, int64_t hd, int64_t n, float* s),
                     (q, kt, ld, hd, n, s))
TINYSLM_OPS_VARIANTS(scores_rows, (const float* q, const float* k, int64_t hd, int64_t n, float* s),
                     (q, k, hd, n, s))
TINYSLM_OPS_VARIANTS(scores4, (const float* q, int64_t hd, const float* kt, int64_t ld, int64_t n, float* s, int64_t ss),
                     (q, hd, kt, ld, n, s, ss))
TINYSLM_OPS_VARIANTS(mix4, (const float* p, int64_t ps, const float* v, int64_t hd, int64_t n, float* out, int64_t os),
                     (p, ps, v, hd, n, out, os))
TINYSLM_OPS_VARIANTS_R(double, sum_squares, (const float* x, int64_t n), (x, n))
TINYSLM_OPS_VARIANTS(mix_values, (const float* p, const float* v, int64_t hd, int64_t n, float* out),
                     (p, v, hd, n, out))
TINYSLM_OPS_VARIANTS(softmax, (float* s, int64_t n, float scale, float softcap), (s, n, scale, softcap))

#undef TINYSLM_OPS_VARIANTS
#undef TINYSLM_OPS_VARIANTS_R
#undef TINYSLM_OPS_VARIANT_X86
#undef TINYSLM_OPS_DISPATCH_X86
#undef TINYSLM_OPS_VARIANT_X86_R
#undef TINYSLM_OPS_DISPATCH_X86_R

// fp16 <-> fp32 rows (hardware conversion where available; identical results: both RNE).
inline void f16_to_f32_scalar(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}
inline void f32_to_f16_scalar(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}
#if defined(TINYSLM_OPS_X86)
TINYSLM_OPS_AVX2 inline void f16_to_f32_avx2(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}
TINYSLM_OPS_AVX2 inline void f32_to_f16_avx2(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}
#endif

#if defined(TINYSLM_OPS_X86)
// Decode, AVX-512: one head of one query straight from the F16 cache (keys and values read
// once, 2 bytes each, converted in registers). hk and hv multiples of 16, hv <= 128.
TINYSLM_OPS_AVX512 inline __m512 f16x16(const uint16_t* p) {
  return _mm512_maskz_cvtph_ps(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
TINYSLM_OPS_AVX512 inline void decode_head_avx512(const float* qh, const uint16_t* k, const uint16_t* v,
                                                  int64_t hk, int64_t hv, int64_t n, float scale,
                                                  float softcap, float* s, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t* kr = k + j * hk;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t d = 0; d < hk; d += 16)
      acc = _mm512_fmadd_ps(_mm512_loadu_ps(qh + d), f16x16(kr + d), acc);
    // Fold the 16 lanes in a fixed order (the zero-masked shuffles avoid GCC 12's
    // "may be used uninitialized" warnings from the unmasked intrinsics).
    acc = _mm512_add_ps(acc, _mm512_maskz_shuffle_f32x4(0xffff, acc, acc, 0x4E));
    acc = _mm512_add_ps(acc, _mm512_maskz_shuffle_f32x4(0xffff, acc, acc, 0xB1));
    acc = _mm512_add_ps(acc, _mm512_maskz_shuffle_ps(0xffff, acc, acc, 0x4E));
    acc = _mm512_add_ps(acc, _mm512_maskz_shuffle_ps(0xffff, acc, acc, 0xB1));
    s[j] = _mm512_cvtss_f32(acc);
  }
  softmax_body(s, n, scale, softcap);
  __m512 o[8];
  const int64_t nb = hv / 16;
  for (int64_t b = 0; b < nb; ++b) o[b] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const __m512 pj = _mm512_set1_ps(s[j]);
    const uint16_t* vr = v + j * hv;
    for (int64_t b = 0; b < nb; ++b)
      o[b] = _mm512_fmadd_ps(pj, f16x16(vr + 16 * b), o[b]);
  }
  for (int64_t b = 0; b < nb; ++b) _mm512_storeu_ps(out + 16 * b, o[b]);
}
#endif

}  // namespace detail

inline void f16_to_f32(const uint16_t* src, float* dst, int64_t n) {
#if defined(TINYSLM_OPS_X86)
  if (active_x86_width() >= 1) return detail::f16_to_f32_avx2(src, dst, n);
#endif
  detail::f16_to_f32_scalar(src, dst, n);
}
inline void f32_to_f16(const float* src, uint16_t* dst, int64_t n) {
#if defined(TINYSLM_OPS_X86)
  if (active_x86_width() >= 1) return detail::f32_to_f16_avx2(src, dst, n);
#endif
  detail::f32_to_f16_scalar(src, dst, n);
}

// ---------------------------------------------------------------------------------------
// Norms

// y = x / sqrt(mean(x^2) + eps) * w   (w may be null: no weight). y may alias x.
inline void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps) {
  const double sum = detail::sum_squares(x, n);
  const float scale = 1.0f / std::sqrt(static_cast<float>(sum / static_cast<double>(n)) + eps);
  if (w) {
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] * scale) * w[i];
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale;
  }
}

// y = (x - mean) / sqrt(var + eps) * w + b   (w, b may be null). y may alias x.
inline void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t n, float eps) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const float mean = static_cast<float>(sum / static_cast<double>(n));
  double var = 0.0;
  for (int64_t i = 0; i < n; ++i) var += static_cast<double>(x[i] - mean) * (x[i] - mean);
  const float scale = 1.0f / std::sqrt(static_cast<float>(var / static_cast<double>(n)) + eps);
  for (int64_t i = 0; i < n; ++i) {
    float v = (x[i] - mean) * scale;
    if (w) v *= w[i];
    if (b) v += b[i];
    y[i] = v;
  }
}

// ---------------------------------------------------------------------------------------
// RoPE

enum class RopeLayout : uint8_t { normal, neox };

// cos/sin of the n_rot/2 rotation angles at `pos`, interleaved: cs[2i] = cos, cs[2i+1] = sin.
// theta_i = pos * freq_scale * base^(-2i/n_rot) / freq_factors[i]; the power is built by
// repeated multiplication in float, as llama.cpp does, so the angles match it closely.
inline void rope_angles(int64_t pos, int64_t n_rot, float base, float freq_scale,
                        const float* freq_factors, float* cs) {
  const float theta_scale = std::pow(base, -2.0f / static_cast<float>(n_rot));
  float theta = static_cast<float>(pos);
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    const float ff = freq_factors ? freq_factors[i] : 1.0f;
    const float t = freq_scale * (theta / ff);
    cs[2 * i] = std::cos(t);
    cs[2 * i + 1] = std::sin(t);
    theta *= theta_scale;
  }
}

// Rotates the first n_rot values of each of n_heads heads (head h at x + h * head_dim).
inline void rope_apply(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot,
                       const float* cs, RopeLayout layout) {
  const int64_t half = n_rot / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    if (layout == RopeLayout::normal) {
      for (int64_t i = 0; i < half; ++i) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * c - b * s;
        v[2 * i + 1] = a * s + b * c;
      }
    } else {
      for (int64_t i = 0; i < half; ++i) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = a * s + b * c;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Activations, softmax, soft-capping

// out = silu(g) * u  (SwiGLU). out may alias g or u.
inline void silu_mul(const float* g, const float* u, float* out, int64_t n) { detail::silu_mul(g, u, out, n); }
// out = gelu_tanh(g) * u  (GeGLU). out may alias g or u.
inline void gelu_mul(const float* g, const float* u, float* out, int64_t n) { detail::gelu_mul(g, u, out, n); }

// In-place softmax (max-subtracted; sum in double).
inline void softmax(float* x, int64_t n) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

// x = cap * tanh(x / cap)
inline void soft_cap(float* x, int64_t n, float cap) {
  const float inv = 1.0f / cap;
  for (int64_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] * inv);
}

inline void add(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}
inline void scale(float* y, float s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= s;
}

// ---------------------------------------------------------------------------------------
// Attention over an F16 KV cache

struct AttentionShape {
  int64_t n_head = 0, n_head_kv = 0;
  int64_t head_dim_k = 0, head_dim_v = 0;
  float scale = 1.0f;     // multiplies Q.K
  float softcap = 0.0f;   // 0 = off
  int64_t n_swa = 0;      // 0 = full causal attention; else p - q < n_swa
};

// Scratch owned by the caller, sized once for a context (see reserve()).
struct AttentionScratch {
  AlignedBuffer<float> kt;    // [n_head_kv][head_dim_k][n_ctx]  keys, transposed, f32
  AlignedBuffer<float> vf;    // [n_head_kv][n_ctx][head_dim_v]  values, f32
  AlignedBuffer<float> rows;  // per thread: scores[n_ctx] + q[head_dim_k]
  int64_t n_ctx = 0, n_threads = 0, row_stride = 0;
  int64_t group = 0;  // quantized cache: most heads a row serves at once (kv_quant.hpp)

  // Floats of one thread's row. F16 path: 4 query rows of scores, q and output. Quantized
  // cache: the scores, q blocks and sums of a whole GQA group (plus one f16 row of a mixed cache).
  static int64_t row_floats(const AttentionShape& a, int64_t n_ctx16, bool f32_copies) {
    const int64_t hk = a.head_dim_k, hv = a.head_dim_v;
    if (f32_copies) return (4 * n_ctx16 + 4 * hk + 4 * hv + 15) / 16 * 16;
    const int64_t g = quant_group(a) * 4;  // 4 queries of a prefill block (kv_quant.hpp kQueryBlock)
    return (g * n_ctx16 + 2 * g * hk + 2 * hk + g * hv + hv + 15) / 16 * 16;
  }
  static int64_t quant_group(const AttentionShape& a) { return (a.n_head + a.n_head_kv - 1) / a.n_head_kv; }

  // f32_copies: the kt / vf copies of the F16 path (a quantized cache needs rows only).
  [[nodiscard]] bool reserve(const AttentionShape& a, int64_t n_ctx_, int n_threads_, bool f32_copies = true) {
    n_ctx = (n_ctx_ + 15) / 16 * 16;
    n_threads = n_threads_;
    row_stride = row_floats(a, n_ctx, f32_copies);
    group = quant_group(a);
    if (!f32_copies) return rows.allocate(static_cast<size_t>(row_stride * n_threads));
    // keys are read in blocks of 64 past the last one: pad
    return kt.allocate(static_cast<size_t>(a.n_head_kv * a.head_dim_k * n_ctx + 64)) &&
           vf.allocate(static_cast<size_t>(a.n_head_kv * n_ctx * a.head_dim_v)) &&
           rows.allocate(static_cast<size_t>(row_stride * n_threads));
  }
};

namespace detail {

// One call of attention(): its arguments and the paths it can take.
struct AttentionCall {
  const AttentionShape& a;
  const float* q;
  int64_t q_stride, n_tokens, pos0;
  const uint16_t* k;
  const uint16_t* v;
  int64_t cache_ctx;
  float* out;
  int64_t out_stride;
  AttentionScratch& scratch;
  const ParallelFor& par;

  int64_t hk() const { return a.head_dim_k; }
  int64_t hv() const { return a.head_dim_v; }
  int64_t group() const { return a.n_head / a.n_head_kv; }
  int64_t n_kv() const { return pos0 + n_tokens; }
  // The oldest position query position p can see.
  int64_t window(int64_t p) const { return a.n_swa > 0 && p - a.n_swa + 1 > 0 ? p - a.n_swa + 1 : 0; }
  // Q rounded to fp16, as llama.cpp multiplies it by the F16 cache in F16.
  void round_q(float* qh, int64_t h, int64_t i) const {
    const float* qi = q + i * q_stride + h * hk();
    for (int64_t d = 0; d < hk(); ++d) qh[d] = round_to_f16(qi[d]);
  }

#if defined(TINYSLM_OPS_X86)
  // Decode on AVX-512: one (head, query) per work item, reading the F16 cache directly.
  void decode_avx512() {
    par([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(a.n_head * n_tokens, t, nt, 1, &b, &e);
      float* s = scratch.rows.data() + t * scratch.row_stride;
      float* qh = s + scratch.n_ctx;
      for (int64_t w = b; w < e; ++w) {
        const int64_t h = w / n_tokens, i = w % n_tokens, g = h / group();
        const int64_t p = pos0 + i, lo = window(p), n = p + 1 - lo;
        round_q(qh, h, i);
        decode_head_avx512(qh, k + (g * cache_ctx + lo) * hk(), v + (g * cache_ctx + lo) * hv(), hk(), hv(), n,
                           a.scale, a.softcap, s, out + i * out_stride + h * hv());
      }
    });
  }
#endif

  // Decode: one work item per KV head. Its keys and values are converted to f32 rows once and
  // shared by the heads of its group; then scores, softmax, weighted sum of the values.
  void decode() {
    const int64_t ld = scratch.n_ctx, first = window(pos0);
    par([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(a.n_head_kv, t, nt, 1, &b, &e);
      float* s = scratch.rows.data() + t * scratch.row_stride;
      float* qh = s + scratch.n_ctx;
      for (int64_t g = b; g < e; ++g) {
        float* kr = scratch.kt.data() + g * hk() * ld;  // [position][d] here
        float* vr = scratch.vf.data() + g * ld * hv();
        f16_to_f32(k + (g * cache_ctx + first) * hk(), kr + first * hk(), (n_kv() - first) * hk());
        f16_to_f32(v + (g * cache_ctx + first) * hv(), vr + first * hv(), (n_kv() - first) * hv());
        for (int64_t i = 0; i < n_tokens; ++i) {
          const int64_t p = pos0 + i, lo = window(p), n = p + 1 - lo;
          for (int64_t h = g * group(); h < (g + 1) * group(); ++h) {
            round_q(qh, h, i);
            scores_rows(qh, kr + lo * hk(), hk(), n, s);
            softmax(s, n, a.scale, a.softcap);
            mix_values(s, vr + lo * hv(), hv(), n, out + i * out_stride + h * hv());
          }
        }
      }
    });
  }

  // Prefill, step 1: keys to f32, transposed (so scores are row-wise multiply-adds), values to f32.
  void prefill_convert() {
    const int64_t ld = scratch.n_ctx, first = window(pos0), span = n_kv() - first;
    par([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(a.n_head_kv * span, t, nt, 16, &b, &e);
      float tmp[1024];
      for (int64_t w = b; w < e; ++w) {
        const int64_t g = w / span, j = first + w % span;
        f16_to_f32(k + (g * cache_ctx + j) * hk(), tmp, hk());
        float* kt = scratch.kt.data() + g * hk() * ld;
        for (int64_t d = 0; d < hk(); ++d) kt[d * ld + j] = tmp[d];
        f16_to_f32(v + (g * cache_ctx + j) * hv(), scratch.vf.data() + (g * ld + j) * hv(), hv());
      }
    });
  }

  // Prefill, step 2: one (head, block of 4 queries) per work item; the block shares its key and
  // value loads, each query masked to its own causal window.
  void prefill_blocks() {
    const int64_t ld = scratch.n_ctx, n_blocks = (n_tokens + 3) / 4, kd = hk(), vd = hv();
    par([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(a.n_head * n_blocks, t, nt, 1, &b, &e);
      float* s = scratch.rows.data() + t * scratch.row_stride;  // 4 rows of n_ctx
      float* qh = s + 4 * scratch.n_ctx;                          // 4 rows of head_dim_k
      float* o4 = qh + 4 * kd;                                    // 4 rows of head_dim_v
      for (int64_t w = b; w < e; ++w) {
        const int64_t h = w / n_blocks, i0 = (w % n_blocks) * 4, g = h / group();
        const int64_t count = n_tokens - i0 < 4 ? n_tokens - i0 : 4;
        const int64_t lo = window(pos0 + i0), n = pos0 + i0 + count - lo;
        for (int r = 0; r < 4; ++r) round_q(qh + r * kd, h, i0 + (r < count ? r : count - 1));
        scores4(qh, kd, scratch.kt.data() + g * kd * ld + lo, ld, n, s, scratch.n_ctx);
        for (int64_t r = 0; r < 4; ++r) {
          float* sr = s + r * scratch.n_ctx;
          const int64_t p = pos0 + i0 + (r < count ? r : count - 1);
          const int64_t a0 = window(p) - lo, a1 = p + 1 - lo;  // this query's keys [a0, a1)
          softmax(sr + a0, a1 - a0, a.scale, a.softcap);
          for (int64_t j = 0; j < a0; ++j) sr[j] = 0.0f;
          for (int64_t j = a1; j < n; ++j) sr[j] = 0.0f;
        }
        mix4(s, scratch.n_ctx, scratch.vf.data() + (g * ld + lo) * vd, vd, n, o4, vd);
        for (int64_t r = 0; r < count; ++r)
          std::memcpy(out + (i0 + r) * out_stride + h * vd, o4 + r * vd, static_cast<size_t>(vd) * sizeof(float));
      }
    });
  }
};

}  // namespace detail

// Causal attention for n_tokens queries at positions pos0 .. pos0 + n_tokens - 1.
//   q:   row i (stride q_stride) holds n_head heads of head_dim_k values (after RoPE)
//   k,v: this layer's cache, [n_head_kv][cache_ctx][head_dim], positions 0 .. pos0+n_tokens-1 filled
//   out: row i (stride out_stride) receives n_head heads of head_dim_v values
// Each (head, query) is computed whole by one thread, so the thread count never changes a result.
inline void attention(const AttentionShape& a, const float* q, int64_t q_stride, int64_t n_tokens,
                      int64_t pos0, const uint16_t* k, const uint16_t* v, int64_t cache_ctx,
                      float* out, int64_t out_stride, AttentionScratch& scratch,
                      const ParallelFor& par) {
  detail::AttentionCall call{a, q, q_stride, n_tokens, pos0, k, v, cache_ctx, out, out_stride, scratch, par};
#if defined(TINYSLM_OPS_X86)
  const int64_t hk = a.head_dim_k, hv = a.head_dim_v;
  if (n_tokens <= 2 && active_x86_width() == 2 && hk % 16 == 0 && hv % 16 == 0 && hv <= 128)
    return call.decode_avx512();
#endif
  if (n_tokens <= 2) return call.decode();
  call.prefill_convert();
  call.prefill_blocks();
}

}  // namespace ops
}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#undef TINYSLM_OPS_INLINE
#if defined(TINYSLM_OPS_X86)
#undef TINYSLM_OPS_AVX2
#undef TINYSLM_OPS_AVX512
#undef TINYSLM_OPS_X86
#endif
// ---- end tinyslm/ops.hpp ----

// ---- begin tinyslm/threads.hpp ----
// tinyslm threads: a small persistent thread pool. The caller's thread takes part, so a pool of
// n threads starts n - 1 workers; a pool of 1 starts none and runs work inline.
//
// A job is n_threads calls f(t, n_threads), t = 0 .. n-1. The indices are not tied to threads:
// each participant (the caller and every awake worker) claims the next unclaimed index from one
// atomic counter, so the caller never waits for a worker that has not woken up (a worker
// descheduled by another process on its core); it only waits for indices some worker has
// already claimed and not finished. Which thread runs an index changes nothing the index
// computes, so results do not depend on the schedule.
//
// Waiting: spin briefly with a pause instruction (decode issues many short jobs back to back),
// then block on a mutex and condition variable. Not std::atomic::wait: libstdc++'s fallback
// where there is no futex (mingw, macOS, the BSDs) can lose a wakeup.
//
// When threads cannot be created (std::thread throws std::system_error, the system's limit,
// wasm without pthreads) the pool keeps the workers it has, down to none: size() says how
// many threads it really has, and nothing fails.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#if !defined(TINYSLM_NO_THREADS)
#include <thread>
#if !defined(TINYSLM_NO_EXCEPTIONS)
#include <system_error>
#endif
#endif
#if defined(__linux__)
#include <sched.h>
#endif


#if defined(TINYSLM_ARCH_X86) && (defined(__GNUC__) || defined(__clang__))
#define TINYSLM_CPU_RELAX() __builtin_ia32_pause()
#elif defined(TINYSLM_ARCH_ARM64) && (defined(__GNUC__) || defined(__clang__))
#define TINYSLM_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define TINYSLM_CPU_RELAX() ((void)0)
#endif

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

// Where the pool's workers run, for CPUs with big and little cores. Applied on each worker
// thread as it starts, before it takes any work; the caller's own thread (index 0 of every
// job) is the application's and is left alone.
//   cpu_mask:  bit i set = the workers may run on CPU i (Linux and Android, through
//              sched_setaffinity; no effect elsewhere, and none when 0 or when the OS refuses).
//   on_worker_start(worker, user): called on worker thread `worker` (1 .. n_threads - 1) after
//              the mask is applied; set the affinity, priority or QoS class the platform offers
//              (SetThreadAffinityMask, pthread_set_qos_class_self_np, ...). Must not throw.
struct ThreadPlacement {
  uint64_t cpu_mask = 0;
  void (*on_worker_start)(int worker, void* user) = nullptr;
  void* user = nullptr;
};

// Starts a thread running `body`. The pool's default is std::thread; tests inject one that
// fails. A failure is a thrown std::system_error or a returned thread that is not joinable.
#if !defined(TINYSLM_NO_THREADS)
using ThreadFactory = std::thread (*)(std::function<void()> body);
#endif

namespace detail {
// True on a pool's worker threads (and on a caller while it runs a job), so a nested run()
// executes inline instead of deadlocking on the busy pool.
inline bool& inside_thread_pool() {
  static thread_local bool inside = false;
  return inside;
}

// Spin on `pred` for about `spin_us` microseconds, then give up (returns pred()).
template <class Pred>
inline bool spin_until(Pred&& pred, int spin_us) {
  using clock = std::chrono::steady_clock;
  if (pred()) return true;
  if (spin_us <= 0) return false;
  const auto deadline = clock::now() + std::chrono::microseconds(spin_us);
  for (uint32_t i = 0;; ++i) {
    if (pred()) return true;
    TINYSLM_CPU_RELAX();
    if ((i & 63) == 63 && clock::now() >= deadline) return pred();
  }
}

inline void apply_placement(const ThreadPlacement& p, int worker) {
#if defined(__linux__) && defined(CPU_SET)
  if (p.cpu_mask) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int c = 0; c < 64; ++c)
      if (p.cpu_mask >> c & 1) CPU_SET(c, &set);
    (void)sched_setaffinity(0, sizeof set, &set);  // 0 = this thread on Linux
  }
#endif
  if (p.on_worker_start) p.on_worker_start(worker, p.user);
}

#if !defined(TINYSLM_NO_THREADS)
inline std::thread start_std_thread(std::function<void()> body) { return std::thread(std::move(body)); }

// Whether this build can start threads at all (emscripten without -pthread cannot).
#if defined(__EMSCRIPTEN__) && !defined(__EMSCRIPTEN_PTHREADS__)
inline constexpr bool kCanStartThreads = false;
#else
inline constexpr bool kCanStartThreads = true;
#endif

// One thread from `factory`, or a non-joinable thread when it cannot be started.
inline std::thread try_start_thread(ThreadFactory factory, std::function<void()> body) {
#if defined(TINYSLM_NO_EXCEPTIONS)
  return factory(std::move(body));
#else
  try {
    return factory(std::move(body));
  } catch (const std::system_error&) {
    return std::thread();
  }
#endif
}
#endif
}  // namespace detail

class ThreadPool {
 public:
  // n_threads < 1 is treated as 1. With TINYSLM_NO_THREADS the pool always has size 1; when
  // fewer threads can be started than asked for, it has as many as were started (see top).
  explicit ThreadPool(int n_threads, const ThreadPlacement& placement = {}) : ThreadPool(n_threads, placement, nullptr) {}
#if !defined(TINYSLM_NO_THREADS)
  ThreadPool(int n_threads, const ThreadPlacement& placement, ThreadFactory factory) {
    start(n_threads < 1 ? 1 : n_threads, placement, factory ? factory : &detail::start_std_thread);
  }
#else
  ThreadPool(int, const ThreadPlacement&, std::nullptr_t) {}
#endif
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
#if !defined(TINYSLM_NO_THREADS)
    if (state_) {
      state_->stop.store(true, std::memory_order_seq_cst);
      { std::lock_guard<std::mutex> lock(state_->m); }
      state_->work_cv.notify_all();
      for (auto& w : workers_) w.join();
    }
#endif
  }

  int size() const { return n_threads_; }

  // The handle the kernels layer takes (core.hpp): valid while the pool lives.
  ParallelFor parallel() {
    ParallelFor p;
    p.ctx = this;
    p.n_threads = n_threads_;
    p.dispatch = &ThreadPool::dispatch;
    return p;
  }

  // Calls f(index, n_threads) once for every index of the pool and returns when all calls are
  // done; the calling thread runs every index no awake worker claimed first (see top). Not to be called from two threads at
  // once; a call from inside a job runs all indices inline on the calling thread.
  template <class F>
  void run(F&& f) {
    if (n_threads_ <= 1 || detail::inside_thread_pool()) {
      for (int t = 0; t < n_threads_; ++t) f(t, n_threads_);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    run_task([](void* arg, int t, int n) { (*static_cast<Fn*>(arg))(t, n); },
             const_cast<void*>(static_cast<const void*>(&f)));
  }

  // How long (microseconds) an idle thread spins before it blocks. 0 when the pool has more
  // threads than the machine has cores: spinning would only take time from the ones working.
  void set_spin_microseconds(int us) { spin_us_.store(us < 0 ? 0 : us, std::memory_order_relaxed); }

 private:
  // ctl packs the job's generation (high 32 bits) with its next unclaimed index (low 32), so a
  // worker that wakes late cannot claim an index of a job other than the one it read.
  struct State {
    alignas(64) std::atomic<uint64_t> ctl{0};
    alignas(64) std::atomic<int> done{0};  // indices finished in the current job
    std::atomic<int> sleepers{0};          // workers blocked (or about to block) on work_cv
    std::atomic<bool> stop{false};
    ParallelFor::Task task = nullptr;
    void* arg = nullptr;
    std::mutex m;
    std::condition_variable work_cv, done_cv;
  };

  static void dispatch(void* ctx, ParallelFor::Task task, void* arg) {
    auto* pool = static_cast<ThreadPool*>(ctx);
    if (pool->n_threads_ <= 1 || detail::inside_thread_pool()) {
      for (int t = 0; t < pool->n_threads_; ++t) task(arg, t, pool->n_threads_);
      return;
    }
    pool->run_task(task, arg);
  }

#if defined(TINYSLM_NO_THREADS)
  void run_task(ParallelFor::Task task, void* arg) { task(arg, 0, 1); }
#else
  void start(int n, const ThreadPlacement& placement, ThreadFactory factory) {
    if (n <= 1 || !detail::kCanStartThreads) return;
    state_ = std::make_unique<State>();
    workers_.reserve(static_cast<size_t>(n - 1));
    for (int i = 1; i < n; ++i) {
      std::thread t = detail::try_start_thread(factory, [this, i, placement] {
        detail::apply_placement(placement, i);
        worker_loop();
      });
      if (!t.joinable()) break;
      workers_.push_back(std::move(t));
    }
    // Workers read n_threads_ only inside a job, which starts after this store.
    n_threads_ = 1 + static_cast<int>(workers_.size());
    const unsigned cores = std::thread::hardware_concurrency();
    if (cores != 0 && static_cast<unsigned>(n_threads_) > cores) spin_us_.store(0, std::memory_order_relaxed);
  }

  // Claims the next index of job `gen`; -1 when that job has none left (or is over).
  int claim(uint32_t gen) {
    uint64_t v = state_->ctl.load(std::memory_order_acquire);
    for (;;) {
      if (static_cast<uint32_t>(v >> 32) != gen || static_cast<uint32_t>(v) >= static_cast<uint32_t>(n_threads_)) return -1;
      if (state_->ctl.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire))
        return static_cast<int>(static_cast<uint32_t>(v));
    }
  }

  // Runs indices of job `gen` until none is left; returns how many it ran. task and arg are
  // read after a successful claim: the job cannot end (and be replaced) before it is counted.
  int run_claimed(uint32_t gen) {
    int ran = 0;
    for (int t = claim(gen); t >= 0; t = claim(gen), ++ran) state_->task(state_->arg, t, n_threads_);
    return ran;
  }

  void run_task(ParallelFor::Task task, void* arg) {
    State& s = *state_;
    s.task = task;
    s.arg = arg;
    s.done.store(0, std::memory_order_relaxed);
    const uint32_t gen = ++generation_;
    // seq_cst store, then seq_cst load of sleepers: a worker that registers as a sleeper after
    // this load sees the new generation when it re-checks under the mutex (and one that
    // registered before is woken here).
    s.ctl.store(static_cast<uint64_t>(gen) << 32, std::memory_order_seq_cst);
    if (s.sleepers.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lock(s.m); }
      s.work_cv.notify_all();
    }
    detail::inside_thread_pool() = true;
    const int ran = run_claimed(gen);
    detail::inside_thread_pool() = false;
    if (s.done.fetch_add(ran, std::memory_order_acq_rel) + ran == n_threads_) return;
    const auto finished = [&] { return s.done.load(std::memory_order_acquire) == n_threads_; };
    if (detail::spin_until(finished, spin_us_.load(std::memory_order_relaxed))) return;
    std::unique_lock<std::mutex> lock(s.m);
    s.done_cv.wait(lock, finished);
  }

  void worker_loop() {
    State& s = *state_;
    detail::inside_thread_pool() = true;
    uint32_t seen = 0;
    const auto news = [&] {
      return static_cast<uint32_t>(s.ctl.load(std::memory_order_seq_cst) >> 32) != seen ||
             s.stop.load(std::memory_order_seq_cst);
    };
    for (;;) {
      if (!detail::spin_until(news, spin_us_.load(std::memory_order_relaxed))) {
        std::unique_lock<std::mutex> lock(s.m);
        s.sleepers.fetch_add(1, std::memory_order_seq_cst);
        s.work_cv.wait(lock, news);
        s.sleepers.fetch_sub(1, std::memory_order_relaxed);
      }
      if (s.stop.load(std::memory_order_acquire)) return;
      seen = static_cast<uint32_t>(s.ctl.load(std::memory_order_acquire) >> 32);
      const int ran = run_claimed(seen);
      // The last index finished wakes the caller if it blocked; taking the mutex orders this
      // with its check-then-wait.
      if (ran > 0 && s.done.fetch_add(ran, std::memory_order_acq_rel) + ran == n_threads_) {
        { std::lock_guard<std::mutex> lock(s.m); }
        s.done_cv.notify_one();
      }
    }
  }

  std::unique_ptr<State> state_;
  std::vector<std::thread> workers_;
  uint32_t generation_ = 0;  // written by the caller only
#endif
  int n_threads_ = 1;
  std::atomic<int> spin_us_{50};
};

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#undef TINYSLM_CPU_RELAX
// ---- end tinyslm/threads.hpp ----

// ---- begin tinyslm/model.hpp ----
// tinyslm model: hyper-parameters from GGUF metadata, the table of per-architecture
// differences, the per-layer plan, and the weights bound to the mapped tensors.
//
// Every supported family is one row of kArchTable, read into one plain struct (HParams) whose
// fields the forward pass branches on: norm kind, RoPE style, QK-norm, biases, post-norms,
// soft-capping, sliding window, embedding scale, expert routing. There are no subclasses per
// architecture and no comparisons of architecture names outside the table lookup.
// HParams::layers is the per-layer plan: what each layer is (its kind, head counts and sizes,
// sliding or global attention, which RoPE table, which layer's KV it uses, dense FFN or MoE).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>


// ---- begin tinyslm/deltanet.hpp ----
// tinyslm deltanet: the Gated DeltaNet linear-attention layers of Qwen3.5.
//
// A layer projects its normed input to a mix of [q: nK x d | k: nK x d | v: nV x d] channels
// (attn_qkv), a gate z (attn_gate, nV x d) and two scalars per V head (ssm_beta, ssm_alpha).
// The mix goes through a depthwise causal convolution of width L (ssm_conv1d) and SiLU; q and
// k are L2-normalised per head. Each V head h keeps a d x d state S (K/Q head h % nK: the
// heads are tiled, not interleaved) updated per token by the gated delta rule:
//
//   beta = sigmoid(b_h),  g = softplus(a_h + dt_bias_h) * A_h    (A_h = ssm_a = -exp(A_log))
//   S = exp(g) S;   S += k (beta (v - S^T k))^T;   o = S^T q / sqrt(d)
//
// and the output rms_norm(o) * ssm_norm * silu(z) of all heads goes through ssm_out.
// S is stored with the value index major: M[j][i] = S[i][j], so S^T k is a row-wise dot.
//
// The per-sequence state of one layer is the last L - 1 rows of the mix (before the
// convolution) followed by the nV states, all F32 (DeltaNetShape::state_floats).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>


namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

// The sizes of a DeltaNet layer (qwen35.ssm.* keys).
struct DeltaNetShape {
  int64_t d_state = 0;    // ssm.state_size: head size of q, k and v
  int64_t n_k_heads = 0;  // ssm.group_count
  int64_t n_v_heads = 0;  // ssm.time_step_rank
  int64_t d_conv = 0;     // ssm.conv_kernel: convolution width L

  int64_t key_dim() const { return n_k_heads * d_state; }
  int64_t value_dim() const { return n_v_heads * d_state; }
  int64_t channels() const { return 2 * key_dim() + value_dim(); }
  int64_t conv_state_floats() const { return (d_conv - 1) * channels(); }
  int64_t state_floats() const { return conv_state_floats() + n_v_heads * d_state * d_state; }
  // One projected row: [mix | z | beta | alpha].
  int64_t proj_width() const { return channels() + value_dim() + 2 * n_v_heads; }
};

inline constexpr int64_t kDeltaNetMaxState = 1024;  // largest ssm.state_size accepted

namespace detail {

inline float dn_sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline float dn_softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

// Channels [c0, c1) of the convolution + SiLU: mix rows (stride ld) -> out rows (stride ldo);
// state holds the L - 1 mix rows before the chunk (updated to the last L - 1 rows).
inline void dn_conv_channels(const float* mix, int64_t ld, int64_t n, int64_t C, int64_t L, const float* w,
                             float* state, float* out, int64_t ldo, int64_t c0, int64_t c1) {
  const int64_t S = L - 1;
  for (int64_t t = 0; t < n; ++t) {
    float* y = out + t * ldo;
    for (int64_t ch = c0; ch < c1; ++ch) y[ch] = 0.0f;
    for (int64_t k = 0; k < L; ++k) {
      const int64_t j = t - S + k;
      const float* u = j < 0 ? state + (S + j) * C : mix + j * ld;
      for (int64_t ch = c0; ch < c1; ++ch) y[ch] += w[ch * L + k] * u[ch];
    }
    for (int64_t ch = c0; ch < c1; ++ch) y[ch] = y[ch] / (1.0f + std::exp(-y[ch]));
  }
  for (int64_t r = 0; r < S; ++r) {  // increasing rows: row r reads old row r + n, not yet written
    const int64_t j = r + n - S;
    const float* src = j < 0 ? state + (r + n) * C : mix + j * ld;
    std::memcpy(state + r * C + c0, src + c0, static_cast<size_t>(c1 - c0) * sizeof(float));
  }
}

// x / max(||x||, eps), as ggml_l2_norm.
inline void dn_l2_norm(float* x, int64_t n, float eps) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  const float scale = 1.0f / std::fmax(std::sqrt(static_cast<float>(sum)), eps);
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

}  // namespace detail

// The causal convolution and SiLU of a chunk of n mix rows (see dn_conv_channels); w is the
// kernel [channels][L].
inline void delta_net_conv(const DeltaNetShape& s, const float* mix, int64_t ld, int64_t n, const float* w,
                           float* conv_state, float* out, int64_t ldo, const ParallelFor& par) {
  const int64_t C = s.channels();
  if (n < 4) {
    detail::dn_conv_channels(mix, ld, n, C, s.d_conv, w, conv_state, out, ldo, 0, C);
    return;
  }
  par([&](int t, int nt) {
    int64_t c0, c1;
    ParallelFor::split(C, t, nt, 16, &c0, &c1);
    if (c1 > c0) detail::dn_conv_channels(mix, ld, n, C, s.d_conv, w, conv_state, out, ldo, c0, c1);
  });
}

// Per token of a projected row: q and k heads L2-normalised in the convolved row `qkv`, and
// the gates: beta[h] = sigmoid, g[h] = softplus(alpha + dt_bias) * A, written over the raw
// beta and alpha of the projected row `ba` ([beta nV | alpha nV]).
inline void delta_net_prepare(const DeltaNetShape& s, float* qkv, float* ba, const float* dt_bias, const float* a,
                              float eps) {
  const int64_t d = s.d_state;
  for (int64_t h = 0; h < 2 * s.n_k_heads; ++h) detail::dn_l2_norm(qkv + h * d, d, eps);
  for (int64_t h = 0; h < s.n_v_heads; ++h) {
    ba[h] = detail::dn_sigmoid(ba[h]);
    float& g = ba[s.n_v_heads + h];
    g = detail::dn_softplus(g + dt_bias[h]) * a[h];
  }
}

// The gated delta rule of V head h over n tokens, one at a time: qkv rows (stride ld, q and k
// normalised), gates rows ba (stride ldb, as delta_net_prepare leaves them), state M (d x d,
// value index major). The head's output replaces its v in the qkv rows. The dot products of
// all rows of M at once (ops' SIMD row dots): S^T k = decay (M k) before the update.
inline void delta_net_recurrence(const DeltaNetShape& s, int64_t h, float* qkv, int64_t ld, const float* ba,
                                 int64_t ldb, int64_t n, float* M) {
  const int64_t d = s.d_state, hk = h % s.n_k_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t t = 0; t < n; ++t) {
    const float* q = qkv + t * ld + hk * d;
    const float* k = q + s.key_dim();
    float* v = qkv + t * ld + 2 * s.key_dim() + h * d;
    const float beta = ba[t * ldb + h], decay = std::exp(ba[t * ldb + s.n_v_heads + h]);
    float u[kDeltaNetMaxState];  // M k, then the deltas beta (v - decay M k)
    ops::detail::scores_rows(k, M, d, d, u);
    for (int64_t j = 0; j < d; ++j) u[j] = beta * (v[j] - decay * u[j]);
    for (int64_t j = 0; j < d; ++j) {
      float* row = M + j * d;
      for (int64_t i = 0; i < d; ++i) row[i] = row[i] * decay + k[i] * u[j];
    }
    ops::detail::scores_rows(q, M, d, d, v);
    for (int64_t j = 0; j < d; ++j) v[j] *= scale;
  }
}

// Chunked form of the same rule for prefill: a chunk of T tokens at once with matrix
// products. With G_t the cumulative log-decay inside the chunk (Gamma_t = exp(G_t)) and S0 the
// state before it, the deltas u_t = beta_t (v_t - S'_t^T k_t) solve the unit lower-triangular
// system (I + L) U = diag(beta) (V - diag(Gamma) K S0), L[t][s] = beta_t e^{G_t - G_s} k_t.k_s
// (s < t); then o_t = Gamma_t S0^T q_t + sum_{s <= t} e^{G_t - G_s} (q_t.k_s) u_s and
// S = Gamma_T S0 + sum_s e^{G_T - G_s} k_s u_s^T. Every exponent is <= 0 (g <= 0): no overflow.
inline constexpr int64_t kDeltaNetChunk = 64;
inline constexpr int64_t kDeltaNetChunkMin = 8;  // fewer tokens run the token-by-token rule

// Scratch floats delta_net_chunked needs (per thread).
inline int64_t delta_net_scratch_floats(const DeltaNetShape& s) {
  const int64_t T = kDeltaNetChunk;
  return 2 * T * T + 3 * T * s.d_state + T;
}

namespace detail {

inline void dn_axpy(float* y, const float* x, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// One chunk of T <= kDeltaNetChunk tokens of V head h (arguments as delta_net_recurrence).
inline void dn_chunk(const DeltaNetShape& s, int64_t h, float* qkv, int64_t ld, const float* ba, int64_t ldb,
                     int64_t T, float* M, float* scratch) {
  const int64_t d = s.d_state, hk = h % s.n_k_heads, TC = kDeltaNetChunk;
  float* KK = scratch;          // L, then (I + L)'s solve is in place on U
  float* QK = KK + TC * TC;     // e^{G_t - G_s} q_t.k_s
  float* U = QK + TC * TC;      // T x d deltas
  float* O = U + TC * d;        // T x d outputs
  float* Kc = O + TC * d;       // the chunk's keys, contiguous
  float* G = Kc + TC * d;       // cumulative log-decay
  const auto q = [&](int64_t t) { return qkv + t * ld + hk * d; };
  const auto k = [&](int64_t t) { return Kc + t * d; };
  const auto v = [&](int64_t t) { return qkv + t * ld + 2 * s.key_dim() + h * d; };
  float acc = 0.0f;
  for (int64_t t = 0; t < T; ++t) {
    G[t] = acc += ba[t * ldb + s.n_v_heads + h];
    std::memcpy(Kc + t * d, qkv + t * ld + s.key_dim() + hk * d, static_cast<size_t>(d) * sizeof(float));
  }
  for (int64_t t = 0; t < T; ++t) {  // U = diag(beta) (V - diag(Gamma) K S0); O = diag(Gamma) Q S0
    const float beta = ba[t * ldb + h], gamma = std::exp(G[t]);
    ops::detail::scores_rows(k(t), M, d, d, U + t * d);
    ops::detail::scores_rows(q(t), M, d, d, O + t * d);
    for (int64_t j = 0; j < d; ++j) {
      U[t * d + j] = beta * (v(t)[j] - gamma * U[t * d + j]);
      O[t * d + j] *= gamma;
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    const float beta = ba[t * ldb + h];
    ops::detail::scores_rows(q(t), Kc, d, t + 1, QK + t * TC);
    ops::detail::scores_rows(k(t), Kc, d, t, KK + t * TC);
    for (int64_t u = 0; u <= t; ++u) {
      const float e = std::exp(G[t] - G[u]);
      QK[t * TC + u] *= e;
      if (u < t) KK[t * TC + u] *= beta * e;
    }
  }
  for (int64_t t = 1; t < T; ++t)  // forward substitution: rows of U in order
    for (int64_t u = 0; u < t; ++u) dn_axpy(U + t * d, U + u * d, -KK[t * TC + u], d);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t u = 0; u <= t; ++u) dn_axpy(O + t * d, U + u * d, QK[t * TC + u], d);
    for (int64_t j = 0; j < d; ++j) v(t)[j] = O[t * d + j] * scale;
  }
  const float gamma_T = std::exp(G[T - 1]);
  for (int64_t t = 0; t < T; ++t) G[t] = std::exp(G[T - 1] - G[t]);  // e^{G_T - G_s}
  for (int64_t j = 0; j < d; ++j) {
    float* row = M + j * d;
    for (int64_t i = 0; i < d; ++i) row[i] *= gamma_T;
    for (int64_t t = 0; t < T; ++t) dn_axpy(row, k(t), G[t] * U[t * d + j], d);
  }
}

}  // namespace detail

// The delta rule of V head h over n tokens in chunks of kDeltaNetChunk (same arguments and
// result as delta_net_recurrence, up to rounding); scratch: delta_net_scratch_floats.
inline void delta_net_chunked(const DeltaNetShape& s, int64_t h, float* qkv, int64_t ld, const float* ba, int64_t ldb,
                              int64_t n, float* M, float* scratch) {
  for (int64_t t0 = 0; t0 < n; t0 += kDeltaNetChunk) {
    const int64_t T = std::min(kDeltaNetChunk, n - t0);
    detail::dn_chunk(s, h, qkv + t0 * ld, ld, ba + t0 * ldb, ldb, T, M, scratch);
  }
}

// out = rms_norm(o) * w * silu(z) per V head (w: d values shared by the heads). out may alias o.
inline void delta_net_gated_norm(const DeltaNetShape& s, const float* o, const float* w, const float* z, float* out,
                                 float eps) {
  const int64_t d = s.d_state;
  for (int64_t h = 0; h < s.n_v_heads; ++h) {
    const float* x = o + h * d;
    double sum = 0.0;
    for (int64_t i = 0; i < d; ++i) sum += static_cast<double>(x[i]) * x[i];
    const float scale = 1.0f / std::sqrt(static_cast<float>(sum / static_cast<double>(d)) + eps);
    for (int64_t i = 0; i < d; ++i) {
      const float g = z[h * d + i];
      out[h * d + i] = (x[i] * scale) * w[i] * (g / (1.0f + std::exp(-g)));
    }
  }
}

// qwen35's gated attention layers: attn_q gives per head [query (hd) | gate (hd)]. Splits
// one row `raw` (2 n_head hd values) into q and gate (n_head hd each).
inline void split_query_gate(const float* raw, int64_t n_head, int64_t hd, float* q, float* gate) {
  for (int64_t h = 0; h < n_head; ++h) {
    std::memcpy(q + h * hd, raw + 2 * h * hd, static_cast<size_t>(hd) * sizeof(float));
    std::memcpy(gate + h * hd, raw + 2 * h * hd + hd, static_cast<size_t>(hd) * sizeof(float));
  }
}

// att *= sigmoid(gate), n values: the attention output before attn_output.
inline void apply_output_gate(float* att, const float* gate, int64_t n) {
  for (int64_t i = 0; i < n; ++i) att[i] *= detail::dn_sigmoid(gate[i]);
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/deltanet.hpp ----

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

enum class RopeStyle : uint8_t {
  normal,  // rotate adjacent pairs (x[2i], x[2i+1]): llama
  neox,    // rotate halves (x[i], x[i + n_rot/2]): qwen, gemma, phi3
};

enum class FfnActivation : uint8_t {
  silu,       // SwiGLU: silu(gate) * up
  gelu_tanh,  // GeGLU with the tanh approximation of GELU (gemma family)
};

enum class QkNorm : uint8_t {
  none,
  per_head,  // one weight of head_dim values shared by every head (qwen3, gemma3)
  whole,     // one weight over the whole Q (or K) projection (olmoe)
};

// Attention scale rule: what Q.K is multiplied by.
enum class AttnScale : uint8_t {
  head_dim,    // 1 / sqrt(head_dim_k)
  gemma_27b,   // as head_dim, except 1 / sqrt(n_embd / n_head) for the 27B variant (its layer count)
};

enum class MoeGating : uint8_t {
  softmax,  // GGUF expert_gating_func 1
  sigmoid,  // GGUF expert_gating_func 2
};

// Expert routing of a family, as llama.cpp builds these graphs: every family gates with a
// softmax; llama-with-experts (Mixtral) and qwen3moe renormalise the top-k weights (for
// Mixtral this equals a softmax over the k selected logits), qwen2moe and olmoe use the raw
// probabilities.
struct MoeArch {
  bool allowed;              // files of this family may have experts
  bool norm_weights;
  bool ff_from_expert_key;   // expert_feed_forward_length, else feed_forward_length / k;
                             // false: feed_forward_length is the expert width
  bool shared_expert;        // the family has a shared expert (required)
  bool shared_gated;         // shared expert scaled by sigmoid(ffn_gate_inp_shexp . x)
};

// What differs between families beyond what the metadata says. One row per architecture.
struct ArchInfo {
  const char* name;
  RopeStyle rope;
  FfnActivation activation;
  bool embed_scale;         // multiply token embeddings by sqrt(n_embd) (gemma)
  bool scale_q;             // apply the attention scale to Q before attention (gemma, phi3)
  QkNorm qk_norm;           // RMS norm of Q and K before RoPE
  bool qkv_bias;            // attn_{q,k,v}.bias required (qwen2); optional elsewhere
  bool post_norms;          // RMS norm on the attention and FFN outputs before the residual add
  bool fused_qkv;           // one attn_qkv matrix (phi3)
  bool fused_gate_up;       // ffn_up holds [gate; up] with 2*n_ff rows (phi3)
  int swa_period;           // every n-th layer is global, the others sliding (0 = no SWA)
  bool swa_needs_key;       // sliding only when attention.sliding_window is present
  bool swa_plain_rope;      // sliding layers keep RoPE base 10000 without scaling (gemma3)
  float attn_softcap;       // attention soft-cap when the key is absent; 0: the family never caps
  float final_softcap;      // logit soft-cap when the key is absent
  AttnScale attn_scale;
  int64_t n_layer_27b;      // with AttnScale::gemma_27b: the 27B variant's layer count
  MoeArch moe;
  // Hybrid and 2026 families (trailing, so the rows above keep their defaults).
  int nope_period = 0;      // layers with (il + 1) % nope_period == 0 run without RoPE (smollm3: 4)
  bool conv_layers = false; // per-layer head_count_kv, 0 = a short-convolution layer (lfm2)
  const char* output_norm_name = "output_norm.weight";
  bool delta_net = false;   // Gated DeltaNet layers (deltanet.hpp) between gated attention layers (qwen35)
  const char* ffn_norm_name = "ffn_norm.weight";
};

namespace detail {
inline constexpr MoeArch kNoMoe{false, false, false, false, false};
}  // namespace detail

// The families this library runs.
inline constexpr ArchInfo kArchTable[] = {
    // name     rope               act                         emb    scq    qk-norm            bias   post   fqkv   fgu    swa  key    plain  acap   fcap   scale                  27B  moe: allowed norm ffkey shared gated
    {"llama",   RopeStyle::normal, FfnActivation::silu,      false, false, QkNorm::none,     false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  {true,  true,  false, false, false}},
    {"qwen2",   RopeStyle::neox,   FfnActivation::silu,      false, false, QkNorm::none,     true,  false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  detail::kNoMoe},
    {"qwen3",   RopeStyle::neox,   FfnActivation::silu,      false, false, QkNorm::per_head, false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  detail::kNoMoe},
    {"gemma",   RopeStyle::neox,   FfnActivation::gelu_tanh, true,  true,  QkNorm::none,     false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  detail::kNoMoe},
    {"gemma2",  RopeStyle::neox,   FfnActivation::gelu_tanh, true,  true,  QkNorm::none,     false, true,  false, false, 2,   false, false, 50.0f, 30.0f, AttnScale::gemma_27b, 46, detail::kNoMoe},
    {"gemma3",  RopeStyle::neox,   FfnActivation::gelu_tanh, true,  true,  QkNorm::per_head, false, true,  false, false, 6,   true,  true,  0.0f,  0.0f,  AttnScale::gemma_27b, 62, detail::kNoMoe},
    {"phi3",    RopeStyle::neox,   FfnActivation::silu,      false, true,  QkNorm::none,     false, false, true,  true,  0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  detail::kNoMoe},
    // Mixture-of-experts families: attention as their dense relatives, FFN in moe.hpp.
    {"qwen2moe", RopeStyle::neox,  FfnActivation::silu,      false, false, QkNorm::none,     true,  false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  {true,  false, true,  true,  true}},
    {"qwen3moe", RopeStyle::neox,  FfnActivation::silu,      false, false, QkNorm::per_head, false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  {true,  true,  true,  false, false}},
    {"olmoe",   RopeStyle::neox,   FfnActivation::silu,      false, false, QkNorm::whole,    false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  {true,  false, false, false, false}},
    // 2026 phone models: smollm3 drops RoPE on every 4th layer; lfm2 mixes short-convolution
    // layers (conv.hpp) with GQA attention and names its final norm token_embd_norm.
    {"smollm3", RopeStyle::normal, FfnActivation::silu,      false, false, QkNorm::none,     false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  detail::kNoMoe, 4},
    {"lfm2",    RopeStyle::neox,   FfnActivation::silu,      false, false, QkNorm::per_head, false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  detail::kNoMoe, 0, true, "token_embd_norm.weight"},
    // qwen35: DeltaNet layers with a gated attention layer every full_attention_interval; its
    // pre-FFN norm is named post_attention_norm; RoPE is interleaved multi-section (NEOX halves).
    {"qwen35",  RopeStyle::neox,   FfnActivation::silu,      false, false, QkNorm::per_head, false, false, false, false, 0,   false, false, 0.0f,  0.0f,  AttnScale::head_dim,  0,  detail::kNoMoe, 0, false, "output_norm.weight", true, "post_attention_norm.weight"},
};

// Mixture-of-experts families whose routing this library does not implement: refused by name
// with a clearer message than "unsupported architecture".
inline constexpr std::string_view kRefusedMoeArchs[] = {
    "deepseek", "deepseek2", "granitemoe", "dbrx", "arctic", "jamba", "llama4", "gpt-oss",
};

inline const ArchInfo* find_arch(std::string_view name) {
  for (const auto& a : kArchTable)
    if (name == a.name) return &a;
  return nullptr;
}

inline bool is_unsupported_moe_arch(std::string_view name) {
  for (std::string_view r : kRefusedMoeArchs)
    if (name == r) return true;
  return false;
}

// Everything the MoE step needs besides the weights. n_expert == 0 means a dense model.
struct MoeConfig {
  int64_t n_expert = 0;       // <arch>.expert_count
  int64_t n_expert_used = 0;  // <arch>.expert_used_count (k)
  int64_t expert_ff = 0;      // rows of each expert's gate/up matrices
  MoeGating gating = MoeGating::softmax;
  bool norm_weights = false;  // renormalise the k selected weights to sum 1
  float weights_scale = 1.0f; // multiplies the selected weights (1 = none)
  bool shared_expert = false; // ffn_{gate,up,down}_shexp present
  int64_t shared_ff = 0;
  bool shared_gated = false;  // shared expert scaled by sigmoid(ffn_gate_inp_shexp . x)

  bool enabled() const { return n_expert > 0; }
};

// Experts above this count are refused (llama.cpp's limit).
inline constexpr int64_t kMoeMaxExperts = 512;

enum class LayerKind : uint8_t {
  attention,   // self-attention over this layer's KV cache, then the FFN
  short_conv,  // gated short causal convolution with a per-sequence state (lfm2), then the FFN
  delta_net,   // Gated DeltaNet linear attention with a per-sequence state (qwen35), then the FFN
};

enum class FfnKind : uint8_t {
  dense,  // gate/up, gated activation, down
  moe,    // router and experts (moe.hpp)
};

// One layer of the forward pass, as the forward layer runs it.
struct LayerPlan {
  LayerKind kind = LayerKind::attention;
  FfnKind ffn = FfnKind::dense;
  int64_t n_head = 0, n_head_kv = 0;
  int64_t head_dim_k = 0, head_dim_v = 0;
  int64_t n_ff = 0;           // dense FFN width (0 for MoE layers)
  bool sliding = false;       // sliding-window attention (n_swa positions)
  bool rope = true;           // RoPE on Q and K
  uint8_t rope_table = 0;     // 0: the global angles (rope_base), 1: the sliding ones (rope_base_swa)
  int64_t kv_layer = 0;       // the KV cache slot this layer writes and reads (-1: none)
  bool attn_gate = false;     // Q projection is [query | gate] per head; output *= sigmoid(gate) (qwen35)

  int64_t q_dim() const { return n_head * head_dim_k; }
  int64_t k_dim() const { return n_head_kv * head_dim_k; }
  int64_t v_dim() const { return n_head_kv * head_dim_v; }
  int64_t attn_out_dim() const { return n_head * head_dim_v; }
};

// Every hyper-parameter the forward pass reads, for every family.
struct HParams {
  std::string arch_name;
  ArchInfo arch{};

  int64_t n_vocab = 0;
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim_k = 0;   // attention.key_length, else n_embd / n_head
  int64_t head_dim_v = 0;   // attention.value_length, else head_dim_k
  int64_t n_ff = 0;
  int64_t n_ctx_train = 0;
  int64_t n_rot = 0;        // rope.dimension_count, else head_dim_k
  float rms_eps = 1e-5f;

  // RoPE: theta_i = pos * freq_scale * base^(-2i/n_rot) / freq_factor[i]
  float rope_base = 10000.0f;
  float rope_freq_scale = 1.0f;      // 1 / rope.scaling.factor for linear scaling
  float rope_base_swa = 10000.0f;    // sliding-window layers (gemma2/3)
  float rope_freq_scale_swa = 1.0f;
  std::vector<float> rope_freq_factors;  // llama3 `rope_freqs.weight` (n_rot/2), may be empty

  float attn_scale = 1.0f;           // multiplies Q.K
  float attn_softcap = 0.0f;         // 0 = off; else scores = cap * tanh(scores / cap)
  float final_softcap = 0.0f;        // same on the logits
  float embed_scale = 1.0f;          // sqrt(n_embd) for gemma

  int64_t n_swa = 0;                 // sliding window (positions p - q < n_swa are visible)
  std::vector<uint8_t> layer_swa;    // per layer: 1 = sliding window, 0 = global

  int64_t n_expert = 0;              // > 0: MoE file
  MoeConfig moe;                     // its routing: read when the model binds its experts
                                     // (read_moe_config), after each layer's router is found

  std::vector<LayerPlan> layers;     // the per-layer plan (n_layer entries)
  std::vector<int64_t> layer_head_kv;  // per-layer head_count_kv of hybrid files (0 = conv layer)
  int64_t conv_kernel = 0;           // shortconv.l_cache: width L of the short convolution
  DeltaNetShape delta_net;           // qwen35 ssm.* sizes
  std::vector<uint8_t> layer_recurrent;  // qwen35: 1 = DeltaNet layer, 0 = gated attention
  std::vector<uint8_t> rope_pair_pos;    // multi-section RoPE: per pair, 0 = rotated by position 0

  // KV cache slots: one per layer that owns a cache.
  int64_t n_kv_layers() const {
    int64_t n = 0;
    for (const LayerPlan& l : layers) n = std::max(n, l.kv_layer + 1);
    return layers.empty() ? n_layer : n;
  }
  // Floats of layer il's per-sequence state (0: none).
  int64_t state_floats(int64_t il) const {
    const LayerPlan& l = layers[static_cast<size_t>(il)];
    if (l.kind == LayerKind::delta_net) return delta_net.state_floats();
    return l.kind == LayerKind::short_conv ? (conv_kernel - 1) * n_embd : 0;
  }

  int64_t q_dim() const { return n_head * head_dim_k; }
  int64_t k_dim() const { return n_head_kv * head_dim_k; }
  int64_t v_dim() const { return n_head_kv * head_dim_v; }
  bool is_swa(int64_t layer) const { return !layer_swa.empty() && layer_swa[layer] != 0; }
  bool any_swa() const { return !layer_swa.empty(); }
};

// A 2-D weight matrix in the mapped file: `rows` rows of `cols` values of `type`, no copy.
struct Weight {
  TensorType type = TensorType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  std::string_view name;

  explicit operator bool() const { return data != nullptr; }
  size_t row_bytes() const {
    const auto& info = tensor_type_info(type);
    return static_cast<size_t>(cols / info.block_size * info.block_bytes);
  }
  MatrixRef ref() const { return {type, data, rows, cols}; }
};

// A stacked expert tensor [cols, rows, n_expert]: n_expert matrices of `rows` rows of `cols`.
// Expert e's matrix is the slice at byte offset e * rows * row_bytes.
struct MoeExperts {
  TensorType type = TensorType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t n_expert = 0;
  uint64_t row_bytes = 0;

  explicit operator bool() const { return data != nullptr; }
  uint64_t expert_bytes() const { return row_bytes * static_cast<uint64_t>(rows); }
  MatrixRef expert(int64_t e) const { return {type, data + static_cast<uint64_t>(e) * expert_bytes(), rows, cols}; }
  // Rows [r0, r1) of expert e.
  MatrixRef expert_rows(int64_t e, int64_t r0, int64_t r1) const {
    return {type, data + static_cast<uint64_t>(e) * expert_bytes() + static_cast<uint64_t>(r0) * row_bytes,
            r1 - r0, cols};
  }
};

// One MoE layer's tensors. Absent shared-expert tensors have data == nullptr.
struct MoeLayerWeights {
  MatrixRef router{TensorType::F32, nullptr, 0, 0};           // ffn_gate_inp: n_expert rows of n_embd
  MoeExperts gate, up, down;                                   // gate/up: expert_ff x n_embd; down: n_embd x expert_ff
  MatrixRef shared_gate{TensorType::F32, nullptr, 0, 0};      // ffn_gate_shexp: shared_ff x n_embd
  MatrixRef shared_up{TensorType::F32, nullptr, 0, 0};
  MatrixRef shared_down{TensorType::F32, nullptr, 0, 0};      // n_embd x shared_ff
  MatrixRef shared_gate_inp{TensorType::F32, nullptr, 0, 0};  // ffn_gate_inp_shexp: 1 x n_embd

  int64_t n_embd() const { return router.cols; }
};

// Per-layer weights. Absent optional tensors are empty Weights / empty vectors.
struct LayerWeights {
  std::vector<float> attn_norm;
  Weight wq, wk, wv, wqkv;                // wqkv when the family fuses them (phi3)
  std::vector<float> bq, bk, bv;          // qwen2 biases (optional elsewhere)
  std::vector<float> q_norm, k_norm;      // QK-norm weights (per head, or whole projection)
  Weight wo;
  std::vector<float> bo;
  std::vector<float> post_attn_norm;      // gemma2/3
  std::vector<float> ffn_norm;
  // Dense FFN; empty in an MoE layer (moe == true), whose router and experts are `experts`.
  Weight ffn_gate, ffn_up, ffn_down;      // ffn_up holds [gate; up] when fused (phi3)
  bool moe = false;
  MoeLayerWeights experts;
  std::vector<float> post_ffn_norm;       // gemma2/3
  // Short-convolution layer (lfm2): in_proj (3 n_embd rows: b, c, x), kernel [n_embd][L], out_proj.
  Weight conv_in, conv_out;
  std::vector<float> conv_kernel;
  // Gated DeltaNet layer (qwen35): projections to [q|k|v] mix, z, beta, alpha; conv kernel
  // [channels][L], dt bias, A (= -exp(A_log)), the norm of the gated output (d values), ssm_out.
  Weight ssm_qkv, ssm_gate, ssm_beta, ssm_alpha, ssm_out;
  std::vector<float> ssm_conv, ssm_dt_bias, ssm_a, ssm_norm;
};

struct ModelWeights {
  Weight token_embd;
  std::vector<LayerWeights> layers;
  std::vector<float> output_norm;
  Weight output;                          // == token_embd when the embeddings are tied
  std::vector<float> output_bias;         // qwen2 (optional)
  bool tied_embeddings = false;
};

namespace detail {

// Reads `<arch>.<suffix>` as an integer; `fallback` when absent (required when fallback < 0).
inline Expected<int64_t> arch_int(const GgufFile& f, const std::string& arch, const char* suffix,
                                  int64_t fallback) {
  const std::string key = arch + "." + suffix;
  const GgufKv* kv = f.find(key);
  if (!kv) {
    if (fallback < 0)
      return make_error(Errc::not_found, f.name() + ": missing metadata key '" + key + "'");
    return fallback;
  }
  int64_t v = 0;
  if (kv->value.type() == GgufValueType::array) {
    // Per-layer arrays (e.g. head_count_kv): accepted when every layer has the same value.
    GgufArray a = kv->value.as_array();
    bool first = true, same = true;
    a.for_each([&](const GgufValue& e) {
      int64_t x = 0;
      if (!e.as_int64(&x)) same = false;
      if (first) v = x;
      else if (x != v) same = false;
      first = false;
      return same;
    });
    if (first || !same)
      return make_error(Errc::unsupported,
                        f.name() + ": metadata key '" + key + "' varies per layer (not supported)");
    return v;
  }
  if (!kv->value.is_integer() || !kv->value.as_int64(&v))
    return make_error(Errc::type_mismatch, f.name() + ": metadata key '" + key + "' is not an integer");
  return v;
}

inline Expected<float> arch_float(const GgufFile& f, const std::string& arch, const char* suffix,
                                  float fallback) {
  auto v = f.get_or<double>(arch + "." + suffix, static_cast<double>(fallback));
  if (!v) return v.error();
  return static_cast<float>(*v);
}

inline Expected<int64_t> moe_int_key(const GgufFile& f, const std::string& key, int64_t fallback) {
  if (!f.contains(key)) return fallback;
  auto v = f.get<int64_t>(key);
  if (!v) return v.error();
  return *v;
}

// "llama, qwen2, ..." from the table, for error messages.
inline std::string supported_arch_list() {
  std::string s;
  for (const auto& a : kArchTable) {
    if (!s.empty()) s += ", ";
    s += a.name;
  }
  return s;
}

#define TINYSLM_TRY_READ(dst, expr) \
  do {                              \
    auto v_ = (expr);               \
    if (!v_) return v_.error();     \
    dst = *v_;                      \
  } while (0)

// Expert widths: qwen2moe/qwen3moe read expert_feed_forward_length (else feed_forward_length
// / k); llama and olmoe: feed_forward_length is the expert width (llama.cpp does not read the
// expert key). Only families whose graph has a shared expert get one.
inline Status read_moe_widths(const GgufFile& f, const std::string& a, const MoeArch& info, MoeConfig& c) {
  int64_t n_ff = 0, ff_key = 0, sh = 0;
  TINYSLM_TRY_READ(n_ff, moe_int_key(f, a + ".feed_forward_length", 0));
  TINYSLM_TRY_READ(ff_key, moe_int_key(f, a + ".expert_feed_forward_length", 0));
  if (info.ff_from_expert_key) c.expert_ff = ff_key > 0 ? ff_key : n_ff / c.n_expert_used;
  else c.expert_ff = n_ff;
  TINYSLM_TRY_READ(sh, moe_int_key(f, a + ".expert_shared_feed_forward_length", 0));
  c.shared_expert = info.shared_expert;
  c.shared_gated = info.shared_gated;
  if (c.shared_expert) c.shared_ff = sh > 0 ? sh : n_ff;
  constexpr int64_t kMaxFf = int64_t{1} << 22;
  if (c.expert_ff <= 0 || c.expert_ff > kMaxFf || (c.shared_expert && (c.shared_ff <= 0 || c.shared_ff > kMaxFf)))
    return make_error(Errc::invalid_format, f.name() + ": bad expert feed-forward length (" +
                                                std::to_string(c.expert_ff) + ", shared " +
                                                std::to_string(c.shared_ff) + ")");
  return {};
}

// expert_weights_norm, expert_weights_scale and expert_gating_func override the family's
// defaults when present (converters do not write them for the supported families).
inline Status read_moe_overrides(const GgufFile& f, const std::string& a, MoeConfig& c) {
  if (f.contains(a + ".expert_weights_norm")) TINYSLM_TRY_READ(c.norm_weights, f.get<bool>(a + ".expert_weights_norm"));
  float scale = 0.0f;
  TINYSLM_TRY_READ(scale, f.get_or<float>(a + ".expert_weights_scale", 0.0f));
  if (!std::isfinite(scale))
    return make_error(Errc::invalid_format, f.name() + ": expert_weights_scale is not finite");
  c.weights_scale = scale == 0.0f ? 1.0f : scale;
  int64_t gating = 0;
  TINYSLM_TRY_READ(gating, moe_int_key(f, a + ".expert_gating_func", 0));
  switch (gating) {
    case 0:  // none: the family default
    case 1: c.gating = MoeGating::softmax; break;
    case 2: c.gating = MoeGating::sigmoid; break;
    default:
      return make_error(Errc::unsupported, f.name() + ": expert_gating_func " + std::to_string(gating) +
                                               " is not supported (1 = softmax, 2 = sigmoid)");
  }
  return {};
}

}  // namespace detail

// Reads the MoE hyper-parameters of a file. A file without `<arch>.expert_count` (or with 0)
// gives a disabled config; the family's routing defaults come from kArchTable.
inline Expected<MoeConfig> read_moe_config(const GgufFile& f) {
  MoeConfig c;
  auto arch_v = f.get<std::string>("general.architecture");
  if (!arch_v) return arch_v.error();
  const std::string& a = *arch_v;
  int64_t n_expert = 0, n_used = 0;
  TINYSLM_TRY_READ(n_expert, detail::moe_int_key(f, a + ".expert_count", 0));
  TINYSLM_TRY_READ(n_used, detail::moe_int_key(f, a + ".expert_used_count", 0));
  if (n_expert == 0) {
    if (n_used != 0)
      return make_error(Errc::invalid_format, f.name() + ": expert_used_count " + std::to_string(n_used) +
                                                  " without experts");
    return c;
  }
  const ArchInfo* info = find_arch(a);
  if (!info || !info->moe.allowed)
    return make_error(Errc::unsupported, f.name() + ": mixture of experts for architecture '" + a +
                                             "' is not supported (supported: llama/mixtral, qwen2moe, "
                                             "qwen3moe, olmoe)");
  if (n_expert < 0 || n_expert > kMoeMaxExperts || n_used <= 0 || n_used > n_expert)
    return make_error(Errc::invalid_format, f.name() + ": bad expert counts (expert_count " +
                                                std::to_string(n_expert) + ", expert_used_count " +
                                                std::to_string(n_used) + ")");
  c.n_expert = n_expert;
  c.n_expert_used = n_used;
  if (auto st = detail::read_moe_widths(f, a, info->moe, c); !st) return st.error();
  c.norm_weights = info->moe.norm_weights;
  if (auto st = detail::read_moe_overrides(f, a, c); !st) return st.error();
  return c;
}

namespace detail {

// Hybrid files (lfm2): head_count_kv per layer, 0 marking a short-convolution layer, and the
// convolution width. Returns the KV head count of the attention layers (all equal).
inline Expected<int64_t> read_layer_head_kv(const GgufFile& f, const std::string& a, HParams& hp) {
  const std::string key = a + ".attention.head_count_kv";
  const GgufKv* kv = f.find(key);
  if (!kv || kv->value.type() != GgufValueType::array)
    return make_error(Errc::invalid_format, f.name() + ": metadata key '" + key + "' must be a per-layer array");
  GgufArray arr = kv->value.as_array();
  if (static_cast<int64_t>(arr.size()) != hp.n_layer)
    return make_error(Errc::invalid_format, f.name() + ": '" + key + "' has " + std::to_string(arr.size()) +
                                                " entries for " + std::to_string(hp.n_layer) + " layers");
  hp.layer_head_kv.clear();
  arr.for_each([&](const GgufValue& e) {
    int64_t x = -1;
    if (!e.as_int64(&x)) x = -1;
    hp.layer_head_kv.push_back(x);
    return true;
  });
  int64_t heads = 0;
  for (int64_t x : hp.layer_head_kv) {
    if (x < 0 || x > hp.n_head || (x > 0 && hp.n_head % x != 0) || (x > 0 && heads > 0 && x != heads))
      return make_error(Errc::invalid_format, f.name() + ": '" + key + "' entry " + std::to_string(x) +
                                                  " is not 0 (convolution) or one KV head count dividing " +
                                                  std::to_string(hp.n_head) + " heads");
    if (x > 0) heads = x;
  }
  if (heads == 0)
    return make_error(Errc::unsupported, f.name() + ": '" + key + "' has no attention layer");
  TINYSLM_TRY_READ(hp.conv_kernel, arch_int(f, a, "shortconv.l_cache", -1));
  if (hp.conv_kernel < 2 || hp.conv_kernel > 64)
    return make_error(Errc::invalid_format, f.name() + ": metadata key '" + a + ".shortconv.l_cache' is " +
                                                std::to_string(hp.conv_kernel) + " (expected 2 to 64)");
  return heads;
}

// Sizes of the transformer: embedding, layers, heads, FFN, head sizes, RoPE dimensions.
inline Status read_sizes(const GgufFile& f, const std::string& a, HParams& hp) {
  TINYSLM_TRY_READ(hp.n_embd, arch_int(f, a, "embedding_length", -1));
  TINYSLM_TRY_READ(hp.n_layer, arch_int(f, a, "block_count", -1));
  TINYSLM_TRY_READ(hp.n_ff, arch_int(f, a, "feed_forward_length", -1));
  TINYSLM_TRY_READ(hp.n_head, arch_int(f, a, "attention.head_count", -1));
  if (hp.arch.conv_layers) TINYSLM_TRY_READ(hp.n_head_kv, read_layer_head_kv(f, a, hp));
  else TINYSLM_TRY_READ(hp.n_head_kv, arch_int(f, a, "attention.head_count_kv", hp.n_head));
  TINYSLM_TRY_READ(hp.n_ctx_train, arch_int(f, a, "context_length", 2048));
  if (hp.n_embd <= 0 || hp.n_layer <= 0 || hp.n_head <= 0 || hp.n_head_kv <= 0 || hp.n_ff <= 0 ||
      hp.n_head % hp.n_head_kv != 0 || hp.n_embd > (1 << 20) || hp.n_layer > 4096 ||
      hp.n_head > 4096 || hp.n_ff > (1 << 22))
    return make_error(Errc::invalid_format,
                      f.name() + ": inconsistent hyper-parameters (n_embd " +
                          std::to_string(hp.n_embd) + ", n_layer " + std::to_string(hp.n_layer) +
                          ", n_head " + std::to_string(hp.n_head) + ", n_head_kv " +
                          std::to_string(hp.n_head_kv) + ", n_ff " + std::to_string(hp.n_ff) + ")");
  TINYSLM_TRY_READ(hp.head_dim_k, arch_int(f, a, "attention.key_length", hp.n_embd / hp.n_head));
  TINYSLM_TRY_READ(hp.head_dim_v, arch_int(f, a, "attention.value_length", hp.head_dim_k));
  TINYSLM_TRY_READ(hp.n_rot, arch_int(f, a, "rope.dimension_count", hp.head_dim_k));
  if (hp.head_dim_k <= 0 || hp.head_dim_v <= 0 || hp.head_dim_k > 1024 || hp.head_dim_v > 1024 ||
      hp.n_rot <= 0 || hp.n_rot > hp.head_dim_k || hp.n_rot % 2 != 0)
    return make_error(Errc::invalid_format,
                      f.name() + ": bad head size (key " + std::to_string(hp.head_dim_k) +
                          ", value " + std::to_string(hp.head_dim_v) + ", rope dims " +
                          std::to_string(hp.n_rot) + ")");
  TINYSLM_TRY_READ(hp.rms_eps, arch_float(f, a, "attention.layer_norm_rms_epsilon", 1e-5f));
  return {};
}

// RoPE base and scaling: linear (a frequency scale) is applied, llama3 lives in rope_freqs;
// other kinds are refused clearly.
inline Status read_rope(const GgufFile& f, const std::string& a, HParams& hp) {
  TINYSLM_TRY_READ(hp.rope_base, arch_float(f, a, "rope.freq_base", 10000.0f));
  std::string scaling;
  TINYSLM_TRY_READ(scaling, f.get_or<std::string>(a + ".rope.scaling.type", "none"));
  float factor = 0.0f;
  TINYSLM_TRY_READ(factor, arch_float(f, a, "rope.scaling.factor", 0.0f));
  if (factor == 0.0f) TINYSLM_TRY_READ(factor, arch_float(f, a, "rope.scale_linear", 0.0f));
  if (scaling == "yarn" || scaling == "longrope")
    return make_error(Errc::unsupported, f.name() + ": RoPE scaling '" + scaling + "' is not supported yet");
  if (scaling != "none" && scaling != "linear" && scaling != "llama3")
    return make_error(Errc::unsupported, f.name() + ": unknown RoPE scaling '" + scaling + "'");
  hp.rope_freq_scale = (scaling == "none" || factor == 0.0f) ? 1.0f : 1.0f / factor;
  if (scaling == "llama3") hp.rope_freq_scale = 1.0f;
  hp.rope_base_swa = hp.rope_base;
  hp.rope_freq_scale_swa = hp.rope_freq_scale;
  return {};
}

// Which layers slide: an explicit per-layer pattern array, else a period (global when
// il % period == period - 1; period 0: all sliding).
inline Status read_swa_pattern(const GgufFile& f, const std::string& a, int64_t period, HParams& hp) {
  const GgufKv* pat = f.find(a + ".attention.sliding_window_pattern");
  hp.layer_swa.assign(static_cast<size_t>(hp.n_layer), 0);
  if (pat && pat->value.type() == GgufValueType::array) {
    GgufArray arr = pat->value.as_array();
    if (static_cast<int64_t>(arr.size()) != hp.n_layer)
      return make_error(Errc::invalid_format,
                        f.name() + ": sliding_window_pattern has " + std::to_string(arr.size()) +
                            " entries for " + std::to_string(hp.n_layer) + " layers");
    size_t i = 0;
    arr.for_each([&](const GgufValue& e) {
      int64_t x = 0;
      if (e.type() == GgufValueType::boolean) x = e.as_bool();
      else e.as_int64(&x);
      hp.layer_swa[i++] = x != 0;
      return true;
    });
    return {};
  }
  if (pat) TINYSLM_TRY_READ(period, arch_int(f, a, "attention.sliding_window_pattern", period));
  for (int64_t il = 0; il < hp.n_layer; ++il)
    hp.layer_swa[static_cast<size_t>(il)] = period == 0 || (il % period < period - 1);
  return {};
}

// Sliding-window attention (gemma2: every other layer; gemma3: 5 of every 6 layers).
inline Status read_swa(const GgufFile& f, const std::string& a, HParams& hp) {
  const ArchInfo& info = hp.arch;
  const bool has_key = f.contains(a + ".attention.sliding_window");
  if (info.swa_period == 0 || (!has_key && info.swa_needs_key)) return {};
  TINYSLM_TRY_READ(hp.n_swa, arch_int(f, a, "attention.sliding_window", 4096));
  if (auto st = read_swa_pattern(f, a, info.swa_period, hp); !st) return st;
  if (hp.n_swa <= 0) hp.layer_swa.clear();
  if (info.swa_plain_rope) {
    hp.rope_base_swa = 10000.0f;
    hp.rope_freq_scale_swa = 1.0f;
  }
  TINYSLM_TRY_READ(hp.rope_base_swa, arch_float(f, a, "rope.freq_base_swa", hp.rope_base_swa));
  return {};
}

// Soft-caps, the attention scale and the embedding scale.
inline Status read_scales(const GgufFile& f, const std::string& a, HParams& hp) {
  const ArchInfo& info = hp.arch;
  TINYSLM_TRY_READ(hp.attn_softcap, arch_float(f, a, "attn_logit_softcapping", info.attn_softcap));
  TINYSLM_TRY_READ(hp.final_softcap, arch_float(f, a, "final_logit_softcapping", info.final_softcap));
  if (info.attn_softcap == 0.0f) hp.attn_softcap = 0.0f;  // the family never caps attention scores
  const bool big = info.attn_scale == AttnScale::gemma_27b && hp.n_layer == info.n_layer_27b;
  hp.attn_scale = big ? 1.0f / std::sqrt(static_cast<float>(hp.n_embd / hp.n_head))
                      : 1.0f / std::sqrt(static_cast<float>(hp.head_dim_k));
  hp.embed_scale = info.embed_scale ? std::sqrt(static_cast<float>(hp.n_embd)) : 1.0f;
  return {};
}

// A per-layer or per-section integer array `<arch>.<suffix>` of exactly n entries.
inline Status arch_int_array(const GgufFile& f, const std::string& a, const char* suffix, size_t n,
                             std::vector<int64_t>* out) {
  const std::string key = a + "." + suffix;
  const GgufKv* kv = f.find(key);
  if (!kv) return make_error(Errc::not_found, f.name() + ": missing metadata key '" + key + "'");
  if (kv->value.type() != GgufValueType::array)
    return make_error(Errc::invalid_format, f.name() + ": metadata key '" + key + "' must be an array");
  GgufArray arr = kv->value.as_array();
  if (arr.size() != n)
    return make_error(Errc::invalid_format, f.name() + ": metadata key '" + key + "' has " +
                                                std::to_string(arr.size()) + " entries, expected " + std::to_string(n));
  out->clear();
  bool ok = true;
  arr.for_each([&](const GgufValue& e) {
    int64_t x = 0;
    if (e.type() == GgufValueType::boolean) x = e.as_bool();
    else if (!e.as_int64(&x)) ok = false;
    out->push_back(x);
    return ok;
  });
  if (!ok) return make_error(Errc::type_mismatch, f.name() + ": metadata key '" + key + "' holds non-integers");
  return {};
}

// Interleaved multi-section RoPE (qwen35): pair i of the n_rot / 2 belongs to section
// i % sum(sections) taken round-robin (t, h, w while each lasts); text tokens put their
// position in t, h and w and 0 in the fourth, so pairs of the fourth section do not rotate.
inline Status read_rope_sections(const GgufFile& f, const std::string& a, HParams& hp) {
  std::vector<int64_t> sec;
  if (auto st = arch_int_array(f, a, "rope.dimension_sections", 4, &sec); !st) return st;
  const int64_t total = sec[0] + sec[1] + sec[2] + sec[3];
  if (sec[0] < 0 || sec[1] < 0 || sec[2] < 0 || sec[3] < 0 || total <= 0 || total > hp.n_rot / 2)
    return make_error(Errc::invalid_format, f.name() + ": metadata key '" + a +
                                                ".rope.dimension_sections' does not fit rope.dimension_count " +
                                                std::to_string(hp.n_rot));
  hp.rope_pair_pos.assign(static_cast<size_t>(hp.n_rot / 2), 1);
  for (int64_t i = 0; i < hp.n_rot / 2; ++i) {
    const int64_t sector = i % total, r = sector % 3;
    const bool positioned = (r == 0 && sector < 3 * sec[0]) || (r == 1 && sector < 3 * sec[1]) ||
                            (r == 2 && sector < 3 * sec[2]);
    hp.rope_pair_pos[static_cast<size_t>(i)] = positioned;
  }
  return {};
}

// qwen35: the DeltaNet sizes, which layers are recurrent (attention.recurrent_layers, else
// every layer but each full_attention_interval-th), the RoPE sections.
inline Status read_delta_net(const GgufFile& f, const std::string& a, HParams& hp) {
  if (!hp.arch.delta_net) return {};
  DeltaNetShape& s = hp.delta_net;
  int64_t inner = 0, interval = 0, nextn = 0;
  // Multi-token-prediction blocks follow the main stack; the main pass never runs them.
  TINYSLM_TRY_READ(nextn, arch_int(f, a, "nextn_predict_layers", 0));
  if (nextn < 0 || nextn >= hp.n_layer)
    return make_error(Errc::invalid_format, f.name() + ": metadata key '" + a + ".nextn_predict_layers' is " +
                                                std::to_string(nextn) + " for " + std::to_string(hp.n_layer) + " blocks");
  hp.n_layer -= nextn;
  TINYSLM_TRY_READ(s.d_conv, arch_int(f, a, "ssm.conv_kernel", -1));
  TINYSLM_TRY_READ(s.d_state, arch_int(f, a, "ssm.state_size", -1));
  TINYSLM_TRY_READ(s.n_k_heads, arch_int(f, a, "ssm.group_count", -1));
  TINYSLM_TRY_READ(s.n_v_heads, arch_int(f, a, "ssm.time_step_rank", -1));
  TINYSLM_TRY_READ(inner, arch_int(f, a, "ssm.inner_size", -1));
  const auto bad = [&](const char* key, int64_t v, const char* want) {
    return make_error(Errc::invalid_format, f.name() + ": metadata key '" + a + "." + key + "' is " +
                                                std::to_string(v) + " (" + want + ")");
  };
  if (s.d_conv < 2 || s.d_conv > 64) return bad("ssm.conv_kernel", s.d_conv, "expected 2 to 64");
  if (s.d_state <= 0 || s.d_state > kDeltaNetMaxState) return bad("ssm.state_size", s.d_state, "expected 1 to 1024");
  if (s.n_k_heads <= 0 || s.n_k_heads > 1024) return bad("ssm.group_count", s.n_k_heads, "expected 1 to 1024");
  if (s.n_v_heads <= 0 || s.n_v_heads > 1024 || s.n_v_heads % s.n_k_heads != 0)
    return bad("ssm.time_step_rank", s.n_v_heads, "V heads: a multiple of ssm.group_count, at most 1024");
  if (inner != s.value_dim()) return bad("ssm.inner_size", inner, "expected time_step_rank x state_size");
  if (hp.head_dim_k != hp.head_dim_v)
    return make_error(Errc::invalid_format, f.name() + ": qwen35 attention needs key_length == value_length");
  if (f.contains(a + ".attention.recurrent_layers")) {
    std::vector<int64_t> rec;
    if (auto st = arch_int_array(f, a, "attention.recurrent_layers", static_cast<size_t>(hp.n_layer), &rec); !st)
      return st;
    hp.layer_recurrent.assign(rec.begin(), rec.end());
  } else {
    TINYSLM_TRY_READ(interval, arch_int(f, a, "full_attention_interval", 4));
    if (interval <= 0) return bad("full_attention_interval", interval, "expected a positive interval");
    for (int64_t il = 0; il < hp.n_layer; ++il) hp.layer_recurrent.push_back((il + 1) % interval != 0);
  }
  if (std::find(hp.layer_recurrent.begin(), hp.layer_recurrent.end(), 0) == hp.layer_recurrent.end())
    return make_error(Errc::unsupported, f.name() + ": '" + a + ".full_attention_interval' / '" + a +
                                             ".attention.recurrent_layers' leave no attention layer");
  return read_rope_sections(f, a, hp);
}

#undef TINYSLM_TRY_READ

// The per-layer plan. Every layer is attention + FFN today; head counts and sizes are
// uniform, each layer owns its KV slot, and sliding layers use the second RoPE table.
inline void build_layer_plan(HParams& hp) {
  hp.layers.assign(static_cast<size_t>(hp.n_layer), LayerPlan{});
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    LayerPlan& p = hp.layers[static_cast<size_t>(il)];
    p.kind = LayerKind::attention;
    p.ffn = hp.n_expert > 0 ? FfnKind::moe : FfnKind::dense;
    p.n_head = hp.n_head;
    p.n_head_kv = hp.n_head_kv;
    p.head_dim_k = hp.head_dim_k;
    p.head_dim_v = hp.head_dim_v;
    p.n_ff = p.ffn == FfnKind::dense ? hp.n_ff : 0;
    p.sliding = hp.is_swa(il);
    p.rope = hp.arch.nope_period <= 0 || (il + 1) % hp.arch.nope_period != 0;
    p.rope_table = p.sliding ? 1 : 0;
    p.kv_layer = il;
  }
  if (!hp.layer_recurrent.empty()) {  // DeltaNet layers have no KV; attention layers are gated
    int64_t slot = 0;
    for (int64_t il = 0; il < hp.n_layer; ++il) {
      LayerPlan& p = hp.layers[static_cast<size_t>(il)];
      const bool rec = hp.layer_recurrent[static_cast<size_t>(il)] != 0;
      p.kind = rec ? LayerKind::delta_net : LayerKind::attention;
      p.rope = !rec;
      p.kv_layer = rec ? -1 : slot++;
      p.attn_gate = !rec;
    }
    return;
  }
  if (hp.layer_head_kv.empty()) return;
  // Hybrid: convolution layers have no KV; attention layers take consecutive cache slots.
  int64_t slot = 0;
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    LayerPlan& p = hp.layers[static_cast<size_t>(il)];
    if (hp.layer_head_kv[static_cast<size_t>(il)] == 0) {
      p.kind = LayerKind::short_conv;
      p.n_head_kv = 0;
      p.rope = false;
      p.kv_layer = -1;
    } else {
      p.kv_layer = slot++;
    }
  }
}

}  // namespace detail

// Reads the hyper-parameters of a GGUF file; refuses unknown architectures and MoE families
// whose routing is not implemented.
inline Expected<HParams> read_hparams(const GgufFile& f) {
  HParams hp;
  auto arch = f.get<std::string>("general.architecture");
  if (!arch) return arch.error();
  hp.arch_name = *arch;
  const std::string& a = hp.arch_name;
  auto n_expert = detail::arch_int(f, a, "expert_count", 0);
  if (!n_expert) return n_expert.error();
  hp.n_expert = *n_expert;
  if (is_unsupported_moe_arch(a))
    return make_error(Errc::unsupported, f.name() + ": architecture '" + a +
                                             "' is a mixture of experts this library does not support");
  const ArchInfo* info = find_arch(a);
  if (!info)
    return make_error(Errc::unsupported, f.name() + ": unsupported architecture '" + a + "' (supported: " +
                                             detail::supported_arch_list() + ", mixtral as llama)");
  if (hp.n_expert > 0 && !info->moe.allowed)
    return make_error(Errc::unsupported, f.name() + ": experts in a '" + a + "' file are not supported");
  hp.arch = *info;
  for (auto step : {detail::read_sizes, detail::read_rope, detail::read_swa, detail::read_scales, detail::read_delta_net})
    if (auto st = step(f, a, hp); !st) return st.error();
  detail::build_layer_plan(hp);
  return hp;
}

// A loaded model: the mapped file, its hyper-parameters and its weights (pointers into the
// mapping; 1-D tensors such as norms and biases are converted to small float vectors).
// A Model is a handle: copies share one loaded file, and a Context or Session made from a
// Model holds a copy, so the weights stay mapped for as long as anything uses them.
class Model {
 public:
  static Expected<Model> open(const std::string& path, LoadMode mode = LoadMode::map) {
    auto f = GgufFile::open(path, mode);
    if (!f) return f.error();
    return from_gguf(std::move(*f));
  }
  static Expected<Model> from_gguf(GgufFile file);

  Model() = default;  // empty: assign the result of open() before use
  explicit operator bool() const { return s_ != nullptr; }

  const HParams& hparams() const { return s_->hp; }
  const ModelWeights& weights() const { return s_->w; }
  const GgufFile& gguf() const { return s_->file; }
  const std::string& name() const { return s_->file.name(); }
  // Total bytes of the weight tensors (for reports such as bench's "size" column).
  uint64_t weight_bytes() const {
    uint64_t n = 0;
    for (const auto& t : s_->file.tensors()) n += t.n_bytes;
    return n;
  }

 private:
  struct State {
    explicit State(GgufFile f) : file(std::move(f)) {}
    GgufFile file;
    HParams hp;
    ModelWeights w;
    Status bind();
  };
  std::shared_ptr<const State> s_;
};

namespace detail {

// "[a, b, c]" (built by appending: GCC 12 warns falsely on "[" + std::string temporaries).
inline std::string shape_text(std::initializer_list<int64_t> dims) {
  std::string s = "[";
  for (int64_t d : dims) {
    if (s.size() > 1) s += ", ";
    s += std::to_string(d);
  }
  s += "]";
  return s;
}

struct WeightBinder {
  const GgufFile& f;
  const std::string& arch;

  Error missing(const std::string& name) const {
    return make_error(Errc::not_found, f.name() + ": missing tensor '" + name +
                                           "' (needed by architecture '" + arch + "')");
  }
  Error bad_shape(const GgufTensorInfo& t, const std::string& want) const {
    return make_error(Errc::invalid_format, f.name() + ": tensor '" + std::string(t.name) +
                                                "' has shape " + t.shape_string() +
                                                ", expected " + want);
  }

  // A matrix with `cols` values per row and `rows` rows.
  Status matrix(const std::string& name, int64_t cols, int64_t rows, bool required, Weight* out) const {
    const GgufTensorInfo* t = f.find_tensor(name);
    if (!t) return required ? Status(missing(name)) : Status();
    if (t->n_dims != 2 || static_cast<int64_t>(t->ne[0]) != cols ||
        static_cast<int64_t>(t->ne[1]) != rows)
      return bad_shape(*t, shape_text({cols, rows}));
    if (!matmul_supports(t->type))
      return make_error(Errc::unsupported, f.name() + ": tensor '" + name + "' has type " +
                                               tensor_type_name(t->type) +
                                               ", which is not supported for matrices");
    *out = Weight{t->type, t->data, rows, cols, t->name};
    return {};
  }

  // A 1-D tensor of n values, converted to floats.
  Status vector(const std::string& name, int64_t n, bool required, std::vector<float>* out) const {
    const GgufTensorInfo* t = f.find_tensor(name);
    if (!t) return required ? Status(missing(name)) : Status();
    if (t->n_elements != static_cast<uint64_t>(n) || (t->n_dims != 1 && t->rows() != 1))
      return bad_shape(*t, shape_text({n}));
    out->resize(static_cast<size_t>(n));
    auto st = dequantize_row(t->type, t->data, out->data(), n);
    if (!st) return Error(st.error()).context(f.name() + ": tensor '" + name + "'");
    return {};
  }
};

// The expert tensors' binder: its own messages ("mixture-of-experts layer"), 1-D routers.
struct MoeBinder {
  const GgufFile& f;

  Error missing(const std::string& name) const {
    return make_error(Errc::not_found, f.name() + ": missing tensor '" + name + "' (mixture-of-experts layer)");
  }
  Error bad_shape(const GgufTensorInfo& t, const std::string& want) const {
    return make_error(Errc::invalid_format, f.name() + ": tensor '" + std::string(t.name) + "' has shape " +
                                                t.shape_string() + ", expected " + want);
  }
  Status check_type(const GgufTensorInfo& t, int64_t cols) const {
    if (!matmul_supports(t.type))
      return make_error(Errc::unsupported, f.name() + ": tensor '" + std::string(t.name) + "' has type " +
                                               tensor_type_name(t.type) + ", which is not supported for matrices");
    if (cols % static_cast<int64_t>(tensor_type_info(t.type).block_size) != 0)
      return make_error(Errc::invalid_format, f.name() + ": tensor '" + std::string(t.name) + "' has rows of " +
                                                  std::to_string(cols) + " values, not a multiple of the " +
                                                  tensor_type_name(t.type) + " block");
    return {};
  }

  // A matrix of `rows` rows of `cols` values; a 1-D tensor counts as one row when rows == 1.
  Status matrix(const std::string& name, int64_t cols, int64_t rows, bool required, MatrixRef* out) const {
    const GgufTensorInfo* t = f.find_tensor(name);
    if (!t) return required ? Status(missing(name)) : Status();
    const bool ok = static_cast<int64_t>(t->ne[0]) == cols &&
                    ((t->n_dims == 2 && static_cast<int64_t>(t->ne[1]) == rows) || (t->n_dims == 1 && rows == 1));
    if (!ok) return bad_shape(*t, shape_text({cols, rows}));
    if (auto st = check_type(*t, cols); !st) return st;
    *out = MatrixRef{t->type, t->data, rows, cols};
    return {};
  }

  Status experts(const std::string& name, int64_t cols, int64_t rows, int64_t n_expert, MoeExperts* out) const {
    const GgufTensorInfo* t = f.find_tensor(name);
    if (!t) return missing(name);
    if (t->n_dims != 3 || static_cast<int64_t>(t->ne[0]) != cols || static_cast<int64_t>(t->ne[1]) != rows ||
        static_cast<int64_t>(t->ne[2]) != n_expert)
      return bad_shape(*t, shape_text({cols, rows, n_expert}));
    if (auto st = check_type(*t, cols); !st) return st;
    uint64_t rb = 0;
    if (!tensor_row_bytes(t->type, static_cast<uint64_t>(cols), &rb) ||
        rb * static_cast<uint64_t>(rows) * static_cast<uint64_t>(n_expert) != t->n_bytes)
      return make_error(Errc::invalid_format, f.name() + ": tensor '" + name + "' has an inconsistent byte size");
    *out = MoeExperts{t->type, t->data, rows, cols, n_expert, rb};
    return {};
  }
};

inline std::string blk_name(int64_t il, const char* what) { return "blk." + std::to_string(il) + "." + what; }

}  // namespace detail

// Binds layer il's router, experts and shared expert (tensor names as llama.cpp writes them)
// and checks every shape against the config and n_embd.
inline Expected<MoeLayerWeights> bind_moe_layer(const GgufFile& f, const MoeConfig& cfg, int64_t il, int64_t n_embd) {
  if (!cfg.enabled()) return make_error(Errc::invalid_argument, "bind_moe_layer: the config has no experts");
  if (n_embd <= 0) return make_error(Errc::invalid_argument, "bind_moe_layer: n_embd must be positive");
  detail::MoeBinder b{f};
  const std::string p = "blk." + std::to_string(il) + ".";
  const int64_t E = n_embd, F = cfg.expert_ff, X = cfg.n_expert;
  MoeLayerWeights w;
  Status st;
  if (st = b.matrix(p + "ffn_gate_inp.weight", E, X, true, &w.router); !st) return st.error();
  if (st = b.experts(p + "ffn_gate_exps.weight", E, F, X, &w.gate); !st) return st.error();
  if (st = b.experts(p + "ffn_up_exps.weight", E, F, X, &w.up); !st) return st.error();
  if (st = b.experts(p + "ffn_down_exps.weight", F, E, X, &w.down); !st) return st.error();
  if (cfg.shared_expert) {
    const int64_t S = cfg.shared_ff;
    if (st = b.matrix(p + "ffn_gate_shexp.weight", E, S, true, &w.shared_gate); !st) return st.error();
    if (st = b.matrix(p + "ffn_up_shexp.weight", E, S, true, &w.shared_up); !st) return st.error();
    if (st = b.matrix(p + "ffn_down_shexp.weight", S, E, true, &w.shared_down); !st) return st.error();
    if (st = b.matrix(p + "ffn_gate_inp_shexp.weight", E, 1, cfg.shared_gated, &w.shared_gate_inp); !st)
      return st.error();
  }
  return w;
}

namespace detail {

#define TINYSLM_BIND(call)     \
  do {                         \
    if (auto st_ = (call); !st_) return st_; \
  } while (0)

// Embeddings, output norm and head (tied to the embeddings when absent), RoPE factors.
inline Status bind_globals(const GgufFile& f, const WeightBinder& b, HParams& hp, ModelWeights& w) {
  const int64_t E = hp.n_embd;
  const GgufTensorInfo* te = f.find_tensor("token_embd.weight");
  if (!te) return b.missing("token_embd.weight");
  if (te->n_dims != 2 || static_cast<int64_t>(te->ne[0]) != E)
    return b.bad_shape(*te, std::string("[").append(std::to_string(E)).append(", n_vocab]"));
  hp.n_vocab = static_cast<int64_t>(te->ne[1]);
  TINYSLM_BIND(b.matrix("token_embd.weight", E, hp.n_vocab, true, &w.token_embd));
  TINYSLM_BIND(b.vector(hp.arch.output_norm_name, E, true, &w.output_norm));
  TINYSLM_BIND(b.matrix("output.weight", E, hp.n_vocab, false, &w.output));
  if (!w.output) {
    w.output = w.token_embd;
    w.tied_embeddings = true;
  }
  TINYSLM_BIND(b.vector("output.bias", hp.n_vocab, false, &w.output_bias));
  // Phi-3 LongRoPE stores per-layer long/short factor tables and an attention factor.
  if (f.find_tensor("rope_factors_long.weight") || f.find_tensor("blk.0.rope_factors_long.weight"))
    return make_error(Errc::unsupported, f.name() + ": LongRoPE (rope_factors_long/short) is not supported yet");
  // llama3-style RoPE frequency factors (one per rotated pair).
  TINYSLM_BIND(b.vector("rope_freqs.weight", hp.n_rot / 2, false, &hp.rope_freq_factors));
  return {};
}

// Norms, Q/K/V (or fused QKV), biases, QK-norm and output projection of one attention layer.
inline Status bind_attention(const GgufFile& f, const WeightBinder& b, const HParams& hp, int64_t il,
                             LayerWeights& L) {
  const LayerPlan& p = hp.layers[static_cast<size_t>(il)];
  const ArchInfo& ai = hp.arch;
  const int64_t E = hp.n_embd, Q = p.q_dim(), K = p.k_dim(), V = p.v_dim();
  TINYSLM_BIND(b.vector(blk_name(il, "attn_norm.weight"), E, true, &L.attn_norm));
  if (ai.fused_qkv && f.find_tensor(blk_name(il, "attn_qkv.weight"))) {
    TINYSLM_BIND(b.matrix(blk_name(il, "attn_qkv.weight"), E, Q + K + V, true, &L.wqkv));
  } else {
    TINYSLM_BIND(b.matrix(blk_name(il, "attn_q.weight"), E, p.attn_gate ? 2 * Q : Q, true, &L.wq));
    TINYSLM_BIND(b.matrix(blk_name(il, "attn_k.weight"), E, K, true, &L.wk));
    TINYSLM_BIND(b.matrix(blk_name(il, "attn_v.weight"), E, V, true, &L.wv));
  }
  TINYSLM_BIND(b.vector(blk_name(il, "attn_q.bias"), Q, ai.qkv_bias, &L.bq));
  TINYSLM_BIND(b.vector(blk_name(il, "attn_k.bias"), K, ai.qkv_bias, &L.bk));
  TINYSLM_BIND(b.vector(blk_name(il, "attn_v.bias"), V, ai.qkv_bias, &L.bv));
  const bool qkn = ai.qk_norm != QkNorm::none, whole = ai.qk_norm == QkNorm::whole;
  TINYSLM_BIND(b.vector(blk_name(il, "attn_q_norm.weight"), whole ? Q : p.head_dim_k, qkn, &L.q_norm));
  TINYSLM_BIND(b.vector(blk_name(il, "attn_k_norm.weight"), whole ? K : p.head_dim_k, qkn, &L.k_norm));
  TINYSLM_BIND(b.matrix(blk_name(il, "attn_output.weight"), p.attn_out_dim(), E, true, &L.wo));
  TINYSLM_BIND(b.vector(blk_name(il, "attn_output.bias"), E, false, &L.bo));
  if (std::string_view(ai.ffn_norm_name) != "post_attention_norm.weight")  // else it is the FFN's norm
    TINYSLM_BIND(b.vector(blk_name(il, "post_attention_norm.weight"), E, ai.post_norms, &L.post_attn_norm));
  return {};
}

// The norm, projections and kernel of a short-convolution layer; the kernel's shape must
// agree with shortconv.l_cache.
inline Status bind_short_conv(const GgufFile& f, const WeightBinder& b, const HParams& hp, int64_t il,
                              LayerWeights& L) {
  const int64_t E = hp.n_embd, K = hp.conv_kernel;
  TINYSLM_BIND(b.vector(blk_name(il, "attn_norm.weight"), E, true, &L.attn_norm));
  TINYSLM_BIND(b.matrix(blk_name(il, "shortconv.in_proj.weight"), E, 3 * E, true, &L.conv_in));
  TINYSLM_BIND(b.matrix(blk_name(il, "shortconv.out_proj.weight"), E, E, true, &L.conv_out));
  const std::string name = blk_name(il, "shortconv.conv.weight");
  const GgufTensorInfo* t = f.find_tensor(name);
  if (!t) return b.missing(name);
  if (t->n_dims != 2 || static_cast<int64_t>(t->ne[0]) != K || static_cast<int64_t>(t->ne[1]) != E)
    return make_error(Errc::invalid_format, f.name() + ": tensor '" + name + "' has shape " + t->shape_string() +
                                                ", expected " + shape_text({K, E}) + " (shortconv.l_cache " +
                                                std::to_string(K) + ", n_embd " + std::to_string(E) + ")");
  L.conv_kernel.resize(static_cast<size_t>(K * E));
  uint64_t rb = 0;
  if (!tensor_row_bytes(t->type, static_cast<uint64_t>(K), &rb) || rb * static_cast<uint64_t>(E) != t->n_bytes)
    return make_error(Errc::invalid_format, f.name() + ": tensor '" + name + "' has an unusable type or size");
  for (int64_t c = 0; c < E; ++c)
    if (auto st = dequantize_row(t->type, t->data + c * rb, L.conv_kernel.data() + c * K, K); !st)
      return Error(st.error()).context(f.name() + ": tensor '" + name + "'");
  return {};
}

// A small F32-converted tensor of exactly `rows` rows of `cols` values (a 1-D tensor when
// rows == 1), its expected shape named with the metadata keys it follows from.
inline Status small_tensor(const GgufFile& f, const std::string& name, int64_t cols, int64_t rows, const char* keys,
                           std::vector<float>* out) {
  const GgufTensorInfo* t = f.find_tensor(name);
  if (!t) return make_error(Errc::not_found, f.name() + ": missing tensor '" + name + "' (DeltaNet layer)");
  const bool shape_ok = static_cast<int64_t>(t->ne[0]) == cols &&
                        (rows == 1 ? t->n_elements == static_cast<uint64_t>(cols)
                                   : t->n_dims == 2 && static_cast<int64_t>(t->ne[1]) == rows);
  uint64_t rb = 0;
  if (!shape_ok || !tensor_row_bytes(t->type, static_cast<uint64_t>(cols), &rb) ||
      rb * static_cast<uint64_t>(rows) != t->n_bytes)
    return make_error(Errc::invalid_format, f.name() + ": tensor '" + name + "' has shape " + t->shape_string() +
                                                ", expected " + (rows == 1 ? shape_text({cols}) : shape_text({cols, rows})) +
                                                " (from " + keys + ")");
  out->resize(static_cast<size_t>(cols * rows));
  for (int64_t r = 0; r < rows; ++r)
    if (auto st = dequantize_row(t->type, t->data + r * rb, out->data() + r * cols, cols); !st)
      return Error(st.error()).context(f.name() + ": tensor '" + name + "'");
  return {};
}

// The tensors of a Gated DeltaNet layer; every shape must agree with the ssm.* keys (which
// size the per-sequence state).
inline Status bind_delta_net(const GgufFile& f, const WeightBinder& b, const HParams& hp, int64_t il,
                             LayerWeights& L) {
  const DeltaNetShape& s = hp.delta_net;
  const int64_t E = hp.n_embd, C = s.channels(), V = s.value_dim(), H = s.n_v_heads;
  TINYSLM_BIND(b.vector(blk_name(il, "attn_norm.weight"), E, true, &L.attn_norm));
  TINYSLM_BIND(b.matrix(blk_name(il, "attn_qkv.weight"), E, C, true, &L.ssm_qkv));
  TINYSLM_BIND(b.matrix(blk_name(il, "attn_gate.weight"), E, V, true, &L.ssm_gate));
  TINYSLM_BIND(b.matrix(blk_name(il, "ssm_beta.weight"), E, H, true, &L.ssm_beta));
  TINYSLM_BIND(b.matrix(blk_name(il, "ssm_alpha.weight"), E, H, true, &L.ssm_alpha));
  TINYSLM_BIND(b.matrix(blk_name(il, "ssm_out.weight"), V, E, true, &L.ssm_out));
  TINYSLM_BIND(small_tensor(f, blk_name(il, "ssm_conv1d.weight"), s.d_conv, C, "ssm.conv_kernel, ssm.state_size, "
               "ssm.group_count, ssm.time_step_rank", &L.ssm_conv));
  TINYSLM_BIND(small_tensor(f, blk_name(il, "ssm_dt.bias"), H, 1, "ssm.time_step_rank", &L.ssm_dt_bias));
  TINYSLM_BIND(small_tensor(f, blk_name(il, "ssm_a"), H, 1, "ssm.time_step_rank", &L.ssm_a));
  TINYSLM_BIND(small_tensor(f, blk_name(il, "ssm_norm.weight"), s.d_state, 1, "ssm.state_size", &L.ssm_norm));
  return {};
}

// The FFN norm and either the dense FFN or the router and experts of one layer.
inline Status bind_ffn(const GgufFile& f, const WeightBinder& b, HParams& hp, int64_t il, LayerWeights& L) {
  const LayerPlan& p = hp.layers[static_cast<size_t>(il)];
  const ArchInfo& ai = hp.arch;
  const int64_t E = hp.n_embd, F = p.n_ff;
  TINYSLM_BIND(b.vector(blk_name(il, ai.ffn_norm_name), E, true, &L.ffn_norm));
  const bool has_router = f.find_tensor(blk_name(il, "ffn_gate_inp.weight")) != nullptr;
  if (p.ffn == FfnKind::moe) {
    if (!has_router) return b.missing(blk_name(il, "ffn_gate_inp.weight"));
    if (!hp.moe.enabled()) {
      auto cfg = read_moe_config(f);
      if (!cfg) return cfg.error();
      hp.moe = *cfg;
    }
    auto lw = bind_moe_layer(f, hp.moe, il, E);
    if (!lw) return lw.error();
    L.experts = *lw;
    L.moe = true;
    // Post-FFN norms are not part of any MoE family's graph (none is bound, as before).
    return {};
  }
  if (has_router)
    return make_error(Errc::invalid_format, f.name() + ": layer " + std::to_string(il) +
                                                " has a router (ffn_gate_inp) but the file declares no experts");
  if (ai.fused_gate_up) {
    TINYSLM_BIND(b.matrix(blk_name(il, "ffn_up.weight"), E, 2 * F, true, &L.ffn_up));
  } else {
    TINYSLM_BIND(b.matrix(blk_name(il, "ffn_gate.weight"), E, F, true, &L.ffn_gate));
    TINYSLM_BIND(b.matrix(blk_name(il, "ffn_up.weight"), E, F, true, &L.ffn_up));
  }
  TINYSLM_BIND(b.matrix(blk_name(il, "ffn_down.weight"), F, E, true, &L.ffn_down));
  TINYSLM_BIND(b.vector(blk_name(il, "post_ffw_norm.weight"), E, ai.post_norms, &L.post_ffn_norm));
  return {};
}

}  // namespace detail

inline Expected<Model> Model::from_gguf(GgufFile file) {
  auto s = std::make_shared<State>(std::move(file));
  auto hp = read_hparams(s->file);
  if (!hp) return hp.error();
  s->hp = std::move(*hp);
  if (auto st = s->bind(); !st) return st.error();
  Model m;
  m.s_ = std::move(s);
  return m;
}

inline Status Model::State::bind() {
  detail::WeightBinder b{file, hp.arch_name};
  TINYSLM_BIND(detail::bind_globals(file, b, hp, w));
  w.layers.resize(static_cast<size_t>(hp.n_layer));
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    LayerWeights& L = w.layers[static_cast<size_t>(il)];
    if (hp.layers[static_cast<size_t>(il)].kind == LayerKind::short_conv)
      TINYSLM_BIND(detail::bind_short_conv(file, b, hp, il, L));
    else if (hp.layers[static_cast<size_t>(il)].kind == LayerKind::delta_net)
      TINYSLM_BIND(detail::bind_delta_net(file, b, hp, il, L));
    else
      TINYSLM_BIND(detail::bind_attention(file, b, hp, il, L));
    TINYSLM_BIND(detail::bind_ffn(file, b, hp, il, L));
  }
  return {};
}

#undef TINYSLM_BIND

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/model.hpp ----

// ---- begin tinyslm/kv_quant.hpp ----
// tinyslm kv_quant: the element types of the KV cache and attention over a quantized cache.
//
// A cache row (one position of one kv head) is head_dim values stored as f16, or as q8_0 / q4_0
// blocks of 32 (the ggml block structs of quant.hpp), as llama.cpp's -ctk / -ctv choose. With a
// quantized cache, attention never dequantizes the prefix: each query head is quantized to
// q8_0 once and dotted with the K blocks in integers (as llama.cpp's flash attention does with
// its vec_dot_type), and each V row is scaled into an f32 accumulator straight from its blocks.
// The softmax is then in f32 (no fp16 rounding of the probabilities), as llama.cpp's flash
// attention does for a quantized V. An all-f16 cache keeps ops::attention (ops.hpp).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>


#if defined(TINYSLM_SIMD_X86)
#include <immintrin.h>
#define TINYSLM_KVQ_X86 1
#define TINYSLM_KVQ_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TINYSLM_KVQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#endif
#if defined(__GNUC__) || defined(__clang__)
#define TINYSLM_OPS_KVQ_INLINE __attribute__((always_inline)) inline
#else
#define TINYSLM_OPS_KVQ_INLINE inline
#endif

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

enum class KvType : uint8_t { f16 = 0, q8_0 = 1, q4_0 = 2 };

inline const char* kv_type_name(KvType t) {
  switch (t) {
    case KvType::f16: return "f16";
    case KvType::q8_0: return "q8_0";
    case KvType::q4_0: return "q4_0";
  }
  return "?";
}

// llama.cpp's spellings of -ctk / -ctv.
inline Expected<KvType> parse_kv_type(std::string_view s) {
  for (KvType t : {KvType::f16, KvType::q8_0, KvType::q4_0})
    if (s == kv_type_name(t)) return t;
  return make_error(Errc::invalid_argument,
                    "unsupported KV cache type '" + std::string(s) + "' (supported: f16, q8_0, q4_0)");
}

// Values per block: a row must be a whole number of blocks.
inline int64_t kv_block_size(KvType t) { return t == KvType::f16 ? 1 : kBlock32; }

// Bytes of one cache row of n values (n a multiple of the block size).
inline int64_t kv_row_bytes(KvType t, int64_t n) {
  switch (t) {
    case KvType::f16: return 2 * n;
    case KvType::q8_0: return n / kBlock32 * static_cast<int64_t>(sizeof(BlockQ8_0));
    case KvType::q4_0: return n / kBlock32 * static_cast<int64_t>(sizeof(BlockQ4_0));
  }
  return 0;
}

// Refuses a head size the block does not divide, in llama.cpp's words ("K" or "V").
inline Status kv_check_head_dim(KvType t, int64_t head_dim, const char* which) {
  const int64_t bs = kv_block_size(t);
  if (head_dim <= 0 || head_dim % bs != 0)
    return make_error(Errc::unsupported, std::string(which) + " cache type " + kv_type_name(t) + " with block size " +
                                             std::to_string(bs) + " does not divide n_embd_head_" +
                                             (which[0] == 'K' ? "k" : "v") + "=" + std::to_string(head_dim));
  return {};
}

// Stores n floats as one cache row of type t.
inline void kv_store_row(KvType t, const float* x, int64_t n, uint8_t* row) {
  switch (t) {
    case KvType::f16: ops::f32_to_f16(x, reinterpret_cast<uint16_t*>(row), n); return;
    case KvType::q8_0:
      for (int64_t b = 0; b < n / kBlock32; ++b) quantize_block(x + b * kBlock32, reinterpret_cast<BlockQ8_0*>(row) + b);
      return;
    case KvType::q4_0:
      for (int64_t b = 0; b < n / kBlock32; ++b) quantize_block(x + b * kBlock32, reinterpret_cast<BlockQ4_0*>(row) + b);
      return;
  }
}

// One cache row back to floats (tests, tools; attention does not use it).
inline void kv_load_row(KvType t, const uint8_t* row, int64_t n, float* x) {
  if (t == KvType::f16) return ops::f16_to_f32(reinterpret_cast<const uint16_t*>(row), x, n);
  for (int64_t b = 0; b < n / kBlock32; ++b) {
    float* o = x + b * kBlock32;
    if (t == KvType::q8_0) {
      const BlockQ8_0& k = reinterpret_cast<const BlockQ8_0*>(row)[b];
      for (int j = 0; j < kBlock32; ++j) o[j] = fp16_to_fp32(k.d) * k.qs[j];
    } else {
      const BlockQ4_0& k = reinterpret_cast<const BlockQ4_0*>(row)[b];
      for (int j = 0; j < kBlock32 / 2; ++j) {
        o[j] = fp16_to_fp32(k.d) * ((k.qs[j] & 15) - 8);
        o[j + 16] = fp16_to_fp32(k.d) * ((k.qs[j] >> 4) - 8);
      }
    }
  }
}

namespace ops {

// One layer of a cache: [n_head_kv][cache_ctx] rows of row_bytes.
struct KvRows {
  const uint8_t* data = nullptr;
  KvType type = KvType::f16;
  int64_t row_bytes = 0;
};

namespace detail {

// ---------------------------------------------------------------------------------------
// Scalar reference kernels. q: the query head as q8_0 blocks (nb of them).

inline float kq_dot_q8_0_scalar(const BlockQ8_0* k, const BlockQ8_0* q, int64_t nb) {
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t isum = 0;
    for (int j = 0; j < kBlock32; ++j) isum += k[b].qs[j] * q[b].qs[j];
    sum += static_cast<float>(isum) * (fp16_to_fp32(k[b].d) * fp16_to_fp32(q[b].d));
  }
  return sum;
}

inline float kq_dot_q4_0_scalar(const BlockQ4_0* k, const BlockQ8_0* q, int64_t nb) {
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t isum = 0;
    for (int j = 0; j < kBlock32 / 2; ++j)
      isum += ((k[b].qs[j] & 15) - 8) * q[b].qs[j] + ((k[b].qs[j] >> 4) - 8) * q[b].qs[j + 16];
    sum += static_cast<float>(isum) * (fp16_to_fp32(k[b].d) * fp16_to_fp32(q[b].d));
  }
  return sum;
}

// acc[0, 32 nb) += w * (row as floats).
inline void v_mad_q8_0_scalar(const BlockQ8_0* v, int64_t nb, float w, float* acc) {
  for (int64_t b = 0; b < nb; ++b) {
    const float c = w * fp16_to_fp32(v[b].d);
    for (int j = 0; j < kBlock32; ++j) acc[b * kBlock32 + j] += c * static_cast<float>(v[b].qs[j]);
  }
}

inline void v_mad_q4_0_scalar(const BlockQ4_0* v, int64_t nb, float w, float* acc) {
  for (int64_t b = 0; b < nb; ++b) {
    const float c = w * fp16_to_fp32(v[b].d);
    for (int j = 0; j < kBlock32 / 2; ++j) {
      acc[b * kBlock32 + j] += c * static_cast<float>((v[b].qs[j] & 15) - 8);
      acc[b * kBlock32 + j + 16] += c * static_cast<float>((v[b].qs[j] >> 4) - 8);
    }
  }
}

// Queries a prefill work item takes together (they share every cache row they read).
inline constexpr int64_t kQueryBlock = 4;

// The heads of one GQA group read each cache row once: M query heads, q holds M x nb blocks,
// scores s[m * ld + j] and sums acc[m * hv ..] per head m.
struct GroupRows {
  const uint8_t* rows;  // n rows of rb bytes
  int64_t rb, n, nb, m;
};

// s[m ld + j] = K row j . q_m for a q8_0 / q4_0 cache.
inline void kq_scores_scalar(KvType t, const GroupRows& g, const BlockQ8_0* q, float* s, int64_t ld) {
  for (int64_t j = 0; j < g.n; ++j) {
    const uint8_t* r = g.rows + j * g.rb;
    for (int64_t m = 0; m < g.m; ++m)
      s[m * ld + j] = t == KvType::q8_0 ? kq_dot_q8_0_scalar(reinterpret_cast<const BlockQ8_0*>(r), q + m * g.nb, g.nb)
                                        : kq_dot_q4_0_scalar(reinterpret_cast<const BlockQ4_0*>(r), q + m * g.nb, g.nb);
  }
}

// acc_m += sum_j p[m ld + j] * V row j for a q8_0 / q4_0 cache.
inline void v_mix_scalar(KvType t, const GroupRows& g, const float* p, int64_t ld, float* acc) {
  const int64_t hv = g.nb * kBlock32;
  for (int64_t j = 0; j < g.n; ++j) {
    const uint8_t* r = g.rows + j * g.rb;
    for (int64_t m = 0; m < g.m; ++m) {
      if (t == KvType::q8_0) v_mad_q8_0_scalar(reinterpret_cast<const BlockQ8_0*>(r), g.nb, p[m * ld + j], acc + m * hv);
      else v_mad_q4_0_scalar(reinterpret_cast<const BlockQ4_0*>(r), g.nb, p[m * ld + j], acc + m * hv);
    }
  }
}

// Scale, optional soft-cap and an f32 softmax of s[0, n), in place.
TINYSLM_OPS_KVQ_INLINE void softmax_f32_body(float* s, int64_t n, float scale, float softcap) {
  const float inv = softmax_exp_body(s, n, scale, softcap);
  for (int64_t j = 0; j < n; ++j) s[j] *= inv;
}
inline void softmax_f32_scalar(float* s, int64_t n, float scale, float softcap) { softmax_f32_body(s, n, scale, softcap); }

#if defined(TINYSLM_KVQ_X86)
// ---------------------------------------------------------------------------------------
// x86: 32 signed bytes per block. The K . q products use the sign trick (|k| unsigned times
// q with k's sign) so one unsigned-by-signed multiply-add covers a block; AVX-512 VNNI does
// it in one vpdpbusd, AVX2 in vpmaddubsw + vpmaddwd. Eight rows are reduced together.

// The 32 values of a q4_0 block as signed bytes (-8..7), in element order.
TINYSLM_KVQ_AVX2 inline __m256i q4_0_bytes(const uint8_t* qs) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  return _mm256_sub_epi8(_mm256_and_si256(both, _mm256_set1_epi8(15)), _mm256_set1_epi8(8));
}

template <KvType T>
TINYSLM_KVQ_AVX2 __attribute__((always_inline)) inline __m256i kv_block_bytes(const uint8_t* blk) {
  if constexpr (T == KvType::q8_0) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
  else return q4_0_bytes(blk + 2);
}

template <KvType T>
inline constexpr int64_t kBlockBytes = T == KvType::q8_0 ? int64_t(sizeof(BlockQ8_0)) : int64_t(sizeof(BlockQ4_0));

TINYSLM_KVQ_AVX2 __attribute__((always_inline)) inline float kv_block_scale(const uint8_t* blk) {
  uint16_t d;
  std::memcpy(&d, blk, 2);
  return _cvtsh_ss(d);
}

// The eight sums of a0..a7, in order.
TINYSLM_KVQ_AVX2 __attribute__((always_inline)) inline __m256 hsum8(const __m256* a) {
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
TINYSLM_KVQ_AVX2 __attribute__((always_inline)) inline float hsum1(__m256 a) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2)));
}

#define TINYSLM_KVQ_SCORES(TARGET, SUFFIX, MADD)                                                               \
  template <KvType T>                                                                                          \
  TARGET __attribute__((always_inline)) inline __m256 row_dot_##SUFFIX(const uint8_t* r, const BlockQ8_0* q,   \
                                                                       int64_t nb) {                           \
    __m256 acc = _mm256_setzero_ps();                                                                          \
    for (int64_t b = 0; b < nb; ++b) {                                                                         \
      const uint8_t* blk = r + b * kBlockBytes<T>;                                                             \
      const __m256i kx = kv_block_bytes<T>(blk);                                                               \
      const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[b].qs));                        \
      const __m256i p32 = MADD(_mm256_sign_epi8(kx, kx), _mm256_sign_epi8(qy, kx));                            \
      acc = _mm256_fmadd_ps(_mm256_set1_ps(kv_block_scale(blk) * _cvtsh_ss(q[b].d)), _mm256_cvtepi32_ps(p32), acc); \
    }                                                                                                          \
    return acc;                                                                                                \
  }                                                                                                            \
  template <KvType T>                                                                                          \
  TARGET inline void kq_scores_##SUFFIX(const GroupRows& g, const BlockQ8_0* q, float* s, int64_t ld) {       \
    int64_t j = 0;                                                                                             \
    for (; j + 8 <= g.n; j += 8)                                                                               \
      for (int64_t m = 0; m < g.m; ++m) {                                                                      \
        __m256 acc[8];                                                                                         \
        for (int r = 0; r < 8; ++r) acc[r] = row_dot_##SUFFIX<T>(g.rows + (j + r) * g.rb, q + m * g.nb, g.nb); \
        _mm256_storeu_ps(s + m * ld + j, hsum8(acc));                                                          \
      }                                                                                                        \
    for (; j < g.n; ++j)                                                                                       \
      for (int64_t m = 0; m < g.m; ++m) s[m * ld + j] = hsum1(row_dot_##SUFFIX<T>(g.rows + j * g.rb, q + m * g.nb, g.nb)); \
  }

TINYSLM_KVQ_AVX2 __attribute__((always_inline)) inline __m256i madd_u8s8_avx2(__m256i u, __m256i v) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, v), _mm256_set1_epi16(1));
}
TINYSLM_KVQ_AVX512 __attribute__((always_inline)) inline __m256i madd_u8s8_vnni(__m256i u, __m256i v) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, v);
}
TINYSLM_KVQ_SCORES(TINYSLM_KVQ_AVX2, avx2, madd_u8s8_avx2)
TINYSLM_KVQ_SCORES(TINYSLM_KVQ_AVX512, avx512, madd_u8s8_vnni)
#undef TINYSLM_KVQ_SCORES

// acc_m += sum_j p[m ld + j] * V row j: each block's 32 bytes widened to floats once per row,
// then scaled by p * d into every head's sum.
template <KvType T>
TINYSLM_KVQ_AVX2 inline void v_mix_avx2(const GroupRows& g, const float* p, int64_t ld, float* acc) {
  const int64_t hv = g.nb * kBlock32;
  for (int64_t j = 0; j < g.n; ++j) {
    const uint8_t* r = g.rows + j * g.rb;
    for (int64_t b = 0; b < g.nb; ++b) {
      const uint8_t* blk = r + b * kBlockBytes<T>;
      const float d = kv_block_scale(blk);
      const __m256i x = kv_block_bytes<T>(blk);
      const __m128i lo = _mm256_castsi256_si128(x), hi = _mm256_extracti128_si256(x, 1);
      const __m256 v0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
      const __m256 v1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
      const __m256 v2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
      const __m256 v3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
      for (int64_t m = 0; m < g.m; ++m) {
        const __m256 c = _mm256_set1_ps(p[m * ld + j] * d);
        float* a = acc + m * hv + b * kBlock32;
        _mm256_storeu_ps(a, _mm256_fmadd_ps(c, v0, _mm256_loadu_ps(a)));
        _mm256_storeu_ps(a + 8, _mm256_fmadd_ps(c, v1, _mm256_loadu_ps(a + 8)));
        _mm256_storeu_ps(a + 16, _mm256_fmadd_ps(c, v2, _mm256_loadu_ps(a + 16)));
        _mm256_storeu_ps(a + 24, _mm256_fmadd_ps(c, v3, _mm256_loadu_ps(a + 24)));
      }
    }
  }
}

TINYSLM_KVQ_AVX2 inline void softmax_f32_avx2(float* s, int64_t n, float scale, float softcap) {
  softmax_f32_body(s, n, scale, softcap);
}
TINYSLM_KVQ_AVX512 inline void softmax_f32_avx512(float* s, int64_t n, float scale, float softcap) {
  softmax_f32_body(s, n, scale, softcap);
}
#endif

// The paths the active SIMD level picks.
inline void kq_scores(KvType t, const GroupRows& g, const BlockQ8_0* q, float* s, int64_t ld) {
#if defined(TINYSLM_KVQ_X86)
  const int w = active_x86_width();
  if (w == 2) return t == KvType::q8_0 ? kq_scores_avx512<KvType::q8_0>(g, q, s, ld) : kq_scores_avx512<KvType::q4_0>(g, q, s, ld);
  if (w == 1) return t == KvType::q8_0 ? kq_scores_avx2<KvType::q8_0>(g, q, s, ld) : kq_scores_avx2<KvType::q4_0>(g, q, s, ld);
#endif
  kq_scores_scalar(t, g, q, s, ld);
}

inline void v_mix(KvType t, const GroupRows& g, const float* p, int64_t ld, float* acc) {
#if defined(TINYSLM_KVQ_X86)
  if (active_x86_width() >= 1)
    return t == KvType::q8_0 ? v_mix_avx2<KvType::q8_0>(g, p, ld, acc) : v_mix_avx2<KvType::q4_0>(g, p, ld, acc);
#endif
  v_mix_scalar(t, g, p, ld, acc);
}

inline void softmax_f32(float* s, int64_t n, float scale, float softcap) {
#if defined(TINYSLM_KVQ_X86)
  const int w = active_x86_width();
  if (w == 2) return softmax_f32_avx512(s, n, scale, softcap);
  if (w == 1) return softmax_f32_avx2(s, n, scale, softcap);
#endif
  softmax_f32_scalar(s, n, scale, softcap);
}

// f16 rows in a mixed cache (one of K, V quantized): converted row by row into tmp.
inline void kq_scores_f16(const uint8_t* rows, int64_t rb, int64_t n, const float* q, int64_t hk, float* tmp, float* s) {
  for (int64_t j = 0; j < n; ++j) {
    f16_to_f32(reinterpret_cast<const uint16_t*>(rows + j * rb), tmp, hk);
    float sum = 0.0f;
    for (int64_t d = 0; d < hk; ++d) sum += tmp[d] * q[d];
    s[j] = sum;
  }
}
inline void v_mix_f16(const uint8_t* rows, int64_t rb, int64_t n, const float* p, int64_t hv, float* tmp, float* acc) {
  for (int64_t j = 0; j < n; ++j) {
    f16_to_f32(reinterpret_cast<const uint16_t*>(rows + j * rb), tmp, hv);
    for (int64_t d = 0; d < hv; ++d) acc[d] += p[j] * tmp[d];
  }
}

// Heads h0 .. h0 + m - 1 (one GQA group's, m <= scratch.group) for nq <= kQueryBlock
// consecutive queries at positions p0 .. p0 + nq - 1, whose rows together span [lo, lo + n):
// every (query, head) pair is one vector of the kernels, so each cache row is read once for all
// of them; each keeps only its own causal window in the softmax. w: the thread's scratch row,
// laid out as AttentionScratch::row_floats sizes it.
struct GroupQuery {
  const float* q;  // query 0's row of n_head heads; query r at q + r * q_stride
  float* out;
  int64_t q_stride, out_stride;
  int64_t h0, m, nq, p0, lo, n;
  const uint8_t* krows;  // row lo
  const uint8_t* vrows;
};

inline void quant_group(const AttentionShape& a, KvRows k, KvRows v, const GroupQuery& gq, float* w, int64_t ld,
                        int64_t group) {
  const int64_t hk = a.head_dim_k, hv = a.head_dim_v, M = gq.m * gq.nq, n = gq.n, G = group * kQueryBlock;
  float* s = w;                             // M rows of ld scores
  float* qbuf = w + G * ld;                 // q8_0 blocks of M vectors, or one f16-rounded q
  float* acc = qbuf + 2 * G * hk + 2 * hk;  // M sums of hv, then an f16 V row
  const auto qvec = [&](int64_t x) { return gq.q + x / gq.m * gq.q_stride + (gq.h0 + x % gq.m) * hk; };
  if (k.type == KvType::f16) {
    for (int64_t x = 0; x < M; ++x) {
      for (int64_t d = 0; d < hk; ++d) qbuf[d] = round_to_f16(qvec(x)[d]);
      kq_scores_f16(gq.krows, k.row_bytes, n, qbuf, hk, qbuf + hk, s + x * ld);
    }
  } else {
    BlockQ8_0* qq = reinterpret_cast<BlockQ8_0*>(qbuf);
    const int64_t nb = hk / kBlock32;
    for (int64_t x = 0; x < M; ++x)
      for (int64_t b = 0; b < nb; ++b) quantize_block(qvec(x) + b * kBlock32, qq + x * nb + b);
    kq_scores(k.type, GroupRows{gq.krows, k.row_bytes, n, nb, M}, qq, s, ld);
  }
  for (int64_t x = 0; x < M; ++x) {
    const int64_t p = gq.p0 + x / gq.m, first = a.n_swa > 0 && p - a.n_swa + 1 > gq.lo ? p - a.n_swa + 1 : gq.lo;
    const int64_t a0 = first - gq.lo, a1 = p + 1 - gq.lo;  // this query's rows [a0, a1)
    float* sx = s + x * ld;
    softmax_f32(sx + a0, a1 - a0, a.scale, a.softcap);
    for (int64_t j = 0; j < a0; ++j) sx[j] = 0.0f;
    for (int64_t j = a1; j < n; ++j) sx[j] = 0.0f;
  }
  for (int64_t d = 0; d < M * hv; ++d) acc[d] = 0.0f;
  if (v.type == KvType::f16) {
    for (int64_t x = 0; x < M; ++x) v_mix_f16(gq.vrows, v.row_bytes, n, s + x * ld, hv, acc + M * hv, acc + x * hv);
  } else {
    v_mix(v.type, GroupRows{gq.vrows, v.row_bytes, n, hv / kBlock32, M}, s, ld, acc);
  }
  for (int64_t x = 0; x < M; ++x)
    std::memcpy(gq.out + x / gq.m * gq.out_stride + (gq.h0 + x % gq.m) * hv, acc + x * hv,
                static_cast<size_t>(hv) * sizeof(float));
}

}  // namespace detail

// Causal attention, as ops::attention (same q, out and window rules), over a cache with at least
// one of K and V quantized. One (head, query) per work item, computed whole by one thread, so
// the thread count never changes a result. Needs AttentionScratch::rows only.
inline void attention_quant(const AttentionShape& a, const float* q, int64_t q_stride, int64_t n_tokens, int64_t pos0,
                            KvRows k, KvRows v, int64_t cache_ctx, float* out, int64_t out_stride,
                            AttentionScratch& scratch, const ParallelFor& par) {
  const int64_t group = a.n_head / a.n_head_kv, m_max = std::min(group, scratch.group);
  const int64_t subs = (group + m_max - 1) / m_max;  // head batches per group (1 unless a layer is wider)
  const int64_t qb = n_tokens > 2 ? detail::kQueryBlock : 1, n_qb = (n_tokens + qb - 1) / qb;
  const auto window = [&](int64_t p) { return a.n_swa > 0 && p - a.n_swa + 1 > 0 ? p - a.n_swa + 1 : int64_t(0); };
  par([&](int t, int nt) {
    int64_t b, e;
    ParallelFor::split(a.n_head_kv * subs * n_qb, t, nt, 1, &b, &e);
    float* w = scratch.rows.data() + t * scratch.row_stride;
    for (int64_t it = b; it < e; ++it) {
      const int64_t gs = it / n_qb, i0 = it % n_qb * qb, g = gs / subs, h0 = g * group + gs % subs * m_max;
      const int64_t nq = std::min(qb, n_tokens - i0), p0 = pos0 + i0, lo = window(p0);
      const detail::GroupQuery gq{q + i0 * q_stride,
                                  out + i0 * out_stride,
                                  q_stride,
                                  out_stride,
                                  h0,
                                  std::min(m_max, (g + 1) * group - h0),
                                  nq,
                                  p0,
                                  lo,
                                  p0 + nq - lo,
                                  k.data + (g * cache_ctx + lo) * k.row_bytes,
                                  v.data + (g * cache_ctx + lo) * v.row_bytes};
      detail::quant_group(a, k, v, gq, w, scratch.n_ctx, scratch.group);
    }
  });
}

}  // namespace ops
}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm

#undef TINYSLM_OPS_KVQ_INLINE
#if defined(TINYSLM_KVQ_X86)
#undef TINYSLM_KVQ_AVX2
#undef TINYSLM_KVQ_AVX512
#undef TINYSLM_KVQ_X86
#endif
// ---- end tinyslm/kv_quant.hpp ----

// ---- begin tinyslm/kv.hpp ----
// tinyslm kv: the key/value cache of one sequence.
//
// Storage allocated once for the whole context: [layer][kv head][position] rows of head_dim
// values (F16, or q8_0 / q4_0 blocks: kv_quant.hpp), so one head's keys are contiguous for the
// attention kernel. Positions are absolute; a chat turn
// keeps the common prefix (truncate) and evaluates only its new tokens. Sliding-window layers
// simply never read positions older than their window.

#include <cstdint>
#include <string>


namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

class KvCache {
 public:
  KvCache() = default;
  KvCache(KvCache&&) = default;
  KvCache& operator=(KvCache&&) = default;

  // K and V rows of type tk / tv (kv_quant.hpp); a quantized type needs a head size its block
  // divides, as llama.cpp requires.
  static Expected<KvCache> create(const HParams& hp, int64_t n_ctx, KvType tk = KvType::f16,
                                  KvType tv = KvType::f16) {
    if (n_ctx <= 0 || n_ctx > (int64_t{1} << 24))
      return make_error(Errc::invalid_argument,
                        "KV cache: context length " + std::to_string(n_ctx) + " out of range");
    if (auto st = kv_check_head_dim(tk, hp.head_dim_k, "K"); !st) return st.error();
    if (auto st = kv_check_head_dim(tv, hp.head_dim_v, "V"); !st) return st.error();
    KvCache c;
    c.n_layer_ = hp.n_kv_layers();
    c.n_head_kv_ = hp.n_head_kv;
    c.head_dim_k_ = hp.head_dim_k;
    c.head_dim_v_ = hp.head_dim_v;
    c.n_ctx_ = n_ctx;
    c.type_k_ = tk;
    c.type_v_ = tv;
    c.row_k_ = kv_row_bytes(tk, hp.head_dim_k);
    c.row_v_ = kv_row_bytes(tv, hp.head_dim_v);
    uint64_t nk = 0, nv = 0;
    if (detail::mul_overflows(static_cast<uint64_t>(c.n_layer_ * hp.n_head_kv * c.row_k_),
                              static_cast<uint64_t>(n_ctx), &nk) ||
        detail::mul_overflows(static_cast<uint64_t>(c.n_layer_ * hp.n_head_kv * c.row_v_),
                              static_cast<uint64_t>(n_ctx), &nv) ||
        !c.k_.allocate(static_cast<size_t>(nk)) || !c.v_.allocate(static_cast<size_t>(nv)))
      return make_error(Errc::out_of_memory, "KV cache: cannot allocate " +
                                                 std::to_string((nk + nv) >> 20) + " MiB for " +
                                                 std::to_string(n_ctx) + " positions");
    return c;
  }

  int64_t n_ctx() const { return n_ctx_; }
  int64_t n_layer() const { return n_layer_; }        // cache slots (layers that own a cache)
  int64_t size() const { return n_past_; }           // positions filled
  int64_t free() const { return n_ctx_ - n_past_; }  // positions left
  size_t bytes() const { return k_.size() + v_.size(); }
  KvType type_k() const { return type_k_; }
  KvType type_v() const { return type_v_; }
  // Bytes of one position of one kv head.
  int64_t row_bytes_k() const { return row_k_; }
  int64_t row_bytes_v() const { return row_v_; }

  // Keeps the first n positions (a shared prompt prefix) and forgets the rest.
  Status truncate(int64_t n) {
    if (n < 0 || n > n_past_)
      return make_error(Errc::out_of_range, "KV cache: cannot truncate " + std::to_string(n_past_) +
                                                " positions to " + std::to_string(n));
    n_past_ = n;
    return {};
  }
  void clear() { n_past_ = 0; }

  // Fails (without changing anything) when n more positions do not fit.
  Status reserve_tokens(int64_t n) const {
    if (n < 0 || n > n_ctx_ - n_past_)
      return make_error(Errc::out_of_range,
                        "context full: " + std::to_string(n_past_) + " of " +
                            std::to_string(n_ctx_) + " positions used, " + std::to_string(n) +
                            " more requested");
    return {};
  }
  // Marks n more positions as filled (after their keys and values were stored).
  void advance(int64_t n) { n_past_ += n; }

  // This layer's caches: [n_head_kv][n_ctx] rows of row_bytes_k() / row_bytes_v().
  uint8_t* k_bytes(int64_t il) { return k_.data() + il * n_head_kv_ * n_ctx_ * row_k_; }
  uint8_t* v_bytes(int64_t il) { return v_.data() + il * n_head_kv_ * n_ctx_ * row_v_; }
  const uint8_t* k_bytes(int64_t il) const { return k_.data() + il * n_head_kv_ * n_ctx_ * row_k_; }
  const uint8_t* v_bytes(int64_t il) const { return v_.data() + il * n_head_kv_ * n_ctx_ * row_v_; }
  ops::KvRows k_rows(int64_t il) const { return {k_bytes(il), type_k_, row_k_}; }
  ops::KvRows v_rows(int64_t il) const { return {v_bytes(il), type_v_, row_v_}; }
  // The same as F16 values, [n_head_kv][n_ctx][head_dim] (only for an f16 K / V).
  uint16_t* k_layer(int64_t il) { return reinterpret_cast<uint16_t*>(k_bytes(il)); }
  uint16_t* v_layer(int64_t il) { return reinterpret_cast<uint16_t*>(v_bytes(il)); }
  const uint16_t* k_layer(int64_t il) const { return reinterpret_cast<const uint16_t*>(k_bytes(il)); }
  const uint16_t* v_layer(int64_t il) const { return reinterpret_cast<const uint16_t*>(v_bytes(il)); }

  // Stores the keys and values of one token (all kv heads, contiguous) at position pos.
  void store(int64_t il, int64_t pos, const float* k, const float* v) {
    uint8_t* kl = k_bytes(il);
    uint8_t* vl = v_bytes(il);
    for (int64_t g = 0; g < n_head_kv_; ++g) {
      kv_store_row(type_k_, k + g * head_dim_k_, head_dim_k_, kl + (g * n_ctx_ + pos) * row_k_);
      kv_store_row(type_v_, v + g * head_dim_v_, head_dim_v_, vl + (g * n_ctx_ + pos) * row_v_);
    }
  }

 private:
  int64_t n_layer_ = 0, n_head_kv_ = 0, head_dim_k_ = 0, head_dim_v_ = 0;
  int64_t n_ctx_ = 0, n_past_ = 0;
  KvType type_k_ = KvType::f16, type_v_ = KvType::f16;
  int64_t row_k_ = 0, row_v_ = 0;
  AlignedBuffer<uint8_t> k_, v_;
};

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/kv.hpp ----

// ---- begin tinyslm/moe.hpp ----
// tinyslm moe: the mixture-of-experts feed-forward step (mixtral, qwen2moe, qwen3moe, olmoe).
//
//   logits = ffn_gate_inp . x                       (one per expert)
//   p      = softmax(logits) or sigmoid(logits)
//   top-k experts by p (ties: the lower expert id wins), weights w_j = p[e_j]
//   optionally w_j /= sum_j w_j, optionally w_j *= weights_scale
//   out    = sum_j w_j * down_e(silu(gate_e . x) * up_e . x)
//          + [sigmoid(ffn_gate_inp_shexp . x)] * down_s(silu(gate_s . x) * up_s . x)
//
// Expert weights are the stacked 3-D tensors ffn_{gate,up,down}_exps; expert e's matrix is
// the slice at byte offset e * rows * row_bytes, so a token reads only its experts' rows.
// Decode (one token) splits the rows of every selected expert over the threads, two parallel
// regions per layer. Prefill groups the batch's tokens by expert: each expert with at least
// one token runs one GEMM over the rows routed to it, so its weights are read once per batch.
//
// Both paths add the experts' contributions to a token in ascending expert id, then the
// shared expert, with the same arithmetic, so a batch gives what token-by-token decoding
// gives up to the difference between the GEMM and GEMV kernels: none with the scalar
// kernels; with the SIMD ones their summation order (~1e-7), which can move an activation
// across an 8-bit rounding boundary before the down projection.
//
// The configuration (MoeConfig) and the weights (MoeLayerWeights) are read and bound by the
// model layer; this header routes and evaluates.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>


namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

// Weight bytes one decode step of this layer's FFN reads: the router, the k selected
// experts' gate, up and down matrices, and the shared expert (for the bench's "bytes read
// per token" against the model's active-parameter size).
inline uint64_t moe_decode_bytes(const MoeConfig& cfg, const MoeLayerWeights& w) {
  auto bytes = [](const MatrixRef& m) -> uint64_t {
    uint64_t rb = 0;
    if (!m.data || !tensor_row_bytes(m.type, static_cast<uint64_t>(m.cols), &rb)) return 0;
    return rb * static_cast<uint64_t>(m.rows);
  };
  uint64_t n = bytes(w.router);
  n += static_cast<uint64_t>(cfg.n_expert_used) * (w.gate.expert_bytes() + w.up.expert_bytes() + w.down.expert_bytes());
  n += bytes(w.shared_gate) + bytes(w.shared_up) + bytes(w.shared_down) + bytes(w.shared_gate_inp);
  return n;
}

// ---------------------------------------------------------------------------------------
// Router

// Routes one token: `logits` (n_expert values) become the gating probabilities in place;
// ids[0..k) receive the selected experts by decreasing probability (equal probabilities: the
// lower id first) and weights[0..k) their final weights.
inline void moe_select(const MoeConfig& cfg, float* logits, int32_t* ids, float* weights) {
  const int64_t n = cfg.n_expert, k = cfg.n_expert_used;
  float* p = logits;
  if (cfg.gating == MoeGating::softmax) {
    ops::softmax(p, n);
  } else {
    for (int64_t e = 0; e < n; ++e) p[e] = 1.0f / (1.0f + std::exp(-p[e]));
  }
  // Insertion into a sorted list of k; a strict comparison keeps earlier (lower) ids ahead.
  int64_t count = 0;
  for (int64_t e = 0; e < n; ++e) {
    const float v = p[e];
    if (count == k && !(v > p[ids[k - 1]])) continue;
    int64_t pos = count < k ? count++ : k - 1;
    while (pos > 0 && v > p[ids[pos - 1]]) {
      ids[pos] = ids[pos - 1];
      --pos;
    }
    ids[pos] = static_cast<int32_t>(e);
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    weights[j] = p[ids[j]];
    sum += weights[j];
  }
  if (cfg.norm_weights) {
    // The sum is kept at or above the smallest normal fp16 (as llama.cpp clamps it).
    const float s = sum < 6.103515625e-5f ? 6.103515625e-5f : sum;
    for (int64_t j = 0; j < k; ++j) weights[j] /= s;
  }
  if (cfg.weights_scale != 1.0f)
    for (int64_t j = 0; j < k; ++j) weights[j] *= cfg.weights_scale;
}

// ---------------------------------------------------------------------------------------
// Routing statistics

// How often each expert of each layer was selected (one count per token and selected expert).
class MoeStats {
 public:
  void init(int64_t n_layer, int64_t n_expert) {
    n_layer_ = n_layer;
    n_expert_ = n_expert;
    counts_.assign(static_cast<size_t>(n_layer * n_expert), 0);
  }
  void reset() { std::fill(counts_.begin(), counts_.end(), uint64_t{0}); }
  int64_t n_layer() const { return n_layer_; }
  int64_t n_expert() const { return n_expert_; }
  uint64_t count(int64_t layer, int64_t expert) const {
    return counts_[static_cast<size_t>(layer * n_expert_ + expert)];
  }
  // All selections of one layer (n_tokens * k after n_tokens tokens).
  uint64_t layer_total(int64_t layer) const {
    uint64_t s = 0;
    for (int64_t e = 0; e < n_expert_; ++e) s += count(layer, e);
    return s;
  }
  // Row of n_expert counters of one layer, or nullptr when the layer is out of range.
  uint64_t* layer_counts(int64_t layer) {
    if (layer < 0 || layer >= n_layer_) return nullptr;
    return counts_.data() + layer * n_expert_;
  }

 private:
  int64_t n_layer_ = 0, n_expert_ = 0;
  std::vector<uint64_t> counts_;
};

// ---------------------------------------------------------------------------------------
// Scratch

// The buffers of the MoE step, in values: what reserve() allocates, and what memory_estimate
// counts through the forward layer's plan.
struct MoeScratchSizes {
  int64_t logits = 0;        // router logits: max_tokens x n_expert
  int64_t sel = 0;           // selections (ids, weights, per-expert lists): max_tokens x k each
  int64_t experts1 = 0;      // per-expert counts and starts: n_expert + 1 each
  int64_t tokens = 0;        // shared-expert gate: one per token
  int64_t xg = 0;            // gathered rows of one expert: max_tokens x n_embd
  int64_t ff = 0;            // widest expert (routed or shared): the row stride of the gate / up outputs
  int64_t gu = 0;            // gate / up outputs: rows x ff each (decode keeps k + 1 slots)
  int64_t d = 0;             // down outputs: rows x n_embd
  int64_t slots = 0;         // decode slots: k + 1
  int64_t mm_rows = 0;       // the batch's matmul scratch: rows x cols
  int64_t mm_cols = 0;
  int64_t thread_mm = 0;     // decode: one single-row matmul scratch of mm_cols per thread

  int64_t floats() const { return logits + 2 * sel + tokens + xg + 2 * gu + d; }  // wts, list_w
  int64_t ints() const { return 2 * sel + 2 * experts1 + slots; }                 // ids, list_tok
};

inline MoeScratchSizes moe_scratch_sizes(const MoeConfig& cfg, int64_t n_embd, int64_t max_tokens, int n_threads) {
  const int64_t k = cfg.n_expert_used, X = cfg.n_expert, E = n_embd;
  const int64_t ff = std::max(cfg.expert_ff, cfg.shared_expert ? cfg.shared_ff : int64_t{0});
  const int64_t rows = std::max(max_tokens, k + 1);
  MoeScratchSizes z;
  z.logits = max_tokens * X;
  z.sel = max_tokens * k;
  z.experts1 = X + 1;
  z.tokens = max_tokens;
  z.xg = max_tokens * E;
  z.ff = ff;
  z.gu = rows * ff;
  z.d = rows * E;
  z.slots = k + 1;
  z.mm_rows = max_tokens;
  z.mm_cols = std::max(E, ff);
  z.thread_mm = n_threads;
  return z;
}

class MoeScratch;
inline Status moe_ffn(const MoeConfig& cfg, const MoeLayerWeights& w, const float* x, int64_t n, float* out,
                      MoeScratch& s, const ParallelFor& par, MoeStats* stats = nullptr, int64_t layer = 0);

// Every buffer the MoE step uses, sized once by reserve(); moe_ffn never allocates.
class MoeScratch {
 public:
  Status reserve(const MoeConfig& cfg, int64_t n_embd, int64_t max_tokens, int n_threads) {
    if (!cfg.enabled() || n_embd <= 0 || max_tokens <= 0 || n_threads <= 0 || cfg.n_expert_used <= 0 ||
        cfg.n_expert_used > cfg.n_expert || cfg.expert_ff <= 0)
      return make_error(Errc::invalid_argument, "moe scratch: bad sizes");
    const MoeScratchSizes z = moe_scratch_sizes(cfg, n_embd, max_tokens, n_threads);
    const auto sz = [](int64_t a) { return static_cast<size_t>(a); };
    const bool ok = logits_.allocate(sz(z.logits)) && ids_.allocate(sz(z.sel)) && wts_.allocate(sz(z.sel)) &&
                    count_.allocate(sz(z.experts1)) && start_.allocate(sz(z.experts1)) &&
                    list_tok_.allocate(sz(z.sel)) && list_w_.allocate(sz(z.sel)) && shgate_.allocate(sz(z.tokens)) &&
                    xg_.allocate(sz(z.xg)) && g_.allocate(sz(z.gu)) && u_.allocate(sz(z.gu)) && d_.allocate(sz(z.d)) &&
                    slot_.allocate(sz(z.slots));
    if (!ok) return make_error(Errc::out_of_memory, "moe scratch: allocation failed");
    if (auto st = mm_.reserve(z.mm_rows, z.mm_cols); !st) return st;
    thread_mm_ = std::vector<MatmulScratch>(static_cast<size_t>(z.thread_mm));
    for (auto& t : thread_mm_)
      if (auto st = t.reserve(1, z.mm_cols); !st) return st;
    outs_.reserve(static_cast<size_t>(2 * z.slots));
    cfg_ = cfg;
    n_embd_ = n_embd;
    max_tokens_ = max_tokens;
    ff_ = z.ff;
    return {};
  }

  int64_t max_tokens() const { return max_tokens_; }
  int n_threads() const { return static_cast<int>(thread_mm_.size()); }
  // After moe_ffn: the experts chosen for token i (k ids, by decreasing weight) and weights.
  const int32_t* selected(int64_t i) const { return ids_.data() + i * cfg_.n_expert_used; }
  const float* selected_weights(int64_t i) const { return wts_.data() + i * cfg_.n_expert_used; }

 private:
  friend Status moe_ffn(const MoeConfig&, const MoeLayerWeights&, const float*, int64_t, float*, MoeScratch&,
                        const ParallelFor&, MoeStats*, int64_t);
  friend struct MoeStep;
  MoeConfig cfg_;
  int64_t n_embd_ = 0, max_tokens_ = 0, ff_ = 0;
  AlignedBuffer<float> logits_;    // [max_tokens][n_expert]
  AlignedBuffer<int32_t> ids_;     // [max_tokens][k]
  AlignedBuffer<float> wts_;       // [max_tokens][k]
  AlignedBuffer<int32_t> count_;   // tokens per expert
  AlignedBuffer<int32_t> start_;   // first entry of each expert in list_*
  AlignedBuffer<int32_t> list_tok_;
  AlignedBuffer<float> list_w_;
  AlignedBuffer<float> shgate_;    // shared-expert gate per token
  AlignedBuffer<float> xg_;        // gathered input rows of one expert
  AlignedBuffer<float> g_, u_;     // gate / up outputs (activations land in g_)
  AlignedBuffer<float> d_;         // down outputs
  AlignedBuffer<int32_t> slot_;    // decode: selection slots in ascending expert id
  MatmulScratch mm_;
  std::vector<MatmulScratch> thread_mm_;  // decode: one per thread for the down projections
  std::vector<MatmulOut> outs_;            // decode: the gate/up products of every slot
};

namespace detail {

// y += a * x: the one place contributions are accumulated (decode and prefill share it, so
// both round the same way).
inline void moe_axpy(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

inline float moe_sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

inline int64_t moe_row_bytes(const MatrixRef& m) {
  uint64_t rb = 0;
  if (!tensor_row_bytes(m.type, static_cast<uint64_t>(m.cols), &rb)) return 0;
  return static_cast<int64_t>(rb);
}

// Rows [r0, r1) of a matrix.
inline MatrixRef moe_rows(const MatrixRef& m, int64_t r0, int64_t r1) {
  return {m.type, m.data + r0 * moe_row_bytes(m), r1 - r0, m.cols};
}

inline Status moe_check_weights(const MoeConfig& cfg, const MoeLayerWeights& w, int64_t E) {
  if (w.router.rows != cfg.n_expert || w.gate.n_expert != cfg.n_expert || w.gate.rows != cfg.expert_ff ||
      w.gate.cols != E || w.up.n_expert != cfg.n_expert || w.up.rows != cfg.expert_ff || w.up.cols != E ||
      w.down.n_expert != cfg.n_expert || w.down.rows != E || w.down.cols != cfg.expert_ff)
    return make_error(Errc::invalid_argument, "moe_ffn: weight shapes do not match the config");
  for (const MoeExperts* x3 : {&w.gate, &w.up, &w.down}) {
    if (!matmul_supports(x3->type))
      return make_error(Errc::unsupported, std::string("moe_ffn: expert weight type ") + tensor_type_name(x3->type) +
                                               " is not supported");
    uint64_t rb = 0;
    if (!tensor_row_bytes(x3->type, static_cast<uint64_t>(x3->cols), &rb) || rb != x3->row_bytes)
      return make_error(Errc::invalid_argument, "moe_ffn: expert row size does not match the weight type");
  }
  if (cfg.shared_expert &&
      (!w.shared_gate.data || !w.shared_up.data || !w.shared_down.data || w.shared_gate.rows != cfg.shared_ff ||
       w.shared_up.rows != cfg.shared_ff || w.shared_down.cols != cfg.shared_ff || w.shared_down.rows != E ||
       (cfg.shared_gated && !w.shared_gate_inp.data)))
    return make_error(Errc::invalid_argument, "moe_ffn: shared expert weights missing or mis-shaped");
  return {};
}

inline Status moe_check(const MoeConfig& cfg, const MoeLayerWeights& w, const float* x, int64_t n, const float* out,
                        int64_t max_tokens, const MoeConfig& reserved, int64_t n_embd,
                        int64_t reserved_ff, const ParallelFor& par, int n_threads) {
  if (n < 0) return make_error(Errc::invalid_argument, "moe_ffn: negative token count");
  if (n > max_tokens)
    return make_error(Errc::invalid_argument, "moe_ffn: " + std::to_string(n) + " tokens, scratch reserved for " +
                                                  std::to_string(max_tokens));
  if (!x || !out) return make_error(Errc::invalid_argument, "moe_ffn: null pointer");
  if (!w.router.data || !w.gate || !w.up || !w.down)
    return make_error(Errc::invalid_argument, "moe_ffn: layer weights are not bound");
  const int64_t E = w.n_embd();
  if (E != n_embd || cfg.n_expert != reserved.n_expert || cfg.n_expert_used != reserved.n_expert_used ||
      cfg.expert_ff > reserved_ff || (cfg.shared_expert && cfg.shared_ff > reserved_ff))
    return make_error(Errc::invalid_argument, "moe_ffn: config does not match the reserved scratch");
  if (auto st = moe_check_weights(cfg, w, E); !st) return st;
  if (par.n_threads > n_threads)
    return make_error(Errc::invalid_argument, "moe_ffn: " + std::to_string(par.n_threads) +
                                                  " threads, scratch reserved for " + std::to_string(n_threads));
  return {};
}

}  // namespace detail

// One call of the MoE step: the router, then the decode or the prefill path.
struct MoeStep {
  const MoeConfig& cfg;
  const MoeLayerWeights& w;
  const float* x;
  int64_t n;
  float* out;
  MoeScratch& s;
  const ParallelFor& par;

  int64_t E() const { return w.n_embd(); }

  // Router logits (and the shared expert's gate), then the top-k of every token.
  Status route(uint64_t* counts) {
    const int64_t X = cfg.n_expert, k = cfg.n_expert_used;
    const ParallelFor inline_par{};
    const ParallelFor& rpar = n == 1 ? inline_par : par;
    if (auto st = matmul(w.router, x, n, s.logits_.data(), X, s.mm_, rpar); !st)
      return Error(st.error()).context("ffn_gate_inp");
    if (cfg.shared_expert && cfg.shared_gated) {
      if (auto st = matmul(w.shared_gate_inp, x, n, s.shgate_.data(), 1, s.mm_, rpar); !st)
        return Error(st.error()).context("ffn_gate_inp_shexp");
      for (int64_t i = 0; i < n; ++i) s.shgate_[static_cast<size_t>(i)] = detail::moe_sigmoid(s.shgate_[static_cast<size_t>(i)]);
    } else {
      for (int64_t i = 0; i < n; ++i) s.shgate_[static_cast<size_t>(i)] = 1.0f;
    }
    for (int64_t i = 0; i < n; ++i) {
      moe_select(cfg, s.logits_.data() + i * X, s.ids_.data() + i * k, s.wts_.data() + i * k);
      if (counts)
        for (int64_t j = 0; j < k; ++j) ++counts[s.ids_[static_cast<size_t>(i * k + j)]];
    }
    return {};
  }

  // Decode: the gate and up rows of every selected expert (and the shared one) in one
  // matmul_many; then each thread computes its rows of every down projection and mixes them
  // in ascending expert id, the shared expert last.
  Status decode() {
    const int64_t k = cfg.n_expert_used, F = cfg.expert_ff, SF = cfg.shared_expert ? cfg.shared_ff : 0;
    const int64_t ldg = s.ff_, Ed = E(), n_slots = k + (cfg.shared_expert ? 1 : 0);
    const int32_t* ids = s.ids_.data();
    int32_t* slot = s.slot_.data();
    for (int64_t j = 0; j < k; ++j) slot[j] = static_cast<int32_t>(j);
    std::sort(slot, slot + k, [&](int32_t a, int32_t b) { return ids[a] < ids[b]; });
    float* g = s.g_.data();
    float* u = s.u_.data();
    float* d = s.d_.data();
    s.outs_.clear();
    for (int64_t j = 0; j < k; ++j) {
      s.outs_.push_back({w.gate.expert(ids[j]), g + j * ldg, F, "ffn_gate_exps"});
      s.outs_.push_back({w.up.expert(ids[j]), u + j * ldg, F, "ffn_up_exps"});
    }
    if (cfg.shared_expert) {
      s.outs_.push_back({w.shared_gate, g + k * ldg, SF, "ffn_gate_shexp"});
      s.outs_.push_back({w.shared_up, u + k * ldg, SF, "ffn_up_shexp"});
    }
    if (auto st = matmul_many(s.outs_, x, 1, s.mm_, par); !st) return st;
    for (int64_t j = 0; j < n_slots; ++j) {
      const int64_t rows = j == k ? SF : F;
      ops::silu_mul(g + j * ldg, u + j * ldg, g + j * ldg, rows);
    }
    Status err;  // first failure seen by any thread (matmul fails only on bad shapes)
    std::atomic<int> failed{0};
    par([&](int t, int nt) {
      MatmulScratch& ms = s.thread_mm_[static_cast<size_t>(t)];
      int64_t b, e;
      ParallelFor::split(Ed, t, nt, kMatmulRowGrain, &b, &e);
      if (b >= e) return;
      for (int64_t j = 0; j < n_slots; ++j) {
        const MatrixRef wd = j == k ? detail::moe_rows(w.shared_down, b, e) : w.down.expert_rows(ids[j], b, e);
        if (auto st = matmul(wd, g + j * ldg, 1, d + j * Ed + b, e - b, ms, ParallelFor{}); !st) {
          if (failed.exchange(1) == 0) err = std::move(st);
          return;
        }
      }
      std::fill(out + b, out + e, 0.0f);
      for (int64_t q = 0; q < k; ++q) {
        const int32_t j = slot[q];
        detail::moe_axpy(out + b, s.wts_[static_cast<size_t>(j)], d + j * Ed + b, e - b);
      }
      if (cfg.shared_expert) detail::moe_axpy(out + b, s.shgate_[0], d + k * Ed + b, e - b);
    });
    return failed.load() ? err : Status();
  }

  // Groups the (token, slot) pairs by expert: counting sort, tokens in order.
  void group_by_expert() {
    const int64_t X = cfg.n_expert, k = cfg.n_expert_used;
    int32_t* cnt = s.count_.data();
    int32_t* start = s.start_.data();
    std::fill(cnt, cnt + X, 0);
    for (int64_t i = 0; i < n * k; ++i) ++cnt[s.ids_[static_cast<size_t>(i)]];
    start[0] = 0;
    for (int64_t e = 0; e < X; ++e) start[e + 1] = start[e] + cnt[e];
    std::fill(cnt, cnt + X, 0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < k; ++j) {
        const int32_t e = s.ids_[static_cast<size_t>(i * k + j)];
        const int32_t at = start[e] + cnt[e]++;
        s.list_tok_[static_cast<size_t>(at)] = static_cast<int32_t>(i);
        s.list_w_[static_cast<size_t>(at)] = s.wts_[static_cast<size_t>(i * k + j)];
      }
  }

  template <class Fn>
  void for_rows(int64_t rows, Fn&& fn) {
    par([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(rows, t, nt, 1, &b, &e);
      for (int64_t i = b; i < e; ++i) fn(i);
    });
  }

  // One expert's SwiGLU FFN over m rows of `in`: the down outputs land in d_.
  Status expert_ffn(const MatrixRef& gate, const MatrixRef& up, const MatrixRef& down, const float* in, int64_t m,
                    const char* names) {
    float* g = s.g_.data();
    float* u = s.u_.data();
    const int64_t F = gate.rows;
    const MatmulOut gu[2] = {{gate, g, F, {}}, {up, u, F, {}}};
    if (auto st = matmul_many(gu, in, m, s.mm_, par); !st) return Error(st.error()).context(names);
    for_rows(m, [&](int64_t i) { ops::silu_mul(g + i * F, u + i * F, g + i * F, F); });
    if (auto st = matmul(down, g, m, s.d_.data(), E(), s.mm_, par); !st) return Error(st.error()).context(names);
    return {};
  }

  // Prefill: each expert with tokens runs one GEMM over its gathered rows (experts in
  // ascending id, so every token accumulates in that order), then the shared expert.
  Status prefill() {
    group_by_expert();
    const int64_t Ed = E();
    std::memset(out, 0, static_cast<size_t>(n * Ed) * sizeof(float));
    float* xg = s.xg_.data();
    const float* d = s.d_.data();
    for (int64_t e = 0; e < cfg.n_expert; ++e) {
      const int64_t m = s.count_[static_cast<size_t>(e)];
      if (m == 0) continue;
      const int32_t* toks = s.list_tok_.data() + s.start_[static_cast<size_t>(e)];
      const float* we = s.list_w_.data() + s.start_[static_cast<size_t>(e)];
      for (int64_t i = 0; i < m; ++i)
        std::memcpy(xg + i * Ed, x + static_cast<int64_t>(toks[i]) * Ed, static_cast<size_t>(Ed) * sizeof(float));
      if (auto st = expert_ffn(w.gate.expert(e), w.up.expert(e), w.down.expert(e), xg, m,
                               "ffn_gate_exps / ffn_up_exps / ffn_down_exps");
          !st)
        return st;
      for_rows(m, [&](int64_t i) { detail::moe_axpy(out + static_cast<int64_t>(toks[i]) * Ed, we[i], d + i * Ed, Ed); });
    }
    if (cfg.shared_expert) {
      if (auto st = expert_ffn(w.shared_gate, w.shared_up, w.shared_down, x, n,
                               "ffn_gate_shexp / ffn_up_shexp / ffn_down_shexp");
          !st)
        return st;
      for_rows(n, [&](int64_t i) { detail::moe_axpy(out + i * Ed, s.shgate_[static_cast<size_t>(i)], d + i * Ed, Ed); });
    }
    return {};
  }
};

// The MoE feed-forward step for n tokens: x is n rows of n_embd (the normalised FFN input),
// out receives n rows of n_embd (the FFN output, to be added to the residual by the caller;
// must not alias x). When stats is given, stats->layer_counts(layer) gains one count per
// token and selected expert. Same result for any thread count.
inline Status moe_ffn(const MoeConfig& cfg, const MoeLayerWeights& w, const float* x, int64_t n, float* out,
                      MoeScratch& s, const ParallelFor& par, MoeStats* stats, int64_t layer) {
  if (auto st = detail::moe_check(cfg, w, x, n, out, s.max_tokens_, s.cfg_, s.n_embd_, s.ff_, par, s.n_threads());
      !st)
    return st;
  if (n == 0) return {};
  uint64_t* counts = stats ? stats->layer_counts(layer) : nullptr;
  if (stats && (!counts || stats->n_expert() != cfg.n_expert))
    return make_error(Errc::invalid_argument, "moe_ffn: routing statistics not sized for layer " + std::to_string(layer));
  MoeStep step{cfg, w, x, n, out, s, par};
  if (auto st = step.route(counts); !st) return st;
  return n == 1 ? step.decode() : step.prefill();
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/moe.hpp ----

// ---- begin tinyslm/state.hpp ----
// tinyslm state: the per-sequence recurrent state of hybrid models and its checkpoints.
//
// A short-convolution layer (lfm2) or a linear-attention layer (Gated DeltaNet) carries a
// state that summarises every token seen so far. Unlike a KV cache it cannot be cut back to
// an earlier position, so the store keeps a few checkpoints: copies of the whole state (every
// layer, as one unit) taken at chosen positions, typically the end of each prompt and of each
// reply. Returning to position p restores the checkpoint taken at p; a prefix with no
// checkpoint at its end is reused only up to the latest checkpoint inside it (position 0 is
// always restorable: the zero state).
//
// All memory is allocated once in create(): the live state and n_checkpoints slots.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>


namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

class RecurrentState {
 public:
  RecurrentState() = default;
  RecurrentState(RecurrentState&&) = default;
  RecurrentState& operator=(RecurrentState&&) = default;

  // layer_floats[il]: floats of layer il's state (0: the layer has none).
  static Expected<RecurrentState> create(std::span<const int64_t> layer_floats, int n_checkpoints) {
    RecurrentState s;
    uint64_t total = 0;
    s.offset_.reserve(layer_floats.size() + 1);
    for (int64_t n : layer_floats) {
      if (n < 0 || n > (int64_t{1} << 32))
        return make_error(Errc::invalid_argument, "recurrent state: bad layer size " + std::to_string(n));
      s.offset_.push_back(total);
      total += static_cast<uint64_t>(n);
    }
    s.offset_.push_back(total);
    s.floats_ = static_cast<size_t>(total);
    if (s.floats_ == 0) return s;
    const int slots = std::clamp(n_checkpoints, 0, 64);
    uint64_t all = 0;
    if (detail::mul_overflows(total, static_cast<uint64_t>(slots + 1), &all) || !s.buf_.allocate(static_cast<size_t>(all)))
      return make_error(Errc::out_of_memory, "recurrent state: cannot allocate " + std::to_string(all * 4 >> 20) +
                                                 " MiB (" + std::to_string(slots) + " checkpoints)");
    s.pos_.assign(static_cast<size_t>(slots), -1);
    s.clear();
    return s;
  }

  // Bytes create() allocates for these sizes (for memory estimates).
  static uint64_t bytes_for(std::span<const int64_t> layer_floats, int n_checkpoints) {
    uint64_t total = 0;
    for (int64_t n : layer_floats) total += static_cast<uint64_t>(std::max<int64_t>(n, 0));
    return total == 0 ? 0 : 4 * total * static_cast<uint64_t>(std::clamp(n_checkpoints, 0, 64) + 1);
  }

  bool empty() const { return floats_ == 0; }
  size_t floats() const { return floats_; }  // one copy of the whole state
  size_t bytes() const { return buf_.size() * sizeof(float); }

  // Layer il's live state (nullptr for a layer without one).
  float* layer(int64_t il) { return floats_ == 0 || size(il) == 0 ? nullptr : buf_.data() + offset_[static_cast<size_t>(il)]; }
  int64_t size(int64_t il) const {
    return static_cast<int64_t>(offset_[static_cast<size_t>(il) + 1] - offset_[static_cast<size_t>(il)]);
  }
  // The live state of every layer, contiguous (for save / load).
  std::span<float> live() { return {buf_.data(), floats_}; }
  std::span<const float> live() const { return {buf_.data(), floats_}; }

  // The zero state (no token seen); every checkpoint forgotten.
  void clear() {
    if (floats_ == 0) return;
    std::fill_n(buf_.data(), floats_, 0.0f);
    std::fill(pos_.begin(), pos_.end(), -1);
  }

  // Copies the live state into a slot as the state at position pos: the slot already holding
  // pos, else a free one, else the one with the lowest position (the least useful to a chat,
  // which returns to recent turns).
  void checkpoint(int64_t pos) {
    if (floats_ == 0 || pos_.empty() || pos <= 0) return;
    size_t slot = 0;
    for (size_t i = 0; i < pos_.size(); ++i) {
      if (pos_[i] == pos) {
        slot = i;
        break;
      }
      if (pos_[i] < pos_[slot]) slot = i;
    }
    std::memcpy(slot_data(slot), buf_.data(), floats_ * sizeof(float));
    pos_[slot] = pos;
  }

  // The longest prefix of at most n positions that restore() can return to.
  int64_t restorable(int64_t n) const {
    int64_t best = 0;
    for (int64_t p : pos_)
      if (p <= n && p > best) best = p;
    return best;
  }

  // Makes the live state the one at position pos (0: the zero state) and forgets the
  // checkpoints after it.
  Status restore(int64_t pos) {
    if (floats_ == 0) return {};
    if (pos == 0) {
      clear();
      return {};
    }
    for (size_t i = 0; i < pos_.size(); ++i)
      if (pos_[i] == pos) {
        std::memcpy(buf_.data(), slot_data(i), floats_ * sizeof(float));
        for (int64_t& p : pos_)
          if (p > pos) p = -1;
        return {};
      }
    return make_error(Errc::out_of_range, "recurrent state: no checkpoint at position " + std::to_string(pos));
  }

 private:
  float* slot_data(size_t i) { return buf_.data() + (i + 1) * floats_; }

  std::vector<uint64_t> offset_;  // n_layer + 1 offsets into one copy
  size_t floats_ = 0;
  AlignedBuffer<float> buf_;      // the live state, then one copy per checkpoint slot
  std::vector<int64_t> pos_;      // position of each slot's copy, -1 = free
};

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/state.hpp ----

// ---- begin tinyslm/conv.hpp ----
// tinyslm conv: the gated short causal convolution of LFM2's convolution layers.
//
// A layer projects its input to three chunks b, c, x of n_embd values (in_proj), runs a
// depthwise causal convolution of width L over u = b * x along the sequence, gates the result
// with c and projects it back (out_proj):
//
//   y[t][ch] = c[t][ch] * sum_{k < L} w[ch][k] * u[t - (L - 1) + k][ch]
//
// The values of u before the chunk come from the sequence's state: the last L - 1 rows of u.
// A chunk of n tokens runs in one pass (each thread owns a range of channels for all tokens),
// so prefill is batched like the matmuls around it.

#include <cstdint>
#include <cstring>


namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace detail {

// Channels [c0, c1) of the chunk: u = b * x in place of b, then y, then the new state.
inline void short_conv_channels(float* bcx, int64_t ld, int64_t n, int64_t E, int64_t L, const float* w,
                                float* state, float* out, int64_t ldo, int64_t c0, int64_t c1) {
  for (int64_t t = 0; t < n; ++t) {
    float* b = bcx + t * ld;
    const float* x = b + 2 * E;
    for (int64_t ch = c0; ch < c1; ++ch) b[ch] *= x[ch];
  }
  const int64_t S = L - 1;  // state rows
  for (int64_t t = 0; t < n; ++t) {
    float* y = out + t * ldo;
    for (int64_t ch = c0; ch < c1; ++ch) y[ch] = 0.0f;
    for (int64_t k = 0; k < L; ++k) {
      const int64_t j = t - S + k;  // the input row tap k reads
      const float* u = j < 0 ? state + (S + j) * E : bcx + j * ld;
      for (int64_t ch = c0; ch < c1; ++ch) y[ch] += w[ch * L + k] * u[ch];
    }
    const float* gate = bcx + t * ld + E;
    for (int64_t ch = c0; ch < c1; ++ch) y[ch] *= gate[ch];
  }
  // The new state: the last S rows of [state; u], in increasing row order (row r reads row
  // r + n of the old state, not yet overwritten).
  for (int64_t r = 0; r < S; ++r) {
    const int64_t j = r + n - S;  // row of u, or of the old state when negative
    const float* src = j < 0 ? state + (r + n) * E : bcx + j * ld;
    std::memcpy(state + r * E + c0, src + c0, static_cast<size_t>(c1 - c0) * sizeof(float));
  }
}

}  // namespace detail

// The convolution of one chunk: bcx holds n rows of [b | c | x] (n_embd each, row stride ld;
// b is overwritten), w the kernel [n_embd][L], state the (L - 1) x n_embd rows of u before the
// chunk (updated), out receives n rows of y (stride ldo).
inline void short_conv(float* bcx, int64_t ld, int64_t n, int64_t n_embd, int64_t L, const float* w, float* state,
                       float* out, int64_t ldo, const ParallelFor& par) {
  if (n < 4) {
    detail::short_conv_channels(bcx, ld, n, n_embd, L, w, state, out, ldo, 0, n_embd);
    return;
  }
  par([&](int t, int nt) {
    int64_t c0, c1;
    ParallelFor::split(n_embd, t, nt, 16, &c0, &c1);
    if (c1 > c0) detail::short_conv_channels(bcx, ld, n, n_embd, L, w, state, out, ldo, c0, c1);
  });
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/conv.hpp ----

// ---- begin tinyslm/forward.hpp ----
// tinyslm forward: the transformer forward pass for a batch of tokens.
//
// A Context holds everything one sequence needs besides the weights: the KV cache, the thread
// pool and every scratch buffer, all allocated once in create() from one ContextPlan (which
// memory_estimate also reads, so the estimate and the allocation cannot drift apart). eval()
// runs the tokens in chunks of at most n_batch: a chunk of many tokens multiplies each weight
// matrix once for all of them (GEMM, prefill); a single token is a matrix-vector product
// (GEMV, decode). The chunk runs named blocks chosen by the model's per-layer plan:
//
//   embed -> for each layer: attention_block, then ffn_block or moe_block -> output_head

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>


namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

struct ContextParams {
  int64_t n_ctx = 2048;     // positions in the KV cache (allocated once)
  int n_threads = 1;        // 1 = no extra threads at all
  int64_t n_batch = 512;    // most tokens per forward chunk
  bool all_logits = false;  // keep the logits of every token of an eval (else only the last)
  KvType type_k = KvType::f16;  // KV cache element types (llama.cpp's -ctk / -ctv)
  KvType type_v = KvType::f16;
  int n_state_checkpoints = 4;  // hybrid models: copies of the recurrent state kept for prefix reuse
  ThreadPlacement placement = {};  // where the workers run (threads.hpp); default: anywhere
  int64_t verify_rows = 0;  // most tokens of an eval_all call (speculative verification); 0: none
};

// A gated attention layer's row: [q | k | v | gate | attn_q's raw [query | gate] per head].
inline int64_t gated_qkv_width(const LayerPlan& l) { return 4 * l.q_dim() + l.k_dim() + l.v_dim(); }

// Every buffer a Context allocates, sized from the hyper-parameters and the parameters alone.
struct ContextPlan {
  int64_t n_ctx = 0, n_batch = 0;
  int n_threads = 1;
  // Activation rows of one chunk (floats per token).
  int64_t w_embd = 0;       // residual stream, normed input, projection output
  int64_t w_qkv = 0;        // [q | k | v]
  int64_t w_att = 0;        // attention output
  int64_t w_ffn = 0;        // [gate | up]
  int64_t n_rot = 0;        // two RoPE tables (global, sliding) of n_rot values per token
  int64_t logit_rows = 1;
  int64_t n_vocab = 0;
  ops::AttentionShape attn;  // the widest attention of any layer
  int64_t mm_cols = 0;       // widest matmul input
  bool moe = false;
  MoeScratchSizes moe_sizes;
  uint64_t kv_bytes = 0;
  uint64_t state_bytes = 0;  // recurrent state of hybrid models and its checkpoints
  std::vector<int64_t> state_floats;  // per layer
  bool kv_f16 = true;  // both K and V f16: attention converts the prefix to f32 scratch
  int64_t dn_scratch = 0;    // DeltaNet chunked prefill, floats per thread

  static Expected<ContextPlan> make(const HParams& hp, int64_t n_vocab, const ContextParams& p) {
    if (p.n_ctx <= 0 || p.n_batch <= 0 || p.n_threads <= 0)
      return make_error(Errc::invalid_argument, "context: n_ctx, n_batch and n_threads must be positive");
    ContextPlan c;
    c.n_ctx = p.n_ctx;
    c.n_batch = std::min(p.n_batch, p.n_ctx);
    c.n_threads = p.n_threads;
    c.w_embd = hp.n_embd;
    c.attn = {hp.n_head, hp.n_head_kv, hp.head_dim_k, hp.head_dim_v, 1.0f, 0.0f, 0};
    for (const LayerPlan& l : hp.layers) {
      c.w_qkv = std::max(c.w_qkv, l.q_dim() + l.k_dim() + l.v_dim());
      c.w_att = std::max(c.w_att, l.attn_out_dim());
      c.w_ffn = std::max(c.w_ffn, 2 * l.n_ff);
      c.attn.n_head = std::max(c.attn.n_head, l.n_head);
      c.attn.n_head_kv = std::max(c.attn.n_head_kv, l.n_head_kv);
      c.attn.head_dim_k = std::max(c.attn.head_dim_k, l.head_dim_k);
      c.attn.head_dim_v = std::max(c.attn.head_dim_v, l.head_dim_v);
      if (l.kind == LayerKind::short_conv) {  // [b | c | x] in the QKV rows, y in the attention rows
        c.w_qkv = std::max(c.w_qkv, 3 * hp.n_embd);
        c.w_att = std::max(c.w_att, hp.n_embd);
      }
      if (l.kind == LayerKind::delta_net) {  // [mix | z | beta | alpha] rows, the convolved mix
        c.w_qkv = std::max(c.w_qkv, hp.delta_net.proj_width());
        c.w_att = std::max(c.w_att, hp.delta_net.channels());
        c.dn_scratch = delta_net_scratch_floats(hp.delta_net);
      }
      if (l.attn_gate) c.w_qkv = std::max(c.w_qkv, gated_qkv_width(l));
    }
    c.n_rot = hp.n_rot;
    c.logit_rows = p.all_logits ? c.n_batch : std::clamp<int64_t>(p.verify_rows, 1, c.n_batch);
    c.n_vocab = n_vocab;
    c.mm_cols = std::max({hp.n_embd, c.w_att, c.w_ffn / 2});
    c.moe = hp.moe.enabled();
    if (c.moe) c.moe_sizes = moe_scratch_sizes(hp.moe, hp.n_embd, c.n_batch, c.n_threads);
    if (auto st = kv_check_head_dim(p.type_k, hp.head_dim_k, "K"); !st) return st.error();
    if (auto st = kv_check_head_dim(p.type_v, hp.head_dim_v, "V"); !st) return st.error();
    const auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
    for (int64_t il = 0; il < hp.n_layer; ++il) c.state_floats.push_back(hp.state_floats(il));
    c.state_bytes = RecurrentState::bytes_for(c.state_floats, p.n_state_checkpoints);
    c.kv_bytes = u(hp.n_kv_layers()) * u(c.n_ctx) * u(hp.n_head_kv) *
                 u(kv_row_bytes(p.type_k, hp.head_dim_k) + kv_row_bytes(p.type_v, hp.head_dim_v));
    c.kv_f16 = p.type_k == KvType::f16 && p.type_v == KvType::f16;
    return c;
  }

  // Floats of the activation buffers: x, xn, proj (n_embd), qkv, att, ffn, RoPE tables.
  uint64_t activation_floats() const {
    return static_cast<uint64_t>(n_batch) * static_cast<uint64_t>(3 * w_embd + w_qkv + w_att + w_ffn + 2 * n_rot);
  }
  // Attention scratch as AttentionScratch::reserve sizes it.
  uint64_t attention_bytes() const {
    const uint64_t ctx16 = static_cast<uint64_t>((n_ctx + 15) / 16 * 16);
    const uint64_t hk = static_cast<uint64_t>(attn.head_dim_k), hv = static_cast<uint64_t>(attn.head_dim_v);
    const uint64_t row = static_cast<uint64_t>(ops::AttentionScratch::row_floats(attn, static_cast<int64_t>(ctx16), kv_f16));
    const uint64_t copies = kv_f16 ? static_cast<uint64_t>(attn.n_head_kv) * (hk + hv) * ctx16 + 64 : 0;
    return 4 * (copies + row * static_cast<uint64_t>(n_threads));
  }
  uint64_t moe_bytes() const {
    if (!moe) return 0;
    const MoeScratchSizes& z = moe_sizes;
    return 4 * static_cast<uint64_t>(z.floats() + z.ints()) + MatmulScratch::reserve_bytes(z.mm_rows, z.mm_cols) +
           static_cast<uint64_t>(z.thread_mm) * MatmulScratch::reserve_bytes(1, z.mm_cols);
  }
  // Everything besides the KV cache and the logits.
  uint64_t compute_bytes() const {
    return 4 * activation_floats() + attention_bytes() + MatmulScratch::reserve_bytes(n_batch, mm_cols) + moe_bytes() +
           4 * static_cast<uint64_t>(dn_scratch) * static_cast<uint64_t>(n_threads);
  }
  uint64_t logit_bytes() const { return 4 * static_cast<uint64_t>(logit_rows) * static_cast<uint64_t>(n_vocab); }
};

class Context {
 public:
  static Expected<Context> create(const Model& model, const ContextParams& params = {});

  Context() = default;  // empty: assign the result of create() before use
  Context(Context&&) = default;
  Context& operator=(Context&&) = default;

  // Runs `tokens` at positions n_past() .. n_past() + size - 1 and appends them to the cache.
  // Returns the logits (n_vocab floats) of the last token, valid until the next call.
  // Fails without changing the cache on an out-of-range token id or when the context is full.
  Expected<std::span<const float>> eval(std::span<const int32_t> tokens);
  // eval that keeps every token's logits (logits(i)) whatever all_logits says, for at most
  // max_eval_all() tokens: a speculative draft is verified in one forward.
  Expected<std::span<const float>> eval_all(std::span<const int32_t> tokens);
  int64_t max_eval_all() const { return plan_.logit_rows; }
  // Makes row i of the last eval the last logits, as if the eval had ended at token i (after
  // the cache was truncated past a rejected draft).
  void keep_logits(int64_t i) {
    if (i < 0 || i >= n_logits_) return;
    const size_t nv = static_cast<size_t>(hp().n_vocab);
    if (i > 0) std::memmove(logits_.data(), logits_.data() + static_cast<size_t>(i) * nv, nv * sizeof(float));
    n_logits_ = 1;
  }

  // With all_logits: the logits of token i of the last eval (which then had at most n_batch tokens).
  std::span<const float> logits(int64_t i) const {
    return {logits_.data() + i * hp().n_vocab, static_cast<size_t>(hp().n_vocab)};
  }
  std::span<const float> last_logits() const { return logits(n_logits_ - 1); }
  // The same logits, writable (for logit processors run before sampling).
  std::span<float> last_logits_mut() {
    return {logits_.data() + (n_logits_ - 1) * hp().n_vocab, static_cast<size_t>(hp().n_vocab)};
  }

  int64_t n_past() const { return kv_.size(); }
  int64_t n_ctx() const { return kv_.n_ctx(); }
  // Keeps the first n positions of the cache (a shared prefix) for the next eval. A hybrid
  // model's recurrent state returns to n only from a checkpoint (or n == n_past()).
  Status truncate(int64_t n) {
    if (!rs_.empty() && n != kv_.size()) {
      if (n < 0 || n > kv_.size()) return kv_.truncate(n);
      if (auto st = rs_.restore(n); !st) return st;
    }
    return kv_.truncate(n);
  }
  void reset() {
    kv_.clear();
    rs_.clear();
  }
  // The longest prefix of at most n cached positions truncate() can keep: n, except on a
  // hybrid model, whose state is restorable only at n_past() and at its checkpoints.
  int64_t restorable(int64_t n) const {
    if (rs_.empty() || n >= kv_.size()) return std::min(n, kv_.size());
    return rs_.restorable(n);
  }
  // Keeps a copy of the recurrent state at n_past() (nothing for a model without one).
  void checkpoint() { rs_.checkpoint(kv_.size()); }
  RecurrentState& state() { return rs_; }
  const RecurrentState& state() const { return rs_; }

  // The model this context runs (the context holds a share of it, so it stays loaded).
  const Model& model() const { return model_; }
  int n_threads() const { return pool_ ? pool_->size() : 0; }
  const ContextParams& params() const { return params_; }
  const ContextPlan& plan() const { return plan_; }
  KvCache& kv() { return kv_; }
  const KvCache& kv() const { return kv_; }

  // Mixture of experts: how often each expert of each layer was selected since creation or
  // the last reset_moe_stats(): one count per token and selected expert, so n tokens give
  // n * k per layer, except that without all_logits the last layer of a chunk runs (and
  // counts) only the chunk's last token. nullptr for a dense model.
  const MoeStats* moe_stats() const { return hp().moe.enabled() ? &moe_stats_ : nullptr; }
  void reset_moe_stats() { moe_stats_.reset(); }

 private:
  const HParams& hp() const { return model_.hparams(); }
  Status allocate();
  template <class Fn>
  void for_rows(int64_t rows, Fn&& fn);
  Status matmul_into(const Weight& w, const float* in, int64_t rows, float* out, int64_t ldy);
  Status forward_chunk(const int32_t* tokens, int64_t n, bool last_chunk, bool all_rows);
  // The named blocks of the forward pass (n tokens in the chunk; m rows go past attention).
  Status embed(const int32_t* tokens, int64_t n);
  void rope_tables(int64_t pos0, int64_t n);
  void qk_prepare(const LayerWeights& L, const LayerPlan& p, int64_t i, int64_t pos, int64_t ld);
  Status attention_block(int64_t il, int64_t n, int64_t r0, int64_t pos0);
  Status conv_block(int64_t il, int64_t n, int64_t r0);
  Status delta_net_block(int64_t il, int64_t n, int64_t r0);
  Status ffn_block(int64_t il, int64_t m);
  Status moe_block(int64_t il, int64_t m);
  void ffn_residual(const LayerWeights& L, int64_t m);
  Status output_head(int64_t rows);

  Model model_;
  ContextParams params_;
  ContextPlan plan_;
  ParallelFor par_;
  std::unique_ptr<ThreadPool> pool_;
  KvCache kv_;
  RecurrentState rs_;  // per-sequence state of short-convolution layers
  MatmulScratch mm_;
  ops::AttentionScratch attn_;
  MoeScratch moe_scratch_;
  MoeStats moe_stats_;

  // Activations of one chunk, [n_batch][width] each.
  AlignedBuffer<float> x_;      // residual stream, n_embd
  AlignedBuffer<float> xn_;     // normalised input of a block, n_embd
  AlignedBuffer<float> qkv_;    // [q | k | v] per token
  AlignedBuffer<float> att_;    // attention output, n_head * head_dim_v
  AlignedBuffer<float> proj_;   // output of attn_output / ffn_down, n_embd
  AlignedBuffer<float> ffn_;    // [gate | up] per token, 2 * n_ff
  AlignedBuffer<float> rope_;   // cos/sin per token: [n_batch][n_rot] global, then sliding
  AlignedBuffer<float> logits_; // [1 or n_batch][n_vocab]
  AlignedBuffer<float> dn_scratch_;  // DeltaNet chunked prefill, per thread
  int64_t n_logits_ = 0;
};

inline Expected<Context> Context::create(const Model& model, const ContextParams& params) {
  if (!model) return make_error(Errc::invalid_argument, "context: the model is not loaded");
  auto plan = ContextPlan::make(model.hparams(), model.hparams().n_vocab, params);
  if (!plan) return plan.error();
  Context c;
  c.model_ = model;
  c.params_ = params;
  c.params_.n_batch = plan->n_batch;
  c.plan_ = *plan;
  if (auto st = c.allocate(); !st) return st.error();
  return c;
}

// Allocates what the plan lists: the KV cache, the activations, the attention, matmul and
// MoE scratch.
inline Status Context::allocate() {
  const HParams& h = hp();
  const ContextPlan& p = plan_;
  pool_ = std::make_unique<ThreadPool>(p.n_threads, params_.placement);
  auto kv = KvCache::create(h, p.n_ctx, params_.type_k, params_.type_v);
  if (!kv) return kv.error();
  kv_ = std::move(*kv);
  auto rs = RecurrentState::create(p.state_floats, params_.n_state_checkpoints);
  if (!rs) return rs.error();
  rs_ = std::move(*rs);
  const auto sz = [](int64_t a, int64_t b) { return static_cast<size_t>(a * b); };
  const int64_t B = p.n_batch;
  const bool ok = x_.allocate(sz(B, p.w_embd)) && xn_.allocate(sz(B, p.w_embd)) && qkv_.allocate(sz(B, p.w_qkv)) &&
                  att_.allocate(sz(B, p.w_att)) && proj_.allocate(sz(B, p.w_embd)) &&
                  ffn_.allocate(sz(B, std::max<int64_t>(p.w_ffn, 1))) && rope_.allocate(sz(2 * B, p.n_rot)) &&
                  logits_.allocate(sz(p.logit_rows, p.n_vocab)) && attn_.reserve(p.attn, p.n_ctx, p.n_threads, p.kv_f16);
  if (!ok || (p.dn_scratch > 0 && !dn_scratch_.allocate(sz(p.dn_scratch, p.n_threads))))
    return make_error(Errc::out_of_memory, "context: cannot allocate the activation buffers");
  if (auto st = mm_.reserve(B, p.mm_cols); !st) return st;
  if (p.moe) {
    if (auto st = moe_scratch_.reserve(h.moe, h.n_embd, B, p.n_threads); !st) return st;
    moe_stats_.init(h.n_layer, h.moe.n_expert);
  }
  par_ = pool_->parallel();
  return {};
}

inline Expected<std::span<const float>> Context::eval(std::span<const int32_t> tokens) {
  if (!model_) return make_error(Errc::invalid_argument, "eval: the context was not created");
  const HParams& h = hp();
  if (tokens.empty()) return make_error(Errc::invalid_argument, "eval: no tokens");
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= h.n_vocab)
      return make_error(Errc::out_of_range, "eval: token id " + std::to_string(tokens[i]) +
                                                " at index " + std::to_string(i) +
                                                " is outside the vocabulary (" +
                                                std::to_string(h.n_vocab) + " tokens)");
  if (auto st = kv_.reserve_tokens(static_cast<int64_t>(tokens.size())); !st) return st.error();
  const int64_t B = params_.n_batch, n = static_cast<int64_t>(tokens.size());
  if (params_.all_logits && n > B)
    return make_error(Errc::invalid_argument, "eval: with all_logits at most n_batch (" +
                                                  std::to_string(B) + ") tokens per call");
  for (int64_t at = 0; at < n; at += B) {
    const int64_t m = std::min(B, n - at);
    if (auto st = forward_chunk(tokens.data() + at, m, at + m == n, params_.all_logits); !st) return st.error();
  }
  return last_logits();
}

inline Expected<std::span<const float>> Context::eval_all(std::span<const int32_t> tokens) {
  if (static_cast<int64_t>(tokens.size()) > max_eval_all())
    return make_error(Errc::invalid_argument, "eval_all: at most " + std::to_string(max_eval_all()) +
                                                  " tokens per call");
  if (params_.all_logits || tokens.empty()) return eval(tokens);
  if (!model_) return make_error(Errc::invalid_argument, "eval: the context was not created");
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= hp().n_vocab)
      return make_error(Errc::out_of_range, "eval_all: token id " + std::to_string(tokens[i]) +
                                                " is outside the vocabulary");
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (auto st = kv_.reserve_tokens(n); !st) return st.error();
  if (auto st = forward_chunk(tokens.data(), n, true, true); !st) return st.error();
  return last_logits();
}

// fn(i) for rows i in [0, rows), split over the threads; a few rows (decode) run inline,
// where a fork-join would cost more than the work.
template <class Fn>
inline void Context::for_rows(int64_t rows, Fn&& fn) {
  if (rows < 4) {
    for (int64_t i = 0; i < rows; ++i) fn(i);
    return;
  }
  par_([&](int t, int nt) {
    int64_t b, e;
    ParallelFor::split(rows, t, nt, 1, &b, &e);
    for (int64_t i = b; i < e; ++i) fn(i);
  });
}

inline Status Context::matmul_into(const Weight& w, const float* in, int64_t rows, float* out, int64_t ldy) {
  const MatmulOut o[1] = {{w.ref(), out, ldy, w.name}};
  return matmul_many(o, in, rows, mm_, par_);
}

// The forward pass of one chunk of n tokens at positions pos0 .. pos0 + n - 1.
inline Status Context::forward_chunk(const int32_t* tokens, int64_t n, bool last_chunk, bool all_rows) {
  const HParams& h = hp();
  const bool want_all = all_rows;
  const int64_t pos0 = kv_.size();
  // 1. Token embeddings and the RoPE angles of every position.
  if (auto st = embed(tokens, n); !st) return st;
  rope_tables(pos0, n);
  for (int64_t il = 0; il < h.n_layer; ++il) {
    // In the last layer only the rows whose logits are wanted go past attention.
    const bool trim = il == h.n_layer - 1 && !want_all;
    const int64_t r0 = trim ? n - 1 : 0, m = n - r0;
    // 2. Attention (norm, QKV, RoPE, cache, attention, output projection, residual), or
    //    the short convolution of a hybrid model.
    const LayerKind kind = h.layers[static_cast<size_t>(il)].kind;
    const bool conv = kind == LayerKind::short_conv;
    if (kind == LayerKind::delta_net) {
      if (auto st = delta_net_block(il, n, r0); !st) return st;
    } else if (auto st = conv ? conv_block(il, n, r0) : attention_block(il, n, r0, pos0); !st) {
      return st;
    }
    // 3. Feed-forward: dense or mixture of experts, then its residual.
    const bool moe = h.layers[static_cast<size_t>(il)].ffn == FfnKind::moe;
    if (auto st = moe ? moe_block(il, m) : ffn_block(il, m); !st) return st;
  }
  kv_.advance(n);
  // 4. Final norm and output head: only for the last token unless all logits are wanted.
  if (!last_chunk && !want_all) return {};
  return output_head(want_all ? n : 1);
}

// One dequantised embedding row per token, scaled by sqrt(n_embd) for gemma.
inline Status Context::embed(const int32_t* tokens, int64_t n) {
  const HParams& h = hp();
  const Weight& te = model_.weights().token_embd;
  const int64_t E = h.n_embd;
  float* x = x_.data();
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* row = te.data + static_cast<size_t>(tokens[i]) * te.row_bytes();
    if (auto st = dequantize_row(te.type, row, x + i * E, E); !st) return st;
    if (h.embed_scale != 1.0f) ops::scale(x + i * E, h.embed_scale, E);
  }
  return {};
}

// RoPE angles of each position: table 0 global, table 1 for sliding-window layers.
inline void Context::rope_tables(int64_t pos0, int64_t n) {
  const HParams& h = hp();
  float* global = rope_.data();
  float* sliding = rope_.data() + params_.n_batch * h.n_rot;
  const float* factors = h.rope_freq_factors.empty() ? nullptr : h.rope_freq_factors.data();
  for (int64_t i = 0; i < n; ++i) {
    ops::rope_angles(pos0 + i, h.n_rot, h.rope_base, h.rope_freq_scale, factors, global + i * h.n_rot);
    if (h.any_swa())
      ops::rope_angles(pos0 + i, h.n_rot, h.rope_base_swa, h.rope_freq_scale_swa, factors, sliding + i * h.n_rot);
    for (size_t r = 0; r < h.rope_pair_pos.size(); ++r)  // multi-section pairs rotated by position 0
      if (!h.rope_pair_pos[r]) {
        global[i * h.n_rot + 2 * static_cast<int64_t>(r)] = 1.0f;
        global[i * h.n_rot + 2 * static_cast<int64_t>(r) + 1] = 0.0f;
      }
  }
}

// Token i of the chunk: biases, QK-norm (per head or over the whole projection), RoPE, Q
// pre-scaling; then its K and V into the cache at position pos.
inline void Context::qk_prepare(const LayerWeights& L, const LayerPlan& p, int64_t i, int64_t pos, int64_t ld) {
  const HParams& h = hp();
  const int64_t Q = p.q_dim(), K = p.k_dim(), V = p.v_dim(), hk = p.head_dim_k;
  float* q = qkv_.data() + i * ld;
  float* k = q + Q;
  float* v = k + K;
  if (!L.bq.empty()) ops::add(q, L.bq.data(), Q);
  if (!L.bk.empty()) ops::add(k, L.bk.data(), K);
  if (!L.bv.empty()) ops::add(v, L.bv.data(), V);
  const bool whole = h.arch.qk_norm == QkNorm::whole;
  if (!L.q_norm.empty() && whole) ops::rms_norm(q, L.q_norm.data(), q, Q, h.rms_eps);
  else if (!L.q_norm.empty())
    for (int64_t hh = 0; hh < p.n_head; ++hh) ops::rms_norm(q + hh * hk, L.q_norm.data(), q + hh * hk, hk, h.rms_eps);
  if (!L.k_norm.empty() && whole) ops::rms_norm(k, L.k_norm.data(), k, K, h.rms_eps);
  else if (!L.k_norm.empty())
    for (int64_t hh = 0; hh < p.n_head_kv; ++hh) ops::rms_norm(k + hh * hk, L.k_norm.data(), k + hh * hk, hk, h.rms_eps);
  if (p.rope) {
    const auto layout = h.arch.rope == RopeStyle::neox ? ops::RopeLayout::neox : ops::RopeLayout::normal;
    const float* cs = rope_.data() + (p.rope_table * params_.n_batch + i) * h.n_rot;
    ops::rope_apply(q, p.n_head, hk, h.n_rot, cs, layout);
    ops::rope_apply(k, p.n_head_kv, hk, h.n_rot, cs, layout);
  }
  if (h.arch.scale_q) ops::scale(q, h.attn_scale, Q);
  kv_.store(p.kv_layer, pos, k, v);
}

// Attention norm, Q/K/V, causal attention over the cache (sliding window on SWA layers),
// output projection, optional post-norm and the residual; rows r0.. go on (the last layer
// keeps only the last row), moved to the front of the residual stream.
inline Status Context::attention_block(int64_t il, int64_t n, int64_t r0, int64_t pos0) {
  const HParams& h = hp();
  const LayerWeights& L = model_.weights().layers[static_cast<size_t>(il)];
  const LayerPlan& p = h.layers[static_cast<size_t>(il)];
  const int64_t E = h.n_embd, Q = p.q_dim(), K = p.k_dim(), A = p.attn_out_dim();
  const int64_t QKV = p.attn_gate ? gated_qkv_width(p) : Q + K + p.v_dim(), G = Q + K + p.v_dim();
  float* x = x_.data();
  float* xn = xn_.data();
  float* qkv = qkv_.data();
  for_rows(n, [&](int64_t i) { ops::rms_norm(x + i * E, L.attn_norm.data(), xn + i * E, E, h.rms_eps); });
  if (p.attn_gate) {  // attn_q into the raw tail of each row, then split into q and the gate
    const MatmulOut outs[3] = {{L.wq.ref(), qkv + G + Q, QKV, L.wq.name},
                               {L.wk.ref(), qkv + Q, QKV, L.wk.name},
                               {L.wv.ref(), qkv + Q + K, QKV, L.wv.name}};
    if (auto st = matmul_many(outs, xn, n, mm_, par_); !st) return st;
    for_rows(n, [&](int64_t i) { split_query_gate(qkv + i * QKV + G + Q, p.n_head, p.head_dim_k, qkv + i * QKV, qkv + i * QKV + G); });
  } else if (L.wqkv) {
    if (auto st = matmul_into(L.wqkv, xn, n, qkv, QKV); !st) return st;
  } else {
    const MatmulOut outs[3] = {{L.wq.ref(), qkv, QKV, L.wq.name},
                               {L.wk.ref(), qkv + Q, QKV, L.wk.name},
                               {L.wv.ref(), qkv + Q + K, QKV, L.wv.name}};
    if (auto st = matmul_many(outs, xn, n, mm_, par_); !st) return st;
  }
  for_rows(n, [&](int64_t i) { qk_prepare(L, p, i, pos0 + i, QKV); });
  const ops::AttentionShape shape{p.n_head, p.n_head_kv, p.head_dim_k, p.head_dim_v,
                                  h.arch.scale_q ? 1.0f : h.attn_scale, h.attn_softcap, p.sliding ? h.n_swa : 0};
  const int64_t m = n - r0;
  if (plan_.kv_f16)
    ops::attention(shape, qkv + r0 * QKV, QKV, m, pos0 + r0, kv_.k_layer(p.kv_layer), kv_.v_layer(p.kv_layer),
                   kv_.n_ctx(), att_.data(), A, attn_, par_);
  else
    ops::attention_quant(shape, qkv + r0 * QKV, QKV, m, pos0 + r0, kv_.k_rows(p.kv_layer), kv_.v_rows(p.kv_layer),
                         kv_.n_ctx(), att_.data(), A, attn_, par_);
  if (p.attn_gate)
    for_rows(m, [&](int64_t i) { apply_output_gate(att_.data() + i * A, qkv + (r0 + i) * QKV + G, A); });
  float* proj = proj_.data();
  if (auto st = matmul_into(L.wo, att_.data(), m, proj, E); !st) return st;
  if (r0 > 0) std::memmove(x, x + r0 * E, static_cast<size_t>(E) * sizeof(float));
  for_rows(m, [&](int64_t i) {
    float* pr = proj + i * E;
    if (!L.bo.empty()) ops::add(pr, L.bo.data(), E);
    if (!L.post_attn_norm.empty()) ops::rms_norm(pr, L.post_attn_norm.data(), pr, E, h.rms_eps);
    ops::add(x + i * E, pr, E);
    ops::rms_norm(x + i * E, L.ffn_norm.data(), xn + i * E, E, h.rms_eps);
  });
  return {};
}

// Norm, in_proj, the gated causal convolution over every row (the state must see them all),
// out_proj on rows r0.., residual and the FFN norm, as attention_block ends.
inline Status Context::conv_block(int64_t il, int64_t n, int64_t r0) {
  const HParams& h = hp();
  const LayerWeights& L = model_.weights().layers[static_cast<size_t>(il)];
  const int64_t E = h.n_embd, m = n - r0;
  float* x = x_.data();
  float* xn = xn_.data();
  float* bcx = qkv_.data();
  for_rows(n, [&](int64_t i) { ops::rms_norm(x + i * E, L.attn_norm.data(), xn + i * E, E, h.rms_eps); });
  if (auto st = matmul_into(L.conv_in, xn, n, bcx, 3 * E); !st) return st;
  short_conv(bcx, 3 * E, n, E, h.conv_kernel, L.conv_kernel.data(), rs_.layer(il), att_.data(), E, par_);
  float* proj = proj_.data();
  if (auto st = matmul_into(L.conv_out, att_.data() + r0 * E, m, proj, E); !st) return st;
  if (r0 > 0) std::memmove(x, x + r0 * E, static_cast<size_t>(E) * sizeof(float));
  for_rows(m, [&](int64_t i) {
    ops::add(x + i * E, proj + i * E, E);
    ops::rms_norm(x + i * E, L.ffn_norm.data(), xn + i * E, E, h.rms_eps);
  });
  return {};
}

// Norm; the [mix | z | beta | alpha] projections; convolution + SiLU of the mix over every
// row (the state must see them all); gates; the delta rule per V head over the rows in order;
// the gated norm and ssm_out on rows r0..; residual and the FFN norm, as attention_block ends.
inline Status Context::delta_net_block(int64_t il, int64_t n, int64_t r0) {
  const HParams& h = hp();
  const LayerWeights& L = model_.weights().layers[static_cast<size_t>(il)];
  const DeltaNetShape& s = h.delta_net;
  const int64_t E = h.n_embd, C = s.channels(), V = s.value_dim(), W = s.proj_width(), m = n - r0;
  float* x = x_.data();
  float* xn = xn_.data();
  float* proj_in = qkv_.data();
  float* mix = att_.data();  // convolved [q | k | v] rows of C; v becomes the output
  for_rows(n, [&](int64_t i) { ops::rms_norm(x + i * E, L.attn_norm.data(), xn + i * E, E, h.rms_eps); });
  const MatmulOut outs[4] = {{L.ssm_qkv.ref(), proj_in, W, L.ssm_qkv.name},
                             {L.ssm_gate.ref(), proj_in + C, W, L.ssm_gate.name},
                             {L.ssm_beta.ref(), proj_in + C + V, W, L.ssm_beta.name},
                             {L.ssm_alpha.ref(), proj_in + C + V + s.n_v_heads, W, L.ssm_alpha.name}};
  if (auto st = matmul_many(outs, xn, n, mm_, par_); !st) return st;
  float* state = rs_.layer(il);
  delta_net_conv(s, proj_in, W, n, L.ssm_conv.data(), state, mix, C, par_);
  for_rows(n, [&](int64_t i) {
    delta_net_prepare(s, mix + i * C, proj_in + i * W + C + V, L.ssm_dt_bias.data(), L.ssm_a.data(), h.rms_eps);
  });
  float* S = state + s.conv_state_floats();
  const int64_t dd = s.d_state * s.d_state;
  if (n < kDeltaNetChunkMin) {  // decode: one token at a time
    for_rows(s.n_v_heads, [&](int64_t hv) { delta_net_recurrence(s, hv, mix, C, proj_in + C + V, W, n, S + hv * dd); });
  } else {  // prefill: chunks of tokens with matrix products, the heads split over the threads
    par_([&](int t, int nt) {
      int64_t b, e;
      ParallelFor::split(s.n_v_heads, t, nt, 1, &b, &e);
      float* scratch = dn_scratch_.data() + t * plan_.dn_scratch;
      for (int64_t hv = b; hv < e; ++hv) delta_net_chunked(s, hv, mix, C, proj_in + C + V, W, n, S + hv * dd, scratch);
    });
  }
  // Rows r0..: the gated norm, compacted into dense rows of V (increasing order: a row never
  // lands on an unread one, since V <= C).
  for (int64_t i = 0; i < m; ++i) {
    const float* o = mix + (r0 + i) * C + 2 * s.key_dim();
    delta_net_gated_norm(s, o, L.ssm_norm.data(), proj_in + (r0 + i) * W + C, mix + i * V, h.rms_eps);
  }
  float* proj = proj_.data();
  if (auto st = matmul_into(L.ssm_out, mix, m, proj, E); !st) return st;
  if (r0 > 0) std::memmove(x, x + r0 * E, static_cast<size_t>(E) * sizeof(float));
  for_rows(m, [&](int64_t i) {
    ops::add(x + i * E, proj + i * E, E);
    ops::rms_norm(x + i * E, L.ffn_norm.data(), xn + i * E, E, h.rms_eps);
  });
  return {};
}

// The dense FFN of m rows of xn: [gate | up] GEMM(s), gated activation, down projection.
inline Status Context::ffn_block(int64_t il, int64_t m) {
  const HParams& h = hp();
  const LayerWeights& L = model_.weights().layers[static_cast<size_t>(il)];
  const int64_t F = h.layers[static_cast<size_t>(il)].n_ff;
  float* ffn = ffn_.data();
  if (L.ffn_gate) {
    const MatmulOut outs[2] = {{L.ffn_gate.ref(), ffn, 2 * F, L.ffn_gate.name},
                               {L.ffn_up.ref(), ffn + F, 2 * F, L.ffn_up.name}};
    if (auto st = matmul_many(outs, xn_.data(), m, mm_, par_); !st) return st;
  } else if (auto st = matmul_into(L.ffn_up, xn_.data(), m, ffn, 2 * F); !st) {  // fused [gate; up]
    return st;
  }
  const bool gelu = h.arch.activation == FfnActivation::gelu_tanh;
  for_rows(m, [&](int64_t i) {
    float* g = ffn + i * 2 * F;
    if (gelu) ops::gelu_mul(g, g + F, g, F);
    else ops::silu_mul(g, g + F, g, F);
  });
  // The activations sit in the gate half of each row; compact them into dense rows for the
  // down projection (in increasing row order, so no row overwrites an unread one).
  for (int64_t i = 1; i < m; ++i) std::memmove(ffn + i * F, ffn + i * 2 * F, static_cast<size_t>(F) * sizeof(float));
  if (auto st = matmul_into(L.ffn_down, ffn, m, proj_.data(), h.n_embd); !st) return st;
  ffn_residual(L, m);
  return {};
}

// The MoE step (router, the chosen experts, their weighted sum) in the dense FFN's place.
inline Status Context::moe_block(int64_t il, int64_t m) {
  const LayerWeights& L = model_.weights().layers[static_cast<size_t>(il)];
  if (auto st = moe_ffn(hp().moe, L.experts, xn_.data(), m, proj_.data(), moe_scratch_, par_, &moe_stats_, il); !st)
    return Error(st.error()).context("layer " + std::to_string(il));
  ffn_residual(L, m);
  return {};
}

// Optional post-FFN norm, then the residual add.
inline void Context::ffn_residual(const LayerWeights& L, int64_t m) {
  const HParams& h = hp();
  const int64_t E = h.n_embd;
  float* x = x_.data();
  float* proj = proj_.data();
  for_rows(m, [&](int64_t i) {
    float* pr = proj + i * E;
    if (!L.post_ffn_norm.empty()) ops::rms_norm(pr, L.post_ffn_norm.data(), pr, E, h.rms_eps);
    ops::add(x + i * E, pr, E);
  });
}

// Final norm of `rows` residual rows (after the trimmed last layer, row 0 is the last token),
// output head, bias and soft-cap.
inline Status Context::output_head(int64_t rows) {
  const HParams& h = hp();
  const ModelWeights& w = model_.weights();
  const int64_t E = h.n_embd;
  for (int64_t i = 0; i < rows; ++i) ops::rms_norm(x_.data() + i * E, w.output_norm.data(), xn_.data() + i * E, E, h.rms_eps);
  if (auto st = matmul_into(w.output, xn_.data(), rows, logits_.data(), h.n_vocab); !st) return st;
  for_rows(rows, [&](int64_t i) {
    float* lg = logits_.data() + i * h.n_vocab;
    if (!w.output_bias.empty()) ops::add(lg, w.output_bias.data(), h.n_vocab);
    if (h.final_softcap > 0.0f) ops::soft_cap(lg, h.n_vocab, h.final_softcap);
  });
  n_logits_ = rows;
  return {};
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/forward.hpp ----

// ---- begin tinyslm/tokenizer.hpp ----
// tinyslm tokenizer: text to token ids and back, from the vocabulary stored in a GGUF file.
//
// Three vocabulary kinds, chosen by `tokenizer.ggml.model`:
//   - "llama": SentencePiece-style BPE over scores (SPM), with byte fallback tokens <0xNN>
//     and the leading-space rule (a space is put before the text and after every special
//     token; spaces become U+2581 "▁").
//   - "gpt2": byte-level BPE over ranked merges. Text is first split into words by a
//     pre-tokenizer picked by `tokenizer.ggml.pre` (hand-written splitters that follow the
//     regular expressions llama.cpp uses, with Unicode classes from unicode_tables.hpp), each
//     byte is mapped to a printable code point (the GPT-2 byte-to-unicode table), then merges
//     are applied per word, lowest rank first.
//   - "bert": WordPiece (lower-casing, accent stripping, greedy longest match).
// The rules follow llama.cpp (llama-vocab.cpp) so the ids are the same as llama.cpp's.
//
// Input text is bytes. Invalid UTF-8 never fails: the SPM path keeps the raw bytes (they
// come out as byte tokens), the BPE and WordPiece paths read each invalid byte as U+FFFD,
// as llama.cpp does. NUL bytes are ordinary characters. Decoding returns the exact bytes the
// tokens stand for (possibly not valid UTF-8); StreamDecoder returns only valid UTF-8.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>


// ---- begin tinyslm/unicode_tables.hpp ----
// GENERATED by scripts/gen_unicode_tables.py; do not edit.
// Unicode 14.0.0 (Python 3.11.7 unicodedata). See the script for what each table holds.

#include <cstdint>

#define TINYSLM_UNICODE_VERSION "14.0.0"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {
namespace detail {

inline constexpr uint32_t unicode_class_ranges[] = {
    0x7, 0x103, 0x10d, 0x126, 0x12d, 0x15e, 0x165, 0x181,
    0x1d5, 0x1e6, 0x1fd, 0x20a, 0x2dd, 0x2f6, 0x2fd, 0x306,
    0x30a, 0x3dd, 0x3e6, 0x3ed, 0x3f6, 0x3ff, 0x503, 0x50d,
    0x516, 0x53d, 0x546, 0x552, 0x55d, 0x566, 0x56f, 0x576,
    0x591, 0x5a6, 0x5aa, 0x5b5, 0x5c6, 0x5c9, 0x5d2, 0x5dd,
    0x5e1, 0x5fd, 0x602, 0x6be, 0x6c2, 0x7be, 0x7c2, 0x1616,
    0x1632, 0x1696, 0x1702, 0x172e, 0x1762, 0x176e, 0x1772, 0x177e,
    0x1804, 0x1b82, 0x1bae, 0x1bb2, 0x1bc0, 0x1bd2, 0x1bf5, 0x1bfa,
    0x1c00, 0x1c26, 0x1c32, 0x1c3d, 0x1c42, 0x1c58, 0x1c62, 0x1c68,
    0x1c72, 0x1d10, 0x1d1a, 0x1fb6, 0x1fba, 0x2416, 0x241c, 0x2452,
    0x2980, 0x298a, 0x2ab8, 0x2aca, 0x2ad5, 0x2b02, 0x2c4d, 0x2c58,
    0x2c6e, 0x2c80, 0x2c8c, 0x2df5, 0x2dfc, 0x2e05, 0x2e0c, 0x2e1d,
    0x2e24, 0x2e35, 0x2e3c, 0x2e40, 0x2e82, 0x2f58, 0x2f7a, 0x2f9d,
    0x2fa8, 0x3007, 0x3036, 0x304d, 0x305e, 0x3065, 0x3076, 0x3084,
    0x30dd, 0x30e7, 0x30ed, 0x3102, 0x325c, 0x3301, 0x3355, 0x3372,
    0x3384, 0x338a, 0x36a5, 0x36aa, 0x36b4, 0x36ef, 0x36f6, 0x36fc,
    0x372a, 0x373c, 0x374e, 0x3754, 0x3772, 0x3781, 0x37d2, 0x37ee,
    0x37fa, 0x3805, 0x3870, 0x387f, 0x3882, 0x388c, 0x3892, 0x3984,
    0x3a58, 0x3a6a, 0x3d34, 0x3d8a, 0x3d90, 0x3e01, 0x3e52, 0x3f5c,
    0x3fa2, 0x3fb6, 0x3fbd, 0x3fd2, 0x3fd8, 0x3fec, 0x3ff6, 0x4002,
    0x40b4, 0x40d2, 0x40dc, 0x4122, 0x412c, 0x4142, 0x414c, 0x4170,
    0x4185, 0x41f8, 0x4202, 0x42cc, 0x42e0, 0x42f5, 0x42f8, 0x4302,
    0x4358, 0x4382, 0x4446, 0x444a, 0x4478, 0x4487, 0x4490, 0x44c4,
    0x4502, 0x4654, 0x4717, 0x471c, 0x4822, 0x49d4, 0x49ea, 0x49f4,
    0x4a82, 0x4a8c, 0x4ac2, 0x4b14, 0x4b25, 0x4b31, 0x4b85, 0x4b8a,
    0x4c0c, 0x4c20, 0x4c2a, 0x4c68, 0x4c7a, 0x4c88, 0x4c9a, 0x4d48,
    0x4d52, 0x4d88, 0x4d92, 0x4d98, 0x4db2, 0x4dd0, 0x4de4, 0x4dea,
    0x4df4, 0x4e28, 0x4e3c, 0x4e48, 0x4e5c, 0x4e72, 0x4e78, 0x4ebc,
    0x4ec0, 0x4ee2, 0x4ef0, 0x4efa, 0x4f14, 0x4f20, 0x4f31, 0x4f82,
    0x4f96, 0x4fa1, 0x4fd6, 0x4fe2, 0x4fed, 0x4ff4, 0x4ff8, 0x500c,
    0x5020, 0x502a, 0x5058, 0x507a, 0x5088, 0x509a, 0x5148, 0x5152,
    0x5188, 0x5192, 0x51a0, 0x51aa, 0x51b8, 0x51c2, 0x51d0, 0x51e4,
    0x51e8, 0x51f4, 0x5218, 0x523c, 0x5248, 0x525c, 0x5270, 0x528c,
    0x5290, 0x52ca, 0x52e8, 0x52f2, 0x52f8, 0x5331, 0x5384, 0x5392,
    0x53ac, 0x53b5, 0x53b8, 0x540c, 0x5420, 0x542a, 0x5470, 0x547a,
    0x5490, 0x549a, 0x5548, 0x5552, 0x5588, 0x5592, 0x55a0, 0x55aa,
    0x55d0, 0x55e4, 0x55ea, 0x55f4, 0x5630, 0x563c, 0x5650, 0x565c,
    0x5670, 0x5682, 0x5688, 0x5702, 0x5714, 0x5720, 0x5731, 0x5785,
    0x578e, 0x5790, 0x57ca, 0x57d4, 0x5800, 0x580c, 0x5820, 0x582a,
    0x5868, 0x587a, 0x5888, 0x589a, 0x5948, 0x5952, 0x5988, 0x5992,
    0x59a0, 0x59aa, 0x59d0, 0x59e4, 0x59ea, 0x59f4, 0x5a28, 0x5a3c,
    0x5a48, 0x5a5c, 0x5a70, 0x5aac, 0x5ac0, 0x5ae2, 0x5af0, 0x5afa,
    0x5b14, 0x5b20, 0x5b31, 0x5b86, 0x5b8a, 0x5b91, 0x5bc0, 0x5c14,
    0x5c1a, 0x5c20, 0x5c2a, 0x5c58, 0x5c72, 0x5c88, 0x5c92, 0x5cb0,
    0x5cca, 0x5cd8, 0x5ce2, 0x5ce8, 0x5cf2, 0x5d00, 0x5d1a, 0x5d28,
    0x5d42, 0x5d58, 0x5d72, 0x5dd0, 0x5df4, 0x5e18, 0x5e34, 0x5e48,
    0x5e54, 0x5e70, 0x5e82, 0x5e88, 0x5ebc, 0x5ec0, 0x5f31, 0x5f9e,
    0x5fd8, 0x6004, 0x602a, 0x6068, 0x6072, 0x6088, 0x6092, 0x6148,
    0x6152, 0x61d0, 0x61e4, 0x61ea, 0x61f4, 0x6228, 0x6234, 0x6248,
    0x6254, 0x6270, 0x62ac, 0x62b8, 0x62c2, 0x62d8, 0x62ea, 0x62f0,
    0x6302, 0x6314, 0x6320, 0x6331, 0x6380, 0x63bd, 0x63c1, 0x63fe,
    0x6402, 0x640c, 0x6425, 0x642a, 0x6468, 0x6472, 0x6488, 0x6492,
    0x6548, 0x6552, 0x65a0, 0x65aa, 0x65d0, 0x65e4, 0x65ea, 0x65f4,
    0x6628, 0x6634, 0x6648, 0x6654, 0x6670, 0x66ac, 0x66b8, 0x66ea,
    0x66f8, 0x6702, 0x6714, 0x6720, 0x6731, 0x6780, 0x678a, 0x6798,
    0x6804, 0x6822, 0x6868, 0x6872, 0x6888, 0x6892, 0x69dc, 0x69ea,
    0x69f4, 0x6a28, 0x6a34, 0x6a48, 0x6a54, 0x6a72, 0x6a7e, 0x6a80,
    0x6aa2, 0x6abc, 0x6ac1, 0x6afa, 0x6b14, 0x6b20, 0x6b31, 0x6bce,
    0x6bd2, 0x6c00, 0x6c0c, 0x6c20, 0x6c2a, 0x6cb8, 0x6cd2, 0x6d90,
    0x6d9a, 0x6de0, 0x6dea, 0x6df0, 0x6e02, 0x6e38, 0x6e54, 0x6e58,
    0x6e7c, 0x6ea8, 0x6eb4, 0x6eb8, 0x6ec4, 0x6f00, 0x6f31, 0x6f80,
    0x6f94, 0x6fa5, 0x6fa8, 0x700a, 0x718c, 0x7192, 0x71a4, 0x71d8,
    0x71fe, 0x7202, 0x723c, 0x727d, 0x7281, 0x72d5, 0x72e0, 0x740a,
    0x7418, 0x7422, 0x7428, 0x7432, 0x7458, 0x7462, 0x7520, 0x752a,
    0x7530, 0x753a, 0x758c, 0x7592, 0x75a4, 0x75ea, 0x75f0, 0x7602,
    0x7628, 0x7632, 0x7638, 0x7644, 0x7670, 0x7681, 0x76d0, 0x76e2,
    0x7700, 0x7802, 0x780e, 0x7825, 0x789e, 0x78a5, 0x78ae, 0x78c4,
    0x78d6, 0x7901, 0x79a6, 0x79ac, 0x79b6, 0x79bc, 0x79c6, 0x79cc,
    0x79d5, 0x79f4, 0x7a02, 0x7a40, 0x7a4a, 0x7b68, 0x7b8c, 0x7c2d,
    0x7c34, 0x7c42, 0x7c6c, 0x7cc0, 0x7ccc, 0x7de8, 0x7df6, 0x7e34,
    0x7e3e, 0x7e68, 0x7e76, 0x7e85, 0x7eae, 0x7ecd, 0x7ed8, 0x8002,
    0x815c, 0x81fa, 0x8201, 0x8255, 0x8282, 0x82b4, 0x82d2, 0x82f4,
    0x830a, 0x8314, 0x832a, 0x833c, 0x8372, 0x838c, 0x83aa, 0x8414,
    0x8472, 0x847c, 0x8481, 0x84d4, 0x84f6, 0x8502, 0x8630, 0x863a,
    0x8640, 0x866a, 0x8670, 0x8682, 0x87dd, 0x87e2, 0x9248, 0x9252,
    0x9270, 0x9282, 0x92b8, 0x92c2, 0x92c8, 0x92d2, 0x92f0, 0x9302,
    0x9448, 0x9452, 0x9470, 0x9482, 0x9588, 0x9592, 0x95b0, 0x95c2,
    0x95f8, 0x9602, 0x9608, 0x9612, 0x9630, 0x9642, 0x96b8, 0x96c2,
    0x9888, 0x9892, 0x98b0, 0x98c2, 0x9ad8, 0x9aec, 0x9b05, 0x9b49,
    0x9be8, 0x9c02, 0x9c86, 0x9cd0, 0x9d02, 0x9fb0, 0x9fc2, 0x9ff0,
    0xa005, 0xa00a, 0xb36e, 0xb375, 0xb37a, 0xb403, 0xb40a, 0xb4dd,
    0xb4e8, 0xb502, 0xb75d, 0xb771, 0xb78a, 0xb7c8, 0xb802, 0xb894,
    0xb8b0, 0xb8fa, 0xb994, 0xb9ad, 0xb9b8, 0xba02, 0xba94, 0xbaa0,
    0xbb02, 0xbb68, 0xbb72, 0xbb88, 0xbb94, 0xbba0, 0xbc02, 0xbda4,
    0xbea5, 0xbeba, 0xbec5, 0xbede, 0xbee2, 0xbeec, 0xbef0, 0xbf01,
    0xbf50, 0xbf81, 0xbfd0, 0xc005, 0xc05c, 0xc077, 0xc07c, 0xc081,
    0xc0d0, 0xc102, 0xc3c8, 0xc402, 0xc42c, 0xc43a, 0xc54c, 0xc552,
    0xc558, 0xc582, 0xc7b0, 0xc802, 0xc8f8, 0xc904, 0xc960, 0xc984,
    0xc9e0, 0xca06, 0xca08, 0xca25, 0xca31, 0xca82, 0xcb70, 0xcb82,
    0xcba8, 0xcc02, 0xcd60, 0xcd82, 0xce50, 0xce81, 0xced8, 0xcef6,
    0xd002, 0xd0bc, 0xd0e0, 0xd0f5, 0xd102, 0xd2ac, 0xd2f8, 0xd304,
    0xd3e8, 0xd3fc, 0xd401, 0xd450, 0xd481, 0xd4d0, 0xd505, 0xd53a,
    0xd545, 0xd570, 0xd584, 0xd678, 0xd804, 0xd82a, 0xd9a4, 0xda2a,
    0xda68, 0xda81, 0xdad5, 0xdb0e, 0xdb5c, 0xdba6, 0xdbed, 0xdbf8,
    0xdc04, 0xdc1a, 0xdd0c, 0xdd72, 0xdd81, 0xddd2, 0xdf34, 0xdfa0,
    0xdfe5, 0xe002, 0xe124, 0xe1c0, 0xe1dd, 0xe201, 0xe250, 0xe26a,
    0xe281, 0xe2d2, 0xe3f5, 0xe402, 0xe448, 0xe482, 0xe5d8, 0xe5ea,
    0xe605, 0xe640, 0xe684, 0xe69d, 0xe6a4, 0xe74a, 0xe76c, 0xe772,
    0xe7a4, 0xe7aa, 0xe7bc, 0xe7d2, 0xe7d8, 0xe802, 0xee04, 0xf002,
    0xf8b0, 0xf8c2, 0xf8f0, 0xf902, 0xfa30, 0xfa42, 0xfa70, 0xfa82,
    0xfac0, 0xfaca, 0xfad0, 0xfada, 0xfae0, 0xfaea, 0xfaf0, 0xfafa,
    0xfbf0, 0xfc02, 0xfda8, 0xfdb2, 0xfdee, 0xfdf2, 0xfdfe, 0xfe12,
    0xfe28, 0xfe32, 0xfe6e, 0xfe82, 0xfea0, 0xfeb2, 0xfee0, 0xfeee,
    0xff02, 0xff6e, 0xff80, 0xff92, 0xffa8, 0xffb2, 0xffee, 0xfff8,
    0x10003, 0x1005f, 0x10085, 0x10143, 0x10157, 0x1017b, 0x10185, 0x10226,
    0x1022d, 0x10296, 0x1029d, 0x102fb, 0x10307, 0x10328, 0x10337, 0x10381,
    0x1038a, 0x10390, 0x103a1, 0x103d6, 0x103ed, 0x103fa, 0x10401, 0x10456,
    0x1046d, 0x10478, 0x10482, 0x104e8, 0x10506, 0x10608, 0x10684, 0x10788,
    0x10806, 0x10812, 0x1081e, 0x1083a, 0x10846, 0x10852, 0x108a6, 0x108aa,
    0x108b6, 0x108ca, 0x108f6, 0x10922, 0x1092e, 0x10932, 0x1093e, 0x10942,
    0x1094e, 0x10952, 0x10976, 0x1097a, 0x109d6, 0x109e2, 0x10a06, 0x10a2a,
    0x10a56, 0x10a72, 0x10a7e, 0x10a81, 0x10c1a, 0x10c29, 0x10c56, 0x10c60,
    0x10c86, 0x11845, 0x11866, 0x1194d, 0x1195e, 0x12138, 0x12206, 0x12258,
    0x12301, 0x124e6, 0x12751, 0x12806, 0x13b45, 0x13bb1, 0x13ca6, 0x13e2d,
    0x13e3e, 0x13f35, 0x13f86, 0x14c1d, 0x14cce, 0x14ec5, 0x14ee6, 0x14fe5,
    0x14ff6, 0x15ba0, 0x15bb6, 0x15cb0, 0x15cbe, 0x16002, 0x1672e, 0x1675a,
    0x1677c, 0x16792, 0x167a0, 0x167cd, 0x167e9, 0x167f5, 0x16802, 0x16930,
    0x1693a, 0x16940, 0x1696a, 0x16970, 0x16982, 0x16b40, 0x16b7a, 0x16b85,
    0x16b88, 0x16bfc, 0x16c02, 0x16cb8, 0x16d02, 0x16d38, 0x16d42, 0x16d78,
    0x16d82, 0x16db8, 0x16dc2, 0x16df8, 0x16e02, 0x16e38, 0x16e42, 0x16e78,
    0x16e82, 0x16eb8, 0x16ec2, 0x16ef8, 0x16f04, 0x17005, 0x1717a, 0x17185,
    0x17286, 0x17295, 0x172f0, 0x17406, 0x174d0, 0x174de, 0x177a0, 0x17806,
    0x17eb0, 0x17f86, 0x17fe0, 0x18003, 0x1800d, 0x18026, 0x1802a, 0x18039,
    0x18045, 0x18096, 0x180a5, 0x18106, 0x18109, 0x18154, 0x18185, 0x1818a,
    0x181b6, 0x181c1, 0x181da, 0x181ed, 0x181f6, 0x18200, 0x1820a, 0x184b8,
    0x184cc, 0x184de, 0x184ea, 0x18505, 0x1850a, 0x187dd, 0x187e2, 0x18800,
    0x1882a, 0x18980, 0x1898a, 0x18c78, 0x18c86, 0x18c91, 0x18cb6, 0x18d02,
    0x18e06, 0x18f20, 0x18f82, 0x19006, 0x190f8, 0x19101, 0x19156, 0x19241,
    0x19286, 0x19289, 0x19306, 0x19401, 0x19456, 0x19589, 0x19606, 0x1a002,
    0x26e06, 0x27002, 0x52468, 0x52486, 0x52638, 0x52682, 0x527f5, 0x52802,
    0x5306d, 0x53082, 0x53101, 0x53152, 0x53160, 0x53202, 0x5337c, 0x5339d,
    0x533a4, 0x533f5, 0x533fa, 0x534f4, 0x53502, 0x53731, 0x53784, 0x53795,
    0x537c0, 0x53806, 0x538ba, 0x53906, 0x53912, 0x53c4e, 0x53c5a, 0x53e58,
    0x53e82, 0x53e90, 0x53e9a, 0x53ea0, 0x53eaa, 0x53ed0, 0x53f92, 0x54014,
    0x5401a, 0x54034, 0x5403a, 0x5405c, 0x54062, 0x5411c, 0x54146, 0x54164,
    0x54168, 0x54181, 0x541b6, 0x541d0, 0x54202, 0x543a5, 0x543c0, 0x54404,
    0x54412, 0x545a4, 0x54630, 0x54675, 0x54681, 0x546d0, 0x54704, 0x54792,
    0x547c5, 0x547da, 0x547e5, 0x547ea, 0x547fc, 0x54801, 0x54852, 0x54934,
    0x54975, 0x54982, 0x54a3c, 0x54aa0, 0x54afd, 0x54b02, 0x54be8, 0x54c04,
    0x54c22, 0x54d9c, 0x54e0d, 0x54e70, 0x54e7a, 0x54e81, 0x54ed0, 0x54ef5,
    0x54f02, 0x54f2c, 0x54f32, 0x54f81, 0x54fd2, 0x54ff8, 0x55002, 0x5514c,
    0x551b8, 0x55202, 0x5521c, 0x55222, 0x55264, 0x55270, 0x55281, 0x552d0,
    0x552e5, 0x55302, 0x553be, 0x553d2, 0x553dc, 0x553f2, 0x55584, 0x5558a,
    0x55594, 0x555aa, 0x555bc, 0x555ca, 0x555f4, 0x55602, 0x5560c, 0x55612,
    0x55618, 0x556da, 0x556f5, 0x55702, 0x5575c, 0x55785, 0x55792, 0x557ac,
    0x557b8, 0x5580a, 0x55838, 0x5584a, 0x55878, 0x5588a, 0x558b8, 0x55902,
    0x55938, 0x55942, 0x55978, 0x55982, 0x55ade, 0x55ae2, 0x55b56, 0x55b60,
    0x55b82, 0x55f1c, 0x55f5d, 0x55f64, 0x55f70, 0x55f81, 0x55fd0, 0x56002,
    0x6bd20, 0x6bd82, 0x6be38, 0x6be5a, 0x6bfe0, 0x6c007, 0x7c802, 0x7d370,
    0x7d382, 0x7d6d0, 0x7d802, 0x7d838, 0x7d89a, 0x7d8c0, 0x7d8ea, 0x7d8f4,
    0x7d8fa, 0x7d94e, 0x7d952, 0x7d9b8, 0x7d9c2, 0x7d9e8, 0x7d9f2, 0x7d9f8,
    0x7da02, 0x7da10, 0x7da1a, 0x7da28, 0x7da32, 0x7dd96, 0x7de18, 0x7de9a,
    0x7e9f5, 0x7ea06, 0x7ea82, 0x7ec80, 0x7ec92, 0x7ee40, 0x7ee7e, 0x7ee80,
    0x7ef82, 0x7efe6, 0x7f004, 0x7f085, 0x7f0d0, 0x7f104, 0x7f185, 0x7f298,
    0x7f2a5, 0x7f316, 0x7f31d, 0x7f326, 0x7f338, 0x7f345, 0x7f34e, 0x7f355,
    0x7f360, 0x7f382, 0x7f3a8, 0x7f3b2, 0x7f7e8, 0x7f7ff, 0x7f800, 0x7f80d,
    0x7f826, 0x7f82d, 0x7f85e, 0x7f865, 0x7f881, 0x7f8d5, 0x7f8e6, 0x7f8fd,
    0x7f90a, 0x7f9dd, 0x7f9f6, 0x7f9fd, 0x7fa06, 0x7fa0a, 0x7fadd, 0x7fae6,
    0x7faed, 0x7faf6, 0x7fafd, 0x7fb32, 0x7fdf8, 0x7fe12, 0x7fe40, 0x7fe52,
    0x7fe80, 0x7fe92, 0x7fec0, 0x7fed2, 0x7fee8, 0x7ff06, 0x7ff38, 0x7ff46,
    0x7ff78, 0x7ffcf, 0x7ffe6, 0x7fff0, 0x80002, 0x80060, 0x8006a, 0x80138,
    0x80142, 0x801d8, 0x801e2, 0x801f0, 0x801fa, 0x80270, 0x80282, 0x802f0,
    0x80402, 0x807d8, 0x80805, 0x80818, 0x80839, 0x809a0, 0x809be, 0x80a01,
    0x80bce, 0x80c51, 0x80c66, 0x80c78, 0x80c86, 0x80ce8, 0x80d06, 0x80d08,
    0x80e86, 0x80fec, 0x80ff0, 0x81402, 0x814e8, 0x81502, 0x81688, 0x81704,
    0x81709, 0x817e0, 0x81802, 0x81901, 0x81920, 0x8196a, 0x81a09, 0x81a12,
    0x81a51, 0x81a58, 0x81a82, 0x81bb4, 0x81bd8, 0x81c02, 0x81cf0, 0x81cfd,
    0x81d02, 0x81e20, 0x81e42, 0x81e85, 0x81e89, 0x81eb0, 0x82002, 0x824f0,
    0x82501, 0x82550, 0x82582, 0x826a0, 0x826c2, 0x827e0, 0x82802, 0x82940,
    0x82982, 0x82b20, 0x82b7d, 0x82b82, 0x82bd8, 0x82be2, 0x82c58, 0x82c62,
    0x82c98, 0x82ca2, 0x82cb0, 0x82cba, 0x82d10, 0x82d1a, 0x82d90, 0x82d9a,
    0x82dd0, 0x82dda, 0x82de8, 0x83002, 0x839b8, 0x83a02, 0x83ab0, 0x83b02,
    0x83b40, 0x83c02, 0x83c30, 0x83c3a, 0x83d88, 0x83d92, 0x83dd8, 0x84002,
    0x84030, 0x84042, 0x84048, 0x84052, 0x841b0, 0x841ba, 0x841c8, 0x841e2,
    0x841e8, 0x841fa, 0x842b0, 0x842bd, 0x842c1, 0x84302, 0x843be, 0x843c9,
    0x84402, 0x844f8, 0x84539, 0x84580, 0x84702, 0x84798, 0x847a2, 0x847b0,
    0x847d9, 0x84802, 0x848b1, 0x848e0, 0x848fd, 0x84902, 0x849d0, 0x849fd,
    0x84a00, 0x84c02, 0x84dc0, 0x84de1, 0x84df2, 0x84e01, 0x84e80, 0x84e91,
    0x85002, 0x8500c, 0x85020, 0x8502c, 0x85038, 0x85064, 0x85082, 0x850a0,
    0x850aa, 0x850c0, 0x850ca, 0x851b0, 0x851c4, 0x851d8, 0x851fc, 0x85201,
    0x85248, 0x85285, 0x852c8, 0x85302, 0x853e9, 0x853fd, 0x85402, 0x854e9,
    0x85500, 0x85602, 0x85646, 0x8564a, 0x8572c, 0x85738, 0x85759, 0x85785,
    0x857b8, 0x85802, 0x859b0, 0x859cd, 0x85a02, 0x85ab0, 0x85ac1, 0x85b02,
    0x85b98, 0x85bc1, 0x85c02, 0x85c90, 0x85ccd, 0x85ce8, 0x85d49, 0x85d80,
    0x86002, 0x86248, 0x86402, 0x86598, 0x86602, 0x86798, 0x867d1, 0x86802,
    0x86924, 0x86940, 0x86981, 0x869d0, 0x87301, 0x873f8, 0x87402, 0x87550,
    0x8755c, 0x8756d, 0x87570, 0x87582, 0x87590, 0x87802, 0x878e9, 0x8793a,
    0x87940, 0x87982, 0x87a34, 0x87a89, 0x87aad, 0x87ad0, 0x87b82, 0x87c14,
    0x87c35, 0x87c50, 0x87d82, 0x87e29, 0x87e60, 0x87f02, 0x87fb8, 0x88004,
    0x8801a, 0x881c4, 0x8823d, 0x88270, 0x88291, 0x88384, 0x8838a, 0x8839c,
    0x883aa, 0x883b0, 0x883fc, 0x8841a, 0x88584, 0x885dd, 0x885ef, 0x885f5,
    0x88614, 0x88618, 0x8866f, 0x88670, 0x88682, 0x88748, 0x88781, 0x887d0,
    0x88804, 0x8881a, 0x8893c, 0x889a8, 0x889b1, 0x88a05, 0x88a22, 0x88a2c,
    0x88a3a, 0x88a40, 0x88a82, 0x88b9c, 0x88ba5, 0x88bb2, 0x88bb8, 0x88c04,
    0x88c1a, 0x88d9c, 0x88e0a, 0x88e2d, 0x88e4c, 0x88e6d, 0x88e74, 0x88e81,
    0x88ed2, 0x88edd, 0x88ee2, 0x88eed, 0x88f00, 0x88f09, 0x88fa8, 0x89002,
    0x89090, 0x8909a, 0x89164, 0x891c5, 0x891f4, 0x891f8, 0x89402, 0x89438,
    0x89442, 0x89448, 0x89452, 0x89470, 0x8947a, 0x894f0, 0x894fa, 0x8954d,
    0x89550, 0x89582, 0x896fc, 0x89758, 0x89781, 0x897d0, 0x89804, 0x89820,
    0x8982a, 0x89868, 0x8987a, 0x89888, 0x8989a, 0x89948, 0x89952, 0x89988,
    0x89992, 0x899a0, 0x899aa, 0x899d0, 0x899dc, 0x899ea, 0x899f4, 0x89a28,
    0x89a3c, 0x89a48, 0x89a5c, 0x89a70, 0x89a82, 0x89a88, 0x89abc, 0x89ac0,
    0x89aea, 0x89b14, 0x89b20, 0x89b34, 0x89b68, 0x89b84, 0x89ba8, 0x8a002,
    0x8a1ac, 0x8a23a, 0x8a25d, 0x8a281, 0x8a2d5, 0x8a2e0, 0x8a2ed, 0x8a2f4,
    0x8a2fa, 0x8a310, 0x8a402, 0x8a584, 0x8a622, 0x8a635, 0x8a63a, 0x8a640,
    0x8a681, 0x8a6d0, 0x8ac02, 0x8ad7c, 0x8adb0, 0x8adc4, 0x8ae0d, 0x8aec2,
    0x8aee4, 0x8aef0, 0x8b002, 0x8b184, 0x8b20d, 0x8b222, 0x8b228, 0x8b281,
    0x8b2d0, 0x8b305, 0x8b368, 0x8b402, 0x8b55c, 0x8b5c2, 0x8b5cd, 0x8b5d0,
    0x8b601, 0x8b650, 0x8b802, 0x8b8d8, 0x8b8ec, 0x8b960, 0x8b981, 0x8b9e5,
    0x8b9fe, 0x8ba02, 0x8ba38, 0x8c002, 0x8c164, 0x8c1dd, 0x8c1e0, 0x8c502,
    0x8c701, 0x8c798, 0x8c7fa, 0x8c838, 0x8c84a, 0x8c850, 0x8c862, 0x8c8a0,
    0x8c8aa, 0x8c8b8, 0x8c8c2, 0x8c984, 0x8c9b0, 0x8c9bc, 0x8c9c8, 0x8c9dc,
    0x8c9fa, 0x8ca04, 0x8ca0a, 0x8ca14, 0x8ca25, 0x8ca38, 0x8ca81, 0x8cad0,
    0x8cd02, 0x8cd40, 0x8cd52, 0x8ce8c, 0x8cec0, 0x8ced4, 0x8cf0a, 0x8cf15,
    0x8cf1a, 0x8cf24, 0x8cf28, 0x8d002, 0x8d00c, 0x8d05a, 0x8d19c, 0x8d1d2,
    0x8d1dc, 0x8d1fd, 0x8d23c, 0x8d240, 0x8d282, 0x8d28c, 0x8d2e2, 0x8d454,
    0x8d4d5, 0x8d4ea, 0x8d4f5, 0x8d518, 0x8d582, 0x8d7c8, 0x8e002, 0x8e048,
    0x8e052, 0x8e17c, 0x8e1b8, 0x8e1c4, 0x8e202, 0x8e20d, 0x8e230, 0x8e281,
    0x8e368, 0x8e385, 0x8e392, 0x8e480, 0x8e494, 0x8e540, 0x8e54c, 0x8e5b8,
    0x8e802, 0x8e838, 0x8e842, 0x8e850, 0x8e85a, 0x8e98c, 0x8e9b8, 0x8e9d4,
    0x8e9d8, 0x8e9e4, 0x8e9f0, 0x8e9fc, 0x8ea32, 0x8ea3c, 0x8ea40, 0x8ea81,
    0x8ead0, 0x8eb02, 0x8eb30, 0x8eb3a, 0x8eb48, 0x8eb52, 0x8ec54, 0x8ec78,
    0x8ec84, 0x8ec90, 0x8ec9c, 0x8ecc2, 0x8ecc8, 0x8ed01, 0x8ed50, 0x8f702,
    0x8f79c, 0x8f7bd, 0x8f7c8, 0x8fd82, 0x8fd88, 0x8fe01, 0x8feae, 0x8ff90,
    0x8fffd, 0x90002, 0x91cd0, 0x92001, 0x92378, 0x92385, 0x923a8, 0x92402,
    0x92a20, 0x97c82, 0x97f8d, 0x97f98, 0x98002, 0x9a178, 0x9a187, 0x9a1c8,
    0xa2002, 0xa3238, 0xb4002, 0xb51c8, 0xb5202, 0xb52f8, 0xb5301, 0xb5350,
    0xb5375, 0xb5382, 0xb55f8, 0xb5601, 0xb5650, 0xb5682, 0xb5770, 0xb5784,
    0xb57ad, 0xb57b0, 0xb5802, 0xb5984, 0xb59bd, 0xb59e6, 0xb5a02, 0xb5a25,
    0xb5a2e, 0xb5a30, 0xb5a81, 0xb5ad0, 0xb5ad9, 0xb5b10, 0xb5b1a, 0xb5bc0,
    0xb5bea, 0xb5c80, 0xb7202, 0xb7401, 0xb74bd, 0xb74d8, 0xb7802, 0xb7a58,
    0xb7a7c, 0xb7a82, 0xb7a8c, 0xb7c40, 0xb7c7c, 0xb7c9a, 0xb7d00, 0xb7f02,
    0xb7f15, 0xb7f1a, 0xb7f24, 0xb7f28, 0xb7f84, 0xb7f90, 0xb8002, 0xc3fc0,
    0xc4002, 0xc66b0, 0xc6802, 0xc6848, 0xd7f82, 0xd7fa0, 0xd7faa, 0xd7fe0,
    0xd7fea, 0xd7ff8, 0xd8002, 0xd8918, 0xd8a82, 0xd8a98, 0xd8b22, 0xd8b40,
    0xd8b82, 0xd97e0, 0xde002, 0xde358, 0xde382, 0xde3e8, 0xde402, 0xde448,
    0xde482, 0xde4d0, 0xde4e6, 0xde4ec, 0xde4fd, 0xde507, 0xde520, 0xe7804,
    0xe7970, 0xe7984, 0xe7a38, 0xe7a86, 0xe7e20, 0xe8006, 0xe87b0, 0xe8806,
    0xe8938, 0xe894e, 0xe8b2c, 0xe8b56, 0xe8b6c, 0xe8b9f, 0xe8bdc, 0xe8c1e,
    0xe8c2c, 0xe8c66, 0xe8d54, 0xe8d76, 0xe8f58, 0xe9006, 0xe9214, 0xe922e,
    0xe9230, 0xe9701, 0xe97a0, 0xe9806, 0xe9ab8, 0xe9b01, 0xe9bc8, 0xea002,
    0xea2a8, 0xea2b2, 0xea4e8, 0xea4f2, 0xea500, 0xea512, 0xea518, 0xea52a,
    0xea538, 0xea54a, 0xea568, 0xea572, 0xea5d0, 0xea5da, 0xea5e0, 0xea5ea,
    0xea620, 0xea62a, 0xea830, 0xea83a, 0xea858, 0xea86a, 0xea8a8, 0xea8b2,
    0xea8e8, 0xea8f2, 0xea9d0, 0xea9da, 0xea9f8, 0xeaa02, 0xeaa28, 0xeaa32,
    0xeaa38, 0xeaa52, 0xeaa88, 0xeaa92, 0xeb530, 0xeb542, 0xeb60e, 0xeb612,
    0xeb6de, 0xeb6e2, 0xeb7de, 0xeb7e2, 0xeb8ae, 0xeb8b2, 0xeb9ae, 0xeb9b2,
    0xeba7e, 0xeba82, 0xebb7e, 0xebb82, 0xebc4e, 0xebc52, 0xebd4e, 0xebd52,
    0xebe1e, 0xebe22, 0xebe60, 0xebe71, 0xec006, 0xed004, 0xed1be, 0xed1dc,
    0xed36e, 0xed3ac, 0xed3b6, 0xed424, 0xed42e, 0xed43d, 0xed460, 0xed4dc,
    0xed500, 0xed50c, 0xed580, 0xef802, 0xef8f8, 0xf0004, 0xf0038, 0xf0044,
    0xf00c8, 0xf00dc, 0xf0110, 0xf011c, 0xf0128, 0xf0134, 0xf0158, 0xf0802,
    0xf0968, 0xf0984, 0xf09ba, 0xf09f0, 0xf0a01, 0xf0a50, 0xf0a72, 0xf0a7e,
    0xf0a80, 0xf1482, 0xf1574, 0xf1578, 0xf1602, 0xf1764, 0xf1781, 0xf17d0,
    0xf17fe, 0xf1800, 0xf3f02, 0xf3f38, 0xf3f42, 0xf3f60, 0xf3f6a, 0xf3f78,
    0xf3f82, 0xf3ff8, 0xf4002, 0xf4628, 0xf4639, 0xf4684, 0xf46b8, 0xf4802,
    0xf4a24, 0xf4a5a, 0xf4a60, 0xf4a81, 0xf4ad0, 0xf4af5, 0xf4b00, 0xf6389,
    0xf6566, 0xf6569, 0xf6586, 0xf6589, 0xf65a8, 0xf6809, 0xf6976, 0xf6979,
    0xf69f0, 0xf7002, 0xf7020, 0xf702a, 0xf7100, 0xf710a, 0xf7118, 0xf7122,
    0xf7128, 0xf713a, 0xf7140, 0xf714a, 0xf7198, 0xf71a2, 0xf71c0, 0xf71ca,
    0xf71d0, 0xf71da, 0xf71e0, 0xf7212, 0xf7218, 0xf723a, 0xf7240, 0xf724a,
    0xf7250, 0xf725a, 0xf7260, 0xf726a, 0xf7280, 0xf728a, 0xf7298, 0xf72a2,
    0xf72a8, 0xf72ba, 0xf72c0, 0xf72ca, 0xf72d0, 0xf72da, 0xf72e0, 0xf72ea,
    0xf72f0, 0xf72fa, 0xf7300, 0xf730a, 0xf7318, 0xf7322, 0xf7328, 0xf733a,
    0xf7358, 0xf7362, 0xf7398, 0xf73a2, 0xf73c0, 0xf73ca, 0xf73e8, 0xf73f2,
    0xf73f8, 0xf7402, 0xf7450, 0xf745a, 0xf74e0, 0xf750a, 0xf7520, 0xf752a,
    0xf7550, 0xf755a, 0xf75e0, 0xf7786, 0xf7790, 0xf8006, 0xf8160, 0xf8186,
    0xf84a0, 0xf8506, 0xf8578, 0xf858e, 0xf8600, 0xf860e, 0xf8680, 0xf868e,
    0xf87b0, 0xf8801, 0xf886e, 0xf8d70, 0xf8f36, 0xf9018, 0xf9086, 0xf91e0,
    0xf9206, 0xf9248, 0xf9286, 0xf9290, 0xf9306, 0xf9330, 0xf9806, 0xfb6c0,
    0xfb6ee, 0xfb768, 0xfb786, 0xfb7e8, 0xfb806, 0xfbba0, 0xfbc06, 0xfbec8,
    0xfbf06, 0xfbf60, 0xfbf86, 0xfbf88, 0xfc006, 0xfc060, 0xfc086, 0xfc240,
    0xfc286, 0xfc2d0, 0xfc306, 0xfc440, 0xfc486, 0xfc570, 0xfc586, 0xfc590,
    0xfc806, 0xfd2a0, 0xfd306, 0xfd370, 0xfd386, 0xfd3a8, 0xfd3c6, 0xfd3e8,
    0xfd406, 0xfd438, 0xfd486, 0xfd568, 0xfd586, 0xfd5d8, 0xfd606, 0xfd630,
    0xfd686, 0xfd6d0, 0xfd706, 0xfd740, 0xfd786, 0xfd7b8, 0xfd806, 0xfdc98,
    0xfdca6, 0xfde58, 0xfdf81, 0xfdfd0, 0x100002, 0x153700, 0x153802, 0x15b9c8,
    0x15ba02, 0x15c0f0, 0x15c102, 0x167510, 0x167582, 0x175f08, 0x17c002, 0x17d0f0,
    0x180002, 0x189a58, 0x70000f, 0x700010, 0x700107, 0x700400, 0x700804, 0x700f80,
    0x780007, 0x7ffff0, 0x800007, 0x87fff0,
};

inline constexpr uint32_t unicode_white_space[] = {
    0x9, 0xa, 0xb, 0xc, 0xd, 0x20, 0x85, 0xa0,
    0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006,
    0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f,
    0x3000,
};

inline constexpr uint32_t unicode_lower_from[] = {
    0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a,
    0x4b, 0x4c, 0x4d, 0x4e, 0x4f, 0x50, 0x51, 0x52, 0x53, 0x54,
    0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0xc0, 0xc1, 0xc2, 0xc3,
    0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd,
    0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd8,
    0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0x100, 0x102, 0x104, 0x106,
    0x108, 0x10a, 0x10c, 0x10e, 0x110, 0x112, 0x114, 0x116, 0x118, 0x11a,
    0x11c, 0x11e, 0x120, 0x122, 0x124, 0x126, 0x128, 0x12a, 0x12c, 0x12e,
    0x130, 0x132, 0x134, 0x136, 0x139, 0x13b, 0x13d, 0x13f, 0x141, 0x143,
    0x145, 0x147, 0x14a, 0x14c, 0x14e, 0x150, 0x152, 0x154, 0x156, 0x158,
    0x15a, 0x15c, 0x15e, 0x160, 0x162, 0x164, 0x166, 0x168, 0x16a, 0x16c,
    0x16e, 0x170, 0x172, 0x174, 0x176, 0x178, 0x179, 0x17b, 0x17d, 0x181,
    0x182, 0x184, 0x186, 0x187, 0x189, 0x18a, 0x18b, 0x18e, 0x18f, 0x190,
    0x191, 0x193, 0x194, 0x196, 0x197, 0x198, 0x19c, 0x19d, 0x19f, 0x1a0,
    0x1a2, 0x1a4, 0x1a6, 0x1a7, 0x1a9, 0x1ac, 0x1ae, 0x1af, 0x1b1, 0x1b2,
    0x1b3, 0x1b5, 0x1b7, 0x1b8, 0x1bc, 0x1c4, 0x1c5, 0x1c7, 0x1c8, 0x1ca,
    0x1cb, 0x1cd, 0x1cf, 0x1d1, 0x1d3, 0x1d5, 0x1d7, 0x1d9, 0x1db, 0x1de,
    0x1e0, 0x1e2, 0x1e4, 0x1e6, 0x1e8, 0x1ea, 0x1ec, 0x1ee, 0x1f1, 0x1f2,
    0x1f4, 0x1f6, 0x1f7, 0x1f8, 0x1fa, 0x1fc, 0x1fe, 0x200, 0x202, 0x204,
    0x206, 0x208, 0x20a, 0x20c, 0x20e, 0x210, 0x212, 0x214, 0x216, 0x218,
    0x21a, 0x21c, 0x21e, 0x220, 0x222, 0x224, 0x226, 0x228, 0x22a, 0x22c,
    0x22e, 0x230, 0x232, 0x23a, 0x23b, 0x23d, 0x23e, 0x241, 0x243, 0x244,
    0x245, 0x246, 0x248, 0x24a, 0x24c, 0x24e, 0x370, 0x372, 0x376, 0x37f,
    0x386, 0x388, 0x389, 0x38a, 0x38c, 0x38e, 0x38f, 0x391, 0x392, 0x393,
    0x394, 0x395, 0x396, 0x397, 0x398, 0x399, 0x39a, 0x39b, 0x39c, 0x39d,
    0x39e, 0x39f, 0x3a0, 0x3a1, 0x3a3, 0x3a4, 0x3a5, 0x3a6, 0x3a7, 0x3a8,
    0x3a9, 0x3aa, 0x3ab, 0x3cf, 0x3d8, 0x3da, 0x3dc, 0x3de, 0x3e0, 0x3e2,
    0x3e4, 0x3e6, 0x3e8, 0x3ea, 0x3ec, 0x3ee, 0x3f4, 0x3f7, 0x3f9, 0x3fa,
    0x3fd, 0x3fe, 0x3ff, 0x400, 0x401, 0x402, 0x403, 0x404, 0x405, 0x406,
    0x407, 0x408, 0x409, 0x40a, 0x40b, 0x40c, 0x40d, 0x40e, 0x40f, 0x410,
    0x411, 0x412, 0x413, 0x414, 0x415, 0x416, 0x417, 0x418, 0x419, 0x41a,
    0x41b, 0x41c, 0x41d, 0x41e, 0x41f, 0x420, 0x421, 0x422, 0x423, 0x424,
    0x425, 0x426, 0x427, 0x428, 0x429, 0x42a, 0x42b, 0x42c, 0x42d, 0x42e,
    0x42f, 0x460, 0x462, 0x464, 0x466, 0x468, 0x46a, 0x46c, 0x46e, 0x470,
    0x472, 0x474, 0x476, 0x478, 0x47a, 0x47c, 0x47e, 0x480, 0x48a, 0x48c,
    0x48e, 0x490, 0x492, 0x494, 0x496, 0x498, 0x49a, 0x49c, 0x49e, 0x4a0,
    0x4a2, 0x4a4, 0x4a6, 0x4a8, 0x4aa, 0x4ac, 0x4ae, 0x4b0, 0x4b2, 0x4b4,
    0x4b6, 0x4b8, 0x4ba, 0x4bc, 0x4be, 0x4c0, 0x4c1, 0x4c3, 0x4c5, 0x4c7,
    0x4c9, 0x4cb, 0x4cd, 0x4d0, 0x4d2, 0x4d4, 0x4d6, 0x4d8, 0x4da, 0x4dc,
    0x4de, 0x4e0, 0x4e2, 0x4e4, 0x4e6, 0x4e8, 0x4ea, 0x4ec, 0x4ee, 0x4f0,
    0x4f2, 0x4f4, 0x4f6, 0x4f8, 0x4fa, 0x4fc, 0x4fe, 0x500, 0x502, 0x504,
    0x506, 0x508, 0x50a, 0x50c, 0x50e, 0x510, 0x512, 0x514, 0x516, 0x518,
    0x51a, 0x51c, 0x51e, 0x520, 0x522, 0x524, 0x526, 0x528, 0x52a, 0x52c,
    0x52e, 0x531, 0x532, 0x533, 0x534, 0x535, 0x536, 0x537, 0x538, 0x539,
    0x53a, 0x53b, 0x53c, 0x53d, 0x53e, 0x53f, 0x540, 0x541, 0x542, 0x543,
    0x544, 0x545, 0x546, 0x547, 0x548, 0x549, 0x54a, 0x54b, 0x54c, 0x54d,
    0x54e, 0x54f, 0x550, 0x551, 0x552, 0x553, 0x554, 0x555, 0x556, 0x10a0,
    0x10a1, 0x10a2, 0x10a3, 0x10a4, 0x10a5, 0x10a6, 0x10a7, 0x10a8, 0x10a9, 0x10aa,
    0x10ab, 0x10ac, 0x10ad, 0x10ae, 0x10af, 0x10b0, 0x10b1, 0x10b2, 0x10b3, 0x10b4,
    0x10b5, 0x10b6, 0x10b7, 0x10b8, 0x10b9, 0x10ba, 0x10bb, 0x10bc, 0x10bd, 0x10be,
    0x10bf, 0x10c0, 0x10c1, 0x10c2, 0x10c3, 0x10c4, 0x10c5, 0x10c7, 0x10cd, 0x13a0,
    0x13a1, 0x13a2, 0x13a3, 0x13a4, 0x13a5, 0x13a6, 0x13a7, 0x13a8, 0x13a9, 0x13aa,
    0x13ab, 0x13ac, 0x13ad, 0x13ae, 0x13af, 0x13b0, 0x13b1, 0x13b2, 0x13b3, 0x13b4,
    0x13b5, 0x13b6, 0x13b7, 0x13b8, 0x13b9, 0x13ba, 0x13bb, 0x13bc, 0x13bd, 0x13be,
    0x13bf, 0x13c0, 0x13c1, 0x13c2, 0x13c3, 0x13c4, 0x13c5, 0x13c6, 0x13c7, 0x13c8,
    0x13c9, 0x13ca, 0x13cb, 0x13cc, 0x13cd, 0x13ce, 0x13cf, 0x13d0, 0x13d1, 0x13d2,
    0x13d3, 0x13d4, 0x13d5, 0x13d6, 0x13d7, 0x13d8, 0x13d9, 0x13da, 0x13db, 0x13dc,
    0x13dd, 0x13de, 0x13df, 0x13e0, 0x13e1, 0x13e2, 0x13e3, 0x13e4, 0x13e5, 0x13e6,
    0x13e7, 0x13e8, 0x13e9, 0x13ea, 0x13eb, 0x13ec, 0x13ed, 0x13ee, 0x13ef, 0x13f0,
    0x13f1, 0x13f2, 0x13f3, 0x13f4, 0x13f5, 0x1c90, 0x1c91, 0x1c92, 0x1c93, 0x1c94,
    0x1c95, 0x1c96, 0x1c97, 0x1c98, 0x1c99, 0x1c9a, 0x1c9b, 0x1c9c, 0x1c9d, 0x1c9e,
    0x1c9f, 0x1ca0, 0x1ca1, 0x1ca2, 0x1ca3, 0x1ca4, 0x1ca5, 0x1ca6, 0x1ca7, 0x1ca8,
    0x1ca9, 0x1caa, 0x1cab, 0x1cac, 0x1cad, 0x1cae, 0x1caf, 0x1cb0, 0x1cb1, 0x1cb2,
    0x1cb3, 0x1cb4, 0x1cb5, 0x1cb6, 0x1cb7, 0x1cb8, 0x1cb9, 0x1cba, 0x1cbd, 0x1cbe,
    0x1cbf, 0x1e00, 0x1e02, 0x1e04, 0x1e06, 0x1e08, 0x1e0a, 0x1e0c, 0x1e0e, 0x1e10,
    0x1e12, 0x1e14, 0x1e16, 0x1e18, 0x1e1a, 0x1e1c, 0x1e1e, 0x1e20, 0x1e22, 0x1e24,
    0x1e26, 0x1e28, 0x1e2a, 0x1e2c, 0x1e2e, 0x1e30, 0x1e32, 0x1e34, 0x1e36, 0x1e38,
    0x1e3a, 0x1e3c, 0x1e3e, 0x1e40, 0x1e42, 0x1e44, 0x1e46, 0x1e48, 0x1e4a, 0x1e4c,
    0x1e4e, 0x1e50, 0x1e52, 0x1e54, 0x1e56, 0x1e58, 0x1e5a, 0x1e5c, 0x1e5e, 0x1e60,
    0x1e62, 0x1e64, 0x1e66, 0x1e68, 0x1e6a, 0x1e6c, 0x1e6e, 0x1e70, 0x1e72, 0x1e74,
    0x1e76, 0x1e78, 0x1e7a, 0x1e7c, 0x1e7e, 0x1e80, 0x1e82, 0x1e84, 0x1e86, 0x1e88,
    0x1e8a, 0x1e8c, 0x1e8e, 0x1e90, 0x1e92, 0x1e94, 0x1e9e, 0x1ea0, 0x1ea2, 0x1ea4,
    0x1ea6, 0x1ea8, 0x1eaa, 0x1eac, 0x1eae, 0x1eb0, 0x1eb2, 0x1eb4, 0x1eb6, 0x1eb8,
    0x1eba, 0x1ebc, 0x1ebe, 0x1ec0, 0x1ec2, 0x1ec4, 0x1ec6, 0x1ec8, 0x1eca, 0x1ecc,
    0x1ece, 0x1ed0, 0x1ed2, 0x1ed4, 0x1ed6, 0x1ed8, 0x1eda, 0x1edc, 0x1ede, 0x1ee0,
    0x1ee2, 0x1ee4, 0x1ee6, 0x1ee8, 0x1eea, 0x1eec, 0x1eee, 0x1ef0, 0x1ef2, 0x1ef4,
    0x1ef6, 0x1ef8, 0x1efa, 0x1efc, 0x1efe, 0x1f08, 0x1f09, 0x1f0a, 0x1f0b, 0x1f0c,
    0x1f0d, 0x1f0e, 0x1f0f, 0x1f18, 0x1f19, 0x1f1a, 0x1f1b, 0x1f1c, 0x1f1d, 0x1f28,
    0x1f29, 0x1f2a, 0x1f2b, 0x1f2c, 0x1f2d, 0x1f2e, 0x1f2f, 0x1f38, 0x1f39, 0x1f3a,
    0x1f3b, 0x1f3c, 0x1f3d, 0x1f3e, 0x1f3f, 0x1f48, 0x1f49, 0x1f4a, 0x1f4b, 0x1f4c,
    0x1f4d, 0x1f59, 0x1f5b, 0x1f5d, 0x1f5f, 0x1f68, 0x1f69, 0x1f6a, 0x1f6b, 0x1f6c,
    0x1f6d, 0x1f6e, 0x1f6f, 0x1f88, 0x1f89, 0x1f8a, 0x1f8b, 0x1f8c, 0x1f8d, 0x1f8e,
    0x1f8f, 0x1f98, 0x1f99, 0x1f9a, 0x1f9b, 0x1f9c, 0x1f9d, 0x1f9e, 0x1f9f, 0x1fa8,
    0x1fa9, 0x1faa, 0x1fab, 0x1fac, 0x1fad, 0x1fae, 0x1faf, 0x1fb8, 0x1fb9, 0x1fba,
    0x1fbb, 0x1fbc, 0x1fc8, 0x1fc9, 0x1fca, 0x1fcb, 0x1fcc, 0x1fd8, 0x1fd9, 0x1fda,
    0x1fdb, 0x1fe8, 0x1fe9, 0x1fea, 0x1feb, 0x1fec, 0x1ff8, 0x1ff9, 0x1ffa, 0x1ffb,
    0x1ffc, 0x2126, 0x212a, 0x212b, 0x2132, 0x2160, 0x2161, 0x2162, 0x2163, 0x2164,
    0x2165, 0x2166, 0x2167, 0x2168, 0x2169, 0x216a, 0x216b, 0x216c, 0x216d, 0x216e,
    0x216f, 0x2183, 0x24b6, 0x24b7, 0x24b8, 0x24b9, 0x24ba, 0x24bb, 0x24bc, 0x24bd,
    0x24be, 0x24bf, 0x24c0, 0x24c1, 0x24c2, 0x24c3, 0x24c4, 0x24c5, 0x24c6, 0x24c7,
    0x24c8, 0x24c9, 0x24ca, 0x24cb, 0x24cc, 0x24cd, 0x24ce, 0x24cf, 0x2c00, 0x2c01,
    0x2c02, 0x2c03, 0x2c04, 0x2c05, 0x2c06, 0x2c07, 0x2c08, 0x2c09, 0x2c0a, 0x2c0b,
    0x2c0c, 0x2c0d, 0x2c0e, 0x2c0f, 0x2c10, 0x2c11, 0x2c12, 0x2c13, 0x2c14, 0x2c15,
    0x2c16, 0x2c17, 0x2c18, 0x2c19, 0x2c1a, 0x2c1b, 0x2c1c, 0x2c1d, 0x2c1e, 0x2c1f,
    0x2c20, 0x2c21, 0x2c22, 0x2c23, 0x2c24, 0x2c25, 0x2c26, 0x2c27, 0x2c28, 0x2c29,
    0x2c2a, 0x2c2b, 0x2c2c, 0x2c2d, 0x2c2e, 0x2c2f, 0x2c60, 0x2c62, 0x2c63, 0x2c64,
    0x2c67, 0x2c69, 0x2c6b, 0x2c6d, 0x2c6e, 0x2c6f, 0x2c70, 0x2c72, 0x2c75, 0x2c7e,
    0x2c7f, 0x2c80, 0x2c82, 0x2c84, 0x2c86, 0x2c88, 0x2c8a, 0x2c8c, 0x2c8e, 0x2c90,
    0x2c92, 0x2c94, 0x2c96, 0x2c98, 0x2c9a, 0x2c9c, 0x2c9e, 0x2ca0, 0x2ca2, 0x2ca4,
    0x2ca6, 0x2ca8, 0x2caa, 0x2cac, 0x2cae, 0x2cb0, 0x2cb2, 0x2cb4, 0x2cb6, 0x2cb8,
    0x2cba, 0x2cbc, 0x2cbe, 0x2cc0, 0x2cc2, 0x2cc4, 0x2cc6, 0x2cc8, 0x2cca, 0x2ccc,
    0x2cce, 0x2cd0, 0x2cd2, 0x2cd4, 0x2cd6, 0x2cd8, 0x2cda, 0x2cdc, 0x2cde, 0x2ce0,
    0x2ce2, 0x2ceb, 0x2ced, 0x2cf2, 0xa640, 0xa642, 0xa644, 0xa646, 0xa648, 0xa64a,
    0xa64c, 0xa64e, 0xa650, 0xa652, 0xa654, 0xa656, 0xa658, 0xa65a, 0xa65c, 0xa65e,
    0xa660, 0xa662, 0xa664, 0xa666, 0xa668, 0xa66a, 0xa66c, 0xa680, 0xa682, 0xa684,
    0xa686, 0xa688, 0xa68a, 0xa68c, 0xa68e, 0xa690, 0xa692, 0xa694, 0xa696, 0xa698,
    0xa69a, 0xa722, 0xa724, 0xa726, 0xa728, 0xa72a, 0xa72c, 0xa72e, 0xa732, 0xa734,
    0xa736, 0xa738, 0xa73a, 0xa73c, 0xa73e, 0xa740, 0xa742, 0xa744, 0xa746, 0xa748,
    0xa74a, 0xa74c, 0xa74e, 0xa750, 0xa752, 0xa754, 0xa756, 0xa758, 0xa75a, 0xa75c,
    0xa75e, 0xa760, 0xa762, 0xa764, 0xa766, 0xa768, 0xa76a, 0xa76c, 0xa76e, 0xa779,
    0xa77b, 0xa77d, 0xa77e, 0xa780, 0xa782, 0xa784, 0xa786, 0xa78b, 0xa78d, 0xa790,
    0xa792, 0xa796, 0xa798, 0xa79a, 0xa79c, 0xa79e, 0xa7a0, 0xa7a2, 0xa7a4, 0xa7a6,
    0xa7a8, 0xa7aa, 0xa7ab, 0xa7ac, 0xa7ad, 0xa7ae, 0xa7b0, 0xa7b1, 0xa7b2, 0xa7b3,
    0xa7b4, 0xa7b6, 0xa7b8, 0xa7ba, 0xa7bc, 0xa7be, 0xa7c0, 0xa7c2, 0xa7c4, 0xa7c5,
    0xa7c6, 0xa7c7, 0xa7c9, 0xa7d0, 0xa7d6, 0xa7d8, 0xa7f5, 0xff21, 0xff22, 0xff23,
    0xff24, 0xff25, 0xff26, 0xff27, 0xff28, 0xff29, 0xff2a, 0xff2b, 0xff2c, 0xff2d,
    0xff2e, 0xff2f, 0xff30, 0xff31, 0xff32, 0xff33, 0xff34, 0xff35, 0xff36, 0xff37,
    0xff38, 0xff39, 0xff3a, 0x10400, 0x10401, 0x10402, 0x10403, 0x10404, 0x10405, 0x10406,
    0x10407, 0x10408, 0x10409, 0x1040a, 0x1040b, 0x1040c, 0x1040d, 0x1040e, 0x1040f, 0x10410,
    0x10411, 0x10412, 0x10413, 0x10414, 0x10415, 0x10416, 0x10417, 0x10418, 0x10419, 0x1041a,
    0x1041b, 0x1041c, 0x1041d, 0x1041e, 0x1041f, 0x10420, 0x10421, 0x10422, 0x10423, 0x10424,
    0x10425, 0x10426, 0x10427, 0x104b0, 0x104b1, 0x104b2, 0x104b3, 0x104b4, 0x104b5, 0x104b6,
    0x104b7, 0x104b8, 0x104b9, 0x104ba, 0x104bb, 0x104bc, 0x104bd, 0x104be, 0x104bf, 0x104c0,
    0x104c1, 0x104c2, 0x104c3, 0x104c4, 0x104c5, 0x104c6, 0x104c7, 0x104c8, 0x104c9, 0x104ca,
    0x104cb, 0x104cc, 0x104cd, 0x104ce, 0x104cf, 0x104d0, 0x104d1, 0x104d2, 0x104d3, 0x10570,
    0x10571, 0x10572, 0x10573, 0x10574, 0x10575, 0x10576, 0x10577, 0x10578, 0x10579, 0x1057a,
    0x1057c, 0x1057d, 0x1057e, 0x1057f, 0x10580, 0x10581, 0x10582, 0x10583, 0x10584, 0x10585,
    0x10586, 0x10587, 0x10588, 0x10589, 0x1058a, 0x1058c, 0x1058d, 0x1058e, 0x1058f, 0x10590,
    0x10591, 0x10592, 0x10594, 0x10595, 0x10c80, 0x10c81, 0x10c82, 0x10c83, 0x10c84, 0x10c85,
    0x10c86, 0x10c87, 0x10c88, 0x10c89, 0x10c8a, 0x10c8b, 0x10c8c, 0x10c8d, 0x10c8e, 0x10c8f,
    0x10c90, 0x10c91, 0x10c92, 0x10c93, 0x10c94, 0x10c95, 0x10c96, 0x10c97, 0x10c98, 0x10c99,
    0x10c9a, 0x10c9b, 0x10c9c, 0x10c9d, 0x10c9e, 0x10c9f, 0x10ca0, 0x10ca1, 0x10ca2, 0x10ca3,
    0x10ca4, 0x10ca5, 0x10ca6, 0x10ca7, 0x10ca8, 0x10ca9, 0x10caa, 0x10cab, 0x10cac, 0x10cad,
    0x10cae, 0x10caf, 0x10cb0, 0x10cb1, 0x10cb2, 0x118a0, 0x118a1, 0x118a2, 0x118a3, 0x118a4,
    0x118a5, 0x118a6, 0x118a7, 0x118a8, 0x118a9, 0x118aa, 0x118ab, 0x118ac, 0x118ad, 0x118ae,
    0x118af, 0x118b0, 0x118b1, 0x118b2, 0x118b3, 0x118b4, 0x118b5, 0x118b6, 0x118b7, 0x118b8,
    0x118b9, 0x118ba, 0x118bb, 0x118bc, 0x118bd, 0x118be, 0x118bf, 0x16e40, 0x16e41, 0x16e42,
    0x16e43, 0x16e44, 0x16e45, 0x16e46, 0x16e47, 0x16e48, 0x16e49, 0x16e4a, 0x16e4b, 0x16e4c,
    0x16e4d, 0x16e4e, 0x16e4f, 0x16e50, 0x16e51, 0x16e52, 0x16e53, 0x16e54, 0x16e55, 0x16e56,
    0x16e57, 0x16e58, 0x16e59, 0x16e5a, 0x16e5b, 0x16e5c, 0x16e5d, 0x16e5e, 0x16e5f, 0x1e900,
    0x1e901, 0x1e902, 0x1e903, 0x1e904, 0x1e905, 0x1e906, 0x1e907, 0x1e908, 0x1e909, 0x1e90a,
    0x1e90b, 0x1e90c, 0x1e90d, 0x1e90e, 0x1e90f, 0x1e910, 0x1e911, 0x1e912, 0x1e913, 0x1e914,
    0x1e915, 0x1e916, 0x1e917, 0x1e918, 0x1e919, 0x1e91a, 0x1e91b, 0x1e91c, 0x1e91d, 0x1e91e,
    0x1e91f, 0x1e920, 0x1e921,
};

inline constexpr uint32_t unicode_lower_to[] = {
    0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a,
    0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0x73, 0x74,
    0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0xe0, 0xe1, 0xe2, 0xe3,
    0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xeb, 0xec, 0xed,
    0xee, 0xef, 0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf8,
    0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0x101, 0x103, 0x105, 0x107,
    0x109, 0x10b, 0x10d, 0x10f, 0x111, 0x113, 0x115, 0x117, 0x119, 0x11b,
    0x11d, 0x11f, 0x121, 0x123, 0x125, 0x127, 0x129, 0x12b, 0x12d, 0x12f,
    0x69, 0x133, 0x135, 0x137, 0x13a, 0x13c, 0x13e, 0x140, 0x142, 0x144,
    0x146, 0x148, 0x14b, 0x14d, 0x14f, 0x151, 0x153, 0x155, 0x157, 0x159,
    0x15b, 0x15d, 0x15f, 0x161, 0x163, 0x165, 0x167, 0x169, 0x16b, 0x16d,
    0x16f, 0x171, 0x173, 0x175, 0x177, 0xff, 0x17a, 0x17c, 0x17e, 0x253,
    0x183, 0x185, 0x254, 0x188, 0x256, 0x257, 0x18c, 0x1dd, 0x259, 0x25b,
    0x192, 0x260, 0x263, 0x269, 0x268, 0x199, 0x26f, 0x272, 0x275, 0x1a1,
    0x1a3, 0x1a5, 0x280, 0x1a8, 0x283, 0x1ad, 0x288, 0x1b0, 0x28a, 0x28b,
    0x1b4, 0x1b6, 0x292, 0x1b9, 0x1bd, 0x1c6, 0x1c6, 0x1c9, 0x1c9, 0x1cc,
    0x1cc, 0x1ce, 0x1d0, 0x1d2, 0x1d4, 0x1d6, 0x1d8, 0x1da, 0x1dc, 0x1df,
    0x1e1, 0x1e3, 0x1e5, 0x1e7, 0x1e9, 0x1eb, 0x1ed, 0x1ef, 0x1f3, 0x1f3,
    0x1f5, 0x195, 0x1bf, 0x1f9, 0x1fb, 0x1fd, 0x1ff, 0x201, 0x203, 0x205,
    0x207, 0x209, 0x20b, 0x20d, 0x20f, 0x211, 0x213, 0x215, 0x217, 0x219,
    0x21b, 0x21d, 0x21f, 0x19e, 0x223, 0x225, 0x227, 0x229, 0x22b, 0x22d,
    0x22f, 0x231, 0x233, 0x2c65, 0x23c, 0x19a, 0x2c66, 0x242, 0x180, 0x289,
    0x28c, 0x247, 0x249, 0x24b, 0x24d, 0x24f, 0x371, 0x373, 0x377, 0x3f3,
    0x3ac, 0x3ad, 0x3ae, 0x3af, 0x3cc, 0x3cd, 0x3ce, 0x3b1, 0x3b2, 0x3b3,
    0x3b4, 0x3b5, 0x3b6, 0x3b7, 0x3b8, 0x3b9, 0x3ba, 0x3bb, 0x3bc, 0x3bd,
    0x3be, 0x3bf, 0x3c0, 0x3c1, 0x3c3, 0x3c4, 0x3c5, 0x3c6, 0x3c7, 0x3c8,
    0x3c9, 0x3ca, 0x3cb, 0x3d7, 0x3d9, 0x3db, 0x3dd, 0x3df, 0x3e1, 0x3e3,
    0x3e5, 0x3e7, 0x3e9, 0x3eb, 0x3ed, 0x3ef, 0x3b8, 0x3f8, 0x3f2, 0x3fb,
    0x37b, 0x37c, 0x37d, 0x450, 0x451, 0x452, 0x453, 0x454, 0x455, 0x456,
    0x457, 0x458, 0x459, 0x45a, 0x45b, 0x45c, 0x45d, 0x45e, 0x45f, 0x430,
    0x431, 0x432, 0x433, 0x434, 0x435, 0x436, 0x437, 0x438, 0x439, 0x43a,
    0x43b, 0x43c, 0x43d, 0x43e, 0x43f, 0x440, 0x441, 0x442, 0x443, 0x444,
    0x445, 0x446, 0x447, 0x448, 0x449, 0x44a, 0x44b, 0x44c, 0x44d, 0x44e,
    0x44f, 0x461, 0x463, 0x465, 0x467, 0x469, 0x46b, 0x46d, 0x46f, 0x471,
    0x473, 0x475, 0x477, 0x479, 0x47b, 0x47d, 0x47f, 0x481, 0x48b, 0x48d,
    0x48f, 0x491, 0x493, 0x495, 0x497, 0x499, 0x49b, 0x49d, 0x49f, 0x4a1,
    0x4a3, 0x4a5, 0x4a7, 0x4a9, 0x4ab, 0x4ad, 0x4af, 0x4b1, 0x4b3, 0x4b5,
    0x4b7, 0x4b9, 0x4bb, 0x4bd, 0x4bf, 0x4cf, 0x4c2, 0x4c4, 0x4c6, 0x4c8,
    0x4ca, 0x4cc, 0x4ce, 0x4d1, 0x4d3, 0x4d5, 0x4d7, 0x4d9, 0x4db, 0x4dd,
    0x4df, 0x4e1, 0x4e3, 0x4e5, 0x4e7, 0x4e9, 0x4eb, 0x4ed, 0x4ef, 0x4f1,
    0x4f3, 0x4f5, 0x4f7, 0x4f9, 0x4fb, 0x4fd, 0x4ff, 0x501, 0x503, 0x505,
    0x507, 0x509, 0x50b, 0x50d, 0x50f, 0x511, 0x513, 0x515, 0x517, 0x519,
    0x51b, 0x51d, 0x51f, 0x521, 0x523, 0x525, 0x527, 0x529, 0x52b, 0x52d,
    0x52f, 0x561, 0x562, 0x563, 0x564, 0x565, 0x566, 0x567, 0x568, 0x569,
    0x56a, 0x56b, 0x56c, 0x56d, 0x56e, 0x56f, 0x570, 0x571, 0x572, 0x573,
    0x574, 0x575, 0x576, 0x577, 0x578, 0x579, 0x57a, 0x57b, 0x57c, 0x57d,
    0x57e, 0x57f, 0x580, 0x581, 0x582, 0x583, 0x584, 0x585, 0x586, 0x2d00,
    0x2d01, 0x2d02, 0x2d03, 0x2d04, 0x2d05, 0x2d06, 0x2d07, 0x2d08, 0x2d09, 0x2d0a,
    0x2d0b, 0x2d0c, 0x2d0d, 0x2d0e, 0x2d0f, 0x2d10, 0x2d11, 0x2d12, 0x2d13, 0x2d14,
    0x2d15, 0x2d16, 0x2d17, 0x2d18, 0x2d19, 0x2d1a, 0x2d1b, 0x2d1c, 0x2d1d, 0x2d1e,
    0x2d1f, 0x2d20, 0x2d21, 0x2d22, 0x2d23, 0x2d24, 0x2d25, 0x2d27, 0x2d2d, 0xab70,
    0xab71, 0xab72, 0xab73, 0xab74, 0xab75, 0xab76, 0xab77, 0xab78, 0xab79, 0xab7a,
    0xab7b, 0xab7c, 0xab7d, 0xab7e, 0xab7f, 0xab80, 0xab81, 0xab82, 0xab83, 0xab84,
    0xab85, 0xab86, 0xab87, 0xab88, 0xab89, 0xab8a, 0xab8b, 0xab8c, 0xab8d, 0xab8e,
    0xab8f, 0xab90, 0xab91, 0xab92, 0xab93, 0xab94, 0xab95, 0xab96, 0xab97, 0xab98,
    0xab99, 0xab9a, 0xab9b, 0xab9c, 0xab9d, 0xab9e, 0xab9f, 0xaba0, 0xaba1, 0xaba2,
    0xaba3, 0xaba4, 0xaba5, 0xaba6, 0xaba7, 0xaba8, 0xaba9, 0xabaa, 0xabab, 0xabac,
    0xabad, 0xabae, 0xabaf, 0xabb0, 0xabb1, 0xabb2, 0xabb3, 0xabb4, 0xabb5, 0xabb6,
    0xabb7, 0xabb8, 0xabb9, 0xabba, 0xabbb, 0xabbc, 0xabbd, 0xabbe, 0xabbf, 0x13f8,
    0x13f9, 0x13fa, 0x13fb, 0x13fc, 0x13fd, 0x10d0, 0x10d1, 0x10d2, 0x10d3, 0x10d4,
    0x10d5, 0x10d6, 0x10d7, 0x10d8, 0x10d9, 0x10da, 0x10db, 0x10dc, 0x10dd, 0x10de,
    0x10df, 0x10e0, 0x10e1, 0x10e2, 0x10e3, 0x10e4, 0x10e5, 0x10e6, 0x10e7, 0x10e8,
    0x10e9, 0x10ea, 0x10eb, 0x10ec, 0x10ed, 0x10ee, 0x10ef, 0x10f0, 0x10f1, 0x10f2,
    0x10f3, 0x10f4, 0x10f5, 0x10f6, 0x10f7, 0x10f8, 0x10f9, 0x10fa, 0x10fd, 0x10fe,
    0x10ff, 0x1e01, 0x1e03, 0x1e05, 0x1e07, 0x1e09, 0x1e0b, 0x1e0d, 0x1e0f, 0x1e11,
    0x1e13, 0x1e15, 0x1e17, 0x1e19, 0x1e1b, 0x1e1d, 0x1e1f, 0x1e21, 0x1e23, 0x1e25,
    0x1e27, 0x1e29, 0x1e2b, 0x1e2d, 0x1e2f, 0x1e31, 0x1e33, 0x1e35, 0x1e37, 0x1e39,
    0x1e3b, 0x1e3d, 0x1e3f, 0x1e41, 0x1e43, 0x1e45, 0x1e47, 0x1e49, 0x1e4b, 0x1e4d,
    0x1e4f, 0x1e51, 0x1e53, 0x1e55, 0x1e57, 0x1e59, 0x1e5b, 0x1e5d, 0x1e5f, 0x1e61,
    0x1e63, 0x1e65, 0x1e67, 0x1e69, 0x1e6b, 0x1e6d, 0x1e6f, 0x1e71, 0x1e73, 0x1e75,
    0x1e77, 0x1e79, 0x1e7b, 0x1e7d, 0x1e7f, 0x1e81, 0x1e83, 0x1e85, 0x1e87, 0x1e89,
    0x1e8b, 0x1e8d, 0x1e8f, 0x1e91, 0x1e93, 0x1e95, 0xdf, 0x1ea1, 0x1ea3, 0x1ea5,
    0x1ea7, 0x1ea9, 0x1eab, 0x1ead, 0x1eaf, 0x1eb1, 0x1eb3, 0x1eb5, 0x1eb7, 0x1eb9,
    0x1ebb, 0x1ebd, 0x1ebf, 0x1ec1, 0x1ec3, 0x1ec5, 0x1ec7, 0x1ec9, 0x1ecb, 0x1ecd,
    0x1ecf, 0x1ed1, 0x1ed3, 0x1ed5, 0x1ed7, 0x1ed9, 0x1edb, 0x1edd, 0x1edf, 0x1ee1,
    0x1ee3, 0x1ee5, 0x1ee7, 0x1ee9, 0x1eeb, 0x1eed, 0x1eef, 0x1ef1, 0x1ef3, 0x1ef5,
    0x1ef7, 0x1ef9, 0x1efb, 0x1efd, 0x1eff, 0x1f00, 0x1f01, 0x1f02, 0x1f03, 0x1f04,
    0x1f05, 0x1f06, 0x1f07, 0x1f10, 0x1f11, 0x1f12, 0x1f13, 0x1f14, 0x1f15, 0x1f20,
    0x1f21, 0x1f22, 0x1f23, 0x1f24, 0x1f25, 0x1f26, 0x1f27, 0x1f30, 0x1f31, 0x1f32,
    0x1f33, 0x1f34, 0x1f35, 0x1f36, 0x1f37, 0x1f40, 0x1f41, 0x1f42, 0x1f43, 0x1f44,
    0x1f45, 0x1f51, 0x1f53, 0x1f55, 0x1f57, 0x1f60, 0x1f61, 0x1f62, 0x1f63, 0x1f64,
    0x1f65, 0x1f66, 0x1f67, 0x1f80, 0x1f81, 0x1f82, 0x1f83, 0x1f84, 0x1f85, 0x1f86,
    0x1f87, 0x1f90, 0x1f91, 0x1f92, 0x1f93, 0x1f94, 0x1f95, 0x1f96, 0x1f97, 0x1fa0,
    0x1fa1, 0x1fa2, 0x1fa3, 0x1fa4, 0x1fa5, 0x1fa6, 0x1fa7, 0x1fb0, 0x1fb1, 0x1f70,
    0x1f71, 0x1fb3, 0x1f72, 0x1f73, 0x1f74, 0x1f75, 0x1fc3, 0x1fd0, 0x1fd1, 0x1f76,
    0x1f77, 0x1fe0, 0x1fe1, 0x1f7a, 0x1f7b, 0x1fe5, 0x1f78, 0x1f79, 0x1f7c, 0x1f7d,
    0x1ff3, 0x3c9, 0x6b, 0xe5, 0x214e, 0x2170, 0x2171, 0x2172, 0x2173, 0x2174,
    0x2175, 0x2176, 0x2177, 0x2178, 0x2179, 0x217a, 0x217b, 0x217c, 0x217d, 0x217e,
    0x217f, 0x2184, 0x24d0, 0x24d1, 0x24d2, 0x24d3, 0x24d4, 0x24d5, 0x24d6, 0x24d7,
    0x24d8, 0x24d9, 0x24da, 0x24db, 0x24dc, 0x24dd, 0x24de, 0x24df, 0x24e0, 0x24e1,
    0x24e2, 0x24e3, 0x24e4, 0x24e5, 0x24e6, 0x24e7, 0x24e8, 0x24e9, 0x2c30, 0x2c31,
    0x2c32, 0x2c33, 0x2c34, 0x2c35, 0x2c36, 0x2c37, 0x2c38, 0x2c39, 0x2c3a, 0x2c3b,
    0x2c3c, 0x2c3d, 0x2c3e, 0x2c3f, 0x2c40, 0x2c41, 0x2c42, 0x2c43, 0x2c44, 0x2c45,
    0x2c46, 0x2c47, 0x2c48, 0x2c49, 0x2c4a, 0x2c4b, 0x2c4c, 0x2c4d, 0x2c4e, 0x2c4f,
    0x2c50, 0x2c51, 0x2c52, 0x2c53, 0x2c54, 0x2c55, 0x2c56, 0x2c57, 0x2c58, 0x2c59,
    0x2c5a, 0x2c5b, 0x2c5c, 0x2c5d, 0x2c5e, 0x2c5f, 0x2c61, 0x26b, 0x1d7d, 0x27d,
    0x2c68, 0x2c6a, 0x2c6c, 0x251, 0x271, 0x250, 0x252, 0x2c73, 0x2c76, 0x23f,
    0x240, 0x2c81, 0x2c83, 0x2c85, 0x2c87, 0x2c89, 0x2c8b, 0x2c8d, 0x2c8f, 0x2c91,
    0x2c93, 0x2c95, 0x2c97, 0x2c99, 0x2c9b, 0x2c9d, 0x2c9f, 0x2ca1, 0x2ca3, 0x2ca5,
    0x2ca7, 0x2ca9, 0x2cab, 0x2cad, 0x2caf, 0x2cb1, 0x2cb3, 0x2cb5, 0x2cb7, 0x2cb9,
    0x2cbb, 0x2cbd, 0x2cbf, 0x2cc1, 0x2cc3, 0x2cc5, 0x2cc7, 0x2cc9, 0x2ccb, 0x2ccd,
    0x2ccf, 0x2cd1, 0x2cd3, 0x2cd5, 0x2cd7, 0x2cd9, 0x2cdb, 0x2cdd, 0x2cdf, 0x2ce1,
    0x2ce3, 0x2cec, 0x2cee, 0x2cf3, 0xa641, 0xa643, 0xa645, 0xa647, 0xa649, 0xa64b,
    0xa64d, 0xa64f, 0xa651, 0xa653, 0xa655, 0xa657, 0xa659, 0xa65b, 0xa65d, 0xa65f,
    0xa661, 0xa663, 0xa665, 0xa667, 0xa669, 0xa66b, 0xa66d, 0xa681, 0xa683, 0xa685,
    0xa687, 0xa689, 0xa68b, 0xa68d, 0xa68f, 0xa691, 0xa693, 0xa695, 0xa697, 0xa699,
    0xa69b, 0xa723, 0xa725, 0xa727, 0xa729, 0xa72b, 0xa72d, 0xa72f, 0xa733, 0xa735,
    0xa737, 0xa739, 0xa73b, 0xa73d, 0xa73f, 0xa741, 0xa743, 0xa745, 0xa747, 0xa749,
    0xa74b, 0xa74d, 0xa74f, 0xa751, 0xa753, 0xa755, 0xa757, 0xa759, 0xa75b, 0xa75d,
    0xa75f, 0xa761, 0xa763, 0xa765, 0xa767, 0xa769, 0xa76b, 0xa76d, 0xa76f, 0xa77a,
    0xa77c, 0x1d79, 0xa77f, 0xa781, 0xa783, 0xa785, 0xa787, 0xa78c, 0x265, 0xa791,
    0xa793, 0xa797, 0xa799, 0xa79b, 0xa79d, 0xa79f, 0xa7a1, 0xa7a3, 0xa7a5, 0xa7a7,
    0xa7a9, 0x266, 0x25c, 0x261, 0x26c, 0x26a, 0x29e, 0x287, 0x29d, 0xab53,
    0xa7b5, 0xa7b7, 0xa7b9, 0xa7bb, 0xa7bd, 0xa7bf, 0xa7c1, 0xa7c3, 0xa794, 0x282,
    0x1d8e, 0xa7c8, 0xa7ca, 0xa7d1, 0xa7d7, 0xa7d9, 0xa7f6, 0xff41, 0xff42, 0xff43,
    0xff44, 0xff45, 0xff46, 0xff47, 0xff48, 0xff49, 0xff4a, 0xff4b, 0xff4c, 0xff4d,
    0xff4e, 0xff4f, 0xff50, 0xff51, 0xff52, 0xff53, 0xff54, 0xff55, 0xff56, 0xff57,
    0xff58, 0xff59, 0xff5a, 0x10428, 0x10429, 0x1042a, 0x1042b, 0x1042c, 0x1042d, 0x1042e,
    0x1042f, 0x10430, 0x10431, 0x10432, 0x10433, 0x10434, 0x10435, 0x10436, 0x10437, 0x10438,
    0x10439, 0x1043a, 0x1043b, 0x1043c, 0x1043d, 0x1043e, 0x1043f, 0x10440, 0x10441, 0x10442,
    0x10443, 0x10444, 0x10445, 0x10446, 0x10447, 0x10448, 0x10449, 0x1044a, 0x1044b, 0x1044c,
    0x1044d, 0x1044e, 0x1044f, 0x104d8, 0x104d9, 0x104da, 0x104db, 0x104dc, 0x104dd, 0x104de,
    0x104df, 0x104e0, 0x104e1, 0x104e2, 0x104e3, 0x104e4, 0x104e5, 0x104e6, 0x104e7, 0x104e8,
    0x104e9, 0x104ea, 0x104eb, 0x104ec, 0x104ed, 0x104ee, 0x104ef, 0x104f0, 0x104f1, 0x104f2,
    0x104f3, 0x104f4, 0x104f5, 0x104f6, 0x104f7, 0x104f8, 0x104f9, 0x104fa, 0x104fb, 0x10597,
    0x10598, 0x10599, 0x1059a, 0x1059b, 0x1059c, 0x1059d, 0x1059e, 0x1059f, 0x105a0, 0x105a1,
    0x105a3, 0x105a4, 0x105a5, 0x105a6, 0x105a7, 0x105a8, 0x105a9, 0x105aa, 0x105ab, 0x105ac,
    0x105ad, 0x105ae, 0x105af, 0x105b0, 0x105b1, 0x105b3, 0x105b4, 0x105b5, 0x105b6, 0x105b7,
    0x105b8, 0x105b9, 0x105bb, 0x105bc, 0x10cc0, 0x10cc1, 0x10cc2, 0x10cc3, 0x10cc4, 0x10cc5,
    0x10cc6, 0x10cc7, 0x10cc8, 0x10cc9, 0x10cca, 0x10ccb, 0x10ccc, 0x10ccd, 0x10cce, 0x10ccf,
    0x10cd0, 0x10cd1, 0x10cd2, 0x10cd3, 0x10cd4, 0x10cd5, 0x10cd6, 0x10cd7, 0x10cd8, 0x10cd9,
    0x10cda, 0x10cdb, 0x10cdc, 0x10cdd, 0x10cde, 0x10cdf, 0x10ce0, 0x10ce1, 0x10ce2, 0x10ce3,
    0x10ce4, 0x10ce5, 0x10ce6, 0x10ce7, 0x10ce8, 0x10ce9, 0x10cea, 0x10ceb, 0x10cec, 0x10ced,
    0x10cee, 0x10cef, 0x10cf0, 0x10cf1, 0x10cf2, 0x118c0, 0x118c1, 0x118c2, 0x118c3, 0x118c4,
    0x118c5, 0x118c6, 0x118c7, 0x118c8, 0x118c9, 0x118ca, 0x118cb, 0x118cc, 0x118cd, 0x118ce,
    0x118cf, 0x118d0, 0x118d1, 0x118d2, 0x118d3, 0x118d4, 0x118d5, 0x118d6, 0x118d7, 0x118d8,
    0x118d9, 0x118da, 0x118db, 0x118dc, 0x118dd, 0x118de, 0x118df, 0x16e60, 0x16e61, 0x16e62,
    0x16e63, 0x16e64, 0x16e65, 0x16e66, 0x16e67, 0x16e68, 0x16e69, 0x16e6a, 0x16e6b, 0x16e6c,
    0x16e6d, 0x16e6e, 0x16e6f, 0x16e70, 0x16e71, 0x16e72, 0x16e73, 0x16e74, 0x16e75, 0x16e76,
    0x16e77, 0x16e78, 0x16e79, 0x16e7a, 0x16e7b, 0x16e7c, 0x16e7d, 0x16e7e, 0x16e7f, 0x1e922,
    0x1e923, 0x1e924, 0x1e925, 0x1e926, 0x1e927, 0x1e928, 0x1e929, 0x1e92a, 0x1e92b, 0x1e92c,
    0x1e92d, 0x1e92e, 0x1e92f, 0x1e930, 0x1e931, 0x1e932, 0x1e933, 0x1e934, 0x1e935, 0x1e936,
    0x1e937, 0x1e938, 0x1e939, 0x1e93a, 0x1e93b, 0x1e93c, 0x1e93d, 0x1e93e, 0x1e93f, 0x1e940,
    0x1e941, 0x1e942, 0x1e943,
};

inline constexpr uint32_t unicode_nfd_from[] = {
    0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc7, 0xc8, 0xc9, 0xca,
    0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5,
    0xd6, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xe0, 0xe1, 0xe2, 0xe3,
    0xe4, 0xe5, 0xe7, 0xe8, 0xe9, 0xea, 0xeb, 0xec, 0xed, 0xee,
    0xef, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf9, 0xfa, 0xfb,
    0xfc, 0xfd, 0xff, 0x100, 0x101, 0x102, 0x103, 0x104, 0x105, 0x106,
    0x107, 0x108, 0x109, 0x10a, 0x10b, 0x10c, 0x10d, 0x10e, 0x10f, 0x112,
    0x113, 0x114, 0x115, 0x116, 0x117, 0x118, 0x119, 0x11a, 0x11b, 0x11c,
    0x11d, 0x11e, 0x11f, 0x120, 0x121, 0x122, 0x123, 0x124, 0x125, 0x128,
    0x129, 0x12a, 0x12b, 0x12c, 0x12d, 0x12e, 0x12f, 0x130, 0x134, 0x135,
    0x136, 0x137, 0x139, 0x13a, 0x13b, 0x13c, 0x13d, 0x13e, 0x143, 0x144,
    0x145, 0x146, 0x147, 0x148, 0x14c, 0x14d, 0x14e, 0x14f, 0x150, 0x151,
    0x154, 0x155, 0x156, 0x157, 0x158, 0x159, 0x15a, 0x15b, 0x15c, 0x15d,
    0x15e, 0x15f, 0x160, 0x161, 0x162, 0x163, 0x164, 0x165, 0x168, 0x169,
    0x16a, 0x16b, 0x16c, 0x16d, 0x16e, 0x16f, 0x170, 0x171, 0x172, 0x173,
    0x174, 0x175, 0x176, 0x177, 0x178, 0x179, 0x17a, 0x17b, 0x17c, 0x17d,
    0x17e, 0x1a0, 0x1a1, 0x1af, 0x1b0, 0x1cd, 0x1ce, 0x1cf, 0x1d0, 0x1d1,
    0x1d2, 0x1d3, 0x1d4, 0x1d5, 0x1d6, 0x1d7, 0x1d8, 0x1d9, 0x1da, 0x1db,
    0x1dc, 0x1de, 0x1df, 0x1e0, 0x1e1, 0x1e2, 0x1e3, 0x1e6, 0x1e7, 0x1e8,
    0x1e9, 0x1ea, 0x1eb, 0x1ec, 0x1ed, 0x1ee, 0x1ef, 0x1f0, 0x1f4, 0x1f5,
    0x1f8, 0x1f9, 0x1fa, 0x1fb, 0x1fc, 0x1fd, 0x1fe, 0x1ff, 0x200, 0x201,
    0x202, 0x203, 0x204, 0x205, 0x206, 0x207, 0x208, 0x209, 0x20a, 0x20b,
    0x20c, 0x20d, 0x20e, 0x20f, 0x210, 0x211, 0x212, 0x213, 0x214, 0x215,
    0x216, 0x217, 0x218, 0x219, 0x21a, 0x21b, 0x21e, 0x21f, 0x226, 0x227,
    0x228, 0x229, 0x22a, 0x22b, 0x22c, 0x22d, 0x22e, 0x22f, 0x230, 0x231,
    0x232, 0x233, 0x340, 0x341, 0x343, 0x344, 0x374, 0x37e, 0x385, 0x386,
    0x387, 0x388, 0x389, 0x38a, 0x38c, 0x38e, 0x38f, 0x390, 0x3aa, 0x3ab,
    0x3ac, 0x3ad, 0x3ae, 0x3af, 0x3b0, 0x3ca, 0x3cb, 0x3cc, 0x3cd, 0x3ce,
    0x3d3, 0x3d4, 0x400, 0x401, 0x403, 0x407, 0x40c, 0x40d, 0x40e, 0x419,
    0x439, 0x450, 0x451, 0x453, 0x457, 0x45c, 0x45d, 0x45e, 0x476, 0x477,
    0x4c1, 0x4c2, 0x4d0, 0x4d1, 0x4d2, 0x4d3, 0x4d6, 0x4d7, 0x4da, 0x4db,
    0x4dc, 0x4dd, 0x4de, 0x4df, 0x4e2, 0x4e3, 0x4e4, 0x4e5, 0x4e6, 0x4e7,
    0x4ea, 0x4eb, 0x4ec, 0x4ed, 0x4ee, 0x4ef, 0x4f0, 0x4f1, 0x4f2, 0x4f3,
    0x4f4, 0x4f5, 0x4f8, 0x4f9, 0x622, 0x623, 0x624, 0x625, 0x626, 0x6c0,
    0x6c2, 0x6d3, 0x929, 0x931, 0x934, 0x958, 0x959, 0x95a, 0x95b, 0x95c,
    0x95d, 0x95e, 0x95f, 0x9cb, 0x9cc, 0x9dc, 0x9dd, 0x9df, 0xa33, 0xa36,
    0xa59, 0xa5a, 0xa5b, 0xa5e, 0xb48, 0xb4b, 0xb4c, 0xb5c, 0xb5d, 0xb94,
    0xbca, 0xbcb, 0xbcc, 0xc48, 0xcc0, 0xcc7, 0xcc8, 0xcca, 0xccb, 0xd4a,
    0xd4b, 0xd4c, 0xdda, 0xddc, 0xddd, 0xdde, 0xf43, 0xf4d, 0xf52, 0xf57,
    0xf5c, 0xf69, 0xf73, 0xf75, 0xf76, 0xf78, 0xf81, 0xf93, 0xf9d, 0xfa2,
    0xfa7, 0xfac, 0xfb9, 0x1026, 0x1b06, 0x1b08, 0x1b0a, 0x1b0c, 0x1b0e, 0x1b12,
    0x1b3b, 0x1b3d, 0x1b40, 0x1b41, 0x1b43, 0x1e00, 0x1e01, 0x1e02, 0x1e03, 0x1e04,
    0x1e05, 0x1e06, 0x1e07, 0x1e08, 0x1e09, 0x1e0a, 0x1e0b, 0x1e0c, 0x1e0d, 0x1e0e,
    0x1e0f, 0x1e10, 0x1e11, 0x1e12, 0x1e13, 0x1e14, 0x1e15, 0x1e16, 0x1e17, 0x1e18,
    0x1e19, 0x1e1a, 0x1e1b, 0x1e1c, 0x1e1d, 0x1e1e, 0x1e1f, 0x1e20, 0x1e21, 0x1e22,
    0x1e23, 0x1e24, 0x1e25, 0x1e26, 0x1e27, 0x1e28, 0x1e29, 0x1e2a, 0x1e2b, 0x1e2c,
    0x1e2d, 0x1e2e, 0x1e2f, 0x1e30, 0x1e31, 0x1e32, 0x1e33, 0x1e34, 0x1e35, 0x1e36,
    0x1e37, 0x1e38, 0x1e39, 0x1e3a, 0x1e3b, 0x1e3c, 0x1e3d, 0x1e3e, 0x1e3f, 0x1e40,
    0x1e41, 0x1e42, 0x1e43, 0x1e44, 0x1e45, 0x1e46, 0x1e47, 0x1e48, 0x1e49, 0x1e4a,
    0x1e4b, 0x1e4c, 0x1e4d, 0x1e4e, 0x1e4f, 0x1e50, 0x1e51, 0x1e52, 0x1e53, 0x1e54,
    0x1e55, 0x1e56, 0x1e57, 0x1e58, 0x1e59, 0x1e5a, 0x1e5b, 0x1e5c, 0x1e5d, 0x1e5e,
    0x1e5f, 0x1e60, 0x1e61, 0x1e62, 0x1e63, 0x1e64, 0x1e65, 0x1e66, 0x1e67, 0x1e68,
    0x1e69, 0x1e6a, 0x1e6b, 0x1e6c, 0x1e6d, 0x1e6e, 0x1e6f, 0x1e70, 0x1e71, 0x1e72,
    0x1e73, 0x1e74, 0x1e75, 0x1e76, 0x1e77, 0x1e78, 0x1e79, 0x1e7a, 0x1e7b, 0x1e7c,
    0x1e7d, 0x1e7e, 0x1e7f, 0x1e80, 0x1e81, 0x1e82, 0x1e83, 0x1e84, 0x1e85, 0x1e86,
    0x1e87, 0x1e88, 0x1e89, 0x1e8a, 0x1e8b, 0x1e8c, 0x1e8d, 0x1e8e, 0x1e8f, 0x1e90,
    0x1e91, 0x1e92, 0x1e93, 0x1e94, 0x1e95, 0x1e96, 0x1e97, 0x1e98, 0x1e99, 0x1e9b,
    0x1ea0, 0x1ea1, 0x1ea2, 0x1ea3, 0x1ea4, 0x1ea5, 0x1ea6, 0x1ea7, 0x1ea8, 0x1ea9,
    0x1eaa, 0x1eab, 0x1eac, 0x1ead, 0x1eae, 0x1eaf, 0x1eb0, 0x1eb1, 0x1eb2, 0x1eb3,
    0x1eb4, 0x1eb5, 0x1eb6, 0x1eb7, 0x1eb8, 0x1eb9, 0x1eba, 0x1ebb, 0x1ebc, 0x1ebd,
    0x1ebe, 0x1ebf, 0x1ec0, 0x1ec1, 0x1ec2, 0x1ec3, 0x1ec4, 0x1ec5, 0x1ec6, 0x1ec7,
    0x1ec8, 0x1ec9, 0x1eca, 0x1ecb, 0x1ecc, 0x1ecd, 0x1ece, 0x1ecf, 0x1ed0, 0x1ed1,
    0x1ed2, 0x1ed3, 0x1ed4, 0x1ed5, 0x1ed6, 0x1ed7, 0x1ed8, 0x1ed9, 0x1eda, 0x1edb,
    0x1edc, 0x1edd, 0x1ede, 0x1edf, 0x1ee0, 0x1ee1, 0x1ee2, 0x1ee3, 0x1ee4, 0x1ee5,
    0x1ee6, 0x1ee7, 0x1ee8, 0x1ee9, 0x1eea, 0x1eeb, 0x1eec, 0x1eed, 0x1eee, 0x1eef,
    0x1ef0, 0x1ef1, 0x1ef2, 0x1ef3, 0x1ef4, 0x1ef5, 0x1ef6, 0x1ef7, 0x1ef8, 0x1ef9,
    0x1f00, 0x1f01, 0x1f02, 0x1f03, 0x1f04, 0x1f05, 0x1f06, 0x1f07, 0x1f08, 0x1f09,
    0x1f0a, 0x1f0b, 0x1f0c, 0x1f0d, 0x1f0e, 0x1f0f, 0x1f10, 0x1f11, 0x1f12, 0x1f13,
    0x1f14, 0x1f15, 0x1f18, 0x1f19, 0x1f1a, 0x1f1b, 0x1f1c, 0x1f1d, 0x1f20, 0x1f21,
    0x1f22, 0x1f23, 0x1f24, 0x1f25, 0x1f26, 0x1f27, 0x1f28, 0x1f29, 0x1f2a, 0x1f2b,
    0x1f2c, 0x1f2d, 0x1f2e, 0x1f2f, 0x1f30, 0x1f31, 0x1f32, 0x1f33, 0x1f34, 0x1f35,
    0x1f36, 0x1f37, 0x1f38, 0x1f39, 0x1f3a, 0x1f3b, 0x1f3c, 0x1f3d, 0x1f3e, 0x1f3f,
    0x1f40, 0x1f41, 0x1f42, 0x1f43, 0x1f44, 0x1f45, 0x1f48, 0x1f49, 0x1f4a, 0x1f4b,
    0x1f4c, 0x1f4d, 0x1f50, 0x1f51, 0x1f52, 0x1f53, 0x1f54, 0x1f55, 0x1f56, 0x1f57,
    0x1f59, 0x1f5b, 0x1f5d, 0x1f5f, 0x1f60, 0x1f61, 0x1f62, 0x1f63, 0x1f64, 0x1f65,
    0x1f66, 0x1f67, 0x1f68, 0x1f69, 0x1f6a, 0x1f6b, 0x1f6c, 0x1f6d, 0x1f6e, 0x1f6f,
    0x1f70, 0x1f71, 0x1f72, 0x1f73, 0x1f74, 0x1f75, 0x1f76, 0x1f77, 0x1f78, 0x1f79,
    0x1f7a, 0x1f7b, 0x1f7c, 0x1f7d, 0x1f80, 0x1f81, 0x1f82, 0x1f83, 0x1f84, 0x1f85,
    0x1f86, 0x1f87, 0x1f88, 0x1f89, 0x1f8a, 0x1f8b, 0x1f8c, 0x1f8d, 0x1f8e, 0x1f8f,
    0x1f90, 0x1f91, 0x1f92, 0x1f93, 0x1f94, 0x1f95, 0x1f96, 0x1f97, 0x1f98, 0x1f99,
    0x1f9a, 0x1f9b, 0x1f9c, 0x1f9d, 0x1f9e, 0x1f9f, 0x1fa0, 0x1fa1, 0x1fa2, 0x1fa3,
    0x1fa4, 0x1fa5, 0x1fa6, 0x1fa7, 0x1fa8, 0x1fa9, 0x1faa, 0x1fab, 0x1fac, 0x1fad,
    0x1fae, 0x1faf, 0x1fb0, 0x1fb1, 0x1fb2, 0x1fb3, 0x1fb4, 0x1fb6, 0x1fb7, 0x1fb8,
    0x1fb9, 0x1fba, 0x1fbb, 0x1fbc, 0x1fbe, 0x1fc1, 0x1fc2, 0x1fc3, 0x1fc4, 0x1fc6,
    0x1fc7, 0x1fc8, 0x1fc9, 0x1fca, 0x1fcb, 0x1fcc, 0x1fcd, 0x1fce, 0x1fcf, 0x1fd0,
    0x1fd1, 0x1fd2, 0x1fd3, 0x1fd6, 0x1fd7, 0x1fd8, 0x1fd9, 0x1fda, 0x1fdb, 0x1fdd,
    0x1fde, 0x1fdf, 0x1fe0, 0x1fe1, 0x1fe2, 0x1fe3, 0x1fe4, 0x1fe5, 0x1fe6, 0x1fe7,
    0x1fe8, 0x1fe9, 0x1fea, 0x1feb, 0x1fec, 0x1fed, 0x1fee, 0x1fef, 0x1ff2, 0x1ff3,
    0x1ff4, 0x1ff6, 0x1ff7, 0x1ff8, 0x1ff9, 0x1ffa, 0x1ffb, 0x1ffc, 0x1ffd, 0x2000,
    0x2001, 0x2126, 0x212a, 0x212b, 0x219a, 0x219b, 0x21ae, 0x21cd, 0x21ce, 0x21cf,
    0x2204, 0x2209, 0x220c, 0x2224, 0x2226, 0x2241, 0x2244, 0x2247, 0x2249, 0x2260,
    0x2262, 0x226d, 0x226e, 0x226f, 0x2270, 0x2271, 0x2274, 0x2275, 0x2278, 0x2279,
    0x2280, 0x2281, 0x2284, 0x2285, 0x2288, 0x2289, 0x22ac, 0x22ad, 0x22ae, 0x22af,
    0x22e0, 0x22e1, 0x22e2, 0x22e3, 0x22ea, 0x22eb, 0x22ec, 0x22ed, 0x2329, 0x232a,
    0x2adc, 0x304c, 0x304e, 0x3050, 0x3052, 0x3054, 0x3056, 0x3058, 0x305a, 0x305c,
    0x305e, 0x3060, 0x3062, 0x3065, 0x3067, 0x3069, 0x3070, 0x3071, 0x3073, 0x3074,
    0x3076, 0x3077, 0x3079, 0x307a, 0x307c, 0x307d, 0x3094, 0x309e, 0x30ac, 0x30ae,
    0x30b0, 0x30b2, 0x30b4, 0x30b6, 0x30b8, 0x30ba, 0x30bc, 0x30be, 0x30c0, 0x30c2,
    0x30c5, 0x30c7, 0x30c9, 0x30d0, 0x30d1, 0x30d3, 0x30d4, 0x30d6, 0x30d7, 0x30d9,
    0x30da, 0x30dc, 0x30dd, 0x30f4, 0x30f7, 0x30f8, 0x30f9, 0x30fa, 0x30fe, 0xf900,
    0xf901, 0xf902, 0xf903, 0xf904, 0xf905, 0xf906, 0xf907, 0xf908, 0xf909, 0xf90a,
    0xf90b, 0xf90c, 0xf90d, 0xf90e, 0xf90f, 0xf910, 0xf911, 0xf912, 0xf913, 0xf914,
    0xf915, 0xf916, 0xf917, 0xf918, 0xf919, 0xf91a, 0xf91b, 0xf91c, 0xf91d, 0xf91e,
    0xf91f, 0xf920, 0xf921, 0xf922, 0xf923, 0xf924, 0xf925, 0xf926, 0xf927, 0xf928,
    0xf929, 0xf92a, 0xf92b, 0xf92c, 0xf92d, 0xf92e, 0xf92f, 0xf930, 0xf931, 0xf932,
    0xf933, 0xf934, 0xf935, 0xf936, 0xf937, 0xf938, 0xf939, 0xf93a, 0xf93b, 0xf93c,
    0xf93d, 0xf93e, 0xf93f, 0xf940, 0xf941, 0xf942, 0xf943, 0xf944, 0xf945, 0xf946,
    0xf947, 0xf948, 0xf949, 0xf94a, 0xf94b, 0xf94c, 0xf94d, 0xf94e, 0xf94f, 0xf950,
    0xf951, 0xf952, 0xf953, 0xf954, 0xf955, 0xf956, 0xf957, 0xf958, 0xf959, 0xf95a,
    0xf95b, 0xf95c, 0xf95d, 0xf95e, 0xf95f, 0xf960, 0xf961, 0xf962, 0xf963, 0xf964,
    0xf965, 0xf966, 0xf967, 0xf968, 0xf969, 0xf96a, 0xf96b, 0xf96c, 0xf96d, 0xf96e,
    0xf96f, 0xf970, 0xf971, 0xf972, 0xf973, 0xf974, 0xf975, 0xf976, 0xf977, 0xf978,
    0xf979, 0xf97a, 0xf97b, 0xf97c, 0xf97d, 0xf97e, 0xf97f, 0xf980, 0xf981, 0xf982,
    0xf983, 0xf984, 0xf985, 0xf986, 0xf987, 0xf988, 0xf989, 0xf98a, 0xf98b, 0xf98c,
    0xf98d, 0xf98e, 0xf98f, 0xf990, 0xf991, 0xf992, 0xf993, 0xf994, 0xf995, 0xf996,
    0xf997, 0xf998, 0xf999, 0xf99a, 0xf99b, 0xf99c, 0xf99d, 0xf99e, 0xf99f, 0xf9a0,
    0xf9a1, 0xf9a2, 0xf9a3, 0xf9a4, 0xf9a5, 0xf9a6, 0xf9a7, 0xf9a8, 0xf9a9, 0xf9aa,
    0xf9ab, 0xf9ac, 0xf9ad, 0xf9ae, 0xf9af, 0xf9b0, 0xf9b1, 0xf9b2, 0xf9b3, 0xf9b4,
    0xf9b5, 0xf9b6, 0xf9b7, 0xf9b8, 0xf9b9, 0xf9ba, 0xf9bb, 0xf9bc, 0xf9bd, 0xf9be,
    0xf9bf, 0xf9c0, 0xf9c1, 0xf9c2, 0xf9c3, 0xf9c4, 0xf9c5, 0xf9c6, 0xf9c7, 0xf9c8,
    0xf9c9, 0xf9ca, 0xf9cb, 0xf9cc, 0xf9cd, 0xf9ce, 0xf9cf, 0xf9d0, 0xf9d1, 0xf9d2,
    0xf9d3, 0xf9d4, 0xf9d5, 0xf9d6, 0xf9d7, 0xf9d8, 0xf9d9, 0xf9da, 0xf9db, 0xf9dc,
    0xf9dd, 0xf9de, 0xf9df, 0xf9e0, 0xf9e1, 0xf9e2, 0xf9e3, 0xf9e4, 0xf9e5, 0xf9e6,
    0xf9e7, 0xf9e8, 0xf9e9, 0xf9ea, 0xf9eb, 0xf9ec, 0xf9ed, 0xf9ee, 0xf9ef, 0xf9f0,
    0xf9f1, 0xf9f2, 0xf9f3, 0xf9f4, 0xf9f5, 0xf9f6, 0xf9f7, 0xf9f8, 0xf9f9, 0xf9fa,
    0xf9fb, 0xf9fc, 0xf9fd, 0xf9fe, 0xf9ff, 0xfa00, 0xfa01, 0xfa02, 0xfa03, 0xfa04,
    0xfa05, 0xfa06, 0xfa07, 0xfa08, 0xfa09, 0xfa0a, 0xfa0b, 0xfa0c, 0xfa0d, 0xfa10,
    0xfa12, 0xfa15, 0xfa16, 0xfa17, 0xfa18, 0xfa19, 0xfa1a, 0xfa1b, 0xfa1c, 0xfa1d,
    0xfa1e, 0xfa20, 0xfa22, 0xfa25, 0xfa26, 0xfa2a, 0xfa2b, 0xfa2c, 0xfa2d, 0xfa2e,
    0xfa2f, 0xfa30, 0xfa31, 0xfa32, 0xfa33, 0xfa34, 0xfa35, 0xfa36, 0xfa37, 0xfa38,
    0xfa39, 0xfa3a, 0xfa3b, 0xfa3c, 0xfa3d, 0xfa3e, 0xfa3f, 0xfa40, 0xfa41, 0xfa42,
    0xfa43, 0xfa44, 0xfa45, 0xfa46, 0xfa47, 0xfa48, 0xfa49, 0xfa4a, 0xfa4b, 0xfa4c,
    0xfa4d, 0xfa4e, 0xfa4f, 0xfa50, 0xfa51, 0xfa52, 0xfa53, 0xfa54, 0xfa55, 0xfa56,
    0xfa57, 0xfa58, 0xfa59, 0xfa5a, 0xfa5b, 0xfa5c, 0xfa5d, 0xfa5e, 0xfa5f, 0xfa60,
    0xfa61, 0xfa62, 0xfa63, 0xfa64, 0xfa65, 0xfa66, 0xfa67, 0xfa68, 0xfa69, 0xfa6a,
    0xfa6b, 0xfa6c, 0xfa6d, 0xfa70, 0xfa71, 0xfa72, 0xfa73, 0xfa74, 0xfa75, 0xfa76,
    0xfa77, 0xfa78, 0xfa79, 0xfa7a, 0xfa7b, 0xfa7c, 0xfa7d, 0xfa7e, 0xfa7f, 0xfa80,
    0xfa81, 0xfa82, 0xfa83, 0xfa84, 0xfa85, 0xfa86, 0xfa87, 0xfa88, 0xfa89, 0xfa8a,
    0xfa8b, 0xfa8c, 0xfa8d, 0xfa8e, 0xfa8f, 0xfa90, 0xfa91, 0xfa92, 0xfa93, 0xfa94,
    0xfa95, 0xfa96, 0xfa97, 0xfa98, 0xfa99, 0xfa9a, 0xfa9b, 0xfa9c, 0xfa9d, 0xfa9e,
    0xfa9f, 0xfaa0, 0xfaa1, 0xfaa2, 0xfaa3, 0xfaa4, 0xfaa5, 0xfaa6, 0xfaa7, 0xfaa8,
    0xfaa9, 0xfaaa, 0xfaab, 0xfaac, 0xfaad, 0xfaae, 0xfaaf, 0xfab0, 0xfab1, 0xfab2,
    0xfab3, 0xfab4, 0xfab5, 0xfab6, 0xfab7, 0xfab8, 0xfab9, 0xfaba, 0xfabb, 0xfabc,
    0xfabd, 0xfabe, 0xfabf, 0xfac0, 0xfac1, 0xfac2, 0xfac3, 0xfac4, 0xfac5, 0xfac6,
    0xfac7, 0xfac8, 0xfac9, 0xfaca, 0xfacb, 0xfacc, 0xfacd, 0xface, 0xfacf, 0xfad0,
    0xfad1, 0xfad2, 0xfad3, 0xfad4, 0xfad5, 0xfad6, 0xfad7, 0xfad8, 0xfad9, 0xfb1d,
    0xfb1f, 0xfb2a, 0xfb2b, 0xfb2c, 0xfb2d, 0xfb2e, 0xfb2f, 0xfb30, 0xfb31, 0xfb32,
    0xfb33, 0xfb34, 0xfb35, 0xfb36, 0xfb38, 0xfb39, 0xfb3a, 0xfb3b, 0xfb3c, 0xfb3e,
    0xfb40, 0xfb41, 0xfb43, 0xfb44, 0xfb46, 0xfb47, 0xfb48, 0xfb49, 0xfb4a, 0xfb4b,
    0xfb4c, 0xfb4d, 0xfb4e, 0x1109a, 0x1109c, 0x110ab, 0x1112e, 0x1112f, 0x1134b, 0x1134c,
    0x114bb, 0x114bc, 0x114be, 0x115ba, 0x115bb, 0x11938, 0x1d15e, 0x1d15f, 0x1d160, 0x1d161,
    0x1d162, 0x1d163, 0x1d164, 0x1d1bb, 0x1d1bc, 0x1d1bd, 0x1d1be, 0x1d1bf, 0x1d1c0, 0x2f800,
    0x2f801, 0x2f802, 0x2f803, 0x2f804, 0x2f805, 0x2f806, 0x2f807, 0x2f808, 0x2f809, 0x2f80a,
    0x2f80b, 0x2f80c, 0x2f80d, 0x2f80e, 0x2f80f, 0x2f810, 0x2f811, 0x2f812, 0x2f813, 0x2f814,
    0x2f815, 0x2f816, 0x2f817, 0x2f818, 0x2f819, 0x2f81a, 0x2f81b, 0x2f81c, 0x2f81d, 0x2f81e,
    0x2f81f, 0x2f820, 0x2f821, 0x2f822, 0x2f823, 0x2f824, 0x2f825, 0x2f826, 0x2f827, 0x2f828,
    0x2f829, 0x2f82a, 0x2f82b, 0x2f82c, 0x2f82d, 0x2f82e, 0x2f82f, 0x2f830, 0x2f831, 0x2f832,
    0x2f833, 0x2f834, 0x2f835, 0x2f836, 0x2f837, 0x2f838, 0x2f839, 0x2f83a, 0x2f83b, 0x2f83c,
    0x2f83d, 0x2f83e, 0x2f83f, 0x2f840, 0x2f841, 0x2f842, 0x2f843, 0x2f844, 0x2f845, 0x2f846,
    0x2f847, 0x2f848, 0x2f849, 0x2f84a, 0x2f84b, 0x2f84c, 0x2f84d, 0x2f84e, 0x2f84f, 0x2f850,
    0x2f851, 0x2f852, 0x2f853, 0x2f854, 0x2f855, 0x2f856, 0x2f857, 0x2f858, 0x2f859, 0x2f85a,
    0x2f85b, 0x2f85c, 0x2f85d, 0x2f85e, 0x2f85f, 0x2f860, 0x2f861, 0x2f862, 0x2f863, 0x2f864,
    0x2f865, 0x2f866, 0x2f867, 0x2f868, 0x2f869, 0x2f86a, 0x2f86b, 0x2f86c, 0x2f86d, 0x2f86e,
    0x2f86f, 0x2f870, 0x2f871, 0x2f872, 0x2f873, 0x2f874, 0x2f875, 0x2f876, 0x2f877, 0x2f878,
    0x2f879, 0x2f87a, 0x2f87b, 0x2f87c, 0x2f87d, 0x2f87e, 0x2f87f, 0x2f880, 0x2f881, 0x2f882,
    0x2f883, 0x2f884, 0x2f885, 0x2f886, 0x2f887, 0x2f888, 0x2f889, 0x2f88a, 0x2f88b, 0x2f88c,
    0x2f88d, 0x2f88e, 0x2f88f, 0x2f890, 0x2f891, 0x2f892, 0x2f893, 0x2f894, 0x2f895, 0x2f896,
    0x2f897, 0x2f898, 0x2f899, 0x2f89a, 0x2f89b, 0x2f89c, 0x2f89d, 0x2f89e, 0x2f89f, 0x2f8a0,
    0x2f8a1, 0x2f8a2, 0x2f8a3, 0x2f8a4, 0x2f8a5, 0x2f8a6, 0x2f8a7, 0x2f8a8, 0x2f8a9, 0x2f8aa,
    0x2f8ab, 0x2f8ac, 0x2f8ad, 0x2f8ae, 0x2f8af, 0x2f8b0, 0x2f8b1, 0x2f8b2, 0x2f8b3, 0x2f8b4,
    0x2f8b5, 0x2f8b6, 0x2f8b7, 0x2f8b8, 0x2f8b9, 0x2f8ba, 0x2f8bb, 0x2f8bc, 0x2f8bd, 0x2f8be,
    0x2f8bf, 0x2f8c0, 0x2f8c1, 0x2f8c2, 0x2f8c3, 0x2f8c4, 0x2f8c5, 0x2f8c6, 0x2f8c7, 0x2f8c8,
    0x2f8c9, 0x2f8ca, 0x2f8cb, 0x2f8cc, 0x2f8cd, 0x2f8ce, 0x2f8cf, 0x2f8d0, 0x2f8d1, 0x2f8d2,
    0x2f8d3, 0x2f8d4, 0x2f8d5, 0x2f8d6, 0x2f8d7, 0x2f8d8, 0x2f8d9, 0x2f8da, 0x2f8db, 0x2f8dc,
    0x2f8dd, 0x2f8de, 0x2f8df, 0x2f8e0, 0x2f8e1, 0x2f8e2, 0x2f8e3, 0x2f8e4, 0x2f8e5, 0x2f8e6,
    0x2f8e7, 0x2f8e8, 0x2f8e9, 0x2f8ea, 0x2f8eb, 0x2f8ec, 0x2f8ed, 0x2f8ee, 0x2f8ef, 0x2f8f0,
    0x2f8f1, 0x2f8f2, 0x2f8f3, 0x2f8f4, 0x2f8f5, 0x2f8f6, 0x2f8f7, 0x2f8f8, 0x2f8f9, 0x2f8fa,
    0x2f8fb, 0x2f8fc, 0x2f8fd, 0x2f8fe, 0x2f8ff, 0x2f900, 0x2f901, 0x2f902, 0x2f903, 0x2f904,
    0x2f905, 0x2f906, 0x2f907, 0x2f908, 0x2f909, 0x2f90a, 0x2f90b, 0x2f90c, 0x2f90d, 0x2f90e,
    0x2f90f, 0x2f910, 0x2f911, 0x2f912, 0x2f913, 0x2f914, 0x2f915, 0x2f916, 0x2f917, 0x2f918,
    0x2f919, 0x2f91a, 0x2f91b, 0x2f91c, 0x2f91d, 0x2f91e, 0x2f91f, 0x2f920, 0x2f921, 0x2f922,
    0x2f923, 0x2f924, 0x2f925, 0x2f926, 0x2f927, 0x2f928, 0x2f929, 0x2f92a, 0x2f92b, 0x2f92c,
    0x2f92d, 0x2f92e, 0x2f92f, 0x2f930, 0x2f931, 0x2f932, 0x2f933, 0x2f934, 0x2f935, 0x2f936,
    0x2f937, 0x2f938, 0x2f939, 0x2f93a, 0x2f93b, 0x2f93c, 0x2f93d, 0x2f93e, 0x2f93f, 0x2f940,
    0x2f941, 0x2f942, 0x2f943, 0x2f944, 0x2f945, 0x2f946, 0x2f947, 0x2f948, 0x2f949, 0x2f94a,
    0x2f94b, 0x2f94c, 0x2f94d, 0x2f94e, 0x2f94f, 0x2f950, 0x2f951, 0x2f952, 0x2f953, 0x2f954,
    0x2f955, 0x2f956, 0x2f957, 0x2f958, 0x2f959, 0x2f95a, 0x2f95b, 0x2f95c, 0x2f95d, 0x2f95e,
    0x2f95f, 0x2f960, 0x2f961, 0x2f962, 0x2f963, 0x2f964, 0x2f965, 0x2f966, 0x2f967, 0x2f968,
    0x2f969, 0x2f96a, 0x2f96b, 0x2f96c, 0x2f96d, 0x2f96e, 0x2f96f, 0x2f970, 0x2f971, 0x2f972,
    0x2f973, 0x2f974, 0x2f975, 0x2f976, 0x2f977, 0x2f978, 0x2f979, 0x2f97a, 0x2f97b, 0x2f97c,
    0x2f97d, 0x2f97e, 0x2f97f, 0x2f980, 0x2f981, 0x2f982, 0x2f983, 0x2f984, 0x2f985, 0x2f986,
    0x2f987, 0x2f988, 0x2f989, 0x2f98a, 0x2f98b, 0x2f98c, 0x2f98d, 0x2f98e, 0x2f98f, 0x2f990,
    0x2f991, 0x2f992, 0x2f993, 0x2f994, 0x2f995, 0x2f996, 0x2f997, 0x2f998, 0x2f999, 0x2f99a,
    0x2f99b, 0x2f99c, 0x2f99d, 0x2f99e, 0x2f99f, 0x2f9a0, 0x2f9a1, 0x2f9a2, 0x2f9a3, 0x2f9a4,
    0x2f9a5, 0x2f9a6, 0x2f9a7, 0x2f9a8, 0x2f9a9, 0x2f9aa, 0x2f9ab, 0x2f9ac, 0x2f9ad, 0x2f9ae,
    0x2f9af, 0x2f9b0, 0x2f9b1, 0x2f9b2, 0x2f9b3, 0x2f9b4, 0x2f9b5, 0x2f9b6, 0x2f9b7, 0x2f9b8,
    0x2f9b9, 0x2f9ba, 0x2f9bb, 0x2f9bc, 0x2f9bd, 0x2f9be, 0x2f9bf, 0x2f9c0, 0x2f9c1, 0x2f9c2,
    0x2f9c3, 0x2f9c4, 0x2f9c5, 0x2f9c6, 0x2f9c7, 0x2f9c8, 0x2f9c9, 0x2f9ca, 0x2f9cb, 0x2f9cc,
    0x2f9cd, 0x2f9ce, 0x2f9cf, 0x2f9d0, 0x2f9d1, 0x2f9d2, 0x2f9d3, 0x2f9d4, 0x2f9d5, 0x2f9d6,
    0x2f9d7, 0x2f9d8, 0x2f9d9, 0x2f9da, 0x2f9db, 0x2f9dc, 0x2f9dd, 0x2f9de, 0x2f9df, 0x2f9e0,
    0x2f9e1, 0x2f9e2, 0x2f9e3, 0x2f9e4, 0x2f9e5, 0x2f9e6, 0x2f9e7, 0x2f9e8, 0x2f9e9, 0x2f9ea,
    0x2f9eb, 0x2f9ec, 0x2f9ed, 0x2f9ee, 0x2f9ef, 0x2f9f0, 0x2f9f1, 0x2f9f2, 0x2f9f3, 0x2f9f4,
    0x2f9f5, 0x2f9f6, 0x2f9f7, 0x2f9f8, 0x2f9f9, 0x2f9fa, 0x2f9fb, 0x2f9fc, 0x2f9fd, 0x2f9fe,
    0x2f9ff, 0x2fa00, 0x2fa01, 0x2fa02, 0x2fa03, 0x2fa04, 0x2fa05, 0x2fa06, 0x2fa07, 0x2fa08,
    0x2fa09, 0x2fa0a, 0x2fa0b, 0x2fa0c, 0x2fa0d, 0x2fa0e, 0x2fa0f, 0x2fa10, 0x2fa11, 0x2fa12,
    0x2fa13, 0x2fa14, 0x2fa15, 0x2fa16, 0x2fa17, 0x2fa18, 0x2fa19, 0x2fa1a, 0x2fa1b, 0x2fa1c,
    0x2fa1d,
};

inline constexpr uint32_t unicode_nfd_to[] = {
    0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x43, 0x45, 0x45, 0x45,
    0x45, 0x49, 0x49, 0x49, 0x49, 0x4e, 0x4f, 0x4f, 0x4f, 0x4f,
    0x4f, 0x55, 0x55, 0x55, 0x55, 0x59, 0x61, 0x61, 0x61, 0x61,
    0x61, 0x61, 0x63, 0x65, 0x65, 0x65, 0x65, 0x69, 0x69, 0x69,
    0x69, 0x6e, 0x6f, 0x6f, 0x6f, 0x6f, 0x6f, 0x75, 0x75, 0x75,
    0x75, 0x79, 0x79, 0x41, 0x61, 0x41, 0x61, 0x41, 0x61, 0x43,
    0x63, 0x43, 0x63, 0x43, 0x63, 0x43, 0x63, 0x44, 0x64, 0x45,
    0x65, 0x45, 0x65, 0x45, 0x65, 0x45, 0x65, 0x45, 0x65, 0x47,
    0x67, 0x47, 0x67, 0x47, 0x67, 0x47, 0x67, 0x48, 0x68, 0x49,
    0x69, 0x49, 0x69, 0x49, 0x69, 0x49, 0x69, 0x49, 0x4a, 0x6a,
    0x4b, 0x6b, 0x4c, 0x6c, 0x4c, 0x6c, 0x4c, 0x6c, 0x4e, 0x6e,
    0x4e, 0x6e, 0x4e, 0x6e, 0x4f, 0x6f, 0x4f, 0x6f, 0x4f, 0x6f,
    0x52, 0x72, 0x52, 0x72, 0x52, 0x72, 0x53, 0x73, 0x53, 0x73,
    0x53, 0x73, 0x53, 0x73, 0x54, 0x74, 0x54, 0x74, 0x55, 0x75,
    0x55, 0x75, 0x55, 0x75, 0x55, 0x75, 0x55, 0x75, 0x55, 0x75,
    0x57, 0x77, 0x59, 0x79, 0x59, 0x5a, 0x7a, 0x5a, 0x7a, 0x5a,
    0x7a, 0x4f, 0x6f, 0x55, 0x75, 0x41, 0x61, 0x49, 0x69, 0x4f,
    0x6f, 0x55, 0x75, 0x55, 0x75, 0x55, 0x75, 0x55, 0x75, 0x55,
    0x75, 0x41, 0x61, 0x41, 0x61, 0xc6, 0xe6, 0x47, 0x67, 0x4b,
    0x6b, 0x4f, 0x6f, 0x4f, 0x6f, 0x1b7, 0x292, 0x6a, 0x47, 0x67,
    0x4e, 0x6e, 0x41, 0x61, 0xc6, 0xe6, 0xd8, 0xf8, 0x41, 0x61,
    0x41, 0x61, 0x45, 0x65, 0x45, 0x65, 0x49, 0x69, 0x49, 0x69,
    0x4f, 0x6f, 0x4f, 0x6f, 0x52, 0x72, 0x52, 0x72, 0x55, 0x75,
    0x55, 0x75, 0x53, 0x73, 0x54, 0x74, 0x48, 0x68, 0x41, 0x61,
    0x45, 0x65, 0x4f, 0x6f, 0x4f, 0x6f, 0x4f, 0x6f, 0x4f, 0x6f,
    0x59, 0x79, 0x300, 0x301, 0x313, 0x308, 0x2b9, 0x3b, 0xa8, 0x391,
    0xb7, 0x395, 0x397, 0x399, 0x39f, 0x3a5, 0x3a9, 0x3b9, 0x399, 0x3a5,
    0x3b1, 0x3b5, 0x3b7, 0x3b9, 0x3c5, 0x3b9, 0x3c5, 0x3bf, 0x3c5, 0x3c9,
    0x3d2, 0x3d2, 0x415, 0x415, 0x413, 0x406, 0x41a, 0x418, 0x423, 0x418,
    0x438, 0x435, 0x435, 0x433, 0x456, 0x43a, 0x438, 0x443, 0x474, 0x475,
    0x416, 0x436, 0x410, 0x430, 0x410, 0x430, 0x415, 0x435, 0x4d8, 0x4d9,
    0x416, 0x436, 0x417, 0x437, 0x418, 0x438, 0x418, 0x438, 0x41e, 0x43e,
    0x4e8, 0x4e9, 0x42d, 0x44d, 0x423, 0x443, 0x423, 0x443, 0x423, 0x443,
    0x427, 0x447, 0x42b, 0x44b, 0x627, 0x627, 0x648, 0x627, 0x64a, 0x6d5,
    0x6c1, 0x6d2, 0x928, 0x930, 0x933, 0x915, 0x916, 0x917, 0x91c, 0x921,
    0x922, 0x92b, 0x92f, 0x9c7, 0x9c7, 0x9a1, 0x9a2, 0x9af, 0xa32, 0xa38,
    0xa16, 0xa17, 0xa1c, 0xa2b, 0xb47, 0xb47, 0xb47, 0xb21, 0xb22, 0xb92,
    0xbc6, 0xbc7, 0xbc6, 0xc46, 0xcbf, 0xcc6, 0xcc6, 0xcc6, 0xcc6, 0xd46,
    0xd47, 0xd46, 0xdd9, 0xdd9, 0xdd9, 0xdd9, 0xf42, 0xf4c, 0xf51, 0xf56,
    0xf5b, 0xf40, 0xf71, 0xf71, 0xfb2, 0xfb3, 0xf71, 0xf92, 0xf9c, 0xfa1,
    0xfa6, 0xfab, 0xf90, 0x1025, 0x1b05, 0x1b07, 0x1b09, 0x1b0b, 0x1b0d, 0x1b11,
    0x1b3a, 0x1b3c, 0x1b3e, 0x1b3f, 0x1b42, 0x41, 0x61, 0x42, 0x62, 0x42,
    0x62, 0x42, 0x62, 0x43, 0x63, 0x44, 0x64, 0x44, 0x64, 0x44,
    0x64, 0x44, 0x64, 0x44, 0x64, 0x45, 0x65, 0x45, 0x65, 0x45,
    0x65, 0x45, 0x65, 0x45, 0x65, 0x46, 0x66, 0x47, 0x67, 0x48,
    0x68, 0x48, 0x68, 0x48, 0x68, 0x48, 0x68, 0x48, 0x68, 0x49,
    0x69, 0x49, 0x69, 0x4b, 0x6b, 0x4b, 0x6b, 0x4b, 0x6b, 0x4c,
    0x6c, 0x4c, 0x6c, 0x4c, 0x6c, 0x4c, 0x6c, 0x4d, 0x6d, 0x4d,
    0x6d, 0x4d, 0x6d, 0x4e, 0x6e, 0x4e, 0x6e, 0x4e, 0x6e, 0x4e,
    0x6e, 0x4f, 0x6f, 0x4f, 0x6f, 0x4f, 0x6f, 0x4f, 0x6f, 0x50,
    0x70, 0x50, 0x70, 0x52, 0x72, 0x52, 0x72, 0x52, 0x72, 0x52,
    0x72, 0x53, 0x73, 0x53, 0x73, 0x53, 0x73, 0x53, 0x73, 0x53,
    0x73, 0x54, 0x74, 0x54, 0x74, 0x54, 0x74, 0x54, 0x74, 0x55,
    0x75, 0x55, 0x75, 0x55, 0x75, 0x55, 0x75, 0x55, 0x75, 0x56,
    0x76, 0x56, 0x76, 0x57, 0x77, 0x57, 0x77, 0x57, 0x77, 0x57,
    0x77, 0x57, 0x77, 0x58, 0x78, 0x58, 0x78, 0x59, 0x79, 0x5a,
    0x7a, 0x5a, 0x7a, 0x5a, 0x7a, 0x68, 0x74, 0x77, 0x79, 0x17f,
    0x41, 0x61, 0x41, 0x61, 0x41, 0x61, 0x41, 0x61, 0x41, 0x61,
    0x41, 0x61, 0x41, 0x61, 0x41, 0x61, 0x41, 0x61, 0x41, 0x61,
    0x41, 0x61, 0x41, 0x61, 0x45, 0x65, 0x45, 0x65, 0x45, 0x65,
    0x45, 0x65, 0x45, 0x65, 0x45, 0x65, 0x45, 0x65, 0x45, 0x65,
    0x49, 0x69, 0x49, 0x69, 0x4f, 0x6f, 0x4f, 0x6f, 0x4f, 0x6f,
    0x4f, 0x6f, 0x4f, 0x6f, 0x4f, 0x6f, 0x4f, 0x6f, 0x4f, 0x6f,
    0x4f, 0x6f, 0x4f, 0x6f, 0x4f, 0x6f, 0x4f, 0x6f, 0x55, 0x75,
    0x55, 0x75, 0x55, 0x75, 0x55, 0x75, 0x55, 0x75, 0x55, 0x75,
    0x55, 0x75, 0x59, 0x79, 0x59, 0x79, 0x59, 0x79, 0x59, 0x79,
    0x3b1, 0x3b1, 0x3b1, 0x3b1, 0x3b1, 0x3b1, 0x3b1, 0x3b1, 0x391, 0x391,
    0x391, 0x391, 0x391, 0x391, 0x391, 0x391, 0x3b5, 0x3b5, 0x3b5, 0x3b5,
    0x3b5, 0x3b5, 0x395, 0x395, 0x395, 0x395, 0x395, 0x395, 0x3b7, 0x3b7,
    0x3b7, 0x3b7, 0x3b7, 0x3b7, 0x3b7, 0x3b7, 0x397, 0x397, 0x397, 0x397,
    0x397, 0x397, 0x397, 0x397, 0x3b9, 0x3b9, 0x3b9, 0x3b9, 0x3b9, 0x3b9,
    0x3b9, 0x3b9, 0x399, 0x399, 0x399, 0x399, 0x399, 0x399, 0x399, 0x399,
    0x3bf, 0x3bf, 0x3bf, 0x3bf, 0x3bf, 0x3bf, 0x39f, 0x39f, 0x39f, 0x39f,
    0x39f, 0x39f, 0x3c5, 0x3c5, 0x3c5, 0x3c5, 0x3c5, 0x3c5, 0x3c5, 0x3c5,
    0x3a5, 0x3a5, 0x3a5, 0x3a5, 0x3c9, 0x3c9, 0x3c9, 0x3c9, 0x3c9, 0x3c9,
    0x3c9, 0x3c9, 0x3a9, 0x3a9, 0x3a9, 0x3a9, 0x3a9, 0x3a9, 0x3a9, 0x3a9,
    0x3b1, 0x3b1, 0x3b5, 0x3b5, 0x3b7, 0x3b7, 0x3b9, 0x3b9, 0x3bf, 0x3bf,
    0x3c5, 0x3c5, 0x3c9, 0x3c9, 0x3b1, 0x3b1, 0x3b1, 0x3b1, 0x3b1, 0x3b1,
    0x3b1, 0x3b1, 0x391, 0x391, 0x391, 0x391, 0x391, 0x391, 0x391, 0x391,
    0x3b7, 0x3b7, 0x3b7, 0x3b7, 0x3b7, 0x3b7, 0x3b7, 0x3b7, 0x397, 0x397,
    0x397, 0x397, 0x397, 0x397, 0x397, 0x397, 0x3c9, 0x3c9, 0x3c9, 0x3c9,
    0x3c9, 0x3c9, 0x3c9, 0x3c9, 0x3a9, 0x3a9, 0x3a9, 0x3a9, 0x3a9, 0x3a9,
    0x3a9, 0x3a9, 0x3b1, 0x3b1, 0x3b1, 0x3b1, 0x3b1, 0x3b1, 0x3b1, 0x391,
    0x391, 0x391, 0x391, 0x391, 0x3b9, 0xa8, 0x3b7, 0x3b7, 0x3b7, 0x3b7,
    0x3b7, 0x395, 0x395, 0x397, 0x397, 0x397, 0x1fbf, 0x1fbf, 0x1fbf, 0x3b9,
    0x3b9, 0x3b9, 0x3b9, 0x3b9, 0x3b9, 0x399, 0x399, 0x399, 0x399, 0x1ffe,
    0x1ffe, 0x1ffe, 0x3c5, 0x3c5, 0x3c5, 0x3c5, 0x3c1, 0x3c1, 0x3c5, 0x3c5,
    0x3a5, 0x3a5, 0x3a5, 0x3a5, 0x3a1, 0xa8, 0xa8, 0x60, 0x3c9, 0x3c9,
    0x3c9, 0x3c9, 0x3c9, 0x39f, 0x39f, 0x3a9, 0x3a9, 0x3a9, 0xb4, 0x2002,
    0x2003, 0x3a9, 0x4b, 0x41, 0x2190, 0x2192, 0x2194, 0x21d0, 0x21d4, 0x21d2,
    0x2203, 0x2208, 0x220b, 0x2223, 0x2225, 0x223c, 0x2243, 0x2245, 0x2248, 0x3d,
    0x2261, 0x224d, 0x3c, 0x3e, 0x2264, 0x2265, 0x2272, 0x2273, 0x2276, 0x2277,
    0x227a, 0x227b, 0x2282, 0x2283, 0x2286, 0x2287, 0x22a2, 0x22a8, 0x22a9, 0x22ab,
    0x227c, 0x227d, 0x2291, 0x2292, 0x22b2, 0x22b3, 0x22b4, 0x22b5, 0x3008, 0x3009,
    0x2add, 0x304b, 0x304d, 0x304f, 0x3051, 0x3053, 0x3055, 0x3057, 0x3059, 0x305b,
    0x305d, 0x305f, 0x3061, 0x3064, 0x3066, 0x3068, 0x306f, 0x306f, 0x3072, 0x3072,
    0x3075, 0x3075, 0x3078, 0x3078, 0x307b, 0x307b, 0x3046, 0x309d, 0x30ab, 0x30ad,
    0x30af, 0x30b1, 0x30b3, 0x30b5, 0x30b7, 0x30b9, 0x30bb, 0x30bd, 0x30bf, 0x30c1,
    0x30c4, 0x30c6, 0x30c8, 0x30cf, 0x30cf, 0x30d2, 0x30d2, 0x30d5, 0x30d5, 0x30d8,
    0x30d8, 0x30db, 0x30db, 0x30a6, 0x30ef, 0x30f0, 0x30f1, 0x30f2, 0x30fd, 0x8c48,
    0x66f4, 0x8eca, 0x8cc8, 0x6ed1, 0x4e32, 0x53e5, 0x9f9c, 0x9f9c, 0x5951, 0x91d1,
    0x5587, 0x5948, 0x61f6, 0x7669, 0x7f85, 0x863f, 0x87ba, 0x88f8, 0x908f, 0x6a02,
    0x6d1b, 0x70d9, 0x73de, 0x843d, 0x916a, 0x99f1, 0x4e82, 0x5375, 0x6b04, 0x721b,
    0x862d, 0x9e1e, 0x5d50, 0x6feb, 0x85cd, 0x8964, 0x62c9, 0x81d8, 0x881f, 0x5eca,
    0x6717, 0x6d6a, 0x72fc, 0x90ce, 0x4f86, 0x51b7, 0x52de, 0x64c4, 0x6ad3, 0x7210,
    0x76e7, 0x8001, 0x8606, 0x865c, 0x8def, 0x9732, 0x9b6f, 0x9dfa, 0x788c, 0x797f,
    0x7da0, 0x83c9, 0x9304, 0x9e7f, 0x8ad6, 0x58df, 0x5f04, 0x7c60, 0x807e, 0x7262,
    0x78ca, 0x8cc2, 0x96f7, 0x58d8, 0x5c62, 0x6a13, 0x6dda, 0x6f0f, 0x7d2f, 0x7e37,
    0x964b, 0x52d2, 0x808b, 0x51dc, 0x51cc, 0x7a1c, 0x7dbe, 0x83f1, 0x9675, 0x8b80,
    0x62cf, 0x6a02, 0x8afe, 0x4e39, 0x5be7, 0x6012, 0x7387, 0x7570, 0x5317, 0x78fb,
    0x4fbf, 0x5fa9, 0x4e0d, 0x6ccc, 0x6578, 0x7d22, 0x53c3, 0x585e, 0x7701, 0x8449,
    0x8aaa, 0x6bba, 0x8fb0, 0x6c88, 0x62fe, 0x82e5, 0x63a0, 0x7565, 0x4eae, 0x5169,
    0x51c9, 0x6881, 0x7ce7, 0x826f, 0x8ad2, 0x91cf, 0x52f5, 0x5442, 0x5973, 0x5eec,
    0x65c5, 0x6ffe, 0x792a, 0x95ad, 0x9a6a, 0x9e97, 0x9ece, 0x529b, 0x66c6, 0x6b77,
    0x8f62, 0x5e74, 0x6190, 0x6200, 0x649a, 0x6f23, 0x7149, 0x7489, 0x79ca, 0x7df4,
    0x806f, 0x8f26, 0x84ee, 0x9023, 0x934a, 0x5217, 0x52a3, 0x54bd, 0x70c8, 0x88c2,
    0x8aaa, 0x5ec9, 0x5ff5, 0x637b, 0x6bae, 0x7c3e, 0x7375, 0x4ee4, 0x56f9, 0x5be7,
    0x5dba, 0x601c, 0x73b2, 0x7469, 0x7f9a, 0x8046, 0x9234, 0x96f6, 0x9748, 0x9818,
    0x4f8b, 0x79ae, 0x91b4, 0x96b8, 0x60e1, 0x4e86, 0x50da, 0x5bee, 0x5c3f, 0x6599,
    0x6a02, 0x71ce, 0x7642, 0x84fc, 0x907c, 0x9f8d, 0x6688, 0x962e, 0x5289, 0x677b,
    0x67f3, 0x6d41, 0x6e9c, 0x7409, 0x7559, 0x786b, 0x7d10, 0x985e, 0x516d, 0x622e,
    0x9678, 0x502b, 0x5d19, 0x6dea, 0x8f2a, 0x5f8b, 0x6144, 0x6817, 0x7387, 0x9686,
    0x5229, 0x540f, 0x5c65, 0x6613, 0x674e, 0x68a8, 0x6ce5, 0x7406, 0x75e2, 0x7f79,
    0x88cf, 0x88e1, 0x91cc, 0x96e2, 0x533f, 0x6eba, 0x541d, 0x71d0, 0x7498, 0x85fa,
    0x96a3, 0x9c57, 0x9e9f, 0x6797, 0x6dcb, 0x81e8, 0x7acb, 0x7b20, 0x7c92, 0x72c0,
    0x7099, 0x8b58, 0x4ec0, 0x8336, 0x523a, 0x5207, 0x5ea6, 0x62d3, 0x7cd6, 0x5b85,
    0x6d1e, 0x66b4, 0x8f3b, 0x884c, 0x964d, 0x898b, 0x5ed3, 0x5140, 0x55c0, 0x585a,
    0x6674, 0x51de, 0x732a, 0x76ca, 0x793c, 0x795e, 0x7965, 0x798f, 0x9756, 0x7cbe,
    0x7fbd, 0x8612, 0x8af8, 0x9038, 0x90fd, 0x98ef, 0x98fc, 0x9928, 0x9db4, 0x90de,
    0x96b7, 0x4fae, 0x50e7, 0x514d, 0x52c9, 0x52e4, 0x5351, 0x559d, 0x5606, 0x5668,
    0x5840, 0x58a8, 0x5c64, 0x5c6e, 0x6094, 0x6168, 0x618e, 0x61f2, 0x654f, 0x65e2,
    0x6691, 0x6885, 0x6d77, 0x6e1a, 0x6f22, 0x716e, 0x722b, 0x7422, 0x7891, 0x793e,
    0x7949, 0x7948, 0x7950, 0x7956, 0x795d, 0x798d, 0x798e, 0x7a40, 0x7a81, 0x7bc0,
    0x7df4, 0x7e09, 0x7e41, 0x7f72, 0x8005, 0x81ed, 0x8279, 0x8279, 0x8457, 0x8910,
    0x8996, 0x8b01, 0x8b39, 0x8cd3, 0x8d08, 0x8fb6, 0x9038, 0x96e3, 0x97ff, 0x983b,
    0x6075, 0x242ee, 0x8218, 0x4e26, 0x51b5, 0x5168, 0x4f80, 0x5145, 0x5180, 0x52c7,
    0x52fa, 0x559d, 0x5555, 0x5599, 0x55e2, 0x585a, 0x58b3, 0x5944, 0x5954, 0x5a62,
    0x5b28, 0x5ed2, 0x5ed9, 0x5f69, 0x5fad, 0x60d8, 0x614e, 0x6108, 0x618e, 0x6160,
    0x61f2, 0x6234, 0x63c4, 0x641c, 0x6452, 0x6556, 0x6674, 0x6717, 0x671b, 0x6756,
    0x6b79, 0x6bba, 0x6d41, 0x6edb, 0x6ecb, 0x6f22, 0x701e, 0x716e, 0x77a7, 0x7235,
    0x72af, 0x732a, 0x7471, 0x7506, 0x753b, 0x761d, 0x761f, 0x76ca, 0x76db, 0x76f4,
    0x774a, 0x7740, 0x78cc, 0x7ab1, 0x7bc0, 0x7c7b, 0x7d5b, 0x7df4, 0x7f3e, 0x8005,
    0x8352, 0x83ef, 0x8779, 0x8941, 0x8986, 0x8996, 0x8abf, 0x8af8, 0x8acb, 0x8b01,
    0x8afe, 0x8aed, 0x8b39, 0x8b8a, 0x8d08, 0x8f38, 0x9072, 0x9199, 0x9276, 0x967c,
    0x96e3, 0x9756, 0x97db, 0x97ff, 0x980b, 0x983b, 0x9b12, 0x9f9c, 0x2284a, 0x22844,
    0x233d5, 0x3b9d, 0x4018, 0x4039, 0x25249, 0x25cd0, 0x27ed3, 0x9f43, 0x9f8e, 0x5d9,
    0x5f2, 0x5e9, 0x5e9, 0x5e9, 0x5e9, 0x5d0, 0x5d0, 0x5d0, 0x5d1, 0x5d2,
    0x5d3, 0x5d4, 0x5d5, 0x5d6, 0x5d8, 0x5d9, 0x5da, 0x5db, 0x5dc, 0x5de,
    0x5e0, 0x5e1, 0x5e3, 0x5e4, 0x5e6, 0x5e7, 0x5e8, 0x5e9, 0x5ea, 0x5d5,
    0x5d1, 0x5db, 0x5e4, 0x11099, 0x1109b, 0x110a5, 0x11131, 0x11132, 0x11347, 0x11347,
    0x114b9, 0x114b9, 0x114b9, 0x115b8, 0x115b9, 0x11935, 0x1d157, 0x1d158, 0x1d158, 0x1d158,
    0x1d158, 0x1d158, 0x1d158, 0x1d1b9, 0x1d1ba, 0x1d1b9, 0x1d1ba, 0x1d1b9, 0x1d1ba, 0x4e3d,
    0x4e38, 0x4e41, 0x20122, 0x4f60, 0x4fae, 0x4fbb, 0x5002, 0x507a, 0x5099, 0x50e7,
    0x50cf, 0x349e, 0x2063a, 0x514d, 0x5154, 0x5164, 0x5177, 0x2051c, 0x34b9, 0x5167,
    0x518d, 0x2054b, 0x5197, 0x51a4, 0x4ecc, 0x51ac, 0x51b5, 0x291df, 0x51f5, 0x5203,
    0x34df, 0x523b, 0x5246, 0x5272, 0x5277, 0x3515, 0x52c7, 0x52c9, 0x52e4, 0x52fa,
    0x5305, 0x5306, 0x5317, 0x5349, 0x5351, 0x535a, 0x5373, 0x537d, 0x537f, 0x537f,
    0x537f, 0x20a2c, 0x7070, 0x53ca, 0x53df, 0x20b63, 0x53eb, 0x53f1, 0x5406, 0x549e,
    0x5438, 0x5448, 0x5468, 0x54a2, 0x54f6, 0x5510, 0x5553, 0x5563, 0x5584, 0x5584,
    0x5599, 0x55ab, 0x55b3, 0x55c2, 0x5716, 0x5606, 0x5717, 0x5651, 0x5674, 0x5207,
    0x58ee, 0x57ce, 0x57f4, 0x580d, 0x578b, 0x5832, 0x5831, 0x58ac, 0x214e4, 0x58f2,
    0x58f7, 0x5906, 0x591a, 0x5922, 0x5962, 0x216a8, 0x216ea, 0x59ec, 0x5a1b, 0x5a27,
    0x59d8, 0x5a66, 0x36ee, 0x36fc, 0x5b08, 0x5b3e, 0x5b3e, 0x219c8, 0x5bc3, 0x5bd8,
    0x5be7, 0x5bf3, 0x21b18, 0x5bff, 0x5c06, 0x5f53, 0x5c22, 0x3781, 0x5c60, 0x5c6e,
    0x5cc0, 0x5c8d, 0x21de4, 0x5d43, 0x21de6, 0x5d6e, 0x5d6b, 0x5d7c, 0x5de1, 0x5de2,
    0x382f, 0x5dfd, 0x5e28, 0x5e3d, 0x5e69, 0x3862, 0x22183, 0x387c, 0x5eb0, 0x5eb3,
    0x5eb6, 0x5eca, 0x2a392, 0x5efe, 0x22331, 0x22331, 0x8201, 0x5f22, 0x5f22, 0x38c7,
    0x232b8, 0x261da, 0x5f62, 0x5f6b, 0x38e3, 0x5f9a, 0x5fcd, 0x5fd7, 0x5ff9, 0x6081,
    0x393a, 0x391c, 0x6094, 0x226d4, 0x60c7, 0x6148, 0x614c, 0x614e, 0x614c, 0x617a,
    0x618e, 0x61b2, 0x61a4, 0x61af, 0x61de, 0x61f2, 0x61f6, 0x6210, 0x621b, 0x625d,
    0x62b1, 0x62d4, 0x6350, 0x22b0c, 0x633d, 0x62fc, 0x6368, 0x6383, 0x63e4, 0x22bf1,
    0x6422, 0x63c5, 0x63a9, 0x3a2e, 0x6469, 0x647e, 0x649d, 0x6477, 0x3a6c, 0x654f,
    0x656c, 0x2300a, 0x65e3, 0x66f8, 0x6649, 0x3b19, 0x6691, 0x3b08, 0x3ae4, 0x5192,
    0x5195, 0x6700, 0x669c, 0x80ad, 0x43d9, 0x6717, 0x671b, 0x6721, 0x675e, 0x6753,
    0x233c3, 0x3b49, 0x67fa, 0x6785, 0x6852, 0x6885, 0x2346d, 0x688e, 0x681f, 0x6914,
    0x3b9d, 0x6942, 0x69a3, 0x69ea, 0x6aa8, 0x236a3, 0x6adb, 0x3c18, 0x6b21, 0x238a7,
    0x6b54, 0x3c4e, 0x6b72, 0x6b9f, 0x6bba, 0x6bbb, 0x23a8d, 0x21d0b, 0x23afa, 0x6c4e,
    0x23cbc, 0x6cbf, 0x6ccd, 0x6c67, 0x6d16, 0x6d3e, 0x6d77, 0x6d41, 0x6d69, 0x6d78,
    0x6d85, 0x23d1e, 0x6d34, 0x6e2f, 0x6e6e, 0x3d33, 0x6ecb, 0x6ec7, 0x23ed1, 0x6df9,
    0x6f6e, 0x23f5e, 0x23f8e, 0x6fc6, 0x7039, 0x701e, 0x701b, 0x3d96, 0x704a, 0x707d,
    0x7077, 0x70ad, 0x20525, 0x7145, 0x24263, 0x719c, 0x243ab, 0x7228, 0x7235, 0x7250,
    0x24608, 0x7280, 0x7295, 0x24735, 0x24814, 0x737a, 0x738b, 0x3eac, 0x73a5, 0x3eb8,
    0x3eb8, 0x7447, 0x745c, 0x7471, 0x7485, 0x74ca, 0x3f1b, 0x7524, 0x24c36, 0x753e,
    0x24c92, 0x7570, 0x2219f, 0x7610, 0x24fa1, 0x24fb8, 0x25044, 0x3ffc, 0x4008, 0x76f4,
    0x250f3, 0x250f2, 0x25119, 0x25133, 0x771e, 0x771f, 0x771f, 0x774a, 0x4039, 0x778b,
    0x4046, 0x4096, 0x2541d, 0x784e, 0x788c, 0x78cc, 0x40e3, 0x25626, 0x7956, 0x2569a,
    0x256c5, 0x798f, 0x79eb, 0x412f, 0x7a40, 0x7a4a, 0x7a4f, 0x2597c, 0x25aa7, 0x25aa7,
    0x7aee, 0x4202, 0x25bab, 0x7bc6, 0x7bc9, 0x4227, 0x25c80, 0x7cd2, 0x42a0, 0x7ce8,
    0x7ce3, 0x7d00, 0x25f86, 0x7d63, 0x4301, 0x7dc7, 0x7e02, 0x7e45, 0x4334, 0x26228,
    0x26247, 0x4359, 0x262d9, 0x7f7a, 0x2633e, 0x7f95, 0x7ffa, 0x8005, 0x264da, 0x26523,
    0x8060, 0x265a8, 0x8070, 0x2335f, 0x43d5, 0x80b2, 0x8103, 0x440b, 0x813e, 0x5ab5,
    0x267a7, 0x267b5, 0x23393, 0x2339c, 0x8201, 0x8204, 0x8f9e, 0x446b, 0x8291, 0x828b,
    0x829d, 0x52b3, 0x82b1, 0x82b3, 0x82bd, 0x82e6, 0x26b3c, 0x82e5, 0x831d, 0x8363,
    0x83ad, 0x8323, 0x83bd, 0x83e7, 0x8457, 0x8353, 0x83ca, 0x83cc, 0x83dc, 0x26c36,
    0x26d6b, 0x26cd5, 0x452b, 0x84f1, 0x84f3, 0x8516, 0x273ca, 0x8564, 0x26f2c, 0x455d,
    0x4561, 0x26fb1, 0x270d2, 0x456b, 0x8650, 0x865c, 0x8667, 0x8669, 0x86a9, 0x8688,
    0x870e, 0x86e2, 0x8779, 0x8728, 0x876b, 0x8786, 0x45d7, 0x87e1, 0x8801, 0x45f9,
    0x8860, 0x8863, 0x27667, 0x88d7, 0x88de, 0x4635, 0x88fa, 0x34bb, 0x278ae, 0x27966,
    0x46be, 0x46c7, 0x8aa0, 0x8aed, 0x8b8a, 0x8c55, 0x27ca8, 0x8cab, 0x8cc1, 0x8d1b,
    0x8d77, 0x27f2f, 0x20804, 0x8dcb, 0x8dbc, 0x8df0, 0x208de, 0x8ed4, 0x8f38, 0x285d2,
    0x285ed, 0x9094, 0x90f1, 0x9111, 0x2872e, 0x911b, 0x9238, 0x92d7, 0x92d8, 0x927c,
    0x93f9, 0x9415, 0x28bfa, 0x958b, 0x4995, 0x95b7, 0x28d77, 0x49e6, 0x96c3, 0x5db2,
    0x9723, 0x29145, 0x2921a, 0x4a6e, 0x4a76, 0x97e0, 0x2940a, 0x4ab2, 0x29496, 0x980b,
    0x980b, 0x9829, 0x295b6, 0x98e2, 0x4b33, 0x9929, 0x99a7, 0x99c2, 0x99fe, 0x4bce,
    0x29b30, 0x9b12, 0x9c40, 0x9cfd, 0x4cce, 0x4ced, 0x9d67, 0x2a0ce, 0x4cf8, 0x2a105,
    0x2a20e, 0x2a291, 0x9ebb, 0x4d56, 0x9ef9, 0x9efe, 0x9f05, 0x9f0f, 0x9f16, 0x9f3b,
    0x2a600,
};

}  // namespace detail
}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/unicode_tables.hpp ----

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

namespace detail {

// ---------------------------------------------------------------------------------------
// Unicode helpers
// ---------------------------------------------------------------------------------------

// Classes stored in unicode_class_ranges (see scripts/gen_unicode_tables.py).
enum : uint8_t {
  ucls_unassigned = 0,
  ucls_number = 1,
  ucls_letter = 2,
  ucls_separator = 3,
  ucls_mark = 4,
  ucls_punctuation = 5,
  ucls_symbol = 6,
  ucls_other = 7,
};
// Flags of one code point: class in bits 0-2, white space in bit 3, bit 4 set for every
// code point inside the text (so "past the end" reads as 0).
enum : uint8_t { uflag_space = 8, uflag_valid = 16 };

inline uint8_t unicode_class_slow(uint32_t cp) {
  constexpr size_t n = sizeof(unicode_class_ranges) / sizeof(unicode_class_ranges[0]);
  size_t lo = 0, hi = n;  // last range whose start <= cp
  while (hi - lo > 1) {
    size_t mid = (lo + hi) / 2;
    if ((unicode_class_ranges[mid] >> 3) <= cp)
      lo = mid;
    else
      hi = mid;
  }
  return static_cast<uint8_t>(unicode_class_ranges[lo] & 7);
}

inline bool unicode_is_space_slow(uint32_t cp) {
  for (uint32_t s : unicode_white_space)
    if (s == cp) return true;
  return false;
}

inline uint8_t unicode_flags_slow(uint32_t cp) {
  if (cp >= 0x110000) return static_cast<uint8_t>(uflag_valid);
  uint8_t f = unicode_class_slow(cp) | uflag_valid;
  if (unicode_is_space_slow(cp)) f |= uflag_space;
  return f;
}

// Flags of the Basic Multilingual Plane, expanded once (64 KiB) on first use.
struct UnicodeBmpTable {
  uint8_t flags[0x10000];
  UnicodeBmpTable() {
    // Walk the class ranges once instead of searching per code point.
    constexpr size_t n = sizeof(unicode_class_ranges) / sizeof(unicode_class_ranges[0]);
    for (size_t r = 0; r < n; ++r) {
      const uint32_t begin = unicode_class_ranges[r] >> 3;
      if (begin >= 0x10000) break;
      const uint32_t end = r + 1 < n ? std::min<uint32_t>(unicode_class_ranges[r + 1] >> 3, 0x10000) : 0x10000;
      for (uint32_t c = begin; c < end; ++c) flags[c] = static_cast<uint8_t>((unicode_class_ranges[r] & 7) | uflag_valid);
    }
    for (uint32_t s : unicode_white_space)
      if (s < 0x10000) flags[s] |= uflag_space;
  }
};

inline uint8_t unicode_flags(uint32_t cp) {
  static const UnicodeBmpTable bmp;
  if (cp < 0x10000) return bmp.flags[cp];
  return unicode_flags_slow(cp);
}
inline uint8_t uclass(uint8_t flags) { return flags & 7; }
inline bool uis_letter(uint8_t f) { return (f & 7) == ucls_letter; }
inline bool uis_number(uint8_t f) { return (f & 7) == ucls_number; }
inline bool uis_space(uint8_t f) { return (f & uflag_space) != 0; }

inline uint32_t unicode_lower(uint32_t cp) {
  if (cp < 128) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  const uint32_t* b = std::begin(unicode_lower_from);
  const uint32_t* e = std::end(unicode_lower_from);
  const uint32_t* it = std::lower_bound(b, e, cp);
  if (it != e && *it == cp) return unicode_lower_to[it - b];
  return cp;
}

// First code point of the canonical decomposition (the base letter of an accented one).
inline uint32_t unicode_nfd_first(uint32_t cp) {
  if (cp < 0xC0) return cp;
  if (cp >= 0xAC00 && cp <= 0xD7A3) return 0x1100 + (cp - 0xAC00) / 588;
  const uint32_t* b = std::begin(unicode_nfd_from);
  const uint32_t* e = std::end(unicode_nfd_from);
  const uint32_t* it = std::lower_bound(b, e, cp);
  if (it != e && *it == cp) return unicode_nfd_to[it - b];
  return cp;
}

// Byte length of a UTF-8 sequence from its first byte (1 for stray continuation bytes).
inline size_t utf8_len(unsigned char c) {
  static constexpr uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return lookup[c >> 4];
}

// Decodes one code point the way llama.cpp reads text: a lead byte and the right number of
// continuation bytes make a code point (overlong forms and surrogates included); anything
// else is one byte read as U+FFFD.
inline uint32_t utf8_decode_lenient(const unsigned char* s, size_t n, size_t* used) {
  const unsigned char c = s[0];
  *used = 1;
  if (c < 0x80) return c;
  auto cont = [&](size_t i) { return i < n && (s[i] & 0xC0) == 0x80; };
  if ((c & 0xE0) == 0xC0) {
    if (!cont(1)) return 0xFFFD;
    *used = 2;
    return ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu);
  }
  if ((c & 0xF0) == 0xE0) {
    if (!cont(1) || !cont(2)) return 0xFFFD;
    *used = 3;
    return ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
  }
  if ((c & 0xF8) == 0xF0) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0xFFFD;
    uint32_t cp = ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
    if (cp > 0x10FFFF) return 0xFFFD;  // llama.cpp throws here; we substitute
    *used = 4;
    return cp;
  }
  return 0xFFFD;
}

inline void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Strict UTF-8 check of the sequence starting at s[0] with n bytes available:
// returns its length when complete and valid, 0 when s could still become valid with more
// bytes, and -k when the first k bytes are an invalid (maximal) subpart to replace.
inline int utf8_strict_step(const unsigned char* s, size_t n) {
  const unsigned char c = s[0];
  if (c < 0x80) return 1;
  int len;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (int i = 1; i < len; ++i) {
    if (static_cast<size_t>(i) >= n) return 0;
    const unsigned char b = s[i];
    const unsigned char l = (i == 1) ? lo : 0x80, h = (i == 1) ? hi : 0xBF;
    if (b < l || b > h) return -i;
  }
  return len;
}

// ---------------------------------------------------------------------------------------
// A string -> id table over the vocabulary's own text (open addressing, no allocation per
// lookup).
// ---------------------------------------------------------------------------------------
inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a, 64-bit
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(p[i]);
    h *= 0x100000001b3ull;
  }
  return h ^ (h >> 29);
}

struct U64Map {  // uint64 key -> uint64 value, open addressing
  std::vector<uint64_t> keys, vals;
  std::vector<uint8_t> used;
  size_t mask = 0;
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2 + 1) cap <<= 1;
    keys.assign(cap, 0);
    vals.assign(cap, 0);
    used.assign(cap, 0);
    mask = cap - 1;
  }
  static uint64_t mix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
  }
  void insert_if_absent(uint64_t k, uint64_t v) {
    for (size_t i = mix(k) & mask;; i = (i + 1) & mask) {
      if (!used[i]) {
        used[i] = 1;
        keys[i] = k;
        vals[i] = v;
        return;
      }
      if (keys[i] == k) return;
    }
  }
  const uint64_t* find(uint64_t k) const {
    if (keys.empty()) return nullptr;
    for (size_t i = mix(k) & mask;; i = (i + 1) & mask) {
      if (!used[i]) return nullptr;
      if (keys[i] == k) return &vals[i];
    }
  }
};

// ---------------------------------------------------------------------------------------
// Pre-tokenizers for byte-level BPE. Each works on the code points of one text fragment
// (cps/flags) and appends word lengths (in code points) to `out`.
// ---------------------------------------------------------------------------------------
enum class PreTokenizer {
  default_,        // "default" or no key: punctuation runs, GPT-2 rule, digit runs, 3-digit groups
  gpt2,            // gpt-2, mpt, olmo, ...: the GPT-2 regex alone
  llama3,          // llama3 / llama-bpe, dbrx, smaug
  qwen2,           // qwen2, deepseek-r1-qwen, stablelm2, ...
  qwen35,          // qwen2's rule with combining marks kept inside letter runs
  deepseek_llm,
  deepseek_coder,
  falcon,
  starcoder,       // starcoder, refact, command-r, smollm, codeshell, exaone, minerva
};

// Flags at position i of [begin,end) or 0 outside it.
struct CpView {
  const uint32_t* cps;
  const uint8_t* flags;
  size_t begin, end;
  uint32_t cp(size_t i) const { return (i >= begin && i < end) ? cps[i] : 0xFFFFFFFFu; }
  uint8_t fl(size_t i) const { return (i >= begin && i < end) ? flags[i] : 0; }
};

// 's|'t|'re|'ve|'m|'ll|'d (optionally case-insensitive). Returns the length matched.
inline size_t match_contraction(const CpView& v, size_t pos, bool ci) {
  if (v.cp(pos) != '\'' || pos + 1 >= v.end) return 0;
  auto low = [&](uint32_t c) { return ci ? unicode_lower(c) : c; };
  const uint32_t a = low(v.cp(pos + 1));
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (pos + 2 < v.end) {
    const uint32_t b = low(v.cp(pos + 2));
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  }
  return 0;
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
inline void split_gpt2(const CpView& v, std::vector<size_t>& out) {
  size_t prev = v.begin;
  auto emit = [&](size_t e) {
    if (e > prev) out.push_back(e - prev);
    prev = e;
  };
  for (size_t pos = v.begin; pos < v.end;) {
    const uint32_t c = v.cp(pos);
    if (size_t n = match_contraction(v, pos, false)) {
      pos += n;
      emit(pos);
      continue;
    }
    uint8_t f2 = (c == ' ') ? v.fl(pos + 1) : v.fl(pos);
    if (uis_letter(f2)) {
      pos += (c == ' ');
      while (uis_letter(v.fl(pos))) ++pos;
      emit(pos);
      continue;
    }
    if (uis_number(f2)) {
      pos += (c == ' ');
      while (uis_number(v.fl(pos))) ++pos;
      emit(pos);
      continue;
    }
    auto other = [](uint8_t f) { return f != 0 && !uis_space(f) && !uis_letter(f) && !uis_number(f); };
    if (other(f2)) {
      pos += (c == ' ');
      while (other(v.fl(pos))) ++pos;
      emit(pos);
      continue;
    }
    size_t nws = 0;
    while (uis_space(v.fl(pos + nws))) ++nws;
    if (nws > 1 && pos + nws < v.end) {  // \s+(?!\S): leave the last space to the next word
      pos += nws - 1;
      emit(pos);
      continue;
    }
    if (nws > 0) {
      pos += nws;
      emit(pos);
      continue;
    }
    emit(++pos);
  }
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}|
//  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// With `marks`, \p{L} reads [\p{L}\p{M}] in the letter run and in the punctuation run's
// exclusion (Qwen3.5), so a combining accent stays with its letter.
inline void split_llama3(const CpView& v, std::vector<size_t>& out, size_t max_digits, bool marks = false) {
  auto letter = [marks](uint8_t fl) { return uis_letter(fl) || (marks && uclass(fl) == ucls_mark); };
  size_t prev = v.begin;
  auto emit = [&](size_t e) {
    if (e > prev) out.push_back(e - prev);
    prev = e;
  };
  for (size_t pos = v.begin; pos < v.end;) {
    const uint32_t c = v.cp(pos);
    const uint8_t f = v.fl(pos);
    if (size_t n = match_contraction(v, pos, true)) {
      pos += n;
      emit(pos);
      continue;
    }
    if (!(c == '\r' || c == '\n' || uis_number(f))) {
      if (letter(f) || letter(v.fl(pos + 1))) {
        ++pos;
        while (letter(v.fl(pos))) ++pos;
        emit(pos);
        continue;
      }
    }
    if (uis_number(f)) {
      size_t start = pos;
      while (uis_number(v.fl(pos))) {
        if (++pos - start >= max_digits) {
          emit(pos);
          start = pos;
        }
      }
      emit(pos);
      continue;
    }
    uint8_t f2 = (c == ' ') ? v.fl(pos + 1) : f;
    if (!uis_space(f2) && !letter(f2) && !uis_number(f2) && f != 0) {
      pos += (c == ' ');
      while (v.fl(pos) != 0 && !uis_space(v.fl(pos)) && !letter(v.fl(pos)) && !uis_number(v.fl(pos))) ++pos;
      while (v.cp(pos) == '\r' || v.cp(pos) == '\n') ++pos;
      emit(pos);
      continue;
    }
    size_t nws = 0, last_nl_end = 0;
    while (uis_space(v.fl(pos + nws))) {
      const uint32_t c2 = v.cp(pos + nws);
      if (c2 == '\r' || c2 == '\n') last_nl_end = pos + nws + 1;
      ++nws;
    }
    if (last_nl_end > 0) {  // \s*[\r\n]+
      pos = last_nl_end;
      emit(pos);
      continue;
    }
    if (nws > 1 && pos + nws < v.end) {
      pos += nws - 1;
      emit(pos);
      continue;
    }
    if (nws > 0) {
      pos += nws;
      emit(pos);
      continue;
    }
    emit(++pos);
  }
}

// Character predicates as llama.cpp's std::regex fallback sees them: ASCII characters keep
// their identity (with a fixed ASCII list per class), other code points collapse to their
// class, and non-ASCII white space reads as white space.
inline bool rx_space(uint32_t c, uint8_t f) {
  return c < 128 ? (c == ' ' || (c >= 9 && c <= 13)) : uis_space(f);
}
inline bool rx_letter(uint32_t c, uint8_t f) {
  if (c < 128) return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
  return !uis_space(f) && uis_letter(f);
}
inline bool rx_number(uint32_t c, uint8_t f) {
  if (c < 128) return c >= '0' && c <= '9';
  return !uis_space(f) && uis_number(f);
}
inline bool rx_punct(uint32_t c, uint8_t f) {
  if (c < 128) {
    // !"# %&'()* ,-./ :; ?@ [\] _ { }
    return (c >= 0x21 && c <= 0x23) || (c >= 0x25 && c <= 0x2A) || (c >= 0x2C && c <= 0x2F) ||
           c == 0x3A || c == 0x3B || c == 0x3F || c == 0x40 || (c >= 0x5B && c <= 0x5D) || c == 0x5F ||
           c == 0x7B || c == 0x7D;
  }
  return !uis_space(f) && uclass(f) == ucls_punctuation;
}
inline bool in_ranges(uint32_t c, const uint32_t (*r)[2], size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (c >= r[i][0] && c <= r[i][1]) return true;
  return false;
}
// Same for a list sorted by start with no overlaps (binary search).
inline bool in_sorted_ranges(uint32_t c, const uint32_t (*r)[2], size_t n) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    if (r[mid][1] < c)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < n && c >= r[lo][0];
}
// Latin/Greek/Cyrillic/... letter set of DeepSeek-LLM's second split rule.
inline constexpr uint32_t deepseek_letters[][2] = {
    {0x41, 0x5a}, {0x61, 0x7a}, {0xb5, 0xb5}, {0xc0, 0xd6}, {0xd8, 0xf6}, {0xf8, 0x1ba}, {0x1bc, 0x1bf},
    {0x1c4, 0x293}, {0x295, 0x2af}, {0x370, 0x373}, {0x376, 0x377}, {0x37b, 0x37d}, {0x37f, 0x37f},
    {0x386, 0x386}, {0x388, 0x38a}, {0x38c, 0x38c}, {0x38e, 0x3a1}, {0x3a3, 0x3f5}, {0x3f7, 0x481},
    {0x48a, 0x52f}, {0x531, 0x556}, {0x10a0, 0x10c5}, {0x13a0, 0x13f5}, {0x13f8, 0x13fd},
    {0x1c90, 0x1cba}, {0x1cbd, 0x1cbf}, {0x1d00, 0x1d2b}, {0x1d6b, 0x1d77}, {0x1d79, 0x1d9a},
    {0x1e00, 0x1f15}, {0x1f18, 0x1f1d}, {0x1f20, 0x1f45}, {0x1f48, 0x1f4d}, {0x1f50, 0x1f57},
    {0x1f59, 0x1f59}, {0x1f5b, 0x1f5b}, {0x1f5d, 0x1f5d}, {0x1f5f, 0x1f7d}, {0x1f80, 0x1fb4},
    {0x1fb6, 0x1fbc}, {0x1fbe, 0x1fbe}, {0x1fc2, 0x1fc4}, {0x1fc6, 0x1fcc}, {0x1fd0, 0x1fd3},
    {0x1fd6, 0x1fdb}, {0x1fe0, 0x1fec}, {0x1ff2, 0x1ff4}, {0x1ff6, 0x1ffc}, {0x2102, 0x2102},
    {0x2107, 0x2107}, {0x210a, 0x2113}, {0x2115, 0x2115}, {0x2119, 0x211d}, {0x2124, 0x2124},
    {0x2126, 0x2126}, {0x2128, 0x2128}, {0x212a, 0x212d}, {0x212f, 0x2134}, {0x2139, 0x2139},
    {0x213c, 0x213f}, {0x2145, 0x2149}, {0x214e, 0x214e}, {0x2183, 0x2184}, {0x2c00, 0x2c7b},
    {0x2c7e, 0x2ce4}, {0x2ceb, 0x2cee}, {0x2cf2, 0x2cf3}, {0xa640, 0xa66d}, {0xa680, 0xa69b},
    {0xa722, 0xa76f}, {0xa771, 0xa787}, {0xa78b, 0xa78e}, {0xab70, 0xabbf}, {0xfb00, 0xfb06},
    {0xfb13, 0xfb17}, {0xff21, 0xff3a}, {0xff41, 0xff5a}, {0x10400, 0x1044f}, {0x104b0, 0x104d3},
    {0x104d8, 0x104fb}, {0x10c80, 0x10cb2}, {0x10cc0, 0x10cf2}, {0x118a0, 0x118df}, {0x1e900, 0x1e943},
};
inline constexpr uint32_t deepseek_punct[][2] = {
    {0x21, 0x2f}, {0x3a, 0x7e}, {0xff01, 0xff0f}, {0xff1a, 0xff5e}, {0x2018, 0x201f}, {0x3000, 0x3002},
};
inline constexpr uint32_t deepseek_cjk[][2] = {{0x4e00, 0x9fa5}, {0x800, 0x4e00}, {0xac00, 0xd7ff}};

// One split rule: returns how many code points match at pos (0 = none).
enum class Rule {
  punct_run_default,  // [\p{P}\$\+<=>\^~\|]+
  punct_run_falcon,   // [\p{P}\$\+<=>\^~\|`]+
  digit_run,          // \p{N}+
  one_digit,          // \p{N}
  three_ascii_digits, // [0-9][0-9][0-9]
  newline_char,       // [\r\n]
  ds_letters,         // \s?[deepseek letters]+
  ds_punct,           // \s?[deepseek punctuation]+
  space_run_at_end,   // \s+$
  cjk_run,            // [一-龥ࠀ-一가-퟿]+
  space_letters,      // \s?\p{L}+
  space_punct,        // \s?\p{P}+
};

inline size_t match_rule(Rule r, const CpView& v, size_t pos) {
  auto c = [&](size_t i) { return v.cps[i]; };
  auto f = [&](size_t i) { return v.flags[i]; };
  // For rules llama.cpp runs through std::wregex (no \p classes), non-ASCII white space reads
  // as a white-space character, not as itself.
  auto wc = [&](size_t i) -> uint32_t { return (c(i) > 0x7F && uis_space(f(i))) ? 0x0B : c(i); };
  size_t p = pos;
  switch (r) {
    case Rule::punct_run_default:
    case Rule::punct_run_falcon: {
      auto ok = [&](size_t i) {
        const uint32_t ch = c(i);
        if (rx_punct(ch, f(i))) return true;
        if (ch == '$' || ch == '+' || ch == '<' || ch == '=' || ch == '>' || ch == '^' || ch == '~' || ch == '|')
          return true;
        return r == Rule::punct_run_falcon && ch == '`';
      };
      while (p < v.end && ok(p)) ++p;
      return p - pos;
    }
    case Rule::digit_run:
      while (p < v.end && rx_number(c(p), f(p))) ++p;
      return p - pos;
    case Rule::one_digit:
      return rx_number(c(p), f(p)) ? 1 : 0;
    case Rule::three_ascii_digits:
      if (p + 3 > v.end) return 0;
      for (size_t i = 0; i < 3; ++i)
        if (c(p + i) < '0' || c(p + i) > '9') return 0;
      return 3;
    case Rule::newline_char:
      return (c(p) == '\r' || c(p) == '\n') ? 1 : 0;
    case Rule::ds_letters:
    case Rule::ds_punct: {
      auto ok = [&](size_t i) {
        const uint32_t ch = wc(i);
        if (r == Rule::ds_letters) {
          if (ch < 128) return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z');
          return in_sorted_ranges(ch, deepseek_letters, std::size(deepseek_letters));
        }
        if (ch < 128) return (ch >= 0x21 && ch <= 0x2f) || (ch >= 0x3a && ch <= 0x7e);
        return in_ranges(ch, deepseek_punct, std::size(deepseek_punct));
      };
      // \s? is greedy: take the space when the class follows it, else try without it.
      if (rx_space(wc(p), 0) && p + 1 < v.end && ok(p + 1)) {
        ++p;
      } else if (!ok(p)) {
        return 0;
      }
      while (p < v.end && ok(p)) ++p;
      return p - pos;
    }
    case Rule::space_run_at_end:
      while (p < v.end && rx_space(wc(p), 0)) ++p;
      return (p > pos && p == v.end) ? p - pos : 0;
    case Rule::cjk_run:
      while (p < v.end && in_ranges(c(p), deepseek_cjk, std::size(deepseek_cjk))) ++p;
      return p - pos;
    case Rule::space_letters:
    case Rule::space_punct: {
      auto ok = [&](size_t i) { return r == Rule::space_letters ? rx_letter(c(i), f(i)) : rx_punct(c(i), f(i)); };
      if (rx_space(c(p), f(p)) && p + 1 < v.end && ok(p + 1)) {
        ++p;
      } else if (!ok(p)) {
        return 0;
      }
      while (p < v.end && ok(p)) ++p;
      return p - pos;
    }
  }
  return 0;
}

// Splits [begin,end) by one rule: each match and each stretch between matches is a piece.
inline void split_rule(Rule r, const CpView& v, std::vector<size_t>& out) {
  size_t gap = v.begin;
  for (size_t pos = v.begin; pos < v.end;) {
    const size_t n = match_rule(r, v, pos);
    if (n == 0) {
      ++pos;
      continue;
    }
    if (pos > gap) out.push_back(pos - gap);
    out.push_back(n);
    pos += n;
    gap = pos;
  }
  if (v.end > gap) out.push_back(v.end - gap);
}

// Runs the pre-tokenizer over cps[0..n) and returns word lengths in code points.
inline void pre_tokenize(PreTokenizer pre, const uint32_t* cps, const uint8_t* flags, size_t n,
                         std::vector<size_t>& words, std::vector<size_t>& scratch) {
  words.clear();
  if (n == 0) return;
  words.push_back(n);
  enum class Stage { rule, gpt2, llama3, qwen2, qwen35 };
  struct Step {
    Stage stage;
    Rule rule;
  };
  Step steps[6];
  size_t n_steps = 0;
  auto add = [&](Stage s, Rule r = Rule::digit_run) { steps[n_steps++] = Step{s, r}; };
  switch (pre) {
    case PreTokenizer::default_:
      add(Stage::rule, Rule::punct_run_default);
      add(Stage::gpt2);
      add(Stage::rule, Rule::digit_run);
      add(Stage::rule, Rule::three_ascii_digits);
      break;
    case PreTokenizer::gpt2: add(Stage::gpt2); break;
    case PreTokenizer::llama3: add(Stage::llama3); break;
    case PreTokenizer::qwen2: add(Stage::qwen2); break;
    case PreTokenizer::qwen35: add(Stage::qwen35); break;
    case PreTokenizer::deepseek_llm:
      add(Stage::rule, Rule::newline_char);
      add(Stage::rule, Rule::ds_letters);
      add(Stage::rule, Rule::ds_punct);
      add(Stage::rule, Rule::space_run_at_end);
      add(Stage::rule, Rule::cjk_run);
      add(Stage::rule, Rule::digit_run);
      break;
    case PreTokenizer::deepseek_coder:
      add(Stage::rule, Rule::newline_char);
      add(Stage::rule, Rule::space_letters);
      add(Stage::rule, Rule::space_punct);
      add(Stage::rule, Rule::cjk_run);
      add(Stage::rule, Rule::one_digit);
      break;
    case PreTokenizer::falcon:
      add(Stage::rule, Rule::punct_run_falcon);
      add(Stage::gpt2);
      add(Stage::rule, Rule::three_ascii_digits);
      break;
    case PreTokenizer::starcoder:
      add(Stage::rule, Rule::one_digit);
      add(Stage::gpt2);
      break;
  }
  for (size_t s = 0; s < n_steps; ++s) {
    scratch.clear();
    size_t start = 0;
    for (size_t len : words) {
      CpView v{cps, flags, start, start + len};
      switch (steps[s].stage) {
        case Stage::rule: split_rule(steps[s].rule, v, scratch); break;
        case Stage::gpt2: split_gpt2(v, scratch); break;
        case Stage::llama3: split_llama3(v, scratch, 3); break;
        case Stage::qwen2: split_llama3(v, scratch, 1); break;
        case Stage::qwen35: split_llama3(v, scratch, 1, true); break;
      }
      start += len;
    }
    words.swap(scratch);
  }
}

// The pre-tokenizer and vocabulary flags of each tokenizer.ggml.pre name (llama.cpp's names;
// only byte-level BPE vocabularies read it).
struct PreTokenizerFlags {
  bool ignore_merges = false;  // a word that is a token as a whole is not merged
  bool add_bos = false;
  bool add_sep = false;
  bool clean_spaces = true;
};
struct PreTokenizerInfo {
  std::string_view name;
  PreTokenizer pre;
  PreTokenizerFlags flags;
};
inline constexpr PreTokenizerInfo pre_tokenizers[] = {
    {"", PreTokenizer::default_, {}},
    {"default", PreTokenizer::default_, {}},
    {"llama3", PreTokenizer::llama3, {.ignore_merges = true, .add_bos = true}},
    {"llama-v3", PreTokenizer::llama3, {.ignore_merges = true, .add_bos = true}},
    {"llama-bpe", PreTokenizer::llama3, {.ignore_merges = true, .add_bos = true}},
    {"falcon3", PreTokenizer::llama3, {.ignore_merges = true, .add_bos = true}},
    {"falcon-h1", PreTokenizer::llama3, {.ignore_merges = true, .add_bos = true}},
    {"pixtral", PreTokenizer::llama3, {.ignore_merges = true, .add_bos = true}},
    {"midm-2.0", PreTokenizer::llama3, {.ignore_merges = true, .add_bos = true}},
    {"lfm2", PreTokenizer::llama3, {.ignore_merges = true, .add_bos = true}},
    {"dbrx", PreTokenizer::llama3, {}},
    {"smaug-bpe", PreTokenizer::llama3, {}},
    {"deepseek-llm", PreTokenizer::deepseek_llm, {.clean_spaces = false}},
    {"deepseek-coder", PreTokenizer::deepseek_coder, {.clean_spaces = false}},
    {"falcon", PreTokenizer::falcon, {}},
    {"gpt-2", PreTokenizer::gpt2, {}},
    {"mpt", PreTokenizer::gpt2, {}},
    {"olmo", PreTokenizer::gpt2, {}},
    {"jais", PreTokenizer::gpt2, {}},
    {"phi-2", PreTokenizer::gpt2, {}},
    {"jina-es", PreTokenizer::gpt2, {}},
    {"jina-de", PreTokenizer::gpt2, {}},
    {"gigachat", PreTokenizer::gpt2, {}},
    {"jina-v2-es", PreTokenizer::gpt2, {}},
    {"jina-v2-de", PreTokenizer::gpt2, {}},
    {"a.x-4.0", PreTokenizer::gpt2, {}},
    {"mellum", PreTokenizer::gpt2, {}},
    {"modern-bert", PreTokenizer::gpt2, {}},
    {"exaone4", PreTokenizer::gpt2, {}},
    {"jina-v1-en", PreTokenizer::gpt2, {.add_sep = true}},
    {"jina-v2-code", PreTokenizer::gpt2, {.add_sep = true}},
    {"roberta-bpe", PreTokenizer::gpt2, {.add_sep = true}},
    {"trillion", PreTokenizer::gpt2, {.clean_spaces = false}},
    {"granite-docling", PreTokenizer::gpt2, {.clean_spaces = false}},
    {"starcoder", PreTokenizer::starcoder, {}},
    {"refact", PreTokenizer::starcoder, {}},
    {"codeshell", PreTokenizer::starcoder, {}},
    {"exaone", PreTokenizer::starcoder, {}},
    {"minerva-7b", PreTokenizer::starcoder, {}},
    {"mellum2", PreTokenizer::starcoder, {}},
    {"command-r", PreTokenizer::starcoder, {.clean_spaces = false}},
    {"smollm", PreTokenizer::starcoder, {.clean_spaces = false}},
    {"qwen2", PreTokenizer::qwen2, {.clean_spaces = false}},
    {"deepseek-r1-qwen", PreTokenizer::qwen2, {.clean_spaces = false}},
    {"kormo", PreTokenizer::qwen2, {.clean_spaces = false}},
    {"f2llmv2", PreTokenizer::qwen2, {.clean_spaces = false}},
    {"stablelm2", PreTokenizer::qwen2, {}},
    {"megrez", PreTokenizer::qwen2, {}},
    {"hunyuan", PreTokenizer::qwen2, {.clean_spaces = false}},
    {"solar-open", PreTokenizer::qwen2, {.clean_spaces = false}},
    {"qwen35", PreTokenizer::qwen35, {.clean_spaces = false}},
};
inline const PreTokenizerInfo* find_pre_tokenizer(std::string_view name) {
  for (const PreTokenizerInfo& p : pre_tokenizers)
    if (p.name == name) return &p;
  return nullptr;
}

// Special ids read while loading that the Tokenizer does not keep: the FIM ones join the
// end-of-generation set, padding and mask are only checked.
struct AuxTokenIds {
  int32_t pad = -1, mask = -1, fim_pre = -1, fim_suf = -1, fim_mid = -1, fim_pad = -1, fim_rep = -1, fim_sep = -1;
};

// GPT-2's printable stand-in for each byte: printable Latin-1 bytes map to themselves, the
// other 68 bytes to U+0100.. in byte order.
struct ByteUnicodeTable {
  uint32_t to_cp[256];
  int16_t from_cp[324];  // code point -> byte, or -1
  ByteUnicodeTable() {
    for (auto& x : from_cp) x = -1;
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = keep ? b : next++;
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};
inline const ByteUnicodeTable& byte_unicode() {
  static const ByteUnicodeTable t;
  return t;
}

// Switches for tests only: they compare the fast paths (word caches, SentencePiece cuts) with
// the plain algorithm. Not thread-safe to change while encoding.
struct TokenizerTuning {
  size_t cache_min_bytes = 4096;  // texts at least this long use the per-call word cache
  bool spm_cut = true;            // cut SentencePiece text at spaces no token spans
  bool special_filter = true;     // skip special tokens whose 3-byte windows the text lacks
};
inline TokenizerTuning& tokenizer_tuning() {
  static TokenizerTuning t;
  return t;
}

// Word -> ids memo for one encode call (open addressing; keys copied into an arena).
class WordCache {
 public:
  // Ids remembered for this word, or nullptr.
  const int32_t* find(std::string_view w, uint32_t* n) const {
    if (slots_.empty()) return nullptr;
    const uint64_t h = hash_bytes(w.data(), w.size());
    for (size_t i = h & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
      const Slot& sl = slots_[i];
      if (sl.key_len == empty) return nullptr;
      if (sl.hash == h && sl.key_len == w.size() && std::memcmp(arena_.data() + sl.key_off, w.data(), w.size()) == 0) {
        *n = sl.ids_len;
        return ids_.data() + sl.ids_off;
      }
    }
  }
  void insert(std::string_view w, const int32_t* ids, size_t n) {
    if ((used_ + 1) * 2 > slots_.size()) grow();
    const uint64_t h = hash_bytes(w.data(), w.size());
    Slot sl{h, static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(w.size()),
            static_cast<uint32_t>(ids_.size()), static_cast<uint32_t>(n)};
    arena_.insert(arena_.end(), w.begin(), w.end());
    ids_.insert(ids_.end(), ids, ids + n);
    place(sl);
    ++used_;
  }

 private:
  static constexpr uint32_t empty = 0xFFFFFFFFu;
  struct Slot {
    uint64_t hash;
    uint32_t key_off, key_len, ids_off, ids_len;
  };
  std::vector<Slot> slots_;
  std::vector<char> arena_;
  std::vector<int32_t> ids_;
  size_t used_ = 0;
  void place(const Slot& sl) {
    for (size_t i = sl.hash & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
      if (slots_[i].key_len == empty) {
        slots_[i] = sl;
        return;
      }
    }
  }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(old.empty() ? 1024 : old.size() * 2, Slot{0, 0, empty, 0, 0});
    for (const Slot& sl : old)
      if (sl.key_len != empty) place(sl);
  }
};

// A piece of the text being encoded: a special token already found, or a span of plain text.
struct TextFragment {
  int32_t token;  // -1: text
  size_t begin, end;
};

// Quick tests that a special token cannot occur in a text: its first byte is absent, or (in
// long texts) one of its 3-byte windows is (a hashed set of the text's 3-byte windows).
class SpecialTokenFilter {
 public:
  explicit SpecialTokenFilter(std::string_view text) {
    for (unsigned char c : text) present_[c] = true;
    if (text.size() >= 4096 && tokenizer_tuning().special_filter) {
      tri_.assign((1u << 20) / 64, 0);
      for (size_t i = 0; i + 3 <= text.size(); ++i) {
        const uint32_t h = tri_hash(text.data() + i);
        tri_[h >> 6] |= 1ull << (h & 63);
      }
    }
  }
  bool may_occur(std::string_view st) const {
    if (!present_[static_cast<unsigned char>(st[0])]) return false;
    if (tri_.empty()) return true;
    for (size_t i = 0; i + 3 <= st.size(); ++i) {
      const uint32_t h = tri_hash(st.data() + i);
      if (!(tri_[h >> 6] >> (h & 63) & 1)) return false;
    }
    return true;
  }

 private:
  static uint32_t tri_hash(const char* p) {
    const uint32_t v = static_cast<uint32_t>(static_cast<unsigned char>(p[0])) |
                       static_cast<uint32_t>(static_cast<unsigned char>(p[1])) << 8 |
                       static_cast<uint32_t>(static_cast<unsigned char>(p[2])) << 16;
    return (v * 2654435761u) >> 12;  // 20 bits
  }
  bool present_[256] = {};
  std::vector<uint64_t> tri_;
};

// Working memory of the byte-level BPE merge, reused across the words of one encode call.
struct BpeWork {
  struct Sym {
    int32_t prev, next;
    int32_t id;      // token id of the symbol's text, or -1
    uint32_t begin;  // byte range in the word
    uint32_t len;
  };
  struct Bigram {
    uint32_t rank;
    int32_t left, right;
    int32_t left_id, right_id;
  };
  struct Worse {
    bool operator()(const Bigram& a, const Bigram& b) const {
      return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
  };
  std::vector<Sym> syms;
  std::vector<Bigram> heap;
  std::string mapped;  // the word in stand-in characters (for whole-word lookups)
};

// Working memory of the SentencePiece merge, reused across the words of one encode call.
struct SpmWork {
  struct Sym {
    int32_t prev, next;
    uint32_t begin, len;
  };
  struct Bigram {
    float score;
    int32_t left, right;
    uint32_t len;
  };
  struct Worse {
    bool operator()(const Bigram& a, const Bigram& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };
  std::vector<Sym> syms;
  std::vector<Bigram> heap;
  WordCache cache;  // chunk -> ids
};

}  // namespace detail

// ---------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------

// Token attributes (llama.cpp's token types plus the strip flags it derives).
enum TokenAttr : uint16_t {
  token_attr_undefined = 0,
  token_attr_unknown = 1 << 0,
  token_attr_unused = 1 << 1,
  token_attr_normal = 1 << 2,
  token_attr_control = 1 << 3,
  token_attr_user_defined = 1 << 4,
  token_attr_byte = 1 << 5,
  token_attr_lstrip = 1 << 6,  // swallow white space before it when parsing special tokens
  token_attr_rstrip = 1 << 7,  // swallow white space after it
};

// Options for Tokenizer::decode.
struct DecodeOptions {
  bool render_special = true;  // write the text of control tokens (<|im_end|>, <s>, ...)
  bool clean_spaces = true;    // apply the vocabulary's clean-up of spaces before punctuation
                               // (only vocabularies that ask for it: most byte-level BPE ones)
};

class Tokenizer {
 public:
  enum class Kind { spm, bpe, wpm };
  static constexpr int32_t no_token = -1;

  Tokenizer() = default;

  // Reads the vocabulary from the file's tokenizer.ggml.* keys and copies it out: the
  // Tokenizer does not refer to the file afterwards.
  static Expected<Tokenizer> from_gguf(const GgufFile& f);

  // Text to ids. add_special: put BOS/EOS (and BERT's SEP) where the vocabulary asks for
  // them. parse_special: recognise control tokens written in the text (e.g. "<|im_end|>");
  // without it they are tokenized as plain text. User-defined tokens are always recognised.
  Expected<std::vector<int32_t>> encode(std::string_view text, bool add_special = true,
                                        bool parse_special = false) const;

  // Ids to text (the bytes the tokens stand for; the SentencePiece leading space of the first
  // token is removed). Fails with out_of_range on an id outside the vocabulary.
  Expected<std::string> decode(std::span<const int32_t> ids, DecodeOptions opt = {}) const;

  // Text of one token as it appears in output (spaces restored, bytes decoded). Control and
  // unknown tokens give their text when render_special, else "".
  Expected<std::string_view> token_to_piece(int32_t id, bool render_special = true) const;
  // The raw vocabulary string of a token ("" for an id outside the vocabulary).
  std::string_view token_text(int32_t id) const;
  // Id of a vocabulary string, or no_token.
  int32_t find_token(std::string_view text) const;
  uint16_t token_attr(int32_t id) const { return valid(id) ? attrs_[id] : 0; }

  int32_t n_vocab() const { return static_cast<int32_t>(offsets_.empty() ? 0 : offsets_.size() - 1); }
  Kind kind() const { return kind_; }
  const std::string& pre() const { return pre_name_; }
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  int32_t eot() const { return eot_; }  // no_token when the vocabulary has none
  int32_t unk() const { return unk_; }
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  bool add_space_prefix() const { return add_space_prefix_; }
  // End of generation: EOS, EOT, EOM and the end-of-turn tokens llama.cpp recognises by text.
  bool is_eog(int32_t id) const {
    return valid(id) && std::binary_search(eog_.begin(), eog_.end(), id);
  }
  bool is_control(int32_t id) const { return valid(id) && (attrs_[id] & token_attr_control); }
  bool valid(int32_t id) const { return id >= 0 && id < n_vocab(); }

 private:
  friend class StreamDecoder;

  // --- vocabulary ---
  std::vector<char> text_;         // all token strings back to back
  std::vector<uint32_t> offsets_;  // token i is text_[offsets_[i], offsets_[i+1])
  std::vector<float> scores_;
  std::vector<uint16_t> attrs_;
  std::vector<int32_t> slots_;     // hash table of token strings -> id
  std::vector<char> piece_text_;   // token_to_piece(id, true) back to back
  std::vector<uint32_t> piece_offsets_;
  std::vector<int32_t> specials_;  // control / user-defined / unknown ids, longest text first
  std::vector<int32_t> eog_;       // sorted
  detail::U64Map merges_;          // (left id, right id) -> (rank << 32) | merged id
  int32_t byte_tokens_[256] = {};  // SPM: <0xNN> (or the byte itself); BPE: the mapped char
  size_t max_token_len_ = 0;
  // SPM: code points that some token has right before a "\u2581" (not at its start). Text can
  // be cut before any other "\u2581" without changing the result, since no token spans it.
  std::vector<uint32_t> spm_glue_;

  Kind kind_ = Kind::spm;
  detail::PreTokenizer pre_ = detail::PreTokenizer::default_;
  std::string pre_name_;
  int32_t bos_ = no_token, eos_ = no_token, eot_ = no_token, eom_ = no_token, unk_ = no_token,
          sep_ = no_token;
  bool add_bos_ = false, add_eos_ = false, add_sep_ = false, add_space_prefix_ = false;
  bool ignore_merges_ = false, clean_spaces_ = false;
  bool wpm_lowercase_ = true, wpm_strip_accents_ = true;

  std::string_view text_of(int32_t id) const {
    return {text_.data() + offsets_[id], offsets_[id + 1] - offsets_[id]};
  }
  std::string_view piece_of(int32_t id) const {
    return {piece_text_.data() + piece_offsets_[id], piece_offsets_[id + 1] - piece_offsets_[id]};
  }
  int32_t lookup(const char* p, size_t n) const {
    if (slots_.empty()) return no_token;
    const size_t mask = slots_.size() - 1;
    for (size_t i = detail::hash_bytes(p, n) & mask;; i = (i + 1) & mask) {
      const int32_t id = slots_[i];
      if (id < 0) return no_token;
      if (offsets_[id + 1] - offsets_[id] == n && std::memcmp(text_.data() + offsets_[id], p, n) == 0) return id;
    }
  }
  // Loading steps of from_gguf, in order.
  Status set_model(const GgufFile& f, std::string_view model);
  Status read_token_strings(const GgufFile& f, const GgufArray& tokens, int32_t n);
  void build_lookup();
  Status read_scores(const GgufFile& f);
  Status read_token_types(const GgufFile& f);
  Status read_merges(const GgufFile& f);
  Status read_special_ids(const GgufFile& f, detail::AuxTokenIds& aux);
  Status read_flags(const GgufFile& f);
  void find_specials_by_text(detail::AuxTokenIds& aux);
  void build_eog(const detail::AuxTokenIds& aux);
  void collect_specials(const GgufFile& f);
  void build_byte_tokens();
  void build_spm_glue();
  void build_pieces();
  std::string make_piece(int32_t id) const;
  std::vector<detail::TextFragment> split_at_specials(std::string_view text, bool parse_special) const;
  bool split_at_special(std::string_view text, int32_t sid, const std::vector<detail::TextFragment>& frags,
                        std::vector<detail::TextFragment>& next) const;
  void encode_spm_text(std::string_view piece, bool after_special, std::string& buf, detail::SpmWork& w,
                       std::vector<int32_t>& out) const;
  void encode_spm_chunk(std::string_view chunk, bool cacheable, detail::SpmWork& w, std::vector<int32_t>& out) const;
  void encode_spm(std::string_view text, std::vector<int32_t>& out, detail::SpmWork& w) const;
  void encode_bpe(std::string_view text, std::vector<int32_t>& out) const;
  void encode_bpe_word(std::string_view bytes, detail::BpeWork& w, std::vector<int32_t>& out) const;
  void encode_wpm(std::string_view text, std::vector<int32_t>& out) const;
  int32_t spm_byte_token(unsigned char b) const {
    const int32_t t = byte_tokens_[b];
    return t >= 0 ? t : unk_;
  }
  void append_piece(std::string& out, int32_t id, bool render_special, bool strip_space) const {
    if (!render_special && (attrs_[id] & (token_attr_control | token_attr_unknown))) return;
    std::string_view p = piece_of(id);
    if (strip_space && !p.empty() && p[0] == ' ') p.remove_prefix(1);
    out.append(p.data(), p.size());
  }
  static void clean_up_spaces(std::string& s);
};

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------
namespace detail {

// Per-kind defaults (llama.cpp's), by tokenizer.ggml.model.
struct VocabModel {
  std::string_view name;
  Tokenizer::Kind kind;
  int32_t bos = Tokenizer::no_token, eos = Tokenizer::no_token, unk = Tokenizer::no_token, sep = Tokenizer::no_token;
  bool add_space_prefix = false, add_bos = false, add_sep = false, clean_spaces = false;
};
inline constexpr VocabModel vocab_models[] = {
    {.name = "llama", .kind = Tokenizer::Kind::spm, .bos = 1, .eos = 2, .unk = 0, .add_space_prefix = true,
     .add_bos = true},
    {.name = "bert", .kind = Tokenizer::Kind::wpm, .bos = 101, .unk = 100, .sep = 102, .add_bos = true,
     .add_sep = true, .clean_spaces = true},
    {.name = "gpt2", .kind = Tokenizer::Kind::bpe, .bos = 11, .eos = 11, .clean_spaces = true},
};

// The token array's length, checked before anything is sized by it.
inline Expected<int32_t> token_array_size(const GgufFile& f, const GgufArray& tokens) {
  if (tokens.element_type() != GgufValueType::string)
    return make_error(Errc::invalid_format, f.name() + ": tokenizer.ggml.tokens is not a string array");
  const uint64_t n64 = tokens.size();
  if (n64 == 0 || n64 > 0x7FFFFFF0u)
    return make_error(Errc::invalid_format, f.name() + ": tokenizer.ggml.tokens has " + std::to_string(n64) + " entries");
  return static_cast<int32_t>(n64);
}

inline uint16_t token_attr_of_type(int64_t type) {
  switch (type) {
    case 1: return token_attr_normal;
    case 2: return token_attr_unknown;
    case 3: return token_attr_control;
    case 4: return token_attr_user_defined;
    case 5: return token_attr_unused;
    case 6: return token_attr_byte;
    default: return token_attr_undefined;
  }
}

// DeepSeek's end of sentence, "<｜end▁of▁sentence｜>" (full-width bars, U+2581 spaces).
inline constexpr char deepseek_eos[] = "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";

// Texts llama.cpp recognises special tokens by when the file does not name them (first match
// in id order wins).
inline constexpr const char* eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>",
    "[EOT]", deepseek_eos, "<end_of_utterance>"};
inline constexpr const char* eom_texts[] = {"<|eom_id|>"};
inline constexpr const char* fim_pre_texts[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>",
    "<PRE>", "\xe2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>"};
inline constexpr const char* fim_suf_texts[] = {
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81hole\xef\xbd\x9c>",
    "<SUF>", "\xe2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>"};
inline constexpr const char* fim_mid_texts[] = {
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>",
    "<MID>", "\xe2\x96\x81<MID>", "<|code_middle|>", "<|middle|>"};
inline constexpr const char* fim_pad_texts[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"};
inline constexpr const char* fim_rep_texts[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"};
inline constexpr const char* fim_sep_texts[] = {"<|file_sep|>"};
// Tokens that end generation wherever they are in the vocabulary.
inline constexpr const char* eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", deepseek_eos, "[e~["};

}  // namespace detail

inline Expected<Tokenizer> Tokenizer::from_gguf(const GgufFile& f) {
  Tokenizer t;
  auto model = f.get<std::string>("tokenizer.ggml.model");
  if (!model) return model.error();
  auto tokens = f.get<GgufArray>("tokenizer.ggml.tokens");
  if (!tokens) return tokens.error();
  auto n = detail::token_array_size(f, *tokens);
  if (!n) return n.error();
  auto pre = f.get_or<std::string>("tokenizer.ggml.pre", "");
  if (!pre) return pre.error();
  t.pre_name_ = *pre;
  if (Status s = t.set_model(f, *model); !s) return s.error();
  if (Status s = t.read_token_strings(f, *tokens, *n); !s) return s.error();
  t.build_lookup();
  if (Status s = t.read_scores(f); !s) return s.error();
  if (Status s = t.read_token_types(f); !s) return s.error();
  if (Status s = t.read_merges(f); !s) return s.error();
  detail::AuxTokenIds aux;
  if (Status s = t.read_special_ids(f, aux); !s) return s.error();
  if (Status s = t.read_flags(f); !s) return s.error();
  t.find_specials_by_text(aux);
  t.build_eog(aux);
  t.collect_specials(f);
  t.build_byte_tokens();
  t.build_spm_glue();
  t.build_pieces();
  return t;
}

// Kind and per-kind defaults from tokenizer.ggml.model; for byte-level BPE also the
// pre-tokenizer and the flags it implies.
inline Status Tokenizer::set_model(const GgufFile& f, std::string_view model) {
  const detail::VocabModel* vm = nullptr;
  for (const detail::VocabModel& m : detail::vocab_models)
    if (m.name == model) vm = &m;
  if (!vm) return make_error(Errc::unsupported, f.name() + ": unsupported tokenizer model '" + std::string(model) + "'");
  kind_ = vm->kind;
  bos_ = vm->bos, eos_ = vm->eos, unk_ = vm->unk, sep_ = vm->sep;
  add_space_prefix_ = vm->add_space_prefix, add_bos_ = vm->add_bos, add_sep_ = vm->add_sep;
  clean_spaces_ = vm->clean_spaces;
  if (kind_ == Kind::bpe) {
    const detail::PreTokenizerInfo* p = detail::find_pre_tokenizer(pre_name_);
    if (!p) return make_error(Errc::unsupported, f.name() + ": unsupported pre-tokenizer '" + pre_name_ + "'");
    pre_ = p->pre;
    ignore_merges_ = p->flags.ignore_merges, add_bos_ = p->flags.add_bos, add_sep_ = p->flags.add_sep;
    clean_spaces_ = p->flags.clean_spaces;
  }
  auto v = f.get_or<bool>("tokenizer.ggml.add_space_prefix", add_space_prefix_);
  if (!v) return v.error();
  add_space_prefix_ = *v;
  return {};
}

// Token strings, copied into one buffer.
inline Status Tokenizer::read_token_strings(const GgufFile& f, const GgufArray& tokens, int32_t n) {
  std::vector<std::string_view> strs = tokens.strings();
  size_t total = 0;
  for (auto s : strs) total += s.empty() ? 24 : s.size();
  text_.reserve(total);
  offsets_.reserve(static_cast<size_t>(n) + 1);
  offsets_.push_back(0);
  for (int32_t i = 0; i < n; ++i) {
    std::string_view s = strs[i];
    std::string empty_name;
    if (s.empty()) {  // llama.cpp gives empty entries a visible placeholder name
      empty_name = "[EMPTY_" + std::to_string(i) + "]";
      s = empty_name;
    }
    text_.insert(text_.end(), s.begin(), s.end());
    offsets_.push_back(static_cast<uint32_t>(text_.size()));
    max_token_len_ = std::max(max_token_len_, s.size());
  }
  if (text_.size() > 0xFFFFFFF0u) return make_error(Errc::invalid_format, f.name() + ": vocabulary too large");
  return {};
}

inline void Tokenizer::build_lookup() {
  const size_t n = static_cast<size_t>(n_vocab());
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  slots_.assign(cap, -1);
  const size_t mask = cap - 1;
  for (int32_t id = 0; id < n_vocab(); ++id) {
    std::string_view s = text_of(id);
    for (size_t i = detail::hash_bytes(s.data(), s.size()) & mask;; i = (i + 1) & mask) {
      if (slots_[i] < 0) {
        slots_[i] = id;
        break;
      }
      if (text_of(slots_[i]) == s) {  // duplicate string: the later id wins, as in llama.cpp
        slots_[i] = id;
        break;
      }
    }
  }
}

inline Status Tokenizer::read_scores(const GgufFile& f) {
  const int32_t n = n_vocab();
  scores_.assign(static_cast<size_t>(n), 0.0f);
  if (!f.contains("tokenizer.ggml.scores")) return {};
  auto sc = f.get<GgufArray>("tokenizer.ggml.scores");
  if (!sc) return sc.error();
  if (sc->element_type() != GgufValueType::f32 || sc->size() < static_cast<uint64_t>(n))
    return make_error(Errc::invalid_format, f.name() + ": tokenizer.ggml.scores must hold one f32 per token");
  for (int32_t i = 0; i < n; ++i) scores_[i] = sc->at<float>(static_cast<uint64_t>(i));
  return {};
}

inline Status Tokenizer::read_token_types(const GgufFile& f) {
  const int32_t n = n_vocab();
  attrs_.assign(static_cast<size_t>(n), token_attr_normal);
  if (!f.contains("tokenizer.ggml.token_type")) return {};
  auto tt = f.get<GgufArray>("tokenizer.ggml.token_type");
  if (!tt) return tt.error();
  if (tt->size() < static_cast<uint64_t>(n))
    return make_error(Errc::invalid_format, f.name() + ": tokenizer.ggml.token_type is too short");
  int32_t i = 0;
  bool ok = true;
  tt->for_each([&](const GgufValue& v) {
    if (i >= n) return false;
    int64_t ty = 0;
    if (!v.as_int64(&ty)) {
      ok = false;
      return false;
    }
    attrs_[i++] = detail::token_attr_of_type(ty);
    return true;
  });
  if (!ok) return make_error(Errc::invalid_format, f.name() + ": tokenizer.ggml.token_type is not an integer array");
  return {};
}

// Merges of byte-level BPE: "left right" strings, rank = position in the list.
inline Status Tokenizer::read_merges(const GgufFile& f) {
  if (kind_ != Kind::bpe) return {};
  auto mg = f.get<GgufArray>("tokenizer.ggml.merges");
  if (!mg) return mg.error();
  if (mg->element_type() != GgufValueType::string)
    return make_error(Errc::invalid_format, f.name() + ": tokenizer.ggml.merges is not a string array");
  merges_.reserve(static_cast<size_t>(mg->size()));
  uint64_t rank = 0;
  std::string joined;
  mg->for_each([&](const GgufValue& v) {
    std::string_view m = v.as_string();
    const size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string_view::npos;
    if (sp != std::string_view::npos) {
      std::string_view a = m.substr(0, sp), b = m.substr(sp + 1);
      const int32_t ia = lookup(a.data(), a.size()), ib = lookup(b.data(), b.size());
      if (ia >= 0 && ib >= 0) {
        joined.assign(a);
        joined.append(b);
        const int32_t ij = lookup(joined.data(), joined.size());
        const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ia)) << 32) | static_cast<uint32_t>(ib);
        merges_.insert_if_absent(key, (rank << 32) | static_cast<uint32_t>(ij));
      }
    }
    ++rank;
    return true;
  });
  return {};
}

// Special ids from the file override the defaults when they are inside the vocabulary.
inline Status Tokenizer::read_special_ids(const GgufFile& f, detail::AuxTokenIds& aux) {
  const int32_t n = n_vocab();
  auto read_id = [&](const char* key, int32_t& id) -> Status {
    if (id >= n) id = no_token;
    if (!f.contains(key)) return {};
    auto v = f.get<int64_t>(key);
    if (!v) return v.error();
    if (*v >= 0 && *v < n) id = static_cast<int32_t>(*v);
    return {};
  };
  if (kind_ == Kind::wpm) aux.pad = 0, aux.mask = 103;
  for (auto [key, ref] : std::initializer_list<std::pair<const char*, int32_t*>>{
           {"tokenizer.ggml.bos_token_id", &bos_},             {"tokenizer.ggml.eos_token_id", &eos_},
           {"tokenizer.ggml.eot_token_id", &eot_},             {"tokenizer.ggml.eom_token_id", &eom_},
           {"tokenizer.ggml.unknown_token_id", &unk_},         {"tokenizer.ggml.seperator_token_id", &sep_},
           {"tokenizer.ggml.padding_token_id", &aux.pad},      {"tokenizer.ggml.mask_token_id", &aux.mask},
           {"tokenizer.ggml.fim_pre_token_id", &aux.fim_pre},  {"tokenizer.ggml.fim_suf_token_id", &aux.fim_suf},
           {"tokenizer.ggml.fim_mid_token_id", &aux.fim_mid},  {"tokenizer.ggml.fim_pad_token_id", &aux.fim_pad},
           {"tokenizer.ggml.fim_rep_token_id", &aux.fim_rep},  {"tokenizer.ggml.fim_sep_token_id", &aux.fim_sep},
           {"tokenizer.ggml.prefix_token_id", &aux.fim_pre},   {"tokenizer.ggml.suffix_token_id", &aux.fim_suf},
           {"tokenizer.ggml.middle_token_id", &aux.fim_mid}}) {
    if (Status s = read_id(key, *ref); !s) return s.error();
  }
  return {};
}

// add_bos / add_eos / add_sep, and WordPiece's normalizer switches.
inline Status Tokenizer::read_flags(const GgufFile& f) {
  for (auto [key, ref] : std::initializer_list<std::pair<const char*, bool*>>{
           {"tokenizer.ggml.add_bos_token", &add_bos_},
           {"tokenizer.ggml.add_eos_token", &add_eos_},
           {"tokenizer.ggml.add_sep_token", &add_sep_}}) {
    auto v = f.get_or<bool>(key, *ref);
    if (!v) return v.error();
    *ref = *v;
  }
  if (kind_ == Kind::wpm) {
    auto lc = f.get_or<bool>("tokenizer.ggml.normalizer.lowercase", true);
    if (!lc) return lc.error();
    wpm_lowercase_ = *lc;
    auto sa = f.get_or<bool>("tokenizer.ggml.normalizer.strip_accents", *lc);
    if (!sa) return sa.error();
    wpm_strip_accents_ = *sa;
  }
  return {};
}

// Special tokens the file does not name, found by their text and made control tokens.
inline void Tokenizer::find_specials_by_text(detail::AuxTokenIds& aux) {
  auto find_first = [&](int32_t& id, std::span<const char* const> texts) {
    if (id != no_token) return;
    for (const char* text : texts) {
      const int32_t i = find_token(text);
      if (i >= 0 && (id == no_token || i < id)) id = i;
    }
    if (id != no_token) attrs_[id] |= token_attr_control;
  };
  find_first(eot_, detail::eot_texts);
  find_first(eom_, detail::eom_texts);
  find_first(aux.fim_pre, detail::fim_pre_texts);
  find_first(aux.fim_suf, detail::fim_suf_texts);
  find_first(aux.fim_mid, detail::fim_mid_texts);
  find_first(aux.fim_pad, detail::fim_pad_texts);
  find_first(aux.fim_rep, detail::fim_rep_texts);
  find_first(aux.fim_sep, detail::fim_sep_texts);
}

inline void Tokenizer::build_eog(const detail::AuxTokenIds& aux) {
  for (int32_t id : {aux.fim_pad, aux.fim_rep, aux.fim_sep, eos_, eot_, eom_})
    if (id != no_token) eog_.push_back(id);
  for (const char* text : detail::eog_texts) {
    const int32_t i = find_token(text);
    if (i < 0) continue;
    eog_.push_back(i);
    attrs_[i] |= token_attr_control;
  }
  std::sort(eog_.begin(), eog_.end());
  eog_.erase(std::unique(eog_.begin(), eog_.end()), eog_.end());
  // Gemma 4 (and PaddleOCR) keep a "</s>" that is plain text to them: llama.cpp takes it out of
  // the end-of-generation set and makes it a normal token, so "</s>" in a prompt is not
  // parsed as a special token even when it is the file's eos.
  const int32_t tool_response = find_token("<|tool_response>"), s_end = find_token("</s>");
  if (tool_response >= 0 && s_end >= 0 && is_eog(tool_response) && is_eog(s_end)) {
    eog_.erase(std::find(eog_.begin(), eog_.end(), s_end));
    attrs_[s_end] = token_attr_normal;
  }
}

// Special tokens matched in text, longest first.
inline void Tokenizer::collect_specials(const GgufFile& f) {
  for (int32_t i = 0; i < n_vocab(); ++i)
    if (attrs_[i] & (token_attr_control | token_attr_user_defined | token_attr_unknown)) specials_.push_back(i);
  std::stable_sort(specials_.begin(), specials_.end(),
                   [&](int32_t a, int32_t b) { return text_of(a).size() > text_of(b).size(); });

  // Phi-3 models: white space after special tokens is swallowed (llama.cpp keys this on the
  // model name).
  auto name = f.get_or<std::string>("general.name", "");
  std::string lname = name ? *name : std::string();
  for (char& c : lname) c = static_cast<char>((c >= 'A' && c <= 'Z') ? c + 32 : c);
  if (lname.find("phi-3") == std::string::npos && lname.find("phi3") == std::string::npos) return;
  for (int32_t id : specials_) attrs_[id] |= token_attr_rstrip;
  if (int32_t id = find_token("</s>"); id >= 0) attrs_[id] |= token_attr_rstrip;
  for (const char* s : {"<unk>", "<s>", "<|endoftext|>"})
    if (int32_t id = find_token(s); id >= 0) attrs_[id] &= static_cast<uint16_t>(~token_attr_rstrip);
}

// The token of each byte: SPM's <0xNN> (or the byte itself), BPE's stand-in character.
inline void Tokenizer::build_byte_tokens() {
  for (int b = 0; b < 256; ++b) {
    if (kind_ == Kind::spm) {
      static const char* hex = "0123456789ABCDEF";
      const char buf[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
      int32_t id = lookup(buf, 6);
      if (id < 0) {
        const char c = static_cast<char>(b);
        id = lookup(&c, 1);
      }
      byte_tokens_[b] = id;
    } else {
      std::string s;
      detail::utf8_append(s, detail::byte_unicode().to_cp[b]);
      byte_tokens_[b] = lookup(s.data(), s.size());
    }
  }
}

inline void Tokenizer::build_spm_glue() {
  if (kind_ != Kind::spm) return;
  for (int32_t i = 0; i < n_vocab(); ++i) {
    std::string_view s = text_of(i);
    for (size_t k = 1; k + 3 <= s.size(); ++k) {
      if (s.compare(k, 3, "\xe2\x96\x81") != 0) continue;
      size_t b = k - 1;  // start of the code point before
      while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
      size_t used;
      const uint32_t cp = detail::utf8_decode_lenient(reinterpret_cast<const unsigned char*>(s.data()) + b, k - b, &used);
      if (std::find(spm_glue_.begin(), spm_glue_.end(), cp) == spm_glue_.end()) spm_glue_.push_back(cp);
    }
  }
}

// Pieces (output text) of every token.
inline void Tokenizer::build_pieces() {
  piece_offsets_.reserve(static_cast<size_t>(n_vocab()) + 1);
  piece_offsets_.push_back(0);
  for (int32_t i = 0; i < n_vocab(); ++i) {
    std::string p = make_piece(i);
    piece_text_.insert(piece_text_.end(), p.begin(), p.end());
    piece_offsets_.push_back(static_cast<uint32_t>(piece_text_.size()));
  }
}

inline std::string Tokenizer::make_piece(int32_t id) const {
  const uint16_t a = attrs_[id];
  std::string_view s = text_of(id);
  std::string out;
  if (a & (token_attr_control | token_attr_unknown | token_attr_user_defined)) return std::string(s);
  auto hex_byte = [&]() -> int {
    // <0xNN>
    if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>') return -1;
    auto hv = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    const int hi = hv(s[3]), lo = hv(s[4]);
    return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
  };
  if (a & token_attr_normal) {
    if (kind_ == Kind::bpe) {
      // Undo the byte-to-unicode mapping; a character outside it is kept visibly marked.
      const auto& tab = detail::byte_unicode();
      const unsigned char* p = reinterpret_cast<const unsigned char*>(s.data());
      for (size_t i = 0; i < s.size();) {
        size_t used;
        const uint32_t cp = detail::utf8_decode_lenient(p + i, s.size() - i, &used);
        if (cp < 324 && tab.from_cp[cp] >= 0) {
          out.push_back(static_cast<char>(tab.from_cp[cp]));
        } else {
          static const char* hx = "0123456789abcdef";
          out += "[UNK_BYTE_0x";
          for (size_t k = 0; k < used; ++k) {
            out.push_back(hx[p[i + k] >> 4]);
            out.push_back(hx[p[i + k] & 15]);
          }
          out.append(s);
          out += "]";
        }
        i += used;
      }
      return out;
    }
    // SentencePiece and WordPiece: U+2581 stands for a space.
    for (size_t i = 0; i < s.size();) {
      if (s.compare(i, 3, "\xe2\x96\x81") == 0) {
        out.push_back(' ');
        i += 3;
      } else {
        out.push_back(s[i++]);
      }
    }
    return out;
  }
  if (a & token_attr_byte) {
    const int b = hex_byte();
    if (b >= 0) out.push_back(static_cast<char>(b));
    return out;
  }
  return out;  // unused / undefined tokens print nothing
}

inline std::string_view Tokenizer::token_text(int32_t id) const {
  return valid(id) ? text_of(id) : std::string_view();
}

inline int32_t Tokenizer::find_token(std::string_view s) const { return lookup(s.data(), s.size()); }

inline Expected<std::string_view> Tokenizer::token_to_piece(int32_t id, bool render_special) const {
  if (!valid(id))
    return make_error(Errc::out_of_range, "token id " + std::to_string(id) + " is outside the vocabulary (size " +
                                              std::to_string(n_vocab()) + ")");
  if (!render_special && (attrs_[id] & (token_attr_control | token_attr_unknown))) return std::string_view();
  return piece_of(id);
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------
inline Expected<std::vector<int32_t>> Tokenizer::encode(std::string_view text, bool add_special,
                                                        bool parse_special) const {
  std::vector<int32_t> out;
  if (n_vocab() == 0) return make_error(Errc::invalid_argument, "encode: empty tokenizer");
  if (text.size() > 0x7FFFFFFFu) return make_error(Errc::invalid_argument, "encode: text larger than 2 GiB");
  const std::vector<detail::TextFragment> frags = split_at_specials(text, parse_special);

  // BOS, each fragment, EOS.
  const bool bos_first = add_special && add_bos_ && bos_ != no_token && kind_ != Kind::wpm;
  if (bos_first) out.push_back(bos_);
  if (add_special && kind_ == Kind::wpm && bos_ != no_token) out.push_back(bos_);
  bool prev_special = true;  // SPM: a space goes before the text and after each special token
  std::string buf;
  detail::SpmWork spm_work;
  for (const detail::TextFragment& fr : frags) {
    if (fr.token >= 0) {
      out.push_back(fr.token);
      prev_special = true;
      continue;
    }
    std::string_view piece = text.substr(fr.begin, fr.end - fr.begin);
    switch (kind_) {
      case Kind::spm: encode_spm_text(piece, prev_special, buf, spm_work, out); break;
      case Kind::bpe: encode_bpe(piece, out); break;
      case Kind::wpm: encode_wpm(piece, out); break;
    }
    prev_special = false;
  }
  if (add_special) {
    if (kind_ == Kind::wpm) {
      if (sep_ != no_token) out.push_back(sep_);
    } else if (add_eos_ && eos_ != no_token) {
      out.push_back(eos_);
    }
  }
  return out;
}

// Splits the text at special tokens in llama.cpp's order: longest token first, each token's
// occurrences left to right in what is still plain text.
inline std::vector<detail::TextFragment> Tokenizer::split_at_specials(std::string_view text,
                                                                      bool parse_special) const {
  std::vector<detail::TextFragment> frags;
  if (text.empty()) return frags;
  frags.push_back({-1, 0, text.size()});
  if (specials_.empty()) return frags;
  const detail::SpecialTokenFilter filter(text);
  std::vector<detail::TextFragment> next;
  for (int32_t sid : specials_) {
    if (!parse_special && (attrs_[sid] & (token_attr_control | token_attr_unknown))) continue;
    std::string_view st = text_of(sid);
    if (st.empty() || !filter.may_occur(st)) continue;
    next.clear();
    if (split_at_special(text, sid, frags, next)) frags.swap(next);
  }
  return frags;
}

// The fragments with every occurrence of special token `sid` in their text cut out, into
// `next`. False when the token does not occur.
inline bool Tokenizer::split_at_special(std::string_view text, int32_t sid,
                                        const std::vector<detail::TextFragment>& frags,
                                        std::vector<detail::TextFragment>& next) const {
  const uint16_t a = attrs_[sid];
  const std::string_view st = text_of(sid);
  bool any = false;
  for (const detail::TextFragment& fr : frags) {
    if (fr.token >= 0) {
      next.push_back(fr);
      continue;
    }
    size_t b = fr.begin;
    const size_t e = fr.end;
    while (b < e) {
      const size_t m = text.substr(0, e).find(st, b);
      if (m == std::string_view::npos) break;
      any = true;
      size_t left_end = m;
      if (a & token_attr_lstrip)
        while (left_end > b && std::strchr(" \t\n\v\f\r", text[left_end - 1]) && text[left_end - 1] != 0) --left_end;
      if (left_end > b) next.push_back({-1, b, left_end});
      next.push_back({sid, m, m + st.size()});
      b = m + st.size();
      if (a & token_attr_rstrip)
        while (b < e && text[b] != 0 && std::strchr(" \t\n\v\f\r", text[b])) ++b;
    }
    if (b < e) next.push_back({-1, b, e});
  }
  return any;
}

// SentencePiece text between special tokens: spaces become "\u2581" (and one goes first when
// the vocabulary asks for it), then the text is cut before each "\u2581" that no token joins
// to the character before it. The pieces merge independently, so the result is that of the
// whole text, only faster; in long texts the pieces (words) repeat, so their ids are
// remembered.
inline void Tokenizer::encode_spm_text(std::string_view piece, bool after_special, std::string& buf,
                                       detail::SpmWork& w, std::vector<int32_t>& out) const {
  buf.clear();
  buf.reserve(piece.size() + 3 + piece.size() / 4);
  if (add_space_prefix_ && after_special) buf += "\xe2\x96\x81";
  for (char c : piece) {
    if (c == ' ')
      buf += "\xe2\x96\x81";
    else
      buf.push_back(c);
  }
  const bool cacheable = buf.size() >= detail::tokenizer_tuning().cache_min_bytes;
  const std::string_view cur = buf;
  // Walk the symbols exactly as encode_spm forms them (by lead-byte length).
  size_t start = 0, prev_sym = 0, pos = 0;
  const unsigned char* bp = reinterpret_cast<const unsigned char*>(cur.data());
  while (pos < cur.size()) {
    const size_t len = std::min(detail::utf8_len(bp[pos]), cur.size() - pos);
    if (pos > start && detail::tokenizer_tuning().spm_cut && len == 3 && bp[pos] == 0xE2 && bp[pos + 1] == 0x96 &&
        bp[pos + 2] == 0x81) {
      size_t used;
      const uint32_t prev = detail::utf8_decode_lenient(bp + prev_sym, pos - prev_sym, &used);
      if (used == pos - prev_sym && std::find(spm_glue_.begin(), spm_glue_.end(), prev) == spm_glue_.end()) {
        encode_spm_chunk(cur.substr(start, pos - start), cacheable, w, out);
        start = pos;
      }
    }
    prev_sym = pos;
    pos += len;
  }
  encode_spm_chunk(cur.substr(start), cacheable, w, out);
}

inline void Tokenizer::encode_spm_chunk(std::string_view chunk, bool cacheable, detail::SpmWork& w,
                                        std::vector<int32_t>& out) const {
  if (!cacheable || chunk.size() > 64) {
    encode_spm(chunk, out, w);
    return;
  }
  uint32_t n = 0;
  if (const int32_t* ids = w.cache.find(chunk, &n)) {
    out.insert(out.end(), ids, ids + n);
    return;
  }
  const size_t start = out.size();
  encode_spm(chunk, out, w);
  w.cache.insert(chunk, out.data() + start, out.size() - start);
}

// SentencePiece merge: start from single characters, repeatedly join the adjacent pair whose
// joined text is the highest-scoring token (leftmost on ties). A priority queue over a linked
// list of symbols keeps this O(n log n).
inline void Tokenizer::encode_spm(std::string_view text, std::vector<int32_t>& out, detail::SpmWork& w) const {
  using Sym = detail::SpmWork::Sym;
  using Worse = detail::SpmWork::Worse;
  std::vector<Sym>& syms = w.syms;
  syms.clear();
  for (size_t off = 0; off < text.size();) {
    const size_t len = std::min(detail::utf8_len(static_cast<unsigned char>(text[off])), text.size() - off);
    const int32_t idx = static_cast<int32_t>(syms.size());
    syms.push_back({idx - 1, off + len == text.size() ? -1 : idx + 1, static_cast<uint32_t>(off),
                    static_cast<uint32_t>(len)});
    off += len;
  }
  auto& heap = w.heap;
  heap.clear();
  auto try_add = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const uint32_t len = syms[l].len + syms[r].len;
    const int32_t id = lookup(text.data() + syms[l].begin, len);
    if (id < 0) return;
    heap.push_back({scores_[id], l, r, len});
    std::push_heap(heap.begin(), heap.end(), Worse{});
  };
  for (int32_t i = 1; i < static_cast<int32_t>(syms.size()); ++i) try_add(i - 1, i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), Worse{});
    const detail::SpmWork::Bigram bg = heap.back();
    heap.pop_back();
    Sym& l = syms[bg.left];
    Sym& r = syms[bg.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != bg.len || l.next != bg.right) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = bg.left;
    try_add(l.prev, bg.left);
    try_add(bg.left, l.next);
  }
  for (int32_t i = syms.empty() ? -1 : 0; i != -1; i = syms[i].next) {
    const Sym& s = syms[i];
    const int32_t id = lookup(text.data() + s.begin, s.len);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    for (uint32_t k = 0; k < s.len; ++k) {
      const int32_t b = spm_byte_token(static_cast<unsigned char>(text[s.begin + k]));
      if (b >= 0) out.push_back(b);
    }
  }
}

// Byte-level BPE: pre-tokenize into words, map each word's bytes to their stand-in characters
// and merge adjacent symbols by rank (lowest first, leftmost on ties) with a priority queue.
inline void Tokenizer::encode_bpe(std::string_view text, std::vector<int32_t>& out) const {
  // Code points and their classes.
  std::vector<uint32_t> cps;
  std::vector<uint8_t> flags;
  cps.reserve(text.size());
  const unsigned char* p = reinterpret_cast<const unsigned char*>(text.data());
  for (size_t i = 0; i < text.size();) {
    size_t used;
    cps.push_back(detail::utf8_decode_lenient(p + i, text.size() - i, &used));
    i += used;
  }
  flags.resize(cps.size());
  for (size_t i = 0; i < cps.size(); ++i) flags[i] = detail::unicode_flags(cps[i]);
  std::vector<size_t> words, scratch;
  detail::pre_tokenize(pre_, cps.data(), flags.data(), cps.size(), words, scratch);

  std::string bytes;  // the word's UTF-8 bytes
  detail::BpeWork work;
  // Long texts repeat words: remember each short word's ids for the rest of this call.
  const bool use_cache = text.size() >= detail::tokenizer_tuning().cache_min_bytes;
  detail::WordCache cache;
  size_t cp_pos = 0;
  for (size_t wlen : words) {
    bytes.clear();
    for (size_t k = 0; k < wlen; ++k) detail::utf8_append(bytes, cps[cp_pos + k]);
    cp_pos += wlen;
    const bool cacheable = use_cache && bytes.size() <= 48;
    if (cacheable) {
      uint32_t n = 0;
      if (const int32_t* ids = cache.find(bytes, &n)) {
        out.insert(out.end(), ids, ids + n);
        continue;
      }
    }
    const size_t out_start = out.size();
    encode_bpe_word(bytes, work, out);
    if (cacheable) cache.insert(bytes, out.data() + out_start, out.size() - out_start);
  }
}

// One pre-tokenized word (its UTF-8 bytes) to ids.
inline void Tokenizer::encode_bpe_word(std::string_view bytes, detail::BpeWork& w, std::vector<int32_t>& out) const {
  using Sym = detail::BpeWork::Sym;
  using Bigram = detail::BpeWork::Bigram;
  using Worse = detail::BpeWork::Worse;
  const auto& tab = detail::byte_unicode();
  std::string& mapped = w.mapped;
  if (ignore_merges_) {
    mapped.clear();
    for (unsigned char b : bytes) detail::utf8_append(mapped, tab.to_cp[b]);
    const int32_t id = lookup(mapped.data(), mapped.size());
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  std::vector<Sym>& syms = w.syms;
  syms.clear();
  for (size_t k = 0; k < bytes.size(); ++k) {
    const int32_t idx = static_cast<int32_t>(syms.size());
    syms.push_back({idx - 1, k + 1 == bytes.size() ? -1 : idx + 1, byte_tokens_[static_cast<unsigned char>(bytes[k])],
                    static_cast<uint32_t>(k), 1});
  }
  std::vector<Bigram>& heap = w.heap;
  heap.clear();
  auto try_add = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0 || syms[l].id < 0 || syms[r].id < 0) return;
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(syms[l].id)) << 32) |
                         static_cast<uint32_t>(syms[r].id);
    const uint64_t* v = merges_.find(key);
    if (!v) return;
    heap.push_back({static_cast<uint32_t>(*v >> 32), l, r, syms[l].id, syms[r].id});
    std::push_heap(heap.begin(), heap.end(), Worse{});
  };
  for (int32_t i = 1; i < static_cast<int32_t>(syms.size()); ++i) try_add(i - 1, i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), Worse{});
    const Bigram bg = heap.back();
    heap.pop_back();
    Sym& l = syms[bg.left];
    Sym& r = syms[bg.right];
    if (l.len == 0 || r.len == 0 || l.next != bg.right || l.id != bg.left_id || r.id != bg.right_id) continue;
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(l.id)) << 32) | static_cast<uint32_t>(r.id);
    l.id = static_cast<int32_t>(static_cast<uint32_t>(*merges_.find(key)));
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = bg.left;
    try_add(l.prev, bg.left);
    try_add(bg.left, l.next);
  }
  for (int32_t i = syms.empty() ? -1 : 0; i != -1; i = syms[i].next) {
    const Sym& s = syms[i];
    if (s.id >= 0) {
      out.push_back(s.id);
      continue;
    }
    // Not a token: llama.cpp looks up each byte of the stand-in text on its own.
    mapped.clear();
    for (uint32_t k = 0; k < s.len; ++k)
      detail::utf8_append(mapped, tab.to_cp[static_cast<unsigned char>(bytes[s.begin + k])]);
    for (char c : mapped) {
      const int32_t id = lookup(&c, 1);
      if (id >= 0) out.push_back(id);
    }
  }
}

// WordPiece (BERT): normalise, split at white space, punctuation and CJK characters, then
// cut each word greedily into the longest vocabulary entries ("▁" marks a word start).
inline void Tokenizer::encode_wpm(std::string_view text, std::vector<int32_t>& out) const {
  auto is_cjk = [](uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
  };
  std::vector<std::string> words(1);
  const unsigned char* p = reinterpret_cast<const unsigned char*>(text.data());
  for (size_t i = 0; i < text.size();) {
    size_t used;
    uint32_t cp = detail::utf8_decode_lenient(p + i, text.size() - i, &used);
    i += used;
    if (wpm_strip_accents_) cp = detail::unicode_nfd_first(cp);
    const uint8_t fl = detail::unicode_flags(cp);
    if (detail::uis_space(fl)) {
      if (!words.back().empty()) words.emplace_back();
      continue;
    }
    const uint8_t cls = detail::uclass(fl);
    if (cp == 0 || cp == 0xFFFD || cls == detail::ucls_other) continue;
    if (wpm_strip_accents_ && cls == detail::ucls_mark) continue;
    std::string s;
    detail::utf8_append(s, wpm_lowercase_ ? detail::unicode_lower(cp) : cp);
    if (cls == detail::ucls_punctuation || (cp < 0x7F && cls == detail::ucls_symbol) || is_cjk(cp)) {
      if (!words.back().empty()) words.emplace_back();
      words.back() = s;
      words.emplace_back();
    } else {
      words.back() += s;
    }
  }
  for (const std::string& w : words) {
    if (w.empty()) continue;
    const std::string word = "\xe2\x96\x81" + w;
    const size_t n = word.size();
    const size_t start = out.size();
    bool failed = false;
    for (size_t i = 0; i < n;) {
      size_t j = std::min(n, i + max_token_len_ + 1);
      int32_t id = no_token;
      for (; j > i; --j) {
        id = lookup(word.data() + i, j - i);
        if (id >= 0) break;
      }
      if (id < 0) {
        failed = true;
        break;
      }
      out.push_back(id);
      i = j;
    }
    if (failed) out.resize(start);
    if (out.size() == start && unk_ != no_token) out.push_back(unk_);
  }
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

// llama.cpp's clean_up_tokenization_spaces: " ?" " !" " ." " ," lose the space, " ' " loses
// both, and " 's" " 'm" " 're" " 've" lose the space.
inline void Tokenizer::clean_up_spaces(std::string& s) {
  auto pass = [&](auto&& step) {
    std::string o;
    o.reserve(s.size());
    if (!s.empty()) o.push_back(s[0]);
    for (size_t i = 1; i < s.size(); ++i) step(o, i);
    s.swap(o);
  };
  pass([&](std::string& o, size_t i) {
    const char x = s[i];
    if (s[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) o.pop_back();
    o.push_back(x);
  });
  // " ' " -> "'". The dropped space after the quote also stops it from counting as the
  // space before the next character (llama.cpp overwrites it with NUL).
  {
    std::string o;
    o.reserve(s.size());
    if (!s.empty()) o.push_back(s[0]);
    bool prev_dropped = false;
    for (size_t i = 1; i < s.size(); ++i) {
      const char x = s[i];
      const bool prev_space = s[i - 1] == ' ' && !prev_dropped;
      prev_dropped = false;
      if (x == '\'' && i + 1 < s.size() && prev_space && s[i + 1] == ' ') {
        o.pop_back();
        o.push_back(x);
        ++i;
        prev_dropped = true;
        continue;
      }
      o.push_back(x);
    }
    s.swap(o);
  }
  pass([&](std::string& o, size_t i) {
    const char x = s[i];
    if (s[i - 1] == ' ' && x == '\'' && i + 1 < s.size()) {
      const char x1 = s[i + 1];
      if (x1 == 's' || x1 == 'm') {
        o.pop_back();
      } else if (i + 2 < s.size()) {
        const char x2 = s[i + 2];
        if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) o.pop_back();
      }
    }
    o.push_back(x);
  });
}

inline Expected<std::string> Tokenizer::decode(std::span<const int32_t> ids, DecodeOptions opt) const {
  std::string out;
  bool strip = add_space_prefix_;
  for (int32_t id : ids) {
    if (!valid(id))
      return make_error(Errc::out_of_range, "decode: token id " + std::to_string(id) +
                                                " is outside the vocabulary (size " + std::to_string(n_vocab()) + ")");
    append_piece(out, id, opt.render_special, strip);
    strip = false;
  }
  if (opt.clean_spaces && clean_spaces_) clean_up_spaces(out);
  return out;
}

// Replaces every invalid or truncated UTF-8 sequence by U+FFFD (one per maximal invalid
// subpart), so the result is always valid UTF-8.
inline std::string utf8_sanitize(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  const unsigned char* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    const int r = detail::utf8_strict_step(p + i, s.size() - i);
    if (r > 0) {
      out.append(s.data() + i, static_cast<size_t>(r));
      i += static_cast<size_t>(r);
    } else {
      out += "\xef\xbf\xbd";
      i += r < 0 ? static_cast<size_t>(-r) : s.size() - i;
    }
  }
  return out;
}

// Streaming detokenizer: feed ids one at a time (as they are generated) and get back text made
// only of whole, valid UTF-8 characters. A character split over several tokens (byte tokens)
// is held back until it is complete; bytes that can never form a character come out as
// U+FFFD. The SentencePiece leading space of the first token is removed, as decode() does.
// The concatenated output equals utf8_sanitize(decode(ids, {render_special, false})). The
// tokenizer must outlive the decoder.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool render_special = false)
      : tok_(&tok), render_special_(render_special) {}

  // Text completed by this token (possibly empty).
  Expected<std::string> push(int32_t id) {
    if (!tok_->valid(id))
      return make_error(Errc::out_of_range, "StreamDecoder: token id " + std::to_string(id) +
                                                " is outside the vocabulary (size " + std::to_string(tok_->n_vocab()) + ")");
    tok_->append_piece(pending_, id, render_special_, first_ && tok_->add_space_prefix_);
    first_ = false;
    std::string out;
    const unsigned char* p = reinterpret_cast<const unsigned char*>(pending_.data());
    size_t i = 0;
    while (i < pending_.size()) {
      const int r = detail::utf8_strict_step(p + i, pending_.size() - i);
      if (r == 0) break;  // incomplete: wait for more bytes
      if (r > 0) {
        out.append(pending_, i, static_cast<size_t>(r));
        i += static_cast<size_t>(r);
      } else {
        out += "\xef\xbf\xbd";
        i += static_cast<size_t>(-r);
      }
    }
    pending_.erase(0, i);
    return out;
  }
  // End of stream: an incomplete character left over becomes U+FFFD.
  std::string flush() {
    std::string out = utf8_sanitize(pending_);
    pending_.clear();
    return out;
  }
  void reset() {
    pending_.clear();
    first_ = true;
  }
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* tok_;
  bool render_special_;
  bool first_ = true;
  std::string pending_;
};

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/tokenizer.hpp ----

// ---- begin tinyslm/chat.hpp ----
// tinyslm chat templates: turn a list of messages into the prompt text a model was trained on.
//
// GGUF files carry their chat template as Jinja text (`tokenizer.chat_template`). tinyslm does
// not run Jinja: it recognises the common families from markers in that text and renders them
// with hand-written code that produces the same bytes llama.cpp's Jinja engine renders for the
// family's published templates (checked against llama.cpp's output in the tests). Families:
// chatml (and its Qwen2.5 / SmolLM variants with a default system prompt), Qwen3, Qwen3.5,
// SmolLM3, LFM2.5, Llama 2, Mistral v1/v3/v3-tekken/v7, Llama 3 and 3.1+, Gemma 2/3, Gemma 4,
// Phi-3 / Phi-3.5, Phi-4, Zephyr, DeepSeek (coder, V2, V3), Command-R, Falcon 3.
//
// A model without a template gets Kind::none and is rendered as chatml, as llama.cpp does; a
// template that is not recognised gives Kind::unknown and apply() fails with Errc::unsupported
// (render it yourself through from_function, or force a family with from_kind).
//
// Like llama.cpp, when the rendered text starts with the BOS token's text and the tokenizer
// adds BOS itself, that text is left out (and a trailing EOS text likewise when it adds EOS), so
// the result is ready for Tokenizer::encode(text, /*add_special=*/true, /*parse_special=*/true).

#include <functional>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <vector>


namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (others are passed through where the family allows)
  std::string content;
};

class ChatTemplate {
 public:
  enum class Kind {
    none,       // the model has no template: rendered as chatml (llama.cpp's default)
    unknown,    // a template tinyslm does not recognise: apply() fails
    custom,     // a caller-supplied function
    chatml,     // <|im_start|>role\n...<|im_end|>\n (with the template's default system prompt, if any)
    qwen3,      // chatml with <think> handling of assistant turns
    qwen35,     // Qwen3.5: qwen3 with trimmed turns, every late assistant turn in <think>, "<think>\n" opened
    smollm3,    // chatml with a "## Metadata" system block (reasoning mode, default instructions)
    lfm2,       // LFM2.5: bos_token, chatml, reasoning dropped from all but the last assistant turn
    llama2,     // [INST] ... [/INST] (variants: with <<SYS>>, with BOS inside history, stripped)
    mistral_v1,
    mistral_v3,
    mistral_v3_tekken,
    mistral_v7,
    llama3,     // <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
    llama3_1,   // Llama 3.1 / 3.2: system header with "Cutting Knowledge Date" and today's date
    gemma,      // <start_of_turn>user / model ... <end_of_turn>
    gemma4,     // <|turn>user / model ... <turn|> (thinking switched on in the system turn)
    phi3,       // <|role|>\n...<|end|>\n (Phi-3.5: system turns; Phi-3-mini: no system role)
    phi4,       // <|im_start|>role<|im_sep|>...<|im_end|>
    zephyr,     // <|role|>\n...<|endoftext|>\n
    deepseek,   // ### Instruction: / ### Response: (deepseek-coder)
    deepseek2,  // User: / Assistant: (DeepSeek-V2)
    deepseek3,  // <｜User｜> / <｜Assistant｜> (DeepSeek-V3 / R1)
    command_r,  // <|START_OF_TURN_TOKEN|><|USER_TOKEN|>...
    falcon3,    // <|role|>\n...\n
  };
  using Function = std::function<Expected<std::string>(std::span<const ChatMessage>, bool add_generation_prompt)>;

  ChatTemplate() = default;

  // From the model: its template text and its BOS/EOS token texts.
  static ChatTemplate from_gguf(const GgufFile& f, const Tokenizer& tok);
  static ChatTemplate from_gguf(const GgufFile& f);  // builds the tokenizer to learn BOS/EOS
  // From Jinja template text. bos_token / eos_token are the texts the template's bos_token /
  // eos_token stand for; strip_bos / strip_eos: the tokenizer adds them itself.
  static ChatTemplate from_string(std::string_view jinja, std::string bos_token = "", std::string eos_token = "",
                                  bool strip_bos = false, bool strip_eos = false);
  // A family by kind (e.g. Kind::chatml for a model whose template is missing or unknown).
  static ChatTemplate from_kind(Kind kind, std::string bos_token = "", std::string eos_token = "",
                                bool strip_bos = false, bool strip_eos = false);
  // The caller's own renderer.
  static ChatTemplate from_function(Function fn) {
    ChatTemplate t;
    t.kind_ = Kind::custom;
    t.fn_ = std::move(fn);
    return t;
  }

  Kind kind() const { return kind_; }
  static const char* kind_name(Kind k);
  const char* name() const { return kind_name(kind_); }
  const std::string& source() const { return source_; }  // the Jinja text ("" when none)

  // Llama 3.1+: the "Today Date" line. Default "26 Jul 2024", the date the template itself
  // falls back to; llama.cpp uses the current date when its Jinja engine runs the template.
  void set_date_string(std::string d) { date_ = std::move(d); }
  // The templates' enable_thinking (default true). Qwen3 / Qwen3.5: false adds an empty
  // <think></think> block to the generation prompt; SmolLM3: reasoning mode /no_think;
  // Gemma 4: no <|think|> system turn, an empty thought channel opens the reply.
  void set_enable_thinking(bool on) { enable_thinking_ = on; }

  Expected<std::string> apply(std::span<const ChatMessage> messages, bool add_generation_prompt) const;
  Expected<std::string> apply(std::initializer_list<ChatMessage> messages, bool add_generation_prompt) const {
    return apply(std::span<const ChatMessage>(messages.begin(), messages.size()), add_generation_prompt);
  }

 private:
  // A family tinyslm renders: how its template text is recognised, the variants read from
  // that text, and its renderer (which appends to `out`).
  using Render = Status (ChatTemplate::*)(std::string& out, std::span<const ChatMessage> m, bool gen) const;
  struct Family {
    Kind kind;
    const char* name;
    bool (*recognise)(std::string_view jinja);
    void (*configure)(ChatTemplate& t, std::string_view jinja);  // nullptr: no variants
    Render render;
  };
  static std::span<const Family> families();
  static const Family* family(Kind k);

  Kind kind_ = Kind::none;
  std::string source_;
  std::string bos_, eos_;
  bool strip_bos_ = false, strip_eos_ = false;
  // Variants inside a family.
  bool llama2_sys_ = false, llama2_bos_in_history_ = false, llama2_strip_ = false;
  bool gemma_system_ = true;       // Gemma 3 takes a system turn; Gemma 2 merges it into the user turn
  bool phi3_system_ = true;        // Phi-3.5 takes system turns; Phi-3-mini merges them
  bool template_bos_ = false;      // the template writes bos_token first
  bool phi3_eos_at_end_ = false;   // Phi-3.5: eos_token when no generation prompt
  bool zephyr_eos_ = false;        // turns end with eos_token rather than <|endoftext|>
  bool llama2_official_ = false;   // Llama-2-chat: BOS before each [INST], spaces around replies
  std::string default_system_;     // chatml variants: system prompt used when none is given
  std::string default_system_no_think_;  // SmolLM3: the one used in /no_think mode
  std::string date_ = "26 Jul 2024";
  bool enable_thinking_ = true;
  Function fn_;

  Expected<std::string> render(std::span<const ChatMessage> m, bool gen) const;
  Status render_chatml(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_qwen3(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_qwen35(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_smollm3(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_lfm2(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_gemma4(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_phi4(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_llama2(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_llama2_official(std::string& o, std::span<const ChatMessage> m) const;
  Status render_mistral_v1(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_mistral_v3(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_mistral_v7(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_llama3(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_llama3_1(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_gemma(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_phi3(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_zephyr(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_falcon3(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_deepseek(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_deepseek2(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_deepseek3(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_command_r(std::string& o, std::span<const ChatMessage> m, bool gen) const;
};

namespace detail {

inline std::string chat_trim(std::string_view s) {
  auto sp = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
  size_t b = 0, e = s.size();
  while (b < e && sp(s[b])) ++b;
  while (e > b && sp(s[e - 1])) --e;
  return std::string(s.substr(b, e - b));
}

inline bool chat_contains(std::string_view hay, std::string_view needle) {
  return hay.find(needle) != std::string_view::npos;
}

inline bool chat_contains_all(std::string_view hay, std::initializer_list<std::string_view> needles) {
  for (std::string_view n : needles)
    if (!chat_contains(hay, n)) return false;
  return true;
}

// The [INST] family: Mistral's and Llama 2's templates.
inline bool chat_is_inst(std::string_view t) { return t.starts_with("mistral") || chat_contains(t, "[INST]"); }

// Mistral's official v1/v3 templates: the system message joins a user turn, tools are listed.
inline bool chat_is_mistral_official(std::string_view t) {
  return chat_contains(t, "' [INST] ' + system_message") || chat_contains(t, "[AVAILABLE_TOOLS]");
}

// A default system prompt written into a chatml template as a literal, e.g.
// '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. ...<|im_end|>\n'.
inline std::string chatml_default_system(std::string_view t) {
  const std::string_view head = "<|im_start|>system";
  for (size_t pos = t.find(head); pos != std::string_view::npos; pos = t.find(head, pos + 1)) {
    size_t p = pos + head.size();
    if (t.compare(p, 2, "\\n") == 0)
      p += 2;
    else if (p < t.size() && t[p] == '\n')
      p += 1;
    else
      continue;
    const size_t end = t.find("<|im_end|>", p);
    if (end == std::string_view::npos) continue;
    std::string_view body = t.substr(p, end - p);
    if (body.empty() || body.find_first_of("'\"{}+") != std::string_view::npos) continue;
    std::string out;
    for (size_t i = 0; i < body.size(); ++i) {
      if (body[i] == '\\' && i + 1 < body.size() && body[i + 1] == 'n') {
        out.push_back('\n');
        ++i;
      } else {
        out.push_back(body[i]);
      }
    }
    return out;
  }
  return {};
}

// Qwen3: the index of the last user turn that is not a wrapped tool response.
inline size_t qwen3_last_query(std::span<const ChatMessage> msgs) {
  for (size_t i = msgs.size(); i-- > 0;) {
    const std::string& c = msgs[i].content;
    const bool tool_wrapped = c.rfind("<tool_response>", 0) == 0 && c.size() >= 16 &&
                              c.compare(c.size() - 16, 16, "</tool_response>") == 0;
    if (msgs[i].role == "user" && !tool_wrapped) return i;
  }
  return msgs.empty() ? 0 : msgs.size() - 1;
}

// Qwen3: an assistant message cut into its reasoning (inside <think>...</think>) and the
// answer after it, with the newlines the template strips.
inline void qwen3_split_reasoning(const std::string& message, std::string& content, std::string& reasoning) {
  content = message;
  reasoning.clear();
  const size_t close = content.rfind("</think>");
  if (close == std::string::npos) return;
  std::string after = content.substr(close + 8);
  after.erase(0, after.find_first_not_of('\n') == std::string::npos ? after.size() : after.find_first_not_of('\n'));
  std::string before = content.substr(0, content.find("</think>"));
  while (!before.empty() && before.back() == '\n') before.pop_back();
  const size_t open = before.rfind("<think>");
  if (open != std::string::npos) before = before.substr(open + 7);
  before.erase(0, before.find_first_not_of('\n') == std::string::npos ? before.size() : before.find_first_not_of('\n'));
  reasoning = before;
  content = after;
}

// Qwen3.5: the index of the last user turn whose trimmed text is not a wrapped tool
// response; npos when there is none (the template refuses such a conversation).
inline size_t qwen35_last_query(std::span<const ChatMessage> msgs) {
  for (size_t i = msgs.size(); i-- > 0;) {
    if (msgs[i].role != "user") continue;
    const std::string c = chat_trim(msgs[i].content);
    if (!(c.starts_with("<tool_response>") && c.ends_with("</tool_response>"))) return i;
  }
  return std::string::npos;
}

// The Jinja string literal whose opening quote is at t[q] (either quote), with its \n, \t,
// \" and \\ escapes read; "" when t[q] is not a quote.
inline std::string jinja_string_literal(std::string_view t, size_t q) {
  std::string out;
  if (q >= t.size() || (t[q] != '"' && t[q] != '\'')) return out;
  const char quote = t[q];
  for (size_t i = q + 1; i < t.size() && t[i] != quote; ++i) {
    if (t[i] != '\\' || i + 1 >= t.size()) {
      out.push_back(t[i]);
      continue;
    }
    const char e = t[++i];
    out.push_back(e == 'n' ? '\n' : e == 't' ? '\t' : e);
  }
  return out;
}

// SmolLM3: the template's default instructions, the long /think one first, then the short
// /no_think one (both literals start with the assistant's introduction).
inline void smollm3_default_systems(std::string_view t, std::string& think, std::string& no_think) {
  const std::string_view intro = "You are a helpful AI assistant named SmolLM";
  const size_t a = t.find(intro);
  if (a == std::string_view::npos || a == 0) return;
  think = jinja_string_literal(t, a - 1);
  const size_t b = t.find(intro, a + intro.size());
  if (b != std::string_view::npos) no_think = jinja_string_literal(t, b - 1);
}

// Gemma 4: a model turn without its thought channels (<|channel>...<channel|>), trimmed.
inline std::string gemma4_strip_thinking(std::string_view text) {
  std::string out;
  for (size_t pos = 0;;) {
    const size_t close = text.find("<channel|>", pos);
    std::string_view part = text.substr(pos, close == std::string_view::npos ? std::string_view::npos : close - pos);
    out += part.substr(0, part.find("<|channel>"));
    if (close == std::string_view::npos) break;
    pos = close + 10;
  }
  return chat_trim(out);
}

}  // namespace detail

// The families in detection order: the markers llama.cpp's llm_chat_detect_template looks
// for, plus the variants inside a family that change the rendered bytes. The first family
// whose markers are all present wins.
inline std::span<const ChatTemplate::Family> ChatTemplate::families() {
  using detail::chat_contains;
  using detail::chat_contains_all;
  using SV = std::string_view;
  static constexpr Family table[] = {
      {Kind::phi4, "phi4", [](SV s) { return chat_contains_all(s, {"<|im_start|>", "<|im_sep|>"}); }, nullptr,
       &ChatTemplate::render_phi4},
      {Kind::qwen35, "qwen3.5", [](SV s) { return chat_contains_all(s, {"<|im_start|>", "'<think>\\n'"}); }, nullptr,
       &ChatTemplate::render_qwen35},
      {Kind::smollm3, "smollm3",
       [](SV s) { return chat_contains_all(s, {"<|im_start|>", "## Metadata", "Reasoning Mode: "}); },
       [](ChatTemplate& t, SV s) { detail::smollm3_default_systems(s, t.default_system_, t.default_system_no_think_); },
       &ChatTemplate::render_smollm3},
      {Kind::lfm2, "lfm2", [](SV s) { return chat_contains_all(s, {"<|im_start|>", "keep_past_thinking"}); }, nullptr,
       &ChatTemplate::render_lfm2},
      {Kind::qwen3, "qwen3",
       [](SV s) {
         return chat_contains(s, "<|im_start|>") && (chat_contains(s, "<think>") || chat_contains(s, "enable_thinking") ||
                                                     chat_contains(s, "reasoning_content"));
       },
       nullptr, &ChatTemplate::render_qwen3},
      {Kind::chatml, "chatml", [](SV s) { return chat_contains(s, "<|im_start|>"); },
       [](ChatTemplate& t, SV s) { t.default_system_ = detail::chatml_default_system(s); }, &ChatTemplate::render_chatml},
      {Kind::mistral_v7, "mistral-v7", [](SV s) { return detail::chat_is_inst(s) && chat_contains(s, "[SYSTEM_PROMPT]"); },
       nullptr, &ChatTemplate::render_mistral_v7},
      {Kind::mistral_v1, "mistral-v1",
       [](SV s) { return detail::chat_is_inst(s) && detail::chat_is_mistral_official(s) && chat_contains(s, " [INST]"); },
       nullptr, &ChatTemplate::render_mistral_v1},
      {Kind::mistral_v3_tekken, "mistral-v3-tekken",
       [](SV s) { return detail::chat_is_inst(s) && detail::chat_is_mistral_official(s) && chat_contains(s, "\"[INST]\""); },
       nullptr, &ChatTemplate::render_mistral_v3},
      {Kind::mistral_v3, "mistral-v3", [](SV s) { return detail::chat_is_inst(s) && detail::chat_is_mistral_official(s); },
       nullptr, &ChatTemplate::render_mistral_v3},
      {Kind::llama2, "llama2", [](SV s) { return detail::chat_is_inst(s); },
       [](ChatTemplate& t, SV s) {
         t.llama2_sys_ = chat_contains(s, "<<SYS>>");
         t.llama2_bos_in_history_ = chat_contains(s, "bos_token + '[INST]");
         t.llama2_strip_ = chat_contains(s, "content.strip()");
         if (t.llama2_strip_ || t.llama2_bos_in_history_) t.llama2_sys_ = true;
         t.llama2_official_ = chat_contains(s, "bos_token + '[INST] ' + content.strip() + ' [/INST]'") &&
                              chat_contains(s, "' '  + content.strip() + ' ' + eos_token");
       },
       &ChatTemplate::render_llama2},
      {Kind::phi3, "phi3", [](SV s) { return chat_contains_all(s, {"<|assistant|>", "<|end|>"}); },
       [](ChatTemplate& t, SV s) {
         // Phi-3-mini/medium handle only 'user' and 'assistant'; Phi-3.5/small/vision write any role.
         t.phi3_system_ = chat_contains(s, "system") || !chat_contains(s, "'user'");
         t.phi3_eos_at_end_ = chat_contains(s, "eos_token");
       },
       &ChatTemplate::render_phi3},
      {Kind::falcon3, "falcon3", [](SV s) { return chat_contains_all(s, {"<|assistant|>", "<|user|>", "</s>"}); },
       nullptr, &ChatTemplate::render_falcon3},
      // Zephyr / TinyLlama-chat: turns end with eos_token ("</s>"), or with <|endoftext|> in
      // the StableLM variant.
      {Kind::zephyr, "zephyr",
       [](SV s) {
         return chat_contains(s, "<|user|>") &&
                (chat_contains(s, "<|endoftext|>") || chat_contains_all(s, {"<|assistant|>", "eos_token"}));
       },
       [](ChatTemplate& t, SV s) { t.zephyr_eos_ = !chat_contains(s, "<|endoftext|>"); }, &ChatTemplate::render_zephyr},
      // Gemma 4 writes bos_token after its macro definitions, not first.
      {Kind::gemma4, "gemma4", [](SV s) { return chat_contains_all(s, {"<|turn>", "<turn|>"}); },
       [](ChatTemplate& t, SV) { t.template_bos_ = true; }, &ChatTemplate::render_gemma4},
      {Kind::gemma, "gemma", [](SV s) { return chat_contains(s, "<start_of_turn>"); },
       [](ChatTemplate& t, SV s) { t.gemma_system_ = chat_contains(s, "first_user_prefix"); }, &ChatTemplate::render_gemma},
      {Kind::deepseek, "deepseek", [](SV s) { return chat_contains_all(s, {"### Instruction:", "<|EOT|>"}); }, nullptr,
       &ChatTemplate::render_deepseek},
      {Kind::command_r, "command-r",
       [](SV s) { return chat_contains_all(s, {"<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>"}); }, nullptr,
       &ChatTemplate::render_command_r},
      {Kind::llama3_1, "llama3.1",
       [](SV s) { return chat_contains_all(s, {"<|start_header_id|>", "<|end_header_id|>", "Cutting Knowledge Date"}); },
       nullptr, &ChatTemplate::render_llama3_1},
      {Kind::llama3, "llama3", [](SV s) { return chat_contains_all(s, {"<|start_header_id|>", "<|end_header_id|>"}); },
       nullptr, &ChatTemplate::render_llama3},
      {Kind::deepseek2, "deepseek2",
       [](SV s) { return chat_contains(s, "'Assistant: ' + message['content'] + eos_token"); }, nullptr,
       &ChatTemplate::render_deepseek2},
      {Kind::deepseek3, "deepseek3",
       [](SV s) {
         return chat_contains_all(s, {"<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>", "<\xef\xbd\x9c" "User\xef\xbd\x9c>"});
       },
       nullptr, &ChatTemplate::render_deepseek3},
  };
  return table;
}

inline const ChatTemplate::Family* ChatTemplate::family(Kind k) {
  for (const Family& fam : families())
    if (fam.kind == k) return &fam;
  return nullptr;
}

inline const char* ChatTemplate::kind_name(Kind k) {
  switch (k) {
    case Kind::none: return "none (chatml fallback)";
    case Kind::unknown: return "unknown";
    case Kind::custom: return "custom";
    default: break;
  }
  const Family* fam = family(k);
  return fam ? fam->name : "?";
}

inline ChatTemplate ChatTemplate::from_kind(Kind kind, std::string bos_token, std::string eos_token, bool strip_bos,
                                            bool strip_eos) {
  ChatTemplate t;
  t.kind_ = kind;
  t.bos_ = std::move(bos_token);
  t.eos_ = std::move(eos_token);
  t.strip_bos_ = strip_bos;
  t.strip_eos_ = strip_eos;
  return t;
}

inline ChatTemplate ChatTemplate::from_string(std::string_view s, std::string bos_token, std::string eos_token,
                                              bool strip_bos, bool strip_eos) {
  ChatTemplate t = from_kind(Kind::unknown, std::move(bos_token), std::move(eos_token), strip_bos, strip_eos);
  t.source_ = std::string(s);
  if (detail::chat_trim(s).empty()) {
    t.kind_ = Kind::none;
    return t;
  }
  // A template starting by writing bos_token ("{{ bos_token }}", "{{- bos_token }}").
  t.template_bos_ = detail::chat_contains(s.substr(0, std::min<size_t>(s.size(), 24)), "bos_token");
  for (const Family& fam : families()) {
    if (!fam.recognise(s)) continue;
    t.kind_ = fam.kind;
    if (fam.configure) fam.configure(t, s);
    break;
  }
  return t;
}

inline ChatTemplate ChatTemplate::from_gguf(const GgufFile& f, const Tokenizer& tok) {
  std::string src;
  if (auto v = f.get<std::string>("tokenizer.chat_template")) src = *v;
  std::string bos(tok.token_text(tok.bos())), eos(tok.token_text(tok.eos()));
  return from_string(src, bos, eos, tok.add_bos(), tok.add_eos());
}

inline ChatTemplate ChatTemplate::from_gguf(const GgufFile& f) {
  auto tok = Tokenizer::from_gguf(f);
  if (!tok) {
    std::string src;
    if (auto v = f.get<std::string>("tokenizer.chat_template")) src = *v;
    return from_string(src);
  }
  return from_gguf(f, *tok);
}

inline Expected<std::string> ChatTemplate::apply(std::span<const ChatMessage> messages,
                                                 bool add_generation_prompt) const {
  if (kind_ == Kind::custom) {
    if (!fn_) return make_error(Errc::invalid_argument, "chat template: empty custom function");
    return fn_(messages, add_generation_prompt);
  }
  if (kind_ == Kind::unknown)
    return make_error(Errc::unsupported,
                      "chat template not recognised; use ChatTemplate::from_kind(...) or from_function(...)");
  auto r = render(messages, add_generation_prompt);
  if (!r) return r;
  std::string out = std::move(*r);
  // What llama.cpp does with the rendered text when the tokenizer adds BOS / EOS itself.
  if (strip_bos_ && !bos_.empty() && out.compare(0, bos_.size(), bos_) == 0) out.erase(0, bos_.size());
  if (strip_eos_ && !eos_.empty() && out.size() >= eos_.size() &&
      out.compare(out.size() - eos_.size(), eos_.size(), eos_) == 0)
    out.erase(out.size() - eos_.size());
  return out;
}

inline Expected<std::string> ChatTemplate::render(std::span<const ChatMessage> msgs, bool gen) const {
  const Family* fam = family(kind_ == Kind::none ? Kind::chatml : kind_);
  if (!fam) return make_error(Errc::unsupported, "chat template: nothing to render");
  std::string o;
  if (template_bos_) o += bos_;
  if (Status s = (this->*fam->render)(o, msgs, gen); !s) return s.error();
  return o;
}

// ---------------------------------------------------------------------------------------
// One renderer per family. Each appends the conversation to `o`.
// ---------------------------------------------------------------------------------------

inline Status ChatTemplate::render_chatml(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  if (!default_system_.empty() && (msgs.empty() || msgs[0].role != "system"))
    o += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
  for (const auto& m : msgs) o += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  if (gen) o += "<|im_start|>assistant\n";
  return {};
}

inline Status ChatTemplate::render_qwen3(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  if (!msgs.empty() && msgs[0].role == "system") o += "<|im_start|>system\n" + msgs[0].content + "<|im_end|>\n";
  const size_t last_query = detail::qwen3_last_query(msgs);
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    const bool is_last = i + 1 == msgs.size();
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      o += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    } else if (m.role == "assistant") {
      std::string content, reasoning;
      detail::qwen3_split_reasoning(m.content, content, reasoning);
      // Reasoning is kept only in the turns after the last user query.
      if (i > last_query && (is_last || !reasoning.empty())) {
        std::string r = reasoning;
        while (!r.empty() && r.front() == '\n') r.erase(0, 1);
        while (!r.empty() && r.back() == '\n') r.pop_back();
        std::string c = content;
        while (!c.empty() && c.front() == '\n') c.erase(0, 1);
        o += "<|im_start|>assistant\n<think>\n" + r + "\n</think>\n\n" + c;
      } else {
        o += "<|im_start|>assistant\n" + content;
      }
      o += "<|im_end|>\n";
    } else if (m.role == "tool") {
      // Consecutive tool results share one user turn.
      if (i == 0 || msgs[i - 1].role != "tool") o += "<|im_start|>user";
      o += "\n<tool_response>\n" + m.content + "\n</tool_response>";
      if (is_last || msgs[i + 1].role != "tool") o += "<|im_end|>\n";
    }
  }
  if (gen) {
    o += "<|im_start|>assistant\n";
    if (!enable_thinking_) o += "<think>\n\n</think>\n\n";
  }
  return {};
}

inline Status ChatTemplate::render_qwen35(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  using detail::chat_trim;
  if (msgs.empty()) return make_error(Errc::invalid_argument, "qwen3.5 chat template: no messages");
  const size_t last_query = detail::qwen35_last_query(msgs);
  if (last_query == std::string::npos)
    return make_error(Errc::invalid_argument, "qwen3.5 chat template: no user query in the messages");
  if (msgs[0].role == "system") o += "<|im_start|>system\n" + chat_trim(msgs[0].content) + "<|im_end|>\n";
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    const std::string text = chat_trim(m.content);
    const bool is_last = i + 1 == msgs.size();
    if (m.role == "system") {
      if (i != 0) return make_error(Errc::invalid_argument, "qwen3.5 chat template: system message not first");
    } else if (m.role == "user") {
      o += "<|im_start|>user\n" + text + "<|im_end|>\n";
    } else if (m.role == "assistant") {
      std::string content, reasoning;
      detail::qwen3_split_reasoning(text, content, reasoning);
      // Every assistant turn after the last query shows its (possibly empty) reasoning.
      if (i > last_query)
        o += "<|im_start|>assistant\n<think>\n" + chat_trim(reasoning) + "\n</think>\n\n" + content;
      else
        o += "<|im_start|>assistant\n" + content;
      o += "<|im_end|>\n";
    } else if (m.role == "tool") {
      // Consecutive tool results share one user turn; the template opens none for a
      // conversation that starts with a tool result.
      if (i > 0 && msgs[i - 1].role != "tool") o += "<|im_start|>user";
      o += "\n<tool_response>\n" + text + "\n</tool_response>";
      if (is_last || msgs[i + 1].role != "tool") o += "<|im_end|>\n";
    } else {
      return make_error(Errc::invalid_argument, "qwen3.5 chat template: unexpected role '" + m.role + "'");
    }
  }
  if (gen) o += enable_thinking_ ? "<|im_start|>assistant\n<think>\n" : "<|im_start|>assistant\n<think>\n\n</think>\n\n";
  return {};
}

// SmolLM3: a system turn of metadata and instructions always comes first; "/think" or
// "/no_think" in the system message overrides enable_thinking and is taken out of it.
inline Status ChatTemplate::render_smollm3(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  bool think = enable_thinking_;
  std::string custom;
  if (!msgs.empty() && msgs[0].role == "system") {
    custom = msgs[0].content;
    if (detail::chat_contains(custom, "/no_think"))
      think = false;
    else if (detail::chat_contains(custom, "/think"))
      think = true;
    for (std::string_view tag : {std::string_view("/no_think"), std::string_view("/think")})
      for (size_t p = custom.find(tag); p != std::string::npos; p = custom.find(tag, p)) custom.erase(p, tag.size());
    while (!custom.empty() && std::string_view(" \t\n\r\v\f").find(custom.back()) != std::string_view::npos)
      custom.pop_back();
  }
  o += "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: ";
  o += think ? "/think\n\n" : "/no_think\n\n";
  o += "## Custom Instructions\n\n";
  if (!custom.empty())
    o += custom + "\n\n";
  else
    o += think ? default_system_ : default_system_no_think_;
  o += "<|im_end|>\n";
  const std::string empty_think = think ? "" : "<think>\n\n</think>\n";
  for (const auto& m : msgs) {
    if (m.role == "user") {
      o += "<|im_start|>user\n" + m.content + "<|im_end|>\n";
    } else if (m.role == "assistant") {
      const size_t b = m.content.find_first_not_of('\n');
      o += "<|im_start|>assistant\n" + empty_think + (b == std::string::npos ? "" : m.content.substr(b)) + "<|im_end|>\n";
    } else if (m.role == "tool") {
      o += "<|im_start|>user\n" + m.content + "<|im_end|>\n";
    }
  }
  if (gen) o += "<|im_start|>assistant\n" + empty_think;
  return {};
}

// LFM2.5: reasoning is kept only in the last assistant turn.
inline Status ChatTemplate::render_lfm2(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  size_t first = 0;
  if (!msgs.empty() && msgs[0].role == "system") {
    if (!msgs[0].content.empty()) o += "<|im_start|>system\n" + msgs[0].content + "<|im_end|>\n";
    first = 1;
  }
  size_t last_assistant = std::string::npos;
  for (size_t i = first; i < msgs.size(); ++i)
    if (msgs[i].role == "assistant") last_assistant = i;
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    std::string content = m.content;
    if (m.role == "assistant" && i != last_assistant) {
      const size_t close = content.rfind("</think>");
      if (close != std::string::npos) content = detail::chat_trim(std::string_view(content).substr(close + 8));
    }
    o += "<|im_start|>" + m.role + "\n" + content + "<|im_end|>\n";
  }
  if (gen) o += "<|im_start|>assistant\n";
  return {};
}

// Gemma 4: thinking is switched on by <|think|> at the top of the system turn (written
// even without a system message); assistant turns lose their thought channels; tool
// results are only shown through tool calls, which ChatMessage does not carry.
inline Status ChatTemplate::render_gemma4(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  size_t first = 0;
  const bool system = !msgs.empty() && (msgs[0].role == "system" || msgs[0].role == "developer");
  if (enable_thinking_ || system) {
    o += "<|turn>system\n";
    if (enable_thinking_) o += "<|think|>\n";
    if (system) o += detail::chat_trim(msgs[first++].content);
    o += "<turn|>\n";
  }
  bool prev_assistant = false;  // the previous message that is not a tool result
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    if (m.role == "tool") continue;
    const bool model = m.role == "assistant";
    // An assistant message right after another continues the same model turn.
    if (!(model && prev_assistant))
      o += "<|turn>" + (model ? std::string("model") : m.role) + "\n";
    o += model ? detail::gemma4_strip_thinking(m.content) : detail::chat_trim(m.content);
    o += "<turn|>\n";
    prev_assistant = model;
  }
  if (gen) {
    o += "<|turn>model\n";
    if (!enable_thinking_) o += "<|channel>thought\n<channel|>";
  }
  return {};
}

inline Status ChatTemplate::render_phi4(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  for (const auto& m : msgs) o += "<|im_start|>" + m.role + "<|im_sep|>" + m.content + "<|im_end|>";
  if (gen) o += "<|im_start|>assistant<|im_sep|>";
  return {};
}

inline Status ChatTemplate::render_llama2(std::string& o, std::span<const ChatMessage> msgs, bool) const {
  if (llama2_official_) return render_llama2_official(o, msgs);
  using detail::chat_trim;
  bool inside = true;
  o += "[INST] ";
  for (const auto& m : msgs) {
    const std::string content = llama2_strip_ ? chat_trim(m.content) : m.content;
    if (!inside) {
      inside = true;
      o += llama2_bos_in_history_ ? "<s>[INST] " : "[INST] ";
    }
    if (m.role == "system") {
      if (llama2_sys_)
        o += "<<SYS>>\n" + content + "\n<</SYS>>\n\n";
      else
        o += content + "\n";
    } else if (m.role == "user") {
      o += content + " [/INST]";
    } else {
      o += content + "</s>";
      inside = false;
    }
  }
  return {};
}

// Meta's Llama-2-chat template: the system block joins the first user message, every user
// turn starts with BOS, replies are " reply </s>".
inline Status ChatTemplate::render_llama2_official(std::string& o, std::span<const ChatMessage> msgs) const {
  using detail::chat_trim;
  size_t first = 0;
  std::string system;
  if (!msgs.empty() && msgs[0].role == "system") {
    system = msgs[0].content;
    first = 1;
  }
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    if ((m.role == "user") != ((i - first) % 2 == 0))
      return make_error(Errc::invalid_argument, "llama2 chat template: roles must alternate user/assistant");
    std::string content = m.content;
    if (i == first && first == 1) content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
    if (m.role == "user") {
      o += bos_ + "[INST] " + chat_trim(content) + " [/INST]";
    } else if (m.role == "assistant") {
      o += ' ';
      o += chat_trim(content);
      o += ' ';
      o += eos_;
    }
  }
  return {};
}

inline Status ChatTemplate::render_mistral_v1(std::string& o, std::span<const ChatMessage> msgs, bool) const {
  bool inside = false;
  for (const auto& m : msgs) {
    if (!inside) {
      o += " [INST] ";
      inside = true;
    }
    if (m.role == "system") {
      o += m.content + "\n\n";
    } else if (m.role == "user") {
      o += m.content + " [/INST]";
    } else {
      o += " " + m.content + "</s>";
      inside = false;
    }
  }
  return {};
}

// Mistral v3 and v3-tekken (no spaces around [INST], replies untrimmed): the official
// templates put the system text into the last user turn.
inline Status ChatTemplate::render_mistral_v3(std::string& o, std::span<const ChatMessage> msgs, bool) const {
  const bool v3 = kind_ == Kind::mistral_v3;
  const std::string sp = v3 ? " " : "";
  std::string system;
  size_t last_user = msgs.size();
  for (size_t i = 0; i < msgs.size(); ++i)
    if (msgs[i].role == "user") last_user = i;
  for (const auto& m : msgs)
    if (m.role == "system") system = m.content;
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    if (m.role == "user") {
      o += "[INST]" + sp + (i == last_user && !system.empty() ? system + "\n\n" : std::string()) + m.content + "[/INST]";
    } else if (m.role == "assistant") {
      o += sp + (v3 ? detail::chat_trim(m.content) : m.content) + "</s>";
    }
  }
  return {};
}

inline Status ChatTemplate::render_mistral_v7(std::string& o, std::span<const ChatMessage> msgs, bool) const {
  for (const auto& m : msgs) {
    if (m.role == "system")
      o += "[SYSTEM_PROMPT] " + m.content + "[/SYSTEM_PROMPT]";
    else if (m.role == "user")
      o += "[INST] " + m.content + "[/INST]";
    else
      o += " " + m.content + "</s>";
  }
  return {};
}

inline Status ChatTemplate::render_llama3(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  for (const auto& m : msgs)
    o += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + detail::chat_trim(m.content) + "<|eot_id|>";
  if (gen) o += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return {};
}

inline Status ChatTemplate::render_llama3_1(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  using detail::chat_trim;
  size_t first = 0;
  std::string system;
  if (!msgs.empty() && msgs[0].role == "system") {
    system = chat_trim(msgs[0].content);
    first = 1;
  }
  o += "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: " + date_ +
       "\n\n" + system + "<|eot_id|>";
  for (size_t i = first; i < msgs.size(); ++i)
    o += "<|start_header_id|>" + msgs[i].role + "<|end_header_id|>\n\n" + chat_trim(msgs[i].content) + "<|eot_id|>";
  if (gen) o += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return {};
}

inline Status ChatTemplate::render_gemma(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  using detail::chat_trim;
  size_t first = 0;
  std::string prefix;
  if (!msgs.empty() && msgs[0].role == "system") {
    // Gemma 3 writes the system text before the first turn's text; Gemma 2 has no system
    // role and llama.cpp merges it into the first user turn.
    prefix = gemma_system_ ? msgs[0].content + "\n\n" : msgs[0].content + "\n";
    first = 1;
  }
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    if ((m.role == "user") != ((i - first) % 2 == 0))
      return make_error(Errc::invalid_argument, "gemma chat template: roles must alternate user/assistant");
    const std::string role = m.role == "assistant" ? "model" : m.role;
    std::string text;
    if (i == first && !prefix.empty())
      text = gemma_system_ ? prefix + chat_trim(m.content) : chat_trim(prefix + m.content);
    else
      text = chat_trim(m.content);
    o += "<start_of_turn>" + role + "\n" + text + "<end_of_turn>\n";
  }
  if (gen) o += "<start_of_turn>model\n";
  return {};
}

inline Status ChatTemplate::render_phi3(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  if (phi3_system_) {
    for (const auto& m : msgs) {
      if (m.role == "system") {
        if (!m.content.empty()) o += "<|system|>\n" + m.content + "<|end|>\n";
      } else if (m.role == "user" || m.role == "assistant") {
        o += "<|" + m.role + "|>\n" + m.content + "<|end|>\n";
      }
    }
    if (gen)
      o += "<|assistant|>\n";
    else if (phi3_eos_at_end_)
      o += eos_;
    return {};
  }
  // Phi-3-mini: no system role (llama.cpp puts the system text before the first user
  // message), and "<|assistant|>\n" follows every user turn.
  std::string pending;
  for (const auto& m : msgs) {
    if (m.role == "system") {
      pending = m.content;
    } else if (m.role == "user") {
      std::string c = pending.empty() ? m.content : pending + (m.content.empty() ? "" : "\n" + m.content);
      pending.clear();
      o += "<|user|>\n" + c + "<|end|>\n<|assistant|>\n";
    } else if (m.role == "assistant") {
      o += m.content + "<|end|>\n";
    }
  }
  return {};
}

inline Status ChatTemplate::render_zephyr(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  for (const auto& m : msgs)
    o += "<|" + m.role + "|>\n" + m.content + (zephyr_eos_ ? eos_ : std::string("<|endoftext|>")) + "\n";
  if (gen) o += "<|assistant|>\n";
  return {};
}

inline Status ChatTemplate::render_falcon3(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  for (const auto& m : msgs) o += "<|" + m.role + "|>\n" + m.content + "\n";
  if (gen) o += "<|assistant|>\n";
  return {};
}

inline Status ChatTemplate::render_deepseek(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  for (const auto& m : msgs) {
    if (m.role == "system")
      o += m.content;
    else if (m.role == "user")
      o += "### Instruction:\n" + m.content + "\n";
    else if (m.role == "assistant")
      o += "### Response:\n" + m.content + "\n<|EOT|>\n";
  }
  if (gen) o += "### Response:\n";
  return {};
}

inline Status ChatTemplate::render_deepseek2(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  for (const auto& m : msgs) {
    if (m.role == "system")
      o += m.content + "\n\n";
    else if (m.role == "user")
      o += "User: " + m.content + "\n\n";
    else if (m.role == "assistant")
      o += "Assistant: " + m.content + (eos_.empty() ? std::string(detail::deepseek_eos) : eos_);
  }
  if (gen) o += "Assistant:";
  return {};
}

inline Status ChatTemplate::render_deepseek3(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  for (const auto& m : msgs) {
    if (m.role == "system")
      o += m.content + "\n\n";
    else if (m.role == "user")
      o += "<\xef\xbd\x9c" "User\xef\xbd\x9c>" + m.content;
    else if (m.role == "assistant")
      o += "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>" + m.content + detail::deepseek_eos;
  }
  if (gen) o += "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>";
  return {};
}

inline Status ChatTemplate::render_command_r(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  using detail::chat_trim;
  for (const auto& m : msgs) {
    if (m.role == "system")
      o += "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>" + m.content + "<|END_OF_TURN_TOKEN|>";
    else if (m.role == "user")
      o += "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>" + chat_trim(m.content) + "<|END_OF_TURN_TOKEN|>";
    else if (m.role == "assistant")
      o += "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>" + chat_trim(m.content) + "<|END_OF_TURN_TOKEN|>";
  }
  if (gen) o += "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>";
  return {};
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/chat.hpp ----

// ---- begin tinyslm/sampler.hpp ----
// tinyslm sampler: turns a row of logits into the next token id.
//
// A fixed chain of logit processors, in llama.cpp's default order so the same settings mean
// the same thing in both: logit bias, repetition / frequency / presence penalties over the last
// N tokens, top-k, typical-p, top-p, min-p, temperature, then a draw from the remaining
// distribution with our own seeded generator (no std:: distributions, so a seed gives the same
// tokens on every platform and standard library). Temperature <= 0 means greedy: the largest
// logit, the lowest id on a tie. Buffers are sized once for the vocabulary; sampling a token
// allocates nothing.

#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <vector>


namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

// SplitMix64 to expand the seed, xoshiro256** to generate: small, fast and fully specified.
class Rng {
 public:
  explicit Rng(uint64_t seed = 0) { reseed(seed); }

  void reseed(uint64_t seed) {
    uint64_t x = seed;
    for (auto& s : state_) s = splitmix64(x);
  }

  uint64_t next() {
    const uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }

  // Uniform in [0, 1) with 24 random bits: every value is exactly representable as a float.
  float uniform() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }

  // The SplitMix64 step (advances x): exposed for known-answer tests.
  static uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t state_[4];
};

struct TokenLogit {
  int32_t id;
  float logit;
};

struct SamplerParams {
  float temperature = 0.8f;      // <= 0: greedy
  int32_t top_k = 40;            // <= 0: off
  float top_p = 0.95f;           // 1: off
  float min_p = 0.05f;           // 0: off
  float typical_p = 1.0f;        // 1: off
  float repeat_penalty = 1.0f;   // 1: off; > 1 discourages tokens seen in the last N
  int32_t repeat_last_n = 64;    // N for all three penalties; 0: off, -1: whole history
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  uint64_t seed = 0;
  std::vector<TokenLogit> logit_bias = {};  // added to the logit of each id (-INFINITY bans it)
};

// The working set of candidates: a view into the sampler's buffer. Stages shrink it.
struct Candidates {
  TokenLogit* data = nullptr;
  size_t size = 0;
  bool sorted = false;  // descending by logit, ties by ascending id

  TokenLogit* begin() { return data; }
  TokenLogit* end() { return data + size; }
};

namespace detail {
inline bool logit_before(const TokenLogit& a, const TokenLogit& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}
inline void sort_candidates(Candidates& c) {
  if (!c.sorted) std::sort(c.begin(), c.end(), logit_before);
  c.sorted = true;
}
// Softmax of the candidates' logits into `probs` (same order); returns nothing if empty.
inline void softmax_into(const Candidates& c, std::vector<float>& probs) {
  probs.resize(c.size);
  if (c.size == 0) return;
  float max_logit = -INFINITY;
  for (size_t i = 0; i < c.size; ++i) max_logit = std::max(max_logit, c.data[i].logit);
  double sum = 0;
  for (size_t i = 0; i < c.size; ++i) {
    const float p = std::isinf(max_logit) && max_logit < 0 ? 1.0f : std::exp(c.data[i].logit - max_logit);
    probs[i] = p;
    sum += p;
  }
  for (size_t i = 0; i < c.size; ++i) probs[i] = static_cast<float>(probs[i] / sum);
}
}  // namespace detail

// Work buffers of the stages, sized once for the vocabulary.
struct SamplingScratch {
  std::vector<float> probs, dist;
  std::vector<uint32_t> order;
  std::vector<char> chosen;
  void reserve(size_t n) {
    probs.reserve(n);
    dist.reserve(n);
    order.reserve(n);
    chosen.reserve(n);
  }
};

// The stages, each usable on its own (the tests check each against a plain reference).
namespace sampling {

// CTRL-style repetition penalty, then OpenAI-style frequency and presence penalties.
// `counts[id]` is how often id occurs in the penalty window.
inline void apply_penalties(Candidates& c, const std::vector<int32_t>& counts, float repeat,
                            float frequency, float presence) {
  for (auto& t : c) {
    const int32_t n = counts[static_cast<size_t>(t.id)];
    if (n == 0) continue;
    if (repeat != 1.0f) t.logit = t.logit > 0 ? t.logit / repeat : t.logit * repeat;
    t.logit -= static_cast<float>(n) * frequency + presence;
  }
  c.sorted = false;
}

inline void top_k(Candidates& c, int32_t k) {
  if (k <= 0 || static_cast<size_t>(k) >= c.size) return;
  if (!c.sorted) {
    std::partial_sort(c.begin(), c.begin() + k, c.end(), detail::logit_before);
    c.sorted = true;
  }
  c.size = static_cast<size_t>(k);
}

// Keeps the most likely tokens whose probabilities add up to at least p (at least one).
inline void top_p(Candidates& c, float p, std::vector<float>& probs) {
  if (p >= 1.0f || c.size <= 1) return;
  detail::sort_candidates(c);
  detail::softmax_into(c, probs);
  double cum = 0;
  for (size_t i = 0; i < c.size; ++i) {
    cum += probs[i];
    if (cum >= p) {
      c.size = i + 1;
      return;
    }
  }
}

// Keeps tokens whose probability is at least min_p times the largest one's.
inline void min_p(Candidates& c, float min_p) {
  if (min_p <= 0.0f || c.size <= 1) return;
  float max_logit = -INFINITY;
  for (const auto& t : c) max_logit = std::max(max_logit, t.logit);
  // p_i / p_max = exp(l_i - l_max) >= min_p  <=>  l_i >= l_max + log(min_p)
  const float threshold = max_logit + std::log(min_p);
  size_t kept = 0;
  for (size_t i = 0; i < c.size; ++i)
    if (c.data[i].logit >= threshold) c.data[kept++] = c.data[i];
  c.size = kept;  // order preserved, so a sorted set stays sorted
}

// Locally typical sampling: keeps the tokens whose surprise (-log p) is closest to the
// entropy, until their probabilities add up to at least p.
inline void typical_p(Candidates& c, float p, SamplingScratch& s) {
  if (p >= 1.0f || c.size <= 1) return;
  detail::sort_candidates(c);
  detail::softmax_into(c, s.probs);
  double entropy = 0;
  for (size_t i = 0; i < c.size; ++i)
    if (s.probs[i] > 0) entropy -= s.probs[i] * std::log(static_cast<double>(s.probs[i]));
  s.dist.resize(c.size);
  for (size_t i = 0; i < c.size; ++i)
    s.dist[i] = static_cast<float>(std::fabs(-std::log(static_cast<double>(s.probs[i])) - entropy));
  s.order.resize(c.size);
  for (size_t i = 0; i < c.size; ++i) s.order[i] = static_cast<uint32_t>(i);
  std::stable_sort(s.order.begin(), s.order.end(),
                   [&](uint32_t a, uint32_t b) { return s.dist[a] < s.dist[b]; });
  double cum = 0;
  size_t keep = c.size;
  for (size_t i = 0; i < c.size; ++i) {
    cum += s.probs[s.order[i]];
    if (cum >= p) {
      keep = i + 1;
      break;
    }
  }
  // keep the chosen ones, in their logit order
  auto& chosen = s.chosen;
  chosen.assign(c.size, 0);
  for (size_t i = 0; i < keep; ++i) chosen[s.order[i]] = 1;
  size_t kept = 0;
  for (size_t i = 0; i < c.size; ++i)
    if (chosen[i]) c.data[kept++] = c.data[i];
  c.size = kept;
}

inline void temperature(Candidates& c, float t) {
  if (t == 1.0f) return;
  for (auto& x : c) x.logit /= t;
}

// Draws one candidate with probability softmax(logits); u is uniform in [0, 1).
inline int32_t draw(Candidates& c, float u, std::vector<float>& probs) {
  detail::softmax_into(c, probs);
  double cum = 0;
  for (size_t i = 0; i < c.size; ++i) {
    cum += probs[i];
    if (u < cum) return c.data[i].id;
  }
  for (size_t i = c.size; i > 0; --i)  // rounding left u above the total: take the last non-zero
    if (probs[i - 1] > 0) return c.data[i - 1].id;
  return c.data[0].id;
}

inline int32_t greedy(std::span<const float> logits) {
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

}  // namespace sampling

class Sampler {
 public:
  static Expected<Sampler> create(int32_t n_vocab, SamplerParams params) {
    auto bad = [](const std::string& m) { return make_error(Errc::invalid_argument, "sampler: " + m); };
    if (n_vocab <= 0) return bad("vocabulary size must be positive");
    if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) return bad("top_p must be in (0, 1]");
    if (!(params.min_p >= 0.0f && params.min_p <= 1.0f)) return bad("min_p must be in [0, 1]");
    if (!(params.typical_p > 0.0f && params.typical_p <= 1.0f)) return bad("typical_p must be in (0, 1]");
    if (!(params.repeat_penalty > 0.0f)) return bad("repeat_penalty must be positive");
    if (params.repeat_last_n < -1) return bad("repeat_last_n must be -1, 0 or positive");
    if (std::isnan(params.temperature)) return bad("temperature is not a number");
    for (const auto& b : params.logit_bias)
      if (b.id < 0 || b.id >= n_vocab)
        return bad("logit bias for token " + std::to_string(b.id) + ", outside the vocabulary of " +
                   std::to_string(n_vocab));
    Sampler s;
    s.params_ = std::move(params);
    s.n_vocab_ = n_vocab;
    s.rng_.reseed(s.params_.seed);
    s.candidates_.resize(static_cast<size_t>(n_vocab));
    s.counts_.assign(static_cast<size_t>(n_vocab), 0);
    s.scratch_.reserve(static_cast<size_t>(n_vocab));
    return s;
  }

  const SamplerParams& params() const { return params_; }
  int32_t n_vocab() const { return n_vocab_; }

  // Picks the next token from logits[0, n_vocab).
  int32_t sample(std::span<const float> logits) {
    TINYSLM_ASSERT(logits.size() >= static_cast<size_t>(n_vocab_));
    const bool penalties = params_.repeat_last_n != 0 &&
                           (params_.repeat_penalty != 1.0f || params_.frequency_penalty != 0.0f ||
                            params_.presence_penalty != 0.0f);
    if (params_.temperature <= 0.0f && params_.logit_bias.empty() && !penalties)
      return sampling::greedy(logits.first(static_cast<size_t>(n_vocab_)));

    for (int32_t i = 0; i < n_vocab_; ++i) candidates_[static_cast<size_t>(i)] = {i, logits[static_cast<size_t>(i)]};
    Candidates c{candidates_.data(), candidates_.size(), false};
    for (const auto& b : params_.logit_bias) candidates_[static_cast<size_t>(b.id)].logit += b.logit;
    if (penalties)
      sampling::apply_penalties(c, counts_, params_.repeat_penalty, params_.frequency_penalty,
                                params_.presence_penalty);
    if (params_.temperature <= 0.0f) {
      const auto best = std::min_element(c.begin(), c.end(), detail::logit_before);
      return best->id;
    }
    sampling::top_k(c, params_.top_k);
    sampling::typical_p(c, params_.typical_p, scratch_);
    sampling::top_p(c, params_.top_p, scratch_.probs);
    sampling::min_p(c, params_.min_p);
    sampling::temperature(c, params_.temperature);
    return sampling::draw(c, rng_.uniform(), scratch_.probs);
  }

  // Records a token that became part of the text (prompt or generated) for the penalties.
  void accept(int32_t id) {
    if (id < 0 || id >= n_vocab_ || params_.repeat_last_n == 0) return;
    history_.push_back(id);
    counts_[static_cast<size_t>(id)]++;
    if (params_.repeat_last_n > 0) {
      const size_t n = static_cast<size_t>(params_.repeat_last_n);
      if (history_.size() > n) counts_[static_cast<size_t>(history_[history_.size() - 1 - n])]--;
      // drop what can never leave the window again, so the history stays within 2N + 1
      if (history_.size() > 2 * n + 1) history_.erase(history_.begin(), history_.end() - static_cast<long>(n + 1));
    }
  }

  // Forgets the history and restarts the generator from the seed.
  void reset() {
    history_.clear();
    std::fill(counts_.begin(), counts_.end(), 0);
    rng_.reseed(params_.seed);
  }

 private:
  Sampler() = default;

  SamplerParams params_;
  int32_t n_vocab_ = 0;
  Rng rng_;
  std::vector<TokenLogit> candidates_;
  std::vector<int32_t> counts_;  // occurrences of each id in the last repeat_last_n tokens
  std::vector<int32_t> history_;
  SamplingScratch scratch_;
};

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/sampler.hpp ----

// ---- begin tinyslm/speculative.hpp ----
// speculative: draft-model-free speculative decoding pieces. An n-gram (prompt lookup) drafter
// proposes the tokens that followed the most recent earlier occurrence of the context's last n
// tokens; the acceptance rule keeps the output distribution of the full sampler unchanged for
// such a deterministic draft. The verify step (one batched forward over [last + draft], KV
// rollback past the first rejection) is Session::speculate in session.hpp, greedy only so far.

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>


namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

enum class SpecType { none, ngram_simple };

struct SpeculativeOptions {
  SpecType type = SpecType::none;
  int draft_max = 16;  // most tokens proposed per step
  int draft_min = 0;   // a shorter draft is dropped: verifying it would not pay
  int ngram_min = 1;   // n is tried from ngram_max down to ngram_min
  int ngram_max = 4;
};

// llama.cpp's --spec-type spellings of the drafters this library has.
inline Expected<SpecType> parse_spec_type(std::string_view s) {
  if (s == "none") return SpecType::none;
  if (s == "ngram-simple") return SpecType::ngram_simple;
  return make_error(Errc::invalid_argument,
                    "unsupported speculative type '" + std::string(s) + "' (supported: none, ngram-simple)");
}

// Drafts into `draft` (cleared first); returns its length, 0 when no n-gram of the allowed
// sizes recurs or the continuation is shorter than draft_min. Options out of range give 0.
inline int ngram_draft(std::span<const int32_t> context, const SpeculativeOptions& opt,
                       std::vector<int32_t>& draft) {
  draft.clear();
  const int64_t n_ctx = static_cast<int64_t>(context.size());
  if (opt.draft_max <= 0 || opt.ngram_min <= 0 || opt.ngram_max < opt.ngram_min) return 0;
  for (int64_t n = opt.ngram_max; n >= opt.ngram_min; --n) {
    if (n >= n_ctx) continue;  // the key needs an earlier occurrence with a successor
    const int64_t key = n_ctx - n;
    // Most recent first: recent text is the likeliest to be copied next.
    for (int64_t start = key - 1; start >= 0; --start) {
      int64_t m = 0;
      while (m < n && context[start + m] == context[key + m]) ++m;
      if (m < n) continue;
      const int64_t from = start + n;
      const int64_t len = std::min<int64_t>(opt.draft_max, n_ctx - from);
      if (len < std::max(1, opt.draft_min)) break;  // a longer n found none; try shorter
      draft.assign(context.begin() + from, context.begin() + from + len);
      return static_cast<int>(len);
    }
  }
  return 0;
}

struct SpecAcceptance {
  bool accepted = false;
  int32_t token = -1;  // the draft token when accepted, else the replacement drawn
};

// The speculative rule for a deterministic draft (q(x) = 1): accept x with probability p(x);
// otherwise draw from p with x removed and renormalised. The emitted token is then distributed
// exactly as p. `probs` is the full sampler's distribution (sums to 1, non-negative).
inline SpecAcceptance speculative_accept(std::span<const float> probs, int32_t draft, Rng& rng) {
  SpecAcceptance r;
  const int64_t n = static_cast<int64_t>(probs.size());
  const float p_draft = (draft >= 0 && draft < n) ? probs[draft] : 0.0f;
  if (p_draft > 0.0f && rng.uniform() < p_draft) {
    r.accepted = true;
    r.token = draft;
    return r;
  }
  double rest = 0.0;
  for (int64_t i = 0; i < n; ++i)
    if (i != draft) rest += probs[i];
  if (rest <= 0.0) {  // p was all on the draft token up to rounding: it is the only choice
    r.accepted = p_draft > 0.0f;
    r.token = r.accepted ? draft : -1;
    return r;
  }
  const double u = static_cast<double>(rng.uniform()) * rest;
  double acc = 0.0;
  int32_t last = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (i == draft || probs[i] <= 0.0f) continue;
    acc += probs[i];
    last = static_cast<int32_t>(i);
    if (u < acc) break;
  }
  r.token = last;
  return r;
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/speculative.hpp ----

// ---- begin tinyslm/session.hpp ----
// tinyslm session: the public API an app uses.
//
//   auto model = tinyslm::Model::open("SmolLM2-135M-Instruct-Q8_0.gguf");
//   auto session = tinyslm::Session::create(*model, {.context = 2048, .threads = 2});
//   auto prompt = session->chat_template().apply({{"user", "Hello!"}}, true);
//   session->generate(*prompt, {.sampler = {.temperature = 0.7f, .top_p = 0.9f, .seed = 42}, .max_tokens = 256},
//                     [](std::string_view piece) { std::fwrite(piece.data(), 1, piece.size(), stdout); return true; });
//
// A Session owns one sequence: the forward Context (KV cache, threads, scratch), the tokenizer
// and the chat template, all built from the model's GGUF. The Model must outlive it.
//
// generate() takes the WHOLE text so far (for a chat: the template applied to every message),
// not just the new part. The session tokenizes it, keeps the longest prefix of tokens already
// in the KV cache and evaluates only the rest, so a multi-turn chat costs only its new tokens.
// The prompt is evaluated in chunks of the batch size; the cancellation flag is checked before
// every chunk and before every generated token.
//
// generate is built from a token-level API an app can drive itself: prefill(ids) makes ids the
// cached sequence (reusing the cached prefix the same way), sample() picks the next token from
// the last logits, append() evaluates one, step() does both. GenerateOptions::on_logits may
// change the logits before sampling (a grammar's mask) and on_sample may replace or veto the
// sampled token; both apply to generate and to sample / step alike.
//
// When the context is full the caller chooses (SessionParams::overflow):
//   error          a prompt that does not fit fails with Errc::out_of_range; generation that
//                  reaches the end of the context stops with StopReason::context_full.
//   shift          keep the first `keep` tokens, drop the oldest half of the rest and evaluate
//                  what remains again. There is no RoPE rewrite: the kept tokens are simply
//                  re-evaluated at their new positions, which costs a prefill of up to n_ctx/2
//                  tokens each time the context fills (rare: once per n_ctx/2 generated tokens).
//                  A prompt longer than the context keeps its first `keep` tokens and its last
//                  (n_ctx - keep) / 2 tokens.
//   drop_messages  for the Chat helper: whole earlier messages are dropped (the system prompt
//                  stays) until the conversation fits; a bare Session treats it as `error`.
//
// Hybrid models (lfm2) carry a recurrent state that cannot be cut back like the KV cache: the
// session checkpoints it before and after the last token of every prompt and at the end of
// every reply, and reuses the longest cached prefix that ends at a checkpoint (or at the end
// of the cache); with none, it evaluates from the start. Shifts restart the same way.
//
// save_state() / load_state() write and read the tokens and the K/V rows of the filled
// positions (and a hybrid model's recurrent state) with a versioned header, a fingerprint of
// the model and a checksum; load_state validates everything before it touches the cache. The
// rows are stored in the cache's own types (f16, q8_0, q4_0); a state saved with other cache
// types is refused, not converted.

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>


namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

enum class OverflowPolicy : uint8_t { error, shift, drop_messages };

struct SessionParams {
  int64_t context = 2048;  // positions in the KV cache; 0 = the model's training context
  int threads = 1;
  int64_t batch = 512;     // most prompt tokens per forward chunk (and per cancellation check)
  OverflowPolicy overflow = OverflowPolicy::error;
  int64_t keep = 1;        // tokens kept at the start when shifting (1 = the BOS token)
  KvType type_k = KvType::f16;  // KV cache element types (-ctk / -ctv; kv_quant.hpp)
  KvType type_v = KvType::f16;
  ThreadPlacement placement = {};  // CPU mask or callback for the worker threads (threads.hpp)
  int32_t max_draft = 0;  // most speculative draft tokens verified per step (sizes the logits
                          // buffer: 1 + max_draft rows); a longer draft_max is cut to it, and
                          // 0 (the default: no extra memory) turns speculation off
};

// Receives each piece of generated text (whole UTF-8 characters); return false to stop.
using TokenCallback = std::function<bool(std::string_view piece)>;

// Sees the logits of the next position before the sampler does and may change them in place
// (a grammar's mask, a bias that depends on the text so far). They are the session's copy:
// the cache and last_logits() keep the model's values.
using LogitsHook = std::function<void(std::span<float> logits)>;

// What a SampleHook returns to refuse the sampled token: it is banned at this position and the
// sampler draws again.
inline constexpr int32_t kVetoToken = -1;

// Sees each sampled token with the logits it was drawn from and returns the token to use: `id`
// to keep it, another id to use that one instead, or kVetoToken.
using SampleHook = std::function<int32_t(int32_t id, std::span<const float> logits)>;

struct GenerateOptions {
  SamplerParams sampler = {};               // temperature <= 0: greedy (lowest id wins ties)
  int32_t max_tokens = 256;                 // < 0: until end of generation or a full context
  std::vector<std::string> stop = {};       // stop strings: not emitted, not in the result text
  const std::atomic<bool>* cancel = nullptr;  // set to true (from any thread) to stop
  bool stop_at_eog = true;                  // stop at EOS / end-of-turn tokens
  bool render_special = false;              // write the text of control tokens
  bool flush_partial_char = true;           // at the end, an incomplete UTF-8 character left
                                            // over becomes U+FFFD (false: it is dropped)
  LogitsHook on_logits = {};
  SampleHook on_sample = {};
  // Hybrid models: also checkpoint the recurrent state after this many prompt tokens (Chat
  // passes the end of the messages before the generation prompt, where the next turn's
  // prompt still agrees when the template renders earlier replies differently). -1: none.
  int64_t checkpoint_at = -1;
  // Speculative decoding (n-gram prompt lookup, verified in one batched forward). It only
  // applies to greedy sampling (temperature <= 0) without on_logits / on_sample hooks on a model
  // without recurrent state; otherwise decoding is plain, silently. Every token is still chosen
  // by the sampler from its own position's logits, so the ids are those of plain decoding up
  // to rounding: a row of a batched forward can differ from a one-token forward in the last
  // bits (as a prompt's last row already does), which may flip an exact near-tie.
  SpeculativeOptions speculative = {};
};

enum class StopReason : uint8_t {
  max_tokens,    // max_tokens generated (also max_tokens == 0: prompt evaluated only)
  eog,           // an end-of-generation token (it is in ids, not in text)
  stop_string,   // one of the stop strings appeared (cut from the text)
  callback,      // the callback returned false
  cancelled,     // the cancellation flag was set
  context_full,  // the context is full and the policy is `error`
};

inline const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::max_tokens: return "max_tokens";
    case StopReason::eog: return "eog";
    case StopReason::stop_string: return "stop_string";
    case StopReason::callback: return "callback";
    case StopReason::cancelled: return "cancelled";
    case StopReason::context_full: return "context_full";
  }
  return "?";
}

struct GenerateStats {
  int64_t prompt_tokens = 0;     // tokens of the prompt
  int64_t prompt_reused = 0;     // of them, found in the KV cache (not evaluated)
  int64_t prompt_evaluated = 0;  // tokens evaluated for the prompt (and again after shifts)
  int64_t generated = 0;         // tokens sampled
  int64_t shifts = 0;            // context shifts during this call
  double prompt_ms = 0;          // prompt evaluation
  double generation_ms = 0;      // from the first sampled token to the end
  double time_to_first_token_ms = 0;  // from the call to the first sampled token
  double prompt_tokens_per_s = 0;
  double generation_tokens_per_s = 0;  // generated tokens kept in the cache per second of decoding
  int64_t draft_proposed = 0;    // speculative draft tokens evaluated
  int64_t draft_accepted = 0;    // of them, the ones the model agreed with (kept)
};

struct GenerateResult {
  std::string text;               // generated text (without a matched stop string)
  std::vector<int32_t> ids;       // generated ids (an end-of-generation token included)
  StopReason stop = StopReason::max_tokens;
  GenerateStats stats;
};

// What an app will need, in bytes, before it loads anything.
struct MemoryEstimate {
  uint64_t weights = 0;   // tensor data: resident once touched through the mapping (or read)
  uint64_t kv_cache = 0;  // keys and values for every position of the context, in the cache types
  uint64_t compute = 0;   // activations, attention and matmul scratch
  uint64_t logits = 0;
  uint64_t other = 0;     // tokenizer, sampler, converted norm vectors
  uint64_t state = 0;     // hybrid models: recurrent state and its checkpoints
  uint64_t total() const { return weights + kv_cache + compute + logits + other + state; }
};

namespace detail {

// A 64-bit hash over words (fast enough for a whole KV cache); used for the model fingerprint
// and the state checksum, not for security.
class Hash64 {
 public:
  void bytes(const void* p, size_t n) {
    const auto* s = static_cast<const unsigned char*>(p);
    while (n >= 8) {
      uint64_t w;
      std::memcpy(&w, s, 8);
      word(w);
      s += 8;
      n -= 8;
    }
    uint64_t tail = 0;
    for (size_t i = 0; i < n; ++i) tail |= static_cast<uint64_t>(s[i]) << (8 * i);
    word(tail ^ (static_cast<uint64_t>(n) << 59));
  }
  void u64(uint64_t v) { word(v); }
  void str(std::string_view s) {
    u64(s.size());
    bytes(s.data(), s.size());
  }
  uint64_t value() const {
    uint64_t z = h_;
    z = (z ^ (z >> 33)) * 0xff51afd7ed558ccdull;
    z = (z ^ (z >> 33)) * 0xc4ceb9fe1a85ec53ull;
    return z ^ (z >> 33);
  }

 private:
  void word(uint64_t w) {
    h_ ^= w * 0x9e3779b97f4a7c15ull;
    h_ = ((h_ << 31) | (h_ >> 33)) * 0x94d049bb133111ebull;
  }
  uint64_t h_ = 0x243f6a8885a308d3ull;
};

// Little-endian writer / reader for the state format.
struct ByteWriter {
  std::vector<uint8_t>& out;
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void raw(const void* p, size_t n) {
    const size_t at = out.size();
    out.resize(at + n);
    if (n > 0) std::memcpy(out.data() + at, p, n);
  }
  // 16-bit values (F16 rows), little-endian whatever the host.
  void u16s(const uint16_t* p, size_t n) {
    if constexpr (std::endian::native == std::endian::little) {
      raw(p, n * 2);
    } else {
      for (size_t i = 0; i < n; ++i) {
        out.push_back(static_cast<uint8_t>(p[i]));
        out.push_back(static_cast<uint8_t>(p[i] >> 8));
      }
    }
  }
};

struct ByteReader {
  const uint8_t* p;
  size_t n;
  size_t at = 0;
  bool has(size_t k) const { return k <= n - at; }
  uint32_t u32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[at + i]) << (8 * i);
    at += 4;
    return v;
  }
  uint64_t u64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[at + i]) << (8 * i);
    at += 8;
    return v;
  }
  void u16s(uint16_t* dst, size_t k) {
    if constexpr (std::endian::native == std::endian::little) {
      std::memcpy(dst, p + at, k * 2);
    } else {
      for (size_t i = 0; i < k; ++i) dst[i] = static_cast<uint16_t>(p[at + 2 * i] | (p[at + 2 * i + 1] << 8));
    }
    at += k * 2;
  }
};

inline constexpr char kStateMagic[8] = {'t', 'i', 'n', 'y', 's', 'l', 'm', 'S'};
inline constexpr uint32_t kStateVersion = 1;
inline constexpr uint32_t kStateKvF16 = 1;
// The kv type field: kStateKvF16 for an all-f16 cache (the files of earlier builds), else
// 0x100 | type_k | type_v << 4. A state is only loaded into a cache of the same types.
inline uint32_t state_kv_code(KvType k, KvType v) {
  if (k == KvType::f16 && v == KvType::f16) return kStateKvF16;
  return 0x100u | static_cast<uint32_t>(k) | static_cast<uint32_t>(v) << 4;
}
inline std::string state_kv_name(uint32_t code) {
  if (code == kStateKvF16) return "f16/f16";
  for (KvType k : {KvType::f16, KvType::q8_0, KvType::q4_0})
    for (KvType v : {KvType::f16, KvType::q8_0, KvType::q4_0})
      if (state_kv_code(k, v) == code) return std::string(kv_type_name(k)) + "/" + kv_type_name(v);
  return "unknown";
}
// magic, version, header bytes, fingerprint, 6 shape fields, kv type + pad, n_ctx, n_tokens
inline constexpr uint32_t kStateHeaderBytes = 8 + 4 + 4 + 8 + 6 * 8 + 4 + 4 + 8 + 8;

// Identifies a model: architecture, shape, every tensor's name, type and shape, and a sample of
// each tensor's bytes (its first and last 64), so a file with other weights of the same shape
// is told apart without hashing gigabytes.
inline uint64_t model_fingerprint(const Model& m) {
  Hash64 h;
  const HParams& hp = m.hparams();
  h.str(hp.arch_name);
  for (int64_t v : {hp.n_vocab, hp.n_embd, hp.n_layer, hp.n_head, hp.n_head_kv, hp.head_dim_k,
                    hp.head_dim_v, hp.n_ff})
    h.u64(static_cast<uint64_t>(v));
  for (const auto& t : m.gguf().tensors()) {
    h.str(t.name);
    h.u64(static_cast<uint64_t>(t.type));
    for (uint64_t d : t.ne) h.u64(d);
    const size_t k = static_cast<size_t>(std::min<uint64_t>(64, t.n_bytes));
    if (t.data && k > 0) {
      h.bytes(t.data, k);
      h.bytes(t.data + t.n_bytes - k, k);
    }
  }
  return h.value();
}

inline bool is_cancelled(const std::atomic<bool>* c) {
  return c && c->load(std::memory_order_relaxed);
}

// Length of the longest suffix of `text` that is a proper prefix of some stop string (text that
// must be held back because the next piece could complete a stop string).
inline size_t stop_prefix_hold(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& s : stops) {
    const size_t most = std::min(s.size() - (s.empty() ? 0 : 1), text.size());
    for (size_t k = most; k > hold; --k)
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  }
  return hold;
}

// Generated text on its way to the caller. Pieces go through the stop-string filter; whatever
// could still become a stop string is held back until it no longer can.
class StopFilter {
 public:
  StopFilter(const std::vector<std::string>& stops, const TokenCallback& on_piece)
      : stops_(stops), on_piece_(on_piece) {}

  // Adds a piece (final: the end of the text, nothing is held back). Returns why to stop
  // (stop_string or callback), or nothing to go on.
  std::optional<StopReason> push(std::string_view piece, bool final) {
    all_ += piece;
    size_t cut = std::string::npos;
    for (const auto& s : stops_) {
      const size_t from = emitted_ >= s.size() ? emitted_ - s.size() + 1 : 0;
      const size_t p = all_.find(s, from);
      if (p != std::string::npos && p < cut) cut = p;
    }
    std::optional<StopReason> stop;
    size_t upto = all_.size();
    if (cut != std::string::npos) {
      upto = std::max(cut, emitted_);
      all_.resize(upto);
      stop = StopReason::stop_string;
    } else if (!final) {
      upto = all_.size() - stop_prefix_hold(std::string_view(all_).substr(emitted_), stops_);
    }
    if (upto > emitted_) {
      const std::string_view out = std::string_view(all_).substr(emitted_, upto - emitted_);
      emitted_ = upto;
      if (on_piece_ && !on_piece_(out) && !stop) stop = StopReason::callback;
    }
    return stop;
  }

  std::string take_text() { return std::move(all_); }

 private:
  const std::vector<std::string>& stops_;
  const TokenCallback& on_piece_;
  std::string all_;
  size_t emitted_ = 0;
};

using Clock = std::chrono::steady_clock;

// One generated token's bookkeeping in the decode loop: why to stop after it, if anything.
using EmitFn = std::function<Expected<std::optional<StopReason>>(int32_t id)>;

inline double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// Ids a session can evaluate: at least one, each inside the vocabulary.
inline Status check_prompt_ids(std::span<const int32_t> ids, int64_t n_vocab, const char* what) {
  if (ids.empty()) return make_error(Errc::invalid_argument, std::string(what) + ": empty prompt");
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= n_vocab)
      return make_error(Errc::out_of_range, std::string(what) + ": token id " + std::to_string(ids[i]) +
                                                " at index " + std::to_string(i) + " is outside the vocabulary (" +
                                                std::to_string(n_vocab) + " tokens)");
  return {};
}

}  // namespace detail

class Session {
 public:
  // Builds the context (KV cache for params.context positions), the tokenizer and the chat
  // template. Fails on a context larger than the model's training context. A tokenizer that
  // does not load is no failure (generate_ids still works): tokenizer_error() tells why.
  static Expected<Session> create(const Model& model, const SessionParams& params = {});

  Session(Session&&) = default;
  Session& operator=(Session&&) = default;

  // Generates a continuation of `prompt`, the whole text so far (BOS added as the tokenizer
  // asks, special tokens such as <|im_end|> recognised).
  Expected<GenerateResult> generate(std::string_view prompt, const GenerateOptions& options = {},
                                    const TokenCallback& on_piece = {});
  // The same from token ids (no tokenizer involved in the prompt): prefill, then
  // generate_from_cache.
  Expected<GenerateResult> generate_ids(std::span<const int32_t> prompt_ids, const GenerateOptions& options = {},
                                        const TokenCallback& on_piece = {});
  // Generates from the sequence in the cache as it stands (after prefill(), generate or
  // step), sampling first from last_logits(); no prompt is evaluated. The sampler starts from
  // options.sampler and has seen the cached tokens.
  Expected<GenerateResult> generate_from_cache(const GenerateOptions& options = {},
                                               const TokenCallback& on_piece = {});

  // Token level. prefill makes `ids` the sequence in the cache the way generate does: the
  // longest prefix already cached is kept and the rest evaluated in chunks of the batch size
  // (at least the last token again, for its logits); a prompt longer than the context follows
  // the overflow policy. Fails with Errc::cancelled when `cancel` is set between chunks (the
  // cache then holds the chunks evaluated so far).
  Status prefill(std::span<const int32_t> ids, const std::atomic<bool>* cancel = nullptr);
  // A sampler for this model's vocabulary that has seen the cached tokens (for the penalties).
  Expected<Sampler> make_sampler(const SamplerParams& params = {}) const;
  // Picks the next token from last_logits() through the options' hooks and records it in the
  // sampler; evaluates nothing. Fails when there are no logits (before any prefill).
  Expected<int32_t> sample(Sampler& sampler, const GenerateOptions& options = {});
  // Evaluates one token on top of the cache. A full context is shifted (policy shift) or fails
  // with Errc::out_of_range.
  Status append(int32_t id);
  // sample, then append: the token chosen and evaluated.
  Expected<int32_t> step(Sampler& sampler, const GenerateOptions& options = {});

  // The tokens generate() would evaluate for this text.
  Expected<std::vector<int32_t>> tokenize(std::string_view text) const {
    if (!has_tokenizer_) return no_tokenizer();
    return tok_.encode(text, /*add_special=*/true, /*parse_special=*/true);
  }

  // Forgets the sequence (the next generate evaluates its whole prompt).
  void reset() {
    ctx_.reset();
    tokens_.clear();
    logits_valid_ = false;
  }

  // The tokens whose keys and values are in the cache, in order.
  std::span<const int32_t> tokens() const { return tokens_; }
  int64_t n_past() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t n_ctx() const { return ctx_.n_ctx(); }
  // Logits of the last token evaluated (after generate with max_tokens = 0: the prompt's last);
  // empty before any evaluation and after reset() or load_state().
  std::span<const float> last_logits() const {
    return logits_valid_ ? ctx_.last_logits() : std::span<const float>();
  }

  // The model, through the context, which holds a share of it: a session stays valid when the
  // Model object it was created from is moved or destroyed.
  const Model& model() const { return ctx_.model(); }
  const SessionParams& params() const { return params_; }
  const Context& context() const { return ctx_; }
  bool has_tokenizer() const { return has_tokenizer_; }
  // Why the model's tokenizer did not load; nullptr when it did.
  const Error* tokenizer_error() const { return tok_error_.code() == Errc::ok ? nullptr : &tok_error_; }
  const Tokenizer& tokenizer() const { return tok_; }
  const ChatTemplate& chat_template() const { return tmpl_; }
  ChatTemplate& chat_template() { return tmpl_; }

  // Session state: the tokens and the K/V rows of the filled positions.
  std::vector<uint8_t> save_state() const;
  Status load_state(std::span<const uint8_t> bytes);
  Status save_state_file(const std::string& path) const;
  Status load_state_file(const std::string& path);

 private:
  explicit Session(Context ctx) : ctx_(std::move(ctx)) {}
  Error no_tokenizer() const {
    if (tok_error_.code() != Errc::ok) return Error(tok_error_).context("session: the model's tokenizer did not load");
    return make_error(Errc::unsupported, "session: the model has no usable tokenizer (use generate_ids)");
  }
  int32_t n_vocab() const { return static_cast<int32_t>(model().hparams().n_vocab); }
  Status check_options(const GenerateOptions& options) const;
  // prefill with the counts and times of the prompt; false when cancelled.
  Expected<bool> prefill_counted(std::span<const int32_t> ids, const std::atomic<bool>* cancel, GenerateStats& st,
                                 int64_t checkpoint_at = -1);
  // Evaluates toks on top of the cache in chunks of the batch size; false when cancelled.
  Expected<bool> eval_chunks(std::span<const int32_t> toks, const std::atomic<bool>* cancel, int64_t* evaluated);
  // Room for one more token: nothing when there is (after a shift, if the policy allows it),
  // else why not (context_full, or cancelled while the kept tokens were evaluated again).
  Expected<std::optional<StopReason>> make_room(const std::atomic<bool>* cancel, GenerateStats& st);
  Status eval_token(int32_t id);
  // A sample hook's answer for `id`: the token to use, drawing again after each veto.
  Expected<int32_t> apply_sample_hook(Sampler& sampler, const SampleHook& hook, int32_t id,
                                      std::span<const float> logits);
  // The token loop of generate: samples, streams the text, evaluates, until a stop.
  Status decode(Sampler& sampler, const GenerateOptions& options, const TokenCallback& on_piece,
                GenerateResult& res, detail::Clock::time_point t_start);
  bool use_speculative(const GenerateOptions& options) const {
    return options.speculative.type == SpecType::ngram_simple && options.sampler.temperature <= 0.0f &&
           !options.on_logits && !options.on_sample && ctx_.state().empty();
  }
  // Evaluates the generated token `id` (the cache has room for it) with a draft after it, if
  // one is found; see decode.
  Expected<std::optional<StopReason>> speculate(int32_t id, Sampler& sampler, const GenerateOptions& options,
                                                const detail::EmitFn& emit, GenerateStats& st,
                                                std::optional<int32_t>& pending, int64_t& kept);

  SessionParams params_;
  Context ctx_;
  Tokenizer tok_;
  bool has_tokenizer_ = false;
  Error tok_error_;  // Errc::ok: the tokenizer loaded
  ChatTemplate tmpl_;
  std::vector<int32_t> tokens_;
  bool logits_valid_ = false;
  std::vector<float> hooked_logits_;  // the copy a logits hook or a veto changes
  std::vector<int32_t> draft_, verify_;  // speculative scratch: the draft, [token | draft]
  uint64_t fingerprint_ = 0;
};

inline Expected<Session> Session::create(const Model& model, const SessionParams& params) {
  const HParams& hp = model.hparams();
  int64_t n_ctx = params.context == 0 ? hp.n_ctx_train : params.context;
  if (n_ctx < 0)
    return make_error(Errc::invalid_argument, "session: context length " + std::to_string(n_ctx) + " is negative");
  if (hp.n_ctx_train > 0 && n_ctx > hp.n_ctx_train)
    return make_error(Errc::invalid_argument, "session: context " + std::to_string(n_ctx) +
                                                  " is larger than the model's training context (" +
                                                  std::to_string(hp.n_ctx_train) + ")");
  if (params.threads <= 0)
    return make_error(Errc::invalid_argument, "session: thread count must be positive (got " +
                                                  std::to_string(params.threads) + ")");
  if (params.batch <= 0)
    return make_error(Errc::invalid_argument, "session: batch size must be positive");
  if (params.keep < 0 || params.keep >= n_ctx)
    return make_error(Errc::invalid_argument, "session: keep must be in [0, context)");
  if (params.max_draft < 0 || params.max_draft > 256)
    return make_error(Errc::invalid_argument, "session: max_draft must be in [0, 256]");
  const ContextParams cp{.n_ctx = n_ctx, .n_threads = params.threads, .n_batch = params.batch,
                         .type_k = params.type_k, .type_v = params.type_v,
                         .placement = params.placement, .verify_rows = 1 + params.max_draft};
  auto ctx = Context::create(model, cp);
  if (!ctx) return ctx.error();
  Session s(std::move(*ctx));
  s.params_ = params;
  s.params_.context = n_ctx;
  if (auto tok = Tokenizer::from_gguf(model.gguf())) {
    s.tok_ = std::move(*tok);
    s.has_tokenizer_ = s.tok_.n_vocab() > 0;
    s.tmpl_ = ChatTemplate::from_gguf(model.gguf(), s.tok_);
  } else {
    s.tok_error_ = tok.error();
  }
  s.fingerprint_ = detail::model_fingerprint(model);
  return s;
}

inline Expected<GenerateResult> Session::generate(std::string_view prompt, const GenerateOptions& options,
                                                  const TokenCallback& on_piece) {
  auto ids = tokenize(prompt);
  if (!ids) return ids.error();
  return generate_ids(*ids, options, on_piece);
}

inline Status Session::check_options(const GenerateOptions& options) const {
  for (const auto& s : options.stop)
    if (s.empty()) return make_error(Errc::invalid_argument, "generate: empty stop string");
  return {};
}

inline Expected<GenerateResult> Session::generate_ids(std::span<const int32_t> prompt_ids,
                                                      const GenerateOptions& options, const TokenCallback& on_piece) {
  const auto t_start = detail::Clock::now();
  if (auto st = detail::check_prompt_ids(prompt_ids, n_vocab(), "generate"); !st) return st.error();
  if (auto st = check_options(options); !st) return st.error();
  // Created before the cache is touched, so that bad sampler settings leave it as it was.
  auto sampler = Sampler::create(n_vocab(), options.sampler);
  if (!sampler) return sampler.error();
  GenerateResult res;
  auto done = prefill_counted(prompt_ids, options.cancel, res.stats, options.checkpoint_at);
  if (!done) return done.error();
  if (!*done) {
    res.stop = StopReason::cancelled;
    return res;
  }
  for (int32_t id : tokens_) sampler->accept(id);
  if (auto st = decode(*sampler, options, on_piece, res, t_start); !st) return st.error();
  return res;
}

inline Expected<GenerateResult> Session::generate_from_cache(const GenerateOptions& options,
                                                             const TokenCallback& on_piece) {
  const auto t_start = detail::Clock::now();
  if (!logits_valid_)
    return make_error(Errc::invalid_argument, "generate: no logits to continue from (prefill first)");
  if (auto st = check_options(options); !st) return st.error();
  auto sampler = make_sampler(options.sampler);
  if (!sampler) return sampler.error();
  GenerateResult res;
  if (auto st = decode(*sampler, options, on_piece, res, t_start); !st) return st.error();
  return res;
}

inline Status Session::prefill(std::span<const int32_t> ids, const std::atomic<bool>* cancel) {
  if (auto st = detail::check_prompt_ids(ids, n_vocab(), "prefill"); !st) return st;
  GenerateStats st;
  auto done = prefill_counted(ids, cancel, st);
  if (!done) return done.error();
  if (!*done) return make_error(Errc::cancelled, "prefill: cancelled");
  return {};
}

inline Expected<bool> Session::prefill_counted(std::span<const int32_t> ids, const std::atomic<bool>* cancel,
                                               GenerateStats& st, int64_t checkpoint_at) {
  const int64_t n_ctx = ctx_.n_ctx();
  st.prompt_tokens = static_cast<int64_t>(ids.size());
  // A prompt longer than the context: an error, or (shift) its start and its most recent half.
  std::vector<int32_t> prompt(ids.begin(), ids.end());
  const int64_t keep = std::min<int64_t>(params_.keep, n_ctx - 1);
  if (static_cast<int64_t>(prompt.size()) > n_ctx) {
    if (params_.overflow != OverflowPolicy::shift)
      return make_error(Errc::out_of_range, "prompt is " + std::to_string(prompt.size()) +
                                                " tokens but the context holds " + std::to_string(n_ctx));
    const int64_t tail = std::max<int64_t>(1, (n_ctx - keep) / 2);
    prompt.erase(prompt.begin() + keep, prompt.end() - tail);
    ++st.shifts;
  }

  // Reuse the longest common prefix; at least the last prompt token is evaluated again, since
  // its logits are needed.
  size_t common = 0;
  while (common < tokens_.size() && common < prompt.size() && tokens_[common] == prompt[common]) ++common;
  common = std::min(common, prompt.size() - 1);
  common = static_cast<size_t>(ctx_.restorable(static_cast<int64_t>(common)));  // hybrid: a checkpoint
  if (auto t = ctx_.truncate(static_cast<int64_t>(common)); !t) return t.error();
  tokens_.resize(common);
  logits_valid_ = false;
  st.prompt_reused = static_cast<int64_t>(common);

  const auto t_prompt = detail::Clock::now();
  auto rest = std::span<const int32_t>(prompt).subspan(common);
  Expected<bool> done = true;
  // A hybrid model's state cannot be cut back: checkpoint it before the last prompt token (to
  // evaluate the same prompt again) and after it (for the next turn).
  const int64_t hint = checkpoint_at - static_cast<int64_t>(common);  // tokens of rest before the hint
  if (!ctx_.state().empty() && st.shifts == 0 && hint > 0 && hint + 1 < static_cast<int64_t>(rest.size())) {
    done = eval_chunks(rest.first(static_cast<size_t>(hint)), cancel, &st.prompt_evaluated);
    if (done && *done) ctx_.checkpoint();
    rest = rest.subspan(static_cast<size_t>(hint));
  }
  if (!ctx_.state().empty() && rest.size() > 1 && done && *done) {
    done = eval_chunks(rest.first(rest.size() - 1), cancel, &st.prompt_evaluated);
    if (done && *done) ctx_.checkpoint();
    rest = rest.last(1);
  }
  if (done && *done) done = eval_chunks(rest, cancel, &st.prompt_evaluated);
  if (!done) return done.error();
  if (*done) ctx_.checkpoint();
  st.prompt_ms = detail::ms_since(t_prompt);
  if (st.prompt_ms > 0) st.prompt_tokens_per_s = 1000.0 * static_cast<double>(st.prompt_evaluated) / st.prompt_ms;
  return *done;
}

inline Expected<bool> Session::eval_chunks(std::span<const int32_t> toks, const std::atomic<bool>* cancel,
                                           int64_t* evaluated) {
  const size_t B = static_cast<size_t>(ctx_.params().n_batch);
  for (size_t at = 0; at < toks.size(); at += B) {
    if (detail::is_cancelled(cancel)) return false;
    const auto chunk = toks.subspan(at, std::min(B, toks.size() - at));
    auto lg = ctx_.eval(chunk);
    if (!lg) return lg.error();
    tokens_.insert(tokens_.end(), chunk.begin(), chunk.end());
    logits_valid_ = true;
    *evaluated += static_cast<int64_t>(chunk.size());
  }
  return true;
}

inline Expected<Sampler> Session::make_sampler(const SamplerParams& params) const {
  auto sampler = Sampler::create(n_vocab(), params);
  if (!sampler) return sampler.error();
  for (int32_t id : tokens_) sampler->accept(id);
  return sampler;
}

inline Expected<int32_t> Session::sample(Sampler& sampler, const GenerateOptions& options) {
  if (!logits_valid_) return make_error(Errc::invalid_argument, "sample: no logits to sample from (prefill first)");
  if (sampler.n_vocab() != n_vocab())
    return make_error(Errc::invalid_argument, "sample: the sampler is for a vocabulary of " +
                                                  std::to_string(sampler.n_vocab()) + " tokens, the model has " +
                                                  std::to_string(n_vocab()));
  std::span<const float> logits = ctx_.last_logits();
  if (options.on_logits) {
    hooked_logits_.assign(logits.begin(), logits.end());
    options.on_logits(hooked_logits_);
    logits = hooked_logits_;
  }
  int32_t id = sampler.sample(logits);
  if (options.on_sample) {
    auto chosen = apply_sample_hook(sampler, options.on_sample, id, logits);
    if (!chosen) return chosen.error();
    id = *chosen;
  }
  sampler.accept(id);
  return id;
}

inline Expected<int32_t> Session::apply_sample_hook(Sampler& sampler, const SampleHook& hook, int32_t id,
                                                    std::span<const float> logits) {
  for (int32_t vetoes = 0;; ++vetoes) {
    const int32_t pick = hook(id, logits);
    if (pick == id) return id;
    if (pick != kVetoToken) {
      if (pick < 0 || pick >= n_vocab())
        return make_error(Errc::out_of_range, "sample: the sample hook chose token " + std::to_string(pick) +
                                                  ", outside the vocabulary");
      return pick;
    }
    if (vetoes + 1 >= n_vocab())
      return make_error(Errc::invalid_argument, "sample: the sample hook vetoed every token");
    if (logits.data() != hooked_logits_.data()) hooked_logits_.assign(logits.begin(), logits.end());
    hooked_logits_[static_cast<size_t>(id)] = -INFINITY;
    logits = hooked_logits_;
    id = sampler.sample(logits);
  }
}

inline Expected<std::optional<StopReason>> Session::make_room(const std::atomic<bool>* cancel, GenerateStats& st) {
  const int64_t n_ctx = ctx_.n_ctx();
  if (ctx_.n_past() < n_ctx) return std::optional<StopReason>();
  const int64_t keep = std::min<int64_t>(params_.keep, n_ctx - 1);
  if (params_.overflow != OverflowPolicy::shift || keep >= n_ctx - 1) return std::optional(StopReason::context_full);
  const int64_t n_discard = std::max<int64_t>(1, (n_ctx - keep) / 2);
  // A hybrid model restarts from its latest checkpoint inside the kept tokens.
  const int64_t from = ctx_.restorable(keep);
  std::vector<int32_t> rest(tokens_.begin() + from, tokens_.begin() + keep);
  rest.insert(rest.end(), tokens_.begin() + keep + n_discard, tokens_.end());
  if (auto t = ctx_.truncate(from); !t) return t.error();
  tokens_.resize(static_cast<size_t>(from));
  logits_valid_ = false;
  ++st.shifts;
  auto ok = eval_chunks(rest, cancel, &st.prompt_evaluated);
  if (!ok) return ok.error();
  if (!*ok) return std::optional(StopReason::cancelled);
  return std::optional<StopReason>();
}

inline Status Session::eval_token(int32_t id) {
  auto lg = ctx_.eval(std::span<const int32_t>(&id, 1));
  if (!lg) return lg.error();
  tokens_.push_back(id);
  logits_valid_ = true;
  return {};
}

inline Status Session::append(int32_t id) {
  if (auto st = detail::check_prompt_ids(std::span<const int32_t>(&id, 1), n_vocab(), "append"); !st) return st;
  GenerateStats st;
  auto room = make_room(nullptr, st);
  if (!room) return room.error();
  if (*room)
    return make_error(Errc::out_of_range, "append: the context is full (" + std::to_string(ctx_.n_ctx()) +
                                              " positions) and the overflow policy does not shift");
  return eval_token(id);
}

inline Expected<int32_t> Session::step(Sampler& sampler, const GenerateOptions& options) {
  auto id = sample(sampler, options);
  if (!id) return id.error();
  if (auto st = append(*id); !st) return st.error();
  return *id;
}

// `pending` is a generated token (sent through emit) not yet evaluated. Speculation evaluates it
// with a draft and emits the tokens the sampler picks from the draft's rows, which are exactly
// the tokens plain decoding would pick; the cache is then cut back to what plain decoding would
// hold, so the ids, the stop and the final state are the same both ways.
inline Status Session::decode(Sampler& sampler, const GenerateOptions& options, const TokenCallback& on_piece,
                              GenerateResult& res, detail::Clock::time_point t_start) {
  GenerateStats& st = res.stats;
  detail::StopFilter text(options.stop, on_piece);
  StreamDecoder decoder(tok_, options.render_special);
  const auto at_max = [&] { return options.max_tokens >= 0 && st.generated >= options.max_tokens; };
  detail::Clock::time_point t_first{};
  double decode_ms = 0;
  int64_t decoded = 0;
  const detail::EmitFn emit = [&](int32_t id) -> Expected<std::optional<StopReason>> {
    res.ids.push_back(id);
    if (++st.generated == 1) {
      t_first = detail::Clock::now();
      st.time_to_first_token_ms = std::chrono::duration<double, std::milli>(t_first - t_start).count();
    }
    if (has_tokenizer_ && options.stop_at_eog && tok_.is_eog(id)) return std::optional(StopReason::eog);
    if (has_tokenizer_) {
      auto piece = decoder.push(id);
      if (!piece) return piece.error();
      if (auto s = text.push(*piece, false)) return s;
    }
    if (at_max()) return std::optional(StopReason::max_tokens);
    return std::optional<StopReason>();
  };
  const bool spec = use_speculative(options);
  std::optional<StopReason> stop;
  std::optional<int32_t> pending;
  for (;;) {
    if (!pending) {
      if (at_max()) stop = StopReason::max_tokens;
      else if (detail::is_cancelled(options.cancel)) stop = StopReason::cancelled;
      if (stop) break;
      auto id = sample(sampler, options);
      if (!id) return id.error();
      auto s = emit(*id);
      if (!s) return s.error();
      if ((stop = *s)) break;
      pending = *id;
    }
    auto room = make_room(options.cancel, st);  // re-evaluation after a shift is prefill work, not decoding
    if (!room) return room.error();
    if ((stop = *room)) break;
    const auto t_eval = detail::Clock::now();
    int64_t kept = 1;
    if (spec) {
      auto s = speculate(*pending, sampler, options, emit, st, pending, kept);
      if (!s) return s.error();
      stop = *s;
    } else {
      if (auto e = eval_token(*pending); !e) return e.error();
      pending.reset();
    }
    decode_ms += detail::ms_since(t_eval);
    decoded += kept;
    if (stop) break;
  }
  res.stop = *stop;
  if (has_tokenizer_ && res.stop != StopReason::stop_string && res.stop != StopReason::callback) {
    const std::string rest = options.flush_partial_char ? decoder.flush() : std::string();
    if (auto last = text.push(rest, true)) res.stop = *last;
  }
  res.text = text.take_text();
  ctx_.checkpoint();  // the end of the reply, where a chat's next turn starts
  if (st.generated > 0) st.generation_ms = detail::ms_since(t_first);
  if (decode_ms > 0) st.generation_tokens_per_s = 1000.0 * static_cast<double>(decoded) / decode_ms;
  return {};
}

// Drafts after [cache | id]; with no draft, id is evaluated alone. Otherwise [id | draft] is
// evaluated in one forward keeping every row's logits, and row i (the logits after draft token
// i) chooses the next token the way sample() would, until it differs from the draft, a stop
// comes or the rows run out. The cache keeps id and the drafts that were followed, and the
// logits of the last kept row are the last logits. A draft never needs a context shift.
inline Expected<std::optional<StopReason>> Session::speculate(int32_t id, Sampler& sampler,
                                                              const GenerateOptions& options,
                                                              const detail::EmitFn& emit, GenerateStats& st,
                                                              std::optional<int32_t>& pending, int64_t& kept) {
  pending.reset();
  kept = 1;
  const int64_t base = n_past();
  SpeculativeOptions o = options.speculative;
  o.draft_max = static_cast<int>(std::min<int64_t>({o.draft_max, ctx_.max_eval_all() - 1, n_ctx() - base - 1}));
  int k = 0;
  if (o.draft_max > 0) {
    tokens_.push_back(id);
    k = ngram_draft(tokens_, o, draft_);
    tokens_.pop_back();
  }
  if (k == 0) {
    if (auto e = eval_token(id); !e) return e.error();
    return std::optional<StopReason>();
  }
  verify_.assign(1, id);
  verify_.insert(verify_.end(), draft_.begin(), draft_.end());
  auto lg = ctx_.eval_all(verify_);
  if (!lg) return lg.error();
  tokens_.insert(tokens_.end(), verify_.begin(), verify_.end());
  logits_valid_ = true;
  st.draft_proposed += k;
  std::optional<StopReason> stop;
  int64_t i = 0;
  for (;; ++i) {
    if (detail::is_cancelled(options.cancel)) {  // checked before every token, as plain decoding does
      stop = StopReason::cancelled;
      break;
    }
    const int32_t next = sampler.sample(ctx_.logits(i));
    sampler.accept(next);
    auto s = emit(next);
    if (!s) return s.error();
    if ((stop = *s)) break;
    if (i == k || next != draft_[static_cast<size_t>(i)]) {
      pending = next;
      break;
    }
    ++st.draft_accepted;
  }
  if (auto t = ctx_.truncate(base + 1 + i); !t) return t.error();
  tokens_.resize(static_cast<size_t>(base + 1 + i));
  ctx_.keep_logits(i);
  kept = 1 + i;
  return stop;
}

inline std::vector<uint8_t> Session::save_state() const {
  const HParams& hp = model().hparams();
  const KvCache& kv = ctx_.kv();
  const uint64_t n = tokens_.size();
  std::vector<uint8_t> out;
  out.reserve(detail::kStateHeaderBytes + n * 4 + kv.bytes() / static_cast<size_t>(std::max<int64_t>(1, kv.n_ctx())) * n + 8);
  detail::ByteWriter w{out};
  w.raw(detail::kStateMagic, 8);
  w.u32(detail::kStateVersion);
  w.u32(detail::kStateHeaderBytes);
  w.u64(fingerprint_);
  for (int64_t v : {hp.n_layer, hp.n_head_kv, hp.head_dim_k, hp.head_dim_v, hp.n_vocab, hp.n_embd})
    w.u64(static_cast<uint64_t>(v));
  w.u32(detail::state_kv_code(kv.type_k(), kv.type_v()));
  w.u32(0);
  w.u64(static_cast<uint64_t>(kv.n_ctx()));
  w.u64(n);
  for (int32_t t : tokens_) w.u32(static_cast<uint32_t>(t));
  for (int64_t il = 0; il < kv.n_layer(); ++il) {
    for (int pass = 0; pass < 2; ++pass) {
      const KvType t = pass == 0 ? kv.type_k() : kv.type_v();
      const int64_t rb = pass == 0 ? kv.row_bytes_k() : kv.row_bytes_v();
      const uint8_t* base = pass == 0 ? kv.k_bytes(il) : kv.v_bytes(il);
      for (int64_t g = 0; g < hp.n_head_kv; ++g) {
        const uint8_t* rows = base + g * kv.n_ctx() * rb;
        const size_t bytes = static_cast<size_t>(n * static_cast<uint64_t>(rb));
        // F16 rows as little-endian halves; quantized rows are written as the blocks lie in memory
        if (t == KvType::f16) w.u16s(reinterpret_cast<const uint16_t*>(rows), bytes / 2);
        else w.raw(rows, bytes);
      }
    }
  }
  // A hybrid model's recurrent state at the last position, F32 bit patterns.
  for (float v : ctx_.state().live()) w.u32(std::bit_cast<uint32_t>(v));
  detail::Hash64 h;
  h.bytes(out.data(), out.size());
  w.u64(h.value());
  return out;
}

inline Status Session::load_state(std::span<const uint8_t> bytes) {
  const HParams& hp = model().hparams();
  auto bad = [](const std::string& m) { return make_error(Errc::invalid_format, "session state: " + m); };
  detail::ByteReader r{bytes.data(), bytes.size()};
  if (!r.has(detail::kStateHeaderBytes + 8)) return bad("too short (" + std::to_string(bytes.size()) + " bytes)");
  if (std::memcmp(bytes.data(), detail::kStateMagic, 8) != 0) return bad("not a tinyslm session state");
  r.at = 8;
  const uint32_t version = r.u32();
  if (version != detail::kStateVersion)
    return make_error(Errc::unsupported, "session state: version " + std::to_string(version) +
                                             " (this build reads version " + std::to_string(detail::kStateVersion) + ")");
  if (r.u32() != detail::kStateHeaderBytes) return bad("wrong header size");
  if (r.u64() != fingerprint_)
    return make_error(Errc::invalid_argument, "session state: saved with another model");
  for (int64_t v : {hp.n_layer, hp.n_head_kv, hp.head_dim_k, hp.head_dim_v, hp.n_vocab, hp.n_embd})
    if (r.u64() != static_cast<uint64_t>(v))
      return make_error(Errc::invalid_argument, "session state: model shape differs");
  KvCache& kv = ctx_.kv();
  const uint32_t kv_code = r.u32(), want_code = detail::state_kv_code(kv.type_k(), kv.type_v());
  if (kv_code != want_code)
    return make_error(Errc::invalid_argument, "session state: saved with a " + detail::state_kv_name(kv_code) +
                                                  " (K/V) cache; this session's cache is " +
                                                  detail::state_kv_name(want_code));
  r.u32();
  r.u64();  // the saving session's context length (any context that holds the tokens will do)
  const uint64_t n = r.u64();
  if (n > static_cast<uint64_t>(ctx_.n_ctx()))
    return make_error(Errc::out_of_range, "session state: holds " + std::to_string(n) +
                                              " tokens, more than this session's context (" +
                                              std::to_string(ctx_.n_ctx()) + ")");
  const uint64_t row_bytes = static_cast<uint64_t>(kv.n_layer() * hp.n_head_kv * (kv.row_bytes_k() + kv.row_bytes_v()));
  const uint64_t expect = detail::kStateHeaderBytes + n * 4 + n * row_bytes + 4 * ctx_.state().floats() + 8;
  if (bytes.size() != expect)
    return bad("size " + std::to_string(bytes.size()) + " bytes, expected " + std::to_string(expect) + " for " +
               std::to_string(n) + " tokens");
  detail::Hash64 h;
  h.bytes(bytes.data(), bytes.size() - 8);
  detail::ByteReader tail{bytes.data() + bytes.size() - 8, 8};
  if (tail.u64() != h.value()) return bad("checksum mismatch (corrupted)");
  std::vector<int32_t> toks(static_cast<size_t>(n));
  for (auto& t : toks) {
    t = static_cast<int32_t>(r.u32());
    if (t < 0 || t >= hp.n_vocab) return bad("token id " + std::to_string(t) + " outside the vocabulary");
  }
  // Everything checked: replace the cache.
  ctx_.reset();  // the cache and the recurrent state with its checkpoints
  tokens_.clear();
  for (int64_t il = 0; il < kv.n_layer(); ++il) {
    for (int pass = 0; pass < 2; ++pass) {
      const KvType t = pass == 0 ? kv.type_k() : kv.type_v();
      const int64_t rb = pass == 0 ? kv.row_bytes_k() : kv.row_bytes_v();
      uint8_t* base = pass == 0 ? kv.k_bytes(il) : kv.v_bytes(il);
      for (int64_t g = 0; g < hp.n_head_kv; ++g) {
        uint8_t* rows = base + g * kv.n_ctx() * rb;
        const size_t len = static_cast<size_t>(n * static_cast<uint64_t>(rb));
        if (t == KvType::f16) {
          r.u16s(reinterpret_cast<uint16_t*>(rows), len / 2);
        } else {
          std::memcpy(rows, r.p + r.at, len);
          r.at += len;
        }
      }
    }
  }
  for (float& v : ctx_.state().live()) v = std::bit_cast<float>(r.u32());
  kv.advance(static_cast<int64_t>(n));
  tokens_ = std::move(toks);
  logits_valid_ = false;
  return {};
}

inline Status Session::save_state_file(const std::string& path) const {
  const std::vector<uint8_t> bytes = save_state();
  std::FILE* f = detail::fopen_utf8(path, "wb");
  if (!f) return make_error(Errc::io, path + ": cannot open for writing");
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  if (std::fclose(f) != 0 || !ok) return make_error(Errc::io, path + ": write failed");
  return {};
}

inline Status Session::load_state_file(const std::string& path) {
  auto src = Source::open(path, LoadMode::read);
  if (!src) return src.error();
  return load_state(std::span<const uint8_t>(src->data(), src->size()));
}

// Bytes a session on this model will need, from the file's metadata alone (no weights read):
// the forward layer's ContextPlan, the one Context::create allocates from.
inline Expected<MemoryEstimate> memory_estimate(const GgufFile& f, int64_t context, int threads = 1,
                                                int64_t batch = 512, KvType type_k = KvType::f16,
                                                KvType type_v = KvType::f16) {
  auto hpx = read_hparams(f);
  if (!hpx) return hpx.error();
  HParams& hp = *hpx;
  if (hp.n_expert > 0) {
    auto cfg = read_moe_config(f);
    if (!cfg) return cfg.error();
    hp.moe = *cfg;
  }
  const int64_t n_ctx = context <= 0 ? hp.n_ctx_train : context;
  if (n_ctx <= 0 || threads <= 0 || batch <= 0)
    return make_error(Errc::invalid_argument, "memory_estimate: context, threads and batch must be positive");
  int64_t n_vocab = 0;
  if (const GgufTensorInfo* te = f.find_tensor("token_embd.weight"); te && te->n_dims == 2)
    n_vocab = static_cast<int64_t>(te->ne[1]);
  ContextParams cp{n_ctx, threads, batch, false, type_k, type_v};
  cp.verify_rows = 1 + SessionParams{}.max_draft;
  auto plan = ContextPlan::make(hp, n_vocab, cp);
  if (!plan) return plan.error();
  MemoryEstimate m;
  uint64_t small = 0;
  for (const auto& t : f.tensors()) {
    m.weights += t.n_bytes;
    if (t.n_dims == 1) small += t.n_elements * 4;  // norms and biases are kept as floats
  }
  m.kv_cache = plan->kv_bytes;
  m.state = plan->state_bytes;
  m.compute = plan->compute_bytes();
  m.logits = plan->logit_bytes();
  // Tokenizer: the vocabulary strings twice (text and output pieces), per-token tables, merges;
  // sampler: a candidate (8 bytes) and a count (4) per token plus its probability buffers.
  uint64_t vocab_bytes = 0, n_merges = 0;
  if (auto toks = f.get<GgufArray>("tokenizer.ggml.tokens")) {
    toks->for_each([&](const GgufValue& v) {
      if (v.type() == GgufValueType::string) vocab_bytes += v.as_string().size();
      return true;
    });
  }
  if (auto merges = f.get<GgufArray>("tokenizer.ggml.merges")) n_merges = merges->size();
  // plus a fixed 256 KiB for the small tables and vectors every session has.
  const uint64_t nv = static_cast<uint64_t>(n_vocab);
  m.other = small + 2 * vocab_bytes + nv * (4 + 4 + 2 + 4 + 8 + 12 + 8 + 4) + n_merges * 32 + (256u << 10);
  return m;
}

inline Expected<MemoryEstimate> memory_estimate(const std::string& path, int64_t context, int threads = 1,
                                                int64_t batch = 512, KvType type_k = KvType::f16,
                                                KvType type_v = KvType::f16) {
  auto f = GgufFile::open(path);
  if (!f) return f.error();
  return memory_estimate(*f, context, threads, batch, type_k, type_v);
}

// A conversation on a session: the system prompt and the messages so far, rendered with the
// model's chat template on every turn (the session reuses the cached prefix, so only the new
// turn is evaluated). It refers to the session, which must outlive it and stay in place.
class Chat {
 public:
  explicit Chat(Session& session, std::string system_prompt = "")
      : session_(&session), system_(std::move(system_prompt)) {}

  // Adds the user's message, generates the assistant's reply and adds it. With the session's
  // overflow policy drop_messages, the oldest whole turns are dropped (the system prompt and
  // the new message stay) until the prompt and min(max_tokens, context / 2) fit.
  Expected<GenerateResult> send(std::string_view user_text, const GenerateOptions& options = {},
                                const TokenCallback& on_piece = {}) {
    messages_.push_back({"user", std::string(user_text)});
    auto r = run(options, on_piece);
    if (!r) {
      messages_.pop_back();
      return r.error();
    }
    messages_.push_back({"assistant", r->text});
    return r;
  }

  // Forgets the messages (the system prompt stays, and so does its cached prefix).
  void reset() { messages_.clear(); }
  void set_system_prompt(std::string s) { system_ = std::move(s); }
  const std::string& system_prompt() const { return system_; }
  const std::vector<ChatMessage>& messages() const { return messages_; }
  int64_t dropped_messages() const { return dropped_; }

  // The prompt text for the current messages (with the generation prompt).
  Expected<std::string> render() const {
    std::vector<ChatMessage> all;
    if (!system_.empty()) all.push_back({"system", system_});
    all.insert(all.end(), messages_.begin(), messages_.end());
    return session_->chat_template().apply(all, /*add_generation_prompt=*/true);
  }

 private:
  Expected<GenerateResult> run(const GenerateOptions& options, const TokenCallback& on_piece) {
    const int64_t n_ctx = session_->n_ctx();
    const int64_t room = options.max_tokens > 0 ? std::min<int64_t>(options.max_tokens, n_ctx / 2) : 0;
    for (;;) {
      auto text = render();
      if (!text) return text.error();
      auto ids = session_->tokenize(*text);
      if (!ids) return ids.error();
      const bool fits = static_cast<int64_t>(ids->size()) + room <= n_ctx;
      if (fits || session_->params().overflow != OverflowPolicy::drop_messages || messages_.size() <= 1) {
        GenerateOptions o = options;
        o.checkpoint_at = messages_end(*ids);
        return session_->generate_ids(*ids, o, on_piece);
      }
      // Drop the oldest turn: its user message and the reply that followed it.
      messages_.erase(messages_.begin());
      ++dropped_;
      while (messages_.size() > 1 && messages_.front().role != "user") {
        messages_.erase(messages_.begin());
        ++dropped_;
      }
    }
  }

  // Tokens of the messages without the generation prompt when they are a prefix of ids (the
  // point a hybrid model's next turn can restart from), else -1.
  int64_t messages_end(const std::vector<int32_t>& ids) const {
    std::vector<ChatMessage> all;
    if (!system_.empty()) all.push_back({"system", system_});
    all.insert(all.end(), messages_.begin(), messages_.end());
    auto text = session_->chat_template().apply(all, /*add_generation_prompt=*/false);
    if (!text) return -1;
    auto head = session_->tokenize(*text);
    if (!head || head->size() >= ids.size() || !std::equal(head->begin(), head->end(), ids.begin())) return -1;
    return static_cast<int64_t>(head->size());
  }

  Session* session_;
  std::string system_;
  std::vector<ChatMessage> messages_;
  int64_t dropped_ = 0;
};

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
// ---- end tinyslm/session.hpp ----
// ---- end tinyslm.hpp ----
