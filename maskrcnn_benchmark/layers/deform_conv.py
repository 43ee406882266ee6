"""Modulated deformable convolution (DCNv2) on top of torchvision.ops.deform_conv2d."""
import math

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d


def _as_per_sample_buffer(tensor: Tensor, height: int, width: int) -> Tensor:
    """Reinterpret each sample of `tensor` (N, C, h, w) as a contiguous (C, height, width) block.

    The official CUDA kernel never checks the offset/mask shapes: for sample b it reads C*height*width
    values starting at tensor[b].data_ptr(). GLIP's DyConv relies on this when it feeds offsets computed on
    a finer level to the convolution of the next coarser level, so the prefix of every sample's buffer is
    used, not a resampled grid.
    """
    if tensor.shape[-2:] == (height, width):
        return tensor
    batch, channels = tensor.shape[:2]
    needed = channels * height * width
    if tensor[0].numel() < needed:
        raise ValueError(
            f"offset/mask of shape {tuple(tensor.shape)} is too small for an output grid of {height}x{width}"
        )
    return tensor.reshape(batch, -1)[:, :needed].view(batch, channels, height, width)


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - (dilation * (kernel - 1) + 1)) // stride + 1


def modulated_deform_conv(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> Tensor:
    """Modulated deformable conv with the official kernel's raw per-sample offset/mask addressing."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    out_h = _output_size(input.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    out_w = _output_size(input.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    offset = _as_per_sample_buffer(offset, out_h, out_w)
    mask = _as_per_sample_buffer(mask, out_h, out_w)
    if torch.is_autocast_enabled(input.device.type):
        # The official op is decorated with custom_fwd(cast_inputs=float32): it always runs in fp32.
        with torch.autocast(device_type=input.device.type, enabled=False):
            return deform_conv2d(
                input.float(), offset.float(), weight.float(), None if bias is None else bias.float(),
                stride=stride, padding=padding, dilation=dilation, mask=mask.float(),
            )
    return deform_conv2d(input, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)


class ModulatedDeformConv(nn.Module):
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
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: uniform(+-1/sqrt(fan_in)) weights, zero bias."""
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        """Convolve `input` sampling at the kernel taps shifted by `offset`, each weighted by `mask`."""
        return modulated_deform_conv(
            input, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation
        )

    def extra_repr(self) -> str:
        """Constructor arguments, for print(module)."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}"
        )
