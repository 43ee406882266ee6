"""Concatenation of datasets that still answers `get_img_info` (needed for aspect-ratio grouping)."""
import bisect

from torch.utils.data import ConcatDataset as _TorchConcatDataset


class ConcatDataset(_TorchConcatDataset):
    """torch ConcatDataset plus `get_img_info(index)` of the dataset holding that index."""

    def get_idxs(self, index: int) -> tuple[int, int]:
        """(dataset position, index inside that dataset) of a global index."""
        dataset_idx = bisect.bisect_right(self.cumulative_sizes, index)
        offset = self.cumulative_sizes[dataset_idx - 1] if dataset_idx > 0 else 0
        return dataset_idx, index - offset

    def get_img_info(self, index: int) -> dict:
        """Image info (width, height, ...) of a global index."""
        dataset_idx, sample_idx = self.get_idxs(index)
        return self.datasets[dataset_idx].get_img_info(sample_idx)
