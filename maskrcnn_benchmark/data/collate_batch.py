"""Collation of dataset samples into the batch the GLIP trainer and evaluator consume."""
from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers import PreTrainedTokenizerBase

from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList, to_image_list
from maskrcnn_benchmark.text import tokenize_captions


class CollatedBatch(NamedTuple):
    """One batch. The first six items are GLIP's collated tuple, in its order; the last two are additions.

    captions: each target's caption (None when the targets carry none, e.g. detection evaluation data).
    tokenized: the captions tokenised as the model expects (input_ids, attention_mask, token_type_ids,
    special_tokens_mask; padded to MAX_QUERY_LEN when PAD_MAX), for `model(..., tokenized=batch.tokenized)`.
    """

    images: ImageList
    targets: tuple[BoxList, ...]
    img_ids: tuple[int, ...]
    positive_map: torch.Tensor | None
    positive_map_eval: torch.Tensor | None
    greenlight_map: torch.Tensor | None
    captions: list[str] | None
    tokenized: dict[str, torch.Tensor] | None


def concat_token_maps(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rows of every image's (boxes, tokens) map stacked into one 0/1 float map (normalisation dropped)."""
    width = max(m.shape[1] for m in maps)
    batched = torch.zeros((sum(m.shape[0] for m in maps), width), dtype=torch.bool)
    row = 0
    for token_map in maps:
        batched[row:row + len(token_map), :token_map.shape[1]] = token_map.bool()
        row += len(token_map)
    return batched.float()


def _field_of_all(targets: Sequence[BoxList], name: str) -> list | None:
    if not all(target.has_field(name) for target in targets):
        return None
    return [target.get_field(name) for target in targets]


class BatchCollator:
    """(image, target, index) samples -> CollatedBatch.

    Images are zero-padded (bottom/right) to a multiple of `size_divisible`. The per-box `positive_map` rows of
    all images are concatenated and made 0/1, greenlight maps stacked; with a `tokenizer`, the captions are
    tokenised with `max_query_len` / `pad_max`.
    """

    def __init__(self, size_divisible: int = 0, tokenizer: PreTrainedTokenizerBase | None = None,
                 max_query_len: int = 256, pad_max: bool = True) -> None:
        self.size_divisible = size_divisible
        self.tokenizer = tokenizer
        self.max_query_len = max_query_len
        self.pad_max = pad_max

    def __call__(self, batch: Sequence[tuple]) -> CollatedBatch:
        images, targets, img_ids = zip(*batch)
        positive_maps = _field_of_all(targets, "positive_map")
        eval_maps = _field_of_all(targets, "positive_map_eval")
        greenlight_maps = _field_of_all(targets, "greenlight_map")
        captions = _field_of_all(targets, "caption")
        tokenized = None
        if captions is not None and self.tokenizer is not None:
            tokenized = dict(tokenize_captions(self.tokenizer, captions, self.max_query_len, self.pad_max))
        return CollatedBatch(
            images=to_image_list(list(images), self.size_divisible),
            targets=targets,
            img_ids=img_ids,
            positive_map=concat_token_maps(positive_maps) if positive_maps is not None else None,
            positive_map_eval=concat_token_maps(eval_maps) if eval_maps is not None else None,
            greenlight_map=torch.stack(greenlight_maps) if greenlight_maps is not None else None,
            captions=captions,
            tokenized=tokenized,
        )
