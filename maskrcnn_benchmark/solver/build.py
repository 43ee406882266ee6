"""Optimizer and learning-rate schedule from the SOLVER config."""
import logging
from collections.abc import Sequence

import torch
from torch import nn

from maskrcnn_benchmark.config.compat import check_supported

from .lr_scheduler import WarmupMultiStepLR, WarmupReduceLROnPlateau

logger = logging.getLogger(__name__)


def parameter_settings(name: str, base_lr: float, lang_lr: float, backbone_body_lr_factor: float,
                       bias_lr_factor: float, weight_decay: float, weight_decay_bias: float,
                       weight_decay_norm_factor: float) -> tuple[float, float]:
    """(lr, weight decay) of the parameter `name`, by the official substring rules.

    The language backbone trains at `lang_lr` and the visual backbone body at `base_lr * backbone_body_lr_factor`;
    any name containing "bias" (also bias_lang, bias0, relative_position_bias_table) gets `bias_lr_factor` times
    that LR and `weight_decay_bias`; any name containing "norm"/"Norm" has its decay multiplied by
    `weight_decay_norm_factor`.
    """
    lr = base_lr
    decay = weight_decay
    if "language_backbone" in name:
        lr = lang_lr
    if "backbone.body" in name and "language_backbone.body" not in name:
        lr = base_lr * backbone_body_lr_factor
    if "bias" in name:
        lr *= bias_lr_factor
        decay = weight_decay_bias
    if "norm" in name or "Norm" in name:
        decay *= weight_decay_norm_factor
    return lr, decay


def build_param_groups(model: nn.Module, **settings: float) -> list[dict]:
    """Trainable parameters grouped by equal (lr, weight_decay), groups in order of first appearance.

    The official code makes one group per parameter; grouping equal settings gives the same updates with far
    fewer optimizer kernels. `settings` are the keyword arguments of `parameter_settings`.
    """
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr, decay = parameter_settings(name, **settings)
        group = groups.setdefault((lr, decay), {"params": [], "lr": lr, "weight_decay": decay, "names": []})
        group["params"].append(param)
        group["names"].append(name)
    for group in groups.values():
        logger.debug("lr %g, weight decay %g: %d tensors (%s, ...)", group["lr"], group["weight_decay"],
                     len(group["params"]), group["names"][0])
        del group["names"]
    return list(groups.values())


class FullModelGradientClipping:
    """Optimizer mixin: clip the gradient norm over all parameters before each step."""

    def __init__(self, *args, clip_norm: float, norm_type: float = 2.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.clip_norm = clip_norm
        self.norm_type = norm_type

    def step(self, closure=None):
        """Clip the total gradient norm to `clip_norm`, then take the optimizer step."""
        params = [p for group in self.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.clip_norm, self.norm_type)
        return super().step(closure)


class ClippedSGD(FullModelGradientClipping, torch.optim.SGD):
    """SGD with full-model gradient-norm clipping."""


class ClippedAdamW(FullModelGradientClipping, torch.optim.AdamW):
    """AdamW with full-model gradient-norm clipping."""


OPTIMIZERS = {"SGD": (torch.optim.SGD, ClippedSGD), "ADAMW": (torch.optim.AdamW, ClippedAdamW)}


def _fused_kernels_apply(param_groups: list[dict]) -> bool:
    """Whether every parameter lives on a CUDA device, where fused AdamW updates all tensors in one kernel."""
    params = [p for group in param_groups for p in group["params"]]
    return bool(params) and all(p.device.type == "cuda" for p in params)


def build_optimizer(param_groups: list[dict], name: str, lr: float, momentum: float = 0.9,
                    clip_norm: float = 0.0, norm_type: float = 2.0) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW (torch defaults otherwise) on `param_groups`, clipping when `clip_norm` > 0.

    AdamW on CUDA parameters is the fused implementation (same update, one kernel, and no host sync under a
    float16 loss scaler); elsewhere PyTorch picks its foreach implementation.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER {name!r} is not supported; use one of {sorted(OPTIMIZERS)}.")
    plain, clipped = OPTIMIZERS[name]
    extra = {"momentum": momentum} if name == "SGD" else {}
    if name == "ADAMW" and _fused_kernels_apply(param_groups):
        extra["fused"] = True
    if clip_norm > 0:
        return clipped(param_groups, lr, clip_norm=clip_norm, norm_type=norm_type, **extra)
    return plain(param_groups, lr, **extra)


def make_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The SOLVER.OPTIMIZER optimizer over the trainable parameters, with SOLVER.CLIP_GRADIENTS (full model)."""
    check_supported(cfg, ("SOLVER",))  # the schedules of the official code that are not built
    solver = cfg.SOLVER
    groups = build_param_groups(
        model, base_lr=solver.BASE_LR, lang_lr=solver.LANG_LR,
        backbone_body_lr_factor=solver.BACKBONE_BODY_LR_FACTOR, bias_lr_factor=solver.BIAS_LR_FACTOR,
        weight_decay=solver.WEIGHT_DECAY, weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
        weight_decay_norm_factor=solver.WEIGHT_DECAY_NORM_FACTOR,
    )
    clipping = solver.CLIP_GRADIENTS
    # As officially, CLIP_GRADIENTS.NORM_TYPE is not read: the clipping always uses the L2 norm.
    clip_norm = clipping.CLIP_VALUE if clipping.ENABLED and clipping.CLIP_TYPE == "full_model" else 0.0
    return build_optimizer(groups, solver.OPTIMIZER, solver.BASE_LR, solver.MOMENTUM, clip_norm)


def resolve_milestones(steps: Sequence[float], max_iter: int) -> list[int]:
    """Iterations of the LR decays: a step below 1 is a fraction of `max_iter` (Python round), else an iteration."""
    return [round(step * max_iter) if step < 1 else int(step) for step in steps]


def max_iter_from_epochs(max_epoch: int, dataset_length: int, ims_per_batch: int) -> int:
    """Iterations of `max_epoch` passes over the data at the global batch size (official floor division)."""
    return max_epoch * dataset_length // ims_per_batch


def make_lr_scheduler(cfg, optimizer: torch.optim.Optimizer,
                      max_iter: int | None = None) -> WarmupMultiStepLR | WarmupReduceLROnPlateau:
    """Warm-up then step decay at SOLVER.STEPS; `max_iter` (default SOLVER.MAX_ITER) resolves fractional steps.

    With SOLVER.MAX_EPOCH the trainer passes the iteration count derived from the dataset length, so the config
    itself is never modified. With SOLVER.USE_AUTOSTEP the decay (by GAMMA, down to MIN_LR) comes instead after
    more than SOLVER.STEP_PATIENCE evaluations without a better validation AP (SOLVER.STEPS is then not read).
    """
    check_supported(cfg, ("SOLVER",))
    solver = cfg.SOLVER
    if solver.USE_AUTOSTEP:
        return WarmupReduceLROnPlateau(
            optimizer, solver.GAMMA, warmup_factor=solver.WARMUP_FACTOR, warmup_iters=solver.WARMUP_ITERS,
            warmup_method=solver.WARMUP_METHOD, min_lr=solver.MIN_LR, patience=solver.STEP_PATIENCE,
        )
    max_iter = solver.MAX_ITER if max_iter is None else max_iter
    return WarmupMultiStepLR(
        optimizer, resolve_milestones(solver.STEPS, max_iter), solver.GAMMA, warmup_factor=solver.WARMUP_FACTOR,
        warmup_iters=solver.WARMUP_ITERS, warmup_method=solver.WARMUP_METHOD,
    )
