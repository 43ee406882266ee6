"""A synthetic COCO-format grounding dataset: coloured shapes on textured backgrounds.

Every category name is two words BERT's vocabulary knows ("red circle", "blue square", ...), so the model has to
ground words, not class slots. The same seed gives byte-identical files.
"""
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# (name, RGB colour, shape) per category; COCO-style non-contiguous ids exercise the id mapping.
CATEGORIES: tuple[tuple[int, str, tuple[int, int, int], str], ...] = (
    (1, "red circle", (220, 40, 40), "circle"),
    (3, "blue square", (40, 70, 220), "square"),
    (4, "green triangle", (40, 180, 60), "triangle"),
    (7, "yellow diamond", (235, 215, 40), "diamond"),
    (9, "purple star", (150, 60, 190), "star"),
    (12, "orange cross", (245, 140, 30), "cross"),
)
JPEG_QUALITY = 92
# Objects may overlap, but never hide more than this fraction of the smaller one.
MAX_OVERLAP = 0.3


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted background: smooth noise plus faint stripes, uint8 (H, W, 3)."""
    coarse = rng.uniform(70, 180, size=(height // 16 + 2, width // 16 + 2, 3))
    smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BILINEAR), np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    angle, period = rng.uniform(0, math.pi), rng.uniform(6, 20)
    stripes = 12 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    grain = rng.normal(0, 6, size=(height, width, 1))
    return np.clip(smooth + stripes[..., None] + grain, 0, 255).astype(np.uint8)


def _polygon(shape: str, box: Sequence[float]) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "star":
        return [(cx + (rx if k % 2 == 0 else rx * 0.45) * math.sin(k * math.pi / 5),
                 cy - (ry if k % 2 == 0 else ry * 0.45) * math.cos(k * math.pi / 5)) for k in range(10)]
    # cross: a plus sign whose arms span the whole box
    ax, ay = rx / 3, ry / 3
    return [(cx - ax, y0), (cx + ax, y0), (cx + ax, cy - ay), (x1, cy - ay), (x1, cy + ay), (cx + ax, cy + ay),
            (cx + ax, y1), (cx - ax, y1), (cx - ax, cy + ay), (x0, cy + ay), (x0, cy - ay), (cx - ax, cy - ay)]


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: Sequence[float], colour: tuple[int, int, int]) -> list[float]:
    """Draw the shape inside `box`; return its tight [x, y, w, h]."""
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        points = _polygon(shape, box)
        draw.polygon(points, fill=colour)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        box = [round(min(xs)), round(min(ys)), round(max(xs)), round(max(ys))]
    return [float(box[0]), float(box[1]), float(box[2] - box[0] + 1), float(box[3] - box[1] + 1)]


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over the smaller box's area."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def _place_boxes(rng: np.random.Generator, size: int, count: int, min_side: int, max_side: int) -> list[list[float]]:
    boxes: list[list[float]] = []
    for _ in range(count * 20):
        if len(boxes) == count:
            break
        side = int(rng.integers(min_side, max_side + 1))
        aspect = rng.uniform(0.8, 1.25)
        w, h = side, int(round(min(max_side, side * aspect)))
        x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        box = [x0, y0, x0 + w, y0 + h]
        if all(_overlap(box, other) <= MAX_OVERLAP for other in boxes):
            boxes.append(box)
    return boxes


def make_image(rng: np.random.Generator, size: int, min_side: int, max_side: int,
               max_objects: int) -> tuple[bytes, list[tuple[int, list[float]]]]:
    """One JPEG (bytes) and its objects as (category id, [x, y, w, h])."""
    image = Image.fromarray(_texture(rng, size, size))
    draw = ImageDraw.Draw(image)
    objects = []
    for box in _place_boxes(rng, size, int(rng.integers(1, max_objects + 1)), min_side, max_side):
        cat_id, _, colour, shape = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        jitter = rng.integers(-20, 21, size=3)
        tight = _draw(draw, shape, box, tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter)))
        objects.append((cat_id, tight))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), objects


def _write_split(out: Path, split: str, rng: np.random.Generator, count: int, size: int, min_side: int,
                 max_side: int, max_objects: int) -> None:
    (out / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        data, objects = make_image(rng, size, min_side, max_side, max_objects)
        file_name = f"{split}_{index:05d}.jpg"
        (out / split / file_name).write_bytes(data)
        images.append({"id": index + 1, "file_name": file_name, "width": size, "height": size})
        for cat_id, bbox in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": cat_id,
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
    categories = [{"id": cat_id, "name": name, "supercategory": "shape"} for cat_id, name, _, _ in CATEGORIES]
    coco: dict = {"images": images, "annotations": annotations, "categories": categories}
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / f"{split}.json").write_text(json.dumps(coco, sort_keys=True, indent=1))


def generate_synthetic_dataset(out: str, seed: int = 0, num_train: int = 800, num_val: int = 100, size: int = 128,
                               min_side: int = 20, max_side: int = 56, max_objects: int = 4) -> Path:
    """Write `train/`, `val/` and `annotations/{train,val}.json` under `out`; the same seed gives the same bytes."""
    if min_side < 4 or max_side > size or min_side > max_side:
        raise ValueError(f"Object sides must satisfy 4 <= min_side <= max_side <= size, got "
                         f"{min_side}, {max_side}, {size}.")
    root = Path(out)
    train_rng, val_rng = (np.random.default_rng([seed, split]) for split in (0, 1))
    _write_split(root, "train", train_rng, num_train, size, min_side, max_side, max_objects)
    _write_split(root, "val", val_rng, num_val, size, min_side, max_side, max_objects)
    return root
