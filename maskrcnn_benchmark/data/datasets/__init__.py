"""COCO-format datasets: detection, LVIS and Flickr30k (evaluation) and detection-as-grounding (training)."""
from .coco import COCODataset, has_valid_annotation
from .concat_dataset import ConcatDataset
from .duplicate_dataset import DuplicateDataset
from .flickr import FlickrDataset
from .lvis import LvisDetection
from .modulated_coco import CocoGrounding

__all__ = ["COCODataset", "CocoGrounding", "ConcatDataset", "DuplicateDataset", "FlickrDataset", "LvisDetection",
           "has_valid_annotation"]
