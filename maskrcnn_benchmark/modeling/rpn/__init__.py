"""GLIP's detection head (VLDyHead) with ATSS anchors, loss and post-processing."""
from .rpn import VLDyHeadModule, build_rpn

__all__ = ["VLDyHeadModule", "build_rpn"]
