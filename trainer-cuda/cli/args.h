// The command line's small parsers: numbers and counts that name the command and option when wrong.
#pragma once
#include <string>
#include <type_traits>
#include <vector>

#include "core/common.h"
#include "core/device.h"
#include "core/dtype.h"

namespace graft {

// One graft-trainer command: its name, its usage (the arguments and one line of what it does) and
// what runs it. Commands live in cli/*_commands.cpp; main.cpp lists them.
struct Command {
  const char* name;
  const char* usage;  // "<job-dir>  train (or resume) the job in <job-dir>"
  int (*run)(const std::vector<std::string>& args);  // args[0] is the command's name
};
std::vector<Command> model_commands();
std::vector<Command> encoder_commands();
std::vector<Command> demo_commands();
std::vector<Command> optim_commands();
std::vector<Command> quant_commands();
std::vector<Command> plan_commands();
std::vector<Command> all_commands();  // every list above, in that order

// Fails with "<cmd>: missing arguments" and the command's usage when fewer than n arguments were given.
void need_args(const std::vector<std::string>& a, size_t n, const char* cmd);

// v as a number of type T, all of it; otherwise an error that names `what` (command and option) and v.
template <class T>
T parse_number(const std::string& v, const std::string& what) {
  size_t used = 0;
  T out{};
  try {
    if constexpr (std::is_same_v<T, float>) out = std::stof(v, &used);
    else if constexpr (std::is_same_v<T, int>) out = std::stoi(v, &used);
    else out = (T)std::stoull(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const bool negative = !std::is_same_v<T, float> && !std::is_same_v<T, int> && v.find('-') != std::string::npos;
  if (used == 0 || used != v.size() || negative) fail(what + " '" + v + "': expected a number");
  return out;
}

// The value of option a[i - 1] of `cmd`, as a number.
template <class T>
T number_arg(const std::vector<std::string>& a, size_t i, const char* cmd) {
  return parse_number<T>(a[i], std::string(cmd) + ": " + a[i - 1]);
}

// --device D (default cpu) from a[first] on; the other arguments go to `rest`.
Device device_option(const std::vector<std::string>& a, size_t first, const char* cmd, std::vector<std::string>* rest);

// --dtype f32|bf16|f16|fp8.
DType dtype_option(const std::string& v, const char* cmd);

// The value of option a[i - 1] of `cmd`, a whole number of at least `min` (steps, pictures, a batch).
int count_arg(const std::vector<std::string>& a, size_t i, const char* cmd, int min);

// The process's peak resident memory so far (VmHWM), in MiB.
double peak_rss_mib();

}  // namespace graft
