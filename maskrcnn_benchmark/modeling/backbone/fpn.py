"""Feature pyramid network with RetinaNet's extra P6/P7 levels, as GLIP's `backbone.fpn`."""
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def init_kaiming_uniform_(conv: nn.Conv2d) -> nn.Conv2d:
    """Re-initialise with kaiming_uniform(a=1) weights and zero bias (Caffe2's XavierFill)."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.constant_(conv.bias, 0)
    return conv


def kaiming_uniform_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """Same-padded conv initialised by `init_kaiming_uniform_`."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2)
    return init_kaiming_uniform_(conv)


class LastLevelP6P7(nn.Module):
    """RetinaNet's P6 = conv3x3/s2(P5 or C5) and P7 = conv3x3/s2(relu(P6))."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        # Both are constructed before either is re-initialised, as officially (same draws for a given seed).
        for conv in (self.p6, self.p7):
            init_kaiming_uniform_(conv)
        # The official code starts from P5 when its width matches, else from the backbone's C5.
        self.use_p5 = in_channels == out_channels

    def forward(self, c5: torch.Tensor, p5: torch.Tensor) -> list[torch.Tensor]:
        """Return [P6, P7]."""
        p6 = self.p6(p5 if self.use_p5 else c5)
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """Top-down FPN: 1x1 laterals, nearest upsampling to each lateral's size, 3x3 output convs, extra top levels."""

    def __init__(self, in_channels_list: Sequence[int], out_channels: int,
                 top_blocks: LastLevelP6P7 | None = None, drop_block: nn.Module | None = None):
        """`in_channels_list[i] == 0` skips level i; modules of level i are named fpn_inner{i+1}/fpn_layer{i+1}."""
        super().__init__()
        self.out_channels = out_channels
        self.inner_blocks = []
        self.layer_blocks = []
        for index, in_channels in enumerate(in_channels_list, 1):
            if in_channels == 0:
                continue
            self.add_module(f"fpn_inner{index}", kaiming_uniform_conv(in_channels, out_channels, 1))
            self.add_module(f"fpn_layer{index}", kaiming_uniform_conv(out_channels, out_channels, 3))
            self.inner_blocks.append(f"fpn_inner{index}")
            self.layer_blocks.append(f"fpn_layer{index}")
        self.top_blocks = top_blocks
        self.drop_block = drop_block

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Map backbone features (shallowest first; the last len(levels) are used) to outputs, finest first."""
        features = features[-len(self.inner_blocks):]
        last_inner = getattr(self, self.inner_blocks[-1])(features[-1])
        results = [getattr(self, self.layer_blocks[-1])(last_inner)]
        for feature, inner_name, layer_name in zip(features[-2::-1], self.inner_blocks[-2::-1],
                                                   self.layer_blocks[-2::-1]):
            lateral = getattr(self, inner_name)(feature)
            if lateral.shape[-2:] != last_inner.shape[-2:]:
                last_inner = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + last_inner
            # DropBlock only feeds the output conv; the undropped sum continues top-down (official placement).
            merged = self.drop_block(last_inner) if self.drop_block is not None and self.training else last_inner
            results.insert(0, getattr(self, layer_name)(merged))
        if self.top_blocks is not None:
            results.extend(self.top_blocks(features[-1], results[-1]))
        return results
