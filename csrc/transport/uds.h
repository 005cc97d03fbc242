// Unix domain stream sockets: the same-host transport. Streams pass descriptors (the node hands
// each client its arena memfd) and know the peer's pid.
//
// UnixListener binds and listens on a path. A stale socket file (nothing answers on it) is
// replaced; a live one is refused (EngineError kInUse: "a node is already serving <path>"). The
// socket file gets exactly the mode asked for, whatever the umask (set on the socket before
// bind(), so the file never exists with a wider mode, and again on the file after).
// close() removes the file if it is still the one this listener created.
// UnixEndpoint connects to a path. Both check the path fits sun_path (EngineError kInvalid).
#pragma once
#include <sys/types.h>

#include <memory>
#include <string>

#include "transport/stream.h"

namespace mch {

// Throws EngineError(kInvalid) when `path` is empty or too long for a Unix socket address.
void check_unix_socket_path(const std::string& path);

class UnixListener final : public Listener {
 public:
  // Binds and listens; throws EngineError. mode: the socket file's permission bits.
  explicit UnixListener(std::string path, uint32_t mode = 0600);
  ~UnixListener() override { close(); }
  std::unique_ptr<Stream> accept(int wake_fd, int timeout_ms) override;
  void close() override;
  std::string address() const override { return path_; }

 private:
  void replace_stale_socket();
  const std::string path_;
  int fd_ = -1;
  dev_t dev_ = 0;  // identity of the socket file we created
  ino_t ino_ = 0;
};

class UnixEndpoint final : public Endpoint {
 public:
  explicit UnixEndpoint(std::string path);  // throws EngineError(kInvalid) for a bad path
  std::unique_ptr<Stream> connect(int timeout_ms, int* err, std::string* msg) const override;
  std::string address() const override { return path_; }

 private:
  const std::string path_;
};

}  // namespace mch
