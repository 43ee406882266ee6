"""ONNX export of the small golden model: onnxruntime on the CPU gives the PyTorch detections (within 1e-3)."""
import contextlib
import importlib.util
import io

import numpy as np
import pytest
import torch
from conftest import SMALL
from helpers import load_tool, small_predictor_cfg
from PIL import Image

from maskrcnn_benchmark.engine.predictor_glip import GLIPPredictor

MISSING = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    bool(MISSING), reason=f"ONNX export needs {', '.join(MISSING)}: pip install -e '.[export]'")]

OPTS = ["MODEL.LANGUAGE_BACKBONE.MODEL_PATH", str(SMALL / "bert"), "MODEL.DEVICE", "cpu",
        "INPUT.MIN_SIZE_TEST", "160", "MODEL.ATSS.INFERENCE_TH", "0.01"]
# A 120x100 image is resized to 192x160 (short side 160), a multiple of the size divisibility (32).
EXPORT_SIZE = (192, 160)


def _cfg():
    return small_predictor_cfg(OPTS)


def _images():
    rng = np.random.default_rng(5)
    return [Image.fromarray(rng.integers(0, 200, (120, 100, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 200, (100, 90, 3), dtype=np.uint8))]  # 178x160, padded to 192x160


@pytest.fixture(scope="module")
def exported(tmp_path_factory, small_state_dict):
    """tools/export_onnx.py run once: ONNX file, torch.export program and its --check printout."""
    folder = tmp_path_factory.mktemp("onnx")
    weight = folder / "small.pth"
    torch.save({"model": small_state_dict}, weight)
    image_file = folder / "image.png"
    _images()[0].save(image_file)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        load_tool("tools/export_onnx.py").main([
            "--config-file", str(SMALL / "config.yaml"), "--weight", str(weight), "--out", str(folder / "small.onnx"),
            "--size", *map(str, EXPORT_SIZE), "--program", str(folder / "small.pt2"),
            "--check", str(image_file), "person. car", "--threshold", "0.02", *OPTS])
    return GLIPPredictor(_cfg(), weight=str(weight)), str(folder / "small.onnx"), folder, printed.getvalue()


def test_export_tool_checks_onnxruntime_against_pytorch(exported):
    *_, printed = exported
    lines = printed.strip().splitlines()
    assert len(lines) >= 3 and lines[0].split()[0] in ("person", "car")
    assert lines[-1].startswith("largest difference between onnxruntime and PyTorch")
    assert float(lines[-1].split()[-1]) < 1e-3


def test_onnxruntime_gives_the_pytorch_detections(exported):
    from maskrcnn_benchmark.engine.onnx_export import ONNXRunner

    predictor, path, *_ = exported
    runner = ONNXRunner(_cfg(), path)
    assert runner.image_size == EXPORT_SIZE
    image = _images()[0]
    for prompt in (["person", "car", "dog"], "a red tooth brush. hot dog"):
        expected = predictor.predict(image, prompt, threshold=0.02)
        got = runner.predict(image, prompt, threshold=0.02)
        assert len(got) == len(expected) >= 3
        np.testing.assert_allclose(got.get_field("scores").numpy(), expected.get_field("scores").numpy(), atol=1e-3)
        np.testing.assert_allclose(got.bbox.numpy(), expected.bbox.numpy(), atol=1e-3)
        assert got.get_field("label_names") == expected.get_field("label_names")


def test_onnx_runner_pads_smaller_images_and_refuses_larger_ones(exported):
    from maskrcnn_benchmark.engine.onnx_export import ONNXRunner

    predictor, path, *_ = exported
    runner = ONNXRunner(_cfg(), path)
    small = _images()[1]
    got = runner.predict_batch([small], [["person", "car"]], threshold=0.02)[0]
    assert got.size == small.size and len(got) > 0
    # PyTorch pads it to 192x160 too (the size divisibility): the same zeros, the same detections.
    reference = predictor.predict(small, ["person", "car"], threshold=0.02)
    assert len(got) == len(reference)
    np.testing.assert_allclose(got.get_field("scores").numpy(), reference.get_field("scores").numpy(), atol=1e-3)
    large = Image.fromarray(np.zeros((100, 200, 3), np.uint8))  # 160x320 > 192x160
    with pytest.raises(ValueError, match="larger than the exported 192x160: export for a larger size"):
        runner.predict(large, ["person"])


def test_torch_export_program_gives_the_head_outputs(exported):
    from maskrcnn_benchmark.text import tokenize_captions

    predictor, _, folder, _ = exported
    program = torch.export.load(str(folder / "small.pt2"))
    tokens = tokenize_captions(predictor.tokenizer, ["person . car . "], 256, pad_max=True)
    image = torch.randn(1, 3, *EXPORT_SIZE)
    got = program.module()(image, tokens["input_ids"], tokens["attention_mask"])
    model = predictor.model
    with torch.no_grad():
        language = model.encode_language(tokens)
        expected = model.rpn.head(model.backbone(image), language)
    for value, reference in zip(got, (*expected.box_regression, *expected.centerness, *expected.dot_product_logits)):
        torch.testing.assert_close(value, reference, atol=1e-4, rtol=1e-4)


def test_export_refuses_a_size_off_the_divisibility_and_a_special_tokens_mask():
    from maskrcnn_benchmark.engine.onnx_export import GLIPInferenceGraph, trace_inference_graph
    from maskrcnn_benchmark.modeling.detector import build_detection_model

    cfg = _cfg().clone()
    cfg.defrost()
    cfg.MODEL.LANGUAGE_BACKBONE.MASK_SPECIAL = True
    model = build_detection_model(cfg)
    with pytest.raises(ValueError, match="Export size 190x160 is not a multiple of DATALOADER.SIZE_DIVISIBILITY"):
        trace_inference_graph(model, (190, 160))
    with pytest.raises(ValueError, match="MASK_SPECIAL is True: the exported graph takes no special_tokens_mask"):
        GLIPInferenceGraph(model)
