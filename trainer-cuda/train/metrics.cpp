#include "train/metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "core/common.h"

namespace graft {

void Metrics::open(const std::string& p) {
  path = p;
  fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) fail(p + ": cannot open for writing: " + std::strerror(errno));
}

void Metrics::event(nlohmann::json j) {
  if (fd < 0) return;
  double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  j["time"] = std::round(now * 1000.0) / 1000.0;
  std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  // O_APPEND + one write per line: a reader never sees half a line interleaved with another.
  if (::write(fd, line.data(), line.size()) != (ssize_t)line.size())
    fail(path + ": cannot append an event: " + std::strerror(errno) + " (disk full?)");
}

void Metrics::sync() {
  if (fd >= 0) ::fsync(fd);
}

void Metrics::close() {
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  fd = -1;
}

}  // namespace graft
