"""Text side shared by data/ and modeling/: the tokenizer and the shipped bert-base-uncased files."""
from .tokenizer import SHIPPED_BERT_DIR, build_tokenizer, load_shipped_tokenizer, tokenize_captions

__all__ = ["SHIPPED_BERT_DIR", "build_tokenizer", "load_shipped_tokenizer", "tokenize_captions"]
