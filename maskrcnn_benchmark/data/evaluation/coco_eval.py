"""COCO box evaluation: detections in the model's input coordinates -> COCO results JSON -> pycocotools metrics."""
import json
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn_benchmark.structures.bounding_box import BoxList

logger = logging.getLogger("maskrcnn_benchmark.inference")

Predictions = Mapping[int, BoxList] | Sequence[BoxList]


def _indexed(predictions: Predictions) -> Iterable[tuple[int, BoxList]]:
    """(dataset index, prediction) pairs of a dict keyed by dataset index, or of a list in dataset order."""
    return sorted(predictions.items()) if isinstance(predictions, Mapping) else enumerate(predictions)


def prepare_for_coco_detection(predictions: Predictions, dataset) -> list[dict]:
    """COCO results entries (image id, json category id, xywh box in original image pixels, score).

    Boxes are scaled from the model's input size back to the size recorded in the annotation file, and the
    contiguous labels are mapped back to the dataset's own category ids; other labels are dropped.
    """
    coco_results = []
    for index, prediction in _indexed(predictions):
        if len(prediction) == 0:
            continue
        image_info = dataset.get_img_info(index)
        prediction = prediction.resize((image_info["width"], image_info["height"])).convert("xywh")
        image_id = dataset.id_to_img_map[index]
        boxes = prediction.bbox.tolist()
        scores = prediction.get_field("scores").tolist()
        labels = prediction.get_field("labels").tolist()
        for box, score, label in zip(boxes, scores, labels):
            if label in dataset.contiguous_category_id_to_json_id:
                coco_results.append({
                    "image_id": image_id,
                    "category_id": dataset.contiguous_category_id_to_json_id[label],
                    "bbox": box,
                    "score": score,
                })
    return coco_results


def evaluate_predictions_on_coco(coco_gt: COCO, coco_results: list[dict], json_result_file: str,
                                 iou_type: str = "bbox") -> COCOeval:
    """Write the results JSON, run COCOeval on it (printing the 12-metric summary) and write the per-class CSV."""
    with open(json_result_file, "w") as f:
        json.dump(coco_results, f)
    # pycocotools cannot load an empty result list: evaluate against an empty detection set instead.
    coco_dt = coco_gt.loadRes(str(json_result_file)) if coco_results else COCO()
    coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    if iou_type == "bbox":
        summarize_per_category(coco_eval, os.path.splitext(json_result_file)[0] + ".csv")
    return coco_eval


def summarize_per_category(coco_eval: COCOeval, csv_output: str) -> None:
    """Write AP, AP50 and AP per area range, per category and averaged, as the official `bbox.csv`.

    Faithful to the official table: a category's value averages its whole precision slice, including the -1
    entries pycocotools uses for "no ground truth"; the row's `avg` is the mean of those per-category values.
    A row holds only its title when the slice has no valid precision at all.
    """
    params = coco_eval.params
    names = {cat["id"]: cat["name"] for cat in coco_eval.cocoGt.cats.values()}
    lines = ["metric, " + "".join(f"{names[cid]}, " for cid in params.catIds) + "avg \n"]
    max_dets = params.maxDets[2]
    for iou_thr, area in ((None, "all"), (0.5, "all"), (None, "small"), (None, "medium"), (None, "large")):
        iou_str = f"{params.iouThrs[0]:0.2f}:{params.iouThrs[-1]:0.2f}" if iou_thr is None else f"{iou_thr:0.2f}"
        line = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ], ".format(
            "Average Precision", "(AP)", iou_str, area, max_dets)
        precision = coco_eval.eval["precision"]  # (iou thresholds, recalls, categories, areas, max dets)
        if iou_thr is not None:
            precision = precision[np.where(np.isclose(params.iouThrs, iou_thr))[0]]
        area_index = params.areaRngLbl.index(area)
        precision = precision[:, :, :, area_index, params.maxDets.index(max_dets)]
        if (precision > -1).any():
            per_category = [float(np.mean(precision[:, :, k])) for k in range(len(params.catIds))]
            line += "".join(f"{value}, " for value in per_category)
            line += f"{sum(per_category) / len(per_category)} "
        lines.append(line + "\n")
    with open(csv_output, "w") as f:
        f.writelines(lines)


class COCOResults:
    """The summary metrics per IoU type, in the official order; its repr is the official log line."""

    METRICS = {"bbox": ["AP", "AP50", "AP75", "APs", "APm", "APl"]}

    def __init__(self, *iou_types: str):
        unknown = [t for t in iou_types if t not in self.METRICS]
        if unknown:
            raise ValueError(f"IoU types {unknown} are not evaluated by this project (only {list(self.METRICS)}).")
        self.results: dict[str, dict[str, float]] = OrderedDict(
            (iou_type, OrderedDict((metric, -1) for metric in self.METRICS[iou_type])) for iou_type in iou_types
        )

    def update(self, coco_eval: COCOeval | None) -> None:
        """Take the summary statistics of an evaluated COCOeval."""
        if coco_eval is None:
            return
        results = self.results[coco_eval.params.iouType]
        for metric, value in zip(self.METRICS[coco_eval.params.iouType], coco_eval.stats):
            results[metric] = float(value)

    def __repr__(self) -> str:
        # Spelled out so that the line launch scripts grep keeps the official (Python < 3.12, numpy < 2) form
        # `OrderedDict([('bbox', OrderedDict([('AP', 0.5), ...]))])` whatever the Python and numpy versions.
        inner = [
            "({!r}, OrderedDict([{}]))".format(iou_type, ", ".join(f"({k!r}, {v!r})" for k, v in metrics.items()))
            for iou_type, metrics in self.results.items()
        ]
        return "OrderedDict([{}])".format(", ".join(inner))


def check_expected_results(results: COCOResults, expected_results: Sequence, sigma_tol: float) -> bool:
    """Log PASS/FAIL for each (iou type, metric, (mean, std)) in TEST.EXPECTED_RESULTS; True when all pass."""
    all_ok = True
    for task, metric, (mean, std) in expected_results:
        actual = results.results[task][metric]
        low, high = mean - sigma_tol * std, mean + sigma_tol * std
        ok = low < actual < high
        all_ok &= ok
        message = (f"{task} > {metric} sanity check (actual vs. expected): {actual:.3f} vs. mean={mean:.4f}, "
                   f"std={std:.4}, range=({low:.4f}, {high:.4f})")
        if ok:
            logger.info("PASS: %s", message)
        else:
            logger.error("FAIL: %s", message)
    return all_ok


class NoGroundTruthError(ValueError):
    """The evaluation set has images but no box annotations: every COCO metric would be -1."""


def require_box_annotations(dataset, dataset_name: str = "") -> None:
    """Raise NoGroundTruthError when the dataset's COCO annotations hold no (non-crowd) box to evaluate against."""
    coco = getattr(dataset, "coco", None)
    if coco is None or any(not ann.get("iscrowd", 0) for ann in coco.anns.values()):
        return
    source = getattr(dataset, "ann_file", None) or "its annotation file"
    crowd_only = " (only crowd boxes, which COCO ignores)" if coco.anns else ""
    raise NoGroundTruthError(
        f"Cannot evaluate {dataset_name or 'the dataset'}: {source} has {len(coco.imgs)} images but no box "
        f"annotations{crowd_only}, so every COCO AP and AR would be -1. Evaluate on a dataset whose annotation file "
        "has boxes (DATASETS.TEST); to see detections on unlabelled images, use tools/demo.py.")


def do_coco_evaluation(dataset, predictions: Predictions, output_folder: str | None,
                       iou_types: Sequence[str] = ("bbox",), expected_results: Sequence = (),
                       expected_results_sigma_tol: float = 4, box_only: bool = False
                       ) -> tuple[COCOResults, dict[str, list[dict]]]:
    """Evaluate detections of a COCO-format dataset; writes `<iou_type>.json`, the CSV and `coco_results.pth`."""
    if box_only:
        raise ValueError("Proposal (box_only) evaluation belongs to RPN-only detectors, which this project does "
                         "not build; GLIP's VL head gives final detections.")
    require_box_annotations(dataset)
    logger.info("Preparing results for COCO format")
    coco_results = {}
    if "bbox" in iou_types:
        coco_results["bbox"] = prepare_for_coco_detection(predictions, dataset)
    results = COCOResults(*iou_types)
    logger.info("Evaluating predictions")
    for iou_type in iou_types:
        with tempfile.TemporaryDirectory() as tmp:
            folder = output_folder or tmp
            results.update(evaluate_predictions_on_coco(
                dataset.coco, coco_results[iou_type], os.path.join(folder, f"{iou_type}.json"), iou_type))
    logger.info(results)
    check_expected_results(results, expected_results, expected_results_sigma_tol)
    if output_folder:
        torch.save(results.results, os.path.join(output_folder, "coco_results.pth"))
    return results, coco_results
