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
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core.hpp"
#include "gguf.hpp"
#include "unicode_tables.hpp"

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
