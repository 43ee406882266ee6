"""COCO evaluation: the class-name prompt, mapping back to json ids and pixels, tools/test_grounding_net.py."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import FIXTURES, SMALL
from helpers import free_port, load_tool
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from maskrcnn_benchmark.config import get_cfg_defaults
from maskrcnn_benchmark.data.datasets.coco import COCODataset
from maskrcnn_benchmark.data.evaluation import COCOResults, evaluate, prepare_for_coco_detection
from maskrcnn_benchmark.data.evaluation.coco_eval import NoGroundTruthError
from maskrcnn_benchmark.engine.inference import (
    clean_name,
    create_positive_map_label_to_token_from_positive_map,
    create_queries_and_maps,
    create_queries_and_maps_from_dataset,
)
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import to_image_list
from maskrcnn_benchmark.text import load_shipped_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOKENIZATION = json.loads((FIXTURES / "tokenization.json").read_text())
COCO_GLIP_T = next(v for k, v in TOKENIZATION.items() if k.startswith("coco_glip_t"))
COCO_DEFAULT_SEP = next(v for k, v in TOKENIZATION.items() if k.startswith("coco_yacs_default"))

# A tiny COCO-format dataset: non-contiguous category ids (as COCO's), one name that needs cleaning.
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"},
              {"id": 90, "name": "tooth_brush"}]
# Every short side is 64 px, so INPUT.MIN_SIZE_TEST 128 scales by exactly 2 (exact round trips); the aspect
# ratios differ, which lets the fake models below recognise an image from its input size.
IMAGES = [{"id": 7, "file_name": "a.jpg", "width": 96, "height": 64},
          {"id": 12, "file_name": "b.jpg", "width": 64, "height": 128},
          {"id": 40, "file_name": "c.jpg", "width": 80, "height": 64}]
BOXES = [(7, 1, [4, 6, 30, 40]), (7, 18, [50, 10, 40, 36]), (7, 90, [20, 50, 10, 8]),
         (12, 3, [2, 4, 50, 60]), (12, 1, [10, 70, 30, 50]), (12, 1, [40, 80, 20, 30]),
         (40, 18, [10, 10, 40, 30]), (40, 90, [60, 40, 12, 16])]
# Detections of the "shifted" model: per annotation (dx, dy, score) in original pixels.
SHIFTS = [(0, 0, 0.9), (6, 0, 0.8), (0, 5, 0.7), (3, 3, 0.95), (20, 0, 0.6), (0, 0, 0.5), (2, -2, 0.85),
          (5, 5, 0.4)]


def _load_tool():
    return load_tool("tools/test_grounding_net.py")


def _write_dataset(folder: Path) -> Path:
    """JPEG images and an instances json; returns the json path."""
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for info in IMAGES:
        pixels = rng.integers(0, 255, (info["height"], info["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / info["file_name"], quality=90)
    annotations = [{"id": k + 1, "image_id": image_id, "category_id": cat, "bbox": box, "area": box[2] * box[3],
                    "iscrowd": 0} for k, (image_id, cat, box) in enumerate(BOXES)]
    ann_file = folder / "instances.json"
    ann_file.write_text(json.dumps({"images": IMAGES, "annotations": annotations, "categories": CATEGORIES}))
    return ann_file


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    """(annotation file, task config registering it as `tiny_val` and evaluating it)."""
    folder = tmp_path_factory.mktemp("tiny_coco")
    ann_file = _write_dataset(folder)
    task_config = folder / "task.yaml"
    task_config.write_text(
        "DATASETS:\n"
        f"  REGISTER:\n    tiny_val:\n      img_dir: '{folder / 'images'}'\n      ann_file: '{ann_file}'\n"
        "  TEST: ('tiny_val',)\n"
    )
    return ann_file, task_config


def _expected_detections(ann_file: Path, shifts=None) -> list:
    """The fake model's detections as COCO results (original pixels, json category ids)."""
    anns = json.loads(ann_file.read_text())["annotations"]
    results = []
    for k, ann in enumerate(anns):
        dx, dy, score = shifts[k] if shifts else (0, 0, 1.0)
        x, y, w, h = ann["bbox"]
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": [x + dx, y + dy, w, h], "score": score})
    return results


class FakeDetector(nn.Module):
    """Returns fixed detections (original pixels) scaled to the input size; finds each label's class by
    decoding the prompt tokens the label points to, so a wrong prompt or label mapping loses the boxes."""

    def __init__(self, detections: list):
        super().__init__()
        self.detections = detections
        self.tokenizer = load_shipped_tokenizer()
        self.calls = []

    def forward(self, images, captions=None, positive_map=None, tokenized=None):
        assert tokenized is not None and len(set(captions)) == 1
        self.calls.append(len(captions))
        ids = tokenized["input_ids"][0]
        name_to_label = {self.tokenizer.decode(ids[tokens]): label for label, tokens in positive_map.items()}
        json_to_name = {cat["id"]: clean_name(cat["name"]) for cat in CATEGORIES}
        outputs = []
        for height, width in images.image_sizes:
            info = next(i for i in IMAGES if abs(i["width"] / i["height"] - width / height) < 1e-6)
            dets = [d for d in self.detections if d["image_id"] == info["id"]]
            boxes = torch.tensor([d["bbox"] for d in dets], dtype=torch.float32).reshape(-1, 4)
            boxlist = BoxList(boxes, (info["width"], info["height"]), mode="xywh").convert("xyxy")
            boxlist = boxlist.resize((width, height))
            boxlist.add_field("scores", torch.tensor([d["score"] for d in dets]))
            boxlist.add_field("labels", torch.tensor([name_to_label[json_to_name[d["category_id"]]] for d in dets]))
            outputs.append(boxlist)
        return outputs


def _tool_argv(task_config: Path, output_dir: Path, *extra: str) -> list:
    return ["--config-file", str(SMALL / "config.yaml"), "--task_config", str(task_config),
            "MODEL.LANGUAGE_BACKBONE.MODEL_PATH", str(SMALL / "bert"), "MODEL.DEVICE", "cpu",
            "OUTPUT_DIR", str(output_dir), "TEST.EVAL_TASK", "detection", "INPUT.MIN_SIZE_TEST", "128",
            "DATALOADER.NUM_WORKERS", "0", *extra]


def _coco_stats(ann_file: Path, detections: list) -> np.ndarray:
    coco_gt = COCO(str(ann_file))
    coco_eval = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval.stats


# ---- the prompt -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("golden", [COCO_GLIP_T, COCO_DEFAULT_SEP], ids=["sep_dot", "sep_space"])
def test_coco_prompt_and_token_map_match_official(golden):
    cfg = get_cfg_defaults()
    cfg.DATASETS.SEPARATION_TOKENS = golden["separation_tokens"]
    caption, label_to_tokens = create_queries_and_maps(golden["labels"], golden["names"], cfg,
                                                       load_shipped_tokenizer())
    assert caption == golden["caption"]
    assert label_to_tokens == {int(k): v for k, v in golden["positive_map_label_to_token"].items()}


class _Names:
    """A stand-in dataset exposing only `categories()` (label -> name)."""

    def __init__(self, names):
        self.names = names

    def categories(self):
        return dict(enumerate(self.names, start=1))


def test_chunked_evaluation_splits_the_classes_into_prompts():
    cfg = get_cfg_defaults()
    cfg.DATASETS.SEPARATION_TOKENS = ". "
    cfg.TEST.CHUNKED_EVALUATION = 30
    queries, maps = create_queries_and_maps_from_dataset(_Names(COCO_GLIP_T["names"]), cfg, load_shipped_tokenizer())
    assert len(queries) == 3
    assert [sorted(m) for m in maps] == [list(range(1, 31)), list(range(31, 61)), list(range(61, 81))]
    assert queries[1].startswith(COCO_GLIP_T["names"][30] + ". ")
    assert maps[1][31][0] == 1  # the first class of each chunk starts right after [CLS]
    golden = COCO_GLIP_T["positive_map_label_to_token"]
    assert all(len(tokens) == len(golden[str(label)]) for m in maps for label, tokens in m.items())
    assert ". ".join(COCO_GLIP_T["names"][60:]) == queries[2]


def test_prompt_longer_than_max_query_len_is_refused():
    cfg = get_cfg_defaults()
    cfg.DATASETS.SEPARATION_TOKENS = ". "
    cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN = 128
    with pytest.raises(ValueError, match="CHUNKED_EVALUATION"):
        create_queries_and_maps_from_dataset(_Names(COCO_GLIP_T["names"]), cfg, load_shipped_tokenizer())


def test_names_are_cleaned_and_spans_fall_back_to_tokens():
    assert clean_name("hair_drier(s)") == "hair drier"
    cfg = get_cfg_defaults()
    cfg.DATASETS.SEPARATION_TOKENS = ". "
    caption, label_to_tokens = create_queries_and_maps([4, 9], ["dog_(animal)", "tooth_brush"], cfg,
                                                       load_shipped_tokenizer())
    # "dog_(animal)" -> "dog " whose span ends on a space: the end falls back to the previous character.
    assert caption == "dog . tooth brush"
    assert label_to_tokens == {4: [1], 9: [3, 4]}


CAPTION_PROMPT = [{"prefix": "a ", "name": "red_light", "suffix": " here"},
                  {"prefix": "", "name": "car", "suffix": "!"}]


def test_caption_prompt_as_a_json_string_works_in_evaluation_as_in_training(tmp_path):
    """DATASETS.CAPTION_PROMPT given inline as JSON (which training accepts) or as a file gives the same prompt."""
    cfg = get_cfg_defaults()
    cfg.DATASETS.SEPARATION_TOKENS = ". "
    cfg.DATASETS.USE_CAPTION_PROMPT = True
    cfg.DATASETS.CAPTION_PROMPT = json.dumps(CAPTION_PROMPT)
    caption, label_to_tokens = create_queries_and_maps([3, 7], ["traffic_light", "car"], cfg, load_shipped_tokenizer())
    # Evaluation uses the prompt's names as written (training cleans them), as the official code does.
    assert caption == "a red_light here. car!"
    assert label_to_tokens == {3: [2, 3, 4], 7: [7]}
    prompt_file = tmp_path / "prompt.yaml"
    prompt_file.write_text(yaml.safe_dump(CAPTION_PROMPT))
    cfg.DATASETS.CAPTION_PROMPT = str(prompt_file)
    assert create_queries_and_maps([3, 7], ["traffic_light", "car"], cfg, load_shipped_tokenizer()) == (
        caption, label_to_tokens)


def test_tool_refuses_a_dist_url_other_than_env(tmp_path):
    with pytest.raises(SystemExit, match="--dist-url tcp://10.0.0.1:23456: only env:// is supported"):
        _load_tool().main(["--dist-url", "tcp://10.0.0.1:23456", "OUTPUT_DIR", str(tmp_path)])


def test_caption_prompt_with_too_few_entries_is_refused_naming_the_key():
    cfg = get_cfg_defaults()
    cfg.DATASETS.USE_CAPTION_PROMPT = True
    cfg.DATASETS.CAPTION_PROMPT = json.dumps(CAPTION_PROMPT[:1])
    with pytest.raises(ValueError, match=r"DATASETS.CAPTION_PROMPT has 1 entries but the caption names 2 categories"):
        create_queries_and_maps([3, 7], ["traffic_light", "car"], cfg, load_shipped_tokenizer())


def test_positive_map_matrix_to_label_token_dict():
    positive_map = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0.5]])
    assert create_positive_map_label_to_token_from_positive_map(positive_map, plus=1) == {1: [1, 2], 2: [3]}


# ---- results format -------------------------------------------------------------------------------------------

def test_results_log_line_has_the_official_format():
    results = COCOResults("bbox")
    results.results["bbox"].update(AP=0.5, AP50=0.75)
    assert repr(results) == ("OrderedDict([('bbox', OrderedDict([('AP', 0.5), ('AP50', 0.75), ('AP75', -1), "
                             "('APs', -1), ('APm', -1), ('APl', -1)]))])")


class _Dataset:
    """The attributes of a COCO detection dataset the evaluation reads."""

    def __init__(self, ann_file: Path):
        self.coco = COCO(str(ann_file))
        self.ids = sorted(self.coco.imgs)
        self.id_to_img_map = dict(enumerate(self.ids))
        self.contiguous_category_id_to_json_id = dict(enumerate(self.coco.getCatIds(), start=1))

    def get_img_info(self, index):
        return self.coco.imgs[self.id_to_img_map[index]]


def test_prepare_for_coco_detection_maps_back_to_original_pixels_and_json_ids(tiny_coco):
    dataset = _Dataset(tiny_coco[0])
    # Image index 1 (id 12, 64x128) seen by the model at 100x200: scale 100/64 in x and 200/128 in y.
    boxes = torch.tensor([[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 99.0, 199.0]])
    prediction = BoxList(boxes, (100, 200))
    prediction.add_field("scores", torch.tensor([0.9, 0.3]))
    prediction.add_field("labels", torch.tensor([4, 7]))  # label 7 is no category of the dataset: dropped
    empty = BoxList(torch.zeros(0, 4), (96, 64))
    empty.add_field("scores", torch.zeros(0))
    empty.add_field("labels", torch.zeros(0, dtype=torch.long))
    results = prepare_for_coco_detection({1: prediction, 0: empty}, dataset)
    assert len(results) == 1
    entry = results[0]
    assert entry["image_id"] == 12 and entry["category_id"] == 90
    x1, y1, x2, y2 = 10 * 0.64, 20 * 0.64, 40 * 0.64, 60 * 0.64
    np.testing.assert_allclose(entry["bbox"], [x1, y1, x2 - x1 + 1, y2 - y1 + 1], rtol=1e-6)
    assert entry["score"] == pytest.approx(0.9)


def test_no_detections_evaluate_to_zero(tiny_coco, tmp_path):
    dataset = _Dataset(tiny_coco[0])
    results, coco_results = evaluate(dataset, {}, str(tmp_path))
    assert coco_results == {"bbox": []}
    assert results.results["bbox"]["AP"] == 0.0
    assert json.loads((tmp_path / "bbox.json").read_text()) == []


def _unlabelled(folder: Path, annotations: list) -> tuple:
    """The tiny dataset with only these annotations, registered as `unlabelled_val`: (annotation file, task)."""
    ann_file = _write_dataset(folder)
    data = json.loads(ann_file.read_text())
    ann_file.write_text(json.dumps({**data, "annotations": annotations}))
    task_config = folder / "task.yaml"
    task_config.write_text(
        "DATASETS:\n"
        f"  REGISTER:\n    unlabelled_val:\n      img_dir: '{folder / 'images'}'\n      ann_file: '{ann_file}'\n"
        "  TEST: ('unlabelled_val',)\n"
    )
    return ann_file, task_config


def test_evaluating_images_without_annotations_is_an_error_naming_the_file(tmp_path):
    ann_file, task_config = _unlabelled(tmp_path / "data", annotations=[])
    model = FakeDetector([])
    with pytest.raises(NoGroundTruthError) as raised:
        _load_tool().main(_tool_argv(task_config, tmp_path / "out"), model=model)
    assert str(raised.value) == (
        f"Cannot evaluate unlabelled_val: {ann_file} has 3 images but no box annotations, so every COCO AP and AR "
        "would be -1. Evaluate on a dataset whose annotation file has boxes (DATASETS.TEST); to see detections on "
        "unlabelled images, use tools/demo.py.")
    assert model.calls == []  # refused before the model ran over the images
    assert not list((tmp_path / "out").rglob("bbox.json"))


def test_evaluating_crowd_boxes_only_is_an_error_too(tmp_path):
    crowd = [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [4, 6, 30, 40], "area": 1200, "iscrowd": 1}]
    ann_file, _ = _unlabelled(tmp_path, annotations=crowd)
    dataset = COCODataset(str(ann_file), str(tmp_path / "images"), remove_images_without_annotations=False)
    with pytest.raises(NoGroundTruthError, match=r"has 3 images but no box annotations \(only crowd boxes, which "
                                                 r"COCO ignores\)"):
        evaluate(dataset, {}, str(tmp_path))


# ---- the tool -------------------------------------------------------------------------------------------------

def test_tool_gives_ap_1_for_ground_truth_detections(tiny_coco, tmp_path, capsys):
    ann_file, task_config = tiny_coco
    model = FakeDetector(_expected_detections(ann_file))
    results = _load_tool().main(_tool_argv(task_config, tmp_path, "TEST.IMS_PER_BATCH", "2"), model=model)
    coco_results, detections = results["tiny_val"]
    assert model.calls == [2, 1]  # 3 images in batches of 2
    assert coco_results.results["bbox"]["AP"] == 1.0
    assert coco_results.results["bbox"]["AP50"] == 1.0
    written = json.loads((tmp_path / "inference" / "tiny_val" / "bbox.json").read_text())
    assert written == detections["bbox"]
    expected = _expected_detections(ann_file)
    key = lambda d: (d["image_id"], d["category_id"], d["bbox"])  # noqa: E731
    assert sorted(map(key, written)) == sorted(map(key, expected))
    assert (tmp_path / "inference" / "tiny_val" / "bbox.csv").is_file()
    out = capsys.readouterr()
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in out.out
    assert len(re.findall(r"Average (Precision|Recall) +\(A[PR]\) @\[", out.out)) == 12
    assert "OrderedDict([('bbox', OrderedDict([('AP', 1.0), ('AP50', 1.0), ('AP75', 1.0), " in out.out
    assert "2/2" in out.err  # the progress bar over the batches


def test_tool_ap_of_shifted_boxes_equals_pycocotools(tiny_coco, tmp_path):
    ann_file, task_config = tiny_coco
    detections = _expected_detections(ann_file, SHIFTS)
    expected = _coco_stats(ann_file, detections)
    assert 0.2 < expected[0] < 0.9  # the shifts make a non-trivial AP
    results = _load_tool().main(_tool_argv(task_config, tmp_path, "TEST.IMS_PER_BATCH", "3"),
                                model=FakeDetector(detections))
    got = results["tiny_val"][0].results["bbox"]
    assert list(got.values()) == [float(v) for v in expected[:6]]
    # bbox.csv: per-class AP rows; with ground truth of every class in the image set, the AP row's average is AP.
    rows = (tmp_path / "inference" / "tiny_val" / "bbox.csv").read_text().splitlines()
    assert rows[0] == "metric, person, car, dog, tooth_brush, avg "
    assert float(rows[1].split(", ")[-1]) == pytest.approx(expected[0], abs=1e-12)


def _distributed_worker(rank: int, world_size: int, port: int, task_config: str, output_dir: str,
                        ann_file: str, returned: dict):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model = FakeDetector(_expected_detections(Path(ann_file)))
    try:
        results = _load_tool().main(_tool_argv(Path(task_config), Path(output_dir), "TEST.IMS_PER_BATCH", "2"),
                                    model=model)
        result = results["tiny_val"]
        returned[rank] = (None if result is None else result[0].results["bbox"]["AP"], sum(model.calls))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_tool_on_two_processes_gathers_on_rank_0(tiny_coco, tmp_path):
    ann_file, task_config = tiny_coco
    port = free_port()
    returned = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(_distributed_worker, args=(2, port, str(task_config), str(tmp_path), str(ann_file),
                                                           returned), nprocs=2)
    assert returned[0][0] == 1.0  # rank 0 evaluates every image
    assert returned[1][0] is None
    assert returned[0][1] + returned[1][1] >= 3  # the images were split over the two processes
    assert returned[0][1] < 3 and returned[1][1] < 3


# ---- the small golden model through the tool --------------------------------------------------------------------

def test_tool_runs_small_golden_model_and_matches_direct_calls(tiny_coco, tmp_path, small_state_dict):
    from maskrcnn_benchmark.data import make_data_loader
    from maskrcnn_benchmark.modeling.detector import build_detection_model

    ann_file, task_config = tiny_coco
    weight = tmp_path / "small_model.pth"
    torch.save({"model": small_state_dict}, weight)
    # Batches of one image: the padding of a batch is visible to the model (it is not masked in the fusion).
    # A lower score threshold gives the random-weight model a few detections of every class on noise images.
    opts = _tool_argv(task_config, tmp_path / "out", "TEST.IMS_PER_BATCH", "1", "MODEL.ATSS.INFERENCE_TH", "0.01")
    results = _load_tool().main(["--weight", str(weight)] + opts)
    bbox_json = tmp_path / "out" / "eval" / "small_model" / "inference" / "tiny_val" / "bbox.json"
    written = json.loads(bbox_json.read_text())
    assert written == results["tiny_val"][1]["bbox"]
    assert {d["category_id"] for d in written} == {1, 3, 18, 90}
    assert {d["image_id"] for d in written} == {7, 12, 40}

    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(SMALL / "config.yaml"))
    cfg.merge_from_file(str(task_config))
    cfg.merge_from_list(opts[4:])
    model = build_detection_model(cfg)
    model.load_state_dict(small_state_dict)
    model.eval()
    dataset = make_data_loader(cfg, is_train=False, is_distributed=False)[0].dataset
    (query,), (label_to_tokens,) = create_queries_and_maps_from_dataset(dataset, cfg)
    assert query == "person. car. dog. tooth brush"
    json_ids = dataset.contiguous_category_id_to_json_id
    for index in range(len(dataset)):
        image, _, _ = dataset[index]
        info = dataset.get_img_info(index)
        with torch.no_grad():
            output = model(to_image_list([image], cfg.DATALOADER.SIZE_DIVISIBILITY), captions=[query],
                           positive_map=label_to_tokens)[0]
        output = output.resize((info["width"], info["height"])).convert("xywh")
        direct = sorted((json_ids[int(label)], score, box) for label, score, box in zip(
            output.get_field("labels").tolist(), output.get_field("scores").tolist(), output.bbox.tolist()))
        from_tool = sorted((d["category_id"], d["score"], d["bbox"]) for d in written if d["image_id"] == info["id"])
        assert len(from_tool) == len(direct) >= 5
        for (cat_a, score_a, box_a), (cat_b, score_b, box_b) in zip(from_tool, direct):
            assert cat_a == cat_b
            assert score_a == pytest.approx(score_b, abs=1e-6)
            np.testing.assert_allclose(box_a, box_b, atol=1e-4)
