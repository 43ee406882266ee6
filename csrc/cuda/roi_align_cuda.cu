// ROIAlign forward and backward with torchvision's semantics (aligned flag) on CUDA; one thread per output
// element, the backward scattering with atomic adds. Half and bfloat16 compute in float.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <ATen/cuda/Atomic.cuh>

#include "../glip_math.h"
#include "../glip_ops.h"
#include "cuda_utils.cuh"

namespace glip {
namespace {

struct RoiShape {
  int64_t channels, height, width, pooled_h, pooled_w, sampling_ratio;
  bool aligned;
};

// Output bin (roi, channel, ph, pw) of element `index` of a (K, C, pooled_h, pooled_w) output.
struct RoiBin {
  int64_t roi, channel, ph, pw;
};

__device__ RoiBin roi_bin(int64_t index, const RoiShape& s) {
  const int64_t pw = index % s.pooled_w, ph = (index / s.pooled_w) % s.pooled_h;
  const int64_t rest = index / s.pooled_w / s.pooled_h;
  return {rest / s.channels, rest % s.channels, ph, pw};
}

template <typename scalar_t, typename acc_t>
__device__ RoiBox<acc_t> load_box(const scalar_t* rois, int64_t n, acc_t spatial_scale, const RoiShape& s) {
  acc_t roi[5];
  for (int d = 0; d < 5; ++d) roi[d] = static_cast<acc_t>(rois[n * 5 + d]);
  return roi_box(roi, spatial_scale, s.pooled_h, s.pooled_w, s.sampling_ratio, s.aligned);
}

template <typename scalar_t, typename acc_t>
__global__ void roi_align_forward_kernel(int64_t total, const scalar_t* input, const scalar_t* rois,
                                         acc_t spatial_scale, RoiShape s, scalar_t* output) {
  GLIP_CUDA_LOOP(index, total) {
    const RoiBin bin = roi_bin(index, s);
    const RoiBox<acc_t> box = load_box(rois, bin.roi, spatial_scale, s);
    const scalar_t* plane = input + (box.batch_index * s.channels + bin.channel) * s.height * s.width;
    const int64_t grid = box.grid_h * box.grid_w;
    acc_t sum = acc_t(0);
    for (int64_t iy = 0; iy < box.grid_h; ++iy) {
      const acc_t y = roi_sample_y(box, bin.ph, iy);
      for (int64_t ix = 0; ix < box.grid_w; ++ix) {
        const RoiSample<acc_t> p = roi_sample(s.height, s.width, y, roi_sample_x(box, bin.pw, ix));
        if (!p.valid) continue;
        sum += p.w1 * static_cast<acc_t>(plane[p.y_low * s.width + p.x_low]) +
               p.w2 * static_cast<acc_t>(plane[p.y_low * s.width + p.x_high]) +
               p.w3 * static_cast<acc_t>(plane[p.y_high * s.width + p.x_low]) +
               p.w4 * static_cast<acc_t>(plane[p.y_high * s.width + p.x_high]);
      }
    }
    output[index] = static_cast<scalar_t>(sum / acc_t(grid > 1 ? grid : 1));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void roi_align_backward_kernel(int64_t total, const scalar_t* grad, const scalar_t* rois,
                                          acc_t spatial_scale, RoiShape s, scalar_t* grad_input) {
  GLIP_CUDA_LOOP(index, total) {
    const RoiBin bin = roi_bin(index, s);
    const RoiBox<acc_t> box = load_box(rois, bin.roi, spatial_scale, s);
    scalar_t* plane = grad_input + (box.batch_index * s.channels + bin.channel) * s.height * s.width;
    const acc_t count = acc_t(box.grid_h * box.grid_w);
    const acc_t grad_bin = static_cast<acc_t>(grad[index]);
    for (int64_t iy = 0; iy < box.grid_h; ++iy) {
      const acc_t y = roi_sample_y(box, bin.ph, iy);
      for (int64_t ix = 0; ix < box.grid_w; ++ix) {
        const RoiSample<acc_t> p = roi_sample(s.height, s.width, y, roi_sample_x(box, bin.pw, ix));
        if (!p.valid) continue;
        gpuAtomicAdd(plane + p.y_low * s.width + p.x_low, static_cast<scalar_t>(grad_bin * p.w1 / count));
        gpuAtomicAdd(plane + p.y_low * s.width + p.x_high, static_cast<scalar_t>(grad_bin * p.w2 / count));
        gpuAtomicAdd(plane + p.y_high * s.width + p.x_low, static_cast<scalar_t>(grad_bin * p.w3 / count));
        gpuAtomicAdd(plane + p.y_high * s.width + p.x_high, static_cast<scalar_t>(grad_bin * p.w4 / count));
      }
    }
  }
}

at::Tensor roi_align_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                          int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input.dim() == 4, "roi_align: input must be (N, C, H, W)");
  check_roi_args(input, rois);
  c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output = at::zeros({rois.size(0), input.size(1), pooled_h, pooled_w}, input.options());
  const int64_t total = output.numel();
  if (total == 0) return output;
  const at::Tensor input_c = input.contiguous(), rois_c = rois.contiguous();
  const RoiShape s{input.size(1), input.size(2), input.size(3), pooled_h, pooled_w, sampling_ratio, aligned};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    roi_align_forward_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, current_stream()>>>(
        total, input_c.const_data_ptr<scalar_t>(), rois_c.const_data_ptr<scalar_t>(), static_cast<acc_t>(spatial_scale),
        s, output.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_args(grad, rois);
  c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  const int64_t total = grad.numel();
  if (total == 0) return grad_input;
  const at::Tensor grad_c = grad.contiguous(), rois_c = rois.contiguous();
  const RoiShape s{channels, height, width, pooled_h, pooled_w, sampling_ratio, aligned};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    roi_align_backward_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, current_stream()>>>(
        total, grad_c.const_data_ptr<scalar_t>(), rois_c.const_data_ptr<scalar_t>(), static_cast<acc_t>(spatial_scale),
        s, grad_input.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(glip, CUDA, m) {
  m.impl("roi_align", &roi_align_cuda);
  m.impl("roi_align_backward", &roi_align_backward_cuda);
}

}  // namespace glip
