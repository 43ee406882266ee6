"""LVIS evaluation dataset (official catalog names containing "lvis_evaluation", e.g. the minival config)."""
import os
from collections.abc import Callable

from maskrcnn_benchmark.data.evaluation.lvis_eval import check_lvis_annotations

from .coco import COCODataset


class LvisDetection(COCODataset):
    """LVIS v1 images and boxes, evaluated with the LVIS protocol (fixed AP, APr/APc/APf).

    Every image is kept (LVIS evaluates images without boxes through their negative categories). As in the
    official dataset, an image's file is the last two parts of its `coco_url` (e.g. `val2017/000000397133.jpg`)
    under the image folder; an entry without `coco_url` uses its `file_name`.
    """

    def __init__(self, ann_file: str, root: str, transforms: Callable | None = None,
                 override_category: list[dict] | None = None, tokenizer=None, max_query_len: int = 256,
                 caption_prompt: list[dict] | None = None) -> None:
        # tokenizer, max_query_len and caption_prompt are the options the data builder gives every prompted
        # dataset; the evaluation builds the detection prompts itself, from the config, as for COCO.
        super().__init__(ann_file, root, remove_images_without_annotations=False, transforms=transforms)
        check_lvis_annotations(self.coco.dataset, ann_file)
        # The evaluation reads the file's categories (their frequency groups) even when the prompt's names change.
        self.lvis_categories = self.coco.dataset["categories"]
        if override_category is not None:
            self.coco.dataset["categories"] = override_category

    def lvis_ground_truth(self) -> dict:
        """The LVIS json the protocol rates against (images, annotations and the file's own categories)."""
        return dict(self.coco.dataset, categories=self.lvis_categories)

    def image_path(self, index: int) -> str:
        """The image file of a dataset index (from `coco_url`, else `file_name`)."""
        info = self.coco.imgs[self.ids[index]]
        if "coco_url" in info:
            return os.path.join(self.root, *info["coco_url"].split("/")[-2:])
        if "file_name" in info:
            return os.path.join(self.root, info["file_name"])
        raise ValueError(f"{self.ann_file}: image {self.ids[index]} has neither coco_url nor file_name, so its "
                         "image file is unknown.")
