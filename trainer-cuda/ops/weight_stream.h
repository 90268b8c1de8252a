// Layer offloading: the frozen weights of offloaded blocks live in pinned host memory (to_pinned). A
// model asks for a block's weights ahead of their use (prefetch: copied on the copy stream while the
// compute stream runs the block before), each op's weight slot gets the device copy through
// streamed() (the compute stream waits for that copy; a weight nobody asked for is copied then), and
// the model lets a block's copies go after its use (release). On the CPU nothing moves: host
// weights are used where they are.
#pragma once
#include <cstddef>
#include <vector>

#include "core/tensor.h"

namespace graft {

// `t` copied into pinned host memory (CUDA builds).
Tensor to_pinned(const Tensor& t);
void prefetch_weights(const std::vector<Tensor>& weights, Device device);
void release_weights(const std::vector<Tensor>& weights);
// The weight on `device` for one call: itself when it is there (or the device is the CPU), its
// prefetched copy, or a copy made now.
Tensor streamed(const Tensor& w, Device device);
size_t streamed_bytes();  // device bytes of the prefetched copies held now

}  // namespace graft
