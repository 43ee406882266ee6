// Launch helpers shared by the CUDA kernels.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace glip {

constexpr int kThreads = 256;

// The stream kernels run on (c10's, not ATen's CUDAContext.h, which needs the cuBLAS/cuSPARSE headers).
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Blocks for a grid-stride loop over `total` items (capped; the loop covers the rest).
inline int blocks_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535));
}

}  // namespace glip

#define GLIP_CUDA_LOOP(index, total)                                                                 \
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < (total); \
       index += static_cast<int64_t>(blockDim.x) * gridDim.x)
