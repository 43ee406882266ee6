"""The BERT language backbone and the shipped tokenizer against the official outputs."""
import hashlib
import json

import torch
from conftest import FIXTURES, SMALL

from maskrcnn_benchmark.modeling.language_backbone import BertEncoder
from maskrcnn_benchmark.modeling.language_backbone.bert_model import load_language_config
from maskrcnn_benchmark.text import SHIPPED_BERT_DIR, load_shipped_tokenizer, tokenize_captions

TOKENIZATION = json.loads((FIXTURES / "tokenization.json").read_text())


def _entry(prefix: str) -> dict:
    return next(v for k, v in TOKENIZATION.items() if k.startswith(prefix))


def test_shipped_vocabulary_is_bert_base_uncased():
    digest = hashlib.md5((SHIPPED_BERT_DIR / "vocab.txt").read_bytes()).hexdigest()
    assert digest == TOKENIZATION["tokenizer"]["vocab_txt_md5"]
    tokenizer = load_shipped_tokenizer()
    assert len(tokenizer) == 30522
    for token, token_id in TOKENIZATION["tokenizer"]["special_ids"].items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id


def test_model_input_of_coco_captions_matches_official():
    tokenizer = load_shipped_tokenizer()
    for prefix in ("coco_glip_t", "coco_yacs_default"):
        entry = _entry(prefix)
        encoded = tokenize_captions(tokenizer, [entry["caption"]], max_query_len=256, pad_max=True)
        expected = entry["model_input_padded_256"]
        n = expected["num_real_tokens"]
        assert encoded["input_ids"].shape == (1, 256)
        assert encoded["input_ids"][0, :n].tolist() == expected["input_ids_first_num_real_tokens"]
        assert encoded["input_ids"][0, n:].eq(0).all()
        assert encoded["attention_mask"][0].sum().item() == n
        assert encoded["input_ids"][0].tolist() == tokenizer(entry["caption"])["input_ids"] + [0] * (256 - n)
        assert entry["tokenizer_plain"]["input_ids"] == tokenizer(entry["caption"])["input_ids"]


def test_small_case_tokenization(small_case):
    tokenizer = load_shipped_tokenizer()
    for split in ("eval", "train"):
        given = small_case["inputs"][split]
        encoded = tokenize_captions(tokenizer, given["captions"], 256, pad_max=True)
        for key in ("input_ids", "attention_mask", "special_tokens_mask", "token_type_ids"):
            assert torch.equal(encoded[key], given["tokenized"][key]), key


def test_bert_encoder_matches_official_features(small_case, small_state_dict):
    prefix = "language_backbone.body."
    encoder = BertEncoder(load_language_config(SMALL / "bert"), num_layers=1)
    state = {k[len(prefix):]: v for k, v in small_state_dict.items() if k.startswith(prefix)}
    encoder.load_state_dict(state, strict=True)
    encoder.eval()
    tokenized = small_case["inputs"]["eval"]["tokenized"]
    with torch.no_grad():
        out = encoder({"input_ids": tokenized["input_ids"], "attention_mask": tokenized["attention_mask"]})
    expected = small_case["eval"]["intermediates"]["language_backbone"]
    for key in ("aggregate", "embedded", "hidden"):
        torch.testing.assert_close(out[key], expected[key], atol=1e-5, rtol=1e-5)
    assert torch.equal(out["masks"], expected["masks"])
