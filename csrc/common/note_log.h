// NoteLog: lines worth logging once (fallbacks, recoveries, lost nodes), queued by C++ and
// taken by Python, which logs them at the level each note carries (the data plane never calls
// into Python, and Python never guesses a level from the text). Holds at most `cap` notes; later
// ones are dropped until the log is taken. Thread-safe (one mutex).
#pragma once
#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

namespace mch {

// Python logging levels, so the bindings hand them over as they are.
enum class NoteLevel : int { kInfo = 20, kWarning = 30 };

struct Note {
  NoteLevel level;
  std::string line;
};

class NoteLog {
 public:
  explicit NoteLog(size_t cap = 1024) : cap_(cap) {}
  void add(std::string line, NoteLevel level = NoteLevel::kInfo) {
    std::lock_guard<std::mutex> lk(mu_);
    if (notes_.size() < cap_) notes_.push_back(Note{level, std::move(line)});
  }
  void warn(std::string line) { add(std::move(line), NoteLevel::kWarning); }
  std::vector<Note> take() {
    std::lock_guard<std::mutex> lk(mu_);
    std::vector<Note> out;
    out.swap(notes_);
    return out;
  }

 private:
  const size_t cap_;
  std::mutex mu_;  // guards notes_
  std::vector<Note> notes_;
};

}  // namespace mch
