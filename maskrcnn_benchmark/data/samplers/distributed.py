"""Sampler giving each process of a distributed run its own share of the dataset."""
import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from maskrcnn_benchmark.utils.comm import shared_random_seed


class DistributedSampler(Sampler):
    """Split the (optionally shuffled) indices into `num_replicas` equal parts; part `rank` is iterated.

    The index list is padded by repeating its start so every part has the same length. The shuffle is seeded
    with the epoch (`set_epoch`; the iteration-based batch sampler sets it to the iteration where each pass
    starts) or, when `use_random`, with a fresh seed shared by all processes (DATALOADER.USE_RANDOM_SEED).
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, use_random: bool = False) -> None:
        if num_replicas is None or rank is None:
            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError("DistributedSampler needs num_replicas and rank, or an initialized process group")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.num_samples = int(math.ceil(len(dataset) / num_replicas))
        self.total_size = self.num_samples * num_replicas
        self.shuffle = shuffle
        self.use_random = use_random

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(shared_random_seed() if self.use_random else self.epoch)
            indices = torch.randperm(len(self.dataset), generator=generator).tolist()
        else:
            indices = list(range(len(self.dataset)))
        indices += indices[: self.total_size - len(indices)]
        start = self.num_samples * self.rank
        return iter(indices[start:start + self.num_samples])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Seed of the next shuffle (when not `use_random`)."""
        self.epoch = epoch
