"""Detection labels -> a grounding caption listing category names, with the character span of each name."""
import re
from typing import Dict, List, Optional, Sequence, Tuple

from transformers import PreTrainedTokenizerBase

DETECTION_PROMPT = "object detection : "


def clean_name(name: str) -> str:
    """Category name as written in captions: "(...)" removed, "_" -> " ", then double spaces halved once."""
    name = re.sub(r"\(.*\)", "", name)
    name = name.replace("_", " ")
    return name.replace("  ", " ")


def build_detection_caption(labels: Sequence[int], names: Dict[int, str], separation_tokens: str = " ",
                            add_detection_prompt: bool = False,
                            caption_prompt: Optional[Sequence[dict]] = None) -> Tuple[str, Dict[int, List[int]]]:
    """Caption naming `labels` in the given order and each label's [begin, end) span of its cleaned name.

    Names are joined by `separation_tokens` (none after the last). `caption_prompt[i]` (the i-th label in the
    caption) gives a "prefix", a "name" replacing the category name and a "suffix" around it.
    """
    caption = DETECTION_PROMPT if add_detection_prompt else ""
    label_to_span = {}
    for position, label in enumerate(labels):
        prompt = caption_prompt[position] if caption_prompt is not None else None
        if prompt is not None:
            caption += prompt["prefix"]
        begin = len(caption)
        caption += clean_name(prompt["name"] if prompt is not None else names[label])
        label_to_span[label] = [begin, len(caption)]
        if prompt is not None:
            caption += prompt["suffix"]
        if position != len(labels) - 1:
            caption += separation_tokens
    return caption, label_to_span


def count_fitting_labels(caption: str, spans: Sequence[Sequence[int]], tokenizer: PreTrainedTokenizerBase,
                         max_query_len: int) -> int:
    """How many leading spans (in caption order) lie entirely within the first `max_query_len` tokens.

    The model only sees `max_query_len` tokens ([CLS] and [SEP] included). A name cut by that limit would get
    a partial or empty token map, so it and every later name count as not fitting.
    """
    encoding = tokenizer(caption, max_length=max_query_len, truncation=True, return_offsets_mapping=True)
    if len(encoding["input_ids"]) < max_query_len:
        return len(spans)
    last_kept_char = max(end for _, end in encoding["offset_mapping"])
    count = 0
    for begin, end in spans:
        name_end = begin + len(caption[begin:end].rstrip())
        if name_end > last_kept_char:
            break
        count += 1
    return count
