"""Image/box transforms."""
from .build import build_transforms
from .transforms import Compose, Normalize, RandomHorizontalFlip, Resize, ToTensor, resized_shape

__all__ = ["build_transforms", "Compose", "Normalize", "RandomHorizontalFlip", "Resize", "ToTensor", "resized_shape"]
