"""Flickr30k phrase grounding evaluation set, read from MDETR's annotations as the official FlickrDataset."""
import logging
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .coco import CocoImages, boxes_and_labels, load_image, transform_image
from .positive_maps import create_positive_map

logger = logging.getLogger(__name__)

# Keys of an MDETR Flickr30k `images` entry (one entry per sentence) that the grounding evaluation reads.
REQUIRED_IMAGE_KEYS = ("file_name", "width", "height", "caption", "tokens_positive_eval", "sentence_id",
                       "original_img_id")


class FlickrDataset(CocoImages):
    """One item per (image, sentence) of `final_flickr_{separate,merged}GT_{val,test}.json` (MDETR's format).

    The target is the BoxList of the sentence's boxes (labels 1) with the fields `caption`, `positive_map_eval`
    (one row per evaluated phrase: its tokens in the caption, from `tokens_positive_eval`), `sentence_id`,
    `original_img_id` and `orig_size`. As officially, entries without a box are left out. The recall evaluator
    reads the Flickr30k Entities boxes of `subset` under `entities_dir`.
    """

    def __init__(self, img_folder: str, ann_file: str, entities_dir: str, subset: str,
                 transforms: Callable | None, tokenizer: PreTrainedTokenizerBase, max_query_len: int = 256,
                 override_category: list[dict] | None = None, caption_prompt: list[dict] | None = None) -> None:
        super().__init__(img_folder, ann_file, remove_images_without_annotations=True)
        if override_category is not None or caption_prompt is not None:
            raise ValueError("DATASETS.OVERRIDE_CATEGORY and DATASETS.CAPTION_PROMPT apply to detection prompts; a "
                             "Flickr30k sentence is its own prompt. Leave them unset for the flickr datasets.")
        self._check_entries()
        self.entities_dir = entities_dir
        self.subset = subset
        self.transforms = transforms
        self.tokenizer = tokenizer
        self.max_query_len = max_query_len

    def _check_entries(self) -> None:
        for img_id in self.ids:
            missing = [key for key in REQUIRED_IMAGE_KEYS if key not in self.coco.imgs[img_id]]
            if missing:
                raise ValueError(f"{self.ann_file}: image entry {img_id} has no {missing}; the Flickr30k grounding "
                                 "evaluation reads MDETR's final_flickr_*GT_*.json format (see DATA.md).")

    def positive_map_eval(self, index: int) -> torch.Tensor:
        """(phrases, MAX_QUERY_LEN) map of the evaluated phrases' tokens (rows normalised, as officially)."""
        info = self.coco.imgs[self.ids[index]]
        encoding = self.tokenizer(info["caption"], return_tensors="pt")
        positive_map = create_positive_map(encoding, info["tokens_positive_eval"], self.max_query_len)
        tokenless = [k for k in range(len(positive_map)) if not positive_map[k].any()]
        if tokenless:
            logger.warning("%s: phrases %s of image entry %s have no token within MAX_QUERY_LEN=%d of %r; they will "
                           "get no box (counted as misses).", self.ann_file, tokenless, self.ids[index],
                           self.max_query_len, info["caption"])
        return positive_map

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        info = self.coco.imgs[self.ids[index]]
        img = load_image(self.image_path(index), self.ids[index])
        annotations = self.raw_annotations(self.ids[index])
        target = boxes_and_labels(annotations, img.size, {ann["category_id"]: 1 for ann in annotations})
        target = target.clip_to_image(remove_empty=False)
        if self.transforms is not None:
            img, target = transform_image(self.transforms, img, target, self.describe(index))
        target.add_field("caption", info["caption"])
        target.add_field("positive_map_eval", self.positive_map_eval(index))
        target.add_field("sentence_id", info["sentence_id"])
        target.add_field("original_img_id", info["original_img_id"])
        target.add_field("orig_size", torch.as_tensor([int(info["height"]), int(info["width"])]))
        return img, target, index
