// Shared declarations of the glip:: custom-op kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace glip {

// Output side of a modulated deformable conv from the input size and the conv parameters.
inline int64_t conv_out_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  return (size + 2 * pad - (dilation * (kernel - 1) + 1)) / stride + 1;
}

// Checks shared by the CPU and CUDA deformable-conv kernels (shapes, groups, offset/mask buffer sizes).
inline void check_deform_conv_args(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                                   const at::Tensor& weight, int64_t out_h, int64_t out_w, int64_t groups,
                                   int64_t deformable_groups) {
  TORCH_CHECK(input.dim() == 4 && weight.dim() == 4, "modulated_deform_conv: expected 4D input and weight");
  TORCH_CHECK(offset.dim() >= 1 && mask.dim() >= 1, "modulated_deform_conv: offset/mask need a batch dimension");
  TORCH_CHECK(offset.size(0) == input.size(0) && mask.size(0) == input.size(0),
              "modulated_deform_conv: offset/mask batch size differs from the input's");
  TORCH_CHECK(groups > 0 && deformable_groups > 0, "modulated_deform_conv: groups must be positive");
  TORCH_CHECK(input.size(1) == weight.size(1) * groups, "modulated_deform_conv: input has ", input.size(1),
              " channels, weight expects ", weight.size(1) * groups);
  TORCH_CHECK(weight.size(0) % groups == 0, "modulated_deform_conv: out channels not divisible by groups");
  TORCH_CHECK(input.size(1) % deformable_groups == 0,
              "modulated_deform_conv: channels not divisible by deformable groups");
  TORCH_CHECK(out_h > 0 && out_w > 0, "modulated_deform_conv: empty output grid");
  const int64_t taps = weight.size(2) * weight.size(3);
  const int64_t batch = input.size(0);
  if (batch > 0) {
    // The kernels read the offsets/mask of each sample as one flat buffer (the official raw addressing), so
    // a larger grid than the output's is allowed, a smaller one is not.
    TORCH_CHECK(offset.numel() / batch >= 2 * deformable_groups * taps * out_h * out_w,
                "modulated_deform_conv: offset of shape ", offset.sizes(), " is too small for an output grid of ",
                out_h, "x", out_w);
    TORCH_CHECK(mask.numel() / batch >= deformable_groups * taps * out_h * out_w,
                "modulated_deform_conv: mask of shape ", mask.sizes(), " is too small for an output grid of ", out_h,
                "x", out_w);
  }
}

inline void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& labels) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "ml_nms: boxes must be (N, 4)");
  TORCH_CHECK(
      scores.dim() == 1 && labels.dim() == 1 && scores.size(0) == boxes.size(0) && labels.size(0) == boxes.size(0),
      "ml_nms: scores and labels must be (N,)");
  TORCH_CHECK(labels.scalar_type() == at::kLong, "ml_nms: labels must be int64");
}

inline void check_roi_args(const at::Tensor& values, const at::Tensor& rois) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "roi_align: rois must be (K, 5)");
  TORCH_CHECK(values.scalar_type() == rois.scalar_type(), "roi_align: features and rois differ in dtype");
}

inline void check_focal_loss_args(const at::Tensor& logits, const at::Tensor& targets) {
  TORCH_CHECK(logits.sizes() == targets.sizes(), "token_sigmoid_focal_loss: logits ", logits.sizes(), " and targets ",
              targets.sizes(), " differ in shape");
  TORCH_CHECK(logits.scalar_type() == targets.scalar_type(),
              "token_sigmoid_focal_loss: logits and targets differ in dtype");
}

}  // namespace glip
