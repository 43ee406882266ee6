"""The cpu and accelerator execution plans against the reference plan: same outputs, losses and gradients; plan
selection per device; float16 autocast on every plan."""
import logging
import math

import pytest
import torch
from conftest import small_raw_cfg
from helpers import eval_forward, head_inputs, image_list, loss_inputs, small_cfg, small_head, train_targets
from torchvision.ops import deform_conv2d

from maskrcnn_benchmark.config import get_cfg_defaults
from maskrcnn_benchmark.layers.deform_conv import modulated_deform_conv
from maskrcnn_benchmark.layers.execution_plan import (
    ACCELERATOR_PLAN,
    CPU_PLAN,
    REFERENCE_PLAN,
    apply_execution_plan,
    resolve_plan,
)
from maskrcnn_benchmark.modeling.box_coder import BoxCoder
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.modeling.rpn import fusion
from maskrcnn_benchmark.modeling.rpn.fusion import BiMultiHeadAttention
from maskrcnn_benchmark.modeling.rpn.loss import make_atss_loss_evaluator
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import to_image_list

TOL = dict(atol=1e-4, rtol=1e-4)
SHORT_CAPTION = "a man riding a red bicycle next to a dog."


FAST_PLANS = ["cpu", "accelerator"]


@pytest.fixture(params=FAST_PLANS)
def plan(request):
    """Each plan that is checked against the reference plan."""
    return request.param


# ---- plan selection -----------------------------------------------------------------------------------------

def test_auto_plan_follows_the_device_type_and_explicit_plans_stay():
    cfg = small_cfg().clone()
    cfg.defrost()
    model = build_detection_model(cfg)
    assert model.execution_plan is CPU_PLAN
    assert model.backbone.body.layers[0].blocks[0].attn.execution_plan is CPU_PLAN
    model.to("meta")  # any other device type than the CPU takes the accelerator plan, submodules included
    assert model.execution_plan is ACCELERATOR_PLAN
    assert all(m.execution_plan is ACCELERATOR_PLAN for m in model.modules() if hasattr(m, "execution_plan"))
    cfg.MODEL.EXECUTION_PLAN = "reference"
    pinned = build_detection_model(cfg).to("meta")
    assert pinned.execution_plan is REFERENCE_PLAN
    pinned.set_execution_plan("cpu")
    assert pinned.to("meta").rpn.head.dyhead_tower[0].b_attn.attn.execution_plan is CPU_PLAN


def test_unknown_plan_is_refused_with_the_key():
    with pytest.raises(ValueError, match="MODEL.EXECUTION_PLAN = 'fast'.*auto, cpu, accelerator, reference"):
        resolve_plan("fast", "cpu")
    cfg = get_cfg_defaults()
    assert cfg.MODEL.EXECUTION_PLAN == "auto" and cfg.SOLVER.AMP_DTYPE == ""


def test_plan_description_names_every_choice():
    line = ACCELERATOR_PLAN.describe()
    assert line.startswith("accelerator (fusion=sdpa, chunked_inference=False, recompute_backbone=False")
    assert "compiled_kernels=True" in line


# ---- fusion attention ---------------------------------------------------------------------------------------

def _both_paths(module, *inputs, plan="cpu"):
    apply_execution_plan(module, plan)
    fast = module(*inputs)
    apply_execution_plan(module, "reference")
    reference = module(*inputs)
    return fast, reference


def _with_random_biases(attn: BiMultiHeadAttention) -> BiMultiHeadAttention:
    """The official init zeroes the projection biases; trained ones are not zero, and the fast path folds them."""
    with torch.no_grad():
        for linear in (attn.v_proj, attn.l_proj, attn.values_v_proj, attn.values_l_proj, attn.out_v_proj,
                       attn.out_l_proj):
            linear.bias.normal_()
    return attn


@pytest.fixture(params=["grad", "no_grad"])
def grad_mode(request, monkeypatch):
    """With and without autograd; without it, inference attends in chunks of 8 visual tokens (several chunks and
    a partial one here) with the language side's softmax accumulated online."""
    if request.param == "grad":
        yield
        return
    monkeypatch.setattr(fusion, "VISUAL_CHUNK", 8)
    with torch.no_grad():
        yield


@pytest.mark.parametrize("mask_rows", [None, [5, 3], [0, 4]])
def test_bi_attention_paths_agree(mask_rows, grad_mode, plan):
    torch.manual_seed(0)
    attn = _with_random_biases(BiMultiHeadAttention(16, 24, 32, 4, dropout=0.0, clamp_min_for_underflow=True,
                                                    clamp_max_for_overflow=True).eval())
    v, l = torch.randn(2, 37, 16), torch.randn(2, 5, 24)
    mask = None
    if mask_rows is not None:  # real tokens per caption; [0, ...]: a caption without any real token
        mask = (torch.arange(5)[None] < torch.tensor(mask_rows)[:, None]).long()
    fast, reference = _both_paths(attn, v, l, mask, plan=plan)
    torch.testing.assert_close(fast[0], reference[0], **TOL)
    torch.testing.assert_close(fast[1], reference[1], **TOL)


def test_bi_attention_paths_agree_when_the_clamps_bind(grad_mode):
    """The cpu plan keeps the official +-50000 clamps (the accelerator plan's fused kernels do not clamp)."""
    torch.manual_seed(0)
    attn = _with_random_biases(BiMultiHeadAttention(8, 8, 16, 2, dropout=0.0, clamp_min_for_underflow=True,
                                                    clamp_max_for_overflow=True).eval())
    v, l = torch.randn(1, 20, 8) * 300, torch.randn(1, 6, 8) * 300
    with torch.no_grad():
        attn.v_proj.bias.mul_(300)  # a query bias as large as the visual features: it moves scores past the clamps
        scores = (attn.v_proj(v) * attn.scale) @ attn.l_proj(l).transpose(1, 2)
        without_bias = ((attn.v_proj(v) - attn.v_proj.bias) * attn.scale) @ attn.l_proj(l).transpose(1, 2)
    assert scores.abs().max() > 1e5  # the +-50000 clamps change the scores
    assert ((scores.abs() > 5e4) != (without_bias.abs() > 5e4)).any()  # and whether they bind depends on the bias
    fast, reference = _both_paths(attn, v, l, torch.ones(1, 6, dtype=torch.long))
    torch.testing.assert_close(fast[0], reference[0], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(fast[1], reference[1], atol=1e-3, rtol=1e-4)


def test_bi_attention_gradients_agree(plan):
    torch.manual_seed(0)
    attn = BiMultiHeadAttention(16, 24, 32, 4, dropout=0.0, clamp_min_for_underflow=True,
                                clamp_max_for_overflow=True).train()
    v, l = torch.randn(2, 37, 16, requires_grad=True), torch.randn(2, 5, 24, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])

    def grads():
        attn.zero_grad(set_to_none=True)
        v.grad = l.grad = None
        delta_v, delta_l = attn(v, l, mask)
        (delta_v.square().sum() + (delta_l * mask[..., None]).square().sum()).backward()
        return [v.grad, l.grad] + [p.grad for p in attn.parameters()]

    apply_execution_plan(attn, plan)
    fast = grads()
    apply_execution_plan(attn, "reference")
    reference = grads()
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bi_attention_dropout_keeps_the_expected_value(plan):
    """With dropout the folded language side rescales the value bias by the kept probability mass; the fused
    kernels drop attention weights like the reference."""
    torch.manual_seed(0)
    attn = BiMultiHeadAttention(8, 8, 16, 2, dropout=0.5).train()
    apply_execution_plan(attn, plan)
    with torch.no_grad():
        attn.values_v_proj.bias.fill_(3.0)
    v, l = torch.randn(1, 50, 8), torch.randn(1, 4, 8)
    with torch.no_grad():
        mean_delta_l = torch.stack([attn(v, l, None)[1] for _ in range(400)]).mean(0)
        expected = attn.eval()(v, l, None)[1]
    torch.testing.assert_close(mean_delta_l, expected, atol=0.15, rtol=0)


# ---- deformable convolution ---------------------------------------------------------------------------------

@pytest.mark.parametrize("stride, offset_hw", [(1, (6, 7)), (2, (3, 4)), (1, (8, 8))])
def test_deform_conv_paths_agree(stride, offset_hw):
    """Eval sampling and training backward against torchvision, incl. offsets read as a per-sample buffer."""
    torch.manual_seed(stride)
    image = torch.randn(2, 5, 6, 7, requires_grad=True)
    offset = (torch.randn(2, 18, *offset_hw) * 2).requires_grad_(True)
    mask = torch.rand(2, 9, *offset_hw, requires_grad=True)
    weight = torch.randn(4, 5, 3, 3, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    inputs = (image, offset, mask, weight, bias)

    def run(sampling):
        options = dict(stride=stride, padding=1, sampling=sampling, compiled=False)  # the PyTorch variants
        out = modulated_deform_conv(*inputs, **options)
        grads = torch.autograd.grad(out.square().sum(), inputs)
        with torch.no_grad():
            return [out, modulated_deform_conv(*inputs, **options), *grads]

    fast = run(True)
    reference = run(False)
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    if offset_hw == (6, 7):
        direct = deform_conv2d(image, offset, weight, bias, padding=1, mask=mask)
        torch.testing.assert_close(fast[1], direct, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampling", [True, False])
def test_deform_conv_empty_batch_with_offsets_from_a_finer_grid(sampling):
    """An empty batch takes the per-sample-prefix addressing like any other (the shape check needs no sample)."""
    with torch.no_grad():
        out = modulated_deform_conv(torch.randn(0, 4, 5, 6), torch.randn(0, 18, 7, 8), torch.rand(0, 9, 7, 8),
                                    torch.randn(3, 4, 3, 3), None, padding=1, sampling=sampling, compiled=False)
    assert out.shape == (0, 3, 5, 6)


def test_deform_conv_leaves_its_bias_alone_on_a_single_output_pixel():
    weight, bias, image = torch.randn(4, 3, 3, 3), torch.randn(4), torch.randn(1, 3, 1, 1)
    before = bias.clone()
    with torch.no_grad():
        out = modulated_deform_conv(image, torch.zeros(1, 18, 1, 1), torch.ones(1, 9, 1, 1), weight, bias, padding=1)
    assert torch.equal(bias, before)
    # Zero offsets: only the centre tap sees the pixel, the others read the zero padding.
    torch.testing.assert_close(out.flatten(), weight[:, :, 1, 1] @ image.flatten() + bias)


def test_deform_conv_defers_its_offset_check_only_inside_a_collecting_module():
    """On the accelerator plan the head's convs zero non-finite offsets and leave a record that the head's forward
    checks once; a conv used on its own checks at once and keeps nothing (no records pile up)."""
    from maskrcnn_benchmark.layers.deform_conv import (
        ModulatedDeformConv,
        NonFiniteOffsetError,
        defer_offset_checks,
        raise_for_deferred_offsets,
    )

    image, mask = torch.randn(1, 4, 5, 5), torch.rand(1, 9, 5, 5)
    offsets = torch.zeros(1, 18, 5, 5)
    offsets[0, 3, 2, 2] = float("nan")
    alone = ModulatedDeformConv(4, 4, 3, padding=1)
    apply_execution_plan(alone, "accelerator")
    with torch.no_grad():
        for _ in range(3):
            alone(image, torch.zeros_like(offsets), mask)
        assert not getattr(alone, "deferred_offsets", None)
        with pytest.raises(NonFiniteOffsetError, match="Non-finite offsets reached ModulatedDeformConv"):
            alone(image, offsets, mask)
    head = torch.nn.Sequential(ModulatedDeformConv(4, 4, 3, padding=1))
    apply_execution_plan(head, "accelerator")
    defer_offset_checks(head)
    with torch.no_grad():
        out = head[0](image, offsets, mask)
    assert torch.isfinite(out).all() and len(head[0].deferred_offsets) == 1
    with pytest.raises(NonFiniteOffsetError, match="Non-finite offsets reached ModulatedDeformConv"):
        raise_for_deferred_offsets(head)
    assert head[0].deferred_offsets is None


# ---- whole model --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_model(small_state_dict):
    model = build_detection_model(small_cfg())
    model.load_state_dict(small_state_dict, strict=True)
    return model


def _random_images(sizes, seed):
    generator = torch.Generator().manual_seed(seed)
    return to_image_list([torch.randn(3, h, w, generator=generator) * 50 for h, w in sizes], size_divisible=32)


def _record_head_outputs(model):
    records = []
    handle = model.rpn.head.register_forward_hook(lambda m, args, out: records.append(out))
    return records, handle


@pytest.mark.parametrize("sizes, captions", [
    ([(96, 128)], ["coco"]),
    ([(100, 70), (64, 160)], ["coco", SHORT_CAPTION]),
    ([(64, 64), (90, 90), (128, 96)], [SHORT_CAPTION, SHORT_CAPTION, SHORT_CAPTION]),
])
def test_eval_paths_agree(small_model, small_case, sizes, captions, plan):
    given = small_case["inputs"]["eval"]
    positive_map = given["positive_map_label_to_token"] if "coco" in captions else {1: [1, 2], 2: [5, 6, 7], 3: [10]}
    captions = [given["captions"][0] if c == "coco" else c for c in captions]
    images = _random_images(sizes, seed=len(sizes))
    small_model.eval()
    records, handle = _record_head_outputs(small_model)
    try:
        with torch.no_grad():
            small_model.set_execution_plan(plan)
            fast = small_model(images, captions=captions, positive_map=positive_map)
            small_model.set_execution_plan("reference")
            reference = small_model(images, captions=captions, positive_map=positive_map)
    finally:
        handle.remove()
        small_model.set_execution_plan("cpu")
    fast_head, reference_head = records
    num_tokens = fast_head.dot_product_logits[0].shape[-1]
    assert reference_head.dot_product_logits[0].shape[-1] == 256
    assert num_tokens < 256  # the text was trimmed after the longest caption
    for name in ("box_regression", "centerness"):
        for a, b in zip(getattr(fast_head, name), getattr(reference_head, name)):
            torch.testing.assert_close(a, b, **TOL)
    for a, b in zip(fast_head.dot_product_logits, reference_head.dot_product_logits):
        torch.testing.assert_close(a, b[..., :num_tokens], **TOL)
    for a, b in zip(fast, reference):
        assert len(a) == len(b)
        order_a = torch.argsort(a.get_field("scores"), descending=True)
        order_b = torch.argsort(b.get_field("scores"), descending=True)
        torch.testing.assert_close(a.get_field("scores")[order_a], b.get_field("scores")[order_b], **TOL)
        torch.testing.assert_close(a.bbox[order_a], b.bbox[order_b], atol=1e-3, rtol=1e-4)


def _train_step(model, images, targets, captions, positive_map):
    model.zero_grad(set_to_none=True)
    losses = model(images, targets=targets, captions=captions, positive_map=positive_map)
    sum(losses.values()).backward()
    return {k: float(v.detach()) for k, v in losses.items()}, {n: p.grad.clone() for n, p in model.named_parameters()
                                                       if p.grad is not None}


@pytest.mark.parametrize("sizes", [[(96, 128)], [(100, 70), (64, 160)]])
def test_train_losses_and_gradients_agree(small_model, small_case, sizes, plan):
    given = small_case["inputs"]["train"]
    images = _random_images(sizes, seed=10 + len(sizes))
    targets, _rows = [], []
    generator = torch.Generator().manual_seed(3)
    for h, w in sizes:
        xy = torch.rand(3, 2, generator=generator) * torch.tensor([w * 0.5, h * 0.5])
        wh = torch.rand(3, 2, generator=generator) * torch.tensor([w * 0.4, h * 0.4]) + 8
        target = BoxList(torch.cat((xy, xy + wh), dim=1), (w, h), mode="xyxy")
        target.add_field("labels", torch.tensor([1, 2, 3]))
        targets.append(target)
    positive_map = given["positive_map"][:3 * len(sizes)].clone()
    captions = given["captions"][::-1][:len(sizes)]
    small_model.train()
    small_model.set_execution_plan(plan)
    fast_losses, fast_grads = _train_step(small_model, images, targets, captions, positive_map)
    small_model.set_execution_plan("reference")
    reference_losses, reference_grads = _train_step(small_model, images, targets, captions, positive_map)
    small_model.set_execution_plan("cpu")
    for name, value in reference_losses.items():
        assert math.isclose(fast_losses[name], value, rel_tol=1e-4, abs_tol=1e-6), name
    assert fast_grads.keys() == reference_grads.keys()
    # Gradients carry fp32 noise of ~1e-4 of their largest entry (reductions over thousands of anchors and
    # tokens, different summation orders); some are zero in exact arithmetic (e.g. attention key biases), so a
    # small floor relative to the largest gradient of the model is added.
    largest = max(float(grad.abs().max()) for grad in reference_grads.values())
    for name, grad in reference_grads.items():
        atol = 1e-3 * float(grad.abs().max()) + 1e-6 * largest
        torch.testing.assert_close(fast_grads[name], grad, atol=atol, rtol=1e-3, msg=lambda m: f"{name}: {m}")


# ---- token loss with trimmed text ---------------------------------------------------------------------------

def test_no_object_target_only_when_its_token_is_kept():
    cfg = small_raw_cfg()
    loss_evaluator = make_atss_loss_evaluator(cfg, BoxCoder((10.0, 10.0, 5.0, 5.0), math.log(1000.0 / 16)))
    _, _, _, targets, anchors, positive_map, _ = loss_inputs(cfg, [3, 2], requires_grad=False)
    positives, _, full = loss_evaluator.prepare_targets(targets, anchors, positive_map)
    width = positive_map.shape[1]
    assert torch.all(full[..., -1].flatten()[~positives] == 1)
    _, _, trimmed = loss_evaluator.prepare_targets(targets, anchors, positive_map, num_tokens=width - 7)
    torch.testing.assert_close(trimmed, full[..., :width - 7])
    _, _, kept = loss_evaluator.prepare_targets(targets, anchors, positive_map, num_tokens=width)
    torch.testing.assert_close(kept, full)


@pytest.mark.slow
def test_checkpointed_tower_gives_the_same_gradients(small_case, small_state_dict):
    """With USE_CHECKPOINT the cpu plan also recomputes DyConv in backward: values and gradients unchanged."""
    def step(use_checkpoint):
        head = small_head(small_state_dict, attn_dropout=0.0, use_checkpoint=use_checkpoint).train()
        features, language = head_inputs(small_case)
        features = [f.clone().requires_grad_(True) for f in features]
        output = head(features, language)
        loss = sum(t.square().mean() for t in output.box_regression + output.centerness + output.dot_product_logits)
        loss.backward()
        return [loss.detach()] + [f.grad for f in features] + [p.grad for p in head.parameters() if p.requires_grad]

    for a, b in zip(step(True), step(False)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# ---- float16 autocast ---------------------------------------------------------------------------------------

@pytest.fixture(params=["cpu", "accelerator", "reference"])
def golden_model_on_plan(request, small_model):
    """The small golden model on each plan, in eval mode; back to the cpu plan afterwards."""
    small_model.set_execution_plan(request.param)
    yield small_model
    small_model.set_execution_plan("cpu")


@pytest.mark.slow
def test_float16_autocast_eval_scores_stay_close_to_float32(golden_model_on_plan, small_case):
    """The official -9e15 padding score does not exist in float16: every plan must still run and give the
    float32 detections within 0.02 (measured: 5e-4)."""
    fp32 = eval_forward(golden_model_on_plan, small_case)
    with torch.autocast("cpu", dtype=torch.float16):
        fp16 = eval_forward(golden_model_on_plan, small_case)
    for a, b in zip(fp32, fp16):
        assert len(a) == len(b)
        scores_a = a.get_field("scores").sort(descending=True).values
        scores_b = b.get_field("scores").float().sort(descending=True).values
        assert torch.isfinite(scores_b).all()
        assert float((scores_a - scores_b).abs().max()) < 0.02


@pytest.mark.slow
def test_float16_autocast_training_step_is_finite_and_close(golden_model_on_plan, small_case):
    """A float16 training step on every plan: finite gradients, and losses within 2 % of the official float32
    ones (which every plan reproduces in float32, test_model_golden.py)."""
    model = golden_model_on_plan.train()
    given = small_case["inputs"]["train"]
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.float16):
        losses = model(image_list(small_case), targets=train_targets(small_case), captions=given["captions"],
                       positive_map=given["positive_map"].clone())
    sum(losses.values()).backward()
    model.eval()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    fp16 = {name: float(value) for name, value in losses.items()}
    for name, value in small_case["train"]["losses"].items():
        assert math.isfinite(fp16[name])
        assert abs(fp16[name] - value) <= 0.02 * abs(value) + 1e-6, (name, fp16[name], value)


@pytest.mark.parametrize("plan_name", ["cpu", "accelerator", "reference"])
def test_float16_fusion_with_a_caption_without_real_tokens(plan_name):
    """Padding in float16 takes the dtype's lowest finite score: a caption whose tokens are all padding gives
    finite weights instead of NaN (uniform ones, as float32 with the official -9e15, except in the fused kernels,
    where the scores still order them); the other captions keep their float32 values."""
    torch.manual_seed(0)
    attn = BiMultiHeadAttention(16, 24, 32, 4, dropout=0.0, clamp_min_for_underflow=True,
                                clamp_max_for_overflow=True).eval()
    apply_execution_plan(attn, plan_name)
    v, l = torch.randn(2, 37, 16), torch.randn(2, 5, 24)
    mask = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        expected = attn(v, l, mask)
        with torch.autocast("cpu", dtype=torch.float16):
            got = attn(v, l, mask)
    compared = slice(None) if plan_name != "accelerator" else slice(1, None)
    for a, b in zip(got, expected):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a[compared].float(), b[compared], atol=2e-2, rtol=2e-2)


def test_plan_is_logged_by_the_trainer_model_builder(caplog):
    from maskrcnn_benchmark.engine.trainer import log_execution_plan

    model = build_detection_model(small_cfg())
    with caplog.at_level(logging.INFO, logger="maskrcnn_benchmark.trainer"):
        log_execution_plan(model)
    assert "Execution plan: cpu (fusion=folded" in caplog.text
