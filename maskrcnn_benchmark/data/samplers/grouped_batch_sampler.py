"""Batches whose images all belong to the same group (e.g. portrait vs landscape)."""
from typing import Iterator, List, Sequence

import torch
from torch.utils.data.sampler import BatchSampler, Sampler


class GroupedBatchSampler(BatchSampler):
    """Batch the indices of `sampler` so that each batch holds indices of one group only.

    Inside a group the sampler's order is kept; batches are then ordered by where their first index appears
    in the sampler's order. With `drop_uneven`, batches smaller than `batch_size` are dropped.
    """

    def __init__(self, sampler: Sampler, group_ids: Sequence[int], batch_size: int, drop_uneven: bool = False):
        if not isinstance(sampler, Sampler):
            raise ValueError(f"sampler should be a torch.utils.data.Sampler, got {sampler!r}")
        self.sampler = sampler
        self.group_ids = torch.as_tensor(group_ids)
        if self.group_ids.dim() != 1:
            raise ValueError("group_ids should be a 1-d sequence")
        self.batch_size = batch_size
        self.drop_uneven = drop_uneven
        self.groups = torch.unique(self.group_ids).sort(0)[0]
        self._batches = None

    def _prepare_batches(self) -> List[List[int]]:
        sampled = torch.as_tensor(list(self.sampler), dtype=torch.int64)
        # Position of each dataset index in the sampled order (-1: not sampled, e.g. another process's share).
        order = torch.full((len(self.group_ids),), -1, dtype=torch.int64)
        order[sampled] = torch.arange(len(sampled))
        batches = []
        for group in self.groups:
            members = (self.group_ids == group) & (order >= 0)
            in_sampler_order = sampled[order[members].sort()[0]]
            batches.extend(in_sampler_order.split(self.batch_size))
        position = {index: pos for pos, index in enumerate(sampled.tolist())}
        batches.sort(key=lambda batch: position[batch[0].item()])
        batches = [batch.tolist() for batch in batches]
        if self.drop_uneven:
            batches = [batch for batch in batches if len(batch) == self.batch_size]
        return batches

    def __iter__(self) -> Iterator[List[int]]:
        # Reuse the batches computed by __len__ once, so len() and the next pass agree.
        batches = self._batches if self._batches is not None else self._prepare_batches()
        self._batches = None
        return iter(batches)

    def __len__(self) -> int:
        if self._batches is None:
            self._batches = self._prepare_batches()
        return len(self._batches)
