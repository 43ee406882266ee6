"""ATSS anchors, box coder, post-processing (against the official outputs) and the ATSS training loss."""
import math

import pytest
import torch
import torchvision
from conftest import small_raw_cfg
from helpers import LOSS_NUM_TOKENS, loss_inputs, random_targets, synthetic_anchors

from maskrcnn_benchmark.config import check_supported
from maskrcnn_benchmark.modeling.box_coder import BoxCoder
from maskrcnn_benchmark.modeling.rpn.anchor_generator import generate_anchors, make_anchor_generator_complex
from maskrcnn_benchmark.modeling.rpn.inference import make_atss_postprocessor, token_to_class_scores
from maskrcnn_benchmark.modeling.rpn.loss import atss_assign, make_atss_loss_evaluator
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList

ATSS_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


@pytest.fixture(scope="module")
def cfg():
    return small_raw_cfg()


@pytest.fixture(scope="module")
def box_coder():
    return BoxCoder(ATSS_WEIGHTS, math.log(1000.0 / 16))


def _golden_image_list(small_case) -> ImageList:
    inputs = small_case["inputs"]
    return ImageList(inputs["image_list_tensors"], [tuple(size) for size in inputs["image_sizes_hw"]])


def _golden_anchors(cfg, small_case):
    head_outputs = small_case["eval"]["head_outputs"]
    return make_anchor_generator_complex(cfg)(_golden_image_list(small_case), head_outputs["box_regression"])


def _assert_same_detection_sets(boxlist: BoxList, expected: dict, tol: float = 1e-3) -> None:
    """Same number of detections, and a one-to-one match by (label, box) with boxes and scores within tol."""
    boxes, scores, labels = boxlist.bbox, boxlist.get_field("scores"), boxlist.get_field("labels")
    assert len(boxlist) == len(expected["scores"])
    unmatched = set(range(len(boxlist)))
    for exp_box, exp_score, exp_label in zip(expected["boxes_xyxy"], expected["scores"], expected["labels"]):
        same_label = [i for i in unmatched if labels[i] == exp_label]
        assert same_label, f"no detection left with label {int(exp_label)}"
        errors = [max((boxes[i] - exp_box).abs().max().item(), abs(scores[i] - exp_score).item()) for i in same_label]
        best = min(range(len(same_label)), key=errors.__getitem__)
        assert errors[best] < tol, (exp_box, exp_score, exp_label, errors[best])
        unmatched.remove(same_label[best])


# ---------------------------------------------------------------------------------------------- anchors


def test_generate_anchors_legacy_convention():
    assert generate_anchors(8, (64.0,), (1.0,)).tolist() == [[-28.0, -28.0, 35.0, 35.0]]
    # Ratio-major, then scales. The 16x16 window at ratio 0.5 becomes 23x12 (sqrt(512) = 22.6 -> 23, then
    # 11.5 -> 12: round half to even), then x2 and x4 around its centre 7.5.
    anchors = generate_anchors(16, (32.0, 64.0), (0.5, 2.0))
    assert anchors.tolist() == [
        [-15.0, -4.0, 30.0, 19.0], [-38.0, -16.0, 53.0, 31.0], [-3.0, -14.0, 18.0, 29.0], [-14.0, -36.0, 29.0, 51.0]
    ]


def test_cell_anchors_are_the_official_state_dict_buffers(cfg, small_state_dict):
    generator = make_anchor_generator_complex(cfg)
    state = generator.state_dict()
    prefix = "rpn.anchor_generator."
    expected = {key[len(prefix):]: value for key, value in small_state_dict.items() if key.startswith(prefix)}
    assert list(state) == [f"cell_anchors.{level}" for level in range(5)] == list(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    assert generator.num_anchors_per_location() == [1] * 5


def test_anchors_and_visibility_match_official(cfg, small_case):
    anchors = _golden_anchors(cfg, small_case)
    expected_anchors = small_case["eval"]["anchors_per_level_xyxy"]
    expected_visibility = small_case["eval"]["anchor_visibility"]
    assert len(anchors) == 2
    for image, image_anchors in enumerate(anchors):
        height, width = small_case["inputs"]["image_sizes_hw"][image]
        assert len(image_anchors) == 5
        for level, boxlist in enumerate(image_anchors):
            assert boxlist.size == (width, height) and boxlist.mode == "xyxy"
            assert torch.equal(boxlist.bbox, expected_anchors[level])
            assert torch.equal(boxlist.get_field("visibility"), expected_visibility[image][level])


# ---------------------------------------------------------------------------------------------- box coder


def test_box_coder_encode_decode(box_coder):
    anchors = torch.tensor([[0.0, 0.0, 7.0, 7.0], [10.0, 20.0, 49.0, 39.0]])
    gt_boxes = torch.tensor([[2.0, 2.0, 9.0, 9.0], [0.0, 10.0, 79.0, 59.0]])
    codes = box_coder.encode(gt_boxes, anchors)
    # +1 widths: a centre shift of 2 on width 8 is 10 * 2 / 8; 40x20 -> 80x50 with centre shift (10, 5).
    expected = torch.tensor([[2.5, 2.5, 0.0, 0.0], [10 * 10 / 40, 10 * 5 / 20, 5 * math.log(2.0), 5 * math.log(2.5)]])
    torch.testing.assert_close(codes, expected)
    torch.testing.assert_close(box_coder.decode(codes, anchors), gt_boxes)
    # dw/dh are clamped to log(1000/16) before exp.
    huge = box_coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), anchors[:1])
    torch.testing.assert_close(huge[0, 2] - huge[0, 0] + 1, torch.tensor(8 * 1000.0 / 16))


# ---------------------------------------------------------------------------------------------- post-processing


def test_token_to_class_scores_mean_and_max():
    token_probs = torch.tensor([[[0.1, 0.2, 0.6, 0.9, 0.3]]])
    positive_map = {1: [2, 3], 3: [0], 2: [1, 2, 4]}
    mean = token_to_class_scores(token_probs, positive_map, num_classes=4, score_agg="MEAN")
    torch.testing.assert_close(mean, torch.tensor([[[0.75, 1.1 / 3, 0.1, 0.0]]]))
    maximum = token_to_class_scores(token_probs, positive_map, num_classes=4, score_agg="MAX")
    torch.testing.assert_close(maximum, torch.tensor([[[0.9, 0.6, 0.1, 0.0]]]))
    with pytest.raises(ValueError):
        token_to_class_scores(token_probs, positive_map, num_classes=4, score_agg="ONEHOT")


def _on_golden_head_outputs(postprocess, cfg, small_case):
    """`postprocess` (the postprocessor or one of its steps) applied to the golden eval head outputs."""
    head_outputs = small_case["eval"]["head_outputs"]
    return postprocess(head_outputs["box_regression"], head_outputs["centerness"], _golden_anchors(cfg, small_case),
                       head_outputs["dot_product_logits"], small_case["inputs"]["eval"]["positive_map_label_to_token"])


def test_postprocessor_predictions_match_official(cfg, small_case, box_coder):
    postprocessor = make_atss_postprocessor(cfg, box_coder, is_train=False)
    detections = _on_golden_head_outputs(postprocessor, cfg, small_case)
    assert len(detections) == 2
    for boxlist, expected in zip(detections, small_case["eval"]["predictions"]):
        assert boxlist.size == tuple(expected["image_size_wh"])
        assert boxlist.get_field("labels").dtype == torch.int64
        _assert_same_detection_sets(boxlist, expected)


def test_pre_nms_candidates_match_official(cfg, small_case, box_coder):
    postprocessor = make_atss_postprocessor(cfg, box_coder, is_train=False)
    candidates = _on_golden_head_outputs(postprocessor.select_candidates, cfg, small_case)
    for boxlist, expected in zip(candidates, small_case["eval"]["pre_nms_candidates"]):
        _assert_same_detection_sets(boxlist, expected)


def test_postprocessor_keeps_the_best_detections_per_image(cfg, small_case, box_coder):
    postprocessor = make_atss_postprocessor(cfg, box_coder, is_train=False)
    postprocessor.fpn_post_nms_top_n = 10
    detections = _on_golden_head_outputs(postprocessor, cfg, small_case)
    expected_scores = small_case["eval"]["predictions"][0]["scores"]
    assert len(detections[0]) == 10
    best_expected = expected_scores.sort(descending=True).values[:10]
    torch.testing.assert_close(detections[0].get_field("scores").sort(descending=True).values, best_expected)
    assert len(detections[1]) == 5


def test_postprocessor_without_candidates(cfg, small_case, box_coder):
    postprocessor = make_atss_postprocessor(cfg, box_coder, is_train=False)
    postprocessor.pre_nms_thresh = 1.0
    detections = _on_golden_head_outputs(postprocessor, cfg, small_case)
    assert [len(boxlist) for boxlist in detections] == [0, 0]
    assert all(set(boxlist.fields()) == {"labels", "scores"} for boxlist in detections)


# ---------------------------------------------------------------------------------------------- ATSS assignment


def _brute_force_atss(anchors_per_level, gt_boxes, topk):
    """Per-anchor ATSS in float64 Python scalars: the candidate, threshold and centre tests one pair at a time."""
    anchors = [box.tolist() for level in anchors_per_level for box in level.bbox.double()]
    level_of = [level for level, boxes in enumerate(anchors_per_level) for _ in range(len(boxes))]
    gts = gt_boxes.double().tolist()

    def center(box):
        return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2

    def iou(a, b):
        inter_w = max(min(a[2], b[2]) - max(a[0], b[0]) + 1, 0.0)
        inter_h = max(min(a[3], b[3]) - max(a[1], b[1]) + 1, 0.0)
        inter = inter_w * inter_h
        area = lambda box: (box[2] - box[0] + 1) * (box[3] - box[1] + 1)  # noqa: E731
        return inter / (area(a) + area(b) - inter)

    positive_for = [[] for _ in anchors]
    for g, gt in enumerate(gts):
        gx, gy = center(gt)
        candidates = []
        for level in range(len(anchors_per_level)):
            in_level = [i for i in range(len(anchors)) if level_of[i] == level]
            in_level.sort(key=lambda i: math.dist(center(anchors[i]), (gx, gy)))
            candidates += in_level[:topk]
        ious = [iou(anchors[i], gt) for i in candidates]
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1))
        for i, value in zip(candidates, ious):
            ax, ay = center(anchors[i])
            inside = min(ax - gt[0], ay - gt[1], gt[2] - ax, gt[3] - ay) > 0.01
            if value >= mean + std and inside:
                positive_for[i].append((value, -g))
    # Highest IoU wins; on a tie the lower box index, like max().
    assignment = torch.tensor([-max(pairs)[1] if pairs else -1 for pairs in positive_for])
    num_contested = sum(len(pairs) > 1 for pairs in positive_for)
    return assignment, num_contested


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_atss_assign_matches_brute_force(cfg, seed):
    generator = torch.Generator().manual_seed(seed)
    image_hw = (300, 340)
    anchors, _ = synthetic_anchors(cfg, [image_hw])
    targets = random_targets(generator, 6, image_hw)
    # Two nested boxes so that some anchors are positive for both and the IoU decides.
    extra = BoxList(torch.tensor([[40.0, 50.0, 200.0, 230.0], [60.0, 70.0, 180.0, 210.0]]), targets.size)
    targets = BoxList(torch.cat((targets.bbox, extra.bbox)), targets.size)
    assigned = atss_assign(anchors[0], targets, topk=9)
    expected, num_contested = _brute_force_atss(anchors[0], targets.bbox, topk=9)
    assert torch.equal(assigned, expected)
    assert num_contested > 0
    assert len(set(assigned[assigned >= 0].tolist())) >= len(targets) - 1


def test_atss_assign_without_boxes(cfg):
    anchors, _ = synthetic_anchors(cfg, [(300, 340)])
    empty = BoxList(torch.zeros(0, 4), (340, 300))
    assigned = atss_assign(anchors[0], empty, topk=9)
    assert assigned.shape == (sum(len(level) for level in anchors[0]),)
    assert (assigned == -1).all()


# ---------------------------------------------------------------------------------------------- loss


def _focal(logits, targets, alpha=0.25, gamma=2.0):
    p = logits.sigmoid()
    p_t = torch.where(targets > 0, p, 1 - p)
    alpha_t = torch.where(targets > 0, alpha, 1 - alpha)
    return -(alpha_t * (1 - p_t) ** gamma * torch.log(p_t))


def test_loss_names_weights_and_token_targets(cfg, box_coder):
    inputs = loss_inputs(cfg, [3, 2])
    box_regression, centerness, dot_product_logits, targets, anchors, positive_map, text_masks = inputs
    loss_evaluator = make_atss_loss_evaluator(cfg, box_coder)
    losses = loss_evaluator(*inputs)
    assert list(losses) == ["loss_reg", "loss_centerness", "loss_cls", "loss_dot_product_token"]
    assert float(losses["loss_cls"]) == 0.0

    positives, _, token_targets = loss_evaluator.prepare_targets(targets, anchors, positive_map)
    offsets = [0, 3]
    for image, image_targets in enumerate(targets):
        assigned = atss_assign(anchors[image], image_targets, topk=9)
        matched = assigned >= 0
        assert torch.equal(token_targets[image][matched], positive_map[offsets[image] + assigned[matched]])
        no_object = torch.zeros(LOSS_NUM_TOKENS)
        no_object[-1] = 1
        assert (token_targets[image][~matched] == no_object).all()
    num_pos = int(positives.sum())
    assert num_pos > 0

    # Token loss: focal loss on the text-mask tokens only (the "no object" token 11 is outside the mask).
    logits = torch.cat(dot_product_logits, dim=1)
    expected_token = _focal(logits[:, :, :9], token_targets[:, :, :9]).sum() / num_pos
    token_weight = cfg.MODEL.DYHEAD.FUSE_CONFIG.DOT_PRODUCT_TOKEN_LOSS_WEIGHT
    torch.testing.assert_close(losses["loss_dot_product_token"], expected_token * token_weight, rtol=1e-5, atol=0)
    text_masks[:, -1] = 1
    with_last_token = loss_evaluator(*inputs)["loss_dot_product_token"]
    expected_with_last = expected_token + _focal(logits[:, :, -1], token_targets[:, :, -1]).sum() / num_pos
    torch.testing.assert_close(with_last_token, expected_with_last * token_weight, rtol=1e-5, atol=0)

    total = sum(losses.values())
    total.backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in box_regression + centerness)


def test_regression_and_centerness_losses(cfg, box_coder):
    inputs = loss_inputs(cfg, [3, 2], requires_grad=False)
    box_regression, centerness, dot_product_logits, targets, anchors, positive_map, text_masks = inputs
    loss_evaluator = make_atss_loss_evaluator(cfg, box_coder)
    positives, matched_boxes, _ = loss_evaluator.prepare_targets(targets, anchors, positive_map)
    anchors_flat = torch.cat([level.bbox for image_anchors in anchors for level in image_anchors])
    codes = box_coder.encode(matched_boxes, anchors_flat)
    # Write the encoded targets back into the (N, 4, H, W) level layout.
    sizes = [level.shape[-2] * level.shape[-1] for level in box_regression]
    per_image = codes.view(len(targets), -1, 4).split(sizes, dim=1)
    perfect = [
        level_codes.reshape(len(targets), *level.shape[-2:], 4).permute(0, 3, 1, 2).contiguous()
        for level_codes, level in zip(per_image, box_regression)
    ]
    losses = loss_evaluator(perfect, *inputs[1:])
    assert float(losses["loss_reg"]) < 1e-4
    random_losses = loss_evaluator(*inputs)
    assert float(random_losses["loss_reg"]) > 0.1

    # Centerness loss: BCE (sum) against sqrt(min/max) ratios of the anchor centre in its box, per positive.
    centerness_flat = torch.cat([level.permute(0, 2, 3, 1).reshape(len(targets), -1) for level in centerness], 1)
    index = torch.nonzero(positives).squeeze(1)
    boxes = matched_boxes[index]
    ctr_x = (anchors_flat[index, 0] + anchors_flat[index, 2]) / 2
    ctr_y = (anchors_flat[index, 1] + anchors_flat[index, 3]) / 2
    lr = torch.stack((ctr_x - boxes[:, 0], boxes[:, 2] - ctr_x), 1)
    tb = torch.stack((ctr_y - boxes[:, 1], boxes[:, 3] - ctr_y), 1)
    target = torch.sqrt(lr.min(1).values / lr.max(1).values * tb.min(1).values / tb.max(1).values)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        centerness_flat.reshape(-1)[index], target, reduction="sum"
    ) / len(index)
    torch.testing.assert_close(losses["loss_centerness"], expected, rtol=1e-4, atol=1e-6)

    # Regression loss of the random predictions: GIoU loss of the decoded boxes, centerness-weighted average,
    # times REG_LOSS_WEIGHT (torchvision's GIoU uses the same x2 - x1 widths).
    regression_flat = torch.cat(
        [level.permute(0, 2, 3, 1).reshape(len(targets), -1, 4) for level in box_regression], 1
    ).reshape(-1, 4)
    predicted = box_coder.decode(regression_flat[index], anchors_flat[index])
    giou = torchvision.ops.generalized_box_iou_loss(predicted, boxes, reduction="none")
    expected_reg = cfg.MODEL.ATSS.REG_LOSS_WEIGHT * (giou * target).sum() / target.sum()
    torch.testing.assert_close(random_losses["loss_reg"], expected_reg, rtol=1e-4, atol=1e-6)

    weighted_cfg = cfg.clone()
    weighted_cfg.defrost()
    weighted_cfg.MODEL.ATSS.REG_LOSS_WEIGHT = 3.0
    weighted_cfg.MODEL.DYHEAD.FUSE_CONFIG.DOT_PRODUCT_TOKEN_LOSS_WEIGHT = 0.5
    weighted = make_atss_loss_evaluator(weighted_cfg, box_coder)(*inputs)
    torch.testing.assert_close(weighted["loss_reg"], random_losses["loss_reg"] * 3.0 / cfg.MODEL.ATSS.REG_LOSS_WEIGHT)
    torch.testing.assert_close(weighted["loss_dot_product_token"], random_losses["loss_dot_product_token"] * 0.5)
    torch.testing.assert_close(weighted["loss_centerness"], random_losses["loss_centerness"])


def test_loss_batches_like_separate_images(cfg, box_coder):
    """Sums normalised by the batch's positive count: the batch loss is the positive-weighted image mix."""
    inputs = loss_inputs(cfg, [3, 2], requires_grad=False)
    box_regression, centerness, dot_product_logits, targets, anchors, positive_map, text_masks = inputs
    loss_evaluator = make_atss_loss_evaluator(cfg, box_coder)
    batch = loss_evaluator(*inputs)
    num_pos = [int(loss_evaluator.prepare_targets([t], [a], m)[0].sum())
               for t, a, m in zip(targets, anchors, positive_map.split([3, 2]))]
    singles = [
        loss_evaluator([r[i:i + 1] for r in box_regression], [c[i:i + 1] for c in centerness],
                       [d[i:i + 1] for d in dot_product_logits], [targets[i]], [anchors[i]], rows, text_masks[i:i + 1])
        for i, rows in enumerate(positive_map.split([3, 2]))
    ]
    for name in ("loss_centerness", "loss_dot_product_token"):
        mixed = sum(single[name] * n for single, n in zip(singles, num_pos)) / sum(num_pos)
        torch.testing.assert_close(batch[name], mixed)


def test_loss_with_images_without_boxes(cfg, box_coder):
    loss_evaluator = make_atss_loss_evaluator(cfg, box_coder)
    one_empty = loss_evaluator(*loss_inputs(cfg, [3, 0]))
    assert all(torch.isfinite(value) for value in one_empty.values())
    assert one_empty["loss_reg"].item() > 0

    inputs = loss_inputs(cfg, [0, 0])
    box_regression, centerness, dot_product_logits = inputs[:3]
    losses = loss_evaluator(*inputs)
    assert losses["loss_reg"].item() == 0.0 and losses["loss_centerness"].item() == 0.0
    # Without positives the token loss is divided by 1 and only pushes every in-mask token towards 0.
    logits = torch.cat(dot_product_logits, dim=1)
    torch.testing.assert_close(losses["loss_dot_product_token"], _focal(logits[:, :, :9], torch.zeros(1)).sum())
    sum(losses.values()).backward()
    assert all(float(t.grad.abs().max()) == 0.0 for t in box_regression + centerness)


def test_config_check_rejects_unsupported_losses(cfg):
    # make_atss_loss_evaluator only maps keys; the one table (config.compat) refuses the losses not built.
    check_supported(cfg)
    for key in ("USE_TOKEN_LOSS", "USE_CLASSIFICATION_LOSS"):
        other = cfg.clone()
        other.defrost()
        other.MODEL.DYHEAD.FUSE_CONFIG[key] = True
        with pytest.raises(ValueError, match=rf"MODEL\.DYHEAD\.FUSE_CONFIG\.{key} = True"):
            check_supported(other)


def test_postprocessor_with_a_map_per_image_equals_each_image_alone(cfg, small_case, box_coder):
    postprocessor = make_atss_postprocessor(cfg, box_coder, is_train=False)
    outputs = small_case["eval"]["head_outputs"]
    anchors = _golden_anchors(cfg, small_case)
    golden_map = small_case["inputs"]["eval"]["positive_map_label_to_token"]
    # The second image's prompt: the golden labels in reverse order (label k reads the tokens of label n+1-k).
    labels = sorted(golden_map)
    other_map = {label: golden_map[labels[-index - 1]] for index, label in enumerate(labels)}
    batched = postprocessor(outputs["box_regression"], outputs["centerness"], anchors,
                            outputs["dot_product_logits"], [golden_map, other_map])
    for index, image_map in enumerate([golden_map, other_map]):
        one = slice(index, index + 1)
        alone, = postprocessor([level[one] for level in outputs["box_regression"]],
                               [level[one] for level in outputs["centerness"]], anchors[one],
                               [level[one] for level in outputs["dot_product_logits"]], image_map)
        assert len(batched[index]) == len(alone) > 0
        torch.testing.assert_close(batched[index].bbox, alone.bbox)
        assert torch.equal(batched[index].get_field("labels"), alone.get_field("labels"))
    assert not torch.equal(batched[1].get_field("labels"), postprocessor(
        outputs["box_regression"], outputs["centerness"], anchors, outputs["dot_product_logits"],
        golden_map)[1].get_field("labels"))
    with pytest.raises(ValueError, match="1 positive maps for a batch of 2 images: pass one label -> tokens dict"):
        postprocessor(outputs["box_regression"], outputs["centerness"], anchors, outputs["dot_product_logits"],
                      [golden_map])
