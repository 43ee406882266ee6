"""ROIAlign with torchvision's interface; the compiled or torch_npu kernel runs where layers.dispatch selects it."""
from collections.abc import Sequence

import torchvision
from torch import Tensor

from .dispatch import dispatchable


@dispatchable("roi_align")
def roi_align(
    input: Tensor,
    rois: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """ROIAlign with torchvision's interface and semantics (aligned=True shifts boxes by -0.5 pixel)."""
    return torchvision.ops.roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
