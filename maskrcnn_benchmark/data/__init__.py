"""Data pipeline: COCO-format datasets (detection as grounding for training), transforms, samplers, loaders."""
from .build import build_dataset, compute_max_iter, make_data_loader
from .collate_batch import BatchCollator, CollatedBatch

__all__ = ["BatchCollator", "CollatedBatch", "build_dataset", "compute_max_iter", "make_data_loader"]
