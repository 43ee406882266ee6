"""Draw ground-truth (green) and detected (red, score >= threshold) boxes of a COCO-format evaluation into PNGs.

Usage: python tools/draw_detections.py --ann-file ANN.json --img-dir DIR --results bbox.json --out DIR
       [--num 4] [--threshold 0.3] [--scale 0]
Reads the files `tools/test_grounding_net.py` writes (bbox.json holds COCO results in original image pixels).
"""
import argparse
import json
import sys
from pathlib import Path

from PIL import Image
from pycocotools.coco import COCO

from maskrcnn_benchmark.utils.drawing import READABLE_MIN_SIDE, Rect, draw_labelled_boxes, enlarge, enlargement_factor

GREEN, RED = (0, 220, 0), (255, 0, 0)


def draw_image(image: Image.Image, truths: list[dict], detections: list[dict], names: dict[int, str],
               scale: int = 1, label_rects: list[Rect] | None = None) -> Image.Image:
    """The image enlarged by `scale`, true boxes in green and detections (name and score) in red.

    Detection labels are drawn best score first, each on a filled red box, stacked when boxes coincide; their
    rectangles are appended to `label_rects` when given.
    """
    canvas = enlarge(image, scale)
    scaled = [[v * scale for v in item["bbox"]] for item in truths]
    draw_labelled_boxes(canvas, [[x, y, x + w, y + h] for x, y, w, h in scaled], [""] * len(scaled), GREEN)
    detections = sorted(detections, key=lambda item: -item["score"])
    scaled = [[v * scale for v in item["bbox"]] for item in detections]
    labels = [f"{names[item['category_id']]} {item['score']:.2f}" for item in detections]
    rects = draw_labelled_boxes(canvas, [[x, y, x + w, y + h] for x, y, w, h in scaled], labels, RED)
    if label_rects is not None:
        label_rects.extend(rects)
    return canvas


def draw_evaluation(ann_file: str, img_dir: str, results_file: str, out_dir: str, num: int = 4,
                    threshold: float = 0.3, scale: int = 0) -> list[Path]:
    """Write `num` PNGs (the first images of the annotation file) and return their paths.

    `scale` 0 enlarges each image by the smallest whole factor giving a short side of READABLE_MIN_SIDE pixels.
    """
    coco = COCO(ann_file)
    with open(results_file) as f:
        results = json.load(f)
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for image_id in sorted(coco.getImgIds())[:num]:
        info = coco.loadImgs(image_id)[0]
        truths = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        detections = [r for r in results if r["image_id"] == image_id and r["score"] >= threshold]
        with Image.open(Path(img_dir) / info["file_name"]) as image:
            factor = scale or enlargement_factor(image.size)
            canvas = draw_image(image, truths, detections, names, factor)
        path = out / f"val_{image_id:06d}.png"
        canvas.save(path)
        written.append(path)
    return written


def main() -> None:
    """Parse the arguments and draw."""
    parser = argparse.ArgumentParser(description="Draw true and detected boxes of an evaluation.")
    parser.add_argument("--ann-file", required=True)
    parser.add_argument("--img-dir", required=True)
    parser.add_argument("--results", required=True, help="bbox.json written by tools/test_grounding_net.py")
    parser.add_argument("--out", required=True)
    parser.add_argument("--num", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--scale", type=int, default=0,
                        help=f"whole enlargement factor (0: short side at least {READABLE_MIN_SIDE} pixels)")
    args = parser.parse_args()
    for path in draw_evaluation(args.ann_file, args.img_dir, args.results, args.out, args.num, args.threshold,
                                args.scale):
        sys.stdout.write(f"wrote {path}\n")


if __name__ == "__main__":
    main()
