"""Flickr30k Entities phrase-grounding recall (Recall@1/5/10 and the upper bound), as GLIP and MDETR report it.

The ground truth is the Flickr30k Entities release: `Sentences/<image>.txt` (phrases marked
`[/EN#<phrase id>/<type> words]`), `Annotations/<image>.xml` (Pascal VOC boxes named by phrase id) and the split
lists `val.txt`/`test.txt`. A phrase is found at k when one of its k best-scoring boxes overlaps a ground-truth
box of the phrase with IoU >= 0.5 ("any box", DATASETS.FLICKR_GT_TYPE "separate"), or overlaps the box enclosing
all of them ("merged"). Phrases without a box are not evaluated. Recall is reported for all phrases and per
phrase type (people, clothing, bodyparts, animals, vehicles, instruments, scene, other).
"""
import logging
import os
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

logger = logging.getLogger("maskrcnn_benchmark.inference")

RECALL_AT = (1, 5, 10, -1)  # -1: every box of the phrase (the upper bound of the detector's boxes)
IOU_THRESHOLD = 0.5


def parse_sentences(path: str) -> list[list[dict]]:
    """Per sentence of a Flickr30k Entities sentence file, its phrases: {phrase, phrase_id, phrase_type}."""
    with open(path) as f:
        lines = [line for line in f.read().split("\n") if line]
    sentences = []
    for line in lines:
        phrases, words, current = [], [], None
        for token in line.split():
            if current is None and token.startswith("["):
                parts = token.split("/")  # [/EN#<id>/<type>[/<type>...]
                if len(parts) < 3 or not parts[1].startswith("EN#"):
                    raise ValueError(f"{path}: cannot read the phrase marker {token!r} in {line!r}")
                current = {"phrase_id": parts[1][3:], "phrase_type": parts[2:], "words": []}
                continue
            word = token[:-1] if current is not None and token.endswith("]") else token
            words.append(word)
            if current is not None:
                current["words"].append(word)
                if token.endswith("]"):
                    phrases.append({"phrase": " ".join(current.pop("words")), **current})
                    current = None
        sentences.append(phrases)
    return sentences


def parse_boxes(path: str) -> dict[str, list[list[int]]]:
    """Phrase id -> its boxes [xmin, ymin, xmax, ymax] in a Flickr30k Entities annotation file."""
    boxes: dict[str, list[list[int]]] = defaultdict(list)
    for obj in ET.parse(path).getroot().findall("object"):
        box = obj.find("bndbox")
        if box is None:
            continue  # a scene or no-box entity
        coords = [int(box.find(key).text) for key in ("xmin", "ymin", "xmax", "ymax")]
        for name in obj.findall("name"):
            boxes[name.text].append(coords)
    return dict(boxes)


def merge_boxes(boxes: Sequence[Sequence[float]]) -> list[list[float]]:
    """The one box enclosing all of `boxes` (the "merged" ground truth)."""
    array = np.asarray(boxes, dtype=float)
    return [[array[:, 0].min(), array[:, 1].min(), array[:, 2].max(), array[:, 3].max()]]


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """(N, M) IoU of xyxy boxes (continuous coordinates, no +1), as the original evaluator."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    top_left = np.maximum(boxes1[:, None, :2], boxes2[:, :2])
    bottom_right = np.minimum(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (bottom_right - top_left).clip(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter / (area1[:, None] + area2 - inter)


class FlickrGroundTruth:
    """The evaluated phrases of each (image, sentence) of a Flickr30k Entities split, with their boxes."""

    def __init__(self, entities_dir: str, subset: str, merge: bool = False):
        split_file = os.path.join(entities_dir, f"{subset}.txt")
        if not os.path.isfile(split_file):
            raise FileNotFoundError(f"Flickr30k Entities split list not found: {split_file}. The entities folder "
                                    "holds Annotations/, Sentences/ and val.txt/test.txt (see DATA.md).")
        with open(split_file) as f:
            image_ids = [line.strip() for line in f if line.strip()]
        self.boxes: dict[str, dict[str, list[list[float]]]] = {}
        self.phrases: dict[tuple[str, int], list[dict]] = {}
        for image_id in image_ids:
            boxes = parse_boxes(os.path.join(entities_dir, "Annotations", f"{image_id}.xml"))
            self.boxes[image_id] = {pid: merge_boxes(b) for pid, b in boxes.items()} if merge else boxes
            sentences = parse_sentences(os.path.join(entities_dir, "Sentences", f"{image_id}.txt"))
            for sentence_id, phrases in enumerate(sentences):
                with_boxes = [p for p in phrases if p["phrase_id"] in boxes]
                if with_boxes:
                    self.phrases[image_id, sentence_id] = with_boxes


class RecallCounter:
    """Found / evaluated phrase counts per k and phrase category ("all" and each phrase type)."""

    def __init__(self, ks: Sequence[int]):
        self.found = {k: defaultdict(int) for k in ks}
        self.total = {k: defaultdict(int) for k in ks}

    def add(self, k: int, categories: Sequence[str], found: bool) -> None:
        """Count one phrase at k in every category it belongs to."""
        for category in categories:
            self.total[k][category] += 1
            self.found[k][category] += int(found)

    def report(self) -> "dict[str, float]":
        """{"Recall@1_all": ..., "Upper_bound_people": ...} as the official summary names them."""
        scores = {}
        for k, totals in self.total.items():
            header = "Upper_bound" if k == -1 else f"Recall@{k}"
            for category in sorted(totals):
                scores[f"{header}_{category}"] = self.found[k][category] / totals[category]
        return scores


def evaluate_flickr_recall(ground_truth: FlickrGroundTruth, predictions: Sequence[Mapping],
                           ks: Sequence[int] = RECALL_AT, iou_threshold: float = IOU_THRESHOLD) -> dict[str, float]:
    """Recall of ranked boxes per phrase: predictions hold image_id, sentence_id and per phrase its boxes (xyxy,
    best first). Every evaluated sentence needs exactly one prediction with one box list per phrase."""
    counter = RecallCounter(ks)
    seen = set()
    for prediction in predictions:
        key = (str(prediction["image_id"]), int(prediction["sentence_id"]))
        if key not in ground_truth.phrases or key in seen:
            problem = "twice" if key in seen else "but the split has no evaluated phrase there"
            raise ValueError(f"Flickr30k prediction for image {key[0]} sentence {key[1]} given {problem}.")
        seen.add(key)
        phrases = ground_truth.phrases[key]
        if len(prediction["boxes"]) != len(phrases):
            raise ValueError(f"Flickr30k image {key[0]} sentence {key[1]}: {len(prediction['boxes'])} box lists for "
                             f"{len(phrases)} evaluated phrases ({[p['phrase'] for p in phrases]}); the annotation "
                             "json's tokens_positive_eval must list the same phrases as the Flickr30k Entities files.")
        for boxes, phrase in zip(prediction["boxes"], phrases):
            ranked = np.asarray(boxes, dtype=float).reshape(-1, 4)
            target = np.asarray(ground_truth.boxes[key[0]][phrase["phrase_id"]], dtype=float)
            best_iou = box_iou(ranked, target).max(axis=1) if len(ranked) else np.zeros(0)
            for k in ks:
                top = best_iou if k == -1 else best_iou[:k]
                counter.add(k, ["all"] + list(phrase["phrase_type"]), bool(len(top)) and top.max() >= iou_threshold)
    missing = sorted(set(ground_truth.phrases) - seen)
    if missing:
        raise ValueError(f"No Flickr30k prediction for {len(missing)} evaluated sentences, e.g. (image, sentence) "
                         f"{missing[:5]}: evaluate the whole split (TEST.SUBSET -1) with the annotation json of the "
                         "same split.")
    return counter.report()


def write_flickr_csv(scores: Mapping[str, float], csv_file: str) -> None:
    """The official Flickr30k `bbox.csv`: a `metric, avg` header and one `name, value` line per score."""
    lines = ["metric, avg "] + [f"{name}, {value} " for name, value in scores.items()]
    with open(csv_file, "w") as f:
        f.write("\n".join(lines) + "\n")
