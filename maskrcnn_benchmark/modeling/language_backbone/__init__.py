"""Language backbone (BERT); its tokenizer is maskrcnn_benchmark.text."""
from collections import OrderedDict

from torch import nn

from .bert_model import BertEncoder, has_pretrained_weights, load_language_config, resolve_language_source

__all__ = ["build_language_backbone", "build_language_config", "BertEncoder"]


def build_language_config(cfg):
    """The BertConfig of MODEL.LANGUAGE_BACKBONE (MODEL_PATH, else the shipped bert-base-uncased config)."""
    lang = cfg.MODEL.LANGUAGE_BACKBONE
    config = load_language_config(resolve_language_source(lang.MODEL_PATH, lang.MODEL_TYPE))
    if config.hidden_size != lang.LANG_DIM:
        raise ValueError(
            f"MODEL.LANGUAGE_BACKBONE.LANG_DIM={lang.LANG_DIM} differs from the language model's hidden size "
            f"{config.hidden_size} ({lang.MODEL_PATH or 'shipped bert-base-uncased'})."
        )
    return config


def build_language_backbone(cfg, config=None) -> nn.Module:
    """`nn.Sequential(body=BertEncoder)`, matching the official `language_backbone.body.model.*` keys."""
    lang = cfg.MODEL.LANGUAGE_BACKBONE
    config = config if config is not None else build_language_config(cfg)
    source = resolve_language_source(lang.MODEL_PATH, lang.MODEL_TYPE)
    pretrained = source if has_pretrained_weights(source) else None
    body = BertEncoder(config, num_layers=lang.N_LAYERS, use_checkpoint=lang.USE_CHECKPOINT,
                       pretrained_source=pretrained)
    return nn.Sequential(OrderedDict([("body", body)]))
