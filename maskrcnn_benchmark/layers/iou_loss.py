"""IoU-based box regression losses with the official GLIP formulas."""

import torch
from torch import nn

_LOSS_TYPES = ("iou", "linear_iou", "giou")


def _weighted_sum(losses: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    # Official rule: weights are used only when they sum to a positive value, else a plain sum.
    if weight is not None and weight.sum() > 0:
        return (losses * weight).sum()
    if losses.numel() == 0:
        raise ValueError("IoU loss of an empty set of boxes without positive weights")
    return losses.sum()


class IOULoss(nn.Module):
    """IoU loss on FCOS-style (left, top, right, bottom) distances to a common point, summed.

    iou = (inter + 1) / (union + 1) (a smoothing +1, not the +1 pixel width), enclosing area + 1e-7;
    loss_type "iou": -log(iou), "linear_iou": 1 - iou, "giou": 1 - (iou - (enclosing - union) / enclosing).
    """

    def __init__(self, loss_type: str = "iou") -> None:
        super().__init__()
        if loss_type not in _LOSS_TYPES:
            raise ValueError(f"loss_type should be one of {_LOSS_TYPES}, got {loss_type!r}")
        self.loss_type = loss_type

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of per-box losses, weighted by `weight` (N,) when it sums to > 0."""
        pred_left, pred_top, pred_right, pred_bottom = pred.unbind(dim=1)
        target_left, target_top, target_right, target_bottom = target.unbind(dim=1)

        target_area = (target_left + target_right) * (target_top + target_bottom)
        pred_area = (pred_left + pred_right) * (pred_top + pred_bottom)
        w_intersect = torch.min(pred_left, target_left) + torch.min(pred_right, target_right)
        h_intersect = torch.min(pred_bottom, target_bottom) + torch.min(pred_top, target_top)
        w_enclosing = torch.max(pred_left, target_left) + torch.max(pred_right, target_right)
        h_enclosing = torch.max(pred_bottom, target_bottom) + torch.max(pred_top, target_top)
        area_enclosing = w_enclosing * h_enclosing + 1e-7
        area_intersect = w_intersect * h_intersect
        area_union = target_area + pred_area - area_intersect
        ious = (area_intersect + 1.0) / (area_union + 1.0)

        if self.loss_type == "iou":
            losses = -torch.log(ious)
        elif self.loss_type == "linear_iou":
            losses = 1 - ious
        else:
            gious = ious - (area_enclosing - area_union) / area_enclosing
            losses = 1 - gious
        return _weighted_sum(losses, weight)

    def extra_repr(self) -> str:
        """Constructor arguments, for print(module)."""
        return f"loss_type={self.loss_type!r}"


def box_giou_loss(
    pred_boxes: torch.Tensor, target_boxes: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Summed GIoU loss of xyxy boxes, as in the official ATSS loss (`GIoULoss`, applied to decoded boxes).

    Widths are x2 - x1 (no +1); the predicted x2/y2 are first raised to at least x1/y1; the intersection counts
    only when it is non-empty on both axes; union and enclosing areas get + 1e-7.
    """
    pred_x1, pred_y1, pred_x2, pred_y2 = pred_boxes.unbind(dim=1)
    pred_x2 = torch.max(pred_x1, pred_x2)
    pred_y2 = torch.max(pred_y1, pred_y2)
    pred_area = (pred_x2 - pred_x1) * (pred_y2 - pred_y1)
    target_x1, target_y1, target_x2, target_y2 = target_boxes.unbind(dim=1)
    target_area = (target_x2 - target_x1) * (target_y2 - target_y1)

    inter_x1 = torch.max(pred_x1, target_x1)
    inter_y1 = torch.max(pred_y1, target_y1)
    inter_x2 = torch.min(pred_x2, target_x2)
    inter_y2 = torch.min(pred_y2, target_y2)
    non_empty = (inter_y2 > inter_y1) & (inter_x2 > inter_x1)
    # where (not clamp) so that empty intersections get exactly zero gradient, as with the official masked fill.
    area_intersect = torch.where(non_empty, (inter_x2 - inter_x1) * (inter_y2 - inter_y1), torch.zeros_like(pred_x1))

    enclosing_w = torch.max(pred_x2, target_x2) - torch.min(pred_x1, target_x1)
    enclosing_h = torch.max(pred_y2, target_y2) - torch.min(pred_y1, target_y1)
    area_enclosing = enclosing_w * enclosing_h + 1e-7
    area_union = pred_area + target_area - area_intersect + 1e-7
    gious = area_intersect / area_union - (area_enclosing - area_union) / area_enclosing
    return _weighted_sum(1 - gious, weight)
