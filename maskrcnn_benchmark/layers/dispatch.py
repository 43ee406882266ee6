"""Which implementation runs each of GLIP's custom ops.

Every op has a PyTorch implementation: the function decorated with `dispatchable(op)` (layers.nms.ml_nms,
layers.roi_align.roi_align, the token focal loss and the modulated deformable conv). A call runs instead:

* torch_npu's operator when the tensors are on an Ascend NPU (layers.npu_ops);
* the compiled kernel, torch.ops.glip.<op> from the optional extension maskrcnn_benchmark._C (csrc/, wrapped by
  layers.compiled_ops), when the extension is built for the tensors' device and the op is in COMPILED_BY_DEFAULT
  for that device (where benchmarks/bench_ops.py measured it faster) and the caller allows it (`compiled=False`
  is what the ``reference`` execution plan passes), or wherever it is built when GLIP_OPS=compiled.

GLIP_OPS=pytorch runs the PyTorch implementations everywhere. `python -m maskrcnn_benchmark.layers` prints the
implementation each op uses on each device type.
"""
import contextlib
import functools
import importlib
import inspect
import os
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from . import npu_ops
from .compiled_registration import register_autograd_and_fakes

EXTENSION = "maskrcnn_benchmark._C"
OPS = ("ml_nms", "roi_align", "token_sigmoid_focal_loss", "modulated_deform_conv")
MODES = ("auto", "compiled", "pytorch")
DEVICE_TYPES = ("cpu", "cuda", "npu")

# Compiled kernels used by default, per device type: those benchmarks/bench_ops.py measured faster than the
# PyTorch implementation (see the README). CPU, 1 and 2 threads: the fused token focal loss is not faster there
# (scalar exp/log1p against PyTorch's vectorised ops). CUDA, one H200 (`bench_ops.py --device cuda`, ms, PyTorch ->
# compiled, measured at commit 122a724 for issue #11): ml_nms 20.4 -> 1.3, DCN forward+backward 3.35 -> 1.61, token
# focal loss forward+backward 1.27 -> 1.14; roi_align 0.74 -> 0.86 is slower, so torchvision's stays.
COMPILED_BY_DEFAULT: dict[str, frozenset] = {
    "cpu": frozenset({"ml_nms", "roi_align", "modulated_deform_conv"}),
    "cuda": frozenset({"ml_nms", "modulated_deform_conv", "token_sigmoid_focal_loss"}),
}

_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}

# The kernel table: where each op's implementations live, as (module, attribute). Imported lazily because those
# modules import this one (the PyTorch implementations for `dispatchable`, the compiled wrappers for fallbacks).
_PYTORCH_IMPLEMENTATIONS = {
    "ml_nms": ("maskrcnn_benchmark.layers.nms", "ml_nms"),
    "roi_align": ("maskrcnn_benchmark.layers.roi_align", "roi_align"),
    "token_sigmoid_focal_loss": ("maskrcnn_benchmark.layers.sigmoid_focal_loss", "token_sigmoid_binary_focal_loss"),
    "modulated_deform_conv": ("maskrcnn_benchmark.layers.deform_conv", "modulated_deform_conv"),
}
# {op: kernel} table of each non-PyTorch implementation.
_KERNEL_TABLES = {
    "compiled": ("maskrcnn_benchmark.layers.compiled_ops", "COMPILED_KERNELS"),
    "npu": ("maskrcnn_benchmark.layers.npu_ops", "NPU_KERNELS"),
}

_mode_override: str | None = None
_load_error: str | None = None


def mode() -> str:
    """The dispatch mode: use_implementation()'s if active, else $GLIP_OPS (auto, compiled or pytorch)."""
    value = _mode_override or os.environ.get("GLIP_OPS", "").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"GLIP_OPS={value!r}: expected one of {', '.join(MODES)}")
    return value


@contextlib.contextmanager
def use_implementation(name: str) -> Iterator[None]:
    """Force a dispatch mode ("auto", "compiled" or "pytorch") while the context is active (process-wide)."""
    global _mode_override
    if name not in MODES:
        raise ValueError(f"unknown implementation mode {name!r}: expected one of {', '.join(MODES)}")
    previous = _mode_override
    _mode_override = name
    try:
        yield
    finally:
        _mode_override = previous


@functools.cache
def load_extension() -> bool:
    """Import maskrcnn_benchmark._C (registering torch.ops.glip) and its autograd/fake rules; False if not built."""
    global _load_error
    try:
        importlib.import_module(EXTENSION)
    except (ImportError, OSError) as error:
        _load_error = f"{type(error).__name__}: {error}"
        return False
    register_autograd_and_fakes()
    return True


def extension_error() -> str | None:
    """Why the extension did not load (None when it loaded or was not tried yet)."""
    return _load_error


@functools.cache
def compiled_kernel_available(op: str, device_type: str) -> bool:
    """True when the extension is loaded and has a kernel of `op` for `device_type`."""
    key = _DISPATCH_KEYS.get(device_type)
    if key is None or not load_extension():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"glip::{op}", key)


def implementation(op: str, device_type: str, compiled: bool = True) -> str:
    """"npu", "compiled" or "pytorch": what runs `op` for tensors of `device_type` in the current mode.

    `compiled=False` (the reference execution plan) keeps the PyTorch implementation in the ``auto`` mode.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}: expected one of {', '.join(OPS)}")
    current = mode()
    if current == "pytorch":
        return "pytorch"
    if device_type == "npu" and npu_ops.has_npu_operator(op):
        return "npu"
    by_default = compiled and op in COMPILED_BY_DEFAULT.get(device_type, ())
    if compiled_kernel_available(op, device_type) and (current == "compiled" or by_default):
        return "compiled"
    return "pytorch"


def pytorch_implementation(op: str) -> Callable:
    """The PyTorch implementation of `op` (undecorated), e.g. to compare against or benchmark."""
    module_name, name = _PYTORCH_IMPLEMENTATIONS[op]
    return inspect.unwrap(getattr(importlib.import_module(module_name), name))


@functools.cache
def kernel_table(implementation_name: str) -> dict[str, Callable]:
    """The {op: kernel} table of the "compiled" or "npu" implementation (the module's own dict)."""
    module_name, name = _KERNEL_TABLES[implementation_name]
    return getattr(importlib.import_module(module_name), name)


def kernel(op: str, implementation_name: str) -> Callable:
    """The function that runs `op` for an implementation ("compiled", "npu" or "pytorch")."""
    if implementation_name == "pytorch":
        return pytorch_implementation(op)
    return kernel_table(implementation_name)[op]


def device_type_of(tensor: Tensor) -> str:
    """Device type that decides the implementation of a call (its first tensor argument's)."""
    return tensor.device.type


def dispatchable(op: str, pytorch_options: Sequence[str] = ()) -> Callable[[Callable], Callable]:
    """Decorator for the PyTorch implementation of `op`: calls go to the implementation chosen for the device.

    The decorated function takes one more keyword, `compiled` (default True; the execution plan's
    `compiled_kernels`). Keywords named in `pytorch_options` choose between variants of the PyTorch
    implementation and are not passed to the compiled or NPU kernels.
    """

    def decorate(function: Callable) -> Callable:
        first_parameter = next(iter(inspect.signature(function).parameters))

        @functools.wraps(function)
        def dispatch(*args, compiled: bool = True, **kwargs):
            tensor = args[0] if args else kwargs[first_parameter]
            chosen = implementation(op, device_type_of(tensor), compiled)
            if chosen == "pytorch":
                return function(*args, **kwargs)
            kernel_kwargs = {name: value for name, value in kwargs.items() if name not in pytorch_options}
            return kernel(op, chosen)(*args, **kernel_kwargs)

        return dispatch

    return decorate


def describe() -> list[tuple[str, dict[str, str]]]:
    """(op, {device type: implementation}) for every op, in the current mode."""
    return [(op, {device: implementation(op, device) for device in DEVICE_TYPES}) for op in OPS]
