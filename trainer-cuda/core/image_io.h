// PNG files for samples and contact sheets. Pixels travel as float RGB [3, H, W] in [-1, 1], the
// autoencoder's range; files are 8-bit RGB, written atomically.
#pragma once
#include <string>
#include <vector>

namespace graft {

void png_write(const std::string& path, const float* rgb, int W, int H);
// Reads a PNG (or JPEG, via the same decoder) into [3, H, W] in [-1, 1]. Throws Error naming the file.
std::vector<float> png_read(const std::string& path, int* W, int* H);
// Width and height from the file's header without decoding it (stb's stbi_info). False, with the
// reason in *why, when the file is not an image stb reads.
bool image_size(const std::string& path, int* W, int* H, std::string* why);
// Mirrors [C, H, W] pixels in place: flip_x left-right, flip_y top-bottom.
void mirror_image(float* pixels, int C, int W, int H, bool flip_x, bool flip_y);
// Tiles equally sized pictures into one image, `cols` per row, with a 1-pixel grey gap.
std::vector<float> contact_sheet(const std::vector<std::vector<float>>& pictures, int W, int H, int cols, int* out_w,
                                 int* out_h);

// Each pixel repeated k x k times (for looking at small pictures).
std::vector<float> upscale_nearest(const std::vector<float>& rgb, int W, int H, int k);

}  // namespace graft
