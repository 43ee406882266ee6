"""The README's main job on the synthetic dataset: data -> training -> evaluation -> COCO mAP -> pictures.

Runs `bash test/train_full_1p.sh --synthetic` (a shorter schedule than the README's, same code path), then
evaluates the trained weights with `tools/test_grounding_net.py` on re-ordered and partial prompts, and the
untrained model for comparison.
"""
import io
import json
import os
import random
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import free_port, load_tool, python_first_env
from PIL import Image

from maskrcnn_benchmark.data.datasets.synthetic import make_image

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic" / "glip_synthetic.yaml"
VAL_JSON = REPO / "datasets" / "synthetic" / "annotations" / "val.json"
DEVICE_ID = "pytest_synthetic"
EPOCHS = 10  # the README job's own schedule (configs/synthetic/glip_synthetic.yaml)
FINAL_AP_FLOOR = 0.5
GROUNDING_AP_FLOOR = 0.4
UNTRAINED_AP_CEILING = 0.05


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Run the main job once in a new folder (a folder holding a run would be resumed); return it and the output."""
    work = tmp_path_factory.mktemp("synthetic_run")
    proc = subprocess.run(
        ["bash", "test/train_full_1p.sh", "--synthetic", f"--max_epoch={EPOCHS}", f"--device_id={DEVICE_ID}",
         f"--output_path={work}"],
        cwd=REPO, capture_output=True, text=True, timeout=1500, env=python_first_env(MASTER_PORT=str(free_port())),
    )
    log = work / f"train_{DEVICE_ID}.log"
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + (log.read_text()[-3000:] if log.exists()
                                                                                 else "")
    return work, proc.stdout


def _evaluate(tmp_path: Path, name: str, extra_yaml: dict, *opts: str) -> float:
    """AP of tools/test_grounding_net.py on the synthetic config plus a task config."""
    tool = load_tool("tools/test_grounding_net.py")
    task = tmp_path / f"{name}.yaml"
    task.write_text(yaml.safe_dump(extra_yaml))
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        results = tool.main(["--config-file", str(CONFIG), "--task_config", str(task),
                             "OUTPUT_DIR", str(tmp_path / name), "MODEL.DEVICE", "cpu",
                             "DATALOADER.NUM_WORKERS", "0", *opts])
    finally:
        os.chdir(cwd)
    (coco_results, _), = results.values()
    return coco_results.results["bbox"]["AP"]


def _variant(tmp_path: Path, name: str, categories: list, keep_ids: set) -> dict:
    """A REGISTER task config for the val split with the categories in a given order (the prompt order)."""
    data = json.loads(VAL_JSON.read_text())
    data["categories"] = categories
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] in keep_ids]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    img_dir = str(REPO / "datasets" / "synthetic" / "val")
    return {"DATASETS": {"REGISTER": {name: {"img_dir": img_dir, "ann_file": str(path)}}, "TEST": [name]}}


@pytest.mark.slow  # the README's synthetic job end to end (minutes)
def test_main_job_shows_progress_metrics_and_outputs(trained_run):
    work, stdout = trained_run
    assert re.search(r"^iteration \d+/\d+ \(\d+%\)  loss [\d.]+ \(median [\d.]+\)  [\d.]+ s/it  eta [\d:]+$", stdout,
                     re.M), stdout[:3000]
    assert len(re.findall(r"^ Average (?:Precision|Recall) .* = -?[\d.]+$", stdout, re.M)) == 12
    for label, path in (("Weights", "model_final.pth"), ("Loss curve", "loss_curve.png"),
                        ("Validation pictures", "val_images")):
        shown = re.search(rf"^{label}: +(\S+?)/?(?: \(.*)?$", stdout, re.M).group(1)
        assert (REPO / shown).resolve() == (work / path).resolve(), (label, shown)
    demo = re.search(r"^Try the model: +python tools/demo\.py (\S+) '([a-z .]+)' ", stdout, re.M)
    assert (REPO / demo.group(1)).is_file() and demo.group(2)
    ap = re.search(r"^Final validation bbox AP : ([\d.]+) ", stdout, re.M).group(1)
    assert f"Final Train Accuracy : {ap}" in stdout


@pytest.mark.slow  # the README's synthetic job end to end (minutes)
def test_main_job_learns_and_grounds(trained_run, tmp_path):
    work, stdout = trained_run
    final_ap = float(re.search(r"Final Train Accuracy : ([0-9.]+)", stdout).group(1))
    assert re.search(r"Final Performance images/sec : [0-9.]+", stdout)
    assert re.search(r"E2E Training Duration sec : [0-9]+", stdout)
    weight = str(work / "model_final.pth")

    untrained_ap = _evaluate(tmp_path, "untrained", {}, "MODEL.WEIGHT", "", "TEST.AFTER_TRAINING", "False",
                             "MODEL.ALLOW_MISSING_WEIGHTS", "True")
    print(f"synthetic val bbox AP: trained {final_ap:.3f}, untrained {untrained_ap:.3f}")
    assert final_ap >= FINAL_AP_FLOOR
    assert untrained_ap < UNTRAINED_AP_CEILING

    categories = json.loads(VAL_JSON.read_text())["categories"]
    shuffled = categories[:]
    random.Random(1).shuffle(shuffled)
    assert [c["id"] for c in shuffled] != [c["id"] for c in categories]
    shuffled_ap = _evaluate(tmp_path, "shuffled", _variant(tmp_path, "synthetic_val_shuffled", shuffled,
                                                          {c["id"] for c in categories}), "MODEL.WEIGHT", weight)
    subset = shuffled[:3]
    subset_ap = _evaluate(tmp_path, "subset", _variant(tmp_path, "synthetic_val_subset", subset,
                                                      {c["id"] for c in subset}), "MODEL.WEIGHT", weight)
    print(f"shuffled prompt AP {shuffled_ap:.3f}, prompt of {[c['name'] for c in subset]} AP {subset_ap:.3f}")
    assert shuffled_ap >= GROUNDING_AP_FLOOR
    assert subset_ap >= GROUNDING_AP_FLOOR


@pytest.mark.slow  # the README's synthetic job end to end (minutes)
def test_main_job_leaves_loss_curve_and_pictures_with_boxes(trained_run):
    work, _ = trained_run
    assert (work / "loss_curve.png").stat().st_size > 0
    detections = json.loads((work / "inference" / "synthetic_val" / "bbox.json").read_text())
    pictures = sorted((work / "val_images").glob("val_*.png"))
    assert pictures
    image_id = int(pictures[0].stem.split("_")[1])
    best = max((d for d in detections if d["image_id"] == image_id), key=lambda d: d["score"])
    assert best["score"] >= 0.3
    with Image.open(pictures[0]) as picture:
        rgb = picture.convert("RGB")
    scale = rgb.width // 128  # the synthetic images are 128x128, enlarged to a readable size
    assert rgb.size == (128 * scale, 128 * scale) and scale * 128 >= 512
    x, y, w, h = (v * scale for v in best["bbox"])
    edge = [rgb.getpixel((int(x + t * w), int(y))) for t in (0.25, 0.5, 0.75)]
    # The predicted box's top edge is drawn in red.
    assert all(p[0] > 200 and p[1] < 80 and p[2] < 80 for p in edge), edge



def _draw_detections_tool():
    return load_tool("tools/draw_detections.py")


def test_validation_pictures_stack_the_labels_of_coinciding_boxes():
    tool = _draw_detections_tool()
    jpeg, _ = make_image(np.random.default_rng(0), 128, 16, 64, 3)
    image = Image.open(io.BytesIO(jpeg))
    names = {1: "red circle", 3: "blue square", 4: "green triangle"}
    box = [20.0, 30.0, 60.0, 50.0]
    detections = [{"bbox": box, "category_id": c, "score": s} for c, s in ((3, 0.45), (1, 0.91), (4, 0.35))]
    taken = []
    canvas = tool.draw_image(image, [{"bbox": box}], detections, names, 4, taken)
    assert canvas.size == (512, 512)
    # Three label boxes, the best score's on the box's top edge and the others stacked above it, none overlapping.
    assert (taken[0][0], taken[0][3]) == (80, 120)
    assert taken[2][3] == taken[1][1] and taken[1][3] == taken[0][1]
    for k, a in enumerate(taken):
        for b in taken[k + 1:]:
            assert a[3] <= b[1] or b[3] <= a[1] or a[2] <= b[0] or b[2] <= a[0], (a, b)
    # In the pixels: each label box is filled red with near-white text in it.
    pixels = np.asarray(canvas)
    for left, top, right, bottom in taken:
        area = pixels[top:bottom, left:right]
        assert (area == (255, 0, 0)).all(axis=-1).mean() > 0.4
        assert (area >= 220).all(axis=-1).sum() >= 20
