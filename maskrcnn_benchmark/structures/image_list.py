"""ImageList: a batch of images of different sizes, zero-padded into one tensor."""
import math
from collections.abc import Sequence

import torch


class ImageList:
    """A padded batch tensor (N, C, H, W) plus each image's original (height, width)."""

    def __init__(self, tensors: torch.Tensor, image_sizes: Sequence[tuple[int, int]]) -> None:
        self.tensors = tensors
        self.image_sizes: list[tuple[int, int]] = [tuple(int(s) for s in size) for size in image_sizes]

    def to(self, *args, **kwargs) -> "ImageList":
        """Cast/move the batch tensor (same arguments as Tensor.to)."""
        return ImageList(self.tensors.to(*args, **kwargs), self.image_sizes)

    def pin_memory(self) -> "ImageList":
        """The batch in page-locked memory (DataLoader pin_memory), for asynchronous copies to an accelerator."""
        return ImageList(self.tensors.pin_memory(), self.image_sizes)


def _pad_batch(images: Sequence[torch.Tensor], size_divisible: int) -> ImageList:
    if len(images) == 0:
        raise ValueError("to_image_list needs at least one image")
    if any(image.dim() != 3 for image in images):
        raise ValueError(f"images should be 3D (C, H, W) tensors, got shapes {[tuple(i.shape) for i in images]}")
    channels, height, width = (max(sizes) for sizes in zip(*(image.shape for image in images)))
    if size_divisible > 0:
        height = int(math.ceil(height / size_divisible) * size_divisible)
        width = int(math.ceil(width / size_divisible) * size_divisible)
    batch = images[0].new_zeros((len(images), channels, height, width))
    for image, padded in zip(images, batch):
        # Image in the top-left corner; the padding (bottom/right) stays zero.
        padded[: image.shape[0], : image.shape[1], : image.shape[2]].copy_(image)
    return ImageList(batch, [tuple(image.shape[-2:]) for image in images])


def to_image_list(
    tensors: ImageList | torch.Tensor | Sequence[torch.Tensor], size_divisible: int = 0
) -> ImageList:
    """Batch images into an ImageList, zero-padding bottom/right to the largest size rounded up to size_divisible.

    Accepts an ImageList (returned as is), a list/tuple of (C, H, W) tensors, a single (C, H, W) tensor, or an
    (N, C, H, W) batch (whose images all count as full size; padded further only when size_divisible > 0).
    """
    if isinstance(tensors, ImageList):
        return tensors
    if isinstance(tensors, torch.Tensor):
        if tensors.dim() == 3:
            return _pad_batch([tensors], size_divisible)
        if tensors.dim() != 4:
            raise ValueError(f"expected a 3D or 4D tensor, got shape {tuple(tensors.shape)}")
        if size_divisible > 0:
            return _pad_batch(list(tensors.unbind(0)), size_divisible)
        return ImageList(tensors, [tuple(tensors.shape[-2:])] * tensors.shape[0])
    if isinstance(tensors, (list, tuple)):
        return _pad_batch(tensors, size_divisible)
    raise TypeError(f"Unsupported type for to_image_list: {type(tensors)}")
