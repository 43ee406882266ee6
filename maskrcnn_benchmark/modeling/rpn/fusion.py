"""GLIP's deep vision-language fusion: bidirectional cross-attention between image and text tokens."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

CLAMP_VALUE = 50000.0
# Additive score for padded language tokens; valid tokens get their mask value (+1) added instead.
PADDING_SCORE = -9e15


class BiMultiHeadAttention(nn.Module):
    """Multi-head attention in both directions: visual queries over language tokens and vice versa.

    Both directions share one score matrix q_v . k_l (visual queries, language keys).
    """

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.1,
        clamp_min_for_underflow: bool = False,
        clamp_max_for_overflow: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.dropout = dropout
        self.clamp_min_for_underflow = clamp_min_for_underflow
        self.clamp_max_for_overflow = clamp_max_for_overflow

        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: Xavier-uniform weights, zero biases."""
        for linear in (self.v_proj, self.l_proj, self.values_v_proj, self.values_l_proj,
                       self.out_v_proj, self.out_l_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def _clamp(self, scores: Tensor) -> Tensor:
        if self.clamp_min_for_underflow:
            scores = scores.clamp(min=-CLAMP_VALUE)
        if self.clamp_max_for_overflow:
            scores = scores.clamp(max=CLAMP_VALUE)
        return scores

    def _split_heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.embed_dim)

    def forward(self, v: Tensor, l: Tensor, attention_mask_l: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return the updates (delta_v (N, Lv, v_dim), delta_l (N, Ll, l_dim)) for visual and language tokens.

        `attention_mask_l` (N, Ll) is 1 for real tokens and 0 for padding; it only masks the visual-query side.
        """
        query = self._split_heads(self.v_proj(v) * self.scale)
        key = self._split_heads(self.l_proj(l))
        value_v = self._split_heads(self.values_v_proj(v))
        value_l = self._split_heads(self.values_l_proj(l))

        scores = self._clamp(torch.matmul(query, key.transpose(-1, -2)))  # (N, heads, Lv, Ll)

        # Language queries over all visual tokens (padded image area included): explicit max subtraction,
        # clamped again, taken before the language mask is added.
        scores_l = scores.transpose(-1, -2)
        scores_l = self._clamp(scores_l - scores_l.amax(dim=-1, keepdim=True))
        probs_l = scores_l.softmax(dim=-1)

        if attention_mask_l is not None:
            mask = attention_mask_l.to(scores.dtype).masked_fill(attention_mask_l == 0, PADDING_SCORE)
            scores = scores + mask[:, None, None, :]
        probs_v = scores.softmax(dim=-1)

        probs_v = F.dropout(probs_v, p=self.dropout, training=self.training)
        probs_l = F.dropout(probs_l, p=self.dropout, training=self.training)

        delta_v = self.out_v_proj(self._merge_heads(torch.matmul(probs_v, value_l)))
        delta_l = self.out_l_proj(self._merge_heads(torch.matmul(probs_l, value_v)))
        return delta_v, delta_l


class BiAttentionBlock(nn.Module):
    """Pre-LN bidirectional fusion of all pyramid levels (jointly) with the language tokens, with layer scale.

    This is the official BiAttentionBlockForCheckpoint with levels concatenated (no SEPARATE_BIDIRECTIONAL).
    The residual is added to the *normalized* inputs, as in the official code.
    """

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.1,
        init_values: float = 1e-4,
        clamp_min_for_underflow: bool = False,
        clamp_max_for_overflow: bool = False,
    ) -> None:
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(
            v_dim, l_dim, embed_dim, num_heads, dropout, clamp_min_for_underflow, clamp_max_for_overflow
        )
        self.gamma_v = nn.Parameter(init_values * torch.ones(v_dim))
        self.gamma_l = nn.Parameter(init_values * torch.ones(l_dim))

    def forward(
        self, visual: list[Tensor], lang: Tensor, attention_mask_l: Tensor
    ) -> tuple[list[Tensor], Tensor]:
        """Fuse visual maps [(N, C, H_i, W_i)] with language tokens (N, T, D); return both updated."""
        sizes = [feature.shape[-2:] for feature in visual]
        v = torch.cat([feature.flatten(2) for feature in visual], dim=2).transpose(1, 2)
        v = self.layer_norm_v(v)
        l = self.layer_norm_l(lang)
        delta_v, delta_l = self.attn(v, l, attention_mask_l)
        v = v + self.gamma_v * delta_v
        l = l + self.gamma_l * delta_l

        v = v.transpose(1, 2)
        levels = torch.split(v, [h * w for h, w in sizes], dim=2)
        fused = [level.reshape(*level.shape[:2], h, w) for level, (h, w) in zip(levels, sizes)]
        return fused, l
