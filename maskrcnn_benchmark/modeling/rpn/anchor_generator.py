"""Anchors of the ATSS head: one set of cell anchors per FPN level, shifted over the feature map grid."""
from collections.abc import Sequence

import torch
from torch import nn

from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList


def _width_height_center(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Legacy (+1) width, height and centre of xyxy boxes (..., 4)."""
    widths = boxes[..., 2] - boxes[..., 0] + 1
    heights = boxes[..., 3] - boxes[..., 1] + 1
    return widths, heights, boxes[..., 0] + 0.5 * (widths - 1), boxes[..., 1] + 0.5 * (heights - 1)


def _boxes_around(
    widths: torch.Tensor, heights: torch.Tensor, ctr_x: torch.Tensor, ctr_y: torch.Tensor
) -> torch.Tensor:
    """Legacy (+1) xyxy boxes (..., 4) of the given widths and heights around the given centres."""
    half_w, half_h = 0.5 * (widths - 1), 0.5 * (heights - 1)
    return torch.stack((ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h), dim=-1)


def generate_anchors(stride: int, sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """Cell anchors (len(aspect_ratios) * len(sizes), 4) in float64, ratio-major, centred on the first stride cell.

    This is the legacy Faster R-CNN recipe: the (0, 0, stride-1, stride-1) window is reshaped to each aspect
    ratio with rounded integer sides, then scaled by size / stride.
    """
    ratios = torch.tensor(aspect_ratios, dtype=torch.float64)
    scales = torch.tensor(sizes, dtype=torch.float64) / stride
    base = torch.tensor([0.0, 0.0, stride - 1.0, stride - 1.0], dtype=torch.float64)
    width, height, ctr_x, ctr_y = _width_height_center(base)
    ratio_widths = torch.round(torch.sqrt(width * height / ratios))
    ratio_heights = torch.round(ratio_widths * ratios)
    ratio_anchors = _boxes_around(ratio_widths, ratio_heights, ctr_x, ctr_y)

    widths, heights, ctr_x, ctr_y = _width_height_center(ratio_anchors)
    anchors = _boxes_around(
        widths[:, None] * scales, heights[:, None] * scales, ctr_x[:, None].expand(-1, len(scales)),
        ctr_y[:, None].expand(-1, len(scales)),
    )
    return anchors.reshape(-1, 4)


class BufferList(nn.Module):
    """A list of tensors registered as buffers named "0", "1", ... (like nn.ParameterList, for buffers)."""

    def __init__(self, buffers: Sequence[torch.Tensor]):
        super().__init__()
        for index, buffer in enumerate(buffers):
            self.register_buffer(str(index), buffer)

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self):
        return iter(self._buffers.values())


class AnchorGenerator(nn.Module):
    """Anchors for every location of every FPN level, as per-image, per-level BoxLists with a "visibility" field."""

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[float],
        anchor_strides: Sequence[int],
        straddle_thresh: float = 0,
    ):
        super().__init__()
        if len(anchor_strides) != len(sizes):
            raise ValueError(f"need one anchor size set per stride, got {len(sizes)} sizes for {len(anchor_strides)}")
        cell_anchors = [
            generate_anchors(stride, level_sizes, aspect_ratios).float()
            for stride, level_sizes in zip(anchor_strides, sizes)
        ]
        self.strides = tuple(anchor_strides)
        self.cell_anchors = BufferList(cell_anchors)
        self.straddle_thresh = straddle_thresh

    def num_anchors_per_location(self) -> list[int]:
        """Number of cell anchors at each level."""
        return [len(cell_anchors) for cell_anchors in self.cell_anchors]

    def grid_anchors(self, grid_sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """Per level, (H*W*A, 4) anchors: location-major in (h, w) order, cell anchors fastest."""
        anchors = []
        for (grid_height, grid_width), stride, cell_anchors in zip(grid_sizes, self.strides, self.cell_anchors):
            device = cell_anchors.device
            shifts_x = torch.arange(0, grid_width * stride, step=stride, dtype=torch.float32, device=device)
            shifts_y = torch.arange(0, grid_height * stride, step=stride, dtype=torch.float32, device=device)
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x = shift_x.reshape(-1)
            shift_y = shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            anchors.append((shifts[:, None, :] + cell_anchors[None, :, :]).reshape(-1, 4))
        return anchors

    def visibility(self, anchors: torch.Tensor, image_width: int, image_height: int) -> torch.Tensor:
        """Which anchors lie inside the image, up to straddle_thresh pixels (all of them if it is negative)."""
        if self.straddle_thresh < 0:
            return torch.ones(anchors.shape[0], dtype=torch.bool, device=anchors.device)
        return (
            (anchors[:, 0] >= -self.straddle_thresh)
            & (anchors[:, 1] >= -self.straddle_thresh)
            & (anchors[:, 2] < image_width + self.straddle_thresh)
            & (anchors[:, 3] < image_height + self.straddle_thresh)
        )

    def forward(self, image_list: ImageList, feature_maps: Sequence[torch.Tensor]) -> list[list[BoxList]]:
        """Per image, per level: the anchors of the padded feature maps, sized to that image."""
        grid_sizes = [tuple(feature_map.shape[-2:]) for feature_map in feature_maps]
        anchors_per_level = self.grid_anchors(grid_sizes)
        anchors = []
        for image_height, image_width in image_list.image_sizes:
            anchors_in_image = []
            for level_anchors in anchors_per_level:
                boxlist = BoxList(level_anchors, (image_width, image_height), mode="xyxy")
                boxlist.add_field("visibility", self.visibility(level_anchors, image_width, image_height))
                anchors_in_image.append(boxlist)
            anchors.append(anchors_in_image)
        return anchors


def make_anchor_generator_complex(cfg) -> AnchorGenerator:
    """AnchorGenerator from MODEL.RPN: per FPN level, SCALES_PER_OCTAVE sizes spread over one octave.

    config.check_supported refuses MODEL.RPN.USE_FPN False (single-level anchors are not built).
    """
    rpn_cfg = cfg.MODEL.RPN
    if len(rpn_cfg.ANCHOR_STRIDE) != len(rpn_cfg.ANCHOR_SIZES):
        raise ValueError("MODEL.RPN.ANCHOR_STRIDE and MODEL.RPN.ANCHOR_SIZES need one entry per FPN level")
    scales_per_octave = rpn_cfg.SCALES_PER_OCTAVE
    octave_scales = [rpn_cfg.OCTAVE ** (index / float(scales_per_octave)) for index in range(scales_per_octave)]
    sizes = [tuple(scale * size for scale in octave_scales) for size in rpn_cfg.ANCHOR_SIZES]
    return AnchorGenerator(sizes, rpn_cfg.ASPECT_RATIOS, rpn_cfg.ANCHOR_STRIDE, rpn_cfg.STRADDLE_THRESH)
