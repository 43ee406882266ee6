"""Flickr30k phrase grounding: MDETR-format data, TEST.EVAL_TASK grounding and Recall@1/5/10 checked by hand."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL
from helpers import load_tool
from PIL import Image
from torch import nn

from maskrcnn_benchmark.config import get_cfg_defaults
from maskrcnn_benchmark.config.compat import check_supported
from maskrcnn_benchmark.data.build import make_data_loader
from maskrcnn_benchmark.data.evaluation.flickr_eval import FlickrGroundTruth, evaluate_flickr_recall, parse_sentences
from maskrcnn_benchmark.engine.evaluation import evaluate_model
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.text import load_shipped_tokenizer

ROOT = Path(__file__).resolve().parents[1]

# Flickr30k Entities files of two images. Image 1000: a man, his hat, two dogs (two boxes) and, in the second
# sentence, a scene phrase without a box (not evaluated). Image 2000: a car and two people (two boxes).
SENTENCES = {
    "1000": "[/EN#1/people A man] in [/EN#2/clothing a red hat] walks [/EN#3/animals two dogs] .\n"
            "[/EN#1/people A person] is outside in [/EN#9/scene the park] .\n",
    "2000": "[/EN#5/vehicles A car] and [/EN#6/people people] .\n",
}
BOXES = {"1000": {"1": [[10, 10, 40, 70]], "2": [[15, 5, 35, 20]], "3": [[50, 50, 70, 70], [75, 50, 95, 70]]},
         "2000": {"5": [[0, 0, 30, 30]], "6": [[35, 0, 45, 30], [50, 0, 59, 30]]}}
SIZES = {"1000": (100, 80), "2000": (60, 60)}
# MDETR's json: one image entry per sentence, the evaluated phrases' character spans in tokens_positive_eval.
SENTENCE_ENTRIES = [
    ("1000", 0, "A man in a red hat walks two dogs .", [[[0, 5]], [[9, 18]], [[25, 33]]]),
    ("1000", 1, "A person is outside in the park .", [[[0, 8]]]),
    ("2000", 0, "A car and people .", [[[0, 5]], [[10, 16]]]),
]
# The fake model's ranked boxes per (caption, phrase), original pixels, xyxy, best first.
RANKED = {
    "a man": [[10, 10, 40, 70]],                                    # right at rank 1
    "a red hat": [[60, 0, 80, 10], [15, 5, 35, 20]],                # right at rank 2
    "two dogs": [[75, 50, 95, 70], [50, 50, 95, 70]],               # one dog at 1; the enclosing box at 2
    "a person": [],                                                 # nothing
    "a car": [[40, 40, 50, 50]] * 6 + [[0, 0, 30, 30]],             # right at rank 7
    "people": [[35, 0, 45, 30]],                                    # one of the two people at 1
}
# By hand. Separate ("any box", IoU >= 0.5 with one of the phrase's boxes) over the 6 evaluated phrases:
#   @1 man, dogs, people = 3; @5 + hat = 4; @10 + car = 5; all boxes = 5.
# Merged (IoU with the box enclosing the phrase's boxes): dogs' rank-1 box has IoU 400/900 with [50,50,95,70],
#   found at rank 2; people's only box has IoU 300/720 with [35,0,59,30], never found.
#   @1 man = 1; @5 + hat, dogs = 3; @10 + car = 4; all = 4.
SEPARATE = {"Recall@1_all": 3 / 6, "Recall@5_all": 4 / 6, "Recall@10_all": 5 / 6, "Upper_bound_all": 5 / 6,
            "Recall@1_people": 2 / 3, "Recall@10_people": 2 / 3, "Recall@1_clothing": 0.0, "Recall@5_clothing": 1.0,
            "Recall@5_vehicles": 0.0, "Recall@10_vehicles": 1.0, "Recall@1_animals": 1.0}
MERGED = {"Recall@1_all": 1 / 6, "Recall@5_all": 3 / 6, "Recall@10_all": 4 / 6, "Upper_bound_all": 4 / 6,
          "Recall@1_animals": 0.0, "Recall@5_animals": 1.0, "Upper_bound_people": 1 / 3}


def _write_entities(folder: Path) -> Path:
    (folder / "Sentences").mkdir(parents=True)
    (folder / "Annotations").mkdir()
    (folder / "test.txt").write_text("1000\n2000\n")
    for image_id, text in SENTENCES.items():
        (folder / "Sentences" / f"{image_id}.txt").write_text(text)
        objects = "".join(
            f"<object><name>{pid}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
            f"<ymax>{b[3]}</ymax></bndbox></object>" for pid, boxes in BOXES[image_id].items() for b in boxes)
        if image_id == "1000":
            objects += "<object><name>9</name><nobndbox>0</nobndbox><scene>1</scene></object>"
        width, height = SIZES[image_id]
        (folder / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"{objects}</annotation>")
    return folder


def _write_mdetr_set(folder: Path) -> Path:
    """The images and MDETR's final_flickr_separateGT_test.json; returns the json."""
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for entry_id, (image_id, sentence_id, caption, spans) in enumerate(SENTENCE_ENTRIES):
        width, height = SIZES[image_id]
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
            folder / "images" / f"{image_id}.jpg")
        images.append({"id": entry_id, "file_name": f"{image_id}.jpg", "width": width, "height": height,
                       "caption": caption, "tokens_positive_eval": spans, "sentence_id": sentence_id,
                       "original_img_id": int(image_id), "dataset_name": "flickr"})
        box = BOXES[image_id]["1" if image_id == "1000" else "5"][0]
        annotations.append({"id": entry_id + 1, "image_id": entry_id, "category_id": 1, "iscrowd": 0,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "area": 1,
                            "tokens_positive": spans[0]})
    ann_file = folder / "final_flickr_separateGT_test.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": [{"id": 1, "name": "object", "supercategory": "object"}]}))
    return ann_file


def _predictions() -> list:
    return [{"image_id": image_id, "sentence_id": sentence_id,
             "boxes": [RANKED[caption[b:e].lower()] for ((b, e),) in spans]}
            for image_id, sentence_id, caption, spans in SENTENCE_ENTRIES]


def test_sentence_file_phrases_and_types(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("[/EN#3/animals/other two dogs] and [/EN#7/people a boy] play .\n")
    assert parse_sentences(str(path)) == [[
        {"phrase": "two dogs", "phrase_id": "3", "phrase_type": ["animals", "other"]},
        {"phrase": "a boy", "phrase_id": "7", "phrase_type": ["people"]}]]


@pytest.mark.parametrize("merge,expected", [(False, SEPARATE), (True, MERGED)], ids=["separate", "merged"])
def test_recall_matches_hand_computed_values(tmp_path, merge, expected):
    ground_truth = FlickrGroundTruth(str(_write_entities(tmp_path)), "test", merge=merge)
    assert sorted(ground_truth.phrases) == [("1000", 0), ("1000", 1), ("2000", 0)]  # the scene phrase is left out
    scores = evaluate_flickr_recall(ground_truth, _predictions())
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value), name


def test_missing_or_misaligned_predictions_are_refused(tmp_path):
    ground_truth = FlickrGroundTruth(str(_write_entities(tmp_path)), "test")
    with pytest.raises(ValueError, match=r"No Flickr30k prediction for 1 evaluated sentences.*\('2000', 0\)"):
        evaluate_flickr_recall(ground_truth, _predictions()[:2])
    wrong = _predictions()
    wrong[0]["boxes"] = wrong[0]["boxes"][:2]
    with pytest.raises(ValueError, match=r"image 1000 sentence 0: 2 box lists for 3 evaluated phrases"):
        evaluate_flickr_recall(ground_truth, wrong)
    with pytest.raises(FileNotFoundError, match=r"val\.txt"):
        FlickrGroundTruth(str(tmp_path), "val")


class PhraseFakeDetector(nn.Module):
    """Returns the RANKED boxes of each phrase it is asked for (found by decoding the phrase's tokens), scaled
    to the input size, so a wrong phrase -> label -> token mapping or a wrong image scale loses them."""

    def __init__(self):
        super().__init__()
        self.tokenizer = load_shipped_tokenizer()
        self.batch_sizes = []

    def forward(self, images, captions=None, positive_map=None, tokenized=None):
        self.batch_sizes.append(len(images.image_sizes))
        (height, width), caption = images.image_sizes[0], captions[0]
        image_id = next(e[0] for e in SENTENCE_ENTRIES if e[2] == caption)
        boxes, scores, labels = [], [], []
        for label, tokens in positive_map.items():
            ranked = RANKED[self.tokenizer.decode(tokenized["input_ids"][0][tokens])]
            boxes += ranked
            scores += [0.9 - 0.1 * rank for rank in range(len(ranked))]
            labels += [label] * len(ranked)
        boxlist = BoxList(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), SIZES[image_id], mode="xyxy")
        boxlist = boxlist.resize((width, height))
        boxlist.add_field("scores", torch.tensor(scores))
        boxlist.add_field("labels", torch.tensor(labels, dtype=torch.int64))
        return [boxlist]


def _flickr_task(tmp_path: Path, gt_type: str) -> Path:
    ann_file = _write_mdetr_set(tmp_path / "data")
    entities = _write_entities(tmp_path / "flickr30k")
    official = (ROOT / "configs" / "flickr" / "test.yaml").read_text()
    task = tmp_path / "flickr_test.yaml"
    register = (f"DATASETS:\n  REGISTER:\n    flickr30k_test:\n      img_dir: '{tmp_path / 'data' / 'images'}'\n"
                f"      ann_file: '{ann_file}'\n      entities_dir: '{entities}'\n")
    official = official.replace("DATASETS:\n", register, 1)
    task.write_text(official.replace('FLICKR_GT_TYPE: "separate"', f'FLICKR_GT_TYPE: "{gt_type}"'))
    return task


def _tool_argv(task: Path, out: Path, *extra: str) -> list:
    return ["--config-file", str(SMALL / "config.yaml"), "--task_config", str(task),
            "MODEL.LANGUAGE_BACKBONE.MODEL_PATH", str(SMALL / "bert"), "MODEL.DEVICE", "cpu",
            "OUTPUT_DIR", str(out), "INPUT.MIN_SIZE_TEST", "160", "DATALOADER.NUM_WORKERS", "0", *extra]


@pytest.mark.parametrize("gt_type,expected", [("separate", SEPARATE), ("merged", MERGED)], ids=["separate", "merged"])
def test_official_flickr_config_evaluates_recall(tmp_path, gt_type, expected):
    task = _flickr_task(tmp_path, gt_type)
    model = PhraseFakeDetector()
    results = load_tool("tools/test_grounding_net.py").main(
        _tool_argv(task, tmp_path / "out", "TEST.EVAL_TASK", "grounding", "TEST.IMS_PER_BATCH", "2"), model=model)
    scores = results["flickr30k_test"]
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value), name
    assert model.batch_sizes == [1, 1, 1]  # each sentence runs alone with its own caption
    csv = (tmp_path / "out" / "inference" / "flickr30k_test" / "bbox.csv").read_text().splitlines()
    assert csv[0] == "metric, avg " and f"Recall@1_all, {expected['Recall@1_all']} " in csv


def test_flickr_set_needs_the_grounding_task(tmp_path):
    task = _flickr_task(tmp_path, "separate")
    with pytest.raises(ValueError, match=r"flickr30k_test is a Flickr30k phrase-grounding set: evaluate it with "
                                         r"TEST.EVAL_TASK grounding \(got 'detection'\)"):
        load_tool("tools/test_grounding_net.py").main(
            _tool_argv(task, tmp_path / "out", "TEST.EVAL_TASK", "detection", "TEST.IMS_PER_BATCH", "1"),
            model=PhraseFakeDetector())


def test_flickr_ground_truth_type_is_checked():
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["DATASETS.FLICKR_GT_TYPE", "merge"])
    with pytest.raises(ValueError, match=r"DATASETS\.FLICKR_GT_TYPE = 'merge' selects another Flickr30k ground-truth "
                                         r"box type, which this port does not build; supported: 'separate', 'merged'"):
        check_supported(cfg, ("DATASETS",))


def test_evaluation_during_training_monitors_recall_at_1(tmp_path):
    """The training loop's evaluation (TEST.DURING_TRAINING, model_best, the auto-step schedule) reads one number."""
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(SMALL / "config.yaml"))
    cfg.merge_from_file(str(_flickr_task(tmp_path, "separate")))
    cfg.merge_from_list(["MODEL.LANGUAGE_BACKBONE.MODEL_PATH", str(SMALL / "bert"), "MODEL.DEVICE", "cpu",
                         "INPUT.MIN_SIZE_TEST", "160", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_TASK", "grounding",
                         "TEST.IMS_PER_BATCH", "3"])
    loader, = make_data_loader(cfg, is_train=False)
    recall_at_1 = evaluate_model(cfg, PhraseFakeDetector(), loader, torch.device("cpu"))
    assert recall_at_1 == pytest.approx(SEPARATE["Recall@1_all"])
