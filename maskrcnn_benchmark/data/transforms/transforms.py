"""Joint image/BoxList transforms of the GLIP input pipeline (PIL image in, normalized tensor out)."""
import random
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import functional as F

from maskrcnn_benchmark.structures.bounding_box import FLIP_LEFT_RIGHT, BoxList

Target = BoxList | None


class Compose:
    """Apply transforms in order to (image, target); returns the image alone when no target is given."""

    def __init__(self, transforms: list[Callable]) -> None:
        self.transforms = transforms

    def __call__(self, image, target: Target = None):
        for transform in self.transforms:
            image, target = transform(image, target)
        if target is None:
            return image
        return image, target

    def __repr__(self) -> str:
        lines = "".join(f"\n    {t}" for t in self.transforms)
        return f"{self.__class__.__name__}({lines}\n)"


def resized_shape(image_size: tuple[int, int], short_side: int, max_size: int | None) -> tuple[int, int]:
    """(height, width) after resizing a (width, height) image so its short side is `short_side`, long <= max_size.

    When the long side would exceed `max_size`, the short side becomes round(max_size * short / long). The long
    side is truncated (int), and an image whose short side already has the target length is left unchanged.
    """
    width, height = image_size
    if max_size is not None:
        short, long = float(min(width, height)), float(max(width, height))
        if long / short * short_side > max_size:
            short_side = int(round(max_size * short / long))
            if short_side < 1:
                raise ValueError(f"a {width}x{height} image is too elongated: with its long side at most {max_size} "
                                 "pixels (INPUT.MAX_SIZE_*), its short side would be 0 pixels; crop the image or "
                                 "leave it out")
    if (width <= height and width == short_side) or (height <= width and height == short_side):
        return height, width
    if width < height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


class Resize:
    """Resize so the short side is a random choice of `min_size`, keeping the long side <= `max_size`.

    With `restrict` (INPUT.FIX_RES) the image is resized to exactly (height, width) = (min_size, max_size).
    """

    def __init__(self, min_size: int | Sequence[int], max_size: int | None, restrict: bool = False) -> None:
        self.min_size = tuple(min_size) if isinstance(min_size, (list, tuple)) else (min_size,)
        self.max_size = max_size
        self.restrict = restrict

    def get_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Output (height, width) for an input (width, height); draws the short side with Python `random`."""
        size = random.choice(self.min_size)
        if self.restrict:
            return size, self.max_size
        return resized_shape(image_size, size, self.max_size)

    def __call__(self, image: Image.Image, target: Target = None):
        image = F.resize(image, list(self.get_size(image.size)))
        if target is not None:
            target = target.resize(image.size)
        return image, target

    def __repr__(self) -> str:
        name = self.__class__.__name__
        return f"{name}(min_size={self.min_size}, max_size={self.max_size}, restrict={self.restrict})"


class RandomHorizontalFlip:
    """Mirror image and boxes with probability `prob` (boxes: x1' = W - x2 - 1, x2' = W - x1 - 1)."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob

    def __call__(self, image: Image.Image, target: Target = None):
        # One draw per sample even when prob is 0, so the Python RNG advances as in GLIP.
        if random.random() < self.prob:
            image = F.hflip(image)
            if target is not None:
                target = target.transpose(FLIP_LEFT_RIGHT)
        return image, target

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(prob={self.prob})"


class ToTensor:
    """PIL image -> float tensor (C, H, W) in [0, 1]."""

    def __call__(self, image: Image.Image, target: Target = None):
        return F.to_tensor(image), target

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"


class Normalize:
    """(x - mean) / std, after optional RGB -> BGR reordering and x255 scaling, as named by `format`.

    `format` contains "bgr" to reverse the channels and "255" to scale [0, 1] -> [0, 255] (e.g. "bgr255").
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], format: str = "rgb") -> None:
        self.mean = list(mean)
        self.std = list(std)
        self.format = format.lower()

    def __call__(self, image: torch.Tensor, target: Target = None):
        if "bgr" in self.format:
            image = image[[2, 1, 0]]
        if "255" in self.format:
            image = image * 255
        return F.normalize(image, mean=self.mean, std=self.std), target

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(mean={self.mean}, std={self.std}, format={self.format!r})"
