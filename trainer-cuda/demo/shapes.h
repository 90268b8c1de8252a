// The demo model's world: pictures of coloured shapes on plain backgrounds with captions that say
// what is in them ("two small red circles on a blue background"). Deterministic by seed, so the
// dataset that trained the shipped weights can be made again.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace graft {

struct Rng;

enum class Figure { Circle, Square, Triangle, Diamond, Cross, Star, Bar };
// The shapes the base model learns, in enum order; the star and the bar are kept out as new concepts.
constexpr int kBaseShapes = 5;
constexpr Figure kBaseShapeList[kBaseShapes] = {Figure::Circle, Figure::Square, Figure::Triangle, Figure::Diamond,
                                               Figure::Cross};
const char* shape_name(Figure s);  // "circle", ...

struct Colour {
  const char* name;
  float r, g, b;  // in [0, 1]
};
const std::vector<Colour>& palette();

struct Scene {
  Figure shape = Figure::Circle;
  int colour = 0;       // index into palette()
  int background = 1;   // index into palette(), never the shape's colour
  bool large = false;
  int count = 1;        // 1 to 3
  float cx[3], cy[3];   // centres in [0, 1]
  std::string word;     // the word the caption uses for the shape (a trigger word for new concepts)
};

// A random scene of one of the base shapes (circle .. cross); the star and the bar are kept out,
// as concepts the base model has never seen (the demo LoRA teaches it the bar).
Scene random_scene(uint64_t seed, uint64_t index);
// Same, with the given shape, named in captions by `word` (e.g. Bar named "zxq").
Scene random_scene_of(Figure shape, const std::string& word, uint64_t seed, uint64_t index);

// "two small red circles on a blue background"; "a large green zxq on a white background".
std::string caption(const Scene& s);

// A word of 3 to 5 lowercase letters that no caption uses: not a shape, colour, count or size word,
// nor "zxq", the demo LoRA's trigger. Captions that name the shape by such a word teach the base
// model what a user's new trigger word will ask of it: draw the colours and count the caption names.
std::string made_up_word(Rng& rng);

// Rasterised with 4x4 supersampling: [3, size, size] in [-1, 1].
std::vector<float> draw(const Scene& s, int size);

// Coverage in [0, 1] of one shape centred at (cx, cy) with half-size r (all in [0, 1] picture
// units), per pixel of a size x size picture, row-major.
std::vector<float> shape_mask(Figure shape, float cx, float cy, float r, int size);

// How much a picture looks like a given shape: the picture's pixels closer to `colour` than to
// `background` form a mask; the shape, placed at the mask's centroid and sized to its area, is
// compared with it by intersection over union (1 = the same pixels).
double shape_iou(const std::vector<float>& rgb, int size, int colour, int background, Figure shape);

// The same without knowing the colours: the background is the mean colour of the picture's border,
// and the shape's mask is every pixel farther than kForegroundDist from it (RGB in [0, 1]). Measures
// the form a model drew even when it got the colours wrong.
constexpr float kForegroundDist = 0.3f;
double shape_iou_any_colour(const std::vector<float>& rgb, int size, Figure shape);

// What a picture of one shape shows, read back to measure a model: the base shape (circle .. cross)
// with the highest shape_iou_any_colour, and the palette colours nearest to the mean of the
// foreground's pixels (-1 when nothing stands out) and of the border; and how many shapes it shows:
// the foreground's 4-connected parts of at least kMinShapePixels pixels (a small triangle, the
// smallest shape drawn, covers about 30 at 32x32; specks of a few pixels are not shapes).
constexpr int kMinShapePixels = 6;
struct PictureReading {
  Figure shape = Figure::Circle;
  int colour = -1, background = -1;
  int count = 0;
};
PictureReading read_picture(const std::vector<float>& rgb, int size);

}  // namespace graft
