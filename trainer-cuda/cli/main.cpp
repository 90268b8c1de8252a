// graft-trainer: the command line of the trainer. Every failure prints one line naming the file or
// field and what to do, and exits non-zero; `graft-trainer <command> --help` prints the command's
// usage and exits 0.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "cli/args.h"
#include "core/common.h"
#include "train/train.h"

using namespace graft;

namespace graft {

std::vector<Command> all_commands() {
  std::vector<Command> all;
  for (const std::vector<Command>& list : {model_commands(), optim_commands(), quant_commands(), plan_commands(), encoder_commands(), demo_commands()})
    all.insert(all.end(), list.begin(), list.end());
  return all;
}

void need_args(const std::vector<std::string>& a, size_t n, const char* cmd) {
  if (a.size() >= n) return;
  for (const Command& c : all_commands())
    if (a[0] == c.name) fail(std::string(cmd) + ": missing arguments (usage: graft-trainer " + c.name + " " + c.usage + ")");
  fail(std::string(cmd) + ": missing arguments");
}

int count_arg(const std::vector<std::string>& a, size_t i, const char* cmd, int min) {
  const int v = number_arg<int>(a, i, cmd);
  if (v < min) fail(std::string(cmd) + ": " + a[i - 1] + " " + a[i] + ": must be at least " + std::to_string(min));
  return v;
}

Device device_option(const std::vector<std::string>& a, size_t first, const char* cmd, std::vector<std::string>* rest) {
  std::string name = "cpu";
  for (size_t i = first; i < a.size(); ++i) {
    if (a[i] == "--device" && i + 1 < a.size()) name = a[++i];
    else rest->push_back(a[i]);
  }
  return parse_device(name, std::string(cmd) + ": --device");
}

DType dtype_option(const std::string& v, const char* cmd) {
  if (v == "f32" || v == "fp32") return DType::F32;
  if (v == "bf16") return DType::BF16;
  if (v == "f16" || v == "fp16") return DType::F16;
  if (v == "fp8" || v == "f8_e4m3") return DType::F8_E4M3;
  fail(std::string(cmd) + ": --dtype " + v + ": one of f32, bf16, f16, fp8");
}

double peak_rss_mib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  return 0.0;
}

}  // namespace graft

namespace {

std::string usage() {
  std::string u = "usage: graft-trainer <command> ...   (graft-trainer <command> --help: that command's usage)\n";
  for (const Command& c : all_commands()) u += std::string("  ") + c.name + " " + c.usage + "\n";
  return u + "  --version\n";
}

// Levenshtein distance, for "did you mean".
size_t distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t prev = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t cur = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] != b[j - 1])});
      prev = cur;
    }
  }
  return row[b.size()];
}

int train_command(const std::vector<std::string>& a) {
  need_args(a, 2, "train");
  if (a.size() > 2) fail("train: unknown argument '" + a[2] + "'");
  return train_run(a[1]);
}

}  // namespace

int main(int argc, char** argv) {
  // Idle OpenMP threads spin by default; on a box where anything else runs (the TUI, a second job,
  // a compiler) that spinning made steps 5-6x slower here. libgomp reads the policy when it loads,
  // so set it and start again once.
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);  // only returns on failure: then run as we are
  }
  std::vector<std::string> a(argv + 1, argv + argc);
  if (a.empty() || a[0] == "-h" || a[0] == "--help" || a[0] == "help") {
    std::fputs(usage().c_str(), a.empty() ? stderr : stdout);
    return a.empty() ? 2 : 0;
  }
  if (a[0] == "--version") {
    std::printf("graft-trainer %s\n", GRAFT_VERSION);
    return 0;
  }
  for (const Command& c : all_commands()) {
    if (a[0] != c.name) continue;
    if (std::find(a.begin() + 1, a.end(), "--help") != a.end() || std::find(a.begin() + 1, a.end(), "-h") != a.end()) {
      std::printf("usage: graft-trainer %s %s\n", c.name, c.usage);
      return 0;
    }
    try {
      return c.run ? c.run(a) : train_command(a);
    } catch (const Error& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: internal: %s\n", e.what());
      return 1;
    }
  }
  const std::vector<Command> commands = all_commands();
  const Command* nearest = nullptr;
  for (const Command& c : commands)
    if (!nearest || distance(a[0], c.name) < distance(a[0], nearest->name)) nearest = &c;
  std::fprintf(stderr, "graft-trainer: unknown command '%s'%s\n%s", a[0].c_str(),
               nearest && distance(a[0], nearest->name) <= 3 ? (" (did you mean '" + std::string(nearest->name) + "'?)").c_str() : "",
               usage().c_str());
  return 2;
}
