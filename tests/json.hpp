// A small JSON reader for the tests (golden files of ../shared/golden). Not part of the library.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tinyslm_test {

class Json {
 public:
  enum class Kind { null, boolean, number, string, array, object };

  Json() = default;

  // Parses a whole document; throws std::runtime_error with the byte offset on bad input.
  static Json parse(std::string_view text) {
    Parser p{text, 0};
    Json j = p.value();
    p.skip_ws();
    if (p.pos != text.size()) p.fail("trailing characters");
    return j;
  }

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::null; }
  bool is_array() const { return kind_ == Kind::array; }
  bool is_object() const { return kind_ == Kind::object; }
  bool is_string() const { return kind_ == Kind::string; }
  bool is_number() const { return kind_ == Kind::number; }

  bool as_bool() const { return expect(Kind::boolean).bool_; }
  double as_number() const { return expect(Kind::number).num_; }
  int64_t as_int() const { return static_cast<int64_t>(expect(Kind::number).num_); }
  const std::string& as_string() const { return expect(Kind::string).str_; }
  const std::vector<Json>& items() const { return expect(Kind::array).arr_; }
  const std::map<std::string, Json>& fields() const { return expect(Kind::object).obj_; }

  size_t size() const {
    if (kind_ == Kind::array) return arr_.size();
    if (kind_ == Kind::object) return obj_.size();
    return 0;
  }
  bool contains(const std::string& key) const {
    return kind_ == Kind::object && obj_.count(key) != 0;
  }
  const Json& operator[](const std::string& key) const {
    auto it = expect(Kind::object).obj_.find(key);
    if (it == obj_.end()) throw std::runtime_error("json: missing key '" + key + "'");
    return it->second;
  }
  const Json& operator[](const char* key) const { return (*this)[std::string(key)]; }
  const Json& operator[](int i) const { return (*this)[static_cast<size_t>(i)]; }
  const Json& operator[](size_t i) const {
    const auto& a = expect(Kind::array).arr_;
    if (i >= a.size()) throw std::runtime_error("json: index out of range");
    return a[i];
  }

  // Convenience: an array of numbers as ints.
  std::vector<int32_t> int_list() const {
    std::vector<int32_t> out;
    for (const auto& v : items()) out.push_back(static_cast<int32_t>(v.as_int()));
    return out;
  }

 private:
  const Json& expect(Kind k) const {
    if (kind_ != k) throw std::runtime_error("json: value has another kind");
    return *this;
  }

  struct Parser {
    std::string_view s;
    size_t pos;

    [[noreturn]] void fail(const char* what) const {
      throw std::runtime_error(std::string("json: ") + what + " at byte " + std::to_string(pos));
    }
    void skip_ws() {
      while (pos < s.size() && (s[pos] == ' ' || s[pos] == '\n' || s[pos] == '\r' || s[pos] == '\t'))
        ++pos;
    }
    bool eat(char c) {
      skip_ws();
      if (pos < s.size() && s[pos] == c) {
        ++pos;
        return true;
      }
      return false;
    }
    Json value() {
      skip_ws();
      if (pos >= s.size()) fail("unexpected end");
      Json j;
      char c = s[pos];
      if (c == '{') {
        ++pos;
        j.kind_ = Kind::object;
        if (eat('}')) return j;
        do {
          skip_ws();
          std::string key = string();
          if (!eat(':')) fail("expected ':'");
          j.obj_[key] = value();
        } while (eat(','));
        if (!eat('}')) fail("expected '}'");
      } else if (c == '[') {
        ++pos;
        j.kind_ = Kind::array;
        if (eat(']')) return j;
        do {
          j.arr_.push_back(value());
        } while (eat(','));
        if (!eat(']')) fail("expected ']'");
      } else if (c == '"') {
        j.kind_ = Kind::string;
        j.str_ = string();
      } else if (s.substr(pos, 4) == "true") {
        pos += 4;
        j.kind_ = Kind::boolean;
        j.bool_ = true;
      } else if (s.substr(pos, 5) == "false") {
        pos += 5;
        j.kind_ = Kind::boolean;
      } else if (s.substr(pos, 4) == "null") {
        pos += 4;
      } else if (s.substr(pos, 3) == "NaN") {
        pos += 3;
        j.kind_ = Kind::number;
        j.num_ = NAN;
      } else if (s.substr(pos, 8) == "Infinity") {
        pos += 8;
        j.kind_ = Kind::number;
        j.num_ = INFINITY;
      } else if (s.substr(pos, 9) == "-Infinity") {
        pos += 9;
        j.kind_ = Kind::number;
        j.num_ = -INFINITY;
      } else {
        size_t start = pos;
        while (pos < s.size() && (std::isdigit(static_cast<unsigned char>(s[pos])) || s[pos] == '-' ||
                                  s[pos] == '+' || s[pos] == '.' || s[pos] == 'e' || s[pos] == 'E'))
          ++pos;
        if (start == pos) fail("unexpected character");
        j.kind_ = Kind::number;
        j.num_ = std::strtod(std::string(s.substr(start, pos - start)).c_str(), nullptr);
      }
      return j;
    }
    static void put_utf8(std::string& out, uint32_t cp) {
      if (cp < 0x80) {
        out += static_cast<char>(cp);
      } else if (cp < 0x800) {
        out += static_cast<char>(0xc0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3f));
      } else if (cp < 0x10000) {
        out += static_cast<char>(0xe0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        out += static_cast<char>(0x80 | (cp & 0x3f));
      } else {
        out += static_cast<char>(0xf0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        out += static_cast<char>(0x80 | (cp & 0x3f));
      }
    }
    uint32_t hex4() {
      if (pos + 4 > s.size()) fail("short \\u escape");
      uint32_t v = 0;
      for (int i = 0; i < 4; ++i) {
        char c = s[pos++];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else fail("bad \\u escape");
      }
      return v;
    }
    std::string string() {
      if (pos >= s.size() || s[pos] != '"') fail("expected string");
      ++pos;
      std::string out;
      while (true) {
        if (pos >= s.size()) fail("unterminated string");
        char c = s[pos++];
        if (c == '"') break;
        if (c != '\\') {
          out += c;
          continue;
        }
        if (pos >= s.size()) fail("bad escape");
        char e = s[pos++];
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            uint32_t cp = hex4();
            if (cp >= 0xd800 && cp < 0xdc00 && pos + 6 <= s.size() && s[pos] == '\\' &&
                s[pos + 1] == 'u') {
              size_t save = pos;
              pos += 2;
              uint32_t lo = hex4();
              if (lo >= 0xdc00 && lo < 0xe000)
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
              else
                pos = save;  // lone high surrogate: keep as is (encoded below)
            }
            put_utf8(out, cp);
            break;
          }
          default: fail("bad escape");
        }
      }
      return out;
    }
  };

  Kind kind_ = Kind::null;
  bool bool_ = false;
  double num_ = 0;
  std::string str_;
  std::vector<Json> arr_;
  std::map<std::string, Json> obj_;
};

// Decodes a hex string ("48656c6c6f") to bytes.
inline std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

}  // namespace tinyslm_test
