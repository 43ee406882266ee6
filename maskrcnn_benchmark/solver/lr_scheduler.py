"""Learning-rate schedules: warm-up, then a step decay at fixed iterations or on a validation plateau."""
from bisect import bisect_right
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

WARMUP_METHODS = ("constant", "linear")


def warmup_factor_at(iteration: int, method: str, warmup_iters: int, warmup_factor: float) -> float:
    """Multiplier of the base LR during warm-up (1 from `warmup_iters` on).

    "constant" uses `warmup_factor` throughout; "linear" goes from `warmup_factor` at iteration 0 towards 1.
    """
    if iteration >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    alpha = iteration / warmup_iters
    return warmup_factor * (1 - alpha) + alpha


class WarmupMultiStepLR(LRScheduler):
    """base_lr * warm-up factor * gamma ** (number of milestones <= iteration), per parameter group.

    `last_epoch` counts iterations: the scheduler is stepped once per iteration.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[int], gamma: float = 0.1,
                 warmup_factor: float = 1.0 / 3, warmup_iters: int = 500, warmup_method: str = "linear",
                 last_epoch: int = -1):
        if list(milestones) != sorted(milestones):
            raise ValueError(f"Milestones should be a list of increasing integers, got {list(milestones)}.")
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(f"Only {WARMUP_METHODS} warm-up methods are accepted, got {warmup_method!r}.")
        self.milestones = list(milestones)
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """The LR of every group at iteration `last_epoch` (closed form)."""
        factor = warmup_factor_at(self.last_epoch, self.warmup_method, self.warmup_iters, self.warmup_factor)
        decay = self.gamma ** bisect_right(self.milestones, self.last_epoch)
        return [base_lr * factor * decay for base_lr in self.base_lrs]


class WarmupReduceLROnPlateau(ReduceLROnPlateau):
    """Warm-up per iteration, then the LR times `gamma` when the validation AP stalls (SOLVER.USE_AUTOSTEP).

    As officially: `step()` without a metric advances the warm-up only (its last iteration already uses the full
    LR); `step(ap)` after the warm-up counts evaluations, and after more than `patience` evaluations without an AP
    above the best (relative threshold 1e-4) every group's LR is multiplied by `gamma`, never below `min_lr`.
    A step with a metric during the warm-up advances the warm-up instead, and an AP of exactly 0 is not counted
    (the official code tests the metric's truth value).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, gamma: float = 0.1, warmup_factor: float = 1.0 / 3,
                 warmup_iters: int = 500, warmup_method: str = "linear", min_lr: float = 0.0, patience: int = 5):
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(f"Only {WARMUP_METHODS} warm-up methods are accepted, got {warmup_method!r}.")
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        super().__init__(optimizer, mode="max", factor=gamma, patience=patience, min_lr=min_lr)

    def step(self, metrics: float | None = None) -> None:  # type: ignore[override]
        """One warm-up iteration, or (after the warm-up) one evaluation's AP towards the plateau."""
        if self.last_epoch < self.warmup_iters:
            factor = 1.0 if self.last_epoch >= self.warmup_iters - 1 else warmup_factor_at(
                self.last_epoch, self.warmup_method, self.warmup_iters, self.warmup_factor)
            for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base_lr * factor
            self.last_epoch += 1
            self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        elif metrics:
            super().step(metrics)
