// How an op file reaches the CUDA kernels. Files that run ops on whichever device their tensors are
// on (ops.cpp, update_ops.cpp) are compiled twice: for the CPU-only objects, and by nvcc with
// -DGRAFT_CUDA, where ON_CUDA(...) is the call itself. Without CUDA no CUDA tensor can exist, so the
// branch only fails.
#pragma once
#include "core/common.h"

#ifdef GRAFT_CUDA
#include "cuda/ops_gpu.h"
#define ON_CUDA(...) __VA_ARGS__
#else
#define ON_CUDA(...) ::graft::no_cuda_build()
#endif

namespace graft {
[[noreturn]] inline void no_cuda_build() { fail("internal: a CUDA tensor in a build without CUDA"); }
}  // namespace graft
