"""A dataset repeated a whole number of times (DATASETS.GENERAL_COPY): index i reads item i % len."""
from typing import Any

from torch.utils.data import Dataset


class DuplicateDataset(Dataset):
    """`copies` back-to-back repetitions of `dataset`; other attributes (coco, ...) are those of `dataset`."""

    def __init__(self, dataset: Dataset, copies: int) -> None:
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        self.dataset = dataset
        self.copies = copies

    def __len__(self) -> int:
        return self.copies * len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        # As in GLIP, the sample reports the index inside the wrapped dataset.
        return self.dataset[index % len(self.dataset)]

    def get_img_info(self, index: int) -> dict:
        """Image info of the repeated item."""
        return self.dataset.get_img_info(index % len(self.dataset))

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on the wrapper; "dataset" itself must not recurse (unpickling).
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
