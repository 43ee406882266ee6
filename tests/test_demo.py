"""The inference API (GLIPPredictor) and tools/demo.py on the small golden model."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL
from helpers import load_tool, small_predictor_cfg
from PIL import Image

from maskrcnn_benchmark.data.transforms import build_transforms
from maskrcnn_benchmark.engine.predictor_glip import GLIPPredictor, build_caption, draw_predictions
from maskrcnn_benchmark.structures.image_list import to_image_list
from maskrcnn_benchmark.utils.drawing import BLACK, WHITE, draw_labelled_boxes, text_colour_on

RED = (255, 0, 0)
# A lower score threshold gives the random-weight model detections on a noise image.
OPTS = ["MODEL.LANGUAGE_BACKBONE.MODEL_PATH", str(SMALL / "bert"), "MODEL.DEVICE", "cpu",
        "INPUT.MIN_SIZE_TEST", "160", "MODEL.ATSS.INFERENCE_TH", "0.01"]


def _cfg():
    return small_predictor_cfg(OPTS)


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


def _text_on_fill(drawn: np.ndarray, fill, radius: int = 3) -> tuple:
    """(top, bottom, left, right) of the label text, checked to sit on a filled `fill` box.

    Text pixels are near white (the noise images stay below 200, also when enlarged); each must have a `fill`
    pixel within `radius` pixels, which red text on the image, or white text without a filled box, would not give.
    """
    text = (drawn >= 220).all(axis=-1)
    filled = np.pad((drawn == fill).all(axis=-1), radius)
    near_fill = np.zeros_like(text)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            near_fill |= filled[dy:dy + text.shape[0], dx:dx + text.shape[1]]
    assert text.sum() >= 20, "no label text"
    assert near_fill[text].all(), "label text outside a filled box"
    rows, cols = np.nonzero(text)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def test_draw_predictions_outlines_the_boxes_and_labels_them_on_a_filled_box(predictor):
    image = _noise_image()
    prediction = predictor.predict(image, ["person", "car"], threshold=0.0)[:1]
    drawn = np.asarray(draw_predictions(image, prediction))
    x1, y1, x2, y2 = prediction.bbox[0].tolist()
    red = (drawn == RED).all(axis=-1)
    assert not (image == RED).all(axis=-1).any()
    # The outline's corners are red (PIL truncates float coordinates).
    assert red[int(y1), int(x1)] and red[int(y2), int(x2)]
    # The label: white text (contrasting) on a filled red box at the box's top edge.
    top, bottom, left, right = _text_on_fill(drawn, RED)
    assert int(y1) - 30 <= top <= int(y1) + 30 and bottom - top >= 6 and right - left >= 30


def test_draw_predictions_enlarges_small_images_to_a_readable_size(predictor):
    image = _noise_image(64, 48)
    prediction = predictor.predict(image, ["person", "car"], threshold=0.0)[:1]
    drawn = draw_predictions(image, prediction, min_side=512)
    assert drawn.size == (48 * 11, 64 * 11)  # the smallest whole factor giving a short side >= 512
    x1, y1, x2, y2 = (v * 11 for v in prediction.bbox[0].tolist())
    red = (np.asarray(drawn) == RED).all(axis=-1)
    assert red[int(y2), int(x2)] and red[int(y2), int(x1)]


def test_label_text_contrasts_with_its_background():
    assert text_colour_on(RED) == WHITE
    assert text_colour_on((0, 220, 0)) == BLACK
    assert text_colour_on((235, 215, 40)) == BLACK  # the synthetic yellow
    assert text_colour_on((40, 70, 220)) == WHITE  # the synthetic blue


def test_labels_of_coinciding_boxes_are_stacked_not_overlapping():
    canvas = Image.fromarray(np.full((300, 400, 3), 90, np.uint8))
    boxes = [[50, 40, 250, 200]] * 3
    rects = draw_labelled_boxes(canvas, boxes, ["red circle 0.91", "blue square 0.45", "green triangle 0.30"], RED)
    for k, a in enumerate(rects):
        for b in rects[k + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    # The best label sits on the box's top edge, outside the box; two fit above it, the third goes inside.
    assert (rects[0][0], rects[0][3]) == (50, 40)
    assert rects[1][3] == rects[0][1] and rects[2][1] == 40
    # Each label is visible in the pixels: white text on red inside each of the three rectangles.
    drawn = np.asarray(canvas)
    for left, top, right, bottom in rects:
        top_, bottom_, left_, right_ = _text_on_fill(drawn[top:bottom, left:right], RED)
        assert bottom_ - top_ >= 6 and right_ - left_ >= 30


def _load_demo():
    return load_tool("tools/demo.py")


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
    # 100x120 is enlarged 6 times: the short side reaches the readable 512 pixels.
    assert drawn.shape == (120 * 6, 100 * 6, 3)
    red = (drawn == RED).all(axis=-1)
    assert red.any() and not (image == RED).all(axis=-1).any()
    # The same detections as the API gives; red pixels lie inside the best box, and labels have white text.
    predictor = GLIPPredictor(_cfg(), weight=str(weight_file))
    best = predictor.predict(image, "person. car", threshold=0.0)
    x1, y1, x2, y2 = (6 * v for v in best.bbox[0].tolist())
    inside = red[int(np.floor(y1)):int(np.ceil(y2)) + 1, int(np.floor(x1)):int(np.ceil(x2)) + 1]
    assert inside.any()
    _text_on_fill(drawn, RED)


def _assert_same_detections(got, expected):
    assert got.size == expected.size and len(got) == len(expected) > 0
    torch.testing.assert_close(got.bbox, expected.bbox, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.get_field("scores"), expected.get_field("scores"), atol=1e-5, rtol=1e-5)
    assert got.get_field("label_names") == expected.get_field("label_names")


def test_predict_batch_with_a_prompt_per_image_equals_one_by_one(predictor, monkeypatch):
    # Two sizes (two padded sizes) and three different prompts; two images share a size and go in one forward.
    images = [_noise_image(120, 100), np.ascontiguousarray(_noise_image(120, 100)[::-1]), _noise_image(64, 48)]
    prompts = [["person", "car", "dog"], "a red tooth brush. hot dog", ["bicycle"]]
    batch_sizes = []
    forward = predictor.model.forward
    monkeypatch.setattr(predictor.model, "forward",
                        lambda images, **kw: batch_sizes.append(len(images.image_sizes)) or forward(images, **kw))
    batched = predictor.predict_batch(images, prompts, threshold=0.0)
    assert sorted(batch_sizes) == [1, 2]
    for image, prompt, got in zip(images, prompts, batched):
        _assert_same_detections(got, predictor.predict(image, prompt, threshold=0.0))
    assert batched[1].get_field("label_names")[0] in ("a red tooth brush", "hot dog")


def test_predict_batch_refuses_mismatched_lists(predictor):
    with pytest.raises(ValueError, match="2 images but 1 prompts: pass one prompt per image"):
        predictor.predict_batch([_noise_image(), _noise_image()], ["person"])


def test_demo_over_a_folder_writes_a_picture_per_image_and_the_detections_json(tmp_path, weight_file, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    arrays = {"a.png": _noise_image(120, 100), "b.jpg": _noise_image(64, 48), "c.png": _noise_image(120, 100)[::-1]}
    for name, array in arrays.items():
        Image.fromarray(np.ascontiguousarray(array)).save(folder / name, quality=95)
    (folder / "notes.txt").write_text("not an image")
    extra = tmp_path / "extra.png"
    Image.fromarray(_noise_image(50, 70)).save(extra)
    out_dir = tmp_path / "out"
    _load_demo().main([str(folder), "person. car", "--add-image", str(extra), "--config-file",
                       str(SMALL / "config.yaml"), "--weight", str(weight_file), "--out-dir", str(out_dir),
                       "--threshold", "0.05", "--batch-size", "2", *OPTS])
    assert "4/4" in capsys.readouterr().err  # the progress bar reached the end
    document = json.loads((out_dir / "detections.json").read_text())
    inputs = [str(folder / name) for name in sorted(arrays)] + [str(extra)]
    assert [entry["image"] for entry in document["images"]] == inputs
    predictor = GLIPPredictor(_cfg(), weight=str(weight_file))
    for entry in document["images"]:
        with Image.open(entry["image"]) as image:
            expected = predictor.predict(image, "person. car", threshold=0.05)
            assert (entry["width"], entry["height"]) == image.size
        records = [r for r in document["detections"] if r["image"] == entry["image"]]
        assert len(records) == len(expected) == entry["detections"] > 0
        assert [r["phrase"] for r in records] == expected.get_field("label_names")
        assert [r["label"] for r in records] == expected.get_field("labels").tolist()
        np.testing.assert_allclose([r["score"] for r in records], expected.get_field("scores").numpy(), atol=1e-5)
        np.testing.assert_allclose([r["box"] for r in records], expected.bbox.numpy(), atol=1e-3)
        picture = out_dir / (Path(entry["image"]).stem + "_glip.png")
        assert entry["picture"] == str(picture)
        with Image.open(picture) as png:
            assert png.format == "PNG" and (np.asarray(png.convert("RGB")) == RED).all(axis=-1).any()
    assert sorted(p.name for p in out_dir.iterdir()) == ["a_glip.png", "b_glip.png", "c_glip.png",
                                                         "detections.json", "extra_glip.png"]


def test_demo_refuses_an_empty_folder_and_a_picture_over_an_input(tmp_path, weight_file):
    args = ["person", "--config-file", str(SMALL / "config.yaml"), "--weight", str(weight_file), *OPTS]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"The folder .*empty holds no image file"):
        _load_demo().main([str(tmp_path / "empty"), *args])
    image_file = tmp_path / "image.png"
    Image.fromarray(_noise_image()).save(image_file)
    with pytest.raises(ValueError, match=r"would overwrite the input image .*image.png"):
        _load_demo().main([str(image_file), *args, "--out", str(image_file)])
