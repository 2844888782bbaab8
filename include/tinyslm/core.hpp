// tinyslm core: configuration macros, Error / Expected, checked arithmetic, aligned buffers,
// model sources (memory-mapped file, plain read, caller-owned memory), half-precision
// conversions and CPU feature detection. Every other layer includes this one.
#pragma once

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
