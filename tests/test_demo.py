"""The inference API (GLIPPredictor) and tools/demo.py on the small golden model."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL
from maskrcnn_benchmark.config import get_cfg_defaults
from maskrcnn_benchmark.data.transforms import build_transforms
from maskrcnn_benchmark.engine.predictor_glip import GLIPPredictor, build_caption, draw_predictions
from maskrcnn_benchmark.structures.image_list import to_image_list

ROOT = Path(__file__).resolve().parents[1]
RED = (255, 0, 0)
# A lower score threshold gives the random-weight model detections on a noise image.
OPTS = ["MODEL.LANGUAGE_BACKBONE.MODEL_PATH", str(SMALL / "bert"), "MODEL.DEVICE", "cpu",
        "INPUT.MIN_SIZE_TEST", "160", "MODEL.ATSS.INFERENCE_TH", "0.01"]


def _cfg():
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(SMALL / "config.yaml"))
    cfg.merge_from_list(OPTS)
    cfg.freeze()
    return cfg


def _noise_image(height: int = 120, width: int = 100) -> np.ndarray:
    # Values below 200: no pixel is pure red before drawing.
    return np.random.default_rng(3).integers(0, 200, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory, small_state_dict) -> Path:
    path = tmp_path_factory.mktemp("weights") / "small.pth"
    torch.save({"model": small_state_dict}, path)
    return path


@pytest.fixture(scope="module")
def predictor(weight_file) -> GLIPPredictor:
    return GLIPPredictor(_cfg(), weight=str(weight_file))


def test_build_caption_for_names_and_for_text():
    text, names, spans = build_caption(["person", "hot dog"])
    assert text == "person . hot dog . "
    assert names == ["person", "hot dog"]
    assert [text[b:e] for ((b, e),) in spans] == names
    text, names, spans = build_caption("a person.  red car . ")
    assert text == "a person.  red car . "
    assert names == ["a person", "red car"]
    assert [text[b:e] for ((b, e),) in spans] == names


def test_prompt_maps_each_name_to_its_tokens(predictor):
    text, names, label_to_tokens = predictor.prompt(["person", "tooth brush", "dog"])
    assert text == "person . tooth brush . dog . "
    # [CLS] person . tooth brush . dog .
    assert label_to_tokens == {1: [1], 2: [3, 4], 3: [6]}


def test_predict_equals_a_direct_model_call_in_original_pixels(predictor, small_state_dict):
    image = _noise_image()
    names = ["person", "car", "dog"]
    got = predictor.predict(image, names, threshold=0.0)

    cfg = _cfg()
    tensor = build_transforms(cfg, is_train=False)(Image.fromarray(image))
    assert tuple(tensor.shape[1:]) == (192, 160)  # short side 100 -> 160
    text, _, label_to_tokens = predictor.prompt(names)
    with torch.no_grad():
        direct = predictor.model(to_image_list([tensor], cfg.DATALOADER.SIZE_DIVISIBILITY), captions=[text],
                                 positive_map=label_to_tokens)[0]
    assert len(direct) >= 3
    direct = direct.resize((100, 120))
    order = direct.get_field("scores").argsort(descending=True)
    assert got.size == (100, 120)
    assert len(got) == len(direct)
    torch.testing.assert_close(got.bbox, direct.bbox[order])
    torch.testing.assert_close(got.get_field("scores"), direct.get_field("scores")[order])
    assert got.get_field("label_names") == [names[k - 1] for k in direct.get_field("labels")[order].tolist()]

    threshold = float(got.get_field("scores")[len(got) // 2])
    kept = predictor.predict(Image.fromarray(image), names, threshold=threshold)
    assert len(kept) == len(got) // 2
    assert bool((kept.get_field("scores") > threshold).all())


def test_draw_predictions_outlines_the_boxes(predictor):
    image = _noise_image()
    prediction = predictor.predict(image, ["person", "car"], threshold=0.0)[:1]
    drawn = np.asarray(draw_predictions(image, prediction))
    x1, y1, x2, y2 = prediction.bbox[0].tolist()
    red = (drawn == RED).all(axis=-1)
    assert not (image == RED).all(axis=-1).any()
    # The outline's corners are red; nothing was drawn far from the box (the label starts inside it).
    assert red[int(y1), int(x1)] and red[int(y2), int(x2)]  # PIL truncates float coordinates
    rows, cols = np.nonzero(red)
    assert rows.min() >= int(y1) - 1 and cols.min() >= int(x1) - 1


def _load_demo():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "tools" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_writes_a_png_with_the_boxes(tmp_path, weight_file):
    image = _noise_image()
    image_file = tmp_path / "image.png"
    Image.fromarray(image).save(image_file)
    out = tmp_path / "out.png"
    _load_demo().main([str(image_file), "person. car", "--config-file", str(SMALL / "config.yaml"),
                       "--weight", str(weight_file), "--out", str(out), "--threshold", "0.0", *OPTS])
    with Image.open(out) as png:
        assert png.format == "PNG"
        drawn = np.asarray(png.convert("RGB"))
    assert drawn.shape == image.shape
    red = (drawn == RED).all(axis=-1)
    assert red.any() and not (image == RED).all(axis=-1).any()
    # The same detections as the API gives; red pixels lie inside the best box.
    predictor = GLIPPredictor(_cfg(), weight=str(weight_file))
    best = predictor.predict(image, "person. car", threshold=0.0)
    x1, y1, x2, y2 = best.bbox[0].tolist()
    inside = red[int(np.floor(y1)):int(np.ceil(y2)) + 1, int(np.floor(x1)):int(np.ceil(x2)) + 1]
    assert inside.any()
