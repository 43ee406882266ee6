"""Layers and ops of the port, on plain PyTorch/torchvision."""
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
    "ml_nms",
    "nms",
    "sigmoid_focal_loss",
    "token_sigmoid_binary_focal_loss",
]
