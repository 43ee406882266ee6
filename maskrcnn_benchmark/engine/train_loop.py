"""One training run as an object: the Trainer owns what it trains with, built once from the config, and the loop.

tools/train_net.py and tools/finetune.py build it with `Trainer.from_config` and call `train()`. Each iteration
is one step (engine/trainer.py's train_step); logging, evaluation during training, model_best, the LR auto-step,
early termination, checkpoints and the loss curve are hooks (engine/hooks.py).
"""
import logging
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from maskrcnn_benchmark.config.paths_catalog import try_to_find
from maskrcnn_benchmark.data import make_data_loader
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.solver import make_lr_scheduler, make_optimizer
from maskrcnn_benchmark.utils.amp import amp_dtype, make_grad_scaler
from maskrcnn_benchmark.utils.checkpoint import DetectronCheckpointer
from maskrcnn_benchmark.utils.comm import get_rank
from maskrcnn_benchmark.utils.ema import ModelEma
from maskrcnn_benchmark.utils.metric_logger import MetricLogger, TensorboardLogger

from .hooks import TrainingHook, default_hooks
from .trainer import check_trained, log_execution_plan, restore_rng_state, skip_batch, too_many_negatives, train_step

logger = logging.getLogger("maskrcnn_benchmark.trainer")


def find_weight(weight: str) -> str:
    """MODEL.WEIGHT resolved like officially (./, $DATASET, ./DATASET, ./OUTPUT, ./data, ./MODEL)."""
    try:
        return try_to_find(weight)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"MODEL.WEIGHT {weight!r} was not found. Put the pretrained checkpoint there (e.g. "
            "pretrain/glip_tiny_model_o365_goldg_cc_sbu.pth, see DATA.md), give its path, or set MODEL.WEIGHT '' "
            f"to start from random weights. ({error})"
        ) from None


def checkpoint_period_of(cfg, max_iter: int) -> int:
    """SOLVER.CHECKPOINT_PERIOD, or the iterations of SOLVER.CHECKPOINT_PER_EPOCH epochs when that is set."""
    if cfg.SOLVER.CHECKPOINT_PER_EPOCH != -1 and cfg.SOLVER.MAX_EPOCH >= 1:
        return max(int(max_iter * cfg.SOLVER.CHECKPOINT_PER_EPOCH // cfg.SOLVER.MAX_EPOCH), 1)
    return cfg.SOLVER.CHECKPOINT_PERIOD


class Trainer:
    """Model, optimizer, scheduler, loss scaler, EMA, checkpointer and loaders of one run, its state and its loop.

    `arguments` is the state that travels in checkpoints (iteration, loss history, best evaluation, ...).
    `hooks` default to those the config asks for (engine.hooks.default_hooks); `checkpoint_period` to
    SOLVER.CHECKPOINT_PERIOD or SOLVER.CHECKPOINT_PER_EPOCH.
    """

    def __init__(self, cfg, model: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer, scheduler,
                 checkpointer, device: torch.device, arguments: dict[str, Any], *,
                 scaler: torch.amp.GradScaler | None = None, model_ema: ModelEma | None = None,
                 val_data_loader: Iterable | None = None, meters: MetricLogger | None = None,
                 hooks: list[TrainingHook] | None = None, checkpoint_period: int | None = None):
        self.cfg = cfg
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.checkpointer = checkpointer
        self.device = device
        self.arguments = arguments
        self.scaler = scaler
        self.model_ema = model_ema
        self.val_data_loader = val_data_loader
        self.meters = meters if meters is not None else MetricLogger(delimiter="  ")
        self.max_iter = len(data_loader)
        self.checkpoint_period = (checkpoint_period if checkpoint_period is not None
                                  else checkpoint_period_of(cfg, self.max_iter))
        self.hooks = hooks if hooks is not None else default_hooks(cfg, val_data_loader, self.checkpoint_period,
                                                                   self.max_iter)
        # The loop's own state, read by the hooks.
        self.start_iter = self.stop_iter = arguments["iteration"]
        self.start_time = time.perf_counter()
        self.iteration_seconds: list[float] = []  # each timed iteration of this run, for the throughput
        self.stop_requested = False

    @property
    def module(self) -> nn.Module:
        """The model without its DistributedDataParallel wrapper."""
        return self.model.module if hasattr(self.model, "module") else self.model

    def train(self, early_stop_iteration: int = -1) -> dict[str, Any]:
        """Train from the current iteration to the end (or `early_stop_iteration`, the LR schedule still spanning
        the whole run); returns `arguments`. A hook can end the run early (early termination)."""
        self.start_iter = self.arguments["iteration"]
        self.stop_iter = min(self.max_iter, early_stop_iteration) if early_stop_iteration > 0 else self.max_iter
        self.iteration_seconds, self.stop_requested = [], False
        for key, empty in (("loss_history", {}), ("skipped_steps", 0), ("skipped_batches", 0)):
            self.arguments.setdefault(key, empty)
        if any([hook.before_train(self) for hook in self.hooks]):
            self.meters.close()
            return self.arguments
        logger.info("Start training from iteration %d to %d", self.start_iter, self.stop_iter)
        self.model.train()
        start_loader_at(self.data_loader, self.start_iter)
        data_iter = iter(self.data_loader)
        # After the loader's iterator exists (creating it draws from torch's generator), as at the checkpointed point.
        restore_rng_state(self.arguments.pop("rng_states", None))
        self.start_time = end = time.perf_counter()
        for iteration, batch in zip(range(self.start_iter + 1, self.stop_iter + 1), data_iter):
            self.arguments["iteration"] = iteration
            self.run_step(batch, started=end, data_time=time.perf_counter() - end)
            for hook in self.hooks:
                self.stop_requested = hook.after_step(self) or self.stop_requested
            end = time.perf_counter()
            if self.stop_requested:
                break
        for hook in self.hooks:
            hook.after_train(self)
        self.meters.close()
        return self.arguments

    def run_step(self, batch: Any, started: float, data_time: float) -> None:
        """Train on one batch (or skip it when too many of its images have no box) and time the step."""
        cfg, iteration = self.cfg, self.arguments["iteration"]
        if too_many_negatives(batch.targets, cfg.SOLVER.MAX_NEG_PER_BATCH, self.device):
            skip_batch(cfg, iteration, self.arguments)
        else:
            train_step(cfg, self.model, batch, self.optimizer, self.scheduler, self.device, self.scaler,
                       self.model_ema, self.arguments, self.meters, iteration)
            batch_time = time.perf_counter() - started
            self.meters.update(time=batch_time, data=data_time, fps=cfg.SOLVER.IMS_PER_BATCH / batch_time)
            self.iteration_seconds.append(batch_time)
            self.meters.write_scalars(iteration)
        if iteration == self.stop_iter:
            # Before the hooks' evaluation and final checkpoint: an untrained model is no result.
            check_trained(cfg, iteration, self.arguments)

    def after_evaluation(self, average_precision: float) -> bool:
        """Give an evaluation's AP to every hook (all of them, also after one asked to stop: as officially the best
        is saved first); True when one stops the run."""
        return any([hook.after_evaluation(self, average_precision) for hook in self.hooks])

    @classmethod
    def from_config(cls, cfg, device: torch.device, distributed: bool, use_tensorboard: bool = False,
                    resume: bool = False, restart: bool = False, skip_optimizer_resume: bool = False) -> "Trainer":
        """Build everything from `cfg`, then load MODEL.WEIGHT or resume OUTPUT_DIR's last checkpoint.

        `resume` insists on a checkpoint, `restart` starts from MODEL.WEIGHT even when there is one, and
        `skip_optimizer_resume` resumes the weights only (iteration 0, fresh optimizer and schedule).
        """
        if resume and restart:
            raise ValueError("--resume and --no-resume contradict each other: give one of them.")
        model = build_detection_model(cfg).to(device)
        log_execution_plan(model)
        if cfg.SOLVER.GRAD_CLIP > 0:
            logger.warning("SOLVER.GRAD_CLIP has no effect (officially its hooks are never registered); "
                           "use SOLVER.CLIP_GRADIENTS.")
        data_loader = make_data_loader(cfg, is_train=True, is_distributed=distributed, start_iter=0)
        max_iter = len(data_loader)
        if cfg.SOLVER.MAX_EPOCH >= 1:
            logger.info("%d iterations (%d per epoch)", max_iter, max_iter // cfg.SOLVER.MAX_EPOCH)
        optimizer = make_optimizer(cfg, model)
        scheduler = make_lr_scheduler(cfg, optimizer, max_iter)
        scaler = make_grad_scaler(device.type, cfg.SOLVER.USE_AMP, amp_dtype(device.type, cfg.SOLVER.AMP_DTYPE))
        # The average starts at the loaded weights, or continues a resumed run's (the checkpointer sees to both).
        model_ema = ModelEma(model, decay=cfg.SOLVER.MODEL_EMA) if cfg.SOLVER.MODEL_EMA > 0 else None
        checkpointer = DetectronCheckpointer(cfg, model, optimizer, scheduler, cfg.OUTPUT_DIR,
                                             save_to_disk=get_rank() == 0, scaler=scaler, model_ema=model_ema,
                                             keep_last=cfg.SOLVER.KEEP_LAST_CHECKPOINTS)
        arguments = load_or_resume(cfg, checkpointer, resume, restart, skip_optimizer_resume)
        if distributed:
            model = wrap_ddp(cfg, model, device)
        val_data_loader = None
        if cfg.TEST.DURING_TRAINING:
            val_data_loader = make_data_loader(cfg, is_train=False, is_distributed=distributed)[0]
        meters = (TensorboardLogger(cfg.OUTPUT_DIR, start_iter=arguments["iteration"], delimiter="  ")
                  if use_tensorboard else MetricLogger(delimiter="  "))
        return cls(cfg, model, data_loader, optimizer, scheduler, checkpointer, device, arguments, scaler=scaler,
                   model_ema=model_ema, val_data_loader=val_data_loader, meters=meters)


def start_loader_at(data_loader: Iterable, iteration: int) -> None:
    """Make the training loader's iteration-based batch sampler continue after `iteration` (the batches an
    uninterrupted run would see next); a resumed run on a loader that cannot continue is refused."""
    batch_sampler = getattr(data_loader, "batch_sampler", None)
    if hasattr(batch_sampler, "start_iter"):
        batch_sampler.start_iter = iteration
    elif iteration > 0:
        raise ValueError(f"Resuming at iteration {iteration} needs a training loader whose batch_sampler has "
                         "start_iter (make_data_loader's IterationBasedBatchSampler); this one would start over.")


def load_or_resume(cfg, checkpointer, resume: bool, restart: bool, skip_optimizer: bool) -> dict[str, Any]:
    """The training state after loading MODEL.WEIGHT, or after resuming OUTPUT_DIR (never with `restart`)."""
    resuming = checkpointer.has_checkpoint() and not restart
    if restart and checkpointer.has_checkpoint():
        logger.info("--no-resume: starting from MODEL.WEIGHT; %s in %s is not loaded (new checkpoints replace files "
                    "of the same name)", checkpointer.get_checkpoint_file(), cfg.OUTPUT_DIR)
    if resume and not resuming:
        raise FileNotFoundError(f"--resume: no last_checkpoint in OUTPUT_DIR {cfg.OUTPUT_DIR!r}.")
    if resuming:
        logger.info("Resuming from %s", checkpointer.get_checkpoint_file())
    weight = find_weight(cfg.MODEL.WEIGHT) if cfg.MODEL.WEIGHT and not resuming else ""
    arguments = {"iteration": 0}
    arguments.update(checkpointer.load(weight, force=restart, skip_optimizer=skip_optimizer))
    return arguments


def wrap_ddp(cfg, model: nn.Module, device: torch.device) -> nn.Module:
    """The model in DistributedDataParallel on its device (checkpoints save the wrapped module)."""
    accelerator = device.type in ("cuda", "npu")
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if accelerator else None,
        output_device=device.index if accelerator else None,
        broadcast_buffers=cfg.MODEL.BACKBONE.USE_BN, find_unused_parameters=cfg.SOLVER.FIND_UNUSED_PARAMETERS,
    )
