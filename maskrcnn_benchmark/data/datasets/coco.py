"""COCO-format detection dataset (used for evaluation) and the COCO loading shared with the grounding dataset."""
import contextlib
import io
import json
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from maskrcnn_benchmark.structures.bounding_box import BoxList


def _has_only_empty_bbox(anno: list[dict]) -> bool:
    return all(any(side <= 1 for side in obj["bbox"][2:]) for obj in anno)


def has_valid_annotation(anno: list[dict]) -> bool:
    """Whether an image is kept for training: at least one annotation whose box has width and height > 1."""
    return len(anno) > 0 and not _has_only_empty_bbox(anno)


def _read_json(ann_file: str) -> dict:
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"Annotation file not found: {ann_file}")
    try:
        with open(ann_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"Annotation file {ann_file} is not valid JSON (truncated or corrupt?): {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"Annotation file {ann_file} should hold a JSON object, got {type(data).__name__}")
    return data


def _check_coco_dict(data: dict, ann_file: str) -> None:
    """Every key COCO needs is present and every annotation names a known image and category."""
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"Annotation file {ann_file} has no {key!r} list (not a COCO detection file)")
    category_ids = {cat["id"] for cat in data["categories"]}
    image_ids = {img["id"] for img in data["images"]}
    for ann in data["annotations"]:
        if ann["category_id"] not in category_ids:
            raise ValueError(
                f"{ann_file}: annotation {ann.get('id')} (image {ann.get('image_id')}) has category_id "
                f"{ann['category_id']}, which is not among the categories {sorted(category_ids)}"
            )
        if ann["image_id"] not in image_ids:
            raise ValueError(f"{ann_file}: annotation {ann.get('id')} refers to unknown image {ann['image_id']}")
        problem = bbox_problem(ann.get("bbox"))
        if problem:
            raise ValueError(
                f"{ann_file}: annotation {ann.get('id')} (image {ann['image_id']}) has bbox {ann.get('bbox')!r}: "
                f"{problem}. A COCO bbox is [x, y, width, height], 4 finite numbers; fix or remove this annotation."
            )


def bbox_problem(bbox: Any) -> str | None:
    """What is wrong with an annotation's `bbox` value (None when it is 4 finite numbers)."""
    if not isinstance(bbox, (list, tuple)):
        return "not a list" if bbox is not None else "missing"
    if len(bbox) != 4:
        return f"{len(bbox)} numbers instead of 4"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        return "not all numbers"
    if not all(math.isfinite(v) for v in bbox):
        return "not finite"
    return None


def load_coco(ann_file: str) -> COCO:
    """A pycocotools COCO index of a detection json, with clear errors for missing or malformed files."""
    data = _read_json(ann_file)
    _check_coco_dict(data, ann_file)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress messages
        coco.createIndex()
    return coco


# PIL's modes for 16-bit greyscale (PNG, TIFF; "I" in older Pillow): convert("RGB") clips them at 255 (white).
SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(image: Image.Image, source: str) -> Image.Image:
    """`image` as 8-bit RGB; 16-bit greyscale keeps its top 8 bits, as PIL reads 16-bit colour images."""
    if image.mode in SIXTEEN_BIT_GREY_MODES:
        values = np.asarray(image)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > 65535:
            raise ValueError(f"Image {source}: PIL mode {image.mode} with values {low}..{high}, outside the 16-bit "
                             "range 0..65535; save it as an 8-bit or 16-bit image.")
        image = Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8))
    elif image.mode == "F":
        raise ValueError(f"Image {source}: floating-point pixels (PIL mode F) have no defined 0-255 scale; save it "
                         "as an 8-bit or 16-bit image.")
    return image.convert("RGB")


def read_rgb_image(path: str, context: str = "", exif_orientation: bool = False) -> Image.Image:
    """The 8-bit RGB image in the file `path` (rotated as its EXIF orientation says, if asked).

    Errors name the file (and `context`, e.g. the COCO image id).
    """
    source = f"{path} ({context})" if context else path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image file not found: {source}")
    try:
        with Image.open(path) as img:
            image = ImageOps.exif_transpose(img) if exif_orientation else img
            return to_rgb(image, source)
    except (OSError, Image.DecompressionBombError) as err:
        raise OSError(f"Cannot read image {source}: {err}") from err


def load_image(path: str, image_id: Any) -> Image.Image:
    """The RGB PIL image at `path` as stored (no EXIF rotation: COCO boxes refer to the stored pixels).

    Errors name the file and the COCO image id.
    """
    return read_rgb_image(path, f"image id {image_id}")


def transform_image(transforms: Callable, image: Image.Image, target: Any, source: str):
    """`transforms(image, target)`; a ValueError (e.g. an image too elongated to resize) names `source`."""
    try:
        return transforms(image, target)
    except ValueError as err:
        raise ValueError(f"Image {source} ({image.width}x{image.height} pixels): {err}") from err


def check_image_folder(folder: str) -> None:
    """Raise a clear error when the image folder does not exist."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Image folder not found: {folder}")


def contiguous_category_ids(coco: COCO) -> dict[int, int]:
    """json category id -> label 1..K, in the order of the json `categories` list."""
    return {cat_id: label for label, cat_id in enumerate(coco.getCatIds(), start=1)}


def category_names(categories: list[dict], json_to_contiguous: dict[int, int],
                   no_background: bool = True) -> dict[int, str]:
    """label -> category name (optionally without "__background__"/id 0 entries)."""
    names = {}
    for cat in categories:
        if no_background and (cat["name"] == "__background__" or cat["id"] == 0):
            continue
        names[json_to_contiguous[cat["id"]]] = cat["name"]
    return names


class CocoImages(Dataset):
    """Images and raw annotations of a COCO json: the base of the detection and grounding datasets."""

    def __init__(self, img_folder: str, ann_file: str, remove_images_without_annotations: bool) -> None:
        check_image_folder(img_folder)
        self.root = img_folder
        self.ann_file = ann_file
        self.coco = load_coco(ann_file)
        ids = sorted(self.coco.imgs.keys())
        requirement = ""
        if remove_images_without_annotations:
            ids = [img_id for img_id in ids if has_valid_annotation(self.raw_annotations(img_id))]
            requirement = " with a box wider and higher than 1"
        self.select_images(ids, requirement)
        self.json_category_id_to_contiguous_id = contiguous_category_ids(self.coco)
        self.contiguous_category_id_to_json_id = {v: k for k, v in self.json_category_id_to_contiguous_id.items()}

    def select_images(self, ids: list[Any], requirement: str = "") -> None:
        """Use these image ids (sorted order kept by the caller); an empty selection is an error."""
        if not ids:
            raise ValueError(f"Empty dataset: no image{requirement} in {self.ann_file}")
        self.ids = ids
        self.id_to_img_map = dict(enumerate(ids))

    def raw_annotations(self, img_id: Any) -> list[dict]:
        """The json annotations of one image (crowd ones included)."""
        return self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id))

    def image_path(self, index: int) -> str:
        """The image file of a dataset index."""
        return os.path.join(self.root, self.coco.imgs[self.ids[index]]["file_name"])

    def describe(self, index: int) -> str:
        """The image file and COCO image id of a dataset index, for error messages."""
        return f"{self.image_path(index)} (image id {self.ids[index]})"

    def load(self, index: int) -> tuple[Image.Image, list[dict]]:
        """The RGB image and its raw annotations."""
        img_id = self.ids[index]
        return load_image(self.image_path(index), img_id), self.raw_annotations(img_id)

    def categories(self, no_background: bool = True) -> dict[int, str]:
        """label -> category name."""
        return category_names(self.coco.dataset["categories"], self.json_category_id_to_contiguous_id, no_background)

    def get_img_info(self, index: int) -> dict:
        """The json `images` entry of a dataset index (holds width and height)."""
        return self.coco.imgs[self.ids[index]]

    def __len__(self) -> int:
        return len(self.ids)


def boxes_and_labels(anno: list[dict], image_size: tuple[int, int], json_to_contiguous: dict[int, int]) -> BoxList:
    """xyxy BoxList (legacy +1: x2 = x + w - 1) of non-crowd annotations with contiguous `labels`."""
    anno = [obj for obj in anno if obj.get("iscrowd", 0) == 0]
    boxes = torch.as_tensor([obj["bbox"] for obj in anno], dtype=torch.float32).reshape(-1, 4)
    target = BoxList(boxes, image_size, mode="xywh").convert("xyxy")
    labels = [json_to_contiguous[obj["category_id"]] for obj in anno]
    target.add_field("labels", torch.tensor(labels, dtype=torch.int64))
    return target


class COCODataset(CocoImages):
    """COCO detection dataset: `(image, BoxList with labels, index)`; used for evaluation (plain catalog names).

    Crowd boxes are dropped, boxes are clipped to the image and empty ones removed, as in the official dataset.
    """

    def __init__(self, ann_file: str, root: str, remove_images_without_annotations: bool,
                 transforms: Callable | None = None, override_category: list[dict] | None = None) -> None:
        super().__init__(root, ann_file, remove_images_without_annotations)
        if override_category is not None:
            # Replaces the names only: the id -> label mapping was built from the file's own categories.
            self.coco.dataset["categories"] = override_category
        self.transforms = transforms

    def __getitem__(self, index: int) -> tuple[Any, BoxList, int]:
        img, anno = self.load(index)
        target = boxes_and_labels(anno, img.size, self.json_category_id_to_contiguous_id)
        target = target.clip_to_image(remove_empty=True)
        if self.transforms is not None:
            img, target = transform_image(self.transforms, img, target, self.describe(index))
        return img, target, index
