// Helpers shared by the tests: where ../shared is, and small file utilities.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace tinyslm_test {

// The shared models and golden outputs: $TINYSLM_SHARED, else ../shared beside the repo.
inline std::string shared_dir() {
  if (const char* e = std::getenv("TINYSLM_SHARED")) return e;
  return TINYSLM_TEST_SHARED_DIR;
}

inline bool file_exists(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return f.good();
}

// Path of a file under shared/, or "" (and a notice) when it is missing, so tests skip clearly.
inline std::string shared_file(const std::string& rel) {
  std::string p = shared_dir() + "/" + rel;
  if (!file_exists(p)) {
    std::fprintf(stderr, "SKIPPED: %s not found (set TINYSLM_SHARED)\n", p.c_str());
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

}  // namespace tinyslm_test
