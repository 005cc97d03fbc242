// Helpers shared by the C++ unit tests: a temporary directory on the test's file system, a seeded
// random source, key/value builders and the bound every fuzz loop runs under.
#pragma once
#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/error.h"
#include "common/status.h"

namespace mch::testing {

// Runs f(), which must throw an EngineError of `kind` whose message contains `text`.
template <class F>
void expect_engine_error(F&& f, EngineError::Kind kind, const std::string& text = "") {
  try {
    f();
    ADD_FAILURE() << "no EngineError thrown";
  } catch (const EngineError& e) {
    EXPECT_EQ(e.kind, kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

// The per-key result codes as the integers batch calls store, under their C++ names, so a test
// compares results with kNotFound rather than status_code(Status::kNotFound).
namespace codes {
#define MCH_TEST_CODE(id, name, value, mooncake, doc) constexpr int32_t id = value;
MCH_STATUS_CODES(MCH_TEST_CODE)
#undef MCH_TEST_CODE
}  // namespace codes

// A fresh directory under $TMPDIR (or /tmp), removed with its files at the end of the test.
// /tmp must be a disk file system for the O_DIRECT tests (it is on the CI machine).
class TempDir {
 public:
  TempDir() {
    const char* base = getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/mch-cpp-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (mkdtemp(buf.data()) == nullptr) ADD_FAILURE() << "mkdtemp " << tmpl << " failed";
    path_ = buf.data();
  }
  ~TempDir() {
    if (DIR* d = opendir(path_.c_str())) {
      while (dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") unlink((path_ + "/" + n).c_str());
      }
      closedir(d);
    }
    rmdir(path_.c_str());
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Seed for randomised tests: MCH_TEST_SEED if set, else a fixed value (runs are deterministic).
inline uint64_t test_seed() {
  const char* s = getenv("MCH_TEST_SEED");
  return s && *s ? strtoull(s, nullptr, 0) : 0x5eed2024ull;
}

// Bound of a fuzz loop: at most `iterations` rounds and MCH_FUZZ_SECONDS (default `seconds`)
// of wall time, whichever ends first, but never fewer than `at_least` rounds (so a slow
// sanitizer build on a busy machine still covers a known minimum).
class FuzzBudget {
 public:
  FuzzBudget(uint64_t iterations, double seconds, uint64_t at_least = 200)
      : left_(iterations), at_least_(std::min(at_least, iterations)) {
    const char* s = getenv("MCH_FUZZ_SECONDS");
    if (s && *s) seconds = atof(s);
    end_ = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                  std::chrono::duration<double>(seconds));
  }
  bool next() {
    if (left_ == 0 || (done_ >= at_least_ && std::chrono::steady_clock::now() >= end_)) return false;
    left_--;
    done_++;
    return true;
  }
  uint64_t done() const { return done_; }

 private:
  uint64_t left_;
  uint64_t at_least_;
  uint64_t done_ = 0;
  std::chrono::steady_clock::time_point end_;
};

inline std::string key_of(uint64_t i) {
  char buf[32];
  snprintf(buf, sizeof buf, "key-%016llx", static_cast<unsigned long long>(i));
  return buf;
}

// Deterministic bytes for (key, length): every value can be checked without keeping a copy.
inline std::vector<uint8_t> pattern(const std::string& key, size_t n) {
  std::vector<uint8_t> v(n);
  uint64_t x = std::hash<std::string>{}(key) | 1;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v[i] = static_cast<uint8_t>(x);
  }
  return v;
}

}  // namespace mch::testing
