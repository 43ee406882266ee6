"""Python side of the compiled kernels torch.ops.glip.* (maskrcnn_benchmark._C, built from csrc/).

Each wrapper keeps the signature of the op's PyTorch implementation, converts the arguments to the kernel's
(dtypes, pairs, (K, 5) rois) and runs the PyTorch implementation where the kernel does not apply. layers.dispatch
chooses when these run; layers.compiled_registration gives the kernels their autograd and fake-tensor rules.
"""
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair

from .dispatch import pytorch_implementation

# Floating dtypes each device's compiled kernels take (others run the PyTorch implementation).
_KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
}


def _kernel_takes(device_type: str, *tensors: Tensor) -> bool:
    return all(t.dtype in _KERNEL_DTYPES.get(device_type, ()) for t in tensors)


def _rois_tensor(rois: Tensor | Sequence[Tensor]) -> Tensor:
    """(K, 5) [batch_index, x1, y1, x2, y2] rois from a tensor or from a list of per-image (Ki, 4) boxes."""
    if isinstance(rois, Tensor):
        return rois
    indices = [torch.full_like(boxes[:, :1], i) for i, boxes in enumerate(rois)]
    return torch.cat([torch.cat(indices), torch.cat(list(rois))], dim=1)


def compiled_ml_nms(boxes: Tensor, scores: Tensor, labels: Tensor, thresh: float) -> Tensor:
    """layers.nms.ml_nms on the compiled kernel (boxes in float32, or float64 when given)."""
    if boxes.dtype != torch.float64:
        boxes = boxes.float()
    return torch.ops.glip.ml_nms(boxes, scores, labels.long(), float(thresh))


def compiled_roi_align(
    input: Tensor,
    rois: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """layers.roi_align.roi_align on the compiled kernel."""
    if not _kernel_takes(input.device.type, input):
        return pytorch_implementation("roi_align")(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    pooled_h, pooled_w = _pair(output_size)
    rois = _rois_tensor(rois).to(input.dtype)
    return torch.ops.glip.roi_align(
        input, rois, float(spatial_scale), pooled_h, pooled_w, int(sampling_ratio), bool(aligned)
    )


def compiled_token_sigmoid_focal_loss(
    pred_logits: Tensor, targets: Tensor, alpha: float, gamma: float, text_mask: Tensor | None = None
) -> Tensor:
    """layers.sigmoid_focal_loss.token_sigmoid_binary_focal_loss as one fused kernel (forward and backward).

    Targets are constants for the fused kernel; when they require grad (or the shapes are invalid, or the dtype
    has no kernel) the PyTorch implementation runs.
    """
    valid = pred_logits.dim() == 3 and targets.dim() == 3 and (text_mask is None or text_mask.dim() == 2)
    if not valid or targets.requires_grad or not _kernel_takes(pred_logits.device.type, pred_logits):
        return pytorch_implementation("token_sigmoid_focal_loss")(pred_logits, targets, alpha, gamma, text_mask)
    targets = targets.to(pred_logits.dtype)
    if text_mask is not None:
        token_mask = (text_mask > 0).unsqueeze(1).expand(-1, pred_logits.shape[1], -1)
        pred_logits = torch.masked_select(pred_logits, token_mask)
        targets = torch.masked_select(targets, token_mask)
    compute_grad = torch.is_grad_enabled() and pred_logits.requires_grad
    loss, _ = torch.ops.glip.token_sigmoid_focal_loss(pred_logits, targets, float(alpha), float(gamma), compute_grad)
    return loss


def compiled_modulated_deform_conv(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> Tensor:
    """layers.deform_conv.modulated_deform_conv on the compiled kernel (float32 under autocast, as official)."""
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            return compiled_modulated_deform_conv(
                input.float(), offset.float(), mask.float(), weight.float(),
                None if bias is None else bias.float(), stride, padding, dilation,
            )
    if input.dtype not in (torch.float32, torch.float64):
        return pytorch_implementation("modulated_deform_conv")(
            input, offset, mask, weight, bias, stride, padding, dilation
        )
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    taps = weight.shape[2] * weight.shape[3]
    dtype = input.dtype
    return torch.ops.glip.modulated_deform_conv(
        input, offset.to(dtype), mask.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        input.shape[1] // weight.shape[1], offset.shape[1] // (2 * taps),
    )


# The compiled implementation of each op, looked up by layers.dispatch.
COMPILED_KERNELS: dict[str, Callable] = {
    "ml_nms": compiled_ml_nms,
    "roi_align": compiled_roi_align,
    "token_sigmoid_focal_loss": compiled_token_sigmoid_focal_loss,
    "modulated_deform_conv": compiled_modulated_deform_conv,
}
