// The transport seam on real Unix sockets: listener and endpoint (stale and live socket files,
// path limits), streams (deadlines, orderly close, wake descriptor, fd passing) and FrameReader
// (pipelined frames, bodies split across reads).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "node/protocol.h"
#include "test_util.h"
#include "transport/frame_reader.h"
#include "transport/uds.h"

namespace mch {
namespace {

using namespace std::chrono_literals;

// A listener on a fresh path and one connected pair of streams.
struct Pair {
  testing::TempDir dir;
  std::string path = dir.file("t.sock");
  UnixListener listener{path};
  std::unique_ptr<Stream> client, server;
  Pair() {
    int err = 0;
    std::string msg;
    client = UnixEndpoint(path).connect(1000, &err, &msg);
    server = listener.accept(-1, 1000);
  }
};

std::vector<uint8_t> frame(uint16_t op, uint32_t id, const std::string& body) {
  proto::Writer w;
  w.begin(op, id);
  w.str(body);
  const uint8_t* f = w.finish();
  return std::vector<uint8_t>(f, f + w.size());
}

TEST(Transport, StreamsCarryBytesBothWaysAndKnowThePeerPid) {
  Pair p;
  ASSERT_TRUE(p.client && p.server);
  EXPECT_EQ(p.server->peer_pid(), getpid());
  EXPECT_TRUE(p.server->passes_fds());
  ASSERT_EQ(p.client->send_all("hello", 5, Clock::now() + 1s), 0);
  char buf[8] = {};
  ASSERT_EQ(p.server->recv_some(buf, sizeof buf, Clock::now() + 1s, -1, nullptr), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
  EXPECT_TRUE(p.client->quiet());
}

TEST(Transport, ReceiveTimesOutAtItsDeadlineAndSeesAnOrderlyClose) {
  Pair p;
  char buf[4];
  auto t0 = Clock::now();
  EXPECT_EQ(p.server->recv_some(buf, 4, Clock::now() + 50ms, -1, nullptr), -ETIMEDOUT);
  EXPECT_GE(Clock::now() - t0, 45ms);
  p.client.reset();
  EXPECT_EQ(p.server->recv_some(buf, 4, Clock::now() + 1s, -1, nullptr), -ECONNRESET);
}

TEST(Transport, TheWakeDescriptorEndsAWait) {
  Pair p;
  int wake = eventfd(0, EFD_CLOEXEC);
  uint64_t one = 1;
  ASSERT_EQ(write(wake, &one, sizeof one), 8);
  char buf[4];
  EXPECT_EQ(p.server->recv_some(buf, 4, Clock::time_point::max(), wake, nullptr), -ESHUTDOWN);
  EXPECT_EQ(p.server->wait_readable(Clock::time_point::max(), wake), ESHUTDOWN);
  ::close(wake);
}

TEST(Transport, ADescriptorRidesOnAMessage) {
  Pair p;
  int memfd = memfd_create("t", MFD_CLOEXEC);
  ASSERT_EQ(ftruncate(memfd, 12345), 0);
  ASSERT_EQ(p.server->send_with_fd("x", 1, memfd, Clock::now() + 1s), 0);
  ::close(memfd);
  char c;
  int got = -1;
  ASSERT_EQ(p.client->recv_some(&c, 1, Clock::now() + 1s, -1, &got), 1);
  ASSERT_GE(got, 0);
  struct stat st;
  ASSERT_EQ(fstat(got, &st), 0);
  EXPECT_EQ(st.st_size, 12345);
  ::close(got);
}

TEST(Transport, FrameReaderSplitsPipelinedFramesAndWaitsForSplitBodies) {
  Pair p;
  std::vector<uint8_t> a = frame(proto::kExists, 1, "first"), b = frame(proto::kPing, 2, std::string(5000, 'b'));
  std::vector<uint8_t> both(a);
  both.insert(both.end(), b.begin(), b.begin() + 100);  // b arrives in two parts
  ASSERT_EQ(p.client->send_all(both.data(), both.size(), Clock::now() + 1s), 0);
  FrameReader rx(64);  // smaller than a frame: the buffer must grow
  proto::Header h;
  ASSERT_EQ(rx.read_header(*p.server, &h, false, Clock::now() + 1s, 1000, -1), 0);
  ASSERT_EQ(rx.read_body(*p.server, h, Clock::now() + 1s, -1), 0);
  EXPECT_EQ(h.request_id, 1u);
  EXPECT_EQ(rx.body(h).str(), "first");
  rx.consume(h);
  ASSERT_EQ(rx.read_header(*p.server, &h, false, Clock::now() + 1s, 1000, -1), 0);
  EXPECT_EQ(h.request_id, 2u);
  EXPECT_EQ(rx.read_body(*p.server, h, Clock::now() + 50ms, -1), ETIMEDOUT) << "the rest is not there yet";
  ASSERT_EQ(p.client->send_all(b.data() + 100, b.size() - 100, Clock::now() + 1s), 0);
  ASSERT_EQ(rx.read_body(*p.server, h, Clock::now() + 1s, -1), 0);
  EXPECT_EQ(rx.body(h).str(), std::string(5000, 'b'));
  rx.consume(h);
  EXPECT_EQ(rx.buffered(), 0u);
}

TEST(Transport, ALiveSocketIsRefusedAndAStaleOneReplaced) {
  testing::TempDir dir;
  std::string path = dir.file("n.sock");
  auto first = std::make_unique<UnixListener>(path);
  testing::expect_engine_error([&] { UnixListener second(path); }, EngineError::kInUse, "already serving");
  // A socket file nobody listens on (its listener died without cleaning up) is replaced: a
  // hard link keeps the file of a closed listener, as a killed node would leave it.
  ASSERT_EQ(link(path.c_str(), (path + ".keep").c_str()), 0);
  first.reset();
  ASSERT_EQ(rename((path + ".keep").c_str(), path.c_str()), 0);
  UnixListener again(path);
  int err = 0;
  std::string msg;
  EXPECT_NE(UnixEndpoint(path).connect(1000, &err, &msg), nullptr) << msg;
}

TEST(Transport, PathsAreCheckedBeforeUse) {
  EXPECT_THROW(UnixEndpoint(""), EngineError);
  testing::expect_engine_error([] { UnixEndpoint e("/tmp/" + std::string(200, 'p')); }, EngineError::kInvalid,
                               "limited to");
  testing::TempDir dir;
  std::string regular = dir.file("file");
  ::close(::open(regular.c_str(), O_CREAT | O_WRONLY, 0644));
  EXPECT_THROW(UnixListener l(regular), EngineError);
  int err = 0;
  std::string msg;
  EXPECT_EQ(UnixEndpoint(dir.file("nobody.sock")).connect(100, &err, &msg), nullptr);
  EXPECT_EQ(err, ENOENT);
  EXPECT_NE(msg.find("is the node running"), std::string::npos) << msg;
}

}  // namespace
}  // namespace mch
