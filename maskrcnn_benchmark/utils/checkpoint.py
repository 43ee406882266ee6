"""Checkpoint loading and saving in the official GLIP format (a dict whose `model` entry is the state_dict)."""
import logging
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .safe_unpickle import load_with_inert_objects

logger = logging.getLogger(__name__)

# Keys of official checkpoints that the model built here does not have, ignored by name when loading:
# BERT's pooler (the official model has none) and position_ids (a non-persistent buffer in current transformers).
IGNORED_KEY_SUFFIXES = ("embeddings.position_ids",)
IGNORED_KEY_PARTS = ("language_backbone.body.model.pooler.",)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be loaded into the model."""


@dataclass
class LoadReport:
    """What happened to the keys when a state_dict was loaded into a model."""

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)


def read_checkpoint(path: str, allow_inert_objects: bool = False) -> Any:
    """Load a checkpoint file with `weights_only=True`.

    Files that pickle other objects than tensors and containers are refused, unless `allow_inert_objects`:
    then those objects become inert placeholders (their code never runs) and are named in the log.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not allow_inert_objects:
            raise CheckpointError(
                f"{path} holds pickled objects other than tensors and containers, so it was refused "
                f"(weights_only=True): {_unpickling_reason(error)}. If you trust its origin only as far as its "
                "tensors, load it with allow_inert_objects=True (such objects become inert placeholders)."
            ) from error
    checkpoint, skipped = load_with_inert_objects(path)
    logger.warning("%s: replaced objects of these classes by inert placeholders: %s", path, ", ".join(skipped))
    return checkpoint


def _unpickling_reason(error: Exception) -> str:
    """The line of torch's weights_only error that names the refused global."""
    lines = [line for line in str(error).splitlines() if "GLOBAL" in line or "global" in line]
    return lines[0].strip() if lines else str(error).splitlines()[0]


def extract_state_dict(checkpoint: Any, keyword: str = "model", path: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The state_dict under `keyword`, or the checkpoint itself when it is a bare state_dict."""
    if isinstance(checkpoint, dict) and keyword in checkpoint and isinstance(checkpoint[keyword], dict):
        state_dict = checkpoint[keyword]
    elif isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state_dict = checkpoint
    else:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: no state_dict under {keyword!r} (found: {found}).")
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries of {keyword!r} that are not tensors: {bad[:5]}")
    return state_dict


def _is_ignored(key: str) -> bool:
    return key.endswith(IGNORED_KEY_SUFFIXES) or any(part in key for part in IGNORED_KEY_PARTS)


def load_state_dict(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = "checkpoint") -> LoadReport:
    """Load `state_dict` (keys with or without the DDP `module.` prefix) into `model`, reporting keys by name.

    A shape mismatch raises naming the key and both shapes; missing and unexpected keys are logged.
    """
    target = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    own = target.state_dict()
    report = LoadReport()
    cleaned: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = key[len("module."):] if key.startswith("module.") else key
        if _is_ignored(name):
            report.ignored.append(key)
        elif name not in own:
            report.unexpected.append(key)
        elif own[name].shape != value.shape:
            raise CheckpointError(
                f"{source}: shape mismatch for {name}: checkpoint has {tuple(value.shape)}, "
                f"model has {tuple(own[name].shape)}."
            )
        else:
            cleaned[name] = value
    report.loaded = sorted(cleaned)
    report.missing = sorted(set(own) - set(cleaned))
    target.load_state_dict(cleaned, strict=False)
    if report.missing:
        logger.warning("%s: %d model keys missing from the checkpoint: %s", source, len(report.missing),
                       ", ".join(report.missing))
    if report.unexpected:
        logger.warning("%s: %d checkpoint keys not in the model: %s", source, len(report.unexpected),
                       ", ".join(report.unexpected))
    return report


def atomic_torch_save(obj: Any, path: str) -> None:
    """Write `obj` with torch.save so that `path` is either the old file or the complete new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Checkpointer:
    """Saves and restores model (and optionally optimizer/scheduler) state in a folder with `last_checkpoint`."""

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                 scheduler: Optional[Any] = None, save_dir: str = "", save_to_disk: Optional[bool] = None,
                 logger: Optional[logging.Logger] = None):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.save_dir = save_dir
        self.save_to_disk = save_to_disk
        self.logger = logger or logging.getLogger(__name__)

    def save(self, name: str, **extra: Any) -> Optional[str]:
        """Write `<save_dir>/<name>.pth` atomically and point `last_checkpoint` at it."""
        if not self.save_dir or not self.save_to_disk:
            return None
        target = self.model.module if hasattr(self.model, "module") else self.model
        data: Dict[str, Any] = {"model": target.state_dict()}
        if self.optimizer is not None:
            data["optimizer"] = self.optimizer.state_dict()
        if self.scheduler is not None:
            data["scheduler"] = self.scheduler.state_dict()
        data.update(extra)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", path)
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(f"{name}.pth")
        return path

    def load(self, f: Optional[str] = None, force: bool = False, keyword: str = "model",
             skip_optimizer: bool = False, allow_inert_objects: bool = False) -> Dict[str, Any]:
        """Load `f`, or resume from `last_checkpoint` in save_dir when present (unless `force`).

        On resume the optimizer and scheduler states are restored too; the remaining entries are returned.
        """
        resume = False
        if self.has_checkpoint() and not force:
            f = os.path.join(self.save_dir, self.get_checkpoint_file())
            resume = True
        if not f:
            self.logger.info("No checkpoint found. Initializing model from scratch")
            return {}
        self.logger.info("Loading checkpoint from %s", f)
        checkpoint = read_checkpoint(f, allow_inert_objects=allow_inert_objects)
        load_state_dict(self.model, extract_state_dict(checkpoint, keyword, f), source=f)
        if not (resume and isinstance(checkpoint, dict)) or skip_optimizer:
            return {}
        if "optimizer" in checkpoint and self.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint.pop("optimizer"))
        if "scheduler" in checkpoint and self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint.pop("scheduler"))
        checkpoint.pop(keyword, None)
        return checkpoint

    def has_checkpoint(self) -> bool:
        """True when save_dir holds a `last_checkpoint` pointer."""
        return bool(self.save_dir) and os.path.exists(os.path.join(self.save_dir, "last_checkpoint"))

    def get_checkpoint_file(self) -> str:
        """The file name `last_checkpoint` points to ("" when absent)."""
        try:
            with open(os.path.join(self.save_dir, "last_checkpoint")) as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    def tag_last_checkpoint(self, last_filename: str) -> None:
        """Point `last_checkpoint` at `last_filename` (written atomically)."""
        path = os.path.join(self.save_dir, "last_checkpoint")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(last_filename)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class DetectronCheckpointer(Checkpointer):
    """Checkpointer with the official constructor taking the config first."""

    def __init__(self, cfg, model: nn.Module, optimizer=None, scheduler=None, save_dir: str = "",
                 save_to_disk: Optional[bool] = None, logger: Optional[logging.Logger] = None):
        super().__init__(model, optimizer, scheduler, save_dir, save_to_disk, logger)
        self.cfg = cfg.clone()
