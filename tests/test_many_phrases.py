"""More phrases than the head's 80 class channels: long demo prompts and chunked evaluation of many categories."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL
from helpers import load_tool
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn_benchmark.config import get_cfg_defaults
from maskrcnn_benchmark.engine.predictor_glip import GLIPPredictor
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.modeling.rpn.inference import token_to_class_scores
from maskrcnn_benchmark.text import load_shipped_tokenizer

# A low score threshold gives the random-weight small model detections of many phrases on a noise image.
OPTS = ["MODEL.LANGUAGE_BACKBONE.MODEL_PATH", str(SMALL / "bert"), "MODEL.DEVICE", "cpu",
        "MODEL.ATSS.INFERENCE_TH", "0.01"]


def _cfg(*extra: str):
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(SMALL / "config.yaml"))
    cfg.merge_from_list(OPTS + list(extra))
    cfg.freeze()
    return cfg


def _single_token_words(count: int) -> list:
    """`count` distinct lower-case words that are one WordPiece token each (two tokens per phrase with " . ")."""
    vocab = load_shipped_tokenizer().get_vocab()
    words = sorted((word for word in vocab if word.isalpha() and len(word) > 3), key=vocab.get)
    return words[2000:2000 + count]


@pytest.fixture(scope="module")
def small_model(small_state_dict):
    torch.manual_seed(0)
    model = build_detection_model(_cfg())
    model.load_state_dict(small_state_dict)
    return model.eval()


def test_class_scores_widen_beyond_num_classes_and_keep_the_official_layout():
    token_probs = torch.rand(2, 5, 12)
    positive_map = {1: [1], 3: [2, 3], 100: [7, 8, 9]}
    scores = token_to_class_scores(token_probs, positive_map, num_classes=80)
    assert scores.shape == (2, 5, 100)
    torch.testing.assert_close(scores[..., 99], token_probs[..., 7:10].mean(-1))
    torch.testing.assert_close(scores[..., 2], token_probs[..., 2:4].mean(-1))
    assert not scores[..., [1, 3, 50, 98]].any()
    # Labels within num_classes: the official (N, A, num_classes) matrix.
    assert token_to_class_scores(token_probs, {1: [1], 3: [2, 3]}, num_classes=80).shape == (2, 5, 80)


def test_predictor_detects_100_phrases_of_a_200_token_prompt(small_model):
    names = _single_token_words(100)
    predictor = GLIPPredictor(_cfg("INPUT.MIN_SIZE_TEST", "160"), model=small_model)
    text, _, label_to_tokens = predictor.prompt(names)
    assert max(max(tokens) for tokens in label_to_tokens.values()) == 199  # [CLS] + 100 x (word, ".")
    image = np.random.default_rng(3).integers(0, 200, (120, 100, 3), dtype=np.uint8)
    prediction = predictor.predict(image, names, threshold=0.0)
    labels = prediction.get_field("labels")
    assert len(prediction) == 100  # DETECTIONS_PER_IMG
    assert int(labels.max()) > 80 and int(labels.min()) >= 1
    assert prediction.get_field("label_names") == [names[label - 1] for label in labels.tolist()]


CATEGORY_COUNT = 130
IMAGES = [{"id": 1, "file_name": "a.jpg", "width": 96, "height": 64},
          {"id": 2, "file_name": "b.jpg", "width": 64, "height": 80}]
# (image id, category id, xywh box): categories of the first and of the last prompt chunk.
BOXES = [(1, 125, [10, 8, 40, 30]), (1, 3, [50, 20, 30, 30]), (2, 129, [5, 10, 40, 50]), (2, 90, [20, 5, 30, 20])]


def _write_many_category_dataset(folder: Path) -> Path:
    """JPEG noise images and a COCO instances json with 130 categories; returns the task config."""
    (folder / "images").mkdir()
    rng = np.random.default_rng(1)
    for info in IMAGES:
        pixels = rng.integers(0, 255, (info["height"], info["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / info["file_name"], quality=90)
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(_single_token_words(CATEGORY_COUNT))]
    annotations = [{"id": k + 1, "image_id": image_id, "category_id": category, "bbox": box,
                    "area": box[2] * box[3], "iscrowd": 0} for k, (image_id, category, box) in enumerate(BOXES)]
    ann_file = folder / "instances.json"
    ann_file.write_text(json.dumps({"images": IMAGES, "annotations": annotations, "categories": categories}))
    task_config = folder / "task.yaml"
    task_config.write_text(
        "DATASETS:\n"
        f"  REGISTER:\n    many_val:\n      img_dir: '{folder / 'images'}'\n      ann_file: '{ann_file}'\n"
        "  TEST: ('many_val',)\n"
    )
    return task_config


def test_chunked_evaluation_of_130_categories_runs_through_pycocotools(small_model, tmp_path):
    task_config = _write_many_category_dataset(tmp_path)
    tool = load_tool("tools/test_grounding_net.py")
    argv = ["--config-file", str(SMALL / "config.yaml"), "--task_config", str(task_config), *OPTS,
            "OUTPUT_DIR", str(tmp_path / "out"), "TEST.EVAL_TASK", "detection", "INPUT.MIN_SIZE_TEST", "64",
            "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "1", "TEST.CHUNKED_EVALUATION", "20"]
    results = tool.main(argv, model=small_model)
    coco_results, detections = results["many_val"]
    written = json.loads((tmp_path / "out" / "inference" / "many_val" / "bbox.json").read_text())
    assert written == detections["bbox"]
    categories = {d["category_id"] for d in written}
    assert max(categories) > 120 and min(categories) <= 20  # detections from the first and the last chunk
    assert {d["image_id"] for d in written} == {1, 2}
    # The AP the tool reports is pycocotools' on the written file.
    gt = COCO(str(tmp_path / "instances.json"))
    evaluator = COCOeval(gt, gt.loadRes(written), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert coco_results.results["bbox"]["AP"] == pytest.approx(evaluator.stats[0])
