// PNG files for samples and contact sheets. Pixels travel as float RGB [3, H, W] in [-1, 1], the
// autoencoder's range; files are 8-bit RGB, written atomically.
#pragma once
#include <string>
#include <vector>

namespace graft {

void png_write(const std::string& path, const float* rgb, int W, int H);
// Reads a PNG (or JPEG, via the same decoder) into [3, H, W] in [-1, 1]. Throws Error naming the file.
std::vector<float> png_read(const std::string& path, int* W, int* H);
// Tiles equally sized pictures into one image, `cols` per row, with a 1-pixel grey gap.
std::vector<float> contact_sheet(const std::vector<std::vector<float>>& pictures, int W, int H, int cols, int* out_w,
                                 int* out_h);

// Each pixel repeated k x k times (for looking at small pictures).
std::vector<float> upscale_nearest(const std::vector<float>& rgb, int W, int H, int k);

}  // namespace graft
