"""Character spans of a caption -> token positions, as GLIP builds its box/label-to-token maps."""
from collections.abc import Sequence

import torch
from transformers import BatchEncoding

Span = Sequence[int]  # [begin, end) character positions


def _char_to_token(encoding: BatchEncoding, char_index: int) -> int | None:
    # A position before the caption start maps to no token (the fast tokenizer would raise instead).
    return encoding.char_to_token(char_index) if char_index >= 0 else None


def span_to_token_range(encoding: BatchEncoding, begin: int, end: int) -> tuple[int, int] | None:
    """First and last token (inclusive) of the characters [begin, end), or None when either is not found.

    As in GLIP, a start on a character without a token (a space) falls back to begin+1 then begin+2, and an
    end on such a character falls back to end-2 then end-3.
    """
    first = _char_to_token(encoding, begin)
    for shift in (1, 2):
        if first is None:
            first = _char_to_token(encoding, begin + shift)
    last = _char_to_token(encoding, end - 1)
    for shift in (2, 3):
        if last is None:
            last = _char_to_token(encoding, end - shift)
    if first is None or last is None:
        return None
    return first, last


def create_positive_map(encoding: BatchEncoding, tokens_positive: Sequence[Sequence[Span]],
                        num_tokens: int = 256) -> torch.Tensor:
    """(boxes, num_tokens) map: 1 on the tokens of each box's spans, each row divided by (its sum + 1e-6)."""
    positive_map = torch.zeros((len(tokens_positive), num_tokens), dtype=torch.float)
    for row, spans in enumerate(tokens_positive):
        for begin, end in spans:
            token_range = span_to_token_range(encoding, begin, end)
            if token_range is not None:
                positive_map[row, token_range[0]:token_range[1] + 1] = 1
    return positive_map / (positive_map.sum(-1)[:, None] + 1e-6)


def create_greenlight_map(spans: Sequence[Span], encoding: BatchEncoding, num_tokens: int = 256,
                          block_all: bool = False) -> torch.Tensor:
    """(num_tokens,) map of the tokens the masked-LM objective may mask: 1 on `spans`, 0 elsewhere.

    `block_all` (MODEL.DYHEAD.FUSE_CONFIG.NO_MASK_FOR_OD) sets every entry to -1.
    """
    if block_all:
        return torch.full((num_tokens,), -1.0)
    greenlight_map = torch.zeros(num_tokens, dtype=torch.float)
    for begin, end in spans:
        token_range = span_to_token_range(encoding, begin, end)
        if token_range is not None:
            greenlight_map[token_range[0]:token_range[1] + 1] = 1
    return greenlight_map


def create_positive_dict(encoding: BatchEncoding, tokens_positive: Sequence[Sequence[Span]],
                         labels: Sequence[int]) -> dict[int, list[int]]:
    """label -> token indices of its spans (the evaluation-time `positive_map` the model receives)."""
    label_to_tokens: dict[int, list[int]] = {}
    for label, spans in zip(labels, tokens_positive):
        for begin, end in spans:
            token_range = span_to_token_range(encoding, begin, end)
            if token_range is not None:
                label_to_tokens.setdefault(label, []).extend(range(token_range[0], token_range[1] + 1))
    return label_to_tokens
