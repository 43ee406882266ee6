"""LVIS evaluation: the federated protocol, APr/APc/APf and fixed AP against hand-computed values."""
import copy
import json
import re
import shlex
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
from maskrcnn_benchmark.data.datasets.lvis import LvisDetection
from maskrcnn_benchmark.data.evaluation.lvis_eval import (
    check_lvis_annotations,
    evaluate_lvis,
    fixed_ap_detections,
    prepare_for_lvis_detection,
)
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.text import load_shipped_tokenizer

ROOT = Path(__file__).resolve().parents[1]

# Categories of each frequency group; "bus" has no ground truth anywhere (its AP is undefined, -1).
CATEGORIES = [{"id": 1, "name": "cat", "frequency": "r"}, {"id": 2, "name": "dog", "frequency": "c"},
              {"id": 3, "name": "car", "frequency": "f"}, {"id": 4, "name": "bus", "frequency": "f"}]
# Image 1: a cat and a dog (dog not exhaustively annotated); no car there (neg). Image 2: two cars; no cat.
IMAGES = [{"id": 1, "width": 100, "height": 100, "neg_category_ids": [3], "not_exhaustive_category_ids": [2],
           "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg"},
          {"id": 2, "width": 120, "height": 60, "neg_category_ids": [1], "not_exhaustive_category_ids": [],
           "coco_url": "http://images.cocodataset.org/val2017/000000000002.jpg"}]
ANNOTATIONS = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100},
               {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10], "area": 100},
               {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 20, 20], "area": 400},
               {"id": 4, "image_id": 2, "category_id": 3, "bbox": [30, 30, 20, 20], "area": 400}]
GT = {"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES}


def _det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


DETECTIONS = [
    _det(2, 1, [0, 0, 5, 5], 0.95),     # cat in image 2, where cat is known absent: false positive
    _det(1, 1, [0, 0, 10, 10], 0.9),    # the cat: true positive
    _det(1, 1, [50, 50, 10, 10], 0.8),  # cat is exhaustively annotated in image 1: false positive
    _det(1, 2, [40, 40, 5, 5], 0.95),   # unmatched dog, but dog is not exhaustive in image 1: ignored
    _det(1, 2, [20, 20, 10, 10], 0.7),  # the dog: true positive
    _det(1, 3, [0, 0, 5, 5], 0.6),      # car in image 1, known absent: false positive
    _det(1, 4, [0, 0, 5, 5], 0.99),     # bus in image 1: neither annotated nor known absent, not evaluated
    _det(2, 3, [0, 0, 20, 20], 0.5),    # car: true positive
    _det(2, 3, [31, 31, 20, 20], 0.4),  # car, IoU 361/439 = 0.822: true positive up to IoU 0.80, then false
]

# By hand, per category (101 recall points, 10 IoU thresholds):
# cat: FP, TP, FP over 1 gt -> precision envelope 0.5 at every recall -> AP 0.5.
# dog: the ignored detection does not count -> TP at precision 1 -> AP 1.
# car, IoU <= 0.80 (7 thresholds): FP, TP, TP over 2 gts -> envelope 2/3 everywhere -> 2/3.
#      IoU >= 0.85 (3 thresholds): FP, TP, FP -> 0.5 up to recall 0.5 (51 points), 0 above -> 25.5 / 101.
CAR_AP = (7 * 2 / 3 + 3 * 25.5 / 101) / 10
CAR_AP75 = 2 / 3


def test_lvis_summary_matches_hand_computed_values():
    summary = evaluate_lvis(copy.deepcopy(GT), copy.deepcopy(DETECTIONS))
    assert summary["APr"] == pytest.approx(0.5)
    assert summary["APc"] == pytest.approx(1.0)
    assert summary["APf"] == pytest.approx(CAR_AP)  # bus has no ground truth: left out of APf
    assert summary["AP"] == pytest.approx((0.5 + 1.0 + CAR_AP) / 3)
    assert summary["AP50"] == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)
    assert summary["AP75"] == pytest.approx((0.5 + 1.0 + CAR_AP75) / 3)
    assert summary["APs"] == pytest.approx(summary["AP"])  # every box is small (area < 32 ** 2)
    assert summary["APm"] == -1 and summary["APl"] == -1
    # Recall at the end of the list: cat 1, dog 1, car 1 (7 thresholds) or 0.5 (3 thresholds).
    assert summary["AR@-1"] == pytest.approx((1 + 1 + (7 * 1 + 3 * 0.5) / 10) / 3)


def test_federated_rules_change_the_result():
    """Without the not-exhaustive rule the unmatched dog would rank first as a false positive (AP 0.5)."""
    gt = copy.deepcopy(GT)
    gt["images"][0]["not_exhaustive_category_ids"] = []
    assert evaluate_lvis(gt, copy.deepcopy(DETECTIONS))["APc"] == pytest.approx(0.5)
    # Listing bus as absent from image 1 makes its detection count, but bus still has no ground truth.
    gt = copy.deepcopy(GT)
    gt["images"][0]["neg_category_ids"] = [3, 4]
    assert evaluate_lvis(gt, copy.deepcopy(DETECTIONS))["APf"] == pytest.approx(CAR_AP)


def test_fixed_ap_has_no_cap_per_image():
    """300 false positives above the one true car: standard AP (300 per image) loses it, fixed AP keeps it."""
    gt = copy.deepcopy(GT)
    gt["annotations"] = [ANNOTATIONS[2]]
    detections = [_det(2, 3, [60, 60, 5, 5], 0.9 - i * 1e-4) for i in range(300)] + [_det(2, 3, [0, 0, 20, 20], 0.01)]
    fixed = evaluate_lvis(gt, copy.deepcopy(detections), fixed_ap=True)
    standard = evaluate_lvis(gt, copy.deepcopy(detections), fixed_ap=False)
    assert fixed["APf"] == pytest.approx(1 / 301)
    assert standard["APf"] == 0.0


def test_fixed_ap_keeps_the_best_per_category_over_all_images():
    detections = [_det(1, 1, [0, 0, 1, 1], 0.1), _det(2, 1, [0, 0, 1, 1], 0.7), _det(1, 1, [0, 0, 1, 1], 0.5),
                  _det(2, 2, [0, 0, 1, 1], 0.2)]
    kept = fixed_ap_detections(detections, per_category=2)
    assert sorted((d["category_id"], d["score"]) for d in kept) == [(1, 0.5), (1, 0.7), (2, 0.2)]


class _TwoImages:
    """The image sizes and id maps of a two-image LVIS set (contiguous labels 1, 2 are json ids 5, 9)."""

    id_to_img_map = {0: 11, 1: 22}
    contiguous_category_id_to_json_id = {1: 5, 2: 9}

    def get_img_info(self, index):
        return {"width": 100, "height": 50}


def test_detections_are_selected_before_results_are_built():
    """Boxes go back to the file's pixels with width x2 - x1; each category keeps its `limit` best over all images
    (fixed AP), or each image its best (standard AP); labels without a json id are dropped."""
    first = BoxList(torch.tensor([[0, 0, 20, 10], [2, 2, 4, 4], [0, 0, 2, 2]], dtype=torch.float32), (200, 100))
    first.add_field("scores", torch.tensor([0.9, 0.3, 0.8]))
    first.add_field("labels", torch.tensor([1, 1, 3]))
    second = BoxList(torch.tensor([[10, 10, 30, 30], [0, 0, 8, 8]], dtype=torch.float32), (200, 100))
    second.add_field("scores", torch.tensor([0.5, 0.4]))
    second.add_field("labels", torch.tensor([1, 2]))
    per_category = prepare_for_lvis_detection({0: first, 1: second}, _TwoImages(), "category_id", 2)
    assert [(r["image_id"], r["category_id"], r["bbox"], r["score"]) for r in per_category] == [
        (11, 5, [0.0, 0.0, 10.0, 5.0], pytest.approx(0.9)), (22, 5, [5.0, 5.0, 10.0, 10.0], 0.5),
        (22, 9, [0.0, 0.0, 4.0, 4.0], pytest.approx(0.4))]
    per_image = prepare_for_lvis_detection({0: first, 1: second}, _TwoImages(), "image_id", 1)
    assert [(r["image_id"], r["score"]) for r in per_image] == [(11, pytest.approx(0.9)), (22, 0.5)]


def test_lvis_annotations_are_checked():
    gt = copy.deepcopy(GT)
    del gt["images"][1]["neg_category_ids"]
    with pytest.raises(ValueError, match=r"lvis\.json: image 2 has no \['neg_category_ids'\]"):
        check_lvis_annotations(gt, "lvis.json")
    gt = copy.deepcopy(GT)
    gt["categories"][2]["frequency"] = "x"
    with pytest.raises(ValueError, match=r"category 3 \('car'\) has frequency 'x'"):
        check_lvis_annotations(gt, "lvis.json")


# ---- end to end: the official LVIS minival config through tools/test_grounding_net.py -----------------------------

class PromptedFakeDetector(nn.Module):
    """Returns the DETECTIONS (xyxy, scaled to the input size) of the categories named in the prompt it gets,
    labelled through the prompt's label -> token map, so a wrong prompt chunk or label mapping loses them."""

    def __init__(self):
        super().__init__()
        self.tokenizer = load_shipped_tokenizer()
        self.prompts = []

    def forward(self, images, captions=None, positive_map=None, tokenized=None):
        self.prompts.append(captions[0])
        ids = tokenized["input_ids"][0]
        name_to_label = {self.tokenizer.decode(ids[tokens]): label for label, tokens in positive_map.items()}
        outputs = []
        for height, width in images.image_sizes:
            image = next(i for i in IMAGES if abs(i["width"] / i["height"] - width / height) < 1e-6)
            names = {cat["id"]: cat["name"] for cat in CATEGORIES}
            dets = [d for d in DETECTIONS if d["image_id"] == image["id"] and names[d["category_id"]] in name_to_label]
            boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)]).reshape(-1, 4)
            boxlist = BoxList(boxes.float(), (image["width"], image["height"]), mode="xyxy").resize((width, height))
            boxlist.add_field("scores", torch.tensor([d["score"] for d in dets]))
            boxlist.add_field("labels", torch.tensor([name_to_label[names[d["category_id"]]] for d in dets],
                                                     dtype=torch.int64))
            outputs.append(boxlist)
        return outputs


def _write_lvis_set(folder: Path) -> Path:
    """The images (at their coco_url paths) and the LVIS json; returns the json."""
    rng = np.random.default_rng(0)
    for image in IMAGES:
        path = folder / "coco" / Path(*image["coco_url"].split("/")[-2:])
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (image["height"], image["width"], 3), dtype=np.uint8)).save(path)
    ann_file = folder / "lvis_minival.json"
    ann_file.write_text(json.dumps(GT))
    return ann_file


def test_official_lvis_minival_config_evaluates_with_the_lvis_protocol(tmp_path):
    ann_file = _write_lvis_set(tmp_path)
    task_config = tmp_path / "minival.yaml"
    official = (ROOT / "configs" / "lvis" / "minival.yaml").read_text()
    official = official.replace('img_dir: "coco"', f'img_dir: "{tmp_path / "coco"}"', 1)
    task_config.write_text(official.replace('"coco/annotations/lvis_v1_minival_inserted_image_name.json"',
                                            f'"{ann_file}"'))
    model = PromptedFakeDetector()
    argv = ["--config-file", str(SMALL / "config.yaml"), "--task_config", str(task_config),
            "MODEL.LANGUAGE_BACKBONE.MODEL_PATH", str(SMALL / "bert"), "MODEL.DEVICE", "cpu",
            "OUTPUT_DIR", str(tmp_path / "out"), "TEST.EVAL_TASK", "detection", "TEST.CHUNKED_EVALUATION", "2",
            "TEST.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TEST", "120", "INPUT.MAX_SIZE_TEST", "1333",
            "DATALOADER.NUM_WORKERS", "0"]
    results = load_tool("tools/test_grounding_net.py").main(argv, model=model)
    summary, entries = results["lvis_evaluation_mini_val"]
    assert summary.results["bbox"]["APr"] == pytest.approx(0.5, abs=1e-6)
    assert summary.results["bbox"]["APc"] == pytest.approx(1.0, abs=1e-6)
    assert summary.results["bbox"]["APf"] == pytest.approx(CAR_AP, abs=1e-6)
    assert summary.results["bbox"]["AP"] == pytest.approx((0.5 + 1.0 + CAR_AP) / 3, abs=1e-6)
    assert sorted(set(model.prompts)) == ["car. bus", "cat. dog"]  # two chunks of 2 categories, label order
    assert len(entries["bbox"]) == len(DETECTIONS)
    csv = (tmp_path / "out" / "inference" / "lvis_evaluation_mini_val" / "bbox.csv").read_text().splitlines()
    assert csv[0] == "metric, avg "  # then the official summary lines, rounded to 3 decimals as officially
    assert csv[7] == " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets= -1 catIds=  r], 0.500 "
    assert csv[2] == " Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets= -1 catIds=all], " \
        f"{(0.5 + 1.0 + 2 / 3) / 3:0.3f} "
    assert csv[10].startswith(" Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= -1 catIds=all], ")


@pytest.mark.parametrize("task", ["lvis", "flickr"])
def test_readme_evaluation_commands_merge_and_are_supported(task):
    """The README's LVIS and Flickr30k commands name existing configs and only settings this port builds."""
    section = (ROOT / "README.md").read_text().split("\n### LVIS and Flickr30k\n", 1)[1].split("\n## ", 1)[0]
    blocks = [block.replace("\\\n", " ") for block in re.findall(r"```bash\n(.*?)```", section, re.S)]
    command = next(block for block in blocks if f"configs/{task}/" in block)
    args = load_tool("tools/test_grounding_net.py").parse_args(shlex.split(command)[2:])
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(ROOT / args.config_file))
    cfg.merge_from_file(str(ROOT / args.task_config))
    cfg.merge_from_list(args.opts)
    check_supported(cfg)
    assert cfg.TEST.EVAL_TASK == {"lvis": "detection", "flickr": "grounding"}[task]


def test_override_category_renames_the_prompt_but_keeps_the_frequency_groups(tmp_path):
    ann_file = _write_lvis_set(tmp_path)
    renamed = [{"id": cat["id"], "name": cat["name"] + " photo"} for cat in CATEGORIES]  # no frequency
    dataset = LvisDetection(str(ann_file), str(tmp_path / "coco"), override_category=renamed)
    assert dataset.categories() == {1: "cat photo", 2: "dog photo", 3: "car photo", 4: "bus photo"}
    assert evaluate_lvis(dataset.lvis_ground_truth(), copy.deepcopy(DETECTIONS))["APc"] == pytest.approx(1.0)
    assert dataset.image_path(1).endswith("val2017/000000000002.jpg")
