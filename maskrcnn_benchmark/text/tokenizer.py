"""Tokenizer of GLIP's captions (data/ and modeling/ share it): the shipped bert-base-uncased vocabulary by default."""
from pathlib import Path

from transformers import AutoTokenizer, BatchEncoding, BertTokenizerFast, PreTrainedTokenizerBase

# bert-base-uncased's config.json and vocab.txt travel with the package so that nothing needs the network.
SHIPPED_BERT_DIR = Path(__file__).resolve().parent / "bert-base-uncased"


def build_tokenizer(cfg) -> PreTrainedTokenizerBase:
    """Tokenizer named by MODEL.LANGUAGE_BACKBONE.TOKENIZER_PATH, else the shipped bert-base-uncased one."""
    lang = cfg.MODEL.LANGUAGE_BACKBONE
    if lang.TOKENIZER_PATH:
        return AutoTokenizer.from_pretrained(lang.TOKENIZER_PATH)
    if lang.TOKENIZER_TYPE != "bert-base-uncased":
        raise ValueError(
            f"MODEL.LANGUAGE_BACKBONE.TOKENIZER_TYPE={lang.TOKENIZER_TYPE!r} is not shipped; set "
            "MODEL.LANGUAGE_BACKBONE.TOKENIZER_PATH to a local tokenizer folder or a Hugging Face name."
        )
    return load_shipped_tokenizer()


def load_shipped_tokenizer(folder: str | Path = SHIPPED_BERT_DIR) -> BertTokenizerFast:
    """The uncased BERT WordPiece tokenizer built from the vocabulary shipped in the package."""
    return BertTokenizerFast.from_pretrained(str(folder))


def tokenize_captions(tokenizer: PreTrainedTokenizerBase, captions: list[str], max_query_len: int,
                      pad_max: bool = True) -> BatchEncoding:
    """Tokenise captions as GLIP's model input: truncated to `max_query_len`, padded to it when `pad_max`."""
    if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
        raise TypeError(f"captions must be a list of str, got {type(captions).__name__}")
    return tokenizer(
        list(captions),
        max_length=max_query_len,
        padding="max_length" if pad_max else "longest",
        return_special_tokens_mask=True,
        return_tensors="pt",
        truncation=True,
    )
