"""Detection captions and caption-span -> token maps against the official tokenization golden data."""
import json
from pathlib import Path

import pytest
import torch

from maskrcnn_benchmark.data.datasets.od_to_grounding import build_detection_caption, clean_name, count_fitting_labels
from maskrcnn_benchmark.data.datasets.positive_maps import (
    create_greenlight_map,
    create_positive_dict,
    create_positive_map,
    span_to_token_range,
)
from maskrcnn_benchmark.text import load_shipped_tokenizer

TOKENIZATION = json.loads((Path(__file__).parent / "fixtures" / "tokenization.json").read_text())
COCO_KEYS = [key for key in TOKENIZATION if key.startswith("coco_")]


@pytest.fixture(scope="module")
def tokenizer():
    return load_shipped_tokenizer()


def _nonzero_rows(positive_map):
    return [torch.nonzero(row).flatten().tolist() for row in positive_map]


def test_clean_name_follows_official_rules():
    assert clean_name("traffic_light") == "traffic light"
    assert clean_name("mouse (computer)") == "mouse "  # the trailing space stays
    assert clean_name("a (b) c (d)") == "a "  # greedy parenthesis removal
    assert clean_name("hot__dog") == "hot dog"
    assert clean_name("x    y") == "x  y"  # double spaces are halved once, not collapsed


@pytest.mark.parametrize("key", COCO_KEYS)
def test_coco80_caption_and_spans(key):
    golden = TOKENIZATION[key]
    names = dict(zip(golden["labels"], golden["names"]))
    caption, label_to_span = build_detection_caption(golden["labels"], names, golden["separation_tokens"])
    assert caption == golden["caption"]
    assert [label_to_span[label] for label in golden["labels"]] == golden["char_spans_end_exclusive"]


@pytest.mark.parametrize("key", COCO_KEYS)
def test_coco80_token_maps(key, tokenizer):
    golden = TOKENIZATION[key]
    encoding = tokenizer(golden["caption"], max_length=256, truncation=True)
    assert encoding["input_ids"] == golden["tokenizer_plain"]["input_ids"]
    tokens_positive = [[span] for span in golden["char_spans_end_exclusive"]]

    positive_map = create_positive_map(encoding, tokens_positive, 256)
    assert positive_map.shape == (80, 256)
    assert _nonzero_rows(positive_map) == golden["training_positive_map_rows_nonzero_token_indices"]
    counts = (positive_map > 0).sum(1, keepdim=True).float()
    expected_values = (1.0 / (counts + 1e-6)).expand_as(positive_map)
    assert torch.equal(positive_map[positive_map > 0], expected_values[positive_map > 0])

    label_to_tokens = create_positive_dict(encoding, tokens_positive, golden["labels"])
    assert label_to_tokens == {int(k): v for k, v in golden["positive_map_label_to_token"].items()}


@pytest.mark.parametrize("case", TOKENIZATION["free_form"], ids=lambda c: c["caption"][:20])
def test_free_form_token_maps(case, tokenizer):
    encoding = tokenizer(case["caption"], max_length=256, truncation=True)
    assert encoding["input_ids"] == case["tokenizer_plain"]["input_ids"]
    tokens_positive = [phrase["spans"] for phrase in case["phrases"]]

    positive_map = create_positive_map(encoding, tokens_positive, 256)
    assert _nonzero_rows(positive_map) == case["training_positive_map_rows_nonzero_token_indices"]
    row_values = [positive_map[i, row[0]].item() for i, row in enumerate(_nonzero_rows(positive_map))]
    assert row_values == pytest.approx(case["training_positive_map_row_values"], abs=1e-7)
    sizes = torch.tensor([len(row) for row in _nonzero_rows(positive_map)], dtype=torch.float)
    assert torch.equal(positive_map.max(1).values, 1 / (sizes + 1e-6))

    labels = list(range(1, len(tokens_positive) + 1))
    expected = {int(k): v for k, v in case["eval_positive_map_label_to_token(labels=1..n)"].items()}
    assert create_positive_dict(encoding, tokens_positive, labels) == expected


def test_span_fallbacks_on_spaces(tokenizer):
    caption = "car. mouse . dog"
    encoding = tokenizer(caption)
    # "mouse " ends on a space: the end falls back to end-2; " dog" starts on a space: begin+1.
    assert span_to_token_range(encoding, 5, 11) == (3, 3)
    assert span_to_token_range(encoding, 12, 16) == (5, 5)
    # A span of spaces with no token within 2 characters after its start finds nothing: all-zero row.
    encoding = tokenizer("car.     dog")
    assert span_to_token_range(encoding, 5, 7) is None
    assert create_positive_map(encoding, [[[5, 7]]], 16).sum() == 0


def test_greenlight_map(tokenizer):
    caption = "traffic light. car"
    encoding = tokenizer(caption)
    greenlight = create_greenlight_map([[15, 18], [15, 18]], encoding, 8)
    assert greenlight.tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert create_greenlight_map([[15, 18]], encoding, 8, block_all=True).tolist() == [-1.0] * 8


def test_caption_with_prompt_and_detection_prefix():
    names = {1: "traffic_light", 2: "car"}
    prompt = [{"prefix": "a ", "name": "red_light", "suffix": " here"}, {"prefix": "", "name": "car", "suffix": "!"}]
    caption, spans = build_detection_caption([1, 2], names, ". ", add_detection_prompt=True, caption_prompt=prompt)
    assert caption == "object detection : a red light here. car!"
    assert {label: caption[b:e] for label, (b, e) in spans.items()} == {1: "red light", 2: "car"}


def test_count_fitting_labels(tokenizer):
    # Tokens: [CLS] traffic light . car . mouse . person . hot dog [SEP]  (13)
    labels = [1, 2, 3, 4, 5]
    names = {1: "traffic_light", 2: "car", 3: "mouse (computer)", 4: "person", 5: "hot dog"}
    caption, label_to_span = build_detection_caption(labels, names, ". ")
    spans = [label_to_span[label] for label in labels]
    assert count_fitting_labels(caption, spans, tokenizer, 256) == 5
    assert count_fitting_labels(caption, spans, tokenizer, 13) == 5
    assert count_fitting_labels(caption, spans, tokenizer, 12) == 4  # "hot" fits, "dog" does not
    assert count_fitting_labels(caption, spans, tokenizer, 8) == 3  # "mouse " fits with its trailing space
    assert count_fitting_labels(caption, spans, tokenizer, 7) == 2
    assert count_fitting_labels(caption, spans, tokenizer, 3) == 0
