"""The BERT encoder layer used inside GLIP's head, with GLIP's fp16-overflow clamps.

It is a standard (post-LN, absolute position) BERT encoder layer except that:
* the attention scores may be clamped to +-50000 *before* the padding mask is added;
* the intermediate and output blocks always clamp to +-50000 before and after their activation / LayerNorm.
"""
import math

import torch
from torch import Tensor, nn
from transformers import BertConfig
from transformers.activations import ACT2FN

CLAMP_VALUE = 50000.0


def clamp_values(x: Tensor) -> Tensor:
    """Clamp to +-50000, the fp16-safe range GLIP uses."""
    return x.clamp(min=-CLAMP_VALUE, max=CLAMP_VALUE)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with optional score clamping ahead of the additive mask."""

    def __init__(self, config: BertConfig, clamp_min_for_underflow: bool, clamp_max_for_overflow: bool) -> None:
        super().__init__()
        if config.hidden_size % config.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                f"{config.num_attention_heads}"
            )
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError("BertEncoderLayer supports only position_embedding_type 'absolute'")
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.clamp_min_for_underflow = clamp_min_for_underflow
        self.clamp_max_for_overflow = clamp_max_for_overflow

    def _split_heads(self, x: Tensor) -> Tensor:
        return x.view(*x.shape[:-1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden_states: Tensor, additive_mask: Tensor) -> Tensor:
        """Attend over all tokens; `additive_mask` (N, 1, 1, T) holds 0 for valid and a huge negative for padding."""
        query = self._split_heads(self.query(hidden_states))
        key = self._split_heads(self.key(hidden_states))
        value = self._split_heads(self.value(hidden_states))
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if self.clamp_min_for_underflow:
            scores = scores.clamp(min=-CLAMP_VALUE)
        if self.clamp_max_for_overflow:
            scores = scores.clamp(max=CLAMP_VALUE)
        probs = self.dropout((scores + additive_mask).softmax(dim=-1))
        context = torch.matmul(probs, value).transpose(1, 2)
        return context.reshape(*context.shape[:2], -1)


class BertSelfOutput(nn.Module):
    """Projection, dropout and post-LN residual after self-attention."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: Tensor, residual: Tensor) -> Tensor:
        """Return LayerNorm(dropout(dense(hidden_states)) + residual)."""
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class BertAttention(nn.Module):
    """Self-attention followed by its output block."""

    def __init__(self, config: BertConfig, clamp_min_for_underflow: bool, clamp_max_for_overflow: bool) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, clamp_min_for_underflow, clamp_max_for_overflow)
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states: Tensor, additive_mask: Tensor) -> Tensor:
        """Return the attention block output (N, T, C)."""
        return self.output(self.self(hidden_states, additive_mask), hidden_states)


class BertIntermediate(nn.Module):
    """Feed-forward expansion with clamps around the activation."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: Tensor) -> Tensor:
        """Return clamp(act(clamp(dense(x))))."""
        return clamp_values(self.intermediate_act_fn(clamp_values(self.dense(hidden_states))))


class BertOutput(nn.Module):
    """Feed-forward contraction and post-LN residual, with clamps around the LayerNorm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: Tensor, residual: Tensor) -> Tensor:
        """Return clamp(LayerNorm(clamp(dropout(dense(x))) + residual))."""
        hidden_states = clamp_values(self.dropout(self.dense(hidden_states)))
        return clamp_values(self.LayerNorm(hidden_states + residual))


class BertEncoderLayer(nn.Module):
    """One BERT encoder layer over the language tokens, masking padded tokens as keys."""

    def __init__(
        self, config: BertConfig, clamp_min_for_underflow: bool = False, clamp_max_for_overflow: bool = False
    ) -> None:
        super().__init__()
        self.attention = BertAttention(config, clamp_min_for_underflow, clamp_max_for_overflow)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
        """Encode `hidden_states` (N, T, C); `attention_mask` (N, T) is 1 for real tokens and 0 for padding."""
        # Same additive mask as transformers' get_extended_attention_mask: (1 - mask) * finfo.min.
        mask = attention_mask[:, None, None, :].to(hidden_states.dtype)
        additive_mask = (1.0 - mask) * torch.finfo(hidden_states.dtype).min
        attention_output = self.attention(hidden_states, additive_mask)
        return self.output(self.intermediate(attention_output), attention_output)
