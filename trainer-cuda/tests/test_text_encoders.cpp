// The text encoders' file forms beyond what the PyTorch reference covers (test_text_encoders_torch.py):
// ComfyUI's "scaled" fp8 T5 (fp8 weights with a scale_weight each) computes with the dequantized
// values, and the relative-position buckets keep their defining properties.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/safetensors.h"
#include "demo/random_models.h"
#include "fp8_files.h"
#include "job_fixture.h"
#include "models/t5.h"
#include "test.h"

using namespace graft;
using namespace graft_test;

namespace {

bool is_linear_weight(const std::string& name) {
  const bool attention = name.find("SelfAttention.") != std::string::npos && name.find("relative_attention_bias") == std::string::npos;
  return attention || name.find("DenseReluDense.") != std::string::npos;
}

double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0.0, s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, (double)std::fabs(a[i] - b[i])), s = std::max(s, (double)std::fabs(b[i]));
  return d / s;
}

}  // namespace

TEST(t5_scaled_fp8_computes_with_the_dequantized_weights) {
  TempDir tmp;
  T5Config c;
  c.vocab = 64, c.d_model = 32, c.d_kv = 8, c.heads = 4, c.d_ff = 48, c.layers = 2;
  const std::string f32 = tmp.path + "/t5.safetensors", fp8 = tmp.path + "/t5_fp8_scaled.safetensors",
                    deq = tmp.path + "/t5_dequantized.safetensors";
  write_random_t5(f32, c, 4, RandomWriteOptions());
  // As ComfyUI's t5xxl_fp8_e4m3fn_scaled: each linear weight W becomes fp8(W / s) with s = max|W| / 448
  // (fp8 e4m3's largest value) stored beside it; everything else stays as it was.
  write_fp8_twins(f32, fp8, deq, is_linear_weight, /*per_row=*/false);
  NoGrad no_grad;
  std::vector<int> ids = {5, 9, 13, 1, 0, 0, 7, 22, 1, 0, 0, 0};
  const std::vector<float> a = to_floats(T5Encoder::load(fp8, Device::cpu()).forward(ids, 2, 6));
  const std::vector<float> b = to_floats(T5Encoder::load(deq, Device::cpu()).forward(ids, 2, 6));
  const std::vector<float> full = to_floats(T5Encoder::load(f32, Device::cpu()).forward(ids, 2, 6));
  const double vs_deq = max_rel(a, b), vs_full = max_rel(a, full);
  std::printf("      scaled fp8 vs its dequantized weights: rel %.2e; vs the fp32 model: %.2e\n", vs_deq, vs_full);
  CHECK(vs_deq < 1e-5);
  CHECK(vs_full > 1e-4 && vs_full < 0.2);  // fp8's rounding is there, and only that
}

// The bucket rule's defining properties: distances below 8 each their own bucket, keys after the query
// in the upper half, monotone in distance, everything from max_distance on in the last bucket.
TEST(t5_relative_buckets) {
  for (int d = 0; d < 8; ++d) {
    CHECK(t5_relative_bucket(-d, 32, 128) == d);
    if (d) CHECK(t5_relative_bucket(d, 32, 128) == 16 + d);
  }
  int prev = 0;
  for (int d = 1; d < 400; ++d) {
    const int b = t5_relative_bucket(-d, 32, 128);
    CHECK(b >= prev && b < 16);
    CHECK(t5_relative_bucket(d, 32, 128) == b + 16);
    if (d >= 128) CHECK(b == 15);
    prev = b;
  }
  CHECK(t5_relative_bucket(-127, 32, 128) < 16 && t5_relative_bucket(-64, 32, 128) < t5_relative_bucket(-127, 32, 128));
}
