"""Detection labels -> a grounding caption listing category names, with the character span of each name."""
import re
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

DETECTION_PROMPT = "object detection : "


def clean_name(name: str) -> str:
    """Category name as written in captions: "(...)" removed, "_" -> " ", then double spaces halved once."""
    name = re.sub(r"\(.*\)", "", name)
    name = name.replace("_", " ")
    return name.replace("  ", " ")


def check_caption_prompt_length(caption_prompt: Sequence[dict] | None, num_names: int) -> None:
    """Raise unless DATASETS.CAPTION_PROMPT has an entry for each of the caption's `num_names` names."""
    if caption_prompt is not None and len(caption_prompt) < num_names:
        raise ValueError(f"DATASETS.CAPTION_PROMPT has {len(caption_prompt)} entries but the caption names "
                         f"{num_names} categories. Give one {{prefix, name, suffix}} entry per category, in "
                         f"category order.")


def join_names(names: Sequence[str], separation_tokens: str, caption_prompt: Sequence[dict] | None = None,
               start: str = "") -> tuple[str, list[tuple[int, int]]]:
    """`start`, then the names joined by `separation_tokens` (none after the last); each name's [begin, end).

    The one caption builder of training, evaluation and the predictor. `caption_prompt[i]` puts its "prefix"
    before and its "suffix" after the i-th name (inside the separators); the callers choose the names.
    """
    caption = start
    spans = []
    for position, name in enumerate(names):
        prompt = caption_prompt[position] if caption_prompt is not None else None
        if prompt is not None:
            caption += prompt["prefix"]
        begin = len(caption)
        caption += name
        spans.append((begin, len(caption)))
        if prompt is not None:
            caption += prompt["suffix"]
        if position != len(names) - 1:
            caption += separation_tokens
    return caption, spans


def build_detection_caption(labels: Sequence[int], names: dict[int, str], separation_tokens: str = " ",
                            add_detection_prompt: bool = False,
                            caption_prompt: Sequence[dict] | None = None) -> tuple[str, dict[int, list[int]]]:
    """Caption naming `labels` in the given order and each label's [begin, end) span of its cleaned name.

    Names are joined by `separation_tokens` (none after the last). `caption_prompt[i]` (the i-th label in the
    caption) gives a "prefix", a "name" replacing the category name and a "suffix" around it. Training cleans the
    caption prompt's names too (evaluation uses them as written), as the official code does.
    """
    check_caption_prompt_length(caption_prompt, len(labels))
    shown = [clean_name(caption_prompt[position]["name"] if caption_prompt is not None else names[label])
             for position, label in enumerate(labels)]
    caption, spans = join_names(shown, separation_tokens, caption_prompt,
                                DETECTION_PROMPT if add_detection_prompt else "")
    return caption, {label: list(span) for label, span in zip(labels, spans)}


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
