"""Shape rules of the (deformable) convolution shared by its PyTorch, compiled and NPU implementations."""
from torch import Tensor


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one dimension."""
    return (size + 2 * padding - (dilation * (kernel - 1) + 1)) // stride + 1


def per_sample_prefix(tensor: Tensor, height: int, width: int) -> Tensor:
    """Each sample of `tensor` (N, C, h, w) read as a (C, height, width) block from its first element on.

    The official CUDA kernel never checks the offset/mask shapes: for sample b it reads C*height*width values
    starting at tensor[b].data_ptr(). GLIP's DyConv relies on this when it feeds offsets computed on a finer level
    to the convolution of the next coarser level, so the prefix of every sample's buffer is used, not a resampled
    grid.
    """
    if tensor.shape[-2:] == (height, width):
        return tensor
    batch, channels = tensor.shape[:2]
    needed = channels * height * width
    if tensor.shape[1:].numel() < needed:
        raise ValueError(
            f"offset/mask of shape {tuple(tensor.shape)} is too small for an output grid of {height}x{width}"
        )
    return tensor.flatten(1)[:, :needed].reshape(batch, channels, height, width)
