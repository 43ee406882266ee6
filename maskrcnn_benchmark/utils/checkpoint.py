"""Checkpoint loading and saving in the official GLIP format (a dict whose `model` entry is the state_dict)."""
import errno
import logging
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import torch
from torch import nn
from torch.serialization import MAGIC_NUMBER

from .safe_unpickle import ForbiddenGlobalError, load_with_inert_objects, read_first_pickled_value

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

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def read_checkpoint(path: str, allow_inert_objects: bool = False) -> Any:
    """Load a checkpoint file with `weights_only=True`.

    Files that pickle other objects than tensors and containers are refused, unless `allow_inert_objects`:
    then those objects become inert placeholders (their code never runs) and are named in the log. A file that
    is not a readable torch checkpoint (empty, truncated, an image, text, a foreign pickle) raises one
    CheckpointError saying what it is.
    """
    check_checkpoint_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not _refused_by_weights_only(error):
            raise _unreadable(path, error) from error
        if not allow_inert_objects:
            raise CheckpointError(
                f"{path} holds pickled objects other than tensors and containers, so it was refused "
                f"(weights_only=True): {_unpickling_reason(error)}. If you trust its origin only as far as its "
                "tensors, load it with allow_inert_objects=True (such objects become inert placeholders)."
            ) from error
    except UNREADABLE_FILE_ERRORS as error:
        raise _unreadable(path, error) from error
    try:
        checkpoint, skipped = load_with_inert_objects(path)
    except UNREADABLE_FILE_ERRORS as error:
        raise _unreadable(path, error) from error
    logger.warning("%s: replaced objects of these classes by inert placeholders: %s", path, ", ".join(skipped))
    return checkpoint


# What torch.load raises on a damaged file (a truncated zip archive, a pickle stream that ends early, ...).
UNREADABLE_FILE_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError,
                          IndexError, AttributeError, OSError, zipfile.BadZipFile)
# The two formats torch.save writes: a zip archive, or (before torch 1.6, or on request) a stream of pickles.
ZIP_SIGNATURE = b"PK\x03\x04"
PICKLE_PROTOCOL_OPCODE = b"\x80"
# First bytes of files that users mistake for checkpoints, to say what the file is.
FILE_SIGNATURES = (
    (b"\xff\xd8\xff", "is a JPEG image, not a checkpoint."),
    (b"\x89PNG\r\n\x1a\n", "is a PNG image, not a checkpoint."),
    (b"GIF8", "is a GIF image, not a checkpoint."),
    (b"II*\x00", "is a TIFF image, not a checkpoint."),
    (b"MM\x00*", "is a TIFF image, not a checkpoint."),
    (b"\x1f\x8b", "is a gzip archive, not a checkpoint: unpack it first."),
    (b"version https://git-lfs.github.com/spec", "is a Git LFS pointer, not the checkpoint itself: fetch the file "
                                                 "with `git lfs pull`."),
)


def check_checkpoint_file(path: str) -> None:
    """Raise unless `path` is a non-empty file in one of torch.save's formats; the error says what the file is."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file.")
    if path.endswith(".safetensors"):
        return  # torch.load reads these itself; safetensors files hold no code.
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), so it is not a checkpoint: copy or download it again.")
    with open(path, "rb") as f:
        head = f.read(512)
        if head.startswith(ZIP_SIGNATURE):
            _check_torch_zip(path)
        elif head.startswith(PICKLE_PROTOCOL_OPCODE):
            _check_torch_pickle_header(path, f)
        else:
            raise CheckpointError(f"{path} {_describe_other_file(head)}")


def _check_torch_zip(path: str) -> None:
    """Raise unless the zip archive at `path` is complete and holds torch.save's data.pkl."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise _unreadable(path, error, "its zip archive has no readable directory, as when the end of the file "
                                        "is missing") from error
    if any(name.endswith("/constants.pkl") for name in names):
        raise CheckpointError(f"{path} is a TorchScript archive (torch.jit.save), not a checkpoint of weights.")
    if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        raise CheckpointError(f"{path} is a zip archive but not a torch checkpoint (it holds no data.pkl).")


def _check_torch_pickle_header(path: str, f: BinaryIO) -> None:
    """Raise unless the pickle stream `f` starts with torch's magic number, read without looking up any global."""
    f.seek(0)
    try:
        first = read_first_pickled_value(f)
    except ForbiddenGlobalError as error:
        raise CheckpointError(f"{path} is a pickle file but not a torch checkpoint: {error}; nothing of it "
                              "was run or loaded.") from error
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as error:
        raise _unreadable(path, error) from error
    if first != MAGIC_NUMBER:
        raise CheckpointError(f"{path} is a pickle file but not a torch checkpoint: it does not start with "
                              "torch.save's magic number.")


def _describe_other_file(head: bytes) -> str:
    """What a file that starts with `head` (neither zip nor pickle) is, as the end of a sentence."""
    for signature, description in FILE_SIGNATURES:
        if head.startswith(signature):
            return description
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "is a WebP image, not a checkpoint."
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "is an HTML page, not a checkpoint (a download that returned a web page?)."
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(char.isprintable() or char.isspace() for char in text):
        return f"is a text file, not a checkpoint (it starts with {text[:40]!r})."
    return (f"is not a checkpoint: it is neither a zip archive nor a pickle stream, the formats of torch.save "
            f"(it starts with the bytes {head[:8].hex(' ')}).")


def _unreadable(path: str, error: BaseException, detail: str = "") -> CheckpointError:
    """The error for a checkpoint file whose content cannot be read to the end (`detail`: what is wrong)."""
    # torch's zip reader appends a paragraph about miniz to its one-line reason.
    reason = str(error).split(". This is an internal")[0].strip().splitlines()
    detail = detail or (reason[0] if reason else f"{type(error).__name__}: the data ends early")
    return CheckpointError(f"{path} is truncated or corrupt ({detail}), so it cannot be loaded: copy or download "
                           "it again.")


def _refused_by_weights_only(error: pickle.UnpicklingError) -> bool:
    """Whether torch's weights-only unpickler refused a global or an instruction (rather than damaged data)."""
    message = str(error).lower()
    return any(word in message for word in ("unsupported", "allowlisted", "add_safe_globals"))


def _unpickling_reason(error: Exception) -> str:
    """The line of torch's weights_only error that names the refused global."""
    lines = [line for line in str(error).splitlines() if "GLOBAL" in line or "global" in line]
    return lines[0].strip() if lines else str(error).splitlines()[0]


def extract_state_dict(checkpoint: Any, keyword: str = "model", path: str = "checkpoint") -> dict[str, torch.Tensor]:
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


# A checkpoint that lacks more than this fraction of the model's keys was saved from another network or config
# (or under another key prefix): loading it would leave the model mostly random, so it is refused by default.
MAX_MISSING_FRACTION = 0.5
# The option that accepts such a checkpoint, named in the error.
ALLOW_MISSING_WEIGHTS_HINT = "set MODEL.ALLOW_MISSING_WEIGHTS True (allow_missing_weights=True in Python)"


def _some_keys(keys: list[str], shown: int = 5) -> str:
    """The first `shown` keys, and how many more there are."""
    more = f", ... ({len(keys) - shown} more)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _missing_weights_message(source: str, report: LoadReport, model_keys: int, checkpoint_keys: int) -> str:
    """The error for a checkpoint that lacks most of the model's weights."""
    found = "it holds no weights at all" if not checkpoint_keys else (
        f"{len(report.unexpected)} of its {checkpoint_keys} entries are not in the model "
        f"({_some_keys(report.unexpected)})" if report.unexpected else f"it holds {checkpoint_keys} entries")
    return (f"{source}: {len(report.missing)} of the model's {model_keys} weights are not in the checkpoint "
            f"({_some_keys(report.missing)}); {found}. It was probably saved from another network or config, or "
            f"under another key prefix. To load it anyway (the missing weights keep their random "
            f"initialisation), {ALLOW_MISSING_WEIGHTS_HINT}.")


def missing_weights_error(situation: str, remedy: str) -> CheckpointError:
    """The error for running a model for evaluation or prediction with no weights at all."""
    return CheckpointError(f"{situation}, so the model would run with its random initialisation. {remedy}; to run "
                           "the untrained model on purpose, set MODEL.ALLOW_MISSING_WEIGHTS True.")


def load_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint",
                    allow_missing_weights: bool = False) -> LoadReport:
    """Load `state_dict` (keys with or without the DDP `module.` prefix) into `model`, reporting keys by name.

    A shape mismatch raises naming the key and both shapes; missing and unexpected keys are logged. When more
    than half of the model's keys are missing, nothing is loaded and CheckpointError is raised, unless
    `allow_missing_weights`.
    """
    target = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    own = target.state_dict()
    report = LoadReport()
    cleaned: dict[str, torch.Tensor] = {}
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
    if len(report.missing) > MAX_MISSING_FRACTION * len(own) and not allow_missing_weights:
        raise CheckpointError(_missing_weights_message(source, report, len(own), len(state_dict)))
    target.load_state_dict(cleaned, strict=False)
    if report.missing:
        logger.warning("%s: %d model keys missing from the checkpoint: %s", source, len(report.missing),
                       ", ".join(report.missing))
    if report.unexpected:
        logger.warning("%s: %d checkpoint keys not in the model: %s", source, len(report.unexpected),
                       ", ".join(report.unexpected))
    return report


# Marker in the names of files being written; such a file is never a checkpoint (it has no .pth suffix).
PARTIAL_MARKER = ".partial-"
# Names of the periodic checkpoints, which `keep_last` prunes.
PERIODIC_CHECKPOINT = re.compile(r"^model_(\d{7})\.pth$")


def atomic_torch_save(obj: Any, path: str) -> None:
    """Write `obj` with torch.save so that `path` is either the old file or the complete new one.

    The data goes to a hidden `.<name>.partial-XXXX` file in the same folder, which is renamed once complete: a
    process killed while writing leaves only that partial file, whose name does not look like a checkpoint.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}{PARTIAL_MARKER}", dir=folder)
    try:
        # mkstemp creates the file private (0600); give it the permissions of a normally created file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
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
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, (OSError, RuntimeError)):
            raise CheckpointError(_write_failure_message(path, error)) from error
        raise


# Free space under which a failed write is probably a full disk (GLIP-T weights with the AdamW state: about 2.8 GB).
LOW_DISK_SPACE = 4 * 2**30


def _write_failure_message(path: str, error: BaseException) -> str:
    """Why writing the checkpoint `path` failed: a full disk when the error (or what caused it) says so."""
    folder = os.path.dirname(os.path.abspath(path))
    # torch's zip writer turns the OSError of the file into "[enforce fail at inline_container.cc] unexpected
    # pos", keeping the OSError only as the exception's context.
    causes, cause = [], error
    while cause is not None and len(causes) < 8:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    disk_full = any(isinstance(c, OSError) and c.errno in (errno.ENOSPC, errno.EDQUOT) for c in causes)
    previous = f"{path} was left as it was" if os.path.exists(path) else f"{path} was not created"
    free_bytes = shutil.disk_usage(folder).free
    free = f"{free_bytes / 2**20:.0f} MiB free in {folder}"
    if disk_full:
        return (f"Could not write the checkpoint {path}: the disk is full (no space left on device; {free}). "
                f"{previous}; free some space (SOLVER.KEEP_LAST_CHECKPOINTS keeps fewer checkpoints) and resume.")
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    # torch may lose the OSError entirely; little free space then says what happened.
    low = ", the disk may be full" if free_bytes < LOW_DISK_SPACE else ""
    return f"Could not write the checkpoint {path}: the write failed ({reason}; {free}{low}). {previous}."


class Checkpointer:
    """Saves and restores the training state in a folder with a `last_checkpoint` pointer.

    Besides the model, the optimizer, scheduler, AMP loss `scaler` and `model_ema` (an object with
    `state_dict`/`load_state_dict`, saved under "model_ema") are saved when given and restored on resume.
    `keep_last` > 0 keeps only that many newest periodic checkpoints (`model_NNNNNNN.pth`) of this run: those it
    wrote, and on resume those already in save_dir; a run started afresh in a folder never deletes files it found.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 scheduler: Any | None = None, save_dir: str = "", save_to_disk: bool | None = None,
                 logger: logging.Logger | None = None, *, scaler: Any | None = None,
                 model_ema: Any | None = None, keep_last: int = 0):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.model_ema = model_ema
        self.keep_last = keep_last
        self.save_dir = save_dir
        self.save_to_disk = save_to_disk
        self.logger = logger or logging.getLogger(__name__)
        # Periodic checkpoints of another run (--no-resume, --overwrite): pruning leaves them; a resume adopts them.
        self.found_checkpoints = set(self.periodic_checkpoints())

    def save(self, name: str, tag_last: bool = True, **extra: Any) -> str | None:
        """Write `<save_dir>/<name>.pth` atomically, point `last_checkpoint` at it (unless not `tag_last`: a
        side file such as model_best that a resume must not start from), prune old periodic ones."""
        if not self.save_dir or not self.save_to_disk:
            return None
        target = self.model.module if hasattr(self.model, "module") else self.model
        data: dict[str, Any] = {"model": target.state_dict()}
        if self.optimizer is not None:
            data["optimizer"] = self.optimizer.state_dict()
        if self.scheduler is not None:
            data["scheduler"] = self.scheduler.state_dict()
        if self.scaler is not None:
            data["scaler"] = self.scaler.state_dict()
        if self.model_ema is not None:
            data["model_ema"] = self.model_ema.state_dict()
        data.update(extra)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", path)
        self.remove_partial_files()
        atomic_torch_save(data, path)
        if tag_last:
            self.tag_last_checkpoint(f"{name}.pth")
        if self.keep_last > 0:
            self.prune_periodic_checkpoints()
        return path

    def remove_partial_files(self) -> None:
        """Delete the partial files that a process killed while writing a checkpoint left in save_dir."""
        for name in os.listdir(self.save_dir) if os.path.isdir(self.save_dir) else ():
            if name.startswith(".") and PARTIAL_MARKER in name:
                os.unlink(os.path.join(self.save_dir, name))

    def periodic_checkpoints(self) -> list[str]:
        """The `model_NNNNNNN.pth` files in save_dir, oldest iteration first."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        matches = [m for m in map(PERIODIC_CHECKPOINT.match, os.listdir(self.save_dir)) if m]
        return [m.group(0) for m in sorted(matches, key=lambda m: int(m.group(1)))]

    def prune_periodic_checkpoints(self) -> None:
        """Delete all but the `keep_last` newest periodic checkpoints of this run, never the one `last_checkpoint`
        names nor those of another run found in save_dir."""
        current = self.get_checkpoint_file()
        own = [name for name in self.periodic_checkpoints() if name not in self.found_checkpoints]
        for name in own[:-self.keep_last]:
            if name != current:
                self.logger.info("Removing old checkpoint %s", name)
                os.unlink(os.path.join(self.save_dir, name))

    def load(self, f: str | None = None, force: bool = False, keyword: str = "model",
             skip_optimizer: bool = False, allow_inert_objects: bool = False,
             allow_missing_weights: bool = False) -> dict[str, Any]:
        """Load `f`, or resume from `last_checkpoint` in save_dir when present (unless `force`).

        On resume the optimizer, scheduler, scaler and EMA states are restored too; the remaining entries are
        returned. A checkpoint lacking most of the model's weights is refused unless `allow_missing_weights`.
        """
        resume = False
        if self.has_checkpoint() and not force:
            f = os.path.join(self.save_dir, self.get_checkpoint_file())
            resume = True
            self.found_checkpoints = set()  # the folder's periodic checkpoints are this run's
        if not f:
            self.logger.info("No checkpoint found. Initializing model from scratch")
            return {}
        self.logger.info("Loading checkpoint from %s", f)
        checkpoint = read_checkpoint(f, allow_inert_objects=allow_inert_objects)
        load_state_dict(self.model, extract_state_dict(checkpoint, keyword, f), source=f,
                        allow_missing_weights=allow_missing_weights)
        if not (resume and isinstance(checkpoint, dict)) or skip_optimizer:
            self.restart_ema()
            return {}
        if not checkpoint.get("model_ema"):
            self.restart_ema()
        for entry, target in (("optimizer", self.optimizer), ("scheduler", self.scheduler),
                              ("scaler", self.scaler), ("model_ema", self.model_ema)):
            # Taken out also without a target, so that the next save does not carry a stale state along.
            state = checkpoint.pop(entry, None)
            # An empty state is that of a disabled GradScaler (fp32 run), which an enabled one refuses.
            if target is not None and state:
                self.logger.info("Restoring %s from %s", entry, f)
                target.load_state_dict(state)
        checkpoint.pop(keyword, None)
        return checkpoint

    def restart_ema(self) -> None:
        """Start the EMA (when given) at the weights just loaded, as officially: a checkpoint without the run's own
        average (pretrained weights, --skip_optimizer_resume) gives it nothing to continue from."""
        if self.model_ema is not None:
            self.model_ema.reset(self.model)

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
        try:
            with open(tmp, "w") as f:
                f.write(last_filename)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as error:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise CheckpointError(_write_failure_message(path, error)) from error


class DetectronCheckpointer(Checkpointer):
    """Checkpointer with the official constructor taking the config first."""

    def __init__(self, cfg, model: nn.Module, optimizer=None, scheduler=None, save_dir: str = "",
                 save_to_disk: bool | None = None, logger: logging.Logger | None = None, **state: Any):
        super().__init__(model, optimizer, scheduler, save_dir, save_to_disk, logger, **state)
        self.cfg = cfg.clone()

    def load(self, f: str | None = None, force: bool = False, keyword: str = "model",
             skip_optimizer: bool = False, allow_inert_objects: bool = False,
             allow_missing_weights: bool | None = None) -> dict[str, Any]:
        """Checkpointer.load; `allow_missing_weights` defaults to the config's MODEL.ALLOW_MISSING_WEIGHTS."""
        if allow_missing_weights is None:
            allow_missing_weights = self.cfg.MODEL.ALLOW_MISSING_WEIGHTS
        return super().load(f, force, keyword, skip_optimizer, allow_inert_objects, allow_missing_weights)
