// A small deterministic random generator (splitmix64), the same on every machine, so that a seed
// fixes a run and a resumed run draws exactly what the uninterrupted one would have.
#pragma once
#include <cmath>
#include <cstdint>

namespace graft {

inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct Rng {
  uint64_t state;
  // Streams are keyed by (seed, purpose, index): no generator state has to be saved for resume.
  explicit Rng(uint64_t seed, uint64_t stream = 0, uint64_t index = 0)
      : state(mix64(mix64(seed) ^ mix64(stream * 0x100000001B3ull + 7) ^ mix64(index + 0x51ull))) {}
  uint64_t next() { return mix64(state += 0x9E3779B97F4A7C15ull); }
  // Uniform in [0, 1) with 24 random bits (exactly representable in float).
  float uniform() { return (float)(next() >> 40) * (1.0f / 16777216.0f); }
  // Standard normal by Box-Muller (one value per call; simple beats fast here).
  float normal() {
    double u1 = ((next() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double u2 = (next() >> 11) * (1.0 / 9007199254740992.0);
    return (float)(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
};

}  // namespace graft
