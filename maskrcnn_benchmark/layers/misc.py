"""Small generic layers."""
import torch
from torch import nn


class Scale(nn.Module):
    """Multiply the input by one learnable scalar (parameter `scale`, shape (1,))."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value], dtype=torch.float32))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input * scale."""
        return input * self.scale
