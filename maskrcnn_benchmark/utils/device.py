"""Choice of the compute device (Ascend NPU, CUDA GPU or CPU) and of the matching distributed backend."""
import datetime
import functools
import importlib
import logging
import os
import resource
import sys

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# torch.distributed backend of each device type.
BACKENDS = {"cuda": "nccl", "npu": "hccl", "cpu": "gloo"}


@functools.cache
def npu_available() -> bool:
    """True when torch_npu imports (which registers the `npu` device) and sees at least one NPU."""
    try:
        importlib.import_module("torch_npu")
    except ImportError:
        return False
    return bool(torch.npu.is_available())


def available_device_type() -> str:
    """The best device type present: npu, else cuda, else cpu."""
    if npu_available():
        return "npu"
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """The device this process computes on, from MODEL.DEVICE and its rank on the node.

    "" or "auto" takes the best device present. "cuda" (the official default) falls back to an NPU when torch_npu
    is installed, like Ascend's transfer_to_npu, and to the CPU with a warning when no accelerator is present;
    "cpu" and "npu" force that device. Accelerators are indexed by the local rank unless the name gives an index.
    """
    name = (requested or "auto").strip().lower()
    device_type, _, index = name.partition(":")
    if device_type == "auto":
        device_type = available_device_type()
    elif device_type == "cuda" and not torch.cuda.is_available():
        device_type = available_device_type()
        logger.warning("MODEL.DEVICE is %r but CUDA is not available; using %s.", requested, device_type)
    elif device_type == "npu" and not npu_available():
        raise RuntimeError(f"MODEL.DEVICE is {requested!r} but torch_npu is not installed or sees no NPU.")
    elif device_type not in BACKENDS:
        raise ValueError(f"MODEL.DEVICE {requested!r}: expected one of auto, cpu, cuda[:N], npu[:N].")
    if device_type == "cpu":
        return torch.device("cpu")
    return torch.device(device_type, int(index) if index else local_rank)


def set_current_device(device: torch.device) -> None:
    """Make `device` the current accelerator of this process (needed before NCCL/HCCL collectives).

    On an NPU, operators run from the precompiled binaries (no online compilation), as Ascend recommends for
    dynamic input shapes such as GLIP's.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif device.type == "npu":
        torch.npu.set_device(device)
        if hasattr(torch.npu, "set_compile_mode"):  # older torch_npu releases lack it
            torch.npu.set_compile_mode(jit_compile=False)


def init_distributed(device: torch.device, timeout_minutes: float = 30.0) -> bool:
    """Join the process group that torchrun describes (WORLD_SIZE > 1); False for a single process.

    The backend follows the device: nccl for CUDA, hccl for NPU, gloo for CPU; `device` becomes the current one.
    A collective that waits longer than `timeout_minutes` (SOLVER.DDP_TIMEOUT_MINUTES) for another process fails
    instead of blocking, so that a hung or stopped process ends the run.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not timeout_minutes > 0:
        raise ValueError(f"SOLVER.DDP_TIMEOUT_MINUTES must be positive (minutes, e.g. 30.0), got {timeout_minutes}.")
    if not dist.is_initialized():
        set_current_device(device)
        dist.init_process_group(backend=BACKENDS[device.type], init_method="env://",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return True


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: the allocator peak on CUDA/NPU, the process's peak resident set on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    if device.type == "npu":
        return torch.npu.max_memory_allocated(device) / 2 ** 20
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    return max_rss / 2 ** 20 if sys.platform == "darwin" else max_rss / 2 ** 10


def synchronize_device(device: torch.device) -> None:
    """Wait for the queued kernels of `device` (for timing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)
