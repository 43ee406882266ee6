"""One training run as an object: the Trainer owns what it trains with, built once from the config.

tools/train_net.py and tools/finetune.py build it with `Trainer.from_config` and call `train()`; the loop itself is
engine/trainer.py's `do_train`, and evaluation during training, model_best, the LR auto-step and early termination
are its hooks (engine/hooks.py).
"""
import logging
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

from .hooks import TrainingHook
from .trainer import do_train, log_execution_plan

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
    """Model, optimizer, scheduler, loss scaler, EMA, checkpointer and loaders of one run, and its training state.

    `arguments` is the state that travels in checkpoints (iteration, loss history, best evaluation, ...).
    `hooks` default to those the config asks for (engine.trainer.training_hooks).
    """

    def __init__(self, cfg, model: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer, scheduler,
                 checkpointer, device: torch.device, arguments: dict[str, Any], *,
                 scaler: torch.amp.GradScaler | None = None, model_ema: ModelEma | None = None,
                 val_data_loader: Iterable | None = None, meters: MetricLogger | None = None,
                 hooks: list[TrainingHook] | None = None):
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
        self.hooks = hooks

    @property
    def module(self) -> nn.Module:
        """The model without its DistributedDataParallel wrapper."""
        return self.model.module if hasattr(self.model, "module") else self.model

    def train(self, early_stop_iteration: int = -1) -> dict[str, Any]:
        """Train from the current iteration to the end (or `early_stop_iteration`); returns the state."""
        return do_train(self.cfg, self.model, self.data_loader, self.optimizer, self.scheduler, self.checkpointer,
                        self.device, checkpoint_period_of(self.cfg, len(self.data_loader)), self.arguments,
                        self.val_data_loader, self.meters, early_stop_iteration=early_stop_iteration,
                        scaler=self.scaler, model_ema=self.model_ema, hooks=self.hooks)

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
        checkpointer = DetectronCheckpointer(cfg, model, optimizer, scheduler, cfg.OUTPUT_DIR,
                                             save_to_disk=get_rank() == 0, scaler=scaler,
                                             keep_last=cfg.SOLVER.KEEP_LAST_CHECKPOINTS)
        arguments = load_or_resume(cfg, checkpointer, resume, restart, skip_optimizer_resume)
        # The loader was sized before the checkpoint was read: it continues from the checkpointed iteration.
        data_loader.batch_sampler.start_iter = arguments["iteration"]
        model_ema = build_ema(cfg, model, arguments)
        checkpointer.model_ema = model_ema
        if distributed:
            model = wrap_ddp(cfg, model, device)
        val_data_loader = None
        if cfg.TEST.DURING_TRAINING:
            val_data_loader = make_data_loader(cfg, is_train=False, is_distributed=distributed)[0]
        meters = (TensorboardLogger(cfg.OUTPUT_DIR, start_iter=arguments["iteration"], delimiter="  ")
                  if use_tensorboard else MetricLogger(delimiter="  "))
        return cls(cfg, model, data_loader, optimizer, scheduler, checkpointer, device, arguments, scaler=scaler,
                   model_ema=model_ema, val_data_loader=val_data_loader, meters=meters)


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


def build_ema(cfg, model: nn.Module, arguments: dict[str, Any]) -> ModelEma | None:
    """SOLVER.MODEL_EMA's average, from the loaded weights (as officially); a resumed run's average restored."""
    if cfg.SOLVER.MODEL_EMA <= 0:
        return None
    model_ema = ModelEma(model, decay=cfg.SOLVER.MODEL_EMA)
    if "model_ema" in arguments:
        model_ema.load_state_dict(arguments.pop("model_ema"))
    return model_ema


def wrap_ddp(cfg, model: nn.Module, device: torch.device) -> nn.Module:
    """The model in DistributedDataParallel on its device (checkpoints save the wrapped module)."""
    accelerator = device.type in ("cuda", "npu")
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if accelerator else None,
        output_device=device.index if accelerator else None,
        broadcast_buffers=cfg.MODEL.BACKBONE.USE_BN, find_unused_parameters=cfg.SOLVER.FIND_UNUSED_PARAMETERS,
    )
