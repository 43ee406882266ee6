"""The compiled ops (maskrcnn_benchmark._C, csrc/) against their PyTorch implementations: values and gradients
over random shapes, empty inputs included, plus the dispatch between them.

Without the extension these tests skip, with the reason; with GLIP_REQUIRE_EXTENSION=1 (set by .ci/run, which
builds it) a missing extension fails them instead.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from maskrcnn_benchmark.layers import compiled_ops, dispatch

REPO = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("GLIP_REQUIRE_EXTENSION", "").strip().lower() in ("1", "true", "yes")
SEEDS = range(6)


@pytest.fixture(autouse=True)
def extension():
    """Load the extension; fail when it is required, skip (with the reason) otherwise."""
    if not dispatch.load_extension():
        # A plain `pip install -e .` builds in an isolated environment without torch, which skips the extension.
        message = (f"{dispatch.EXTENSION} is not built ({dispatch.extension_error()}); build it with "
                   "`pip install -e . --no-build-isolation` (PyTorch and a C++ compiler are needed at build time)")
        if REQUIRED:
            pytest.fail(message + " -- GLIP_REQUIRE_EXTENSION=1 requires it")
        pytest.skip(message)


def _cuda_kernels_missing() -> str | None:
    """Why the CUDA variants cannot run here (None when a GPU and the CUDA kernels are there)."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    if not dispatch.compiled_kernel_available("ml_nms", "cuda"):
        return f"{dispatch.EXTENSION} has no CUDA kernels (build with FORCE_CUDA=1)"
    return None


def _on_cuda():
    """The CUDA variant of a kernel test: runs on a GPU with the CUDA kernels built, skips (with why) elsewhere;
    with GLIP_REQUIRE_EXTENSION=1 on a machine with a GPU, missing CUDA kernels fail it."""
    missing = _cuda_kernels_missing()
    if missing and REQUIRED and torch.cuda.is_available():
        return "cuda"  # runs, and fails on the missing kernel
    return pytest.param("cuda", marks=pytest.mark.skipif(missing is not None, reason=missing or ""))


DEVICES = ["cpu", _on_cuda()]


def pytorch(op):
    return dispatch.pytorch_implementation(op)


def compiled(op):
    return dispatch.kernel(op, "compiled")


def leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


# ---------------------------------------------------------------- ml_nms


def random_boxes(gen, num, integer=False, dtype=torch.float32):
    """Overlapping boxes around a few centers, some degenerate, with tied scores and 3 labels."""
    centers = torch.rand(4, 2, generator=gen) * 100
    center = centers[torch.randint(0, 4, (num,), generator=gen)] + torch.randn(num, 2, generator=gen) * 5
    size = torch.rand(num, 2, generator=gen) * 30
    size[::5] = 0
    boxes = torch.cat([center - size / 2, center + size / 2], dim=1)
    if integer:
        boxes = boxes.round()
    scores = torch.randint(0, 10, (num,), generator=gen).to(dtype) / 10
    labels = torch.randint(1, 4, (num,), generator=gen)
    return boxes.to(dtype), scores, labels


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.6, 1.0, -0.5])
def test_ml_nms_equals_pytorch(seed, thresh, device):
    gen = torch.Generator().manual_seed(seed)
    num = int(torch.randint(1, 200, (1,), generator=gen))
    for integer in (False, True):
        boxes, scores, labels = random_boxes(gen, num, integer)
        expected = pytorch("ml_nms")(boxes, scores, labels, thresh)
        kept = compiled("ml_nms")(boxes.to(device), scores.to(device), labels.to(device), thresh)
        assert kept.dtype == torch.int64 and kept.device.type == device
        assert torch.equal(kept.cpu(), expected)


def test_ml_nms_float64_half_and_empty():
    gen = torch.Generator().manual_seed(7)
    boxes, scores, labels = random_boxes(gen, 150, dtype=torch.float64)
    assert torch.equal(compiled("ml_nms")(boxes, scores, labels, 0.5), pytorch("ml_nms")(boxes, scores, labels, 0.5))
    half = boxes.half(), scores.half(), labels.int()
    assert torch.equal(compiled("ml_nms")(*half, 0.5), pytorch("ml_nms")(*half, 0.5))
    empty = compiled("ml_nms")(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_ml_nms_ties_keep_lower_index():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.5, 0.9, 0.9, 0.1])
    labels = torch.tensor([1, 1, 1, 1])
    assert compiled("ml_nms")(boxes, scores, labels, 0.5).tolist() == [1, 3]
    # +1 convention: [0, 9] and [5, 14] are 10 wide and overlap by 5 -> IoU 1/3, kept at 0.34, removed at 0.33
    pair = torch.tensor([[0.0, 0, 9, 9], [5, 0, 14, 9]])
    two = torch.tensor([1.0, 0.5]), torch.tensor([1, 1])
    assert compiled("ml_nms")(pair, *two, 0.34).tolist() == [0, 1]
    assert compiled("ml_nms")(pair, *two, 0.33).tolist() == [0]


# ---------------------------------------------------------------- roi_align


def random_rois(gen, num_rois, batch, height, width, dtype):
    """Rois over and beyond the feature map, some degenerate or reversed."""
    xy = torch.rand(num_rois, 2, generator=gen) * torch.tensor([width, height]) * 1.4 - 2
    wh = torch.rand(num_rois, 2, generator=gen) * torch.tensor([width, height]) - 0.5
    wh[::4] = 0
    index = torch.randint(0, batch, (num_rois, 1), generator=gen).float()
    return torch.cat([index, xy, xy + wh], dim=1).to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_equals_torchvision(seed, aligned, device):
    gen = torch.Generator().manual_seed(seed)
    batch, channels = int(torch.randint(1, 3, (1,), generator=gen)), int(torch.randint(1, 4, (1,), generator=gen))
    height, width = (int(v) for v in torch.randint(1, 12, (2,), generator=gen))
    num_rois = int(torch.randint(0, 12, (1,), generator=gen))
    output_size = tuple(int(v) for v in torch.randint(1, 5, (2,), generator=gen))
    scale = float(torch.rand(1, generator=gen)) + 0.25
    sampling_ratio = [-1, 0, 1, 2][seed % 4]
    features = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    rois = random_rois(gen, num_rois, batch, height / scale, width / scale, torch.float64)
    grad_out = torch.randn(num_rois, channels, *output_size, generator=gen, dtype=torch.float64)
    args = (output_size, scale, sampling_ratio, aligned)

    (x_ref,), (x_new,) = leaves(features), leaves(features.to(device))
    expected = torchvision.ops.roi_align(x_ref, rois, *args)
    result = compiled("roi_align")(x_new, rois.to(device), *args)
    torch.testing.assert_close(result.cpu(), expected, rtol=1e-12, atol=1e-12)
    if num_rois:
        expected.backward(grad_out)
        result.backward(grad_out.to(device))
        torch.testing.assert_close(x_new.grad.cpu(), x_ref.grad, rtol=1e-12, atol=1e-12)


def test_roi_align_float32_and_box_lists():
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(2, 4, 9, 13, generator=gen)
    boxes = [random_rois(gen, 5, 1, 18, 26, torch.float32)[:, 1:], random_rois(gen, 3, 1, 18, 26, torch.float32)[:, 1:]]
    expected = torchvision.ops.roi_align(features, boxes, 3, 0.5, 2, True)
    torch.testing.assert_close(compiled("roi_align")(features, boxes, 3, 0.5, 2, True), expected)


# ---------------------------------------------------------------- token focal loss


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.25, 1.0), (0.75, 1.5)])
def test_token_focal_loss_equals_pytorch(seed, alpha, gamma, device):
    gen = torch.Generator().manual_seed(seed)
    batch, anchors, tokens = (int(v) for v in torch.randint(0, 9, (3,), generator=gen))
    logits = torch.randn(batch, anchors, tokens, generator=gen, dtype=torch.float64) * 4
    targets = (torch.rand(batch, anchors, tokens, generator=gen) < 0.2).double()
    text_mask = (torch.rand(batch, tokens, generator=gen) < 0.7).long() if seed % 2 else None
    (x_ref,), (x_new,) = leaves(logits), leaves(logits.to(device))
    expected = pytorch("token_sigmoid_focal_loss")(x_ref, targets, alpha, gamma, text_mask)
    on_device = (targets.to(device), alpha, gamma, None if text_mask is None else text_mask.to(device))
    result = compiled("token_sigmoid_focal_loss")(x_new, *on_device)
    assert result.shape == expected.shape
    torch.testing.assert_close(result.cpu(), expected, rtol=1e-12, atol=1e-14)
    with torch.no_grad():  # loss only: the kernel skips the derivative
        torch.testing.assert_close(compiled("token_sigmoid_focal_loss")(x_new, *on_device).cpu(),
                                   expected.detach(), rtol=1e-12, atol=1e-14)
    grad_out = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    expected.backward(grad_out)
    result.backward(grad_out.to(device))
    torch.testing.assert_close(x_new.grad.cpu(), x_ref.grad, rtol=1e-11, atol=1e-14)


def test_token_focal_loss_float32_saturated_logits():
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 300, 256, generator=gen) * 30  # saturated sigmoids on both sides
    targets = (torch.rand(2, 300, 256, generator=gen) < 0.05).float()
    text_mask = torch.ones(2, 256, dtype=torch.long)
    text_mask[:, 200:] = 0
    (x_ref,), (x_new,) = leaves(logits), leaves(logits)
    expected = pytorch("token_sigmoid_focal_loss")(x_ref, targets, 0.25, 2.0, text_mask)
    result = compiled("token_sigmoid_focal_loss")(x_new, targets, 0.25, 2.0, text_mask)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)
    expected.sum().backward()
    result.sum().backward()
    torch.testing.assert_close(x_new.grad, x_ref.grad, rtol=1e-5, atol=1e-6)


def test_token_focal_loss_targets_with_grad_use_pytorch():
    logits = torch.randn(1, 3, 4, requires_grad=True)
    targets = torch.rand(1, 3, 4, requires_grad=True)
    compiled("token_sigmoid_focal_loss")(logits, targets, 0.25, 2.0).sum().backward()
    assert targets.grad is not None


# ---------------------------------------------------------------- modulated deformable conv


def coin(gen) -> bool:
    return bool(torch.randint(0, 2, (1,), generator=gen))


def deform_case(gen, dtype=torch.float64):
    """Random DCNv2 arguments; offsets/mask come from a finer grid every other case (GLIP's cross-level quirk)."""
    groups = int(torch.randint(1, 3, (1,), generator=gen))
    deformable_groups = int(torch.randint(1, 3, (1,), generator=gen))
    channels = groups * deformable_groups * int(torch.randint(1, 3, (1,), generator=gen))
    out_channels = groups * int(torch.randint(1, 4, (1,), generator=gen))
    batch = int(torch.randint(0, 3, (1,), generator=gen))
    kernel = (int(torch.randint(1, 4, (1,), generator=gen)), int(torch.randint(1, 4, (1,), generator=gen)))
    stride, padding, dilation = (int(torch.randint(1, 3, (1,), generator=gen)) for _ in range(3))
    height, width = (int(v) + 3 for v in torch.randint(0, 7, (2,), generator=gen))
    out_h = (height + 2 * padding - (dilation * (kernel[0] - 1) + 1)) // stride + 1
    out_w = (width + 2 * padding - (dilation * (kernel[1] - 1) + 1)) // stride + 1
    grid = (out_h + 3, out_w + 2) if coin(gen) else (out_h, out_w)
    taps = kernel[0] * kernel[1]
    # offset and mask as slices of one conv output, like DyConv's offset_mask[:, :18] and [:, 18:]
    offset_mask = torch.randn(batch, 3 * deformable_groups * taps, *grid, generator=gen, dtype=dtype) * 2
    offset = offset_mask[:, : 2 * deformable_groups * taps]
    mask = offset_mask[:, 2 * deformable_groups * taps :].sigmoid()
    weight = torch.randn(out_channels, channels // groups, *kernel, generator=gen, dtype=dtype)
    bias = torch.randn(out_channels, generator=gen, dtype=dtype) if coin(gen) else None
    image = torch.randn(batch, channels, height, width, generator=gen, dtype=dtype)
    return (image, offset, mask, weight, bias), dict(stride=stride, padding=padding, dilation=dilation)


def torchvision_deform_conv(image, offset, mask, weight, bias, stride, padding, dilation):
    """The official semantics: torchvision's DCNv2 on each sample's offset/mask buffer prefix (raw addressing)."""
    out_h = (image.shape[2] + 2 * padding - (dilation * (weight.shape[2] - 1) + 1)) // stride + 1
    out_w = (image.shape[3] + 2 * padding - (dilation * (weight.shape[3] - 1) + 1)) // stride + 1
    batch = image.shape[0]
    offset = offset.flatten(1)[:, : offset.shape[1] * out_h * out_w].reshape(batch, offset.shape[1], out_h, out_w)
    mask = mask.flatten(1)[:, : mask.shape[1] * out_h * out_w].reshape(batch, mask.shape[1], out_h, out_w)
    return torchvision.ops.deform_conv2d(image, offset, weight, bias, stride, padding, dilation, mask)


def run_with_grads(function, tensors, options, grad_seed, device="cpu"):
    """Output and input gradients of `function` run on `device`, both returned on the CPU."""
    inputs = [None if t is None else t.detach().to(device).requires_grad_(True) for t in tensors]
    output = function(*inputs, **options)
    grad_out = torch.randn(output.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=output.dtype)
    output.backward(grad_out.to(device))
    return output.detach().cpu(), [None if t is None else t.grad.cpu() for t in inputs]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(10))
def test_modulated_deform_conv_equals_torchvision_reference(seed, device):
    """Random groups, deformable groups, strides, paddings, dilations, kernel sizes, batch 0 and offset grids."""
    gen = torch.Generator().manual_seed(seed)
    tensors, options = deform_case(gen)
    expected, expected_grads = run_with_grads(torchvision_deform_conv, tensors, options, seed)
    result, grads = run_with_grads(compiled("modulated_deform_conv"), tensors, options, seed, device)
    assert result.shape == expected.shape
    torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-10)
    for name, grad, expected_grad in zip(("input", "offset", "mask", "weight", "bias"), grads, expected_grads):
        if expected_grad is None:
            assert grad is None, name
        else:
            torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.slow
def test_modulated_deform_conv_over_several_position_ranges():
    """Wide inputs: the CPU kernel splits the output positions into ranges (a partial one last); groups,
    deformable groups, a batch of 2 and offsets from a finer grid, against torchvision in float64."""
    gen = torch.Generator().manual_seed(11)
    channels, taps = 1024, 9  # 4M column values / (C*K) = 448 positions per range: 720 -> 448 + 272
    image = torch.randn(2, channels, 24, 30, generator=gen, dtype=torch.float64)
    offset_mask = torch.randn(2, 3 * 2 * taps, 26, 31, generator=gen, dtype=torch.float64) * 2
    tensors = (image, offset_mask[:, : 4 * taps], offset_mask[:, 4 * taps :].sigmoid(),
               torch.randn(4, channels // 2, 3, 3, generator=gen, dtype=torch.float64) * 0.05,
               torch.randn(4, generator=gen, dtype=torch.float64))
    options = dict(stride=1, padding=1, dilation=1)
    expected, expected_grads = run_with_grads(torchvision_deform_conv, tensors, options, 3)
    result, grads = run_with_grads(compiled("modulated_deform_conv"), tensors, options, 3)
    torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-10)
    for name, grad, expected_grad in zip(("input", "offset", "mask", "weight", "bias"), grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-9, msg=name)


def test_modulated_deform_conv_float32_glip_shapes_and_autocast():
    """GLIP's configuration (3x3, one group, offsets from the finer level) against the PyTorch implementation."""
    gen = torch.Generator().manual_seed(5)
    image = torch.randn(2, 16, 20, 24, generator=gen)
    offset_mask = torch.randn(2, 27, 40, 48, generator=gen)  # predicted on the finer level
    tensors = (image, offset_mask[:, :18], offset_mask[:, 18:].sigmoid(),
               torch.randn(8, 16, 3, 3, generator=gen) * 0.1, torch.randn(8, generator=gen))
    options = dict(stride=1, padding=1, dilation=1)
    expected, expected_grads = run_with_grads(pytorch("modulated_deform_conv"), tensors, options, 0)
    result, grads = run_with_grads(compiled("modulated_deform_conv"), tensors, options, 0)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = compiled("modulated_deform_conv")(*tensors, **options)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, expected, rtol=1e-5, atol=1e-5)


def test_modulated_deform_conv_refuses_small_offsets():
    image = torch.randn(1, 2, 6, 6)
    with pytest.raises(RuntimeError, match="too small"):
        compiled("modulated_deform_conv")(image, torch.randn(1, 18, 3, 3), torch.rand(1, 9, 6, 6),
                                          torch.randn(2, 2, 3, 3), padding=1)


# ---------------------------------------------------------------- registration and dispatch


def test_custom_op_registrations_pass_opcheck():
    """Schema, autograd and fake-tensor registrations of the glip:: ops are consistent (torch.library.opcheck)."""
    gen = torch.Generator().manual_seed(0)
    boxes, scores, labels = random_boxes(gen, 20)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.glip.ml_nms.default, (boxes, scores, labels, 0.5), test_utils=tests[:1])
    features = torch.randn(1, 2, 6, 6, requires_grad=True)
    rois = torch.tensor([[0.0, 0.5, 0.5, 4.0, 5.0]])
    torch.library.opcheck(torch.ops.glip.roi_align.default, (features, rois, 1.0, 2, 2, -1, True), test_utils=tests)
    logits = torch.randn(3, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.glip.token_sigmoid_focal_loss.default,
                          (logits, (logits > 0).float().detach(), 0.25, 2.0, True), test_utils=tests)
    dcn = (torch.randn(1, 2, 5, 5, requires_grad=True), torch.randn(1, 18, 5, 5, requires_grad=True),
           torch.rand(1, 9, 5, 5, requires_grad=True), torch.randn(3, 2, 3, 3, requires_grad=True),
           torch.randn(3, requires_grad=True), 1, 1, 1, 1, 1, 1, 1, 1)
    torch.library.opcheck(torch.ops.glip.modulated_deform_conv.default, dcn, test_utils=tests)


def test_default_dispatch_table_and_modes():
    for op in dispatch.OPS:
        expected = "compiled" if op in dispatch.COMPILED_BY_DEFAULT["cpu"] else "pytorch"
        assert dispatch.implementation(op, "cpu") == expected
        with dispatch.use_implementation("compiled"):
            assert dispatch.implementation(op, "cpu") == "compiled"
        with dispatch.use_implementation("pytorch"):
            assert dispatch.implementation(op, "cpu") == "pytorch"
        # The reference execution plan passes compiled=False: the PyTorch implementation.
        assert dispatch.implementation(op, "cpu", compiled=False) == "pytorch"
    assert dispatch.COMPILED_BY_DEFAULT["cuda"] == {"ml_nms", "modulated_deform_conv", "token_sigmoid_focal_loss"}


@pytest.mark.parametrize(
    "module_name,name,op",
    [
        ("maskrcnn_benchmark.layers.nms", "ml_nms", "ml_nms"),
        ("maskrcnn_benchmark.layers.roi_align", "roi_align", "roi_align"),
        ("maskrcnn_benchmark.layers.sigmoid_focal_loss", "token_sigmoid_binary_focal_loss", "token_sigmoid_focal_loss"),
        ("maskrcnn_benchmark.layers.deform_conv", "modulated_deform_conv", "modulated_deform_conv"),
    ],
)
def test_layer_functions_route_through_dispatch(monkeypatch, module_name, name, op):
    """The public layer function calls the compiled kernel when the mode selects it, its own code otherwise."""
    function = getattr(__import__(module_name, fromlist=[name]), name)
    calls = []
    monkeypatch.setitem(compiled_ops.COMPILED_KERNELS, op, lambda *args, **kwargs: calls.append(args) or "compiled")
    first = torch.zeros(0, 4) if op == "ml_nms" else torch.zeros(1, 1, 1, 1)
    with dispatch.use_implementation("compiled"):
        assert function(first, "second", third=3) == "compiled"
    assert calls == [(first, "second")]


@pytest.mark.slow
def test_layers_main_prints_the_implementations():
    env = dict(os.environ, GLIP_OPS="pytorch")
    result = subprocess.run([sys.executable, "-m", "maskrcnn_benchmark.layers"], cwd=REPO, env=env,
                            capture_output=True, text=True, check=True)
    assert "extension: loaded" in result.stdout
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[3:]}
    assert rows == {op: ["pytorch"] * len(dispatch.DEVICE_TYPES) for op in dispatch.OPS}
