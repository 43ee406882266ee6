"""Layers and ops of the port, on plain PyTorch/torchvision."""
from .fast_path import fast_path_enabled, reference_mode
from .iou_loss import IOULoss, box_giou_loss
from .misc import Scale
from .nms import ml_nms, nms
from .sigmoid_focal_loss import (
    SigmoidFocalLoss,
    TokenSigmoidFocalLoss,
    sigmoid_focal_loss,
    token_sigmoid_binary_focal_loss,
)

__all__ = [
    "IOULoss",
    "Scale",
    "SigmoidFocalLoss",
    "TokenSigmoidFocalLoss",
    "box_giou_loss",
    "fast_path_enabled",
    "ml_nms",
    "nms",
    "reference_mode",
    "sigmoid_focal_loss",
    "token_sigmoid_binary_focal_loss",
]
