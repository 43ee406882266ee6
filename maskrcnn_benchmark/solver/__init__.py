"""Optimizer and learning-rate schedule."""
from .build import make_lr_scheduler, make_optimizer
from .lr_scheduler import WarmupMultiStepLR, WarmupReduceLROnPlateau

__all__ = ["WarmupMultiStepLR", "WarmupReduceLROnPlateau", "make_lr_scheduler", "make_optimizer"]
