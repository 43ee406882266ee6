"""Dynamic ReLU (DY-ReLU-B, two pieces with bias) and the hard sigmoid it uses."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def h_sigmoid(x: Tensor) -> Tensor:
    """Hard sigmoid relu6(x + 3) / 6."""
    return F.relu6(x + 3.0) / 6.0


class HSigmoid(nn.Module):
    """Module form of `h_sigmoid`."""

    def forward(self, x: Tensor) -> Tensor:
        """Apply relu6(x + 3) / 6."""
        return h_sigmoid(x)


class DyReLU(nn.Module):
    """Channel-wise dynamic ReLU max(x*a1 + b1, x*a2 + b2) with coefficients predicted from the pooled input."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        # Output order of the last Linear is (a1, b1, a2, b2), C channels each.
        self.fc = nn.Sequential(
            nn.Linear(in_channels, in_channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(in_channels // reduction, 4 * out_channels),
            HSigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the input-conditioned two-piece linear activation."""
        coeffs = self.fc(self.avg_pool(x).flatten(1))[:, :, None, None]
        a1, b1, a2, b2 = torch.split(coeffs, self.out_channels, dim=1)
        # Map the [0, 1] outputs to slopes around (1, 0) with range 2 and to biases in [-0.5, 0.5].
        a1 = (a1 - 0.5) * 2.0 + 1.0
        a2 = (a2 - 0.5) * 2.0
        b1 = b1 - 0.5
        b2 = b2 - 0.5
        return torch.maximum(x * a1 + b1, x * a2 + b2)
