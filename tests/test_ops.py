"""NMS, focal losses, IoU losses and Scale against brute-force float64 references of the official semantics."""
import math

import pytest
import torch

from maskrcnn_benchmark.layers import (
    IOULoss,
    Scale,
    SigmoidFocalLoss,
    TokenSigmoidFocalLoss,
    box_giou_loss,
    ml_nms,
    nms,
    sigmoid_focal_loss,
    token_sigmoid_binary_focal_loss,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FLT_MIN = torch.finfo(torch.float32).tiny


# ---------------------------------------------------------------- NMS


def legacy_iou(a, b) -> float:
    w = max(min(a[2], b[2]) - max(a[0], b[0]) + 1, 0.0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]) + 1, 0.0)
    inter = w * h
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)


def reference_ml_nms(boxes, scores, labels, thresh):
    """The CUDA ml_nms kernel in float64 loops: greedy by decreasing score (ties: lower index), IoU > thresh."""
    boxes, scores, labels = boxes.double().tolist(), scores.double().tolist(), labels.tolist()
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    removed, kept = set(), []
    for pos, i in enumerate(order):
        if i in removed:
            continue
        kept.append(i)
        for j in order[pos + 1 :]:
            if labels[j] == labels[i] and legacy_iou(boxes[i], boxes[j]) > thresh:
                removed.add(j)
    return sorted(kept)


def clustered_boxes(num: int, seed: int):
    """Boxes jittered around a few centers (many overlaps), some degenerate, with tied scores and 4 labels."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.rand(6, 2, generator=gen) * 200
    center = centers[torch.randint(0, 6, (num,), generator=gen)] + torch.randn(num, 2, generator=gen) * 6
    size = torch.rand(num, 2, generator=gen) * 40
    size[::7] = 0  # degenerate boxes: one legacy pixel
    boxes = torch.cat([center - size / 2, center + size / 2], dim=1)
    scores = torch.randint(0, 16, (num,), generator=gen).float() / 16  # exact values, many ties
    labels = torch.randint(1, 5, (num,), generator=gen)
    return boxes, scores, labels


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thresh", [0.3, 0.6])
def test_ml_nms_matches_reference(device, seed, thresh):
    boxes, scores, labels = clustered_boxes(300, seed)
    keep = ml_nms(boxes.to(device), scores.to(device), labels.to(device), thresh)
    assert keep.device.type == device and keep.dtype == torch.int64
    expected = reference_ml_nms(boxes, scores, labels, thresh)
    assert 0 < len(expected) < 300
    assert keep.tolist() == expected  # sorted ascending


def test_ml_nms_legacy_plus_one_and_strict_threshold():
    touching = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0]])  # legacy IoU 1/3, plain IoU 0
    scores, labels = torch.tensor([0.5, 0.9]), torch.tensor([1, 1])
    assert ml_nms(touching, scores, labels, 0.3).tolist() == [1]
    assert ml_nms(touching, scores, labels, 0.34).tolist() == [0, 1]
    assert ml_nms(touching, scores, torch.tensor([1, 2]), 0.3).tolist() == [0, 1]  # other label: no suppression
    half = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 4.0]])  # legacy IoU exactly 0.5
    assert ml_nms(half, scores, labels, 0.5).tolist() == [0, 1]
    assert ml_nms(half, scores, labels, 0.49).tolist() == [1]


def test_ml_nms_ties_keep_lower_index_and_edge_cases():
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3 + [[50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.3, 0.7, 0.7, 0.2])
    labels = torch.tensor([2, 2, 2, 2])
    assert ml_nms(same, scores, labels, 0.5).tolist() == [1, 3]
    empty = ml_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    # Negative thresholds: every IoU (0 between labels too) exceeds it, as in the kernel.
    assert ml_nms(same, scores, torch.tensor([1, 2, 3, 4]), -0.1).tolist() == [1]
    # Float labels (the official wrapper passes labels.float()) and float64 boxes.
    assert ml_nms(same.double(), scores.double(), labels.float(), 0.5).tolist() == [1, 3]


def test_nms_is_torchvision_semantics():
    """The official `layers.nms` is torchvision's: plain widths, decreasing score order, IoU > thresh."""
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])
    scores = torch.tensor([0.5, 0.9, 0.8, 0.6])
    assert nms(boxes, scores, 0.3).tolist() == [1, 2, 0]  # touching boxes do not overlap; [3] has IoU 0.5
    assert nms(boxes, scores, 0.5).tolist() == [1, 2, 3, 0]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)


# ---------------------------------------------------------------- class-index sigmoid focal loss


def reference_focal(logits, targets, gamma, alpha):
    """Forward and analytic backward of the CUDA kernel, element by element in float64."""
    loss = torch.zeros(logits.shape, dtype=torch.float64)
    grad = torch.zeros(logits.shape, dtype=torch.float64)
    for n, row in enumerate(logits.double().tolist()):
        t = int(targets[n])
        for d, x in enumerate(row):
            pos, neg = float(t == d + 1), float(t >= 0 and t != d + 1)
            p = 1.0 / (1.0 + math.exp(-x))
            log_p = math.log(max(p, FLT_MIN))
            log_1mp = -x * (x >= 0) - math.log(1.0 + math.exp(x - 2.0 * x * (x >= 0)))
            loss[n, d] = -pos * (1 - p) ** gamma * log_p * alpha - neg * p**gamma * log_1mp * (1 - alpha)
            d_pos = (1 - p) ** gamma * (1 - p - p * gamma * log_p)
            d_neg = p**gamma * (log_1mp * (1 - p) * gamma - p)
            grad[n, d] = -pos * d_pos * alpha - neg * d_neg * (1 - alpha)
    return loss, grad


def test_sigmoid_focal_loss_matches_kernel_forward_and_backward():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 6, generator=gen) * 4
    logits[0, :3] = torch.tensor([-100.0, 100.0, -95.0])  # saturated sigmoid: the FLT_MIN clamp matters
    targets = torch.randint(-1, 7, (40,), generator=gen, dtype=torch.int32)
    targets[0] = 1
    targets[1] = -1  # ignored row
    targets[2] = 0  # background row
    expected_loss, expected_grad = reference_focal(logits, targets, 2.0, 0.25)
    assert expected_loss[0, 0].item() == pytest.approx(-0.25 * math.log(FLT_MIN))

    logits.requires_grad_(True)
    elementwise = sigmoid_focal_loss(logits, targets, 2.0, 0.25)
    torch.testing.assert_close(elementwise.double(), expected_loss, rtol=1e-5, atol=1e-6)
    assert (elementwise[1] == 0).all()
    total = SigmoidFocalLoss(gamma=2.0, alpha=0.25)(logits, targets)
    torch.testing.assert_close(total.double(), expected_loss.sum(), rtol=1e-5, atol=1e-5)
    total.backward()
    torch.testing.assert_close(logits.grad.double(), expected_grad, rtol=1e-5, atol=1e-6)


def test_sigmoid_focal_loss_other_gamma_and_shape_errors():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 4, generator=gen)
    targets = torch.randint(0, 5, (10,), generator=gen)
    expected, _ = reference_focal(logits, targets, 1.5, 0.5)
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, 1.5, 0.5).double(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        sigmoid_focal_loss(logits, targets[:5], 2.0, 0.25)
    assert "gamma=2.0, alpha=0.25" in repr(SigmoidFocalLoss(2.0, 0.25))


# ---------------------------------------------------------------- token binary focal loss


def reference_token_focal(logits, targets, alpha, gamma, mask=None):
    values = []
    for b in range(logits.shape[0]):
        for a in range(logits.shape[1]):
            for t in range(logits.shape[2]):
                if mask is not None and not mask[b, t] > 0:
                    continue
                x, y = float(logits[b, a, t]), float(targets[b, a, t])
                p = 1.0 / (1.0 + math.exp(-x))
                ce = -(y * math.log(p) + (1 - y) * math.log(1 - p))
                p_t = p * y + (1 - p) * (1 - y)
                loss = ce * (1 - p_t) ** gamma
                if alpha >= 0:
                    loss *= alpha * y + (1 - alpha) * (1 - y)
                values.append(loss)
    return torch.tensor(values, dtype=torch.float64)


def test_token_sigmoid_binary_focal_loss_matches_reference():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 7, generator=gen) * 3
    targets = (torch.rand(2, 5, 7, generator=gen) > 0.7).float()
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 1]])

    masked = token_sigmoid_binary_focal_loss(logits, targets, 0.25, 2.0, mask)
    assert masked.shape == (5 * (3 + 6),)
    expected_masked = reference_token_focal(logits, targets, 0.25, 2.0, mask)
    torch.testing.assert_close(masked.double(), expected_masked, rtol=1e-5, atol=1e-7)
    full = token_sigmoid_binary_focal_loss(logits, targets, -1, 2.0)
    assert full.shape == logits.shape
    expected_full = reference_token_focal(logits, targets, -1, 2.0)
    torch.testing.assert_close(full.double().flatten(), expected_full, rtol=1e-5, atol=1e-7)

    module = TokenSigmoidFocalLoss(alpha=0.25, gamma=2.0)
    total = module(logits, targets, text_masks=mask, version="binary")
    torch.testing.assert_close(total, masked.sum())
    with pytest.raises(NotImplementedError):
        module(logits, targets, version="softmax")
    with pytest.raises(ValueError):
        token_sigmoid_binary_focal_loss(logits[0], targets[0], 0.25, 2.0)


# ---------------------------------------------------------------- IoU losses


def reference_iou_loss(pred, target, loss_type):
    out = []
    for (pl, pt, pr, pb), (tl, tt, tr, tb) in zip(pred.double().tolist(), target.double().tolist()):
        inter = (min(pl, tl) + min(pr, tr)) * (min(pt, tt) + min(pb, tb))
        union = (pl + pr) * (pt + pb) + (tl + tr) * (tt + tb) - inter
        enclosing = (max(pl, tl) + max(pr, tr)) * (max(pt, tt) + max(pb, tb)) + 1e-7
        iou = (inter + 1) / (union + 1)
        giou = iou - (enclosing - union) / enclosing
        out.append({"iou": -math.log(iou), "linear_iou": 1 - iou, "giou": 1 - giou}[loss_type])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("loss_type", ["iou", "linear_iou", "giou"])
def test_iou_loss_matches_reference(loss_type):
    gen = torch.Generator().manual_seed(3)
    pred = torch.rand(20, 4, generator=gen) * 30
    target = torch.rand(20, 4, generator=gen) * 30
    weight = torch.rand(20, generator=gen)
    per_box = reference_iou_loss(pred, target, loss_type)
    loss = IOULoss(loss_type)
    torch.testing.assert_close(loss(pred, target).double(), per_box.sum(), rtol=1e-5, atol=1e-5)
    weighted = (per_box * weight.double()).sum()
    torch.testing.assert_close(loss(pred, target, weight).double(), weighted, rtol=1e-5, atol=1e-5)
    # Weights summing to 0 fall back to the plain sum, as in the official code.
    torch.testing.assert_close(loss(pred, target, torch.zeros(20)).double(), per_box.sum(), rtol=1e-5, atol=1e-5)


def test_iou_loss_errors():
    with pytest.raises(ValueError):
        IOULoss("diou")
    with pytest.raises(ValueError):
        IOULoss("giou")(torch.zeros(0, 4), torch.zeros(0, 4))


def official_style_giou(pred, target, weight):
    """GIoU of the official ATSS loss, written with its masked assignment, in float64."""
    px1, py1, px2, py2 = pred.unbind(1)
    px2, py2 = torch.max(px1, px2), torch.max(py1, py2)
    tx1, ty1, tx2, ty2 = target.unbind(1)
    ix1, iy1, ix2, iy2 = torch.max(px1, tx1), torch.max(py1, ty1), torch.min(px2, tx2), torch.min(py2, ty2)
    inter = torch.zeros_like(px1)
    mask = (iy2 > iy1) & (ix2 > ix1)
    inter[mask] = (ix2[mask] - ix1[mask]) * (iy2[mask] - iy1[mask])
    enclosing = (torch.max(px2, tx2) - torch.min(px1, tx1)) * (torch.max(py2, ty2) - torch.min(py1, ty1)) + 1e-7
    union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter + 1e-7
    return ((1 - (inter / union - (enclosing - union) / enclosing)) * weight).sum()


def test_box_giou_loss_matches_official_formula_and_gradient():
    gen = torch.Generator().manual_seed(4)
    target = torch.rand(30, 2, generator=gen) * 50
    target = torch.cat([target, target + torch.rand(30, 2, generator=gen) * 30 + 1], dim=1)
    pred = target + torch.randn(30, 4, generator=gen) * 8  # some inverted or disjoint predictions
    pred[0] = torch.tensor([200.0, 200.0, 210.0, 210.0])  # no intersection
    pred[1] = torch.tensor([10.0, 10.0, 5.0, 20.0])  # inverted: x2 raised to x1
    weight = torch.rand(30, generator=gen)

    pred64 = pred.double().requires_grad_(True)
    expected = official_style_giou(pred64, target.double(), weight.double())
    expected.backward()
    pred32 = pred.clone().requires_grad_(True)
    loss = box_giou_loss(pred32, target, weight)
    loss.backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pred32.grad.double(), pred64.grad, rtol=1e-4, atol=1e-6)
    unweighted = official_style_giou(pred.double(), target.double(), 1.0).item()
    assert box_giou_loss(pred, target).item() == pytest.approx(unweighted, rel=1e-5)


# ---------------------------------------------------------------- Scale


def test_scale_parameter_and_forward():
    scale = Scale(init_value=2.5)
    assert list(scale.state_dict().keys()) == ["scale"]
    assert scale.scale.shape == (1,) and scale.scale.dtype == torch.float32
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(scale(x), x * 2.5)
    assert Scale().scale.item() == 1.0
