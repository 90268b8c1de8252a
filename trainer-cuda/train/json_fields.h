// Typed access to dotted fields of a JSON document (job.json, the optimizer's parameters) with
// one-line errors that name the file and the field.
#pragma once
#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/common.h"

namespace graft {

struct JsonFields {
  using json = nlohmann::json;
  const json& root;
  std::string file;

  // path: "train.lr", "datasets[0].items[3].width" (or "datasets.0.items.3.width").
  const json* find(const std::string& path_in) const {
    std::string path = path_in;
    for (char& ch : path)
      if (ch == '[') ch = '.';
    path.erase(std::remove(path.begin(), path.end(), ']'), path.end());
    const json* j = &root;
    std::stringstream ss(path);
    std::string key;
    while (std::getline(ss, key, '.')) {
      if (j->is_array() && !key.empty() && key.find_first_not_of("0123456789") == std::string::npos) {
        size_t i = std::stoul(key);
        if (i >= j->size()) return nullptr;
        j = &(*j)[i];
        continue;
      }
      if (!j->is_object()) return nullptr;
      auto it = j->find(key);
      if (it == j->end() || it->is_null()) return nullptr;
      j = &*it;
    }
    return j;
  }
  [[noreturn]] void bad(const std::string& path, const std::string& want, const json& got) const {
    fail(file + ": " + path + " must be " + want + ", got " + got.dump());
  }
  double number(const std::string& path, double def, double lo, double hi, bool required = false) const {
    const json* j = find(path);
    if (!j) {
      if (required) fail(file + ": " + path + " is missing");
      return def;
    }
    std::ostringstream want;
    want << "a number in [" << lo << ", " << hi << "]";
    if (!j->is_number()) bad(path, want.str(), *j);
    double v = j->get<double>();
    if (!(v >= lo && v <= hi)) bad(path, want.str(), *j);
    return v;
  }
  int integer(const std::string& path, int def, int lo, int hi, bool required = false) const {
    const json* j = find(path);
    if (!j) {
      if (required) fail(file + ": " + path + " is missing");
      return def;
    }
    std::string want = "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
    if (!j->is_number_integer()) bad(path, want, *j);
    long long v = j->get<long long>();
    if (v < lo || v > hi) bad(path, want, *j);
    return (int)v;
  }
  bool boolean(const std::string& path, bool def) const {
    const json* j = find(path);
    if (!j) return def;
    if (!j->is_boolean()) bad(path, "true or false", *j);
    return j->get<bool>();
  }
  std::string str(const std::string& path, const std::string& def, const std::vector<std::string>& allowed = {},
                  bool required = false) const {
    const json* j = find(path);
    if (!j) {
      if (required) fail(file + ": " + path + " is missing");
      return def;
    }
    if (!j->is_string()) bad(path, "a string", *j);
    std::string v = j->get<std::string>();
    if (!allowed.empty()) {
      for (const auto& a : allowed)
        if (a == v) return v;
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      bad(path, "one of " + list, *j);
    }
    return v;
  }
};

}  // namespace graft
