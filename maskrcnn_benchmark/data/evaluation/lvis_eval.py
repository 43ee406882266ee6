"""LVIS box evaluation with the official protocol: federated matching, APr/APc/APf, and fixed AP.

The `lvis` package on PyPI (0.5.3, 2020) no longer runs with numpy >= 1.24 (it casts with `np.float`) and
imports OpenCV for its visualiser, so the protocol is implemented here, following the LVIS API that GLIP copies:

* Federated: a detection of category c in image i is evaluated only when c is annotated in i or listed in the
  image's `neg_category_ids`; an unmatched detection of a category in the image's `not_exhaustive_category_ids`
  is ignored.
* Greedy matching per (image, category) at IoU 0.50:0.05:0.95, 101-point interpolated precision, areas
  all/small/medium/large (ground truth: the annotation's `area`; detections: box width * height).
* APr/APc/APf average the categories of `frequency` "r", "c" and "f" of the annotation file.
* Fixed AP (Dave et al. 2021, GLIP's default): the 10,000 highest-scoring detections of each category over the
  whole set, no cap per image. Standard AP (DATASETS.LVIS_USE_NORMAL_AP): the 300 best per image.
"""
import json
import logging
import os
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_util

from .coco_eval import COCOResults, Predictions, _indexed, check_expected_results

logger = logging.getLogger("maskrcnn_benchmark.inference")

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = OrderedDict([("all", (0.0, 1e5 ** 2)), ("small", (0.0, 32.0 ** 2)), ("medium", (32.0 ** 2, 96.0 ** 2)),
                           ("large", (96.0 ** 2, 1e5 ** 2))])
FREQUENCIES = ("r", "c", "f")
FIXED_AP_DETECTIONS_PER_CATEGORY = 10000
STANDARD_DETECTIONS_PER_IMAGE = 300
_REQUIRED_IMAGE_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")


class LvisResults(COCOResults):
    """The LVIS summary metrics (COCO's six plus APr, APc, APf); its repr is the official log line format."""

    METRICS = {"bbox": ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]}


def check_lvis_annotations(data: Mapping, ann_file: str) -> None:
    """Raise ValueError naming the file and entry when the json lacks what the LVIS protocol reads."""
    for image in data["images"]:
        missing = [key for key in _REQUIRED_IMAGE_KEYS if key not in image]
        if missing:
            raise ValueError(f"{ann_file}: image {image.get('id')} has no {missing}: the LVIS protocol needs each "
                             "image's neg_category_ids and not_exhaustive_category_ids (use the LVIS v1 json).")
    for category in data["categories"]:
        if category.get("frequency") not in FREQUENCIES:
            raise ValueError(f"{ann_file}: category {category.get('id')} ({category.get('name')!r}) has frequency "
                             f"{category.get('frequency')!r}; the LVIS protocol needs one of {list(FREQUENCIES)}.")


def top_per_group(groups: np.ndarray, scores: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the `limit` highest scores of each group value (equal scores keep their order), by group."""
    order = np.lexsort((-np.asarray(scores, dtype=float), groups))
    sorted_groups = np.asarray(groups)[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return order[rank < limit]


def _select(entries: Sequence[dict], key: str, limit: int) -> list[dict]:
    """The `limit` best-scoring entries of each value of `key`."""
    if not entries:
        return []
    keys = np.array([entry[key] for entry in entries])
    return [entries[i] for i in top_per_group(keys, np.array([entry["score"] for entry in entries]), limit)]


def fixed_ap_detections(results: Sequence[dict], per_category: int = FIXED_AP_DETECTIONS_PER_CATEGORY) -> list[dict]:
    """The `per_category` best detections of each category over the whole set (no cap per image)."""
    kept = _select(results, "category_id", per_category)
    counts = np.unique([entry["category_id"] for entry in kept], return_counts=True)[1] if kept else np.zeros(0)
    short = int(np.count_nonzero(counts < per_category))
    if short:
        logger.info("%d categories had fewer than %d detections; more detections per category can raise the fixed "
                    "AP (raise MODEL.ATSS.DETECTIONS_PER_IMG).", short, per_category)
    return kept


def _image_detections(prediction, info: dict, image_id: Any, to_json: np.ndarray) -> dict[str, np.ndarray]:
    """One image's detections as arrays in the annotation file's pixels, xywh with width x2 - x1 (no +1, as the
    official LVIS path), json category ids from the `to_json` lookup (labels without one, -1, are dropped)."""
    boxes = prediction.resize((info["width"], info["height"])).convert("xyxy").bbox
    boxes = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).numpy()
    labels = prediction.get_field("labels").numpy()
    in_range = (labels >= 0) & (labels < len(to_json))
    category_ids = np.where(in_range, to_json[np.clip(labels, 0, len(to_json) - 1)], -1)
    known = category_ids >= 0
    return {"image_id": np.full(int(known.sum()), image_id, dtype=object), "bbox": boxes[known],
            "category_id": category_ids[known], "score": prediction.get_field("scores").numpy()[known]}


def prepare_for_lvis_detection(predictions: Predictions, dataset, group: str = "category_id",
                               limit: int = FIXED_AP_DETECTIONS_PER_CATEGORY) -> list[dict]:
    """LVIS results entries (image id, category id, xywh box, score): the `limit` best of each `group` value.

    The selection runs on arrays before any entry is built: LVIS minival gives tens of millions of detections
    (300 per image and prompt chunk), of which fixed AP keeps 10,000 per category.
    """
    label_to_json = dataset.contiguous_category_id_to_json_id
    to_json = np.full(max(label_to_json, default=0) + 1, -1, dtype=np.int64)
    to_json[list(label_to_json)] = list(label_to_json.values())
    parts = [_image_detections(prediction, dataset.get_img_info(index), dataset.id_to_img_map[index], to_json)
             for index, prediction in _indexed(predictions) if len(prediction)]
    if not parts:
        return []
    columns = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    groups = columns[group] if group == "category_id" else np.unique(columns[group], return_inverse=True)[1]
    kept = np.sort(top_per_group(groups, columns["score"], limit))
    return [{"image_id": columns["image_id"][i], "category_id": int(columns["category_id"][i]),
             "bbox": columns["bbox"][i].tolist(), "score": float(columns["score"][i])} for i in kept]


class LvisEvaluation:
    """Federated LVIS box evaluation of detection results against an LVIS-format annotation dict."""

    def __init__(self, gt: Mapping, detections: Sequence[dict]):
        self.images = {image["id"]: image for image in gt["images"]}
        self.cat_ids = sorted(cat["id"] for cat in gt["categories"])
        self.frequency_groups = {freq: [k for k, cat in enumerate(sorted(gt["categories"], key=lambda c: c["id"]))
                                        if cat["frequency"] == freq] for freq in FREQUENCIES}
        self.gts: dict[tuple[int, int], list[dict]] = defaultdict(list)
        self.dts: dict[tuple[int, int], list[dict]] = defaultdict(list)
        positives: dict[int, set] = defaultdict(set)
        for ann in gt["annotations"]:
            if ann["area"] > 0 and ann["image_id"] in self.images:  # the LVIS API keeps areas in (0, inf)
                self.gts[ann["image_id"], ann["category_id"]].append(ann)
                positives[ann["image_id"]].add(ann["category_id"])
        for dt_id, det in enumerate(detections, start=1):
            image = self.images.get(det["image_id"])
            area = det["bbox"][2] * det["bbox"][3]
            if image is None or area <= 0:
                continue
            # Federated: only categories known present or known absent in the image are evaluated there.
            if det["category_id"] in positives[det["image_id"]] or det["category_id"] in image["neg_category_ids"]:
                self.dts[det["image_id"], det["category_id"]].append(dict(det, area=area, id=dt_id))

    def match(self, img_id: int, cat_id: int, area_range: tuple[float, float]) -> dict | None:
        """Greedy matching of one image's detections of one category at every IoU threshold (None: nothing)."""
        gt, dt = self.gts.get((img_id, cat_id), []), self.dts.get((img_id, cat_id), [])
        if not gt and not dt:
            return None
        gt_ignore = np.array([bool(g.get("ignore", 0)) or not area_range[0] <= g["area"] <= area_range[1] for g in gt],
                             dtype=bool)
        gt_order = np.argsort(gt_ignore, kind="mergesort")
        gt, gt_ignore = [gt[i] for i in gt_order], gt_ignore[gt_order]
        dt = [dt[i] for i in np.argsort([-d["score"] for d in dt], kind="mergesort")]
        ious = mask_util.iou([d["bbox"] for d in dt], [g["bbox"] for g in gt], [0] * len(gt)) if gt and dt else None
        dt_matched = np.zeros((len(IOU_THRESHOLDS), len(dt)), dtype=bool)
        dt_ignore = np.zeros((len(IOU_THRESHOLDS), len(dt)), dtype=bool)
        for t, threshold in enumerate(IOU_THRESHOLDS):
            gt_taken = np.zeros(len(gt), dtype=bool)
            for d in range(len(dt) if ious is not None else 0):
                best, best_iou = -1, min(threshold, 1 - 1e-10)
                for g in range(len(gt)):
                    if gt_taken[g]:
                        continue
                    if best > -1 and not gt_ignore[best] and gt_ignore[g]:
                        break  # a regular match is never traded for an ignored ground truth
                    if ious[d, g] >= best_iou:
                        best, best_iou = g, ious[d, g]
                if best > -1:
                    gt_taken[best], dt_matched[t, d], dt_ignore[t, d] = True, True, gt_ignore[best]
        not_exhaustive = self.images[img_id]["not_exhaustive_category_ids"]
        outside = np.array([not area_range[0] <= d["area"] <= area_range[1] or cat_id in not_exhaustive for d in dt],
                           dtype=bool)
        dt_ignore |= ~dt_matched & outside[None, :]
        return {"scores": np.array([d["score"] for d in dt]), "matched": dt_matched, "ignore": dt_ignore,
                "gt_ignore": gt_ignore}

    def accumulate(self) -> tuple[np.ndarray, np.ndarray]:
        """Precision (iou, recall, category, area) and recall (iou, category, area); -1 where nothing to rate."""
        shape = (len(IOU_THRESHOLDS), len(self.cat_ids), len(AREA_RANGES))
        precision = -np.ones((shape[0], len(RECALL_THRESHOLDS)) + shape[1:])
        recall = -np.ones(shape)
        pairs_of_category: dict[int, list[int]] = defaultdict(list)
        for img_id, cat_id in set(self.gts) | set(self.dts):
            pairs_of_category[cat_id].append(img_id)
        for k, cat_id in enumerate(self.cat_ids):
            for a, area_range in enumerate(AREA_RANGES.values()):
                matches = [self.match(img_id, cat_id, area_range) for img_id in sorted(pairs_of_category[cat_id])]
                curve = _precision_recall([m for m in matches if m is not None])
                if curve is not None:
                    precision[:, :, k, a], recall[:, k, a] = curve
        return precision, recall

    def summarize(self, max_dets: int = STANDARD_DETECTIONS_PER_IMAGE) -> "OrderedDict[str, float]":
        """AP, AP50, AP75, APs, APm, APl, APr, APc, APf and AR@<max_dets>, ARs/m/l (means over entries not -1).

        `max_dets` only names the recall (the official names: AR@300, or AR@-1 for fixed AP).
        """
        precision, recall = self.accumulate()
        areas = list(AREA_RANGES)
        iou_50, iou_75 = (int(np.argmin(np.abs(IOU_THRESHOLDS - v))) for v in (0.5, 0.75))
        summary = OrderedDict()
        summary["AP"] = _mean_valid(precision[..., 0])
        summary["AP50"] = _mean_valid(precision[iou_50, ..., 0])
        summary["AP75"] = _mean_valid(precision[iou_75, ..., 0])
        for name, area in (("APs", "small"), ("APm", "medium"), ("APl", "large")):
            summary[name] = _mean_valid(precision[..., areas.index(area)])
        for freq in FREQUENCIES:
            summary["AP" + freq] = _mean_valid(precision[:, :, self.frequency_groups[freq], 0])
        summary[f"AR@{max_dets}"] = _mean_valid(recall[..., 0])
        for area in ("small", "medium", "large"):
            summary[f"AR{area[0]}@{max_dets}"] = _mean_valid(recall[..., areas.index(area)])
        return summary


def _precision_recall(matches: list[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    """Interpolated precision at the 101 recall thresholds and final recall per IoU threshold (None: no gt)."""
    if not matches:
        return None
    num_gt = int(sum(np.count_nonzero(~m["gt_ignore"]) for m in matches))
    if num_gt == 0:
        return None
    order = np.argsort(-np.concatenate([m["scores"] for m in matches]), kind="mergesort")
    matched = np.concatenate([m["matched"] for m in matches], axis=1)[:, order]
    ignore = np.concatenate([m["ignore"] for m in matches], axis=1)[:, order]
    tp = np.cumsum(matched & ~ignore, axis=1, dtype=float)
    fp = np.cumsum(~matched & ~ignore, axis=1, dtype=float)
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
    recall = np.zeros(len(IOU_THRESHOLDS))
    for t in range(len(IOU_THRESHOLDS)):
        rc = tp[t] / num_gt
        pr = tp[t] / (tp[t] + fp[t] + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # the best precision at this recall or beyond
        recall[t] = rc[-1] if len(rc) else 0.0
        positions = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
        reached = positions < len(pr)
        precision[t, reached] = pr[positions[reached]]  # recall levels never reached keep precision 0
    return precision, recall


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def evaluate_lvis(gt: Mapping, results: Sequence[dict], fixed_ap: bool = True) -> "OrderedDict[str, float]":
    """The LVIS summary of detection results: fixed AP (10,000 per category) or standard AP (300 per image)."""
    if fixed_ap:
        return LvisEvaluation(gt, fixed_ap_detections(results)).summarize(max_dets=-1)
    detections = _select(results, "image_id", STANDARD_DETECTIONS_PER_IMAGE)
    return LvisEvaluation(gt, detections).summarize(max_dets=STANDARD_DETECTIONS_PER_IMAGE)


def summary_lines(summary: Mapping[str, float], max_dets: int) -> list[str]:
    """The official LVIS summary lines, e.g. ` Average Precision  (AP) @[ IoU=0.50      | area=   all |
    maxDets= -1 catIds=  r] = 0.123`: the metric's name says its IoU, area or frequency group."""
    lines = []
    for name, value in summary.items():
        title, kind = ("Average Precision", "(AP)") if name.startswith("AP") else ("Average Recall", "(AR)")
        third = name[2] if len(name) > 2 else ""
        all_ious = f"{IOU_THRESHOLDS[0]:0.2f}:{IOU_THRESHOLDS[-1]:0.2f}"
        iou = f"{float(name[2:]) / 100:0.2f}" if third.isdigit() else all_ious
        area = third if third in ("s", "m", "l") else "all"
        group = third if third in FREQUENCIES else "all"
        lines.append(f" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} "
                     f"catIds={group:>3s}] = {value:0.3f}")
    return lines


def write_lvis_csv(summary: Mapping[str, float], csv_file: str, max_dets: int) -> None:
    """The official LVIS `bbox.csv`: a `metric, avg` header, then each summary line as `<description>, <value> `."""
    lines = ["metric, avg "]
    for line in summary_lines(summary, max_dets):
        description, value = line.rsplit(" = ", 1)
        lines.append(f"{description}, {value} ")
    with open(csv_file, "w") as f:
        f.write("\n".join(lines) + "\n")


def do_lvis_evaluation(dataset, predictions: Predictions, output_folder: str | None, fixed_ap: bool = True,
                       expected_results: Sequence = (), expected_results_sigma_tol: float = 4
                       ) -> tuple[LvisResults, dict[str, list[dict]]]:
    """Evaluate detections of an LVIS dataset; writes `bbox.json`, `bbox.csv` and `lvis_results.pth`."""
    if fixed_ap:
        results = prepare_for_lvis_detection(predictions, dataset, "category_id", FIXED_AP_DETECTIONS_PER_CATEGORY)
    else:
        results = prepare_for_lvis_detection(predictions, dataset, "image_id", STANDARD_DETECTIONS_PER_IMAGE)
    logger.info("Evaluating %d detections with the LVIS %s protocol", len(results),
                "fixed AP" if fixed_ap else "standard AP")
    summary = evaluate_lvis(dataset.lvis_ground_truth(), results, fixed_ap)
    max_dets = -1 if fixed_ap else STANDARD_DETECTIONS_PER_IMAGE
    for line in summary_lines(summary, max_dets):
        logger.info(line)
    lvis_results = LvisResults("bbox")
    lvis_results.results["bbox"].update((k, summary[k]) for k in LvisResults.METRICS["bbox"])
    logger.info(lvis_results)
    check_expected_results(lvis_results, expected_results, expected_results_sigma_tol)
    if output_folder:
        with open(os.path.join(output_folder, "bbox.json"), "w") as f:
            json.dump(results, f)
        write_lvis_csv(summary, os.path.join(output_folder, "bbox.csv"), max_dets)
        torch.save(lvis_results.results, os.path.join(output_folder, "lvis_results.pth"))
    return lvis_results, {"bbox": results}
