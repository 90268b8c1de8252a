#include "demo/shapes.h"

#include <algorithm>
#include <cmath>

#include "core/rng.h"

namespace graft {

const char* shape_name(Figure s) {
  switch (s) {
    case Figure::Circle: return "circle";
    case Figure::Square: return "square";
    case Figure::Triangle: return "triangle";
    case Figure::Diamond: return "diamond";
    case Figure::Cross: return "cross";
    case Figure::Star: return "star";
    case Figure::Bar: return "bar";
  }
  return "?";
}

const std::vector<Colour>& palette() {
  static const std::vector<Colour> p = {
      {"red", 0.90f, 0.10f, 0.10f},   {"green", 0.10f, 0.75f, 0.20f}, {"blue", 0.15f, 0.25f, 0.95f},
      {"yellow", 0.95f, 0.90f, 0.10f}, {"white", 0.97f, 0.97f, 0.97f}, {"black", 0.05f, 0.05f, 0.05f},
      {"purple", 0.60f, 0.15f, 0.80f}, {"orange", 1.00f, 0.55f, 0.05f},
  };
  return p;
}

// Half-size of a shape in picture units.
static float half_size(const Scene& s) { return s.large ? 0.22f : 0.13f; }

static Scene place(Scene s, Rng& rng) {
  const float r = half_size(s);
  // One to three shapes in distinct cells of a jittered grid (2x2 for large, 3x3 for small). A single
  // shape sits in a cell too: anywhere in the picture, the tiny transformer learnt where a lone shape
  // goes but not its outline (it drew blobs), while shapes in cells came out as asked. Two large
  // shapes keep at least a pixel apart at 32x32 (with half-size 0.24 and this jitter at 0.05, one
  // picture of "two large ..." in six showed one merged shape).
  const int n = s.large ? 2 : 3;
  const float cell = 1.0f / n, jitter = s.large ? 0.02f : 0.05f;
  int cells[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  for (int i = n * n - 1; i > 0; --i) std::swap(cells[i], cells[rng.next() % (uint64_t)(i + 1)]);
  for (int i = 0; i < s.count; ++i) {
    int c = cells[i];
    s.cx[i] = std::fmin(1 - r, std::fmax(r, (c % n + 0.5f) * cell + (rng.uniform() - 0.5f) * jitter));
    s.cy[i] = std::fmin(1 - r, std::fmax(r, (c / n + 0.5f) * cell + (rng.uniform() - 0.5f) * jitter));
  }
  return s;
}

static Scene random_with(Figure shape, const std::string& word, Rng& rng) {
  Scene s;
  s.shape = shape;
  s.word = word;
  const int nc = (int)palette().size();
  s.colour = (int)(rng.next() % nc);
  s.background = (int)(rng.next() % (nc - 1));
  if (s.background >= s.colour) ++s.background;
  s.large = rng.uniform() < 0.5f;
  s.count = 1 + (int)(rng.next() % (s.large ? 2 : 3));  // at most two large shapes fit
  return place(s, rng);
}

Scene random_scene(uint64_t seed, uint64_t index) {
  Rng rng(seed, 0x5CE, index);
  Figure shape = kBaseShapeList[rng.next() % kBaseShapes];
  return random_with(shape, shape_name(shape), rng);
}

Scene random_scene_of(Figure shape, const std::string& word, uint64_t seed, uint64_t index) {
  Rng rng(seed, 0x5CF, index);
  return random_with(shape, word, rng);
}

static std::string article(const std::string& word) {
  return (std::string("aeiou").find(word[0]) != std::string::npos ? "an " : "a ") + word;
}

std::string caption(const Scene& s) {
  static const char* counts[] = {"a", "two", "three"};
  std::string noun = s.word + (s.count > 1 ? (s.word.back() == 's' ? "es" : "s") : "");
  return std::string(counts[s.count - 1]) + " " + (s.large ? "large " : "small ") + palette()[s.colour].name + " " +
         noun + " on " + article(palette()[s.background].name) + " background";
}

std::string made_up_word(Rng& rng) {
  for (;;) {
    std::string w(3 + rng.next() % 3, 'a');
    for (char& c : w) c = (char)('a' + rng.next() % 26);
    // The caption words of 3 to 5 letters that no loop below covers (shorter and longer ones cannot come up).
    bool taken = w == "zxq" || w == "two" || w == "three" || w == "large" || w == "small";
    for (int sh = 0; sh <= (int)Figure::Bar; ++sh) taken |= w == shape_name((Figure)sh);
    for (const Colour& c : palette()) taken |= w == c.name;
    if (!taken) return w;
  }
}

// Inside test in coordinates relative to the shape's centre, scaled so the shape spans [-1, 1].
static bool inside(Figure shape, float x, float y) {
  switch (shape) {
    case Figure::Circle: return x * x + y * y <= 1.0f;
    case Figure::Square: return std::fabs(x) <= 0.85f && std::fabs(y) <= 0.85f;
    case Figure::Triangle: return y >= -1.0f && y <= 0.8f && std::fabs(x) <= (y + 1.0f) * 0.55f;  // apex up
    case Figure::Diamond: return std::fabs(x) + std::fabs(y) <= 1.0f;
    case Figure::Cross: return (std::fabs(x) <= 0.3f && std::fabs(y) <= 1.0f) || (std::fabs(y) <= 0.3f && std::fabs(x) <= 1.0f);
    case Figure::Bar: return std::fabs(x) <= 1.0f && std::fabs(y) <= 0.4f;
    case Figure::Star: {
      // A five-pointed star: radius alternating between 1 and 0.45 around the centre.
      float r = std::sqrt(x * x + y * y), a = std::atan2(x, -y);
      float sector = std::fmod(a + 2.0f * (float)M_PI, 2.0f * (float)M_PI / 5.0f) / (2.0f * (float)M_PI / 5.0f);
      float t = std::fabs(sector - 0.5f) * 2.0f;  // 1 at a point, 0 between points
      return r <= 0.45f + 0.55f * t * t;
    }
  }
  return false;
}

std::vector<float> draw(const Scene& s, int size) {
  const Colour& fg = palette()[s.colour];
  const Colour& bg = palette()[s.background];
  const float r = half_size(s);
  std::vector<float> cover((size_t)size * size, 0.0f);
  for (int i = 0; i < s.count; ++i) {  // shapes sit in separate cells: the union is the max
    std::vector<float> m = shape_mask(s.shape, s.cx[i], s.cy[i], r, size);
    for (size_t p = 0; p < m.size(); ++p) cover[p] = std::max(cover[p], m[p]);
  }
  std::vector<float> img((size_t)3 * size * size);
  const float f[3] = {fg.r, fg.g, fg.b}, b[3] = {bg.r, bg.g, bg.b};
  for (int c = 0; c < 3; ++c)
    for (size_t p = 0; p < cover.size(); ++p)
      img[(size_t)c * cover.size() + p] = (f[c] * cover[p] + b[c] * (1 - cover[p])) * 2.0f - 1.0f;
  return img;
}

std::vector<float> shape_mask(Figure shape, float cx, float cy, float r, int size) {
  const int SS = 4;
  std::vector<float> m((size_t)size * size);
  for (int py = 0; py < size; ++py)
    for (int px = 0; px < size; ++px) {
      int hits = 0;
      for (int sy = 0; sy < SS; ++sy)
        for (int sx = 0; sx < SS; ++sx) {
          float x = (px + (sx + 0.5f) / SS) / size, y = (py + (sy + 0.5f) / SS) / size;
          hits += inside(shape, (x - cx) / r, (y - cy) / r);
        }
      m[(size_t)py * size + px] = (float)hits / (SS * SS);
    }
  return m;
}

// IoU of a 0/1 mask with `shape` placed at the mask's centroid and sized to its area.
static double mask_iou(const std::vector<float>& mask, int size, Figure shape) {
  const size_t n = (size_t)size * size;
  double area = 0, sx = 0, sy = 0;
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      float m = mask[(size_t)y * size + x];
      area += m, sx += m * (x + 0.5), sy += m * (y + 0.5);
    }
  if (area < 1) return 0.0;
  // The unit shape's area and centroid in picture units, measured at high resolution. The centroid
  // is not the centre for every shape (a triangle's lies below it), so the template is placed by
  // centroid, as the mask is.
  std::vector<float> unit = shape_mask(shape, 0.5f, 0.5f, 0.25f, 128);
  double unit_area = 0, ux = 0, uy = 0;
  for (int y = 0; y < 128; ++y)
    for (int x = 0; x < 128; ++x) {
      float v = unit[(size_t)y * 128 + x];
      unit_area += v, ux += v * (x + 0.5), uy += v * (y + 0.5);
    }
  const double off_x = (ux / unit_area / 128.0 - 0.5) / 0.25, off_y = (uy / unit_area / 128.0 - 0.5) / 0.25;
  unit_area /= 128.0 * 128.0 * 0.25 * 0.25;  // area of the shape at r = 1
  const double r = std::sqrt(area / ((double)n * unit_area));
  std::vector<float> t = shape_mask(shape, (float)(sx / area / size - r * off_x), (float)(sy / area / size - r * off_y),
                                    (float)r, size);
  double inter = 0, uni = 0;
  for (size_t i = 0; i < n; ++i) inter += std::min(mask[i], t[i]), uni += std::max(mask[i], t[i]);
  return uni > 0 ? inter / uni : 0.0;
}

static void rgb01(const std::vector<float>& rgb, size_t n, size_t p, float c[3]) {
  for (int k = 0; k < 3; ++k) c[k] = (rgb[(size_t)k * n + p] + 1.0f) * 0.5f;
}

static float dist2(const float a[3], float r, float g, float b) {
  return (a[0] - r) * (a[0] - r) + (a[1] - g) * (a[1] - g) + (a[2] - b) * (a[2] - b);
}

double shape_iou(const std::vector<float>& rgb, int size, int colour, int background, Figure shape) {
  const Colour& fg = palette()[colour];
  const Colour& bg = palette()[background];
  const size_t n = (size_t)size * size;
  std::vector<float> mask(n);
  for (size_t p = 0; p < n; ++p) {
    float c[3];
    rgb01(rgb, n, p, c);
    mask[p] = dist2(c, fg.r, fg.g, fg.b) < dist2(c, bg.r, bg.g, bg.b) ? 1.0f : 0.0f;
  }
  return mask_iou(mask, size, shape);
}

// The background is the mean colour of the picture's border; the foreground mask is every pixel
// farther than kForegroundDist from it.
static std::vector<float> foreground_mask(const std::vector<float>& rgb, int size, float bg[3]) {
  const size_t n = (size_t)size * size;
  bg[0] = bg[1] = bg[2] = 0.0f;
  int border = 0;
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      if (x != 0 && y != 0 && x != size - 1 && y != size - 1) continue;
      float c[3];
      rgb01(rgb, n, (size_t)y * size + x, c);
      for (int k = 0; k < 3; ++k) bg[k] += c[k];
      ++border;
    }
  for (int k = 0; k < 3; ++k) bg[k] /= border;
  std::vector<float> mask(n);
  for (size_t p = 0; p < n; ++p) {
    float c[3];
    rgb01(rgb, n, p, c);
    mask[p] = dist2(c, bg[0], bg[1], bg[2]) > kForegroundDist * kForegroundDist ? 1.0f : 0.0f;
  }
  return mask;
}

double shape_iou_any_colour(const std::vector<float>& rgb, int size, Figure shape) {
  float bg[3];
  return mask_iou(foreground_mask(rgb, size, bg), size, shape);
}

static int nearest_colour(const float c[3]) {
  int best = 0;
  for (size_t i = 1; i < palette().size(); ++i) {
    const Colour& p = palette()[i];
    if (dist2(c, p.r, p.g, p.b) < dist2(c, palette()[best].r, palette()[best].g, palette()[best].b)) best = (int)i;
  }
  return best;
}

// The mask's 4-connected parts of at least min_pixels pixels.
static int count_parts(const std::vector<float>& mask, int size, int min_pixels) {
  std::vector<int> seen(mask.size(), 0), stack;
  int parts = 0;
  for (size_t start = 0; start < mask.size(); ++start) {
    if (mask[start] == 0.0f || seen[start]) continue;
    int pixels = 0;
    stack.assign(1, (int)start);
    seen[start] = 1;
    while (!stack.empty()) {
      const int p = stack.back(), x = p % size, y = p / size;
      stack.pop_back();
      ++pixels;
      const int next[4][2] = {{x - 1, y}, {x + 1, y}, {x, y - 1}, {x, y + 1}};
      for (const auto& q : next) {
        if (q[0] < 0 || q[1] < 0 || q[0] >= size || q[1] >= size) continue;
        const int k = q[1] * size + q[0];
        if (mask[k] != 0.0f && !seen[k]) seen[k] = 1, stack.push_back(k);
      }
    }
    parts += pixels >= min_pixels;
  }
  return parts;
}

PictureReading read_picture(const std::vector<float>& rgb, int size) {
  const size_t n = (size_t)size * size;
  float bg[3];
  std::vector<float> mask = foreground_mask(rgb, size, bg);
  PictureReading r;
  r.background = nearest_colour(bg);
  r.count = count_parts(mask, size, kMinShapePixels);
  double best = -1.0;
  for (Figure sh : kBaseShapeList) {
    const double iou = mask_iou(mask, size, sh);
    if (iou > best) best = iou, r.shape = sh;
  }
  float fg[3] = {0, 0, 0};
  double count = 0;
  for (size_t p = 0; p < n; ++p) {
    if (mask[p] == 0.0f) continue;
    float c[3];
    rgb01(rgb, n, p, c);
    for (int k = 0; k < 3; ++k) fg[k] += c[k];
    ++count;
  }
  if (count == 0) return r;  // nothing drawn: colour stays -1
  for (float& v : fg) v = (float)(v / count);
  r.colour = nearest_colour(fg);
  return r;
}

}  // namespace graft
