"""Batch sampler that re-iterates its base sampler until a fixed number of iterations is reached."""
import itertools
from collections.abc import Iterator

from torch.utils.data.sampler import BatchSampler


class IterationBasedBatchSampler(BatchSampler):
    """Yield batches of `batch_sampler`, pass after pass, for iterations start_iter+1 .. num_iterations.

    Before each pass, a base sampler with `set_epoch` (DistributedSampler) gets the iteration where the pass
    starts. Such a sampler orders every pass reproducibly, so `start_iter` resumes exactly where an uninterrupted
    run would be, inside its pass; other samplers start a new pass at `start_iter`.
    `len()` is `num_iterations` (the whole schedule, as in GLIP).
    """

    def __init__(self, batch_sampler: BatchSampler, num_iterations: int, start_iter: int = 0) -> None:
        self.batch_sampler = batch_sampler
        self.num_iterations = num_iterations
        self.start_iter = start_iter

    def _set_epoch(self, pass_start: int) -> None:
        if hasattr(self.batch_sampler.sampler, "set_epoch"):
            self.batch_sampler.sampler.set_epoch(pass_start)

    def _resume_position(self) -> tuple[int, int]:
        """(iteration where the pass holding iteration start_iter + 1 starts, batches of it already done)."""
        sampler = self.batch_sampler.sampler
        if not hasattr(sampler, "set_epoch") or getattr(sampler, "use_random", False):
            return self.start_iter, 0
        pass_start = 0
        while True:
            self._set_epoch(pass_start)
            length = len(self.batch_sampler)
            if length == 0:
                raise ValueError("The batch sampler yields no batch (fewer images than one batch with drop_last?)")
            if pass_start + length > self.start_iter:
                return pass_start, self.start_iter - pass_start
            pass_start += length

    def __iter__(self) -> Iterator[list[int]]:
        pass_start, done = self._resume_position()
        iteration = pass_start + done
        while iteration < self.num_iterations:
            self._set_epoch(pass_start)
            for batch in itertools.islice(self.batch_sampler, done, None):
                iteration += 1
                yield batch
                if iteration >= self.num_iterations:
                    return
            if iteration == pass_start:
                raise ValueError("The batch sampler yields no batch (fewer images than one batch with drop_last?)")
            pass_start, done = iteration, 0

    def __len__(self) -> int:
        return self.num_iterations
