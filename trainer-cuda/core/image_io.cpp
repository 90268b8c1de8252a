#include "core/image_io.h"

#include <algorithm>
#include <cmath>

#include "core/common.h"
#include "core/safetensors.h"

// Debian's libstb-dev: the single-file decoder and encoder, compiled here once.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_IMPLEMENTATION
#define STBI_FAILURE_USERMSG
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

namespace graft {

static void append(void* ctx, void* data, int size) {
  auto* out = static_cast<std::vector<unsigned char>*>(ctx);
  out->insert(out->end(), (unsigned char*)data, (unsigned char*)data + size);
}

void png_write(const std::string& path, const float* rgb, int W, int H) {
  std::vector<unsigned char> px((size_t)W * H * 3);
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x)
      for (int c = 0; c < 3; ++c) {
        float v = (rgb[((size_t)c * H + y) * W + x] + 1.0f) * 127.5f;
        px[((size_t)y * W + x) * 3 + c] = (unsigned char)std::lround(std::min(255.0f, std::max(0.0f, v)));
      }
  std::vector<unsigned char> file;
  if (!stbi_write_png_to_func(append, &file, W, H, 3, px.data(), W * 3)) fail(path + ": could not encode the PNG");
  write_file_atomic(path, file.data(), file.size());
}

std::vector<float> png_read(const std::string& path, int* W, int* H) {
  int n = 0;
  unsigned char* px = stbi_load(path.c_str(), W, H, &n, 3);
  if (!px) fail(path + ": cannot read the image: " + stbi_failure_reason());
  std::vector<float> rgb((size_t)3 * *W * *H);
  for (int y = 0; y < *H; ++y)
    for (int x = 0; x < *W; ++x)
      for (int c = 0; c < 3; ++c) rgb[((size_t)c * *H + y) * *W + x] = px[((size_t)y * *W + x) * 3 + c] / 127.5f - 1.0f;
  stbi_image_free(px);
  return rgb;
}

bool image_size(const std::string& path, int* W, int* H, std::string* why) {
  int n = 0;
  if (stbi_info(path.c_str(), W, H, &n)) return true;
  if (why) *why = stbi_failure_reason() ? stbi_failure_reason() : "unknown format";
  return false;
}

void mirror_image(float* px, int C, int W, int H, bool flip_x, bool flip_y) {
  for (int c = 0; c < C; ++c) {
    float* plane = px + (size_t)c * H * W;
    if (flip_x)
      for (int y = 0; y < H; ++y) std::reverse(plane + (size_t)y * W, plane + (size_t)(y + 1) * W);
    if (flip_y)
      for (int y = 0; y < H / 2; ++y)
        std::swap_ranges(plane + (size_t)y * W, plane + (size_t)(y + 1) * W, plane + (size_t)(H - 1 - y) * W);
  }
}

std::vector<float> contact_sheet(const std::vector<std::vector<float>>& pics, int W, int H, int cols, int* ow, int* oh) {
  const int n = (int)pics.size(), rows = (n + cols - 1) / cols;
  *ow = cols * (W + 1) + 1;
  *oh = rows * (H + 1) + 1;
  std::vector<float> sheet((size_t)3 * *ow * *oh, 0.0f);  // 0 = mid grey in [-1, 1]
  for (int i = 0; i < n; ++i) {
    int ox = 1 + (i % cols) * (W + 1), oy = 1 + (i / cols) * (H + 1);
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x)
          sheet[((size_t)c * *oh + oy + y) * *ow + ox + x] = pics[i][((size_t)c * H + y) * W + x];
  }
  return sheet;
}

std::vector<float> upscale_nearest(const std::vector<float>& rgb, int W, int H, int k) {
  std::vector<float> out((size_t)3 * W * k * H * k);
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < H * k; ++y)
      for (int x = 0; x < W * k; ++x)
        out[((size_t)c * H * k + y) * W * k + x] = rgb[((size_t)c * H + y / k) * W + x / k];
  return out;
}

}  // namespace graft
