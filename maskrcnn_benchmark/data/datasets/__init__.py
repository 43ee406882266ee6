"""COCO-format datasets: detection (evaluation) and detection-as-grounding (training)."""
from .coco import COCODataset, has_valid_annotation
from .concat_dataset import ConcatDataset
from .duplicate_dataset import DuplicateDataset
from .modulated_coco import CocoGrounding

__all__ = ["COCODataset", "CocoGrounding", "ConcatDataset", "DuplicateDataset", "has_valid_annotation"]
