// NoteLog: lines worth logging once (fallbacks, recoveries, lost nodes), queued by C++ and
// taken by Python, which logs them (the data plane never calls into Python). Holds at most
// `cap` lines; later ones are dropped until the log is taken. Thread-safe (one mutex).
#pragma once
#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

namespace mch {

class NoteLog {
 public:
  explicit NoteLog(size_t cap = 1024) : cap_(cap) {}
  void add(std::string line) {
    std::lock_guard<std::mutex> lk(mu_);
    if (lines_.size() < cap_) lines_.push_back(std::move(line));
  }
  std::vector<std::string> take() {
    std::lock_guard<std::mutex> lk(mu_);
    std::vector<std::string> out;
    out.swap(lines_);
    return out;
  }

 private:
  const size_t cap_;
  std::mutex mu_;  // guards lines_
  std::vector<std::string> lines_;
};

}  // namespace mch
