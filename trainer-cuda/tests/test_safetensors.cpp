// Safetensors: dtype conversions bit for bit, write/read round trips, the on-disk layout, one real
// malformed file per error the reader reports, and atomic writes that never leave a half-written file.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <sys/resource.h>
#include <sys/stat.h>

#include "core/common.h"
#include "core/safetensors.h"
#include "test.h"

using namespace graft;

// Expects `stmt` to throw a one-line graft::Error that names both `path` and `problem`.
#define CHECK_ERROR_NAMES(stmt, path, problem)                                                        \
  do {                                                                                                \
    std::string msg_ = "(no error thrown)";                                                           \
    try { stmt; } catch (const graft::Error& e_) { msg_ = e_.what(); }                               \
    std::string path_ = (path), problem_ = (problem);                                                 \
    if (msg_.find(path_) == std::string::npos || msg_.find(problem_) == std::string::npos ||          \
        msg_.find('\n') != std::string::npos)                                                         \
      graft_test::fail_at(__FILE__, __LINE__, "expected a one-line error naming '" + path_ + "' and '" + \
                                                  problem_ + "', got: " + msg_);                      \
  } while (0)

namespace {

// A fresh folder under /tmp, removed with everything in it when the test ends.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/graft_st_XXXXXX";
    if (!mkdtemp(tmpl)) throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return path + "/" + name; }
};

void write_bytes(const std::string& path, const std::string& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot create " + path);
  bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  ok = std::fclose(f) == 0 && ok;
  if (!ok) throw std::runtime_error("cannot write " + path);
}

std::string read_bytes(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("cannot open " + path);
  std::string s;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  std::fclose(f);
  return s;
}

bool exists(const std::string& path) {
  struct stat sb;
  return stat(path.c_str(), &sb) == 0;
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = (char)(n >> (8 * i));
  return s;
}

// A safetensors file made by hand: the given header text followed by `data_size` zero bytes.
std::string st_bytes(const std::string& header, size_t data_size) {
  return le64(header.size()) + header + std::string(data_size, '\0');
}

// Writes a hand-made file into `dir` and returns its path.
std::string make_file(const TempDir& dir, const std::string& name, const std::string& header, size_t data_size) {
  std::string p = dir.file(name);
  write_bytes(p, st_bytes(header, data_size));
  return p;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

// For every pair of adjacent positive finite codes (c, c+1) of a narrow format: c encodes to itself, the
// exact midpoint goes to the code with the even mantissa, and the floats just either side of the midpoint
// go to the nearer code; negating the input sets only the sign bit.
template <typename Code>
void check_rne_at_every_midpoint(const char* fmt, uint32_t max_code, uint32_t sign_bit, float (*dec)(Code),
                                 Code (*enc)(float)) {
  for (uint32_t c = 0; c < max_code; ++c) {
    float a = dec((Code)c), b = dec((Code)(c + 1));
    double mid = ((double)a + (double)b) / 2;
    float m = (float)mid;
    uint32_t even = (c & 1) ? c + 1 : c;
    uint32_t got_a = enc(a), got_mid = enc(m), got_neg = enc(-m);
    uint32_t got_below = enc(std::nextafter(m, 0.0f)), got_above = enc(std::nextafter(m, INFINITY));
    if ((double)m != mid || got_a != c || got_mid != even || got_neg != (even | sign_bit) || got_below != c ||
        got_above != c + 1) {
      std::ostringstream s;
      s << fmt << ": code 0x" << std::hex << c << " -> 0x" << got_a << "; midpoint " << std::dec << m
        << " -> 0x" << std::hex << got_mid << " (want 0x" << even << "), negated 0x" << got_neg
        << ", below 0x" << got_below << ", above 0x" << got_above;
      graft_test::fail_at(__FILE__, __LINE__, s.str());
    }
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// dtypes and conversions

TEST(safetensors_dtype_names_and_sizes) {
  struct { DType t; const char* name; size_t size; } all[] = {
      {DType::F64, "F64", 8},         {DType::F32, "F32", 4},         {DType::F16, "F16", 2},
      {DType::BF16, "BF16", 2},       {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1},
      {DType::I64, "I64", 8},         {DType::I32, "I32", 4},         {DType::I16, "I16", 2},
      {DType::I8, "I8", 1},           {DType::U8, "U8", 1},           {DType::BOOL, "BOOL", 1},
  };
  for (auto& d : all) {
    CHECK(std::string(dtype_name(d.t)) == d.name);
    CHECK(dtype_size(d.t) == d.size);
    DType t = DType::U8;
    CHECK(dtype_from_name(d.name, &t) && t == d.t);
  }
  DType t;
  CHECK(!dtype_from_name("F12", &t));
  CHECK(!dtype_from_name("f32", &t));  // names are case-sensitive in the format
}

TEST(safetensors_f16_known_bits) {
  CHECK(f16_to_f32(0x3C00) == 1.0f);
  CHECK(f16_to_f32(0xC000) == -2.0f);
  CHECK(f16_to_f32(0x7BFF) == 65504.0f);          // largest finite
  CHECK(f16_to_f32(0x0400) == std::ldexp(1.0f, -14));  // smallest normal
  CHECK(f16_to_f32(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(f16_to_f32(0x03FF) == std::ldexp(1023.0f, -24));
  CHECK(f16_to_f32(0x3555) == 0.333251953125f);
  CHECK(f16_to_f32(0x7C00) == INFINITY && f16_to_f32(0xFC00) == -INFINITY);
  CHECK(std::isnan(f16_to_f32(0x7E00)) && std::isnan(f16_to_f32(0x7C01)));
  CHECK(same_bits(f16_to_f32(0x8000), -0.0f));

  CHECK(f32_to_f16(1.0f) == 0x3C00);
  CHECK(f32_to_f16(-2.0f) == 0xC000);
  CHECK(f32_to_f16(65504.0f) == 0x7BFF);
  CHECK(f32_to_f16(65519.0f) == 0x7BFF);  // just under the midpoint to 2^16
  CHECK(f32_to_f16(65520.0f) == 0x7C00);  // the midpoint ties to even, which is inf
  CHECK(f32_to_f16(1e6f) == 0x7C00 && f32_to_f16(-1e6f) == 0xFC00);
  CHECK(f32_to_f16(INFINITY) == 0x7C00 && f32_to_f16(-INFINITY) == 0xFC00);
  CHECK((f32_to_f16(NAN) & 0x7FFF) > 0x7C00);
  CHECK(f32_to_f16(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(f32_to_f16(std::ldexp(1.0f, -25)) == 0x0000);  // tie between 0 and 2^-24: even is 0
  CHECK(f32_to_f16(std::ldexp(1.5f, -25)) == 0x0001);
  CHECK(f32_to_f16(std::ldexp(3.0f, -25)) == 0x0002);  // tie between 1 and 2 subnormal units: even is 2
  CHECK(f32_to_f16(1e-9f) == 0x0000);
  CHECK(f32_to_f16(std::ldexp(1.0f, -130)) == 0x0000);  // an fp32 subnormal
  CHECK(f32_to_f16(-0.0f) == 0x8000);
  CHECK(f32_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);      // tie: stays on the even 1.0
  CHECK(f32_to_f16(1.0f + std::ldexp(3.0f, -11)) == 0x3C02);      // tie: goes up to the even code
  CHECK(f32_to_f16(std::ldexp(2047.0f, -25)) == 0x0400);          // subnormal rounding up into the normals
  CHECK(f32_to_f16(0.1f) == 0x2E66);
}

TEST(safetensors_bf16_known_bits) {
  CHECK(bf16_to_f32(0x3F80) == 1.0f);
  CHECK(bf16_to_f32(0xC000) == -2.0f);
  CHECK(bf16_to_f32(0x7F7F) == std::ldexp(255.0f, 120));  // largest finite, about 3.39e38
  CHECK(bf16_to_f32(0x0001) == std::ldexp(1.0f, -133));
  CHECK(bf16_to_f32(0x7F80) == INFINITY && bf16_to_f32(0xFF80) == -INFINITY);
  CHECK(std::isnan(bf16_to_f32(0x7FC0)));

  auto from_bits = [](uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; };
  CHECK(f32_to_bf16(1.0f) == 0x3F80);
  CHECK(f32_to_bf16(from_bits(0x3F808000)) == 0x3F80);  // tie, kept on the even code
  CHECK(f32_to_bf16(from_bits(0x3F818000)) == 0x3F82);  // tie, rounded up to the even code
  CHECK(f32_to_bf16(from_bits(0x3F808001)) == 0x3F81);  // just over the tie
  CHECK(f32_to_bf16(from_bits(0x3F807FFF)) == 0x3F80);  // just under the tie
  CHECK(f32_to_bf16(from_bits(0x7F7FFFFF)) == 0x7F80);  // FLT_MAX is past bf16's largest: rounds to inf
  CHECK(f32_to_bf16(INFINITY) == 0x7F80 && f32_to_bf16(-INFINITY) == 0xFF80);
  CHECK(f32_to_bf16(-0.0f) == 0x8000);
  // NaNs stay NaN, including one whose payload is only in the bits that are cut off.
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(from_bits(0x7F800001)))));
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(from_bits(0xFF800001)))));
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(safetensors_f8e4m3_known_bits) {
  CHECK(f8e4m3_to_f32(0x38) == 1.0f);
  CHECK(f8e4m3_to_f32(0xC0) == -2.0f);
  CHECK(f8e4m3_to_f32(0x7E) == 448.0f && f8e4m3_to_f32(0xFE) == -448.0f);
  CHECK(f8e4m3_to_f32(0x08) == std::ldexp(1.0f, -6));  // smallest normal
  CHECK(f8e4m3_to_f32(0x01) == std::ldexp(1.0f, -9));  // smallest subnormal
  CHECK(f8e4m3_to_f32(0x07) == std::ldexp(7.0f, -9));
  CHECK(f8e4m3_to_f32(0x78) == 256.0f);  // S.1111.000 is a number in the fn variant, not inf
  CHECK(std::isnan(f8e4m3_to_f32(0x7F)) && std::isnan(f8e4m3_to_f32(0xFF)));

  CHECK(f32_to_f8e4m3(1.0f) == 0x38);
  CHECK(f32_to_f8e4m3(448.0f) == 0x7E);
  CHECK(f32_to_f8e4m3(464.0f) == 0x7E);  // midpoint to the would-be 480
  CHECK(f32_to_f8e4m3(1000.0f) == 0x7E && f32_to_f8e4m3(-1000.0f) == 0xFE);  // saturates
  CHECK(f32_to_f8e4m3(1e30f) == 0x7E);
  CHECK(f32_to_f8e4m3(INFINITY) == 0x7E && f32_to_f8e4m3(-INFINITY) == 0xFE);  // no inf: saturates
  CHECK((f32_to_f8e4m3(NAN) & 0x7F) == 0x7F);
  CHECK(f32_to_f8e4m3(std::ldexp(1.0f, -9)) == 0x01);
  CHECK(f32_to_f8e4m3(std::ldexp(1.0f, -10)) == 0x00);  // tie between 0 and 2^-9: even is 0
  CHECK(f32_to_f8e4m3(std::ldexp(3.0f, -10)) == 0x02);  // tie between 1 and 2 units: even is 2
  CHECK(f32_to_f8e4m3(1.0625f) == 0x38);  // tie between 1 and 1.125
  CHECK(f32_to_f8e4m3(1.1875f) == 0x3A);  // tie between 1.125 and 1.25
  CHECK(f32_to_f8e4m3(0.3f) == 0x2A);     // 0.3 -> 0.3125 = 1.25 * 2^-2
  CHECK(f32_to_f8e4m3(-0.0f) == 0x80);
}

TEST(safetensors_f8e5m2_known_bits) {
  CHECK(f8e5m2_to_f32(0x3C) == 1.0f);
  CHECK(f8e5m2_to_f32(0xC0) == -2.0f);
  CHECK(f8e5m2_to_f32(0x7B) == 57344.0f);               // largest finite
  CHECK(f8e5m2_to_f32(0x04) == std::ldexp(1.0f, -14));  // smallest normal
  CHECK(f8e5m2_to_f32(0x01) == std::ldexp(1.0f, -16));  // smallest subnormal
  CHECK(f8e5m2_to_f32(0x7C) == INFINITY && f8e5m2_to_f32(0xFC) == -INFINITY);
  CHECK(std::isnan(f8e5m2_to_f32(0x7D)) && std::isnan(f8e5m2_to_f32(0x7E)) && std::isnan(f8e5m2_to_f32(0xFF)));

  CHECK(f32_to_f8e5m2(1.0f) == 0x3C);
  CHECK(f32_to_f8e5m2(57344.0f) == 0x7B);
  CHECK(f32_to_f8e5m2(61440.0f) == 0x7B);  // the midpoint to 2^16 would be inf in IEEE; we saturate
  CHECK(f32_to_f8e5m2(1e6f) == 0x7B && f32_to_f8e5m2(-1e6f) == 0xFB);
  CHECK(f32_to_f8e5m2(INFINITY) == 0x7C && f32_to_f8e5m2(-INFINITY) == 0xFC);  // real inf stays inf
  CHECK(std::isnan(f8e5m2_to_f32(f32_to_f8e5m2(NAN))));
  CHECK(f32_to_f8e5m2(std::ldexp(1.0f, -16)) == 0x01);
  CHECK(f32_to_f8e5m2(std::ldexp(1.0f, -17)) == 0x00);  // tie: even is 0
  CHECK(f32_to_f8e5m2(1.125f) == 0x3C);                 // tie between 1 and 1.25
  CHECK(f32_to_f8e5m2(1.375f) == 0x3E);                 // tie between 1.25 and 1.5
  CHECK(f32_to_f8e5m2(1.2f) == 0x3D);
  CHECK(f32_to_f8e5m2(-0.0f) == 0x80);
}

TEST(safetensors_every_narrow_code_round_trips) {
  for (uint32_t c = 0; c < 0x10000; ++c) {
    float f16 = f16_to_f32((uint16_t)c), bf16 = bf16_to_f32((uint16_t)c);
    if (std::isnan(f16)) CHECK(std::isnan(f16_to_f32(f32_to_f16(f16))));
    else if (f32_to_f16(f16) != c) graft_test::fail_at(__FILE__, __LINE__, "f16 code " + std::to_string(c));
    if (std::isnan(bf16)) CHECK(std::isnan(bf16_to_f32(f32_to_bf16(bf16))));
    else if (f32_to_bf16(bf16) != c) graft_test::fail_at(__FILE__, __LINE__, "bf16 code " + std::to_string(c));
  }
  for (uint32_t c = 0; c < 0x100; ++c) {
    float a = f8e4m3_to_f32((uint8_t)c), b = f8e5m2_to_f32((uint8_t)c);
    if (std::isnan(a)) CHECK(std::isnan(f8e4m3_to_f32(f32_to_f8e4m3(a))));
    else CHECK(f32_to_f8e4m3(a) == c);
    if (std::isnan(b)) CHECK(std::isnan(f8e5m2_to_f32(f32_to_f8e5m2(b))));
    else CHECK(f32_to_f8e5m2(b) == c);
  }
}

TEST(safetensors_rounding_is_nearest_even_at_every_midpoint) {
  check_rne_at_every_midpoint<uint16_t>("f16", 0x7BFF, 0x8000, f16_to_f32, f32_to_f16);
  check_rne_at_every_midpoint<uint16_t>("bf16", 0x7F7F, 0x8000, bf16_to_f32, f32_to_bf16);
  check_rne_at_every_midpoint<uint8_t>("e4m3", 0x7E, 0x80, f8e4m3_to_f32, f32_to_f8e4m3);
  check_rne_at_every_midpoint<uint8_t>("e5m2", 0x7B, 0x80, f8e5m2_to_f32, f32_to_f8e5m2);
}

TEST(safetensors_f16_bf16_random_error_bounds) {
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> mant(1.0f, 1.99f);
  std::uniform_int_distribution<int> coin(0, 1);
  for (int i = 0; i < 100000; ++i) {
    float sign = coin(rng) ? -1.0f : 1.0f;
    // fp16 normals: half an ulp is at most 2^-11 of the value; subnormals: half a unit, 2^-25.
    int e16 = std::uniform_int_distribution<int>(-24, 15)(rng);
    float x = sign * std::ldexp(mant(rng), e16);
    double err = std::fabs((double)f16_to_f32(f32_to_f16(x)) - x);
    double bound = e16 >= -14 ? std::ldexp(std::fabs((double)x), -11) : std::ldexp(1.0, -25);
    if (err > bound) graft_test::fail_at(__FILE__, __LINE__, "f16 error too large at " + std::to_string(x));
    // bf16 over fp32's whole normal range: half an ulp is at most 2^-8 of the value.
    float y = sign * std::ldexp(mant(rng), std::uniform_int_distribution<int>(-126, 127)(rng));
    double err_b = std::fabs((double)bf16_to_f32(f32_to_bf16(y)) - y);
    if (err_b > std::ldexp(std::fabs((double)y), -8))
      graft_test::fail_at(__FILE__, __LINE__, "bf16 error too large at " + std::to_string(y));
  }
}

// ------------------------------------------------------------------------------------------------
// Writing and reading files

TEST(safetensors_round_trip_every_dtype_with_metadata) {
  TempDir dir;
  std::string path = dir.file("all.safetensors");

  // Float values exactly representable in each format, so the round trip must be exact.
  std::vector<float> f32 = {1.5f, -2.25f, 3.14159274f, 1e-30f, 65504.0f, 0.0f};
  std::vector<float> f16 = {0.0f, 1.0f, -2.0f, 0.5f, 65504.0f, std::ldexp(1.0f, -24)};
  std::vector<float> bf16 = {0.0f, 1.0f, -2.0f, 1.0078125f, std::ldexp(1.0f, 100), -std::ldexp(1.0f, -130)};
  std::vector<float> e4m3 = {0.0f, 1.0f, -2.0f, 0.5f, 448.0f, std::ldexp(1.0f, -9)};
  std::vector<float> e5m2 = {0.0f, 1.0f, -2.0f, 0.5f, 57344.0f, std::ldexp(1.0f, -16)};
  std::vector<float> f64 = {1.5f, -2.25f, 1e-30f, 3.14159274f};
  std::vector<int64_t> i64 = {-1, int64_t(1) << 40, 7};
  std::vector<int32_t> i32 = {-5, 1 << 30};
  std::vector<int16_t> i16 = {-300, 300, 0, 1};
  std::vector<int8_t> i8 = {-128, 127};
  std::vector<uint8_t> u8 = {0, 255, 17};
  std::vector<uint8_t> boolean = {0, 1, 1, 0};
  float scalar = 42.0f;

  SafeTensorsWriter w;
  w.metadata = {{"format", "pt"}, {"ss_network_dim", "16"}, {"note", "caf\xc3\xa9 \"quoted\"\n"}};
  w.add("f32", DType::F32, {2, 3}, f32.data());
  w.add("f16", DType::F16, {3, 2}, f16.data());
  w.add("bf16", DType::BF16, {6}, bf16.data());
  w.add("e4m3", DType::F8_E4M3, {1, 6}, e4m3.data());
  w.add("e5m2", DType::F8_E5M2, {6, 1}, e5m2.data());
  w.add("f64", DType::F64, {2, 2}, f64.data());
  w.add("scalar", DType::F32, {}, &scalar);
  w.add("empty", DType::F16, {0, 4}, nullptr);
  w.add_raw("i64", DType::I64, {3}, i64.data(), i64.size() * 8);
  w.add_raw("i32", DType::I32, {2}, i32.data(), i32.size() * 4);
  w.add_raw("i16", DType::I16, {2, 2}, i16.data(), i16.size() * 2);
  w.add_raw("i8", DType::I8, {2}, i8.data(), i8.size());
  w.add_raw("u8", DType::U8, {3}, u8.data(), u8.size());
  w.add_raw("bool", DType::BOOL, {2, 2}, boolean.data(), boolean.size());
  w.write(path);
  CHECK(!exists(path + ".tmp"));

  SafeTensorsFile st = SafeTensorsFile::open(path);
  CHECK(st.path == path);
  CHECK(st.metadata == w.metadata);
  CHECK(st.tensors.size() == 14);

  struct FloatCase { const char* name; DType dtype; std::vector<int64_t> shape; const std::vector<float>* v; };
  std::vector<float> scalar_v = {scalar};
  FloatCase floats[] = {
      {"f32", DType::F32, {2, 3}, &f32},         {"f16", DType::F16, {3, 2}, &f16},
      {"bf16", DType::BF16, {6}, &bf16},         {"e4m3", DType::F8_E4M3, {1, 6}, &e4m3},
      {"e5m2", DType::F8_E5M2, {6, 1}, &e5m2},   {"f64", DType::F64, {2, 2}, &f64},
      {"scalar", DType::F32, {}, &scalar_v},
  };
  for (const FloatCase& c : floats) {
    const TensorInfo& t = st.info(c.name);
    CHECK(t.dtype == c.dtype);
    CHECK(t.shape == c.shape);
    CHECK(t.end - t.begin == c.v->size() * dtype_size(c.dtype));
    std::vector<float> got = st.read_f32(c.name, c.shape);
    CHECK(got.size() == c.v->size());
    for (size_t i = 0; i < got.size(); ++i)
      if (!same_bits(got[i], (*c.v)[i]))
        graft_test::fail_at(__FILE__, __LINE__, std::string(c.name) + "[" + std::to_string(i) + "] = " +
                                                    std::to_string(got[i]) + ", wrote " + std::to_string((*c.v)[i]));
  }
  CHECK(st.read_f32("empty").empty());
  CHECK(st.info("empty").shape == std::vector<int64_t>({0, 4}));

  struct RawCase { const char* name; DType dtype; std::vector<int64_t> shape; const void* data; size_t n; };
  RawCase raws[] = {
      {"i64", DType::I64, {3}, i64.data(), 24},   {"i32", DType::I32, {2}, i32.data(), 8},
      {"i16", DType::I16, {2, 2}, i16.data(), 8}, {"i8", DType::I8, {2}, i8.data(), 2},
      {"u8", DType::U8, {3}, u8.data(), 3},       {"bool", DType::BOOL, {2, 2}, boolean.data(), 4},
  };
  for (const RawCase& c : raws) {
    CHECK(st.has(c.name));
    const TensorInfo& t = st.info(c.name);
    CHECK(t.dtype == c.dtype);
    CHECK(t.shape == c.shape);
    CHECK(t.end - t.begin == c.n);
    CHECK(std::memcmp(st.raw(t), c.data, c.n) == 0);
  }
  CHECK(!st.has("nope"));
}

TEST(safetensors_writer_pads_header_and_lays_tensors_out_contiguously) {
  TempDir dir;
  std::string path = dir.file("layout.safetensors");
  std::vector<float> v(5, 1.0f);
  uint8_t bytes[3] = {1, 2, 3};
  SafeTensorsWriter w;
  w.metadata["k"] = "v";
  w.add_raw("a", DType::U8, {3}, bytes, 3);  // odd sizes first, to make alignment depend on the order
  w.add("b", DType::F16, {3}, v.data());
  w.add("c", DType::F32, {5}, v.data());
  w.add("d", DType::F64, {1}, v.data());
  w.write(path);

  std::string file = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | (uint8_t)file[i];
  CHECK(n % 8 == 0);
  std::string header = file.substr(8, n);
  size_t close = header.find_last_of('}');
  CHECK(close != std::string::npos && close + 8 > n);  // at most 7 bytes of padding
  for (size_t i = close + 1; i < n; ++i) CHECK(header[i] == ' ');
  CHECK(header.find("\"__metadata__\":{\"k\":\"v\"}") != std::string::npos);

  // Contiguous, in order, each tensor aligned to its element size, the buffer used exactly.
  SafeTensorsFile st = SafeTensorsFile::open(path);
  const uint64_t buffer = file.size() - 8 - n;  // the data buffer, after the header
  uint64_t expect_begin = 0;
  for (const TensorInfo& t : st.tensors) {
    CHECK(t.begin == expect_begin);
    CHECK((8 + n + t.begin) % dtype_size(t.dtype) == 0);
    expect_begin = t.end;
  }
  CHECK(expect_begin == buffer);
  CHECK(st.tensors.size() == 4 && st.tensors[0].name == "d" && st.tensors[3].name == "a");
}

TEST(safetensors_reads_a_hand_written_file_with_gaps_and_padding) {
  // Another writer's valid file: unsorted keys, a gap in the buffer, trailing spaces, an F64 tensor.
  TempDir dir;
  std::string header =
      "{\"z\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
      " \"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[8,16]}}   ";
  std::string data(16, '\0');
  float one = 1.0f;
  double two = -2.0;
  std::memcpy(&data[0], &one, 4);
  std::memcpy(&data[8], &two, 8);
  std::string path = dir.file("other.safetensors");
  write_bytes(path, le64(header.size()) + header + data);
  SafeTensorsFile st = SafeTensorsFile::open(path);
  CHECK(st.tensors.size() == 2 && st.tensors[0].name == "z" && st.tensors[1].name == "a");  // data order
  CHECK(st.read_f32("z")[0] == 1.0f);
  CHECK(st.read_f32("a", {1})[0] == -2.0f);
  CHECK(st.metadata.empty());
}

// ------------------------------------------------------------------------------------------------
// Malformed files: each is a real file, and each error names the file and the problem.

TEST(safetensors_error_file_missing) {
  TempDir dir;
  std::string path = dir.file("nope.safetensors");
  CHECK_ERROR_NAMES(SafeTensorsFile::open(path), path, "cannot open: No such file");
  CHECK_ERROR_NAMES(SafeTensorsFile::open(dir.path), dir.path, "not a regular file");
}

TEST(safetensors_error_file_shorter_than_8_bytes) {
  TempDir dir;
  std::string path = dir.file("short.safetensors");
  write_bytes(path, std::string("\x10\0\0\0\0", 5));
  CHECK_ERROR_NAMES(SafeTensorsFile::open(path), path, "too short to be a safetensors file (5 bytes");
  write_bytes(path, "");
  CHECK_ERROR_NAMES(SafeTensorsFile::open(path), path, "too short");
}

TEST(safetensors_error_header_length_past_end_of_file) {
  TempDir dir;
  std::string path = dir.file("trunc.safetensors");
  write_bytes(path, le64(1200) + std::string(800, ' '));
  CHECK_ERROR_NAMES(SafeTensorsFile::open(path), path, "truncated: header says it is 1200 bytes but the file has 800");
}

TEST(safetensors_error_header_length_absurd) {
  TempDir dir;
  std::string path = dir.file("absurd.safetensors");
  write_bytes(path, le64(200000000) + "{}");
  CHECK_ERROR_NAMES(SafeTensorsFile::open(path), path, "header length 200000000 is absurd");
  write_bytes(path, le64(~0ull) + "{}");  // must not overflow into a small number
  CHECK_ERROR_NAMES(SafeTensorsFile::open(path), path, "is absurd");
}

TEST(safetensors_error_header_not_json) {
  TempDir dir;
  CHECK_ERROR_NAMES(SafeTensorsFile::open(make_file(dir, "bad.st", "{\"w\": {\"dtype\": ", 0)),
                    dir.file("bad.st"), "header is not valid JSON");
  CHECK_ERROR_NAMES(SafeTensorsFile::open(make_file(dir, "utf8.st", "{\"\xff\":1}", 0)), dir.file("utf8.st"),
                    "header is not valid JSON");
}

TEST(safetensors_error_header_not_object) {
  TempDir dir;
  CHECK_ERROR_NAMES(SafeTensorsFile::open(make_file(dir, "arr.st", "[1, 2]", 0)), dir.file("arr.st"),
                    "header is not a JSON object");
  CHECK_ERROR_NAMES(SafeTensorsFile::open(make_file(dir, "meta.st", "{\"__metadata__\": [1]}", 0)),
                    dir.file("meta.st"), "__metadata__ is not a JSON object");
}

TEST(safetensors_error_entry_missing_field) {
  TempDir dir;
  std::string p = make_file(dir, "a.st", "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
  CHECK_ERROR_NAMES(SafeTensorsFile::open(p), p, "tensor 'w': header entry is missing 'dtype'");
  p = make_file(dir, "b.st", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8);
  CHECK_ERROR_NAMES(SafeTensorsFile::open(p), p, "tensor 'w': header entry is missing 'shape'");
  p = make_file(dir, "c.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8);
  CHECK_ERROR_NAMES(SafeTensorsFile::open(p), p, "tensor 'w': header entry is missing 'data_offsets'");
}

TEST(safetensors_error_entry_wrong_types) {
  TempDir dir;
  struct { const char* header; const char* problem; } cases[] = {
      {"{\"w\":3}", "tensor 'w': header entry is not a JSON object"},
      {"{\"w\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}", "tensor 'w': 'dtype' is not a string"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", "tensor 'w': 'shape' is not an array"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", "'shape' must be an array of non-negative integers"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", "'shape' must be an array of non-negative integers"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", "tensor 'w': 'data_offsets' must be [begin, end]"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{\"a\":1}}}", "'data_offsets' must be [begin, end]"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-4,8]}}", "'data_offsets' must be [begin, end]"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.5]}}", "'data_offsets' must be [begin, end]"},
  };
  int i = 0;
  for (auto& c : cases) {
    std::string p = make_file(dir, "case" + std::to_string(i++) + ".st", c.header, 8);
    CHECK_ERROR_NAMES(SafeTensorsFile::open(p), p, c.problem);
  }
}

TEST(safetensors_error_unknown_dtype) {
  TempDir dir;
  std::string p = make_file(dir, "dt.st", "{\"w\":{\"dtype\":\"F12\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
  CHECK_ERROR_NAMES(SafeTensorsFile::open(p), p, "tensor 'w': unknown dtype 'F12'");
}

TEST(safetensors_error_negative_dimension) {
  TempDir dir;
  std::string p = make_file(dir, "neg.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2, 1],\"data_offsets\":[0,8]}}", 8);
  CHECK_ERROR_NAMES(SafeTensorsFile::open(p), p, "tensor 'w': negative dimension in shape [-2,1]");
}

TEST(safetensors_error_shape_overflows) {
  // 2^62 * 4 elements of 4 bytes wraps a 64-bit byte count; it must not wrap to a size that passes.
  TempDir dir;
  std::string p = make_file(
      dir, "big.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4,0],\"data_offsets\":[0,0]}}", 0);
  CHECK_ERROR_NAMES(SafeTensorsFile::open(p), p, "tensor 'w': shape [4611686018427387904,4,0] is impossibly large");
}

TEST(safetensors_error_offsets_outside_buffer) {
  TempDir dir;
  std::string p = make_file(dir, "out.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8);
  CHECK_ERROR_NAMES(SafeTensorsFile::open(p), p,
                    "tensor 'w': data_offsets [0, 16] are outside the data buffer (8 bytes)");
}

TEST(safetensors_error_offsets_begin_after_end) {
  TempDir dir;
  std::string p = make_file(dir, "rev.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8);
  CHECK_ERROR_NAMES(SafeTensorsFile::open(p), p, "tensor 'w': data_offsets [8, 0] have begin after end");
}

TEST(safetensors_error_size_does_not_match_shape) {
  TempDir dir;
  std::string p = make_file(dir, "size.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8);
  CHECK_ERROR_NAMES(SafeTensorsFile::open(p), p, "tensor 'w': data_offsets [0, 8] span 8 bytes but shape [3] of F32 needs 12");
}

TEST(safetensors_error_overlapping_tensors) {
  TempDir dir;
  std::string p = make_file(dir, "overlap.st",
                            "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]},"
                            "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                            "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
                            12);
  CHECK_ERROR_NAMES(SafeTensorsFile::open(p), p, "tensors 'a' and 'b' overlap in the data buffer (bytes 4..8)");
}

TEST(safetensors_error_tensor_missing) {
  TempDir dir;
  std::string path = dir.file("one.safetensors");
  float v[2] = {1, 2};
  SafeTensorsWriter w;
  w.add("w", DType::F32, {2}, v);
  w.write(path);
  SafeTensorsFile st = SafeTensorsFile::open(path);
  CHECK_ERROR_NAMES(st.info("lora_up.weight"), path, "tensor 'lora_up.weight' is missing");
  CHECK_ERROR_NAMES(st.read_f32("lora_up.weight"), path, "tensor 'lora_up.weight' is missing");
}

TEST(safetensors_error_read_f32_of_integer_dtype) {
  TempDir dir;
  std::string path = dir.file("ints.safetensors");
  int32_t v[2] = {1, 2};
  SafeTensorsWriter w;
  w.add_raw("steps", DType::I32, {2}, v, sizeof v);
  w.write(path);
  SafeTensorsFile st = SafeTensorsFile::open(path);
  CHECK_ERROR_NAMES(st.read_f32("steps"), path, "tensor 'steps' is I32, not a float dtype");
}

TEST(safetensors_error_read_f32_shape_mismatch) {
  TempDir dir;
  std::string path = dir.file("shape.safetensors");
  std::vector<float> v(6, 0.5f);
  SafeTensorsWriter w;
  w.add("w", DType::BF16, {2, 3}, v.data());
  w.write(path);
  SafeTensorsFile st = SafeTensorsFile::open(path);
  CHECK_ERROR_NAMES(st.read_f32("w", {3, 2}), path, "tensor 'w' has shape [2, 3] but [3, 2] was expected");
  CHECK(st.read_f32("w", {2, 3}).size() == 6);
}

TEST(safetensors_writer_rejects_bad_entries) {
  float v[4] = {0, 0, 0, 0};
  SafeTensorsWriter w;
  w.add("w", DType::F32, {4}, v);
  CHECK_THROWS(w.add("w", DType::F16, {4}, v), "tensor 'w' added twice");
  CHECK_THROWS(w.add("__metadata__", DType::F32, {4}, v), "'__metadata__' is reserved");
  CHECK_THROWS(w.add("n", DType::F32, {-1}, v), "negative dimension");
  CHECK_THROWS(w.add("i", DType::I32, {4}, v), "add() converts fp32 to float dtypes only, not I32");
  CHECK_THROWS(w.add_raw("r", DType::I32, {3}, v, 16), "got 16 bytes but shape [3] of I32 needs 12");
  CHECK(w.entries.size() == 1);
}

// ------------------------------------------------------------------------------------------------
// Atomic writes

TEST(safetensors_write_replaces_an_existing_file) {
  TempDir dir;
  std::string path = dir.file("out.bin");
  write_file_atomic(path, "old contents", 12);
  write_file_atomic(path, "new", 3);
  CHECK(read_bytes(path) == "new");
  write_file_atomic(path, "", 0);
  CHECK(read_bytes(path).empty());
  CHECK(!exists(path + ".tmp"));
}

TEST(safetensors_failed_write_into_missing_folder_leaves_nothing) {
  TempDir dir;
  std::string path = dir.file("no/such/folder/out.safetensors");
  float v[1] = {1};
  SafeTensorsWriter w;
  w.add("w", DType::F32, {1}, v);
  CHECK_ERROR_NAMES(w.write(path), path, "No such file or directory");
  CHECK(!exists(path) && !exists(path + ".tmp"));
}

TEST(safetensors_failed_write_does_not_clobber_existing_file) {
  // The tmp path is taken by a folder, so the write fails before the rename: the old file must survive.
  TempDir dir;
  std::string path = dir.file("lora.safetensors");
  write_bytes(path, "precious");
  CHECK(mkdir((path + ".tmp").c_str(), 0755) == 0);
  CHECK_ERROR_NAMES(write_file_atomic(path, "replacement", 11), path, "Is a directory");
  CHECK(read_bytes(path) == "precious");
}

TEST(safetensors_disk_full_midway_removes_tmp_and_keeps_old_file) {
  // A file size limit makes write() fail with EFBIG partway through, like a full disk would.
  TempDir dir;
  std::string path = dir.file("ckpt.safetensors");
  write_bytes(path, "precious");
  struct rlimit old_limit;
  CHECK(getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
  void (*old_handler)(int) = std::signal(SIGXFSZ, SIG_IGN);  // get EFBIG, not a killed process
  struct Restore {
    rlimit lim; void (*handler)(int);
    ~Restore() { setrlimit(RLIMIT_FSIZE, &lim); std::signal(SIGXFSZ, handler); }
  } restore{old_limit, old_handler};
  struct rlimit small = old_limit;
  small.rlim_cur = 4096;
  CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0);

  std::vector<float> big(64 * 1024, 1.0f);
  SafeTensorsWriter w;
  w.add("w", DType::F32, {(int64_t)big.size()}, big.data());
  CHECK_ERROR_NAMES(w.write(path), path, "File too large");
  CHECK(!exists(path + ".tmp"));
  CHECK(read_bytes(path) == "precious");
}
