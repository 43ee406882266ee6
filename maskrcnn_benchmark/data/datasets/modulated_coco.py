"""CocoGrounding: a COCO-format detection dataset served as grounding data (caption = category names)."""
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from maskrcnn_benchmark.structures.bounding_box import BoxList

from .coco import CocoImages, boxes_and_labels, transform_image
from .od_to_grounding import build_detection_caption, count_fitting_labels
from .positive_maps import create_greenlight_map, create_positive_map

logger = logging.getLogger(__name__)


def few_shot_image_ids(ids: Sequence[Any], annotations_of: Callable[[Any], list[dict]], shots: int,
                       shuffle_seed: int = 0) -> list[Any]:
    """Images kept by GLIP's greedy k-shot selection: an image stays while one of its categories needs shots.

    With a non-zero `shuffle_seed` the ids are first shuffled by `random.Random(shuffle_seed)` (the official
    COCODataset rule), so that each seed picks another subset; the kept ids stay in that shuffled order.
    """
    remaining: dict[int, int] = defaultdict(lambda: shots)
    order = list(ids)
    if shuffle_seed != 0:
        random.Random(shuffle_seed).shuffle(order)
    kept = []
    for img_id in order:
        categories = {ann["category_id"] for ann in annotations_of(img_id)}
        if any(remaining[c] > 0 for c in categories):
            kept.append(img_id)
            for c in categories:
                remaining[c] -= 1
    return kept


def _remove_empty_boxes(target: BoxList) -> BoxList:
    """Drop boxes with x2 <= x1 or y2 <= y1 without clipping them (DATASETS.DISABLE_CLIP_TO_IMAGE)."""
    box = target.bbox
    return target[(box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])]


class CocoGrounding(CocoImages):
    """Detection data as grounding: `(image, target, index)` with a caption of all category names.

    Every sample's caption lists every category of the file (json order, or shuffled per sample unless
    `disable_shuffle`), joined by `separation_tokens`. Each box's `tokens_positive` is the span of its category
    name and `positive_map` the matching token map. When the caption is longer than `max_query_len` tokens,
    the categories that do not fit are left out of the caption and their boxes are dropped (GLIP keeps the
    boxes with a truncated or empty token map instead).

    The target is a BoxList (resized with the image) whose fields follow GLIP: labels, boxes (original image
    coordinates), caption, image_id, tokens_positive, area, iscrowd, orig_size, size, positive_map,
    greenlight_map, positive_map_for_od_labels, original_od_label.
    """

    def __init__(self, img_folder: str, ann_file: str, transforms: Callable | None,
                 tokenizer: PreTrainedTokenizerBase, max_query_len: int = 256, separation_tokens: str = " ",
                 disable_shuffle: bool = False, add_detection_prompt: bool = False,
                 caption_prompt: Sequence[dict] | None = None, override_category: list[dict] | None = None,
                 few_shot: int = 0, disable_clip_to_image: bool = False, no_mask_for_od: bool = False,
                 shuffle_seed: int = 0) -> None:
        super().__init__(img_folder, ann_file, remove_images_without_annotations=True)
        if few_shot:
            self.select_images(few_shot_image_ids(self.ids, self.raw_annotations, few_shot, shuffle_seed),
                               " in the few-shot set")
        if override_category is not None:
            # Replaces the names only: the id -> label mapping was built from the file's own categories.
            self.coco.dataset["categories"] = override_category
        if caption_prompt is not None and not disable_shuffle:
            raise ValueError("A caption prompt needs DATASETS.DISABLE_SHUFFLE: it is indexed by caption position.")
        self.ind_to_class = self.categories(no_background=False)
        self._transforms = transforms
        self.tokenizer = tokenizer
        self.max_query_len = max_query_len
        self.separation_tokens = separation_tokens
        self.disable_shuffle = disable_shuffle
        self.add_detection_prompt = add_detection_prompt
        self.caption_prompt = caption_prompt
        self.disable_clip_to_image = disable_clip_to_image
        self.no_mask_for_od = no_mask_for_od
        self._warned_overflow = False

    def make_caption(self) -> tuple[str, dict[int, list[int]]]:
        """A caption of the categories (shuffled with Python `random` unless disabled) that fit the query length."""
        labels = sorted(self.ind_to_class)
        if not self.disable_shuffle:
            random.shuffle(labels)
        caption, label_to_span = self._caption_of(labels)
        fitting = count_fitting_labels(caption, list(label_to_span.values()), self.tokenizer, self.max_query_len)
        if fitting < len(labels):
            self._warn_overflow(len(labels) - fitting)
            caption, label_to_span = self._caption_of(labels[:fitting])
        return caption, label_to_span

    def _caption_of(self, labels: Sequence[int]) -> tuple[str, dict[int, list[int]]]:
        return build_detection_caption(labels, self.ind_to_class, self.separation_tokens,
                                       self.add_detection_prompt, self.caption_prompt)

    def _warn_overflow(self, dropped: int) -> None:
        if not self._warned_overflow:
            logger.warning("%s: the category caption exceeds MAX_QUERY_LEN=%d tokens; %d categories (and their "
                           "boxes) are left out of this sample (warned once)", self.ann_file, self.max_query_len,
                           dropped)
            self._warned_overflow = True

    def grounding_fields(self, target: BoxList, caption: str, label_to_span: dict[int, list[int]],
                         image_id: Any, image_size: tuple[int, int]) -> dict[str, Any]:
        """The per-sample fields GLIP attaches to the target (before any transform: original coordinates)."""
        labels = target.get_field("labels")
        spans = [label_to_span[label] for label in labels.tolist()]
        encoding = self.tokenizer(caption, max_length=self.max_query_len, truncation=True)
        tokens_positive = [[list(span)] for span in spans]
        width, height = image_size
        num_boxes = len(target)
        return {
            "boxes": target.bbox.clone(),
            "labels": labels,
            "caption": caption,
            "image_id": torch.tensor([image_id]),
            "tokens_positive": tokens_positive,
            "area": target.area(),
            "iscrowd": torch.zeros(num_boxes, dtype=torch.int64),
            "orig_size": torch.as_tensor([int(height), int(width)]),
            "size": torch.as_tensor([int(height), int(width)]),
            "positive_map": create_positive_map(encoding, tokens_positive, self.max_query_len),
            "greenlight_map": create_greenlight_map(spans, encoding, self.max_query_len, self.no_mask_for_od),
            # Detection captions carry no per-token detection label: all -1 ("no match").
            "positive_map_for_od_labels": torch.full((self.max_query_len,), -1.0),
            # Only pseudo-labelled data has an original detection label; -10 is GLIP's padding value.
            "original_od_label": torch.full((num_boxes,), -10, dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> tuple[Any, BoxList, int]:
        img, anno = self.load(index)
        target = boxes_and_labels(anno, img.size, self.json_category_id_to_contiguous_id)
        if self.disable_clip_to_image:
            target = _remove_empty_boxes(target)
        else:
            target = target.clip_to_image(remove_empty=True)
        caption, label_to_span = self.make_caption()
        in_caption = [label in label_to_span for label in target.get_field("labels").tolist()]
        target = target[torch.tensor(in_caption, dtype=torch.bool)]
        fields = self.grounding_fields(target, caption, label_to_span, self.ids[index], img.size)
        if self._transforms is not None:
            img, target = transform_image(self._transforms, img, target, self.describe(index))
        for name, value in fields.items():
            target.add_field(name, value)
        return img, target, index
