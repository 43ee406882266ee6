"""Vision backbone: Swin Transformer + FPN (SWINT-FPN-RETINANET)."""
from .backbone import SUPPORTED_CONV_BODY, SwinFPNBackbone, build_backbone
from .fpn import FPN, LastLevelP6P7
from .swint import SwinTransformer, build_swint_backbone

__all__ = ["build_backbone", "build_swint_backbone", "SwinFPNBackbone", "SwinTransformer", "FPN", "LastLevelP6P7",
           "SUPPORTED_CONV_BODY"]
