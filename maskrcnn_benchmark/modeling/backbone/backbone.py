"""The vision backbone of GLIP: Swin Transformer body + FPN with P6/P7 (SWINT-FPN-RETINANET)."""

import torch
from torch import nn

from maskrcnn_benchmark.layers.dropblock import DropBlock2D

from .fpn import FPN, LastLevelP6P7
from .swint import SwinTransformer, build_swint_backbone

SUPPORTED_CONV_BODY = "SWINT-FPN-RETINANET"


class SwinFPNBackbone(nn.Module):
    """`body` (Swin) followed by `fpn`; returns the pyramid P3..P7 (strides 8..128)."""

    def __init__(self, body: SwinTransformer, fpn: FPN):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised images -> [P3, P4, P5, P6, P7], each (B, out_channels, h, w)."""
        return self.fpn(self.body(images))


def build_backbone(cfg) -> SwinFPNBackbone:
    """Build the SWINT-FPN-RETINANET backbone from the official cfg keys (config.check_supported refuses others)."""
    body = build_swint_backbone(cfg)
    stage_channels = cfg.MODEL.SWINT.OUT_CHANNELS
    out_channels = cfg.MODEL.BACKBONE.OUT_CHANNELS
    # Built before the FPN's own convs, as officially, so that seeded initialisations match.
    top_blocks = LastLevelP6P7(out_channels, out_channels)
    drop_block = DropBlock2D(cfg.MODEL.FPN.DROP_PROB, cfg.MODEL.FPN.DROP_SIZE) if cfg.MODEL.FPN.DROP_BLOCK else None
    # The leading 0 skips C2, so the FPN modules are named fpn_inner2..4 / fpn_layer2..4 as in the checkpoints.
    fpn = FPN([0, *stage_channels[-3:]], out_channels, top_blocks=top_blocks, drop_block=drop_block)
    return SwinFPNBackbone(body, fpn)
