// A minimal test harness: TEST(name) registers a case, CHECK* throw on failure,
// test_main.cpp runs every case (or those whose name contains argv[1]) and prints
// "N passed, N failed".
#pragma once
#include <cmath>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/common.h"  // graft::Error, which CHECK_THROWS expects

namespace graft_test {

struct Case { const char* name; std::function<void()> fn; };
std::vector<Case>& registry();
struct Reg { Reg(const char* n, std::function<void()> f) { registry().push_back({n, std::move(f)}); } };
struct Failure : std::runtime_error { using std::runtime_error::runtime_error; };

[[noreturn]] inline void fail_at(const char* file, int line, const std::string& msg) {
  std::ostringstream s;
  s << file << ":" << line << ": " << msg;
  throw Failure(s.str());
}

}  // namespace graft_test

#define TEST(name)                                                      \
  static void name();                                                   \
  static graft_test::Reg reg_##name(#name, name);                       \
  static void name()

#define CHECK(cond)                                                                   \
  do {                                                                                \
    if (!(cond)) graft_test::fail_at(__FILE__, __LINE__, "CHECK(" #cond ") failed");  \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                             \
  do {                                                                                    \
    double va_ = (a), vb_ = (b), vt_ = (tol);                                             \
    if (!(std::fabs(va_ - vb_) <= vt_)) {                                                 \
      std::ostringstream s_;                                                              \
      s_ << #a " = " << va_ << " vs " #b " = " << vb_ << " (tolerance " << vt_ << ")";    \
      graft_test::fail_at(__FILE__, __LINE__, s_.str());                                  \
    }                                                                                     \
  } while (0)

// Expects `stmt` to throw graft::Error whose message contains `needle`.
#define CHECK_THROWS(stmt, needle)                                                              \
  do {                                                                                          \
    bool threw_ = false;                                                                        \
    try { stmt; } catch (const graft::Error& e_) {                                              \
      threw_ = true;                                                                            \
      if (std::string(e_.what()).find(needle) == std::string::npos)                             \
        graft_test::fail_at(__FILE__, __LINE__, std::string("message '") + e_.what() +          \
                                                    "' lacks '" + (needle) + "'");              \
    }                                                                                           \
    if (!threw_) graft_test::fail_at(__FILE__, __LINE__, "expected an error: " #stmt);          \
  } while (0)
