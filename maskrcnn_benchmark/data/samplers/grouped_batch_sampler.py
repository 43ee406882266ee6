"""Batches whose images all belong to the same group (e.g. portrait vs landscape)."""
from collections.abc import Iterator, Sequence

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

    def _prepare_batches(self) -> list[list[int]]:
        # Work on sampler positions, not dataset indices: a distributed sampler pads its share with repeats.
        sampled = torch.as_tensor(list(self.sampler), dtype=torch.int64)
        positions = torch.arange(len(sampled))
        sampled_groups = self.group_ids[sampled] if len(sampled) else sampled
        batches = []
        for group in self.groups:
            members = positions[sampled_groups == group]
            batches.extend(chunk for chunk in members.split(self.batch_size) if len(chunk))
        batches.sort(key=lambda chunk: chunk[0].item())
        batches = [sampled[chunk].tolist() for chunk in batches]
        if self.drop_uneven:
            batches = [batch for batch in batches if len(batch) == self.batch_size]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        # Reuse the batches computed by __len__ once, so len() and the next pass agree.
        batches = self._batches if self._batches is not None else self._prepare_batches()
        self._batches = None
        return iter(batches)

    def __len__(self) -> int:
        if self._batches is None:
            self._batches = self._prepare_batches()
        return len(self._batches)
