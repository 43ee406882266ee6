"""BoxList, boxlist_ops and ImageList: official semantics (legacy +1 convention) against brute-force references."""
import pytest
import torch

from maskrcnn_benchmark.structures.bounding_box import FLIP_LEFT_RIGHT, FLIP_TOP_BOTTOM, BoxList
from maskrcnn_benchmark.structures.boxlist_ops import (
    boxlist_iou,
    boxlist_ml_nms,
    boxlist_nms,
    cat_boxlist,
    remove_small_boxes,
)
from maskrcnn_benchmark.structures.image_list import ImageList, to_image_list


def random_boxes(num: int, width: float = 100.0, height: float = 80.0, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(num, 2, generator=gen) * width
    y = torch.rand(num, 2, generator=gen) * height
    return torch.stack([x.min(1).values, y.min(1).values, x.max(1).values, y.max(1).values], dim=1)


class GeometryField:
    """A non-tensor field that records the geometric calls it receives."""

    def __init__(self, calls=()):
        self.calls = list(calls)

    def resize(self, size, *args, **kwargs):
        return GeometryField(self.calls + [("resize", tuple(size), args, kwargs)])

    def transpose(self, method):
        return GeometryField(self.calls + [("transpose", method)])

    def crop(self, box):
        return GeometryField(self.calls + [("crop", tuple(box))])

    def __getitem__(self, item):
        return self


# ---------------------------------------------------------------- BoxList basics


def test_boxlist_validation_errors():
    with pytest.raises(ValueError, match="2 dimensions"):
        BoxList(torch.zeros(4), (10, 10))
    with pytest.raises(ValueError, match="size 4"):
        BoxList(torch.zeros(3, 5), (10, 10))
    with pytest.raises(ValueError, match="mode"):
        BoxList(torch.zeros(3, 4), (10, 10), mode="cxcywh")
    with pytest.raises(ValueError, match="width, height"):
        BoxList(torch.zeros(3, 4), (10, 10, 3))
    with pytest.raises(ValueError, match="mode"):
        BoxList(torch.zeros(3, 4), (10, 10)).convert("yxyx")
    with pytest.raises(NotImplementedError):
        BoxList(torch.zeros(3, 4), (10, 10)).transpose(2)


def test_boxlist_stores_float32_and_fields():
    boxes = BoxList([[0, 0, 10, 10], [1, 2, 3, 4]], [20, 30])
    assert boxes.bbox.dtype == torch.float32 and boxes.size == (20, 30) and len(boxes) == 2
    assert BoxList(torch.zeros(2, 4, dtype=torch.float64), (5, 5)).bbox.dtype == torch.float32
    boxes.add_field("labels", torch.tensor([3, 7]))
    boxes.add_field("scores", torch.tensor([0.5, 0.25]))
    assert boxes.fields() == ["labels", "scores"]
    assert boxes.has_field("labels") and not boxes.has_field("masks")
    only_labels = boxes.copy_with_fields("labels")
    assert only_labels.fields() == ["labels"] and only_labels.bbox is boxes.bbox
    assert repr(boxes) == "BoxList(num_boxes=2, image_width=20, image_height=30, mode=xyxy)"
    with pytest.raises(KeyError):
        boxes.get_field("masks")


def test_boxlist_getitem_and_to():
    boxes = BoxList(random_boxes(6), (100, 80))
    boxes.add_field("labels", torch.arange(6))
    mask = torch.tensor([True, False, True, False, False, True])
    for item, expected in [(mask, [0, 2, 5]), (torch.tensor([4, 1]), [4, 1]), (slice(1, 3), [1, 2])]:
        picked = boxes[item]
        assert torch.equal(picked.bbox, boxes.bbox[expected])
        assert picked.get_field("labels").tolist() == expected
    moved = boxes.to("cpu")
    assert torch.equal(moved.bbox, boxes.bbox) and moved.fields() == ["labels"]
    assert len(boxes[torch.zeros(6, dtype=torch.bool)]) == 0


def test_convert_uses_plus_one_widths_and_round_trips():
    xyxy = torch.tensor([[10.0, 20.0, 30.0, 25.0], [0.0, 0.0, 0.0, 0.0]])
    boxes = BoxList(xyxy, (50, 50))
    boxes.add_field("labels", torch.tensor([1, 2]))
    xywh = boxes.convert("xywh")
    assert torch.equal(xywh.bbox, torch.tensor([[10.0, 20.0, 21.0, 6.0], [0.0, 0.0, 1.0, 1.0]]))
    assert xywh.get_field("labels").tolist() == [1, 2]
    assert boxes.convert("xyxy") is boxes
    assert torch.equal(xywh.convert("xyxy").bbox, xyxy)
    # Widths below 1 collapse to x2 = x1 (the official clamp of w - 1 at 0).
    tiny = BoxList(torch.tensor([[5.0, 5.0, 0.5, 0.25]]), (50, 50), mode="xywh")
    assert torch.equal(tiny.convert("xyxy").bbox, torch.tensor([[5.0, 5.0, 5.0, 5.0]]))


def test_area_both_modes():
    boxes = BoxList(torch.tensor([[10.0, 20.0, 30.0, 25.0], [3.0, 3.0, 3.0, 3.0]]), (50, 50))
    assert torch.equal(boxes.area(), torch.tensor([21.0 * 6.0, 1.0]))
    assert torch.equal(boxes.convert("xywh").area(), torch.tensor([21.0 * 6.0, 1.0]))


def test_resize_same_and_different_ratios():
    boxes = BoxList(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (100, 50))
    boxes.add_field("labels", torch.tensor([4]))
    boxes.add_field("geometry", GeometryField())
    same = boxes.resize((200, 100))
    assert torch.equal(same.bbox, torch.tensor([[20.0, 40.0, 60.0, 80.0]])) and same.size == (200, 100)
    assert same.get_field("geometry").calls == [("resize", (200, 100), (), {})]
    assert same.get_field("labels") is boxes.get_field("labels")
    different = boxes.resize((50, 100))
    assert torch.equal(different.bbox, torch.tensor([[5.0, 40.0, 15.0, 80.0]]))
    # xywh boxes are resized through their xyxy corners and come back in xywh.
    xywh = boxes.convert("xywh").resize((50, 100))
    assert xywh.mode == "xywh"
    assert torch.equal(xywh.bbox, torch.tensor([[5.0, 40.0, 15.0 - 5.0 + 1, 80.0 - 40.0 + 1]]))


def test_transpose_legacy_flips():
    boxes = BoxList(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (100, 50))
    boxes.add_field("geometry", GeometryField())
    left_right = boxes.transpose(FLIP_LEFT_RIGHT)
    assert torch.equal(left_right.bbox, torch.tensor([[100 - 30 - 1.0, 20.0, 100 - 10 - 1.0, 40.0]]))
    assert left_right.get_field("geometry").calls == [("transpose", FLIP_LEFT_RIGHT)]
    top_bottom = boxes.transpose(FLIP_TOP_BOTTOM)
    assert torch.equal(top_bottom.bbox, torch.tensor([[10.0, 50 - 40.0, 30.0, 50 - 20.0]]))
    random = BoxList(random_boxes(10), (100, 80))
    for method in (FLIP_LEFT_RIGHT, FLIP_TOP_BOTTOM):
        assert torch.allclose(random.transpose(method).transpose(method).bbox, random.bbox, atol=1e-5)
    assert random.convert("xywh").transpose(FLIP_LEFT_RIGHT).mode == "xywh"


def test_crop_clamps_to_crop_window():
    boxes = BoxList(torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 5.0, 5.0]]), (100, 50))
    boxes.add_field("geometry", GeometryField())
    cropped = boxes.crop((8, 15, 28, 35))
    assert cropped.size == (20, 20)
    assert torch.equal(cropped.bbox, torch.tensor([[2.0, 5.0, 20.0, 20.0], [0.0, 0.0, 0.0, 0.0]]))
    assert cropped.get_field("geometry").calls == [("crop", (8, 15, 28, 35))]


def test_clip_to_image_legacy_limits_and_remove_empty():
    raw = torch.tensor([[-5.0, -5.0, 200.0, 200.0], [50.0, 10.0, 20.0, 30.0], [120.0, 10.0, 130.0, 30.0]])
    boxes = BoxList(raw.clone(), (100, 60))
    boxes.add_field("labels", torch.tensor([1, 2, 3]))
    kept = boxes.clip_to_image(remove_empty=True)
    # Clamped to [0, W-1] x [0, H-1]; the inverted box and the box fully right of the image become empty.
    assert torch.equal(kept.bbox, torch.tensor([[0.0, 0.0, 99.0, 59.0]]))
    assert kept.get_field("labels").tolist() == [1]
    # The official method clips in place.
    assert torch.equal(boxes.bbox[2], torch.tensor([99.0, 10.0, 99.0, 30.0]))
    boxes_all = BoxList(raw.clone(), (100, 60))
    assert boxes_all.clip_to_image(remove_empty=False) is boxes_all and len(boxes_all) == 3
    xywh = BoxList(raw[:1].clone(), (100, 60)).convert("xywh").clip_to_image()
    assert xywh.mode == "xywh" and torch.equal(xywh.bbox, torch.tensor([[0.0, 0.0, 100.0, 60.0]]))


# ---------------------------------------------------------------- boxlist_ops


def brute_force_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(len(boxes1), len(boxes2), dtype=torch.float64)
    for i, a in enumerate(boxes1.double().tolist()):
        for j, b in enumerate(boxes2.double().tolist()):
            w = max(min(a[2], b[2]) - max(a[0], b[0]) + 1, 0.0)
            h = max(min(a[3], b[3]) - max(a[1], b[1]) + 1, 0.0)
            area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
            area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
            out[i, j] = w * h / (area_a + area_b - w * h)
    return out


def test_boxlist_iou_matches_brute_force():
    boxes1, boxes2 = random_boxes(17, seed=1), random_boxes(9, seed=2)
    iou = boxlist_iou(BoxList(boxes1, (100, 80)), BoxList(boxes2, (100, 80)))
    assert iou.shape == (17, 9)
    torch.testing.assert_close(iou.double(), brute_force_iou(boxes1, boxes2), rtol=1e-5, atol=1e-6)
    # Touching boxes overlap by one pixel column under the legacy convention.
    touching = boxlist_iou(BoxList([[0, 0, 1, 1]], (5, 5)), BoxList([[1, 0, 2, 1]], (5, 5)))
    assert touching.item() == pytest.approx(1 / 3)
    # xywh inputs are compared through their corners.
    iou_xywh = boxlist_iou(BoxList(boxes1, (100, 80)).convert("xywh"), BoxList(boxes2, (100, 80)))
    torch.testing.assert_close(iou_xywh, iou, rtol=1e-5, atol=1e-6)
    assert boxlist_iou(BoxList(torch.zeros(0, 4), (100, 80)), BoxList(boxes2, (100, 80))).shape == (0, 9)
    with pytest.raises(RuntimeError, match="same image size"):
        boxlist_iou(BoxList(boxes1, (100, 80)), BoxList(boxes2, (80, 100)))


def test_remove_small_boxes_uses_plus_one_sizes():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 9.0], [0.0, 0.0, 0.5, 9.0], [5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 3.0, 0.9]])
    boxlist = BoxList(boxes, (20, 20))
    boxlist.add_field("labels", torch.arange(4))
    # legacy widths: 2, 1.5, 1, 4 ; heights: 10, 10, 1, 1.9
    assert remove_small_boxes(boxlist, 2).get_field("labels").tolist() == [0]
    assert remove_small_boxes(boxlist, 1.5).get_field("labels").tolist() == [0, 1, 3]
    assert remove_small_boxes(boxlist, 0).get_field("labels").tolist() == [0, 1, 2, 3]
    random = BoxList(random_boxes(50, seed=3), (100, 80))
    keep = [
        i for i, b in enumerate(random.bbox.tolist()) if b[2] - b[0] + 1 >= 10 and b[3] - b[1] + 1 >= 10
    ]
    assert torch.equal(remove_small_boxes(random, 10).bbox, random.bbox[keep])


def test_cat_boxlist_and_errors():
    parts = []
    for seed, count in [(4, 3), (5, 0), (6, 2)]:
        part = BoxList(random_boxes(count, seed=seed), (100, 80))
        part.add_field("scores", torch.rand(count))
        part.add_field("labels", torch.arange(count))
        parts.append(part)
    joined = cat_boxlist(parts)
    assert len(joined) == 5 and joined.fields() == ["scores", "labels"]
    assert torch.equal(joined.bbox, torch.cat([p.bbox for p in parts]))
    assert joined.get_field("labels").tolist() == [0, 1, 2, 0, 1]
    assert cat_boxlist(parts[:1]).bbox is parts[0].bbox
    with pytest.raises(ValueError, match="image sizes"):
        cat_boxlist([parts[0], BoxList(torch.zeros(1, 4), (80, 100))])
    with pytest.raises(ValueError, match="modes"):
        cat_boxlist([parts[0], parts[2].convert("xywh")])
    with pytest.raises(ValueError, match="fields"):
        cat_boxlist([parts[0], parts[2].copy_with_fields("scores")])
    with pytest.raises(ValueError):
        cat_boxlist([])


def test_boxlist_nms_wrappers():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    boxlist = BoxList(boxes, (100, 100))
    boxlist.add_field("score", torch.tensor([0.5, 0.9, 0.7]))
    kept = boxlist_nms(boxlist, 0.5)
    assert kept.get_field("score").tolist() == pytest.approx([0.9, 0.7])  # decreasing score order
    assert len(boxlist_nms(boxlist, 0.5, max_proposals=1)) == 1
    assert boxlist_nms(boxlist, 0.0) is boxlist
    assert boxlist_nms(boxlist.convert("xywh"), 0.5).mode == "xywh"

    multi = BoxList(boxes, (100, 100))
    multi.add_field("conf", torch.tensor([0.5, 0.9, 0.7]))
    multi.add_field("cls", torch.tensor([1, 1, 2]))
    kept = boxlist_ml_nms(multi, 0.5, score_field="conf", label_field="cls")
    assert kept.get_field("conf").tolist() == pytest.approx([0.9, 0.7])  # original (ascending index) order
    assert boxlist_ml_nms(multi, 0.5, max_proposals=1, score_field="conf", label_field="cls").get_field(
        "cls"
    ).tolist() == [1]
    assert boxlist_ml_nms(multi, -1.0) is multi
    assert boxlist_ml_nms(multi.convert("xywh"), 0.5, score_field="conf", label_field="cls").mode == "xywh"


def test_boxlist_ml_nms_reproduces_golden_predictions(small_case):
    """select_over_all_levels NMS step of the small golden model: candidates -> final predictions, same order."""
    golden = small_case["eval"]
    for candidates, predictions in zip(golden["pre_nms_candidates"], golden["predictions"]):
        boxlist = BoxList(candidates["boxes_xyxy"], predictions["image_size_wh"])
        boxlist.add_field("scores", candidates["scores"])
        boxlist.add_field("labels", candidates["labels"])
        result = boxlist_ml_nms(boxlist, 0.6)
        assert len(result) == len(predictions["scores"]) < len(boxlist)  # fewer than 100: no kthvalue step
        assert torch.equal(result.bbox, predictions["boxes_xyxy"])
        assert torch.equal(result.get_field("scores"), predictions["scores"])
        assert torch.equal(result.get_field("labels"), predictions["labels"])


# ---------------------------------------------------------------- ImageList


def test_to_image_list_pads_bottom_right_with_zeros():
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 5, 7, generator=gen) + 1, torch.rand(3, 9, 4, generator=gen) + 1]
    batch = to_image_list(images)
    assert batch.tensors.shape == (2, 3, 9, 7)
    assert batch.image_sizes == [(5, 7), (9, 4)]
    for image, padded in zip(images, batch.tensors):
        _, h, w = image.shape
        assert torch.equal(padded[:, :h, :w], image)
        assert (padded[:, h:, :] == 0).all() and (padded[:, :, w:] == 0).all()
    divisible = to_image_list(images, size_divisible=4)
    assert divisible.tensors.shape == (2, 3, 12, 8) and divisible.image_sizes == [(5, 7), (9, 4)]
    assert torch.equal(divisible.tensors[:, :, :9, :7], batch.tensors)
    assert to_image_list(tuple(images), size_divisible=3).tensors.shape == (2, 3, 9, 9)


def test_to_image_list_other_inputs():
    batch = torch.rand(2, 3, 6, 10)
    same = to_image_list(batch)
    assert same.tensors is batch and same.image_sizes == [(6, 10), (6, 10)]
    assert to_image_list(same) is same
    padded = to_image_list(batch, size_divisible=8)
    assert padded.tensors.shape == (2, 3, 8, 16) and padded.image_sizes == [(6, 10), (6, 10)]
    single = to_image_list(torch.rand(3, 6, 10), size_divisible=32)
    assert single.tensors.shape == (1, 3, 32, 32) and single.image_sizes == [(6, 10)]
    moved = same.to(torch.float64)
    assert moved.tensors.dtype == torch.float64 and moved.image_sizes == same.image_sizes
    with pytest.raises(TypeError):
        to_image_list("not images")
    with pytest.raises(ValueError):
        to_image_list([])
    with pytest.raises(ValueError):
        to_image_list([torch.rand(6, 10)])
    with pytest.raises(ValueError):
        to_image_list(torch.rand(6, 10))
    assert isinstance(same, ImageList)


def test_to_image_list_reproduces_golden_batch(small_case):
    """Cropping the golden padded batch back to each image and re-batching gives the golden batch bit-exactly."""
    inputs = small_case["inputs"]
    golden = inputs["image_list_tensors"]
    images = [golden[i, :, :h, :w].clone() for i, (h, w) in enumerate(inputs["image_sizes_hw"])]
    batch = to_image_list(images, size_divisible=inputs["size_divisibility"])
    assert batch.tensors.shape == golden.shape == (2, 3, 320, 320)
    assert torch.equal(batch.tensors, golden)
    assert batch.image_sizes == [tuple(s) for s in inputs["image_sizes_hw"]]
