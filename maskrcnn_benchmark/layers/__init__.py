"""Layers and ops of the port, on plain PyTorch/torchvision."""
from .execution_plan import ACCELERATOR_PLAN, CPU_PLAN, REFERENCE_PLAN, ExecutionPlan, apply_execution_plan
from .iou_loss import IOULoss, box_giou_loss
from .misc import Scale
from .nms import ml_nms, nms
from .roi_align import roi_align
from .sigmoid_focal_loss import (
    SigmoidFocalLoss,
    TokenSigmoidFocalLoss,
    sigmoid_focal_loss,
    token_sigmoid_binary_focal_loss,
)

__all__ = [
    "ACCELERATOR_PLAN",
    "CPU_PLAN",
    "ExecutionPlan",
    "REFERENCE_PLAN",
    "IOULoss",
    "Scale",
    "SigmoidFocalLoss",
    "TokenSigmoidFocalLoss",
    "box_giou_loss",
    "apply_execution_plan",
    "ml_nms",
    "nms",
    "roi_align",
    "sigmoid_focal_loss",
    "token_sigmoid_binary_focal_loss",
]
