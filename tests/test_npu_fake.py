"""Ascend NPU paths against a fake `torch_npu` (no NPU here): op dispatch to the torch_npu operators with their
documented argument conventions, HCCL for DDP, npu autocast, and test/env_npu.sh.

The fake operators compute the documented semantics on the CPU (torchvision underneath) and record their calls, so
the tests check both that the NPU operators are called and that GLIP's wrappers translate layouts and conventions
(+1 boxes, score ties, offset channel order, roi_end_mode) into results equal to the PyTorch implementations.
"""
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import python_first_env

from maskrcnn_benchmark.layers import dispatch, npu_ops

REPO = Path(__file__).resolve().parents[1]


class FakeTorchNpu(types.ModuleType):
    """torch_npu stand-in: npu_nms_v4, npu_roi_align(bk), npu_deformable_conv2d(bk) on CPU, recording calls."""

    def __init__(self):
        super().__init__("torch_npu")
        self.calls = []

    def npu_nms_v4(self, boxes, scores, max_output_size, iou_threshold, scores_threshold,
                   pad_to_max_output_size=False):
        self.calls.append(("npu_nms_v4", boxes.dtype, max_output_size, float(iou_threshold), float(scores_threshold)))
        candidates = torch.nonzero(scores > scores_threshold).squeeze(1)
        kept = candidates[torchvision.ops.nms(boxes[candidates], scores[candidates], float(iou_threshold))]
        kept = kept[:max_output_size]
        return kept.int(), torch.tensor(kept.numel(), dtype=torch.int32)

    def npu_roi_align(self, features, rois, spatial_scale, pooled_height, pooled_width, sample_num, roi_end_mode):
        self.calls.append(("npu_roi_align", features.dtype, sample_num, roi_end_mode))
        assert roi_end_mode in (0, 3)
        return torchvision.ops.roi_align(features, rois, (pooled_height, pooled_width), spatial_scale,
                                         sample_num, roi_end_mode == 3)

    def npu_roi_alignbk(self, grad, rois, input_shape, pooled_height, pooled_width, spatial_scale, sample_num,
                        roi_end_mode):
        self.calls.append(("npu_roi_alignbk", tuple(input_shape), sample_num, roi_end_mode))
        features = torch.zeros(input_shape, dtype=grad.dtype, requires_grad=True)
        with torch.enable_grad():
            output = torchvision.ops.roi_align(features, rois, (pooled_height, pooled_width), spatial_scale,
                                               sample_num, roi_end_mode == 3)
            return torch.autograd.grad(output, features, grad)[0]

    @staticmethod
    def _deform(input, weight, offset_all, bias, kernel_size, stride, padding, dilation, groups, deformable_groups):
        """The documented layout: offset_all = [all x offsets, all y offsets, mask] per (group, tap)."""
        count = deformable_groups * kernel_size[0] * kernel_size[1]
        dx, dy, mask = offset_all[:, :count], offset_all[:, count:2 * count], offset_all[:, 2 * count:]
        offset = torch.stack([dy, dx], dim=2).flatten(1, 2)  # torchvision: (dy, dx) per tap
        return torchvision.ops.deform_conv2d(input, offset, weight, bias, stride=tuple(stride[2:]),
                                             padding=(padding[0], padding[2]), dilation=tuple(dilation[2:]),
                                             mask=mask)

    def npu_deformable_conv2d(self, input, weight, offset, bias, kernel_size, stride, padding, dilation=(1, 1, 1, 1),
                              groups=1, deformable_groups=1, modulated=True):
        self.calls.append(("npu_deformable_conv2d", input.dtype, list(kernel_size), list(stride), list(padding),
                           list(dilation), groups, deformable_groups, modulated))
        output = self._deform(input, weight, offset, bias, kernel_size, stride, padding, dilation, groups,
                              deformable_groups)
        return output, offset.clone()

    def npu_deformable_conv2dbk(self, input, grad_output, offset_out, weight, offset, kernel_size, stride, padding,
                                dilation=(1, 1, 1, 1), groups=1, deformable_groups=1, modulated=True):
        self.calls.append(("npu_deformable_conv2dbk", list(kernel_size)))
        leaves = [t.detach().requires_grad_(True) for t in (input, weight, offset)]
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype, requires_grad=True)
        with torch.enable_grad():
            output = self._deform(leaves[0], leaves[1], leaves[2], bias, kernel_size, stride, padding, dilation,
                                  groups, deformable_groups)
            grad_input, grad_weight, grad_offset, grad_bias = torch.autograd.grad(output, [*leaves, bias],
                                                                                  grad_output)
        return grad_input, grad_weight, grad_offset, grad_bias

    def called(self):
        return [call[0] for call in self.calls]


@pytest.fixture
def fake_npu(monkeypatch):
    fake = FakeTorchNpu()
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    return fake


def test_npu_implementations_follow_torch_npu(fake_npu, monkeypatch):
    expected = {"ml_nms": "npu", "roi_align": "npu", "modulated_deform_conv": "npu",
                "token_sigmoid_focal_loss": "pytorch"}  # torch_npu has no fused token focal loss
    assert {op: dispatch.implementation(op, "npu") for op in dispatch.OPS} == expected
    with dispatch.use_implementation("pytorch"):
        assert dispatch.implementation("ml_nms", "npu") == "pytorch"
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # not installed: import fails
    assert all(dispatch.implementation(op, "npu") == "pytorch" for op in dispatch.OPS)


def random_nms_case(seed, num=120):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.rand(4, 2, generator=gen) * 100
    center = centers[torch.randint(0, 4, (num,), generator=gen)] + torch.randn(num, 2, generator=gen) * 5
    size = torch.rand(num, 2, generator=gen) * 30
    boxes = torch.cat([center - size / 2, center + size / 2], dim=1).round()  # integer boxes: +1 matters
    scores = torch.randint(0, 8, (num,), generator=gen).float() / 8  # many ties
    labels = torch.randint(1, 4, (num,), generator=gen)
    return boxes, scores, labels


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("thresh", [0.3, 0.6, -1.0])
def test_npu_ml_nms_equals_pytorch(fake_npu, seed, thresh):
    boxes, scores, labels = random_nms_case(seed)
    expected = dispatch.pytorch_implementation("ml_nms")(boxes, scores, labels, thresh)
    assert torch.equal(npu_ops.npu_ml_nms(boxes, scores, labels, thresh), expected)
    if thresh >= 0:
        assert set(fake_npu.called()) == {"npu_nms_v4"}
        assert all(call[1] == torch.float32 and call[3] == pytest.approx(thresh) for call in fake_npu.calls)
    assert npu_ops.npu_ml_nms(boxes[:0], scores[:0], labels[:0], thresh).shape == (0,)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_npu_roi_align_equals_torchvision(fake_npu, aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(2, 3, 10, 12, generator=gen)
    xy = torch.rand(6, 2, generator=gen) * 30
    rois = torch.cat([torch.randint(0, 2, (6, 1), generator=gen).float(), xy, xy + torch.rand(6, 2) * 20], dim=1)
    ref, new = features.clone().requires_grad_(True), features.clone().requires_grad_(True)
    expected = torchvision.ops.roi_align(ref, rois, (3, 4), 0.4, sampling_ratio, aligned)
    result = npu_ops.npu_roi_align(new, rois, (3, 4), 0.4, sampling_ratio, aligned)
    torch.testing.assert_close(result, expected)
    grad = torch.randn(expected.shape, generator=gen)
    expected.backward(grad)
    result.backward(grad)
    torch.testing.assert_close(new.grad, ref.grad)
    end_mode = 3 if aligned else 0
    assert fake_npu.calls == [("npu_roi_align", torch.float32, max(sampling_ratio, 0), end_mode),
                              ("npu_roi_alignbk", (2, 3, 10, 12), max(sampling_ratio, 0), end_mode)]


def torchvision_deform_conv(image, offset, mask, weight, bias, stride, padding, dilation):
    out_h = (image.shape[2] + 2 * padding - (dilation * (weight.shape[2] - 1) + 1)) // stride + 1
    out_w = (image.shape[3] + 2 * padding - (dilation * (weight.shape[3] - 1) + 1)) // stride + 1
    batch = image.shape[0]
    offset = offset.flatten(1)[:, : offset.shape[1] * out_h * out_w].reshape(batch, -1, out_h, out_w)
    mask = mask.flatten(1)[:, : mask.shape[1] * out_h * out_w].reshape(batch, -1, out_h, out_w)
    return torchvision.ops.deform_conv2d(image, offset, weight, bias, stride, padding, dilation, mask)


@pytest.mark.parametrize("stride,cross_level", [(1, True), (2, False)])
def test_npu_modulated_deform_conv_equals_reference(fake_npu, stride, cross_level):
    """GLIP's DyConv configurations: offsets from the finer level (raw per-sample addressing) and stride 2."""
    gen = torch.Generator().manual_seed(2)
    image = torch.randn(2, 4, 7, 9, generator=gen)
    out_h, out_w = (7 + 2 - 3) // stride + 1, (9 + 2 - 3) // stride + 1
    grid = (2 * out_h, 2 * out_w) if cross_level else (out_h, out_w)
    offset_mask = torch.randn(2, 27, *grid, generator=gen)
    tensors = [image, offset_mask[:, :18], offset_mask[:, 18:].sigmoid(), torch.randn(5, 4, 3, 3, generator=gen),
               torch.randn(5, generator=gen)]
    ref = [t.detach().clone().requires_grad_(True) for t in tensors]
    new = [t.detach().clone().requires_grad_(True) for t in tensors]
    expected = torchvision_deform_conv(*ref, stride, 1, 1)
    result = npu_ops.npu_modulated_deform_conv(*new, stride=stride, padding=1, dilation=1)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn(expected.shape, generator=gen)
    expected.backward(grad)
    result.backward(grad)
    for name, a, b in zip(("input", "offset", "mask", "weight", "bias"), new, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert fake_npu.calls[0] == ("npu_deformable_conv2d", torch.float32, [3, 3], [1, 1, stride, stride],
                                 [1, 1, 1, 1], [1, 1, 1, 1], 1, 1, True)
    assert fake_npu.called() == ["npu_deformable_conv2d", "npu_deformable_conv2dbk"]


@pytest.mark.parametrize(
    "module_name,name,op",
    [
        ("maskrcnn_benchmark.layers.nms", "ml_nms", "ml_nms"),
        ("maskrcnn_benchmark.layers.roi_align", "roi_align", "roi_align"),
        ("maskrcnn_benchmark.layers.deform_conv", "modulated_deform_conv", "modulated_deform_conv"),
    ],
)
def test_layer_functions_dispatch_npu_tensors_to_torch_npu(fake_npu, monkeypatch, module_name, name, op):
    """Tensors on the npu device (simulated) reach the torch_npu wrappers through the public layer functions."""
    function = getattr(__import__(module_name, fromlist=[name]), name)
    monkeypatch.setattr(dispatch, "device_type_of", lambda tensor: "npu")
    calls = []
    monkeypatch.setitem(npu_ops.NPU_KERNELS, op, lambda *args, **kwargs: calls.append(op) or "npu")
    assert function(torch.zeros(1, 1, 1, 1), "second") == "npu"
    assert calls == [op]


NPU_RUNTIME_SCRIPT = textwrap.dedent(
    """
    import json, sys, types
    import torch
    import torch.distributed as dist

    calls = {"set_device": [], "init_process_group": []}
    fake_npu = types.ModuleType("torch_npu.npu")
    fake_npu.is_available = lambda: True
    fake_npu.device_count = lambda: 8
    fake_npu.set_device = lambda device: calls["set_device"].append(str(device))
    fake_npu.get_amp_supported_dtype = lambda: [torch.float16, torch.bfloat16]
    fake_npu.is_bf16_supported = lambda: True
    fake_npu.current_device = lambda: 0
    fake_npu._is_in_bad_fork = lambda: False
    fake_npu.manual_seed_all = lambda seed: None
    torch_npu = types.ModuleType("torch_npu")
    torch_npu.npu = fake_npu
    sys.modules["torch_npu"] = torch_npu
    # What importing torch_npu does: the PrivateUse1 backend becomes the "npu" device with its torch.npu module.
    torch.utils.rename_privateuse1_backend("npu")
    torch._register_device_module("npu", fake_npu)

    from maskrcnn_benchmark.utils import amp, device

    dist.init_process_group = lambda **kwargs: calls["init_process_group"].append(kwargs["backend"])
    dist.is_initialized = lambda: False
    chosen = device.resolve_device("cuda", local_rank=3)
    device.set_current_device(chosen)
    distributed = device.init_distributed(chosen)
    with amp.autocast(chosen.type):
        autocast = [torch.is_autocast_enabled("npu"), str(torch.get_autocast_dtype("npu"))]
    scaler = amp.make_grad_scaler(chosen.type)
    print(json.dumps({"device": str(chosen), "distributed": distributed, "calls": calls, "autocast": autocast,
                      "scaler": scaler.is_enabled()}))
    """
)


def test_npu_device_hccl_and_autocast_with_fake_torch_npu():
    """In a fresh process (the npu device type cannot be unregistered): MODEL.DEVICE cuda on an NPU machine picks
    npu:<local rank>, DDP initialises with hccl on that device, AMP autocasts npu to float16 with loss scaling."""
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", LOCAL_RANK="3", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", NPU_RUNTIME_SCRIPT], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["device"] == "npu:3"
    assert report["distributed"] is True
    assert set(report["calls"]["set_device"]) == {"npu:3"}
    assert report["calls"]["init_process_group"] == ["hccl"]
    assert report["autocast"] == [True, "torch.float16"]
    assert report["scaler"] is True


def test_env_npu_script(tmp_path):
    """test/env_npu.sh sources CANN's set_env.sh and sets the Ascend variables; without CANN it changes nothing."""
    toolkit = tmp_path / "ascend-toolkit"
    toolkit.mkdir()
    (toolkit / "set_env.sh").write_text("export FAKE_CANN_SOURCED=1\n")
    show = 'source test/env_npu.sh; echo "$FAKE_CANN_SOURCED|${TASK_QUEUE_ENABLE:-unset}|$LD_LIBRARY_PATH"'
    with_cann = subprocess.run(["bash", "-c", show], cwd=REPO, capture_output=True, text=True, check=True,
                               env=python_first_env(CANN_INSTALL_PATH=str(tmp_path)))
    sourced, task_queue, library_path = with_cann.stdout.strip().split("|")
    assert (sourced, task_queue) == ("1", "1")
    assert str(Path(torch.__file__).parent / "lib") in library_path.split(":")
    without = subprocess.run(["bash", "-c", show], cwd=REPO, capture_output=True, text=True, check=True,
                             env=python_first_env(CANN_INSTALL_PATH=str(tmp_path / "missing")))
    assert without.stdout.strip().split("|")[:2] == ["", "unset"]
    assert "no CANN" in without.stderr
