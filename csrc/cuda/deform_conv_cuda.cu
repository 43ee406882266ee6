// Modulated deformable convolution (DCNv2) with the official kernel's raw per-sample offset/mask addressing: the
// CUDA kernels behind deform_conv_driver.h, one thread per column element (col2im scatters with atomic adds).
#include <torch/library.h>

#include <ATen/cuda/Atomic.cuh>

#include "../deform_conv_driver.h"
#include "cuda_utils.cuh"

namespace glip {
namespace {

template <typename T>
__global__ void im2col_kernel(DeformGeometry g, const T* image, const T* offset, const T* mask, T* columns) {
  const int64_t K = g.taps(), L = g.positions();
  GLIP_CUDA_LOOP(index, g.channels * K * L) {
    const int64_t pos = index % L, k = (index / L) % K, c = index / (L * K);
    const int64_t group = c / g.channels_per_group();
    T y, x;
    deform_position(g, offset, group, k, pos, &y, &x);
    columns[index] =
        mask[(group * K + k) * L + pos] * deform_bilinear(image + c * g.height * g.width, g.height, g.width, y, x);
  }
}

template <typename T>
__global__ void col2im_kernel(DeformGeometry g, const T* offset, const T* mask, const T* grad_columns, T* grad_image) {
  const int64_t K = g.taps(), L = g.positions();
  GLIP_CUDA_LOOP(index, g.channels * K * L) {
    const int64_t pos = index % L, k = (index / L) % K, c = index / (L * K);
    const int64_t group = c / g.channels_per_group();
    T y, x;
    deform_position(g, offset, group, k, pos, &y, &x);
    const BilinearCorners corner = deform_corners(y, x, g.height, g.width);
    if (!corner.valid) continue;
    const T value = grad_columns[index] * mask[(group * K + k) * L + pos];
    const T ly = y - T(corner.y_low), lx = x - T(corner.x_low);
    T* plane = grad_image + c * g.height * g.width;
    for (int q = 0; q < 4; ++q) {
      const int64_t yy = corner.y_low + q / 2, xx = corner.x_low + q % 2;
      if (yy < 0 || yy >= g.height || xx < 0 || xx >= g.width) continue;
      const T weight = (q / 2 ? ly : T(1) - ly) * (q % 2 ? lx : T(1) - lx);
      gpuAtomicAdd(plane + yy * g.width + xx, weight * value);
    }
  }
}

template <typename T>
__global__ void offset_mask_grad_kernel(DeformGeometry g, const T* image, const T* offset, const T* mask,
                                        const T* grad_columns, T* grad_offset, T* grad_mask) {
  const int64_t K = g.taps(), L = g.positions(), per_group = g.channels_per_group();
  GLIP_CUDA_LOOP(index, g.deformable_groups * K * L) {
    const int64_t pos = index % L, k = (index / L) % K, group = index / (L * K);
    T y, x;
    deform_position(g, offset, group, k, pos, &y, &x);
    const T m = mask[index];
    T sum_y = T(0), sum_x = T(0), sum_mask = T(0);
    for (int64_t c = group * per_group; c < (group + 1) * per_group; ++c) {
      const T* plane = image + c * g.height * g.width;
      const T dcol = grad_columns[(c * K + k) * L + pos];
      T dy, dx;
      deform_bilinear_coord_grad(plane, g.height, g.width, y, x, &dy, &dx);
      sum_y += dcol * m * dy;
      sum_x += dcol * m * dx;
      sum_mask += dcol * deform_bilinear(plane, g.height, g.width, y, x);
    }
    const int64_t offset_row = (group * 2 * K + 2 * k) * L;
    grad_offset[offset_row + pos] = sum_y;
    grad_offset[offset_row + L + pos] = sum_x;
    grad_mask[index] = sum_mask;
  }
}

struct CudaDeformKernels {
  template <typename T>
  static void im2col(const DeformGeometry& g, const T* image, const T* offset, const T* mask, T* columns) {
    const int64_t total = g.channels * g.taps() * g.positions();
    im2col_kernel<T><<<blocks_for(total), kThreads, 0, current_stream()>>>(g, image, offset, mask, columns);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename T>
  static void col2im(const DeformGeometry& g, const T* offset, const T* mask, const T* grad_columns, T* grad_image) {
    const int64_t total = g.channels * g.taps() * g.positions();
    col2im_kernel<T><<<blocks_for(total), kThreads, 0, current_stream()>>>(g, offset, mask, grad_columns, grad_image);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename T>
  static void offset_mask_grad(const DeformGeometry& g, const T* image, const T* offset, const T* mask,
                               const T* grad_columns, T* grad_offset, T* grad_mask) {
    const int64_t total = g.deformable_groups * g.taps() * g.positions();
    offset_mask_grad_kernel<T><<<blocks_for(total), kThreads, 0, current_stream()>>>(
        g, image, offset, mask, grad_columns, grad_offset, grad_mask);
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
