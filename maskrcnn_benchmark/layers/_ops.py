"""Which implementation runs each of GLIP's custom ops, and the Python side of the compiled kernels.

Every op has a PyTorch implementation: the function decorated with `dispatchable(op)` (ml_nms, the token focal
loss and the modulated deformable conv in this package, `roi_align` below). A call runs instead:

* torch_npu's operator when the tensors are on an Ascend NPU (maskrcnn_benchmark.utils.npu);
* the compiled kernel, torch.ops.glip.<op> from the optional extension maskrcnn_benchmark._C (csrc/), when the
  extension is built for the tensors' device and the op is in COMPILED_BY_DEFAULT for that device (where
  benchmarks/bench_ops.py measured it faster) and the caller allows it (`compiled=False` is what the
  ``reference`` execution plan passes), or wherever it is built when GLIP_OPS=compiled.

GLIP_OPS=pytorch runs the PyTorch implementations everywhere. `python -m maskrcnn_benchmark.layers` prints the
implementation each op uses on each device type.
"""
import contextlib
import functools
import importlib
import inspect
import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torchvision
from torch import Tensor
from torch.nn.modules.utils import _pair

from maskrcnn_benchmark.layers.conv_geometry import conv_output_size
from maskrcnn_benchmark.utils import npu

EXTENSION = "maskrcnn_benchmark._C"
OPS = ("ml_nms", "roi_align", "token_sigmoid_focal_loss", "modulated_deform_conv")
MODES = ("auto", "compiled", "pytorch")
DEVICE_TYPES = ("cpu", "cuda", "npu")

# Compiled kernels used by default, per device type: those benchmarks/bench_ops.py measured faster than the
# PyTorch implementation (see the README). CPU, 1 and 2 threads: the fused token focal loss is not faster there
# (scalar exp/log1p against PyTorch's vectorised ops). CUDA, one H200 (`bench_ops.py --device cuda`, ms, PyTorch ->
# compiled, measured at commit 122a724 for issue #11): ml_nms 20.4 -> 1.3, DCN forward+backward 3.35 -> 1.61, token
# focal loss forward+backward 1.27 -> 1.14; roi_align 0.74 -> 0.86 is slower, so torchvision's stays.
COMPILED_BY_DEFAULT: Dict[str, frozenset] = {
    "cpu": frozenset({"ml_nms", "roi_align", "modulated_deform_conv"}),
    "cuda": frozenset({"ml_nms", "modulated_deform_conv", "token_sigmoid_focal_loss"}),
}

# Floating dtypes each device's compiled kernels take (others run the PyTorch implementation).
_KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
}
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}

# Where each op's PyTorch implementation lives (imported lazily: those modules import this one).
_PYTORCH_IMPLEMENTATIONS = {
    "ml_nms": ("maskrcnn_benchmark.layers.nms", "ml_nms"),
    "roi_align": ("maskrcnn_benchmark.layers._ops", "roi_align"),
    "token_sigmoid_focal_loss": ("maskrcnn_benchmark.layers.sigmoid_focal_loss", "token_sigmoid_binary_focal_loss"),
    "modulated_deform_conv": ("maskrcnn_benchmark.layers.deform_conv", "modulated_deform_conv"),
}

_mode_override: Optional[str] = None
_load_error: Optional[str] = None


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


@functools.lru_cache(maxsize=None)
def load_extension() -> bool:
    """Import maskrcnn_benchmark._C (registering torch.ops.glip) and its autograd/fake rules; False if not built."""
    global _load_error
    try:
        importlib.import_module(EXTENSION)
    except (ImportError, OSError) as error:
        _load_error = f"{type(error).__name__}: {error}"
        return False
    _register_autograd_and_fakes()
    return True


def extension_error() -> Optional[str]:
    """Why the extension did not load (None when it loaded or was not tried yet)."""
    return _load_error


@functools.lru_cache(maxsize=None)
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
    if device_type == "npu" and npu.has_npu_operator(op):
        return "npu"
    by_default = compiled and op in COMPILED_BY_DEFAULT.get(device_type, ())
    if compiled_kernel_available(op, device_type) and (current == "compiled" or by_default):
        return "compiled"
    return "pytorch"


def pytorch_implementation(op: str) -> Callable:
    """The PyTorch implementation of `op` (undecorated), e.g. to compare against or benchmark."""
    module_name, name = _PYTORCH_IMPLEMENTATIONS[op]
    return inspect.unwrap(getattr(importlib.import_module(module_name), name))


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
            return _KERNELS[chosen][op](*args, **kernel_kwargs)

        return dispatch

    return decorate


def _rois_tensor(rois: Union[Tensor, Sequence[Tensor]]) -> Tensor:
    """(K, 5) [batch_index, x1, y1, x2, y2] rois from a tensor or from a list of per-image (Ki, 4) boxes."""
    if isinstance(rois, Tensor):
        return rois
    indices = [torch.full_like(boxes[:, :1], i) for i, boxes in enumerate(rois)]
    return torch.cat([torch.cat(indices), torch.cat(list(rois))], dim=1)


@dispatchable("roi_align")
def roi_align(
    input: Tensor,
    rois: Union[Tensor, Sequence[Tensor]],
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """ROIAlign with torchvision's interface and semantics (aligned=True shifts boxes by -0.5 pixel)."""
    return torchvision.ops.roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)


def _kernel_takes(device_type: str, *tensors: Tensor) -> bool:
    return all(t.dtype in _KERNEL_DTYPES.get(device_type, ()) for t in tensors)


def compiled_ml_nms(boxes: Tensor, scores: Tensor, labels: Tensor, thresh: float) -> Tensor:
    """layers.nms.ml_nms on the compiled kernel (boxes in float32, or float64 when given)."""
    if boxes.dtype != torch.float64:
        boxes = boxes.float()
    return torch.ops.glip.ml_nms(boxes, scores, labels.long(), float(thresh))


def compiled_roi_align(
    input: Tensor,
    rois: Union[Tensor, Sequence[Tensor]],
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """roi_align on the compiled kernel."""
    if not _kernel_takes(input.device.type, input):
        return pytorch_implementation("roi_align")(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    pooled_h, pooled_w = _pair(output_size)
    rois = _rois_tensor(rois).to(input.dtype)
    return torch.ops.glip.roi_align(
        input, rois, float(spatial_scale), pooled_h, pooled_w, int(sampling_ratio), bool(aligned)
    )


def compiled_token_sigmoid_focal_loss(
    pred_logits: Tensor, targets: Tensor, alpha: float, gamma: float, text_mask: Optional[Tensor] = None
) -> Tensor:
    """layers.sigmoid_focal_loss.token_sigmoid_binary_focal_loss as one fused kernel (forward and backward).

    Targets are constants for the fused kernel; when they require grad (or the shapes are invalid, or the dtype
    has no kernel) the PyTorch implementation runs.
    """
    valid = pred_logits.dim() == 3 and targets.dim() == 3 and (text_mask is None or text_mask.dim() == 2)
    if not valid or targets.requires_grad or not _kernel_takes(pred_logits.device.type, pred_logits):
        return pytorch_implementation("token_sigmoid_focal_loss")(pred_logits, targets, alpha, gamma, text_mask)
    targets = targets.to(pred_logits.dtype)
    if text_mask is not None:
        token_mask = (text_mask > 0).unsqueeze(1).expand(-1, pred_logits.shape[1], -1)
        pred_logits = torch.masked_select(pred_logits, token_mask)
        targets = torch.masked_select(targets, token_mask)
    compute_grad = torch.is_grad_enabled() and pred_logits.requires_grad
    loss, _ = torch.ops.glip.token_sigmoid_focal_loss(pred_logits, targets, float(alpha), float(gamma), compute_grad)
    return loss


def compiled_modulated_deform_conv(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: Union[int, Tuple[int, int]] = 1,
    padding: Union[int, Tuple[int, int]] = 0,
    dilation: Union[int, Tuple[int, int]] = 1,
) -> Tensor:
    """layers.deform_conv.modulated_deform_conv on the compiled kernel (float32 under autocast, as official)."""
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            return compiled_modulated_deform_conv(
                input.float(), offset.float(), mask.float(), weight.float(),
                None if bias is None else bias.float(), stride, padding, dilation,
            )
    if input.dtype not in (torch.float32, torch.float64):
        return pytorch_implementation("modulated_deform_conv")(
            input, offset, mask, weight, bias, stride, padding, dilation
        )
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    taps = weight.shape[2] * weight.shape[3]
    dtype = input.dtype
    return torch.ops.glip.modulated_deform_conv(
        input, offset.to(dtype), mask.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        input.shape[1] // weight.shape[1], offset.shape[1] // (2 * taps),
    )


_KERNELS: Dict[str, Dict[str, Callable]] = {
    "compiled": {
        "ml_nms": compiled_ml_nms,
        "roi_align": compiled_roi_align,
        "token_sigmoid_focal_loss": compiled_token_sigmoid_focal_loss,
        "modulated_deform_conv": compiled_modulated_deform_conv,
    },
    "npu": {
        "ml_nms": npu.npu_ml_nms,
        "roi_align": npu.npu_roi_align,
        "modulated_deform_conv": npu.npu_modulated_deform_conv,
    },
}


def kernel(op: str, implementation_name: str) -> Callable:
    """The function that runs `op` for an implementation ("compiled", "npu" or "pytorch")."""
    if implementation_name == "pytorch":
        return pytorch_implementation(op)
    return _KERNELS[implementation_name][op]


def describe() -> List[Tuple[str, Dict[str, str]]]:
    """(op, {device type: implementation}) for every op, in the current mode."""
    return [(op, {device: implementation(op, device) for device in DEVICE_TYPES}) for op in OPS]


# ---------------------------------------------------------------------------------------------------------------
# Autograd and fake-tensor rules of torch.ops.glip, registered once the extension is loaded.

def _roi_align_setup(ctx, inputs, output) -> None:
    input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.config = (spatial_scale, pooled_h, pooled_w, *input.shape, sampling_ratio, aligned)


def _roi_align_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    grad_input = torch.ops.glip.roi_align_backward(grad, rois, *ctx.config)
    return grad_input, None, None, None, None, None, None


def _focal_setup(ctx, inputs, output) -> None:
    # The forward computed d loss / d logits in the same pass (compute_grad=True), so backward is one product.
    if not inputs[4]:
        raise RuntimeError("glip::token_sigmoid_focal_loss needs compute_grad=True for autograd")
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])


def _focal_backward(ctx, grad_loss, grad_derivative):
    (derivative,) = ctx.saved_tensors
    return grad_loss * derivative, None, None, None, None


def _deform_setup(ctx, inputs, output) -> None:
    input, offset, mask, weight, bias = inputs[:5]
    ctx.save_for_backward(input, offset, mask, weight)
    ctx.has_bias = bias is not None
    ctx.config = inputs[5:]


def _deform_backward(ctx, grad):
    input, offset, mask, weight = ctx.saved_tensors
    grads = torch.ops.glip.modulated_deform_conv_backward(grad, input, offset, mask, weight, *ctx.config)
    grad_bias = grad.sum((0, 2, 3)) if ctx.has_bias else None
    return (*grads, grad_bias) + (None,) * len(ctx.config)


def _register_autograd_and_fakes() -> None:
    """Backward formulas (as the *_backward ops) and shape-only implementations for torch.compile/meta."""
    library = torch.library
    library.register_autograd("glip::roi_align", _roi_align_backward, setup_context=_roi_align_setup)
    library.register_autograd("glip::token_sigmoid_focal_loss", _focal_backward, setup_context=_focal_setup)
    library.register_autograd("glip::modulated_deform_conv", _deform_backward, setup_context=_deform_setup)

    @library.register_fake("glip::ml_nms")
    def _(boxes, scores, labels, iou_threshold):
        return boxes.new_empty((library.get_ctx().new_dynamic_size(),), dtype=torch.int64)

    @library.register_fake("glip::roi_align")
    def _(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
        return input.new_empty((rois.shape[0], input.shape[1], pooled_h, pooled_w))

    @library.register_fake("glip::roi_align_backward")
    def _(grad, rois, spatial_scale, pooled_h, pooled_w, batch, channels, height, width, sampling_ratio, aligned):
        return grad.new_empty((batch, channels, height, width))

    @library.register_fake("glip::token_sigmoid_focal_loss")
    def _(logits, targets, alpha, gamma, compute_grad):
        loss = torch.empty_like(logits, memory_format=torch.contiguous_format)
        return loss, torch.empty_like(loss) if compute_grad else logits.new_empty((0,))

    @library.register_fake("glip::modulated_deform_conv")
    def _(input, offset, mask, weight, bias, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, *groups):
        out_h = conv_output_size(input.shape[2], weight.shape[2], stride_h, pad_h, dilation_h)
        out_w = conv_output_size(input.shape[3], weight.shape[3], stride_w, pad_w, dilation_w)
        return input.new_empty((input.shape[0], weight.shape[0], out_h, out_w))

    @library.register_fake("glip::modulated_deform_conv_backward")
    def _(grad, input, offset, mask, weight, *config):
        return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (input, offset, mask, weight))
