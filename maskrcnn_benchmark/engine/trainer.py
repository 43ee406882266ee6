"""One training step and its bookkeeping (AMP, non-finite guard, EMA, loss history, logging, checkpoints), and
GLIP's do_train entry, which runs them through engine.train_loop.Trainer."""
import datetime
import logging
import math
import os
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from torch import nn

from maskrcnn_benchmark.layers.deform_conv import NonFiniteOffsetError
from maskrcnn_benchmark.utils.amp import amp_dtype, autocast
from maskrcnn_benchmark.utils.comm import (
    all_gather,
    any_rank,
    get_rank,
    is_distributed,
    is_main_process,
    named_collective,
    reduce_dict,
)
from maskrcnn_benchmark.utils.device import peak_memory_mb
from maskrcnn_benchmark.utils.ema import ModelEma, unwrap_model
from maskrcnn_benchmark.utils.metric_logger import MetricLogger
from maskrcnn_benchmark.utils.miscellaneous import get_rng_state, save_loss_curve, set_rng_state

logger = logging.getLogger("maskrcnn_benchmark.trainer")


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite (and SOLVER.SKIP_NONFINITE_STEPS is off)."""


class NoTrainingStepError(RuntimeError):
    """A run reached its last iteration without a single optimizer step (every batch or step was skipped)."""


def reduce_loss_dict(loss_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each loss averaged over all processes, available on every process."""
    return reduce_dict(loss_dict, average=True)


def too_many_negatives(targets: Sequence, max_negative_share: float, device: torch.device) -> bool:
    """True when, on any process, every image or more than `max_negative_share` of them has no box.

    The decision is shared so that all processes skip the same batches (GLIP decides per process).
    """
    negatives = sum(len(target) < 1 for target in targets)
    local = negatives == len(targets) or negatives > len(targets) * max_negative_share
    return any_rank(local, device)


def log_execution_plan(model: nn.Module) -> None:
    """Log the execution plan the model computes with (layers/execution_plan.py)."""
    plan = unwrap_model(model).execution_plan
    logger.info("Execution plan: %s", plan.describe())


def forward_losses(model: nn.Module, batch: Any, device: torch.device, use_amp: bool,
                   dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The model's loss dict for one collated batch, under autocast to `dtype` (default: the device's AMP dtype)
    when `use_amp`."""
    # Asynchronous copies: the loader pins its batches for accelerators (DataLoader pin_memory).
    images = batch.images.to(device, non_blocking=True)
    tokenized = batch.tokenized
    if tokenized is not None:
        tokenized = {name: value.to(device, non_blocking=True) for name, value in tokenized.items()}
    with autocast(device.type, enabled=use_amp, dtype=dtype):
        loss_dict = model(images, list(batch.targets), captions=batch.captions, positive_map=batch.positive_map,
                          greenlight_map=batch.greenlight_map, tokenized=tokenized)
    return {name: loss.float() for name, loss in loss_dict.items()}


def gradient_norm(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """L2 norm of all gradients of the optimized parameters, a 0-dim tensor left on their device (NaN/inf when any
    gradient is non-finite)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def _scaling(scaler: torch.amp.GradScaler | None) -> bool:
    return scaler is not None and scaler.is_enabled()


def backward(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Fresh gradients of `loss`; returns the gradient norm to check before `apply_step` (without reading it).

    With an enabled loss scaler the gradients are unscaled here, so that the clipping inside the optimizer step
    sees the true ones (also with fused AdamW, which would otherwise unscale inside its kernel); the scaler
    checks them itself, and the returned norm is 0.
    """
    optimizer.zero_grad(set_to_none=True)
    # Under DDP the backward pass all-reduces the gradients: a hung or dead process fails it after the timeout.
    with named_collective("the gradient all_reduce of DDP's backward pass") if is_distributed() else nullcontext():
        if _scaling(scaler):
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            return torch.zeros((), device=loss.device)
        loss.backward()
    return gradient_norm(optimizer)


def apply_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
    """The optimizer step after `backward` (through the scaler, which skips it when the gradients overflowed)."""
    if _scaling(scaler):
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def drop_step(scaler: torch.amp.GradScaler | None = None) -> None:
    """Close a step that `backward` began but that is not applied (the scaler lowers its scale)."""
    if _scaling(scaler):
        scaler.update()


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None = None) -> float:
    """Backward pass and one optimizer step; returns the gradient norm (not stepped when it is non-finite).

    With an enabled loss scaler, the scaler itself skips steps whose scaled gradients overflowed (that is
    normal float16 behaviour and returns 0.0 here).
    """
    norm = float(backward(loss, optimizer, scaler))
    if math.isfinite(norm):
        apply_step(optimizer, scaler)
    else:
        drop_step(scaler)
    return norm


def nonfinite_message(iteration: int, losses: dict[str, float], what: str = "loss") -> str:
    """What the log says about a non-finite loss (or gradient): the iteration and every loss value."""
    values = ", ".join(f"{name} = {value:.6g}" for name, value in losses.items())
    return f"Non-finite {what} at iteration {iteration}: {values}"


def nonfinite_offsets_message(iteration: int, model: nn.Module, error: NonFiniteOffsetError | None) -> str:
    """What the log says when a deformable conv was given NaN/inf offsets (`error` is None on other processes)."""
    if error is None:
        return f"Non-finite deformable-conv offsets at iteration {iteration} on another process"
    located = error.located(unwrap_model(model), f"Non-finite values inside the model at iteration {iteration}")
    return str(located).rstrip(".")


def log_line(meters: MetricLogger, iteration: int, max_iter: int, optimizer: torch.optim.Optimizer,
             device: torch.device, skipped: int, skipped_batches: int = 0) -> str:
    """The periodic training log line."""
    eta_seconds = meters.time.global_avg * (max_iter - iteration)
    fields = [
        f"eta: {datetime.timedelta(seconds=int(eta_seconds))}",
        f"iter: {iteration}",
        str(meters),
        f"lr: {optimizer.param_groups[0]['lr']:.6f}",
        f"wd: {optimizer.param_groups[0]['weight_decay']:.6f}",
        f"max mem: {peak_memory_mb(device):.0f}",
    ]
    if skipped:
        fields.append(f"skipped steps: {skipped}")
    if skipped_batches:
        fields.append(f"skipped batches: {skipped_batches}")
    return meters.delimiter.join(fields)


# Iterations at the start of a run left out of the throughput: their first-call costs (allocator growth, kernel
# selection, lazy initialisation) are not the training speed.
WARMUP_ITERATIONS = 10


class Throughput(NamedTuple):
    """Training speed over the iterations after warm-up."""

    images_per_second: float
    images: int
    seconds: float
    warmup_iterations: int


def training_throughput(iteration_seconds: Sequence[float], images_per_iteration: int,
                        warmup: int = WARMUP_ITERATIONS) -> Throughput:
    """Images over their summed iteration time after warm-up (not the mean of per-iteration rates).

    At most half of the iterations count as warm-up, so that a short run still measures something.
    """
    left_out = min(warmup, len(iteration_seconds) // 2)
    timed = list(iteration_seconds)[left_out:]
    seconds = float(sum(timed))
    images = images_per_iteration * len(timed)
    return Throughput(images / seconds if seconds > 0 else 0.0, images, seconds, left_out)


def log_training_summary(total_time: float, iterations: int, iteration_seconds: Sequence[float],
                         images_per_iteration: int) -> None:
    """The total training time and the throughput line the launch scripts report."""
    logger.info("Total training time: %s (%.4f s / it)", datetime.timedelta(seconds=int(total_time)),
                total_time / max(iterations, 1))
    if iteration_seconds:
        speed = training_throughput(iteration_seconds, images_per_iteration)
        logger.info("Training throughput: %.3f images/s (%d images in %.3f s of training iterations, data loading "
                    "included; the first %d iterations left out as warm-up)", speed.images_per_second,
                    speed.images, speed.seconds, speed.warmup_iterations)


def save_checkpoint(checkpointer, name: str, arguments: dict[str, Any], tag_last: bool = True) -> None:
    """Save `name` with every process's random-generator states (a collective: all processes call it);
    `tag_last` False leaves `last_checkpoint` where it was (model_best)."""
    rng_states = all_gather(get_rng_state())
    checkpointer.save(name, tag_last=tag_last, rng_states=rng_states, **arguments)


def restore_rng_state(rng_states: list[dict[str, Any]] | None) -> None:
    """Restore this process's random generators from a checkpoint's per-process list."""
    if not rng_states:
        return
    rank = get_rank()
    if rank < len(rng_states):
        set_rng_state(rng_states[rank])
    else:
        logger.warning("The checkpoint holds random states for %d processes only; process %d keeps its own.",
                       len(rng_states), rank)


def record_losses(history: dict[str, list[float]], iteration: int, losses: dict[str, float]) -> None:
    """Append one iteration's losses to the loss history (kept in the checkpoints)."""
    history.setdefault("iteration", []).append(iteration)
    for name, value in losses.items():
        history.setdefault(name, []).append(value)


def write_loss_curve(history: dict[str, list[float]], output_dir: str) -> None:
    """loss_curve.png in `output_dir` from the loss history (rank 0)."""
    if not is_main_process() or not output_dir or not history.get("iteration"):
        return
    iterations = history["iteration"]
    curves = {name: values for name, values in history.items() if name != "iteration"}
    path = os.path.join(output_dir, "loss_curve.png")
    drawn = save_loss_curve(iterations, curves, path)
    left_out = [name for name in curves if name not in drawn]
    logger.info("Loss curve written to %s%s", path,
                f" (not drawn, 0 at every iteration: {', '.join(left_out)})" if left_out else "")


def do_train(
    cfg,
    model: nn.Module,
    data_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler,
    checkpointer,
    device: torch.device,
    checkpoint_period: int,
    arguments: dict[str, Any],
    val_data_loader: Iterable | None = None,
    meters: MetricLogger | None = None,
    early_stop_iteration: int = -1,
    scaler: torch.amp.GradScaler | None = None,
    model_ema: ModelEma | None = None,
    hooks: Sequence | None = None,
) -> dict[str, Any]:
    """Train from arguments["iteration"] to len(data_loader) (or `early_stop_iteration`); returns `arguments`.

    GLIP's entry point, kept for scripts that build the pieces themselves: it runs an engine.train_loop.Trainer
    over them, whose hooks (default: engine.hooks.default_hooks) checkpoint every `checkpoint_period`
    iterations and at the end, and with `val_data_loader` evaluate every TEST.EVAL_PERIOD iterations.
    """
    from .train_loop import Trainer  # the loop's module builds on this one's step functions

    trainer = Trainer(cfg, model, data_loader, optimizer, scheduler, checkpointer, device, arguments, scaler=scaler,
                      model_ema=model_ema, val_data_loader=val_data_loader, meters=meters,
                      hooks=list(hooks) if hooks is not None else None, checkpoint_period=checkpoint_period)
    return trainer.train(early_stop_iteration)


def train_step(cfg, model: nn.Module, batch: Any, optimizer: torch.optim.Optimizer, scheduler, device: torch.device,
               scaler: torch.amp.GradScaler | None, model_ema: ModelEma | None, arguments: dict[str, Any],
               meters: MetricLogger, iteration: int) -> None:
    """Forward, non-finite checks, backward, optimizer/scheduler/EMA step and loss bookkeeping for one batch."""
    try:
        loss_dict = forward_losses(model, batch, device, cfg.SOLVER.USE_AMP,
                                   amp_dtype(device.type, cfg.SOLVER.AMP_DTYPE))
        offset_error = None
    except NonFiniteOffsetError as error:
        loss_dict, offset_error = None, error
    # Every process learns of it (one flag, exchanged only under DDP), so that all skip or stop this step.
    if any_rank(offset_error is not None, device):
        handle_nonfinite(cfg, nonfinite_offsets_message(iteration, model, offset_error), optimizer, scheduler,
                         arguments)
        return
    reduced = reduce_loss_dict(loss_dict)
    total = sum(reduced.values())
    norm = backward(sum(loss_dict.values()), optimizer, scaler)
    # The step's one device-to-host copy: every logged value and the gradient norm together (each .item() would
    # wait for the device on its own). A non-finite loss is found after its backward pass, which is then dropped.
    total_value, *loss_values, norm_value = torch.stack([total, *reduced.values(), norm.to(total)]).tolist()
    losses = dict(zip(reduced, loss_values))
    if not math.isfinite(total_value):
        drop_step(scaler)
        handle_nonfinite(cfg, nonfinite_message(iteration, {**losses, "loss": total_value}), optimizer, scheduler,
                         arguments)
        return
    if not math.isfinite(norm_value):
        # A non-finite gradient with a finite loss would turn every weight into NaN through the update.
        drop_step(scaler)
        message = nonfinite_message(iteration, {**losses, "loss": total_value}, what="gradient")
        handle_nonfinite(cfg, f"{message}, gradient norm = {norm_value}", optimizer, scheduler, arguments)
        return
    apply_step(optimizer, scaler)
    scheduler.step()
    if model_ema is not None:
        model_ema.update(model)
    values = {"loss": total_value, **losses}
    meters.update(**values)
    record_losses(arguments["loss_history"], iteration, values)


def handle_nonfinite(cfg, message: str, optimizer: torch.optim.Optimizer, scheduler,
                     arguments: dict[str, Any]) -> None:
    """Stop with NonFiniteLossError, or with SOLVER.SKIP_NONFINITE_STEPS drop this step and count it."""
    if not cfg.SOLVER.SKIP_NONFINITE_STEPS:
        raise NonFiniteLossError(message + ". Training stopped; the last checkpoint is intact. Set "
                                 "SOLVER.SKIP_NONFINITE_STEPS True to skip such steps instead.")
    arguments["skipped_steps"] += 1
    logger.warning("%s; step skipped (%d so far).", message, arguments["skipped_steps"])
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


# Why a batch loses all its boxes, told with the first skipped batch and in the error when nothing trained.
NO_BOX_CAUSE = ("Training images lose their boxes when their categories do not fit in the caption (longer than "
                "MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN tokens; see the warning about left-out categories) or when "
                "no box survives the resizing and cropping")


def skip_batch(cfg, iteration: int, arguments: dict[str, Any]) -> None:
    """Count a batch skipped for having too many images without boxes, with a warning giving the running count."""
    arguments["skipped_batches"] += 1
    count = arguments["skipped_batches"]
    logger.warning("Iteration %d: batch skipped: more than SOLVER.MAX_NEG_PER_BATCH = %s of its images have no "
                   "boxes (%d batch%s skipped so far).%s", iteration, cfg.SOLVER.MAX_NEG_PER_BATCH, count,
                   "" if count == 1 else "es", f" {NO_BOX_CAUSE}." if count == 1 else "")


def check_trained(cfg, iteration: int, arguments: dict[str, Any]) -> None:
    """Raise NoTrainingStepError when the run has reached its end without one optimizer step (resumes included)."""
    if arguments["loss_history"].get("iteration"):
        return
    raise NoTrainingStepError(
        f"No optimizer step was taken in iterations 1-{iteration}: {arguments['skipped_batches']} batches were "
        f"skipped because more than SOLVER.MAX_NEG_PER_BATCH = {cfg.SOLVER.MAX_NEG_PER_BATCH} of their images "
        f"had no boxes, and {arguments['skipped_steps']} steps had a non-finite loss. The model was not trained, "
        f"so no final checkpoint was written to {cfg.OUTPUT_DIR!r}. {NO_BOX_CAUSE}: raise MAX_QUERY_LEN, use "
        "fewer categories per caption, or check the annotations.")


def log_skip_totals(arguments: dict[str, Any]) -> None:
    """The run's totals of optimizer steps and of skipped batches and steps (a warning when any was skipped)."""
    steps = len(arguments["loss_history"].get("iteration", []))
    batches, nonfinite = arguments["skipped_batches"], arguments["skipped_steps"]
    level = logging.WARNING if batches or nonfinite else logging.INFO
    logger.log(level, "Optimizer steps taken (whole run): %d; batches skipped (too many images without boxes): "
               "%d; steps skipped (non-finite loss): %d.", steps, batches, nonfinite)
