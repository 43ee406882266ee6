// Device-independent part of the modulated deformable convolution: per sample, a deformable im2col followed by
// one batched matrix product over the groups (forward), and the transposed steps (backward). `Kernels` supplies
// the device's im2col, col2im and offset/mask-gradient loops (cpu/deform_conv_cpu.cpp, cuda/deform_conv_cuda.cu).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <optional>
#include <tuple>

#include "glip_math.h"
#include "glip_ops.h"

namespace glip {

struct DeformConvParams {
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups, deformable_groups;
};

// Geometry of a call; validates the arguments. Offsets/mask of sample b start at b * (their numel / batch).
inline DeformGeometry deform_geometry(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                                      const at::Tensor& weight, const DeformConvParams& p) {
  DeformGeometry g;
  g.channels = input.size(1);
  g.height = input.size(2);
  g.width = input.size(3);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = p.stride_h;
  g.stride_w = p.stride_w;
  g.pad_h = p.pad_h;
  g.pad_w = p.pad_w;
  g.dilation_h = p.dilation_h;
  g.dilation_w = p.dilation_w;
  g.out_h = conv_out_size(g.height, g.kernel_h, p.stride_h, p.pad_h, p.dilation_h);
  g.out_w = conv_out_size(g.width, g.kernel_w, p.stride_w, p.pad_w, p.dilation_w);
  g.deformable_groups = p.deformable_groups;
  check_deform_conv_args(input, offset, mask, weight, g.out_h, g.out_w, p.groups, p.deformable_groups);
  const int64_t batch = input.size(0);
  g.offset_sample_stride = batch > 0 ? offset.numel() / batch : 0;
  g.mask_sample_stride = batch > 0 ? mask.numel() / batch : 0;
  return g;
}

template <typename Kernels>
at::Tensor deform_conv_forward(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const DeformConvParams& p) {
  const at::Tensor x = input.contiguous(), off = offset.contiguous(), msk = mask.contiguous();
  const DeformGeometry g = deform_geometry(x, off, msk, weight, p);
  const int64_t batch = x.size(0), out_channels = weight.size(0), L = g.positions();
  at::Tensor output = at::empty({batch, out_channels, g.out_h, g.out_w}, x.options());
  // weight (O, C/groups, kh, kw) -> (groups, O/groups, C/groups * K); columns (C*K, L) -> (groups, C*K/groups, L)
  const at::Tensor w = weight.contiguous().view({p.groups, out_channels / p.groups, -1});
  at::Tensor columns = at::empty({g.channels * g.taps(), L}, x.options());
  const at::Tensor columns_by_group = columns.view({p.groups, -1, L});
  const int64_t image_size = g.channels * g.height * g.width;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "modulated_deform_conv", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      Kernels::template im2col<scalar_t>(
          g, x.const_data_ptr<scalar_t>() + b * image_size, off.const_data_ptr<scalar_t>() + b * g.offset_sample_stride,
          msk.const_data_ptr<scalar_t>() + b * g.mask_sample_stride, columns.mutable_data_ptr<scalar_t>());
      at::Tensor out_b = output[b].view({p.groups, out_channels / p.groups, L});
      at::bmm_out(out_b, w, columns_by_group);
    }
  });
  if (bias.has_value() && bias->defined()) output.add_(bias->view({1, out_channels, 1, 1}));
  return output;
}

// Gradients of input, offset, mask and weight (the bias gradient is grad.sum over N, H, W, taken by the caller).
template <typename Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
    const at::Tensor& weight, const DeformConvParams& p) {
  const at::Tensor x = input.contiguous(), off = offset.contiguous(), msk = mask.contiguous();
  const DeformGeometry g = deform_geometry(x, off, msk, weight, p);
  const at::Tensor dy = grad.contiguous();
  const int64_t batch = x.size(0), out_channels = weight.size(0), L = g.positions();
  at::Tensor grad_input = at::zeros_like(x);
  at::Tensor grad_offset = at::zeros_like(off);
  at::Tensor grad_mask = at::zeros_like(msk);
  at::Tensor grad_weight =
      at::zeros({p.groups, out_channels / p.groups, g.channels / p.groups * g.taps()}, x.options());
  const at::Tensor w = weight.contiguous().view({p.groups, out_channels / p.groups, -1});
  at::Tensor columns = at::empty({g.channels * g.taps(), L}, x.options());
  at::Tensor grad_columns = at::empty({g.channels * g.taps(), L}, x.options());
  const at::Tensor columns_by_group = columns.view({p.groups, -1, L});
  at::Tensor grad_columns_by_group = grad_columns.view({p.groups, -1, L});
  const int64_t image_size = g.channels * g.height * g.width;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "modulated_deform_conv_backward", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      const scalar_t* image = x.const_data_ptr<scalar_t>() + b * image_size;
      const scalar_t* off_b = off.const_data_ptr<scalar_t>() + b * g.offset_sample_stride;
      const scalar_t* mask_b = msk.const_data_ptr<scalar_t>() + b * g.mask_sample_stride;
      const at::Tensor dy_b = dy[b].view({p.groups, out_channels / p.groups, L});
      at::bmm_out(grad_columns_by_group, w.transpose(1, 2), dy_b);
      const scalar_t* dcol = grad_columns.const_data_ptr<scalar_t>();
      Kernels::template offset_mask_grad<scalar_t>(
          g, image, off_b, mask_b, dcol, grad_offset.mutable_data_ptr<scalar_t>() + b * g.offset_sample_stride,
          grad_mask.mutable_data_ptr<scalar_t>() + b * g.mask_sample_stride);
      Kernels::template col2im<scalar_t>(g, off_b, mask_b, dcol,
                                         grad_input.mutable_data_ptr<scalar_t>() + b * image_size);
      Kernels::template im2col<scalar_t>(g, image, off_b, mask_b, columns.mutable_data_ptr<scalar_t>());
      grad_weight.baddbmm_(dy_b, columns_by_group.transpose(1, 2));
    }
  });
  return {grad_input, grad_offset, grad_mask, grad_weight.view(weight.sizes())};
}

}  // namespace glip
