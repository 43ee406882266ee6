"""DropBlock regularisation (Ghiasi et al., 2018), as used on GLIP's FPN laterals."""
import torch
import torch.nn.functional as F
from torch import nn


class DropBlock2D(nn.Module):
    """In training, zero random `block_size` x `block_size` squares (shared by all channels) and rescale."""

    def __init__(self, drop_prob: float, block_size: int):
        super().__init__()
        self.drop_prob = drop_prob
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Identity in eval mode or with drop_prob 0; otherwise drop blocks of the (N, C, H, W) input."""
        if x.dim() != 4:
            raise ValueError(f"DropBlock2D expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        if not self.training or self.drop_prob == 0.0:
            return x
        # Block centres are drawn with rate drop_prob / block_size**2 (the official gamma, no border correction).
        gamma = self.drop_prob / self.block_size ** 2
        centres = (torch.rand(x.shape[0], 1, *x.shape[2:], device=x.device) < gamma).float()
        dropped = F.max_pool2d(centres, self.block_size, stride=1, padding=self.block_size // 2)
        if self.block_size % 2 == 0:
            dropped = dropped[:, :, :-1, :-1]
        keep = 1.0 - dropped
        # Rescale so that the kept activations preserve the expected sum (as officially, over the whole batch).
        keep = keep * (keep.numel() / keep.sum())
        return x * keep.to(x.dtype)
