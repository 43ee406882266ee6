"""Box <-> regression-offset coding of GLIP's ATSS head."""
import math

import torch


class BoxCoder:
    """Encodes boxes as weighted (dx, dy, dw, dh) offsets from anchors, with the legacy "+1" box width.

    The arithmetic follows the coder GLIP's VLDyHead uses: centres are box midpoints and a decoded box spans
    `centre -/+ (width - 1) / 2`. This equals the older maskrcnn-benchmark coder in exact arithmetic, but the
    order of operations is kept so that fp32 results match the official ones bit for bit.
    """

    def __init__(self, weights: tuple[float, float, float, float], bbox_xform_clip: float = math.log(1000.0 / 16)):
        self.weights = weights
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Offsets (K, 4) that turn each anchor (K, 4) xyxy into the matching gt box (K, 4) xyxy."""
        anchor_widths = anchors[:, 2] - anchors[:, 0] + 1
        anchor_heights = anchors[:, 3] - anchors[:, 1] + 1
        anchor_ctr_x = (anchors[:, 2] + anchors[:, 0]) / 2
        anchor_ctr_y = (anchors[:, 3] + anchors[:, 1]) / 2

        gt_widths = gt_boxes[:, 2] - gt_boxes[:, 0] + 1
        gt_heights = gt_boxes[:, 3] - gt_boxes[:, 1] + 1
        gt_ctr_x = (gt_boxes[:, 2] + gt_boxes[:, 0]) / 2
        gt_ctr_y = (gt_boxes[:, 3] + gt_boxes[:, 1]) / 2

        wx, wy, ww, wh = self.weights
        dx = wx * (gt_ctr_x - anchor_ctr_x) / anchor_widths
        dy = wy * (gt_ctr_y - anchor_ctr_y) / anchor_heights
        dw = ww * torch.log(gt_widths / anchor_widths)
        dh = wh * torch.log(gt_heights / anchor_heights)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, rel_codes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes (K, 4*B) xyxy from offsets (K, 4*B) relative to anchors (K, 4) xyxy."""
        anchors = anchors.to(rel_codes.dtype)
        widths = (anchors[:, 2] - anchors[:, 0] + 1)[:, None]
        heights = (anchors[:, 3] - anchors[:, 1] + 1)[:, None]
        ctr_x = ((anchors[:, 2] + anchors[:, 0]) / 2)[:, None]
        ctr_y = ((anchors[:, 3] + anchors[:, 1]) / 2)[:, None]

        wx, wy, ww, wh = self.weights
        dx = rel_codes[:, 0::4] / wx
        dy = rel_codes[:, 1::4] / wy
        # Clamp before exp() so that huge predictions cannot overflow.
        dw = torch.clamp(rel_codes[:, 2::4] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(rel_codes[:, 3::4] / wh, max=self.bbox_xform_clip)

        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        pred_w = torch.exp(dw) * widths
        pred_h = torch.exp(dh) * heights

        boxes = torch.stack(
            (
                pred_ctr_x - 0.5 * (pred_w - 1),
                pred_ctr_y - 0.5 * (pred_h - 1),
                pred_ctr_x + 0.5 * (pred_w - 1),
                pred_ctr_y + 0.5 * (pred_h - 1),
            ),
            dim=2,
        )
        return boxes.reshape(rel_codes.shape)
