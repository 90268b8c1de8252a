// metrics.jsonl: one JSON event per line, appended by the trainer, read live by the TUI.
// Fields may be added freely; never renamed (the TUI and daemon read them).
#pragma once
#include <string>

#include <nlohmann/json.hpp>

namespace graft {

struct Metrics {
  int fd = -1;
  std::string path;
  void open(const std::string& path);  // append; creates the file
  void event(nlohmann::json j);        // adds "time" (unix seconds); one write() per line
  void sync();
  void close();
};

}  // namespace graft
