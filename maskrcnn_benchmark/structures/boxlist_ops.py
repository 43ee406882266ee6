"""Operations on BoxLists: NMS, filtering, IoU and concatenation."""
from collections.abc import Sequence

import torch

from maskrcnn_benchmark.layers.nms import ml_nms as _box_ml_nms
from maskrcnn_benchmark.layers.nms import nms as _box_nms

from .bounding_box import TO_REMOVE, BoxList


def boxlist_nms(
    boxlist: BoxList, nms_thresh: float, max_proposals: int = -1, score_field: str = "score"
) -> BoxList:
    """Class-agnostic NMS on a BoxList (scores in `score_field`); result in decreasing score order.

    A threshold <= 0 disables NMS; max_proposals > 0 keeps only that many boxes after NMS.
    """
    if nms_thresh <= 0:
        return boxlist
    mode = boxlist.mode
    boxlist = boxlist.convert("xyxy")
    keep = _box_nms(boxlist.bbox, boxlist.get_field(score_field), nms_thresh)
    if max_proposals > 0:
        keep = keep[:max_proposals]
    return boxlist[keep].convert(mode)


def boxlist_ml_nms(
    boxlist: BoxList,
    nms_thresh: float,
    max_proposals: int = -1,
    score_field: str = "scores",
    label_field: str = "labels",
    compiled: bool = True,
) -> BoxList:
    """Class-aware NMS on a BoxList with the official CUDA semantics (+1 IoU); surviving boxes keep their order.

    A threshold <= 0 disables NMS; max_proposals > 0 keeps the first max_proposals survivors, i.e. those with the
    lowest indices (not the best scores), as the official code does. `compiled=False` keeps the PyTorch NMS.
    """
    if nms_thresh <= 0:
        return boxlist
    mode = boxlist.mode
    boxlist = boxlist.convert("xyxy")
    keep = _box_ml_nms(
        boxlist.bbox, boxlist.get_field(score_field), boxlist.get_field(label_field), nms_thresh, compiled=compiled
    )
    if max_proposals > 0:
        keep = keep[:max_proposals]
    return boxlist[keep].convert(mode)


def remove_small_boxes(boxlist: BoxList, min_size: float) -> BoxList:
    """Keep boxes whose legacy width and height (x2 - x1 + 1, y2 - y1 + 1) are both >= min_size."""
    _, _, widths, heights = boxlist.convert("xywh").bbox.unbind(dim=1)
    keep = torch.nonzero((widths >= min_size) & (heights >= min_size)).squeeze(1)
    return boxlist[keep]


def boxlist_iou(boxlist1: BoxList, boxlist2: BoxList) -> torch.Tensor:
    """Pairwise IoU [N, M] of two BoxLists of the same image, with the legacy +1 widths."""
    if boxlist1.size != boxlist2.size:
        raise RuntimeError(f"boxlists should have the same image size, got {boxlist1} and {boxlist2}")
    boxlist1, boxlist2 = boxlist1.convert("xyxy"), boxlist2.convert("xyxy")
    area1 = boxlist1.area()
    area2 = boxlist2.area()
    box1, box2 = boxlist1.bbox, boxlist2.bbox
    top_left = torch.max(box1[:, None, :2], box2[:, :2])
    bottom_right = torch.min(box1[:, None, 2:], box2[:, 2:])
    wh = (bottom_right - top_left + TO_REMOVE).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter / (area1[:, None] + area2 - inter)


def _cat(items: Sequence, dim: int = 0):
    """torch.cat (or cat_boxlist) that returns a single element as is, without a copy."""
    if len(items) == 1:
        return items[0]
    if isinstance(items[0], torch.Tensor):
        return torch.cat(list(items), dim)
    return cat_boxlist(items)


def cat_boxlist(bboxes: Sequence[BoxList]) -> BoxList:
    """Concatenate BoxLists of the same image size, mode and field names into one BoxList."""
    if not isinstance(bboxes, (list, tuple)) or len(bboxes) == 0:
        raise ValueError("cat_boxlist expects a non-empty list of BoxList")
    if not all(isinstance(bbox, BoxList) for bbox in bboxes):
        raise TypeError("cat_boxlist expects only BoxList items")
    first = bboxes[0]
    if any(bbox.size != first.size for bbox in bboxes):
        raise ValueError(f"cannot concatenate BoxLists of different image sizes: {[b.size for b in bboxes]}")
    if any(bbox.mode != first.mode for bbox in bboxes):
        raise ValueError(f"cannot concatenate BoxLists of different modes: {[b.mode for b in bboxes]}")
    fields = first.fields()
    if any(set(bbox.fields()) != set(fields) for bbox in bboxes):
        raise ValueError(f"cannot concatenate BoxLists with different fields: {[b.fields() for b in bboxes]}")

    result = BoxList(_cat([bbox.bbox for bbox in bboxes], dim=0), first.size, first.mode)
    for field in fields:
        result.add_field(field, _cat([bbox.get_field(field) for bbox in bboxes], dim=0))
    return result
