// Device-independent part of the modulated deformable convolution: per sample and per range of output positions,
// a deformable im2col followed by one batched matrix product over the groups (forward), and the transposed steps
// (backward). `Kernels` supplies the device's im2col, col2im and offset/mask-gradient loops over a PositionRange
// (cpu/deform_conv_cpu.cpp, cuda/deform_conv_cuda.cu), how many positions one range may hold (the columns buffer
// is (C*K, range.count), so ranges bound its memory; the whole image at once where that is best), and the layout
// of a sample's image that its im2col reads (`sampling_layout`, made once per sample).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "glip_math.h"
#include "glip_ops.h"

namespace glip {

// Output positions [begin, begin + count) of one sample; column buffers of a range are (C*K, count).
struct PositionRange {
  int64_t begin, count;
};

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
  // weight (O, C/groups, kh, kw) -> (groups, O/groups, C/groups * K); columns (C*K, n) -> (groups, C*K/groups, n)
  const at::Tensor w = weight.contiguous().view({p.groups, out_channels / p.groups, -1});
  const int64_t chunk = std::max<int64_t>(1, std::min(L, Kernels::positions_per_range(g)));
  at::Tensor column_buffer = at::empty({g.channels * g.taps() * chunk}, x.options());
  at::Tensor product_buffer = chunk < L ? at::empty({out_channels * chunk}, x.options()) : at::Tensor();
  const int64_t image_size = g.channels * g.height * g.width;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "modulated_deform_conv", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      at::Tensor out_b = output[b].view({p.groups, out_channels / p.groups, L});
      const at::Tensor sampled = Kernels::sampling_layout(x[b]);
      for (int64_t begin = 0; begin < L; begin += chunk) {
        const PositionRange range{begin, std::min(chunk, L - begin)};
        Kernels::template im2col<scalar_t>(g, range, sampled.const_data_ptr<scalar_t>(),
                                           off.const_data_ptr<scalar_t>() + b * g.offset_sample_stride,
                                           msk.const_data_ptr<scalar_t>() + b * g.mask_sample_stride,
                                           column_buffer.mutable_data_ptr<scalar_t>());
        const at::Tensor columns = column_buffer.narrow(0, 0, g.channels * g.taps() * range.count)
                                       .view({p.groups, -1, range.count});
        if (range.count == L) {
          at::bmm_out(out_b, w, columns);
        } else {
          at::Tensor product = product_buffer.narrow(0, 0, out_channels * range.count)
                                   .view({p.groups, out_channels / p.groups, range.count});
          at::bmm_out(product, w, columns);
          out_b.narrow(2, range.begin, range.count).copy_(product);
        }
      }
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
  const int64_t chunk = std::max<int64_t>(1, std::min(L, Kernels::positions_per_range(g)));
  at::Tensor column_buffer = at::empty({g.channels * g.taps() * chunk}, x.options());
  at::Tensor grad_column_buffer = at::empty({g.channels * g.taps() * chunk}, x.options());
  const int64_t image_size = g.channels * g.height * g.width;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "modulated_deform_conv_backward", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      const scalar_t* image = x.const_data_ptr<scalar_t>() + b * image_size;
      const scalar_t* off_b = off.const_data_ptr<scalar_t>() + b * g.offset_sample_stride;
      const scalar_t* mask_b = msk.const_data_ptr<scalar_t>() + b * g.mask_sample_stride;
      const at::Tensor dy_b = dy[b].view({p.groups, out_channels / p.groups, L});
      const at::Tensor sampled = Kernels::sampling_layout(x[b]);
      for (int64_t begin = 0; begin < L; begin += chunk) {
        const PositionRange range{begin, std::min(chunk, L - begin)};
        const int64_t column_numel = g.channels * g.taps() * range.count;
        const at::Tensor columns = column_buffer.narrow(0, 0, column_numel).view({p.groups, -1, range.count});
        at::Tensor grad_columns = grad_column_buffer.narrow(0, 0, column_numel).view({p.groups, -1, range.count});
        const at::Tensor dy_range = dy_b.narrow(2, range.begin, range.count);
        at::bmm_out(grad_columns, w.transpose(1, 2), dy_range);
        const scalar_t* dcol = grad_columns.const_data_ptr<scalar_t>();
        Kernels::template offset_mask_grad<scalar_t>(
            g, range, image, off_b, mask_b, dcol,
            grad_offset.mutable_data_ptr<scalar_t>() + b * g.offset_sample_stride,
            grad_mask.mutable_data_ptr<scalar_t>() + b * g.mask_sample_stride);
        Kernels::template col2im<scalar_t>(g, range, off_b, mask_b, dcol,
                                           grad_input.mutable_data_ptr<scalar_t>() + b * image_size);
        Kernels::template im2col<scalar_t>(g, range, sampled.const_data_ptr<scalar_t>(), off_b, mask_b,
                                           column_buffer.mutable_data_ptr<scalar_t>());
        grad_weight.baddbmm_(dy_range, columns.transpose(1, 2));
      }
    }
  });
  return {grad_input, grad_offset, grad_mask, grad_weight.view(weight.sizes())};
}

}  // namespace glip
