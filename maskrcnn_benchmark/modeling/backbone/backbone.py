"""The vision backbone of GLIP: Swin Transformer body + FPN with P6/P7 (SWINT-FPN-RETINANET)."""
from typing import List

import torch
from torch import nn

from maskrcnn_benchmark.layers.dropblock import DropBlock2D

from .fpn import FPN, LastLevelP6P7
from .swint import STAGE_NAMES, SwinTransformer, build_swint_backbone

SUPPORTED_CONV_BODY = "SWINT-FPN-RETINANET"


class SwinFPNBackbone(nn.Module):
    """`body` (Swin) followed by `fpn`; returns the pyramid P3..P7 (strides 8..128)."""

    def __init__(self, body: SwinTransformer, fpn: FPN):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        """(B, 3, H, W) normalised images -> [P3, P4, P5, P6, P7], each (B, out_channels, h, w)."""
        return self.fpn(self.body(images))


def _check_supported(cfg) -> None:
    """Raise a ValueError for config values that select variants this port does not build."""
    conv_body = cfg.MODEL.BACKBONE.CONV_BODY
    if conv_body != SUPPORTED_CONV_BODY:
        raise ValueError(f"MODEL.BACKBONE.CONV_BODY={conv_body!r} is not supported; "
                         f"the only supported backbone is {SUPPORTED_CONV_BODY!r}.")
    expected = {
        "MODEL.SWINT.VERSION": (cfg.MODEL.SWINT.VERSION, "v1"),
        "MODEL.SWINT.APE": (cfg.MODEL.SWINT.APE, False),
        "MODEL.FPN.USE_GN": (cfg.MODEL.FPN.USE_GN, False),
        "MODEL.FPN.USE_RELU": (cfg.MODEL.FPN.USE_RELU, False),
        "MODEL.FPN.USE_SPP": (cfg.MODEL.FPN.USE_SPP, False),
        "MODEL.FPN.USE_PAN": (cfg.MODEL.FPN.USE_PAN, False),
        "MODEL.FPN.USE_DYHEAD": (cfg.MODEL.FPN.USE_DYHEAD, False),
        "MODEL.FPN.RETURN_SWINT_FEATURE_BEFORE_FUSION": (cfg.MODEL.FPN.RETURN_SWINT_FEATURE_BEFORE_FUSION, False),
        # The FPN consumes the last three Swin stages (C3, C4, C5).
        "MODEL.BACKBONE.OUT_FEATURES[-3:]": (tuple(cfg.MODEL.BACKBONE.OUT_FEATURES)[-3:], STAGE_NAMES[1:]),
    }
    for key, (value, supported) in expected.items():
        if value != supported:
            raise ValueError(f"{key}={value!r} is not supported by {SUPPORTED_CONV_BODY}; expected {supported!r}.")
    stage_channels = [cfg.MODEL.SWINT.EMBED_DIM * 2 ** i for i in range(len(cfg.MODEL.SWINT.DEPTHS))]
    if list(cfg.MODEL.SWINT.OUT_CHANNELS) != stage_channels:
        raise ValueError(f"MODEL.SWINT.OUT_CHANNELS={tuple(cfg.MODEL.SWINT.OUT_CHANNELS)} must equal the Swin stage "
                         f"widths EMBED_DIM * 2**i = {tuple(stage_channels)}.")


def build_backbone(cfg) -> SwinFPNBackbone:
    """Build the SWINT-FPN-RETINANET backbone from the official cfg keys."""
    _check_supported(cfg)
    body = build_swint_backbone(cfg)
    stage_channels = cfg.MODEL.SWINT.OUT_CHANNELS
    out_channels = cfg.MODEL.BACKBONE.OUT_CHANNELS
    # Built before the FPN's own convs, as officially, so that seeded initialisations match.
    top_blocks = LastLevelP6P7(out_channels, out_channels)
    drop_block = DropBlock2D(cfg.MODEL.FPN.DROP_PROB, cfg.MODEL.FPN.DROP_SIZE) if cfg.MODEL.FPN.DROP_BLOCK else None
    # The leading 0 skips C2, so the FPN modules are named fpn_inner2..4 / fpn_layer2..4 as in the checkpoints.
    fpn = FPN([0, *stage_channels[-3:]], out_channels, top_blocks=top_blocks, drop_block=drop_block)
    return SwinFPNBackbone(body, fpn)
