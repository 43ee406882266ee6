"""GLIP's ops on the Ascend NPU, as torch_npu operators.

The wrappers keep the signatures and semantics of the PyTorch implementations in maskrcnn_benchmark.layers and
translate them to the documented torch_npu operators (npu_nms_v4, npu_roi_align / npu_roi_alignbk,
npu_deformable_conv2d / npu_deformable_conv2dbk), with the argument conventions of torch_npu.contrib and mmcv's
NPU ops. layers.dispatch routes tensors on the `npu` device here.
"""
import functools
import importlib
from collections.abc import Callable, Sequence
from types import ModuleType

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair

from .conv_geometry import conv_output_size, per_sample_prefix

# torch_npu operator behind each GLIP op (ops without one keep their PyTorch implementation on the NPU).
NPU_OPERATORS = {
    "ml_nms": ("npu_nms_v4",),
    "roi_align": ("npu_roi_align", "npu_roi_alignbk"),
    "modulated_deform_conv": ("npu_deformable_conv2d", "npu_deformable_conv2dbk"),
}

# Legacy pixel convention of ml_nms: a box [x1, x2] is x2 - x1 + 1 wide.
TO_REMOVE = 1
# npu_roi_align's roi_end_mode for torchvision's aligned=True / False (as in torch_npu.contrib.module.ROIAlign).
ROI_END_MODE_ALIGNED = 3
ROI_END_MODE_LEGACY = 0


def torch_npu_module() -> ModuleType | None:
    """The torch_npu module when it imports, else None (imported on each call, so a test can substitute it)."""
    try:
        return importlib.import_module("torch_npu")
    except ImportError:
        return None


def has_npu_operator(op: str) -> bool:
    """True when torch_npu imports and provides the operators that implement `op`."""
    module = torch_npu_module()
    names = NPU_OPERATORS.get(op, ())
    return module is not None and bool(names) and all(hasattr(module, name) for name in names)


def _stable_ranks(scores: Tensor) -> Tensor:
    """Distinct float32 scores N..1 following a stable descending sort: ties keep the lower index first."""
    order = torch.sort(scores, descending=True, stable=True).indices
    ranks = torch.empty(scores.numel(), dtype=torch.float32, device=scores.device)
    ranks[order] = torch.arange(scores.numel(), 0, -1, dtype=torch.float32, device=scores.device)
    return ranks


def npu_ml_nms(boxes: Tensor, scores: Tensor, labels: Tensor, thresh: float) -> Tensor:
    """Class-aware NMS (layers.nms.ml_nms semantics) on torch_npu.npu_nms_v4, one label at a time.

    As in the PyTorch version, +1 widths are obtained by shifting x2, y2 by +1, and scores are replaced by
    distinct ranks so that ties resolve to the lower index whatever order the operator uses internally.
    """
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    ranks = _stable_ranks(scores)
    if thresh < 0:
        return torch.argmax(ranks).reshape(1)
    torch_npu = torch_npu_module()
    shifted = boxes.float().clone()
    shifted[:, 2:] += TO_REMOVE
    iou_threshold = torch.tensor(float(thresh), dtype=torch.float32, device=boxes.device)
    score_threshold = torch.tensor(0.0, dtype=torch.float32, device=boxes.device)  # every rank is >= 1
    keep_mask = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for label in torch.unique(labels):
        in_class = torch.nonzero(labels == label).squeeze(1)
        selected, num_valid = torch_npu.npu_nms_v4(
            shifted[in_class], ranks[in_class], in_class.numel(), iou_threshold, score_threshold
        )
        keep_mask[in_class[selected[: int(num_valid)].long()]] = True
    return torch.nonzero(keep_mask).squeeze(1)


def _roi_end_mode(aligned: bool) -> int:
    return ROI_END_MODE_ALIGNED if aligned else ROI_END_MODE_LEGACY


class _NpuRoiAlign(torch.autograd.Function):
    """npu_roi_align forward, npu_roi_alignbk backward (gradient for the features only)."""

    @staticmethod
    def forward(ctx, features, rois, output_size, spatial_scale, sample_num, aligned):
        ctx.save_for_backward(rois)
        ctx.config = (tuple(features.shape), output_size, spatial_scale, sample_num, _roi_end_mode(aligned))
        torch_npu = torch_npu_module()
        return torch_npu.npu_roi_align(
            features, rois, spatial_scale, output_size[0], output_size[1], sample_num, _roi_end_mode(aligned)
        )

    @staticmethod
    def backward(ctx, grad_output):
        (rois,) = ctx.saved_tensors
        input_shape, output_size, spatial_scale, sample_num, roi_end_mode = ctx.config
        torch_npu = torch_npu_module()
        grad_features = torch_npu.npu_roi_alignbk(
            grad_output.contiguous(), rois, list(input_shape), output_size[0], output_size[1], spatial_scale,
            sample_num, roi_end_mode,
        )
        return grad_features, None, None, None, None, None


def npu_roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """ROIAlign (torchvision interface) on torch_npu.npu_roi_align, in float32 like torch_npu's ROIAlign module.

    sampling_ratio <= 0 (adaptive) maps to sample_num 0, torch_npu's adaptive setting.
    """
    output_size = _pair(output_size)
    dtype = input.dtype
    result = _NpuRoiAlign.apply(
        input.float(), rois.float(), output_size, float(spatial_scale), max(int(sampling_ratio), 0), aligned
    )
    return result.to(dtype)


@functools.cache
def npu_offset_order(taps: int, deformable_groups: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Channel permutation from GLIP's (dy, dx)-interleaved offsets to torch_npu's [all dx, all dy], and its inverse."""
    num = 2 * taps * deformable_groups
    forward = list(range(1, num, 2)) + list(range(0, num, 2))
    inverse = [0] * num
    for position, channel in enumerate(forward):
        inverse[channel] = position
    as_tensor = functools.partial(torch.tensor, dtype=torch.int64, device=device)
    return as_tensor(forward), as_tensor(inverse)


class _NpuModulatedDeformConv(torch.autograd.Function):
    """npu_deformable_conv2d forward, npu_deformable_conv2dbk backward, on torch_npu's offset layout."""

    @staticmethod
    def forward(ctx, input, offset, mask, weight, bias, stride, padding, dilation, groups, deformable_groups):
        taps = weight.shape[2] * weight.shape[3]
        to_npu, to_glip = npu_offset_order(taps, deformable_groups, offset.device)
        offset_all = torch.cat([offset.index_select(1, to_npu), mask], dim=1)
        conv_args = _npu_conv_args(weight, stride, padding, dilation, groups, deformable_groups)
        torch_npu = torch_npu_module()
        output, offset_out = torch_npu.npu_deformable_conv2d(input, weight, offset_all, bias, **conv_args)
        ctx.save_for_backward(input, weight, offset_out, offset_all, to_glip)
        ctx.conv_args = conv_args
        ctx.has_bias = bias is not None
        return output

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, offset_out, offset_all, to_glip = ctx.saved_tensors
        torch_npu = torch_npu_module()
        grad_input, grad_weight, grad_offset_all, grad_bias = torch_npu.npu_deformable_conv2dbk(
            input, grad_output.contiguous(), offset_out, weight, offset_all, **ctx.conv_args
        )
        grad_offset = grad_offset_all.index_select(1, to_glip)
        grad_mask = grad_offset_all[:, to_glip.numel():]
        return (grad_input, grad_offset, grad_mask, grad_weight, grad_bias if ctx.has_bias else None,
                None, None, None, None, None)


def _npu_conv_args(weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                   groups: int, deformable_groups: int) -> dict:
    """Keyword arguments of npu_deformable_conv2d(bk): NCHW-ordered 4-element stride/dilation, TBLR padding."""
    return {
        "kernel_size": [weight.shape[3], weight.shape[2]],
        "stride": [1, 1, stride[0], stride[1]],
        "padding": [padding[0], padding[0], padding[1], padding[1]],
        "dilation": [1, 1, dilation[0], dilation[1]],
        "groups": groups,
        "deformable_groups": deformable_groups,
        "modulated": True,
    }


def npu_modulated_deform_conv(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> Tensor:
    """Modulated deformable conv (layers.deform_conv semantics) on torch_npu.npu_deformable_conv2d.

    Computed in float32, the only dtype of torch_npu's deformable conv; like the official op, the result stays
    float32 under autocast and has the input's dtype otherwise.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    kernel_h, kernel_w = weight.shape[2:]
    out_h = conv_output_size(input.shape[2], kernel_h, stride[0], padding[0], dilation[0])
    out_w = conv_output_size(input.shape[3], kernel_w, stride[1], padding[1], dilation[1])
    offset = per_sample_prefix(offset, out_h, out_w)
    mask = per_sample_prefix(mask, out_h, out_w)
    groups = input.shape[1] // weight.shape[1]
    deformable_groups = offset.shape[1] // (2 * kernel_h * kernel_w)
    autocast = torch.is_autocast_enabled(input.device.type)
    with torch.autocast(device_type=input.device.type, enabled=False):
        output = _NpuModulatedDeformConv.apply(
            input.float(), offset.float(), mask.float(), weight.float(), None if bias is None else bias.float(),
            stride, padding, dilation, groups, deformable_groups,
        )
    return output if autocast else output.to(input.dtype)


# The torch_npu implementation of each op that has one, looked up by layers.dispatch.
NPU_KERNELS: dict[str, Callable] = {
    "ml_nms": npu_ml_nms,
    "roi_align": npu_roi_align,
    "modulated_deform_conv": npu_modulated_deform_conv,
}
