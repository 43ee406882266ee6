"""Non-maximum suppression with the official GLIP semantics, on torchvision ops (any device)."""
import torch
import torchvision

from .dispatch import dispatchable

# Legacy pixel convention of the compiled kernels: a box [x1, x2] is x2 - x1 + 1 wide.
TO_REMOVE = 1


def nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> torch.Tensor:
    """Class-agnostic NMS; kept indices in decreasing score order.

    The official `layers.nms` binds `torchvision.ops.nms` (the compiled +1 kernel is only a fallback that never
    runs), so this is plain torchvision: widths x2 - x1, suppression when IoU > thresh.
    """
    return torchvision.ops.nms(boxes, scores, thresh)


def _stable_rank_scores(scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Distinct scores N..1 that follow a stable descending sort of `scores`.

    torchvision sorts scores internally with no promise on ties; ranking first makes ties deterministic on every
    device: among equal scores the box with the lower index is visited (and kept) first.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    num = scores.numel()
    ranks = torch.empty(num, dtype=dtype, device=scores.device)
    ranks[order] = torch.arange(num, 0, -1, dtype=dtype, device=scores.device)
    return ranks


@dispatchable("ml_nms")
def ml_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, thresh: float) -> torch.Tensor:
    """Class-aware NMS with the semantics of the official CUDA `ml_nms` kernel; kept indices sorted ascending.

    Greedy over boxes by decreasing score (ties: lower index first); a box is suppressed by an already kept box of
    the same label when their IoU > thresh, the IoU using the legacy +1 widths. IoU with +1 widths equals the plain
    IoU of boxes whose x2, y2 are shifted by +1, which is what is handed to torchvision, one label at a time (no
    coordinate-offset trick, which would cost float32 precision). Equal to the kernel up to float32 rounding.
    """
    num = boxes.shape[0]
    if num == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    # The kernel computes in float32; half inputs are promoted, float64 stays float64.
    work_dtype = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    ranks = _stable_rank_scores(scores, work_dtype)
    if thresh < 0:
        # Every IoU (0 across labels included) exceeds a negative threshold: only the best box survives.
        return torch.argmax(ranks).reshape(1)
    shifted = boxes.to(work_dtype).clone()
    shifted[:, 2:] += TO_REMOVE
    keep_mask = torch.zeros(num, dtype=torch.bool, device=boxes.device)
    for label in torch.unique(labels):
        in_class = torch.nonzero(labels == label).squeeze(1)
        kept = torchvision.ops.nms(shifted[in_class], ranks[in_class], thresh)
        keep_mask[in_class[kept]] = True
    return torch.nonzero(keep_mask).squeeze(1)
