"""Small tensor helpers shared by the detection head, its loss and its post-processing."""
import torch


def permute_and_flatten(layer: torch.Tensor, N: int, A: int, C: int, H: int, W: int) -> torch.Tensor:
    """(N, A*C, H, W) -> (N, H*W*A, C): location-major rows, as the anchors are ordered."""
    layer = layer.view(N, A, C, H, W).permute(0, 3, 4, 1, 2)
    return layer.reshape(N, -1, C)
