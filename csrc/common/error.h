// EngineError: the one exception type the data plane throws when a component cannot be opened
// or used (bad configuration, file in use, foreign data format, I/O failure). `kind` tells the
// Python layer which typed exception to raise; the message tells the user what to change.
#pragma once
#include <stdexcept>
#include <string>

namespace mch {

class EngineError : public std::runtime_error {
 public:
  enum Kind { kInvalid, kInUse, kFormat, kIo };
  EngineError(Kind kind, const std::string& msg) : std::runtime_error(msg), kind(kind) {}
  Kind kind;
};

}  // namespace mch
