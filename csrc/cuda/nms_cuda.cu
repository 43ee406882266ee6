// Class-aware NMS with the official ml_nms semantics on CUDA: a kernel marks, for every box, the later boxes (in
// score order) it suppresses as 64-bit masks; the greedy pass over the masks runs on the host, as officially.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <vector>

#include "../glip_math.h"
#include "../glip_ops.h"
#include "cuda_utils.cuh"

namespace glip {
namespace {

constexpr int kBoxesPerWord = 64;

template <typename T>
__global__ void suppression_mask_kernel(int64_t n, T threshold, const T* boxes, const int64_t* labels,
                                        unsigned long long* mask) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) return;  // only later boxes are ever suppressed
  const int64_t words = (n + kBoxesPerWord - 1) / kBoxesPerWord;
  const int64_t row_size = min(n - row_block * kBoxesPerWord, static_cast<int64_t>(kBoxesPerWord));
  const int64_t col_size = min(n - col_block * kBoxesPerWord, static_cast<int64_t>(kBoxesPerWord));
  __shared__ T col_boxes[kBoxesPerWord * 4];
  __shared__ int64_t col_labels[kBoxesPerWord];
  if (threadIdx.x < col_size) {
    const int64_t j = col_block * kBoxesPerWord + threadIdx.x;
    for (int d = 0; d < 4; ++d) col_boxes[threadIdx.x * 4 + d] = boxes[j * 4 + d];
    col_labels[threadIdx.x] = labels[j];
  }
  __syncthreads();
  if (threadIdx.x >= row_size) return;
  const int64_t i = row_block * kBoxesPerWord + threadIdx.x;
  const T* box = boxes + i * 4;
  unsigned long long bits = 0;
  for (int64_t j = (row_block == col_block) ? threadIdx.x + 1 : 0; j < col_size; ++j) {
    const T iou = labels[i] == col_labels[j] ? legacy_iou(box, col_boxes + j * 4) : T(0);
    if (iou > threshold) bits |= 1ULL << j;
  }
  mask[i * words + col_block] = bits;
}

at::Tensor ml_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& labels,
                       double iou_threshold) {
  check_nms_args(boxes, scores, labels);
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  c10::cuda::CUDAGuard guard(boxes.device());
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted_boxes = boxes.index_select(0, order).contiguous();
  const at::Tensor sorted_labels = labels.index_select(0, order).contiguous();
  const int64_t words = (n + kBoxesPerWord - 1) / kBoxesPerWord;
  at::Tensor mask = at::empty({n * words}, boxes.options().dtype(at::kLong));
  const dim3 grid(static_cast<unsigned>(words), static_cast<unsigned>(words));
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "ml_nms_cuda", [&] {
    suppression_mask_kernel<scalar_t><<<grid, kBoxesPerWord, 0, current_stream()>>>(
        n, static_cast<scalar_t>(iou_threshold), sorted_boxes.const_data_ptr<scalar_t>(),
        sorted_labels.const_data_ptr<int64_t>(),
        reinterpret_cast<unsigned long long*>(mask.mutable_data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor host_mask = mask.cpu();
  const auto* bits = reinterpret_cast<const unsigned long long*>(host_mask.const_data_ptr<int64_t>());
  std::vector<unsigned long long> removed(words, 0);
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t word = i / kBoxesPerWord, bit = i % kBoxesPerWord;
    if (removed[word] & (1ULL << bit)) continue;
    kept.push_back(i);
    for (int64_t w = word; w < words; ++w) removed[w] |= bits[i * words + w];
  }
  const at::Tensor kept_positions =
      at::from_blob(kept.data(), {static_cast<int64_t>(kept.size())}, at::TensorOptions().dtype(at::kLong))
          .to(boxes.device());
  return std::get<0>(order.index_select(0, kept_positions).sort(/*stable=*/false, /*dim=*/0, /*descending=*/false));
}

}  // namespace

TORCH_LIBRARY_IMPL(glip, CUDA, m) { m.impl("ml_nms", &ml_nms_cuda); }

}  // namespace glip
