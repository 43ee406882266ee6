"""BERT text encoder of GLIP (the `language_backbone.body` module)."""
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertModel

from maskrcnn_benchmark.text import SHIPPED_BERT_DIR

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_language_source(path: str, model_type: str) -> str | Path:
    """Return where to read the language model from: `path` if set, else the shipped copy of `model_type`."""
    if path:
        return path
    if model_type != "bert-base-uncased":
        raise ValueError(
            f"MODEL.LANGUAGE_BACKBONE.MODEL_TYPE={model_type!r} has no shipped copy; set "
            "MODEL.LANGUAGE_BACKBONE.MODEL_PATH (and TOKENIZER_PATH) to a local folder or a Hugging Face name."
        )
    return SHIPPED_BERT_DIR


def load_language_config(source: str | Path) -> BertConfig:
    """Load the BertConfig of a local folder (with config.json) or a Hugging Face model name."""
    config = BertConfig.from_pretrained(str(source))
    if config.model_type != "bert":
        raise ValueError(f"{source}: language model type {config.model_type!r} is not supported (only BERT).")
    return config


class BertEncoder(nn.Module):
    """BERT whose last `num_layers` hidden states, averaged, are GLIP's token features."""

    def __init__(self, config: BertConfig, num_layers: int = 1, use_checkpoint: bool = False,
                 pretrained_source: str | Path | None = None):
        super().__init__()
        if pretrained_source is not None:
            self.model = BertModel.from_pretrained(str(pretrained_source), config=config, add_pooling_layer=False)
        else:
            self.model = BertModel(config, add_pooling_layer=False)
        if use_checkpoint:
            self.model.gradient_checkpointing_enable()
        self.language_dim = config.hidden_size
        self.num_layers = num_layers

    def forward(self, tokenized: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Encode `input_ids`/`attention_mask` into GLIP's language feature dict."""
        mask = tokenized["attention_mask"]
        outputs = self.model(input_ids=tokenized["input_ids"], attention_mask=mask, output_hidden_states=True)
        encoded_layers = outputs.hidden_states[1:]
        # The official code averages the last N layers and then divides by N once more; kept for checkpoints.
        features = torch.stack(encoded_layers[-self.num_layers:], 1).mean(1) / self.num_layers
        embedded = features * mask.unsqueeze(-1).to(features.dtype)
        aggregate = embedded.sum(1) / mask.sum(-1, keepdim=True).to(features.dtype)
        return {"aggregate": aggregate, "embedded": embedded, "masks": mask, "hidden": encoded_layers[-1]}


def has_pretrained_weights(source: str | Path) -> bool:
    """True when `source` is a local folder that holds BERT weights."""
    folder = Path(source)
    return folder.is_dir() and any((folder / name).is_file() for name in _WEIGHT_FILES)
