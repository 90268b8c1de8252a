// A moment's decay as the update kernels use it: m = b m + c x, with c = 1 - beta formed in double
// from the double beta (as torch forms it) and only then rounded to float.
#pragma once

namespace graft {

struct Betas {
  float b1, c1, b2, c2;
};

}  // namespace graft
