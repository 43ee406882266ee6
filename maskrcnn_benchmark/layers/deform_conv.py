"""Modulated deformable convolution (DCNv2) with the official kernel's semantics.

Two PyTorch variants: torchvision.ops.deform_conv2d (reference and accelerator plans), and the sampling variant
(CPU plan): inference samples the input with one grid_sample and multiplies per tap; training keeps torchvision's
forward and replaces its slow CPU backward by a sampling-based one (see _DeformConvFunction).
"""
import itertools
import math
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

from .conv_geometry import conv_output_size, per_sample_prefix
from .dispatch import dispatchable
from .execution_plan import UsesExecutionPlan


@dispatchable("modulated_deform_conv", pytorch_options=("sampling",))
def modulated_deform_conv(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    sampling: bool = True,
) -> Tensor:
    """Modulated deformable conv with the official kernel's raw per-sample offset/mask addressing.

    `sampling` selects the grid_sample-based variant (faster on the CPU) over torchvision's kernels.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    out_h = conv_output_size(input.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    out_w = conv_output_size(input.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    offset = per_sample_prefix(offset, out_h, out_w)
    mask = per_sample_prefix(mask, out_h, out_w)
    conv = _sampling_deform_conv if sampling else _torchvision_deform_conv
    if torch.is_autocast_enabled(input.device.type):
        # The official op is decorated with custom_fwd(cast_inputs=float32): it always runs in fp32.
        with torch.autocast(device_type=input.device.type, enabled=False):
            return conv(input.float(), offset.float(), mask.float(), weight.float(),
                        None if bias is None else bias.float(), stride, padding, dilation)
    return conv(input, offset, mask, weight, bias, stride, padding, dilation)


def _torchvision_deform_conv(input, offset, mask, weight, bias, stride, padding, dilation) -> Tensor:
    return deform_conv2d(input, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)


def _inside_cell(coord: Tensor, margin: float) -> Tensor:
    """`coord` moved at most `margin` away from the integer grid lines, keeping the cell floor(coord).

    grid_sample re-derives the pixel coordinate from a normalised one, which costs a few ulps. Near a grid line
    that could change which four pixels (and so which gradient) a point uses compared with the reference
    kernel; nudging the point keeps the cell.
    """
    low = coord.floor()
    return low + (coord - low).clamp(margin, 1.0 - margin)


def _sampling_grid(offset: Tensor, weight_shape, input_hw, stride, padding, dilation, margin: float = 0.0) -> Tensor:
    """grid_sample grid (N, taps, out_h * out_w, 2) of every tap's sampling point, in the kernel's addressing.

    Point (y, x) of tap (i, j) at output (oy, ox) is (oy*stride - pad + i*dil) + dy, likewise for x, with
    offsets stored as (dy, dx) per tap. It is normalised for align_corners=False, under which grid_sample's
    zero-padded bilinear interpolation equals the kernel's (zero outside (-1, H) x (-1, W), zero corners).
    With `margin`, points are kept that far inside their pixel cell (see `_inside_cell`).
    """
    batch, _, out_h, out_w = offset.shape
    kernel_h, kernel_w = weight_shape[-2:]
    height, width = input_hw
    options = dict(dtype=offset.dtype, device=offset.device)
    tap_y = (torch.arange(kernel_h, **options) * dilation[0]).repeat_interleave(kernel_w).view(-1, 1, 1)
    tap_x = (torch.arange(kernel_w, **options) * dilation[1]).repeat(kernel_h).view(-1, 1, 1)
    y = torch.arange(out_h, **options).view(1, -1, 1) * stride[0] - padding[0] + tap_y
    x = torch.arange(out_w, **options).view(1, 1, -1) * stride[1] - padding[1] + tap_x
    offset = offset.view(batch, kernel_h * kernel_w, 2, out_h, out_w)
    y = y + offset[:, :, 0]
    x = x + offset[:, :, 1]
    if margin:
        y, x = _inside_cell(y, margin), _inside_cell(x, margin)
    grid_y = y * (2.0 / height) + (1.0 / height - 1.0)
    grid_x = x * (2.0 / width) + (1.0 / width - 1.0)
    return torch.stack((grid_x, grid_y), dim=-1).view(batch, kernel_h * kernel_w, out_h * out_w, 2)


def _cell_margin(dtype: torch.dtype, input_hw, weight_shape, dilation) -> float:
    """A few ulps of the largest coordinate: more than grid_sample's normalisation round trip moves a point."""
    reach = max(weight_shape[-2:]) * max(dilation)
    return 4 * torch.finfo(dtype).eps * (max(input_hw) + reach)


def _sample_columns(input: Tensor, grid: Tensor) -> Tensor:
    """Bilinear samples (N, taps, P, C) of a (N, C, H, W) input at the grid's points (a strided view).

    A channels-last input makes grid_sample's output (N, C, taps, P) lie in memory as (N, taps, P, C).
    """
    return F.grid_sample(input.contiguous(memory_format=torch.channels_last), grid, mode="bilinear",
                         padding_mode="zeros", align_corners=False).permute(0, 2, 3, 1)


def _tap_weights(weight: Tensor) -> Tensor:
    """(C_out, C, kh, kw) -> (taps, C, C_out)."""
    return weight.permute(2, 3, 1, 0).reshape(weight.shape[2] * weight.shape[3], weight.shape[1], weight.shape[0])


def _sampled_deform_conv(input, offset, mask, weight, bias, stride, padding, dilation) -> Tensor:
    """DCNv2 as bilinear sampling (one grid_sample on a channels-last input) and one matmul per tap.

    Inference only (no autograd graph); returns a channels-last (N, C_out, out_h, out_w) tensor.
    """
    batch = input.shape[0]
    out_channels = weight.shape[0]
    out_h, out_w = offset.shape[-2:]
    taps = weight.shape[2] * weight.shape[3]
    grid = _sampling_grid(offset, weight.shape, input.shape[-2:], stride, padding, dilation)
    columns = _sample_columns(input, grid)
    columns.mul_(mask.reshape(batch, taps, out_h * out_w, 1))
    tap_weights = _tap_weights(weight)
    if bias is None:
        bias = weight.new_zeros(out_channels)
    # clone, not contiguous(): an expand over size-1 dims counts as contiguous and would alias the bias.
    output = bias.expand(batch, out_h * out_w, out_channels).clone(memory_format=torch.contiguous_format)
    for image in range(batch):
        for tap in range(taps):
            output[image].addmm_(columns[image, tap], tap_weights[tap])
    return output.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)


class _DeformConvFunction(torch.autograd.Function):
    """Training-time DCNv2: torchvision's forward, a sampling-based backward.

    The forward is the reference kernel's, so that training reproduces the official rounding (the model's
    gradients are sensitive to it at the 1e-6 level); the backward replaces torchvision's slow CPU loops by one
    grid_sample backward and a few matmuls.
    """

    @staticmethod
    def forward(ctx, input, offset, mask, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(input, offset, mask, weight)
        ctx.has_bias = bias is not None
        ctx.geometry = (stride, padding, dilation)
        return _torchvision_deform_conv(input, offset, mask, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad_output):
        input, offset, mask, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        batch, channels, height, width = input.shape
        out_channels, taps = weight.shape[0], weight.shape[2] * weight.shape[3]
        positions = grad_output.shape[2] * grad_output.shape[3]
        # In their pixel cell the points take torchvision's cell, so the gradients are torchvision's.
        margin = _cell_margin(input.dtype, (height, width), weight.shape, dilation)
        grid = _sampling_grid(offset.detach(), weight.shape, (height, width), stride, padding, dilation, margin)
        samples = _sample_columns(input.detach(), grid)  # (N, taps, P, C)
        grad_out = grad_output.permute(0, 2, 3, 1).reshape(batch, positions, out_channels)
        tap_mask = mask.reshape(batch, taps, positions, 1)

        # d columns (N, P, taps, C) = grad_out @ [W_k^T]_k, one matmul for all taps.
        grad_columns = torch.matmul(grad_out, _tap_weights(weight).permute(2, 0, 1).reshape(out_channels, -1))
        grad_columns = grad_columns.view(batch, positions, taps, channels).transpose(1, 2)  # (N, taps, P, C)
        grad_weight = weight.new_empty(taps, channels, out_channels)
        grad_mask = mask.new_empty(batch, taps, positions)
        for tap in range(taps):  # tap by tap, to keep the temporaries small
            grad_mask[:, tap] = (grad_columns[:, tap] * samples[:, tap]).sum(-1)
            masked = samples[:, tap] * tap_mask[:, tap]
            grad_weight[tap] = torch.matmul(masked.transpose(1, 2), grad_out).sum(0)
        del samples, masked
        grad_weight = grad_weight.permute(2, 1, 0).reshape(out_channels, channels, *weight.shape[2:])
        grad_samples = grad_columns.mul_(tap_mask).permute(0, 3, 1, 2)  # grid_sample output layout (N, C, taps, P)
        grad_input, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
            grad_samples, input.detach().contiguous(memory_format=torch.channels_last), grid, 0, 0, False,
            [ctx.needs_input_grad[0], True],
        )
        # grid = coordinate * 2 / size + const, coordinate = base + offset: offsets are stored (dy, dx) per tap.
        grad_grid = grad_grid * grid.new_tensor([2.0 / width, 2.0 / height])
        grad_offset = grad_grid.flip(-1).permute(0, 1, 3, 2).reshape_as(offset)
        grad_bias = grad_out.sum((0, 1)) if ctx.has_bias else None
        return grad_input, grad_offset, grad_mask.view_as(mask), grad_weight, grad_bias, None, None, None


def _sampling_deform_conv(input, offset, mask, weight, bias, stride, padding, dilation) -> Tensor:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, offset, mask, weight, bias)):
        return _DeformConvFunction.apply(input, offset, mask, weight, bias, stride, padding, dilation)
    return _sampled_deform_conv(input, offset, mask, weight, bias, stride, padding, dilation)


class NonFiniteOffsetError(FloatingPointError):
    """NaN or infinite offsets reached a deformable conv (found before any implementation reads memory at them)."""

    def __init__(self, message: str, layer: nn.Module | None = None) -> None:
        super().__init__(message)
        self.layer = layer

    def located(self, model: nn.Module, context: str) -> "NonFiniteOffsetError":
        """The same error, its message starting with `context` and naming the layer's path in `model`."""
        name = next((name for name, module in model.named_modules() if module is self.layer), None)
        where = f" in layer {name}" if name else ""
        return NonFiniteOffsetError(f"{context}{where}: {self}", self.layer)


# The offsets last found finite (a weak reference and the version counter). DyConv gives one offset tensor to
# the three convs of a level, so the check costs one device-to-host sync per DyConv level, not one per conv.
_last_finite_offsets: tuple[weakref.ref, int | None] | None = None


def _version_of(tensor: Tensor) -> int | None:
    # Inference-mode tensors have no version counter.
    return None if tensor.is_inference() else tensor._version


def check_finite_offsets(offset: Tensor, layer: nn.Module | None = None) -> None:
    """Raise NonFiniteOffsetError when `offset` holds NaN or inf: one fused reduction and one host sync.

    It runs above the dispatch, for every implementation: each one addresses memory at the offsets, and
    torchvision's kernel crashes the whole process (segmentation fault) on NaN offsets.
    """
    global _last_finite_offsets
    if torch.compiler.is_exporting():
        # A graph being exported (tools/export_onnx.py) cannot branch on values; its runtime's DCN (ONNX
        # DeformConv) reads NaN offsets as values, without torchvision's crash to prevent.
        return
    if _last_finite_offsets is not None:
        checked, version = _last_finite_offsets
        if checked() is offset and version == _version_of(offset):
            return
    if not bool(torch.isfinite(offset).all()):
        raise NonFiniteOffsetError(_offset_report(offset, layer), layer)
    _last_finite_offsets = (weakref.ref(offset), _version_of(offset))


def _offset_report(offset: Tensor, layer: nn.Module | None) -> str:
    """What is wrong with non-finite offsets, where, and the usual causes."""
    nan = int(torch.isnan(offset).sum())
    infinite = int(torch.isinf(offset).sum())
    conv = f"{type(layer).__name__}({layer.extra_repr()})" if layer is not None else "a deformable conv"
    return (
        f"Non-finite offsets reached {conv}: {nan} NaN and {infinite} infinite of {offset.numel()} values "
        f"(offsets {tuple(offset.shape)}, a {offset.shape[-2]}x{offset.shape[-1]} feature map). The features "
        "that predict them are not finite: training diverged (lower SOLVER.BASE_LR or enable "
        "SOLVER.CLIP_GRADIENTS) or the input holds NaN/inf (check the images and INPUT.PIXEL_MEAN/PIXEL_STD)."
    )


# Orders the deferred offset records of all convs, so that the first non-finite call is the one reported.
_deferred_call_order = itertools.count()


def defer_offset_checks(module: nn.Module) -> None:
    """Let the deformable convs inside `module` defer their offset check (on plans with `deferred_finite_check`)
    to the `raise_for_deferred_offsets(module)` that `module`'s forward calls. Other convs check at once, so that
    no records pile up where nobody collects them."""
    for conv in module.modules():
        if isinstance(conv, ModulatedDeformConv):
            conv.offset_check_collected = True


def raise_for_deferred_offsets(module: nn.Module) -> None:
    """Raise NonFiniteOffsetError for the first call, in `module`'s last forward, of a deformable conv that was given
    non-finite offsets (plans with `deferred_finite_check`): one host sync for all calls; the records are cleared."""
    records = []
    for conv in module.modules():
        if getattr(conv, "deferred_offsets", None):
            records.extend((order, offset, is_finite, conv) for order, offset, is_finite in conv.deferred_offsets)
            conv.deferred_offsets = None
    if not records:
        return
    records.sort(key=lambda record: record[0])
    finite = torch.stack([is_finite for _, _, is_finite, _ in records])
    if bool(finite.all()):
        return
    _, offset, _, conv = records[int(torch.nonzero(~finite)[0])]
    raise NonFiniteOffsetError(_offset_report(offset, conv), conv)


class ModulatedDeformConv(UsesExecutionPlan, nn.Module):
    """DCNv2 layer whose offsets (2*K channels, (dy, dx) per tap) and mask (K channels) are given by the caller."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.offset_check_collected = False  # set by defer_offset_checks
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: uniform(+-1/sqrt(fan_in)) weights, zero bias."""
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        """Convolve `input` sampling at the kernel taps shifted by `offset`, each weighted by `mask`.

        Non-finite offsets raise NonFiniteOffsetError here, or, on plans that defer the check (a host sync per
        call stalls an accelerator) inside a module that collects them (`defer_offset_checks`), are replaced by
        zeros and reported by `raise_for_deferred_offsets`.
        """
        plan = self.execution_plan
        if plan.deferred_finite_check and self.offset_check_collected:
            record = (next(_deferred_call_order), offset, torch.isfinite(offset).all())
            self.deferred_offsets = [*(getattr(self, "deferred_offsets", None) or ()), record]
            offset = offset.nan_to_num(0.0, 0.0, 0.0)
        else:
            check_finite_offsets(offset, self)
        return modulated_deform_conv(
            input, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation,
            sampling=plan.sampling_deform_conv, compiled=plan.compiled_kernels,
        )

    def extra_repr(self) -> str:
        """Constructor arguments, for print(module)."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}"
        )
