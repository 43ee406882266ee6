"""Autograd and fake-tensor rules of the compiled kernels torch.ops.glip.*, registered once the extension loads.

The backward formulas call the kernels' *_backward ops; the fake (meta) implementations give output shapes only,
for torch.compile and torch.library.opcheck. layers.dispatch.load_extension calls register_autograd_and_fakes.
"""
import torch

from .conv_geometry import conv_output_size


def _roi_align_setup(ctx, inputs, output) -> None:
    input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.config = (spatial_scale, pooled_h, pooled_w, *input.shape, sampling_ratio, aligned)


def _roi_align_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    grad_input = torch.ops.glip.roi_align_backward(grad, rois, *ctx.config)
    return grad_input, None, None, None, None, None, None


def _focal_setup(ctx, inputs, output) -> None:
    # The forward computed d loss / d logits in the same pass (compute_grad=True), so backward is one product.
    if not inputs[4]:
        raise RuntimeError("glip::token_sigmoid_focal_loss needs compute_grad=True for autograd")
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])


def _focal_backward(ctx, grad_loss, grad_derivative):
    (derivative,) = ctx.saved_tensors
    return grad_loss * derivative, None, None, None, None


def _deform_setup(ctx, inputs, output) -> None:
    input, offset, mask, weight, bias = inputs[:5]
    ctx.save_for_backward(input, offset, mask, weight)
    ctx.has_bias = bias is not None
    ctx.config = inputs[5:]


def _deform_backward(ctx, grad):
    input, offset, mask, weight = ctx.saved_tensors
    grads = torch.ops.glip.modulated_deform_conv_backward(grad, input, offset, mask, weight, *ctx.config)
    grad_bias = grad.sum((0, 2, 3)) if ctx.has_bias else None
    return (*grads, grad_bias) + (None,) * len(ctx.config)


def register_autograd_and_fakes() -> None:
    """Backward formulas (as the *_backward ops) and shape-only implementations for torch.compile/meta."""
    library = torch.library
    library.register_autograd("glip::roi_align", _roi_align_backward, setup_context=_roi_align_setup)
    library.register_autograd("glip::token_sigmoid_focal_loss", _focal_backward, setup_context=_focal_setup)
    library.register_autograd("glip::modulated_deform_conv", _deform_backward, setup_context=_deform_setup)

    @library.register_fake("glip::ml_nms")
    def _(boxes, scores, labels, iou_threshold):
        return boxes.new_empty((library.get_ctx().new_dynamic_size(),), dtype=torch.int64)

    @library.register_fake("glip::roi_align")
    def _(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
        return input.new_empty((rois.shape[0], input.shape[1], pooled_h, pooled_w))

    @library.register_fake("glip::roi_align_backward")
    def _(grad, rois, spatial_scale, pooled_h, pooled_w, batch, channels, height, width, sampling_ratio, aligned):
        return grad.new_empty((batch, channels, height, width))

    @library.register_fake("glip::token_sigmoid_focal_loss")
    def _(logits, targets, alpha, gamma, compute_grad):
        loss = torch.empty_like(logits, memory_format=torch.contiguous_format)
        return loss, torch.empty_like(loss) if compute_grad else logits.new_empty((0,))

    @library.register_fake("glip::modulated_deform_conv")
    def _(input, offset, mask, weight, bias, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, *groups):
        out_h = conv_output_size(input.shape[2], weight.shape[2], stride_h, pad_h, dilation_h)
        out_w = conv_output_size(input.shape[3], weight.shape[3], stride_w, pad_w, dilation_w)
        return input.new_empty((input.shape[0], weight.shape[0], out_h, out_w))

    @library.register_fake("glip::modulated_deform_conv_backward")
    def _(grad, input, offset, mask, weight, *config):
        return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (input, offset, mask, weight))
