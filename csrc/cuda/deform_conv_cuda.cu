// Modulated deformable convolution (DCNv2) with the official kernel's raw per-sample offset/mask addressing: the
// CUDA kernels behind deform_conv_driver.h, one thread per column element (col2im scatters with atomic adds).
#include <torch/library.h>

#include <ATen/cuda/Atomic.cuh>

#include "../deform_conv_driver.h"
#include "cuda_utils.cuh"

namespace glip {
namespace {

// Channel, tap, output position and deformable group of element `index` of a range's (C*K, n) columns.
struct ColumnElement {
  int64_t channel, tap, pos, group;
};

__device__ ColumnElement column_element(const DeformGeometry& g, const PositionRange& range, int64_t index) {
  const int64_t n = range.count, K = g.taps();
  const int64_t channel = index / (n * K);
  return {channel, (index / n) % K, range.begin + index % n, channel / g.channels_per_group()};
}

template <typename T>
__global__ void im2col_kernel(DeformGeometry g, PositionRange range, const T* image, const T* offset, const T* mask,
                              T* columns) {
  const int64_t K = g.taps(), L = g.positions();
  GLIP_CUDA_LOOP(index, g.channels * K * range.count) {
    const ColumnElement e = column_element(g, range, index);
    T y, x;
    deform_position(g, offset, e.group, e.tap, e.pos, &y, &x);
    columns[index] = mask[(e.group * K + e.tap) * L + e.pos] *
                     deform_bilinear(image + e.channel * g.height * g.width, g.height, g.width, y, x);
  }
}

template <typename T>
__global__ void col2im_kernel(DeformGeometry g, PositionRange range, const T* offset, const T* mask,
                              const T* grad_columns, T* grad_image) {
  const int64_t K = g.taps(), L = g.positions();
  GLIP_CUDA_LOOP(index, g.channels * K * range.count) {
    const ColumnElement e = column_element(g, range, index);
    T y, x;
    deform_position(g, offset, e.group, e.tap, e.pos, &y, &x);
    const BilinearCorners corner = deform_corners(y, x, g.height, g.width);
    if (!corner.valid) continue;
    const T value = grad_columns[index] * mask[(e.group * K + e.tap) * L + e.pos];
    const T ly = y - T(corner.y_low), lx = x - T(corner.x_low);
    T* plane = grad_image + e.channel * g.height * g.width;
    for (int q = 0; q < 4; ++q) {
      const int64_t yy = corner.y_low + q / 2, xx = corner.x_low + q % 2;
      if (yy < 0 || yy >= g.height || xx < 0 || xx >= g.width) continue;
      const T weight = (q / 2 ? ly : T(1) - ly) * (q % 2 ? lx : T(1) - lx);
      gpuAtomicAdd(plane + yy * g.width + xx, weight * value);
    }
  }
}

template <typename T>
__global__ void offset_mask_grad_kernel(DeformGeometry g, PositionRange range, const T* image, const T* offset,
                                        const T* mask, const T* grad_columns, T* grad_offset, T* grad_mask) {
  const int64_t K = g.taps(), L = g.positions(), per_group = g.channels_per_group(), n = range.count;
  GLIP_CUDA_LOOP(index, g.deformable_groups * K * n) {
    const int64_t local = index % n, k = (index / n) % K, group = index / (n * K);
    const int64_t pos = range.begin + local, mask_index = (group * K + k) * L + pos;
    T y, x;
    deform_position(g, offset, group, k, pos, &y, &x);
    const T m = mask[mask_index];
    T sum_y = T(0), sum_x = T(0), sum_mask = T(0);
    for (int64_t c = group * per_group; c < (group + 1) * per_group; ++c) {
      const T* plane = image + c * g.height * g.width;
      const T dcol = grad_columns[(c * K + k) * n + local];
      T dy, dx;
      deform_bilinear_coord_grad(plane, g.height, g.width, y, x, &dy, &dx);
      sum_y += dcol * m * dy;
      sum_x += dcol * m * dx;
      sum_mask += dcol * deform_bilinear(plane, g.height, g.width, y, x);
    }
    const int64_t offset_row = (group * 2 * K + 2 * k) * L;
    grad_offset[offset_row + pos] = sum_y;
    grad_offset[offset_row + L + pos] = sum_x;
    grad_mask[mask_index] = sum_mask;
  }
}

struct CudaDeformKernels {
  // The whole image in one range: the GPU has the memory, and wants the largest launches.
  static int64_t positions_per_range(const DeformGeometry& g) { return g.positions(); }
  // im2col reads the (C, H, W) image as it is.
  static at::Tensor sampling_layout(const at::Tensor& image) { return image; }

  template <typename T>
  static void im2col(const DeformGeometry& g, const PositionRange& range, const T* image, const T* offset,
                     const T* mask, T* columns) {
    const int64_t total = g.channels * g.taps() * range.count;
    im2col_kernel<T><<<blocks_for(total), kThreads, 0, current_stream()>>>(g, range, image, offset, mask, columns);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename T>
  static void col2im(const DeformGeometry& g, const PositionRange& range, const T* offset, const T* mask,
                     const T* grad_columns, T* grad_image) {
    const int64_t total = g.channels * g.taps() * range.count;
    col2im_kernel<T><<<blocks_for(total), kThreads, 0, current_stream()>>>(g, range, offset, mask, grad_columns,
                                                                            grad_image);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename T>
  static void offset_mask_grad(const DeformGeometry& g, const PositionRange& range, const T* image, const T* offset,
                               const T* mask, const T* grad_columns, T* grad_offset, T* grad_mask) {
    const int64_t total = g.deformable_groups * g.taps() * range.count;
    offset_mask_grad_kernel<T><<<blocks_for(total), kThreads, 0, current_stream()>>>(
        g, range, image, offset, mask, grad_columns, grad_offset, grad_mask);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

at::Tensor deform_conv_cuda(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias, int64_t stride_h,
                            int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
                            int64_t groups, int64_t deformable_groups) {
  c10::cuda::CUDAGuard guard(input.device());
  const DeformConvParams p{stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups, deformable_groups};
  return deform_conv_forward<CudaDeformKernels>(input, offset, mask, weight, bias, p);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
    const at::Tensor& weight, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
    int64_t dilation_w, int64_t groups, int64_t deformable_groups) {
  c10::cuda::CUDAGuard guard(input.device());
  const DeformConvParams p{stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups, deformable_groups};
  return deform_conv_backward<CudaDeformKernels>(grad, input, offset, mask, weight, p);
}

}  // namespace

TORCH_LIBRARY_IMPL(glip, CUDA, m) {
  m.impl("modulated_deform_conv", &deform_conv_cuda);
  m.impl("modulated_deform_conv_backward", &deform_conv_backward_cuda);
}

}  // namespace glip
