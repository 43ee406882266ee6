"""NaN/inf inside the forward: a clear error before any deformable-conv kernel reads memory at NaN offsets.

torchvision's kernel crashes the process (segmentation fault) on NaN offsets, so every case that could reach a
kernel runs in a subprocess: a regression shows as a failed test, not as a crashed test session.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL
from helpers import (
    ROOT,
    load_tool,
    small_train_options,
    subprocess_env,
    train_net_command,
    write_small_weights,
    write_tiny_coco,
)
from PIL import Image

from maskrcnn_benchmark.config import get_cfg_defaults
from maskrcnn_benchmark.layers.deform_conv import ModulatedDeformConv, NonFiniteOffsetError, check_finite_offsets
from maskrcnn_benchmark.modeling.detector import build_detection_model


def _run_python(code: str, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=600)


# Each implementation (GLIP_OPS: the PyTorch ones, torchvision's kernel in training; the compiled kernel), with
# and without autograd, for NaN, inf and -inf.
DCN_WITH_BAD_OFFSETS = """
    import os
    import torch
    from maskrcnn_benchmark.layers.deform_conv import ModulatedDeformConv, NonFiniteOffsetError
    torch.manual_seed(0)
    conv = ModulatedDeformConv(4, 6, kernel_size=3, stride=1, padding=1)
    image = torch.randn(2, 4, 12, 10)
    mask = torch.rand(2, 9, 12, 10)
    for implementation in ("pytorch", "compiled"):
        os.environ["GLIP_OPS"] = implementation
        for bad in (float("nan"), float("inf"), -float("inf")):
            for grad in (True, False):
                offset = torch.zeros(2, 18, 12, 10)
                offset[1, 5, 3, 4] = bad
                with torch.set_grad_enabled(grad):
                    try:
                        conv(image.requires_grad_(grad), offset, mask)
                    except NonFiniteOffsetError as error:
                        print("raised:", error)
                    else:
                        raise SystemExit(f"no error for offset {bad} ({implementation}, grad {grad})")
"""


@pytest.mark.slow
def test_nan_or_inf_offsets_raise_a_clear_error_on_every_implementation():
    result = _run_python(DCN_WITH_BAD_OFFSETS)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-3000:]}"
    lines = result.stdout.splitlines()
    assert len(lines) == 12
    assert lines[0].startswith("raised: Non-finite offsets reached ModulatedDeformConv(4, 6, kernel_size=(3, 3), "
                               "stride=1, padding=1")
    assert "1 NaN and 0 infinite of 4320 values (offsets (2, 18, 12, 10), a 12x10 feature map)" in lines[0]
    assert "0 NaN and 1 infinite of 4320 values" in lines[2]
    assert "lower SOLVER.BASE_LR" in lines[0] and "INPUT.PIXEL_MEAN/PIXEL_STD" in lines[0]


def test_offsets_made_non_finite_in_place_after_a_check_are_caught():
    # The check is skipped for the tensor it has just found finite (the three convs of a DyConv level share
    # it), but not once that tensor has been modified.
    conv = ModulatedDeformConv(2, 2, kernel_size=3, padding=1)
    offset = torch.zeros(1, 18, 5, 5)
    mask = torch.ones(1, 9, 5, 5)
    with torch.no_grad():
        conv(torch.randn(1, 2, 5, 5), offset, mask)
        offset[0, 0, 0, 0] = float("nan")
        with pytest.raises(NonFiniteOffsetError, match="1 NaN and 0 infinite"):
            check_finite_offsets(offset, conv)


def test_error_names_the_layer_in_the_model():
    model = torch.nn.Sequential(torch.nn.Identity(), ModulatedDeformConv(2, 2, kernel_size=3, padding=1))
    offset = torch.full((1, 18, 4, 4), float("nan"))
    with pytest.raises(NonFiniteOffsetError) as raised:
        model[1](torch.randn(1, 2, 4, 4), offset, torch.ones(1, 9, 4, 4))
    located = raised.value.located(model, "At iteration 7")
    assert str(located).startswith("At iteration 7 in layer 1: Non-finite offsets reached ModulatedDeformConv(")
    assert "288 NaN and 0 infinite of 288 values" in str(located)


# ---- the trainer and the evaluation on the small model ---------------------------------------------------------

# tools/train_net.py with NaN written into one offset of the first DyConv's offset conv at chosen calls (5 calls,
# one per level, per training iteration).
TRAIN_WITH_NAN_OFFSETS = """
    import sys
    import maskrcnn_benchmark.modeling.detector as detector

    nan_calls = {int(call) for call in sys.argv[1].split(",")}
    build = detector.build_detection_model

    def build_with_nan_offsets(cfg):
        model = build(cfg)
        calls = [0]

        def inject(module, inputs, output):
            calls[0] += 1
            if calls[0] in nan_calls:
                output = output.clone()
                output[0, 3, 1, 1] = float("nan")
                return output

        model.rpn.head.dyhead_tower[2].offset.register_forward_hook(inject)
        return model

    detector.build_detection_model = build_with_nan_offsets
    sys.path.insert(0, "tools")
    import train_net
    train_net.main(sys.argv[2:])
"""
# Level 0 of iteration 3.
NAN_AT_ITERATION_3 = "11"


@pytest.fixture(scope="module")
def small_training_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("nonfinite_training")
    write_tiny_coco(root, num_images=4)
    return root, write_small_weights(root / "small.pth")


def _train_with_nan(root: Path, weights: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = train_net_command(output, small_train_options(weights, max_iter=4) + list(extra))[2:]
    return _run_python(TRAIN_WITH_NAN_OFFSETS, NAN_AT_ITERATION_3, *argv, DATASET=str(root))


@pytest.mark.parametrize("plan", ["cpu", "accelerator"])
@pytest.mark.slow
def test_training_stops_naming_the_iteration_and_the_layer(small_training_data, tmp_path, plan):
    """The cpu plan checks each conv's offsets (a host sync each); the accelerator plan checks them all once per
    head forward and zeroes them meanwhile, so that no kernel reads memory at NaN offsets."""
    root, weights = small_training_data
    result = _train_with_nan(root, weights, tmp_path / "out", "MODEL.EXECUTION_PLAN", plan)
    assert result.returncode == 1, f"exit {result.returncode}: {result.stderr[-3000:]}"
    assert ("NonFiniteLossError: Non-finite values inside the model at iteration 3 in layer "
            "rpn.head.dyhead_tower.2.DyConv.1.conv: Non-finite offsets reached ModulatedDeformConv(64, 64, "
            "kernel_size=(3, 3), stride=1") in result.stderr
    assert "1 NaN and 0 infinite of" in result.stderr
    assert "Training stopped; the last checkpoint is intact. Set SOLVER.SKIP_NONFINITE_STEPS True" in result.stderr
    assert not (tmp_path / "out" / "model_final.pth").exists()


@pytest.mark.slow
def test_training_skips_the_step_with_skip_nonfinite_steps(small_training_data, tmp_path):
    root, weights = small_training_data
    result = _train_with_nan(root, weights, tmp_path / "out", "SOLVER.SKIP_NONFINITE_STEPS", "True")
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-3000:]}"
    log = result.stdout + result.stderr
    assert "Non-finite values inside the model at iteration 3 in layer rpn.head.dyhead_tower.2.DyConv.1.conv" in log
    assert "step skipped (1 so far)" in log
    checkpoint = torch.load(tmp_path / "out" / "model_final.pth", weights_only=False)
    assert checkpoint["skipped_steps"] == 1
    assert checkpoint["loss_history"]["iteration"] == [1, 2, 4]


def test_evaluation_of_non_finite_inputs_stops_with_a_clear_error(tmp_path, small_state_dict):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(1, 255, (64, 80, 3), dtype=np.uint8)).save(
        tmp_path / "images" / "noise.jpg")
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps({
        "images": [{"id": 5, "file_name": "noise.jpg", "width": 80, "height": 64}],
        "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [4, 4, 30, 20], "area": 600,
                         "iscrowd": 0}],
        "categories": [{"id": 1, "name": "dog"}]}))
    task_config = tmp_path / "task.yaml"
    task_config.write_text(f"DATASETS:\n  REGISTER:\n    noise_val:\n      img_dir: '{tmp_path / 'images'}'\n"
                           f"      ann_file: '{ann_file}'\n  TEST: ('noise_val',)\n")
    # A tiny PIXEL_STD turns every pixel into +-inf (the official normalisation divides by it).
    opts = ["MODEL.LANGUAGE_BACKBONE.MODEL_PATH", str(SMALL / "bert"), "MODEL.DEVICE", "cpu",
            "INPUT.PIXEL_STD", "[1e-45,1e-45,1e-45]", "INPUT.MIN_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0"]
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(SMALL / "config.yaml"))
    cfg.merge_from_list(opts)
    model = build_detection_model(cfg)
    model.load_state_dict(small_state_dict)
    tool = load_tool("tools/test_grounding_net.py")
    argv = ["--config-file", str(SMALL / "config.yaml"), "--task_config", str(task_config), *opts,
            "OUTPUT_DIR", str(tmp_path / "out"), "TEST.EVAL_TASK", "detection"]
    with pytest.raises(NonFiniteOffsetError, match=r"^Evaluation stopped: NaN/inf inside the model on the images "
                                                   r"\['noise.jpg'\] \(dataset indices \[0\]\) in layer "
                                                   r"rpn.head.dyhead_tower.2.DyConv.1.conv: Non-finite offsets"):
        tool.main(argv, model=model)
    assert not (tmp_path / "out" / "inference" / "noise_val" / "bbox.json").exists()
