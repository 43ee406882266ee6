"""Batch sampler that re-iterates its base sampler until a fixed number of iterations is reached."""
from typing import Iterator, List

from torch.utils.data.sampler import BatchSampler


class IterationBasedBatchSampler(BatchSampler):
    """Yield batches of `batch_sampler`, pass after pass, for iterations start_iter+1 .. num_iterations.

    Before each pass, a base sampler with `set_epoch` (DistributedSampler) gets the current iteration.
    `len()` is `num_iterations` (the whole schedule, as in GLIP).
    """

    def __init__(self, batch_sampler: BatchSampler, num_iterations: int, start_iter: int = 0) -> None:
        self.batch_sampler = batch_sampler
        self.num_iterations = num_iterations
        self.start_iter = start_iter

    def __iter__(self) -> Iterator[List[int]]:
        iteration = self.start_iter
        while iteration < self.num_iterations:
            if hasattr(self.batch_sampler.sampler, "set_epoch"):
                self.batch_sampler.sampler.set_epoch(iteration)
            pass_start = iteration
            for batch in self.batch_sampler:
                iteration += 1
                yield batch
                if iteration >= self.num_iterations:
                    return
            if iteration == pass_start:
                raise ValueError("The batch sampler yields no batch (fewer images than one batch with drop_last?)")

    def __len__(self) -> int:
        return self.num_iterations
