"""GLIP's deep vision-language fusion: bidirectional cross-attention between image and text tokens."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn_benchmark.layers.execution_plan import UsesExecutionPlan

CLAMP_VALUE = 50000.0
# Additive score for padded language tokens; valid tokens get their mask value (+1) added instead. In float16 it
# is the dtype's lowest finite value (the official -9e15 becomes -inf there): either way padded tokens get zero
# weight, and a row without any real token stays uniform instead of becoming NaN.
PADDING_SCORE = -9e15
# Visual tokens per chunk of the inference-time visual attention (bounds its temporary memory).
VISUAL_CHUNK = 4096


class BiMultiHeadAttention(UsesExecutionPlan, nn.Module):
    """Multi-head attention in both directions: visual queries over language tokens and vice versa.

    Both directions share one score matrix q_v . k_l (visual queries, language keys). The execution plan picks
    the computation: materialised scores (reference), folded into the text side (cpu), or two
    scaled_dot_product_attention calls (accelerator).
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

    def _clamp(self, scores: Tensor, inplace: bool = False) -> Tensor:
        low = -CLAMP_VALUE if self.clamp_min_for_underflow else None
        high = CLAMP_VALUE if self.clamp_max_for_overflow else None
        if low is None and high is None:
            return scores
        return scores.clamp_(min=low, max=high) if inplace else scores.clamp(min=low, max=high)

    def _split_heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.embed_dim)

    def forward(self, v: Tensor, l: Tensor, attention_mask_l: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return the updates (delta_v (N, Lv, v_dim), delta_l (N, Ll, l_dim)) for visual and language tokens.

        `attention_mask_l` (N, Ll) is 1 for real tokens and 0 for padding; it only masks the visual-query side.
        """
        fusion = self.execution_plan.fusion
        if fusion == "sdpa":
            return self._forward_sdpa(v, l, attention_mask_l)
        if fusion == "folded" and not _is_half(v, self.v_proj.weight):
            return self._forward_folded(v, l, attention_mask_l)
        return self._forward_reference(v, l, attention_mask_l)

    def _padding_scores(self, attention_mask_l: Tensor, dtype: torch.dtype) -> Tensor:
        """Official additive language mask: the mask value (1) for real tokens, PADDING_SCORE for padding."""
        return attention_mask_l.to(dtype).masked_fill(attention_mask_l == 0, padding_score(dtype))

    def _forward_reference(
        self, v: Tensor, l: Tensor, attention_mask_l: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The official computation: project both sides, materialise the shared score matrix per head."""
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
            # Padded tokens get PADDING_SCORE itself: the official sum rounds to it in float32 (|score| is far
            # below its ulp), and in float16 the sum could leave the dtype's range.
            padded = (attention_mask_l == 0)[:, None, None, :]
            real_scores = scores + attention_mask_l.to(scores.dtype)[:, None, None, :]
            scores = real_scores.masked_fill(padded, padding_score(scores.dtype))
        probs_v = scores.softmax(dim=-1)

        probs_v = F.dropout(probs_v, p=self.dropout, training=self.training)
        probs_l = F.dropout(probs_l, p=self.dropout, training=self.training)

        delta_v = self.out_v_proj(self._merge_heads(torch.matmul(probs_v, value_l)))
        delta_l = self.out_l_proj(self._merge_heads(torch.matmul(probs_l, value_v)))
        return delta_v, delta_l

    def _forward_sdpa(
        self, v: Tensor, l: Tensor, attention_mask_l: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Both directions as fused attention kernels, without materialising the (Lv, Ll) scores.

        The visual side attends over the language tokens with the padding mask, the language side over all
        visual tokens with the projected visual queries as keys: the same softmaxes as the reference (the mask's
        +1 on real tokens and the language side's max subtraction do not change a softmax). The +-50000 clamps
        are not applied: they keep materialised float16 scores finite, while the kernels accumulate the scores in
        float32; they would change the result only where a score exceeds 50000.
        """
        query = self._split_heads(self.v_proj(v))
        key = self._split_heads(self.l_proj(l))
        value_v = self._split_heads(self.values_v_proj(v))
        value_l = self._split_heads(self.values_l_proj(l))
        dropout = self.dropout if self.training else 0.0
        mask = None
        if attention_mask_l is not None:
            mask = self._padding_scores(attention_mask_l, query.dtype)[:, None, None, :]
        attended_l = F.scaled_dot_product_attention(query, key, value_l, attn_mask=mask, dropout_p=dropout,
                                                    scale=self.scale)
        attended_v = F.scaled_dot_product_attention(key, query, value_v, dropout_p=dropout, scale=self.scale)
        return self.out_v_proj(self._merge_heads(attended_l)), self.out_l_proj(self._merge_heads(attended_v))

    def _forward_folded(
        self, v: Tensor, l: Tensor, attention_mask_l: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Same function with every projection of the (many) visual tokens folded into the (few) text tokens.

        Per head h, q_h . k_h = v . (k_h W_q,h) + b_q,h . k_h, the value projection of the visual output
        commutes with the attention (out_v_proj folded into value_l), and the language side attends over the
        raw visual tokens and projects its (few) outputs afterwards. So the visual tokens only meet three
        matmuls of width heads * Ll: the shared scores, probs_v @ values, probs_l^T @ v. The scores are
        computed once for both directions (in training all at once, in inference chunk by chunk), so the
        official clamps apply unchanged (they are skipped only when a norm bound proves that they cannot bind).
        """
        batch, num_text = l.shape[:2]
        heads, head_dim, v_dim = self.num_heads, self.head_dim, v.shape[-1]
        key = self._split_heads(self.l_proj(l)) * self.scale  # (N, heads, Ll, head_dim)
        q_weight = self.v_proj.weight.view(heads, head_dim, v_dim)
        text_keys = torch.matmul(key, q_weight).reshape(batch, heads * num_text, v_dim)
        text_bias = torch.matmul(key, self.v_proj.bias.view(heads, head_dim, 1)).reshape(batch, 1, -1)
        out_weight = self.out_v_proj.weight.view(v_dim, heads, head_dim).permute(1, 2, 0)
        text_values = torch.matmul(self._split_heads(self.values_l_proj(l)), out_weight)

        clamp = self._clamp_may_bind(v, text_keys, text_bias)
        padding = None
        if attention_mask_l is not None:
            padding = self._padding_scores(attention_mask_l, v.dtype)[:, None, None, :]
        text_values = text_values.reshape(batch, heads * num_text, v_dim)
        if not torch.is_grad_enabled():
            return self._attend_in_chunks(v, text_keys, text_bias, padding, text_values, clamp, num_text)
        scores = torch.baddbmm(text_bias, v, text_keys.transpose(1, 2))  # (N, Lv, heads * Ll)
        if clamp:
            scores = self._clamp(scores)
        delta_v = self._visual_update(scores, padding, text_values)
        exp_scores = (scores - scores.amax(dim=1, keepdim=True)).exp()
        sums = exp_scores.sum(dim=1)  # (N, heads * Ll)
        if self.training and self.dropout > 0:
            probs = F.dropout(exp_scores / sums[:, None, :], p=self.dropout, training=True)
            attended = torch.bmm(probs.transpose(1, 2), v)
            weights = probs.sum(dim=1)  # rows of dropped-out probabilities no longer sum to 1
        else:
            attended = torch.bmm(exp_scores.transpose(1, 2), v) / sums[:, :, None]
            weights = None
        return delta_v, self._language_update(attended, weights, batch, num_text)

    def _attend_in_chunks(self, v: Tensor, text_keys: Tensor, text_bias: Tensor, padding: Tensor | None,
                          text_values: Tensor, clamp: bool, num_text: int) -> tuple[Tensor, Tensor]:
        """Inference: both directions for one chunk of visual tokens at a time, so that the (N, Lv, heads * Ll)
        scores never exist at once. The language side's softmax over all visual tokens is accumulated online
        (running maximum and sum, rescaled chunk by chunk).

        The text-key bias is constant along the visual tokens, so it cancels in the language side's softmax: it
        is only added for the visual side (with the padding scores), unless the clamps may bind, which need it.
        """
        batch, heads = v.shape[0], self.num_heads
        visual_bias = padding if clamp else text_bias.view(batch, 1, heads, num_text)
        if not clamp and padding is not None:
            visual_bias = visual_bias + padding
        running_max = sums = attended = None
        delta_v = []
        for v_chunk in v.split(VISUAL_CHUNK, dim=1):
            scores = torch.bmm(v_chunk, text_keys.transpose(1, 2))  # (N, chunk, heads * Ll)
            if clamp:
                scores = self._clamp(scores.add_(text_bias), inplace=True)
            delta_v.append(self._visual_update(scores, visual_bias, text_values))
            chunk_max = scores.amax(dim=1)
            new_max = chunk_max if running_max is None else torch.maximum(running_max, chunk_max)
            exp_scores = scores.sub_(new_max[:, None, :]).exp_()
            # The accumulators are float32 whatever the autocast dtype: they sum over all the chunks.
            chunk_sums = exp_scores.sum(dim=1, dtype=torch.float32)
            chunk_attended = torch.bmm(exp_scores.transpose(1, 2), v_chunk)
            if running_max is None:
                sums, attended = chunk_sums, chunk_attended.float()
            else:
                rescale = (running_max - new_max).float().exp_()
                sums = sums.mul_(rescale).add_(chunk_sums)
                attended = attended.mul_(rescale[:, :, None]).add_(chunk_attended)
            running_max = new_max
        attended = (attended / sums[:, :, None]).to(chunk_attended.dtype)
        return torch.cat(delta_v, dim=1), self._language_update(attended, None, batch, num_text)

    def _clamp_may_bind(self, v: Tensor, text_keys: Tensor, text_bias: Tensor) -> bool:
        """False when Cauchy-Schwarz proves |score| < 50000 everywhere, so the clamps cannot change anything."""
        if not (self.clamp_min_for_underflow or self.clamp_max_for_overflow):
            return False
        with torch.no_grad():
            bound = (v.float().norm(dim=-1).amax() * text_keys.float().norm(dim=-1).amax()
                     + text_bias.float().abs().amax())
        # The margin covers the rounding of the computed scores, bfloat16 included.
        return bool(bound >= 0.9 * CLAMP_VALUE)

    def _visual_update(self, scores: Tensor, padding: Tensor | None, text_values: Tensor) -> Tensor:
        """Visual side of the folded attention for the visual tokens of `scores` (N, L, heads * Ll)."""
        batch, length = scores.shape[:2]
        scores = scores.view(batch, length, self.num_heads, -1)
        if padding is not None:
            scores = scores + padding
        probs = F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        return torch.baddbmm(self.out_v_proj.bias, probs.view(batch, length, -1), text_values)

    def _language_update(self, attended: Tensor, weights: Tensor | None, batch: int, num_text: int) -> Tensor:
        """Language side of the folded attention from `attended` (N, heads * Ll, v_dim), the softmax-weighted sums
        of the raw visual tokens: the value projection of each head, its bias times the probability mass
        `weights` (None: 1), then the output projection.

        The official extra clamp of (scores - max) at -50000 is omitted: exp of anything below -50000 is 0 in
        every float dtype, clamped or not.
        """
        heads, head_dim = self.num_heads, self.head_dim
        value_weight = self.values_v_proj.weight.view(heads, head_dim, -1).transpose(1, 2)
        values = torch.matmul(attended.view(batch, heads, num_text, -1), value_weight)
        value_bias = self.values_v_proj.bias.view(heads, 1, head_dim)
        if weights is None:
            values = values + value_bias
        else:
            values = values + weights.view(batch, heads, num_text, 1) * value_bias
        return self.out_l_proj(self._merge_heads(values))


def padding_score(dtype: torch.dtype) -> float:
    """PADDING_SCORE, or the lowest finite value of `dtype` where PADDING_SCORE is out of its range."""
    return max(PADDING_SCORE, torch.finfo(dtype).min)


def _is_half(*tensors: Tensor) -> bool:
    """Whether the attention would run in float16, where the reference order of operations is kept."""
    device_type = tensors[0].device.type
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16:
        return True
    return any(t.dtype == torch.float16 for t in tensors)


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
