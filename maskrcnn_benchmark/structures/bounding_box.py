"""BoxList: a set of boxes of one image, with per-box fields (labels, scores, ...)."""
from collections.abc import Sequence
from typing import Any

import torch

# Transpose methods (same values as PIL.Image.FLIP_LEFT_RIGHT / FLIP_TOP_BOTTOM).
FLIP_LEFT_RIGHT = 0
FLIP_TOP_BOTTOM = 1

_MODES = ("xyxy", "xywh")
# Legacy pixel convention: a box [x1, x2] covers x2 - x1 + 1 pixels.
TO_REMOVE = 1


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode should be one of {_MODES}, got {mode!r}")


class BoxList:
    """Nx4 boxes of one image of size (width, height), in "xyxy" or "xywh" mode, with per-box extra fields.

    A field is a tensor (or any object supporting ``[index]``) whose first dimension runs over the boxes. Objects
    that are not tensors are also asked to follow ``resize``/``transpose``/``crop`` through methods of the same name.
    """

    def __init__(self, bbox: torch.Tensor | Sequence, image_size: Sequence, mode: str = "xyxy") -> None:
        device = bbox.device if isinstance(bbox, torch.Tensor) else torch.device("cpu")
        if not isinstance(bbox, torch.Tensor) or bbox.dtype != torch.float32:
            # Boxes are always stored in float32, as in the official structure.
            bbox = torch.as_tensor(bbox, dtype=torch.float32, device=device)
        if bbox.dim() != 2:
            raise ValueError(f"bbox should have 2 dimensions (N, 4), got shape {tuple(bbox.shape)}")
        if bbox.size(-1) != 4:
            raise ValueError(f"last dimension of bbox should have size 4, got shape {tuple(bbox.shape)}")
        _check_mode(mode)
        if len(image_size) != 2:
            raise ValueError(f"image_size should be (width, height), got {image_size!r}")
        self.bbox = bbox
        self.size: tuple = tuple(image_size)
        self.mode = mode
        self.extra_fields: dict[str, Any] = {}

    # ---- fields -----------------------------------------------------------------------------------------------
    def add_field(self, field: str, field_data: Any) -> None:
        """Attach (or replace) a per-box field."""
        self.extra_fields[field] = field_data

    def get_field(self, field: str) -> Any:
        """Return a per-box field (KeyError if absent)."""
        return self.extra_fields[field]

    def has_field(self, field: str) -> bool:
        """Whether the field exists."""
        return field in self.extra_fields

    def fields(self) -> list[str]:
        """Names of the extra fields, in insertion order."""
        return list(self.extra_fields.keys())

    def copy_with_fields(self, fields: str | Sequence[str]) -> "BoxList":
        """A BoxList sharing the boxes, carrying only the given fields."""
        boxlist = BoxList(self.bbox, self.size, self.mode)
        if not isinstance(fields, (list, tuple)):
            fields = [fields]
        for field in fields:
            boxlist.add_field(field, self.get_field(field))
        return boxlist

    def _copy_extra_fields(self, other: "BoxList") -> None:
        self.extra_fields.update(other.extra_fields)

    def _transformed(self, bbox: torch.Tensor, size: Sequence, mode: str, method: str, *args, **kwargs) -> "BoxList":
        """New BoxList; tensor fields are shared, other fields are transformed by their own `method`."""
        boxlist = BoxList(bbox, size, mode=mode)
        for name, value in self.extra_fields.items():
            if not isinstance(value, torch.Tensor):
                value = getattr(value, method)(*args, **kwargs)
            boxlist.add_field(name, value)
        return boxlist

    # ---- geometry ---------------------------------------------------------------------------------------------
    def _split_into_xyxy(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.mode == "xyxy":
            x1, y1, x2, y2 = self.bbox.split(1, dim=-1)
            return x1, y1, x2, y2
        x1, y1, w, h = self.bbox.split(1, dim=-1)
        return x1, y1, x1 + (w - TO_REMOVE).clamp(min=0), y1 + (h - TO_REMOVE).clamp(min=0)

    def convert(self, mode: str) -> "BoxList":
        """Return the boxes in another mode (self if already in it); xywh uses w = x2 - x1 + 1."""
        _check_mode(mode)
        if mode == self.mode:
            return self
        x1, y1, x2, y2 = self._split_into_xyxy()
        if mode == "xyxy":
            bbox = torch.cat((x1, y1, x2, y2), dim=-1)
        else:
            bbox = torch.cat((x1, y1, x2 - x1 + TO_REMOVE, y2 - y1 + TO_REMOVE), dim=-1)
        boxlist = BoxList(bbox, self.size, mode=mode)
        boxlist._copy_extra_fields(self)
        return boxlist

    def resize(self, size: Sequence, *args, **kwargs) -> "BoxList":
        """Boxes rescaled to a new image size (width, height)."""
        ratio_w, ratio_h = (float(s) / float(s_orig) for s, s_orig in zip(size, self.size))
        if ratio_w == ratio_h:
            return self._transformed(self.bbox * ratio_w, size, self.mode, "resize", size, *args, **kwargs)
        x1, y1, x2, y2 = self._split_into_xyxy()
        scaled = torch.cat((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=-1)
        return self._transformed(scaled, size, "xyxy", "resize", size, *args, **kwargs).convert(self.mode)

    def transpose(self, method: int) -> "BoxList":
        """Flip the boxes: FLIP_LEFT_RIGHT (legacy x' = W - x - 1) or FLIP_TOP_BOTTOM (y' = H - y)."""
        if method not in (FLIP_LEFT_RIGHT, FLIP_TOP_BOTTOM):
            raise NotImplementedError("Only FLIP_LEFT_RIGHT and FLIP_TOP_BOTTOM are implemented")
        width, height = self.size
        x1, y1, x2, y2 = self._split_into_xyxy()
        if method == FLIP_LEFT_RIGHT:
            flipped = torch.cat((width - x2 - TO_REMOVE, y1, width - x1 - TO_REMOVE, y2), dim=-1)
        else:
            # The official top-bottom flip has no -1 (unlike left-right); kept as is.
            flipped = torch.cat((x1, height - y2, x2, height - y1), dim=-1)
        return self._transformed(flipped, self.size, "xyxy", "transpose", method).convert(self.mode)

    def crop(self, box: Sequence) -> "BoxList":
        """Boxes relative to the crop (left, upper, right, lower), clamped to the crop; empty boxes are kept."""
        x1, y1, x2, y2 = self._split_into_xyxy()
        w, h = box[2] - box[0], box[3] - box[1]
        cropped = torch.cat(
            (
                (x1 - box[0]).clamp(min=0, max=w),
                (y1 - box[1]).clamp(min=0, max=h),
                (x2 - box[0]).clamp(min=0, max=w),
                (y2 - box[1]).clamp(min=0, max=h),
            ),
            dim=-1,
        )
        return self._transformed(cropped, (w, h), "xyxy", "crop", box).convert(self.mode)

    def clip_to_image(self, remove_empty: bool = True) -> "BoxList":
        """Clamp x to [0, W-1] and y to [0, H-1] (in place if xyxy); optionally drop boxes with x2 <= x1 or y2 <= y1."""
        if self.mode != "xyxy":
            # The official method clamps the raw columns, i.e. w/h as if they were x2/y2; clip the corners instead.
            clipped = self.convert("xyxy").clip_to_image(remove_empty)
            return clipped.convert(self.mode)
        width, height = self.size
        x1 = self.bbox[:, 0].clamp(min=0, max=width - TO_REMOVE)
        y1 = self.bbox[:, 1].clamp(min=0, max=height - TO_REMOVE)
        x2 = self.bbox[:, 2].clamp(min=0, max=width - TO_REMOVE)
        y2 = self.bbox[:, 3].clamp(min=0, max=height - TO_REMOVE)
        # In place like the official method: callers may rely on the clipped boxes without reassigning.
        self.bbox = torch.stack((x1, y1, x2, y2), dim=-1)
        if remove_empty:
            keep = (y2 > y1) & (x2 > x1)
            return self[keep]
        return self

    def area(self) -> torch.Tensor:
        """Box areas: (x2 - x1 + 1) * (y2 - y1 + 1) in xyxy mode, w * h in xywh mode."""
        box = self.bbox
        if self.mode == "xyxy":
            return (box[:, 2] - box[:, 0] + TO_REMOVE) * (box[:, 3] - box[:, 1] + TO_REMOVE)
        return box[:, 2] * box[:, 3]

    # ---- tensor-like ------------------------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> "BoxList":
        """Move the boxes and every field that has a `to` method."""
        boxlist = BoxList(self.bbox.to(device), self.size, self.mode)
        for name, value in self.extra_fields.items():
            if hasattr(value, "to"):
                value = value.to(device)
            boxlist.add_field(name, value)
        return boxlist

    def __getitem__(self, item: Any) -> "BoxList":
        """Select boxes (and the same entries of every field) by index tensor, mask or slice."""
        boxlist = BoxList(self.bbox[item], self.size, self.mode)
        for name, value in self.extra_fields.items():
            boxlist.add_field(name, value[item])
        return boxlist

    def __len__(self) -> int:
        return self.bbox.shape[0]

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_boxes={len(self)}, image_width={self.size[0]}, "
            f"image_height={self.size[1]}, mode={self.mode})"
        )
