"""ATSS training loss of GLIP's head: ATSS anchor assignment, GIoU box loss, centerness loss and token loss."""
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from maskrcnn_benchmark.layers import box_giou_loss, token_sigmoid_binary_focal_loss
from maskrcnn_benchmark.modeling.box_coder import BoxCoder
from maskrcnn_benchmark.modeling.utils import permute_and_flatten
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.boxlist_ops import boxlist_iou, cat_boxlist
from maskrcnn_benchmark.utils.comm import get_world_size, reduce_sum

# IoU placeholder of the (anchor, box) pairs that are not positive, as in the official code.
_NOT_POSITIVE_IOU = -1e8


def atss_assign(anchors_per_level: Sequence[BoxList], targets: BoxList, topk: int) -> torch.Tensor:
    """Index of the target box assigned to every anchor of one image (levels concatenated), -1 for background.

    Adaptive Training Sample Selection: per level, the `topk` anchors whose centres are nearest a box centre are
    candidates; those with IoU >= mean + std (unbiased) of the candidates' IoUs, and whose centre lies inside the
    box by more than 0.01, are positives. An anchor that is positive for several boxes goes to the highest IoU.
    """
    anchors = cat_boxlist(list(anchors_per_level))
    num_anchors = len(anchors)
    gt_boxes = targets.bbox
    num_gt = gt_boxes.shape[0]
    if num_gt == 0:
        return torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.bbox.device)

    ious = boxlist_iou(anchors, targets)
    anchor_ctr_x = (anchors.bbox[:, 2] + anchors.bbox[:, 0]) / 2.0
    anchor_ctr_y = (anchors.bbox[:, 3] + anchors.bbox[:, 1]) / 2.0
    anchor_centers = torch.stack((anchor_ctr_x, anchor_ctr_y), dim=1)
    gt_centers = torch.stack(((gt_boxes[:, 2] + gt_boxes[:, 0]) / 2.0, (gt_boxes[:, 3] + gt_boxes[:, 1]) / 2.0), dim=1)
    distances = (anchor_centers[:, None, :] - gt_centers[None, :, :]).pow(2).sum(-1).sqrt()

    candidate_index = []
    start = 0
    for level_anchors in anchors_per_level:
        end = start + len(level_anchors)
        level_topk = min(topk, end - start)
        _, nearest = distances[start:end].topk(level_topk, dim=0, largest=False)
        candidate_index.append(nearest + start)
        start = end
    candidate_index = torch.cat(candidate_index, dim=0)  # (num_candidates, num_gt)

    gt_index = torch.arange(num_gt, device=ious.device)
    candidate_ious = ious[candidate_index, gt_index]
    iou_thresh = candidate_ious.mean(0) + candidate_ious.std(0)
    is_positive = candidate_ious >= iou_thresh[None, :]

    left = anchor_ctr_x[candidate_index] - gt_boxes[:, 0]
    top = anchor_ctr_y[candidate_index] - gt_boxes[:, 1]
    right = gt_boxes[:, 2] - anchor_ctr_x[candidate_index]
    bottom = gt_boxes[:, 3] - anchor_ctr_y[candidate_index]
    center_inside = torch.stack((left, top, right, bottom), dim=1).min(dim=1)[0] > 0.01
    is_positive = is_positive & center_inside

    positive_ious = torch.full_like(ious, _NOT_POSITIVE_IOU)
    positive_anchor = candidate_index[is_positive]
    positive_gt = gt_index.expand_as(candidate_index)[is_positive]
    positive_ious[positive_anchor, positive_gt] = ious[positive_anchor, positive_gt]
    best_iou, best_gt = positive_ious.max(dim=1)
    return torch.where(best_iou == _NOT_POSITIVE_IOU, torch.full_like(best_gt, -1), best_gt)


class ATSSLossComputation:
    """GLIP's ATSS losses: loss_reg (GIoU), loss_centerness, loss_dot_product_token and a zero loss_cls."""

    def __init__(
        self,
        box_coder: BoxCoder,
        topk: int,
        reg_loss_weight: float,
        token_alpha: float,
        token_gamma: float,
        dot_product_token_loss_weight: float,
    ):
        self.box_coder = box_coder
        self.topk = topk
        self.reg_loss_weight = reg_loss_weight
        self.token_alpha = token_alpha
        self.token_gamma = token_gamma
        self.dot_product_token_loss_weight = dot_product_token_loss_weight

    def prepare_targets(
        self, targets: Sequence[BoxList], anchors: Sequence[Sequence[BoxList]], positive_map: torch.Tensor,
        num_tokens: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per anchor of all images: positive flag (N*A,), matched box (N*A, 4) and token target (N, A, T).

        positive_map holds one 0/1 token row per target box, all images concatenated. Background anchors get
        the target 1 on the last column of positive_map only (GLIP's "no object" token). With `num_tokens`
        (text trimmed after the longest caption), only the first num_tokens columns are kept, and the "no
        object" target only if its column is among them.
        """
        width = positive_map.shape[1]
        num_tokens = width if num_tokens is None else num_tokens
        positive_map = positive_map[:, :num_tokens]
        no_object_row = positive_map.new_zeros(1, num_tokens)
        if width - 1 < num_tokens:
            no_object_row[0, width - 1] = 1
        positives, matched_boxes, token_targets = [], [], []
        row_offset = 0
        for image_targets, image_anchors in zip(targets, anchors):
            num_gt = len(image_targets)
            assigned = atss_assign(image_anchors, image_targets, self.topk)
            # Background anchors index an extra "no object" entry appended after the image's boxes.
            index = torch.where(assigned >= 0, assigned, torch.full_like(assigned, num_gt))
            token_rows = torch.cat((positive_map[row_offset:row_offset + num_gt], no_object_row))
            boxes = torch.cat((image_targets.bbox, image_targets.bbox.new_zeros(1, 4)))
            labels = image_targets.get_field("labels")
            labels = torch.cat((labels, labels.new_zeros(1)))
            row_offset += num_gt
            # Like the official code, an anchor is positive when its box label is > 0.
            positives.append(labels[index] > 0)
            matched_boxes.append(boxes[index])
            token_targets.append(token_rows[index])
        return torch.cat(positives), torch.cat(matched_boxes), torch.stack(token_targets)

    def centerness_targets(self, reg_targets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """How centred each anchor centre is in its encoded gt box: sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))."""
        gt_boxes = self.box_coder.decode(reg_targets, anchors)
        anchor_ctr_x = (anchors[:, 2] + anchors[:, 0]) / 2
        anchor_ctr_y = (anchors[:, 3] + anchors[:, 1]) / 2
        left_right = torch.stack((anchor_ctr_x - gt_boxes[:, 0], gt_boxes[:, 2] - anchor_ctr_x), dim=1)
        top_bottom = torch.stack((anchor_ctr_y - gt_boxes[:, 1], gt_boxes[:, 3] - anchor_ctr_y), dim=1)
        return torch.sqrt(
            (left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0])
            * (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0])
        )

    def __call__(
        self,
        box_regression: Sequence[torch.Tensor],
        centerness: Sequence[torch.Tensor],
        dot_product_logits: Sequence[torch.Tensor],
        targets: Sequence[BoxList],
        anchors: Sequence[Sequence[BoxList]],
        positive_map: torch.Tensor,
        text_masks: torch.Tensor,
        compiled_kernels: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Losses from per-level (N, 4A, H, W) regression, (N, A, H, W) centerness logits and (N, H*W*A, T)
        token logits, per-image targets (xyxy, field "labels"), per-image per-level anchors, the (boxes, T)
        0/1 positive map of all images' boxes and the (N, T) text attention mask. `compiled_kernels=False` keeps
        the PyTorch token focal loss (the reference execution plan)."""
        # Like the official custom_fwd(cast_inputs=float32): the loss always runs in fp32.
        with torch.autocast(device_type=box_regression[0].device.type, enabled=False):
            return self._losses(box_regression, centerness, dot_product_logits, targets, anchors, positive_map,
                                text_masks, compiled_kernels)

    def _losses(self, box_regression, centerness, dot_product_logits, targets, anchors, positive_map, text_masks,
                compiled_kernels):
        """The loss dict of __call__, computed on fp32 copies of the head outputs."""
        N = box_regression[0].shape[0]
        regression_flat = torch.cat(
            [permute_and_flatten(level, N, level.shape[1] // 4, 4, level.shape[2], level.shape[3])
             for level in box_regression], dim=1,
        ).reshape(-1, 4).float()
        centerness_flat = torch.cat([level.permute(0, 2, 3, 1).reshape(N, -1) for level in centerness], dim=1)
        centerness_flat = centerness_flat.reshape(-1).float()
        token_logits = torch.cat(list(dot_product_logits), dim=1).float()
        anchors_flat = torch.cat([level.bbox for image_anchors in anchors for level in image_anchors])

        positives, matched_boxes, token_targets = self.prepare_targets(
            targets, anchors, positive_map.to(token_logits), num_tokens=token_logits.shape[-1])
        positive_index = torch.nonzero(positives).squeeze(1)

        num_gpus = get_world_size()
        total_num_pos = reduce_sum(positive_index.new_tensor([positive_index.numel()])).item()
        num_pos_avg_per_gpu = max(total_num_pos / float(num_gpus), 1.0)

        token_loss = token_sigmoid_binary_focal_loss(
            token_logits, token_targets, self.token_alpha, self.token_gamma, text_masks, compiled=compiled_kernels
        ).sum() / num_pos_avg_per_gpu

        if positive_index.numel() > 0:
            positive_anchors = anchors_flat[positive_index]
            reg_targets = self.box_coder.encode(matched_boxes[positive_index], positive_anchors)
            centerness_targets = self.centerness_targets(reg_targets, positive_anchors)
            centerness_sum_avg_per_gpu = reduce_sum(centerness_targets.sum()).item() / float(num_gpus)
            reg_loss = box_giou_loss(
                self.box_coder.decode(regression_flat[positive_index], positive_anchors),
                self.box_coder.decode(reg_targets, positive_anchors),
                centerness_targets,
            ) / centerness_sum_avg_per_gpu
            centerness_loss = F.binary_cross_entropy_with_logits(
                centerness_flat[positive_index], centerness_targets, reduction="sum"
            ) / num_pos_avg_per_gpu
        else:
            # Matches the other processes' all-reduce of their centerness sums.
            reduce_sum(centerness_flat.new_zeros(()))
            # Zeros that stay attached to the graph, as in the official code.
            reg_loss = regression_flat[positive_index].sum()
            centerness_loss = centerness_flat[positive_index].sum()

        return {
            "loss_reg": reg_loss * self.reg_loss_weight,
            "loss_centerness": centerness_loss,
            # cls_logits is frozen and unused with the dot-product token loss; the official loss is 0 * focal.
            "loss_cls": regression_flat.new_zeros(()),
            "loss_dot_product_token": token_loss * self.dot_product_token_loss_weight,
        }


def make_atss_loss_evaluator(cfg, box_coder: BoxCoder) -> ATSSLossComputation:
    """ATSSLossComputation from MODEL.ATSS, MODEL.RPN and MODEL.DYHEAD.FUSE_CONFIG (dot-product token loss only)."""
    # The other losses are refused by config.check_supported (called by build_detection_model).
    fuse_cfg = cfg.MODEL.DYHEAD.FUSE_CONFIG
    num_anchors_per_location = len(cfg.MODEL.RPN.ASPECT_RATIOS) * cfg.MODEL.RPN.SCALES_PER_OCTAVE
    return ATSSLossComputation(
        box_coder=box_coder,
        topk=cfg.MODEL.ATSS.TOPK * num_anchors_per_location,
        reg_loss_weight=cfg.MODEL.ATSS.REG_LOSS_WEIGHT,
        token_alpha=fuse_cfg.TOKEN_ALPHA,
        token_gamma=fuse_cfg.TOKEN_GAMMA,
        dot_product_token_loss_weight=fuse_cfg.DOT_PRODUCT_TOKEN_LOSS_WEIGHT,
    )
