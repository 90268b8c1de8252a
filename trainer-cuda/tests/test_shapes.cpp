// The demo world's pictures and captions, and PNG round trips.
#include <stdlib.h>

#include <cmath>
#include <cstdio>

#include "core/image_io.h"
#include "core/rng.h"
#include "demo/shapes.h"
#include "test.h"

using namespace graft;

TEST(shapes_caption_says_what_is_drawn) {
  Scene s = random_scene(7, 0);
  s.shape = Figure::Circle;
  s.word = "circle";
  s.colour = 0;      // red
  s.background = 2;  // blue
  s.large = true;
  s.count = 1;
  s.cx[0] = s.cy[0] = 0.5f;
  CHECK(caption(s) == "a large red circle on a blue background");
  s.count = 2;
  s.background = 7;
  CHECK(caption(s) == "two large red circles on an orange background");
  s.word = "cross";
  CHECK(caption(s) == "two large red crosses on an orange background");
  // Pixels: the centre of a single large circle has its colour, the corner the background's.
  s.count = 1;
  s.background = 2;
  std::vector<float> img = draw(s, 32);
  auto px = [&](int c, int y, int x) { return img[((size_t)c * 32 + y) * 32 + x]; };
  CHECK_NEAR(px(0, 16, 16), 0.90 * 2 - 1, 1e-5);  // red
  CHECK_NEAR(px(2, 16, 16), 0.10 * 2 - 1, 1e-5);
  CHECK_NEAR(px(2, 0, 0), 0.95 * 2 - 1, 1e-5);    // blue background
}

TEST(shapes_are_deterministic_and_varied) {
  int counts[4] = {0, 0, 0, 0}, shapes[6] = {0, 0, 0, 0, 0, 0};
  for (int i = 0; i < 200; ++i) {
    Scene a = random_scene(3, i), b = random_scene(3, i);
    CHECK(caption(a) == caption(b) && draw(a, 16) == draw(b, 16));
    CHECK(a.colour != a.background);
    CHECK(a.shape != Figure::Star);  // the star is kept for the new concept
    counts[a.count]++;
    shapes[(int)a.shape]++;
  }
  for (int c = 1; c <= 3; ++c) CHECK(counts[c] > 20);
  for (int k = 0; k < 5; ++k) CHECK(shapes[k] > 20);
  Scene z = random_scene_of(Figure::Star, "zxq", 3, 0);
  CHECK(caption(z).find("zxq") != std::string::npos);
}

TEST(shapes_made_up_words_are_new_to_captions) {
  // The caption vocabulary: every word a caption of the demo world can hold.
  std::vector<std::string> vocab = {"a", "an", "two", "three", "large", "small", "on", "background", "zxq", "star", "bar"};
  for (Figure sh : kBaseShapeList) vocab.push_back(shape_name(sh));
  for (const Colour& c : palette()) vocab.push_back(c.name);
  int lengths[6] = {0, 0, 0, 0, 0, 0};
  for (int i = 0; i < 3000; ++i) {
    Rng a(5, 1, i), b(5, 1, i);
    const std::string w = made_up_word(a);
    CHECK(w == made_up_word(b));
    CHECK(w.size() >= 3 && w.size() <= 5);
    for (char c : w) CHECK(c >= 'a' && c <= 'z');
    for (const std::string& v : vocab) CHECK(w != v);
    lengths[w.size()]++;
  }
  for (int n = 3; n <= 5; ++n) CHECK(lengths[n] > 800);
  // A draw that collides is drawn again: find a stream whose first draw (the same letters
  // made_up_word draws first) is a caption word, and check that made_up_word gives another.
  int redraws = 0;
  for (uint64_t i = 0; i < 200000 && redraws == 0; ++i) {
    Rng r(9, 2, i);
    std::string w(3 + r.next() % 3, 'a');
    for (char& c : w) c = (char)('a' + r.next() % 26);
    if (w == "red" || w == "zxq" || w == "two") {
      Rng again(9, 2, i);
      CHECK(made_up_word(again) != w);
      ++redraws;
    }
  }
  CHECK(redraws == 1);
}

TEST(png_round_trip_and_errors) {
  char tmpl[] = "/tmp/graft-png-XXXXXX";
  CHECK(mkdtemp(tmpl) != nullptr);
  std::string path = std::string(tmpl) + "/a.png";
  std::vector<float> img = draw(random_scene(1, 5), 24);
  png_write(path, img.data(), 24, 24);
  int w = 0, h = 0;
  std::vector<float> back = png_read(path, &w, &h);
  CHECK(w == 24 && h == 24 && back.size() == img.size());
  for (size_t i = 0; i < img.size(); ++i) CHECK_NEAR(back[i], img[i], 1.0 / 127.5);  // 8-bit quantisation
  CHECK_THROWS(png_read(std::string(tmpl) + "/none.png", &w, &h), "none.png");
}

TEST(shape_iou_recognises_shapes) {
  // A drawn large star scores near 1 as a star and clearly lower as any base shape; same for a circle.
  Scene s = random_scene_of(Figure::Star, "zxq", 1, 0);
  s.count = 1;
  s.large = true;
  s.colour = 0;
  s.background = 4;
  s.cx[0] = 0.45f;
  s.cy[0] = 0.55f;
  std::vector<float> star = draw(s, 32);
  double as_star = shape_iou(star, 32, 0, 4, Figure::Star);
  double as_circle = shape_iou(star, 32, 0, 4, Figure::Circle);
  s.shape = Figure::Circle;
  std::vector<float> circle = draw(s, 32);
  double c_as_circle = shape_iou(circle, 32, 0, 4, Figure::Circle);
  double c_as_star = shape_iou(circle, 32, 0, 4, Figure::Star);
  std::printf("      star: as star %.2f, as circle %.2f; circle: as circle %.2f, as star %.2f\n", as_star, as_circle,
              c_as_circle, c_as_star);
  CHECK(as_star > 0.85 && c_as_circle > 0.85);
  CHECK(as_star > as_circle + 0.15 && c_as_circle > c_as_star + 0.15);
  CHECK(shape_iou(std::vector<float>(3 * 32 * 32, 1.0f), 32, 0, 4, Figure::Star) == 0.0);  // all white: no red shape
}

TEST(shape_iou_any_colour_measures_the_form_whatever_the_colours) {
  // demo_eval's measure: a bar in any colour pair scores near 1 as a bar and clearly lower as a circle,
  // a circle the other way round, and the colour-blind score is close to the colour-aware one.
  Scene s = random_scene_of(Figure::Bar, "zxq", 1, 0);
  s.count = 1;
  s.large = true;
  s.cx[0] = 0.5f;
  s.cy[0] = 0.5f;
  for (int colour : {0, 2, 5})
    for (int background : {4, 3, 1}) {
      if (colour == background) continue;
      s.colour = colour;
      s.background = background;
      s.shape = Figure::Bar;
      std::vector<float> bar = draw(s, 32);
      s.shape = Figure::Circle;
      std::vector<float> circle = draw(s, 32);
      const double bb = shape_iou_any_colour(bar, 32, Figure::Bar), bc = shape_iou_any_colour(bar, 32, Figure::Circle);
      const double cc = shape_iou_any_colour(circle, 32, Figure::Circle), cb = shape_iou_any_colour(circle, 32, Figure::Bar);
      CHECK(bb > 0.8 && cc > 0.85);  // a large bar is 6 pixels tall: its edge rows weigh more than a circle's
      CHECK(bb > bc + 0.2 && cc > cb + 0.2);
      // Edge pixels count as shape once they differ from the background by kForegroundDist, not by half.
      CHECK_NEAR(bb, shape_iou(bar, 32, colour, background, Figure::Bar), 0.12);
    }
  CHECK(shape_iou_any_colour(std::vector<float>(3 * 32 * 32, 0.3f), 32, Figure::Bar) == 0.0);  // a plain picture: no shape
}

TEST(read_picture_names_shape_and_colours_of_true_drawings) {
  // The base-model measure reads drawn pictures back: every base shape, large and small, in several
  // colour pairs and places, must read as itself with its colour and background.
  int right = 0, total = 0;
  for (int i = 0; i < 40; ++i) {
    Scene s = random_scene(5, i);
    s.count = 1;
    s.shape = kBaseShapeList[i % kBaseShapes];
    s.large = i % 2 == 0;
    PictureReading r = read_picture(draw(s, 32), 32);
    CHECK(r.colour == s.colour);
    CHECK(r.background == s.background);
    right += r.shape == s.shape;
    ++total;
  }
  std::printf("      shape read right in %d of %d true drawings\n", right, total);
  CHECK(right >= total - 2);  // a small shape is a few pixels: at most two may be ambiguous
  PictureReading plain = read_picture(std::vector<float>(3 * 32 * 32, 0.3f), 32);
  CHECK(plain.colour == -1);
}

TEST(read_picture_counts_the_shapes_of_true_drawings) {
  // Training pictures as drawn: one to three shapes in grid cells, every shape and size. Large
  // triangles in neighbouring cells can touch at their base corners and read as one; anything more
  // than that rare case would make the base model's count measure wrong, not the model.
  int by_count[4] = {}, wrong = 0;
  for (int i = 0; i < 300; ++i) {
    const Scene s = random_scene(6, i);
    const PictureReading r = read_picture(draw(s, 32), 32);
    if (r.count != s.count) std::printf("      %s: read %d\n", caption(s).c_str(), r.count);
    wrong += r.count != s.count;
    ++by_count[s.count];
  }
  CHECK(wrong <= 3);
  CHECK(by_count[1] > 0 && by_count[2] > 0 && by_count[3] > 0);
  CHECK(read_picture(std::vector<float>(3 * 32 * 32, 0.3f), 32).count == 0);
  // Specks below kMinShapePixels are not shapes.
  Scene s = random_scene(6, 0);
  s.count = 1;
  std::vector<float> pic = draw(s, 32);
  const Colour& fg = palette()[s.colour];
  const float c[3] = {fg.r, fg.g, fg.b};
  const int corner = s.cx[0] < 0.5f ? 30 : 0;  // a 2x2 speck in the corner away from the shape
  for (int k = 0; k < 3; ++k)
    for (int y = 14; y < 16; ++y)
      for (int x = corner; x < corner + 2; ++x) pic[(size_t)k * 1024 + y * 32 + x] = c[k] * 2 - 1;
  CHECK(read_picture(pic, 32).count == 1);
}
