"""GLIP's VLDyHead: a tower of (vision-language fusion, BERT layer, dynamic conv) blocks and the box/token heads."""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import BertConfig

from maskrcnn_benchmark.layers.deform_conv import (
    ModulatedDeformConv,
    defer_offset_checks,
    raise_for_deferred_offsets,
)
from maskrcnn_benchmark.layers.dyrelu import DyReLU, h_sigmoid
from maskrcnn_benchmark.layers.execution_plan import UsesExecutionPlan
from maskrcnn_benchmark.layers.misc import Scale
from maskrcnn_benchmark.modeling.rpn.fusion import BiAttentionBlock
from maskrcnn_benchmark.modeling.rpn.modeling_bert import BertEncoderLayer

CLAMP_VALUE = 50000.0
# The official head is written for the ATSS single-anchor setting and for exactly 5 pyramid levels.
NUM_LEVELS = 5
# DyConv's offset conv predicts, for 3x3 taps, 18 offsets (dy, dx per tap) then 9 modulation logits.
NUM_OFFSETS = 18


class Conv3x3Norm(nn.Module):
    """3x3 modulated deformable conv followed by GroupNorm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, num_groups: int) -> None:
        super().__init__()
        self.conv = ModulatedDeformConv(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.bn = nn.GroupNorm(num_groups=num_groups, num_channels=out_channels)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        """Return GroupNorm(deform_conv(x, offset, mask))."""
        return self.bn(self.conv(x, offset, mask))


class DyConv(UsesExecutionPlan, nn.Module):
    """Dynamic-head vision block: scale-aware fusion of neighbouring levels, DCN spatial attention, DyReLU.

    For level l it averages, weighted by a per-term hard-sigmoid gate, the deformable convs of level l
    (DyConv[1]), of level l-1 with stride 2 (DyConv[2]) and of level l+1 upsampled (DyConv[0]). All three use
    the offsets/mask predicted at level l; for DyConv[0] they are read with the kernel's raw addressing
    (see layers.deform_conv).
    """

    def __init__(self, in_channels: int, out_channels: int, num_groups: int) -> None:
        super().__init__()
        # Index order is the official one: 0 = coarser level, 1 = same level, 2 = finer level (stride 2).
        self.DyConv = nn.ModuleList([
            Conv3x3Norm(in_channels, out_channels, 1, num_groups),
            Conv3x3Norm(in_channels, out_channels, 1, num_groups),
            Conv3x3Norm(in_channels, out_channels, 2, num_groups),
        ])
        self.AttnConv = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, 1, kernel_size=1),
            nn.ReLU(inplace=True),
        )
        self.relu = DyReLU(in_channels, out_channels)
        self.offset = nn.Conv2d(in_channels, NUM_OFFSETS + NUM_OFFSETS // 2, kernel_size=3, padding=1)
        nn.init.normal_(self.AttnConv[1].weight, std=0.01)
        nn.init.zeros_(self.AttnConv[1].bias)

    def _level_terms(self, visual: list[Tensor], level: int) -> list[Tensor]:
        feature = visual[level]
        offset_mask = self.offset(feature)
        offset = offset_mask[:, :NUM_OFFSETS]
        mask = offset_mask[:, NUM_OFFSETS:].sigmoid()
        terms = [self.DyConv[1](feature, offset, mask)]
        if level > 0:
            terms.append(self.DyConv[2](visual[level - 1], offset, mask))
        if level < len(visual) - 1:
            coarser = self.DyConv[0](visual[level + 1], offset, mask)
            terms.append(F.interpolate(coarser, size=feature.shape[-2:], mode="bilinear", align_corners=True))
        return terms

    def forward(self, visual: list[Tensor]) -> list[Tensor]:
        """Map the pyramid [(N, C, H_l, W_l)] to a new pyramid of the same shapes."""
        outputs = []
        for level in range(len(visual)):
            terms = self._level_terms(visual, level)
            if self.execution_plan.name != "reference":
                # The mean of the gated terms, summed in the same order without stacking them.
                fused = sum(term * h_sigmoid(self.AttnConv(term)) for term in terms) / len(terms)
            else:
                gates = h_sigmoid(torch.stack([self.AttnConv(term) for term in terms]))
                fused = torch.mean(torch.stack(terms) * gates, dim=0)
            outputs.append(self.relu(fused))
        return outputs


class VLFuse(nn.Module):
    """Early vision-language fusion (MHA-B), optionally gradient-checkpointed in training."""

    def __init__(self, b_attn: BiAttentionBlock, use_checkpoint: bool = False) -> None:
        super().__init__()
        self.b_attn = b_attn
        self.use_checkpoint = use_checkpoint

    def forward(
        self, visual: list[Tensor], lang_hidden: Tensor, lang_masks: Tensor
    ) -> tuple[list[Tensor], Tensor]:
        """Return the fused (visual pyramid, language hidden states)."""
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            # Non-reentrant checkpointing restores the RNG state, so recomputed dropout masks are identical.
            return checkpoint(self.b_attn, visual, lang_hidden, lang_masks, use_reentrant=False)
        return self.b_attn(visual, lang_hidden, lang_masks)


class VLDyHeadOutput(NamedTuple):
    """Per-level raw head predictions and the language features after the fusion tower."""

    box_regression: list[Tensor]  # (N, 4, H, W), already multiplied by the level's Scale
    centerness: list[Tensor]  # (N, 1, H, W) logits
    dot_product_logits: list[Tensor]  # (N, H*W, T) token logits, (h, w)-major anchors
    fused_language: dict


class VLDyHead(UsesExecutionPlan, nn.Module):
    """GLIP-T head: NUM_CONVS x [VLFuse, BertEncoderLayer, DyConv], then box, centerness and token-logit heads.

    `dyhead_tower` is a flat list so that state-dict keys are the official dyhead_tower.{3i, 3i+1, 3i+2}. Without
    early fusion (GLIP-A) the tower is NUM_CONVS x [DyConv] (keys dyhead_tower.{i}), as officially: the language
    features pass the tower unchanged.
    """

    def __init__(
        self,
        channels: int,
        language_config: BertConfig,
        num_convs: int,
        num_classes: int,
        num_groups: int,
        prior_prob: float,
        log_scale: float,
        attn_embed_dim: int,
        attn_num_heads: int,
        attn_dropout: float,
        clamp_fusion_min: bool = True,
        clamp_fusion_max: bool = True,
        clamp_bert_min: bool = True,
        clamp_bert_max: bool = True,
        clamp_dot_product: bool = True,
        use_checkpoint: bool = False,
        early_fuse: bool = True,
        use_fused_language: bool = True,
    ) -> None:
        super().__init__()
        lang_dim = language_config.hidden_size
        self.clamp_dot_product = clamp_dot_product
        self.use_checkpoint = use_checkpoint
        self.early_fuse = early_fuse
        self.use_fused_language = use_fused_language
        tower = []
        for _ in range(num_convs):
            if not early_fuse:
                tower.append(DyConv(channels, channels, num_groups))
                continue
            b_attn = BiAttentionBlock(
                channels, lang_dim, attn_embed_dim, attn_num_heads, dropout=attn_dropout,
                init_values=1.0 / num_convs,
                clamp_min_for_underflow=clamp_fusion_min, clamp_max_for_overflow=clamp_fusion_max,
            )
            tower.append(VLFuse(b_attn, use_checkpoint))
            tower.append(BertEncoderLayer(language_config, clamp_bert_min, clamp_bert_max))
            tower.append(DyConv(channels, channels, num_groups))
        self.dyhead_tower = nn.ModuleList(tower)
        defer_offset_checks(self.dyhead_tower)  # forward collects them once per call (raise_for_deferred_offsets)

        # cls_logits is kept only for checkpoint compatibility (and its channel count, the number of
        # classes): GLIP-T classifies through the dot-product token logits, so it is frozen and unused.
        self.cls_logits = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.bbox_pred = nn.Conv2d(channels, 4, kernel_size=1)
        self.centerness = nn.Conv2d(channels, 1, kernel_size=1)
        bias_value = -math.log((1 - prior_prob) / prior_prob)
        self.log_scale = nn.Parameter(torch.tensor([log_scale]))
        self.dot_product_projection_text = nn.Linear(lang_dim, channels)
        self.bias_lang = nn.Parameter(torch.zeros(lang_dim))
        self.bias0 = nn.Parameter(torch.tensor([bias_value]))
        for conv in (self.cls_logits, self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, bias_value)
        self.cls_logits.requires_grad_(False)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(NUM_LEVELS)])

    def _run_tower(self, visual: list[Tensor], hidden: Tensor, masks: Tensor) -> tuple[list[Tensor], Tensor]:
        # With USE_CHECKPOINT the official code recomputes only the fusion; the CPU plan also recomputes the
        # DyConv blocks (deterministic, so the same values), whose many full-resolution activations dominate
        # the training memory otherwise.
        checkpoint_dyconv = (self.use_checkpoint and self.execution_plan.recompute_dyconv and self.training
                             and torch.is_grad_enabled())
        if not self.early_fuse:
            for dyconv in self.dyhead_tower:
                visual = checkpoint(dyconv, visual, use_reentrant=False) if checkpoint_dyconv else dyconv(visual)
            return visual, hidden
        for i in range(0, len(self.dyhead_tower), 3):
            fuse, bert_layer, dyconv = self.dyhead_tower[i:i + 3]
            visual, hidden = fuse(visual, hidden, masks)
            hidden = bert_layer(hidden, masks)
            visual = checkpoint(dyconv, visual, use_reentrant=False) if checkpoint_dyconv else dyconv(visual)
        return visual, hidden

    def _dot_product_logits(self, feature: Tensor, proj_tokens: Tensor, token_bias: Tensor) -> Tensor:
        queries = feature.flatten(2).transpose(1, 2)  # visual features are deliberately not normalized
        logits = torch.matmul(queries, proj_tokens.transpose(-1, -2)) / self.log_scale.exp()
        logits = logits + token_bias[:, None, :]
        if self.clamp_dot_product:
            logits = logits.clamp(min=-CLAMP_VALUE, max=CLAMP_VALUE)
        return logits

    def forward(self, features: list[Tensor], language_dict_features: dict) -> VLDyHeadOutput:
        """Run the head on FPN features [(N, C, H_l, W_l)] x 5 and language features {hidden, masks, ...}."""
        if len(features) != NUM_LEVELS:
            raise ValueError(f"VLDyHead expects {NUM_LEVELS} feature levels, got {len(features)}")
        masks = language_dict_features["masks"]
        visual, hidden = self._run_tower(list(features), language_dict_features["hidden"], masks)
        raise_for_deferred_offsets(self)

        # Officially the token logits read the tower's language output (USE_FUSED_FEATURES_DOT_PRODUCT, GLIP-T)
        # or else the language backbone's masked features ("embedded", GLIP-A).
        tokens = hidden if self.use_fused_language else language_dict_features["embedded"]
        tokens = F.normalize(tokens, p=2, dim=-1)
        proj_tokens = self.dot_product_projection_text(tokens / 2.0)
        token_bias = torch.matmul(tokens, self.bias_lang) + self.bias0

        box_regression, centerness, dot_product_logits = [], [], []
        for scale, feature in zip(self.scales, visual):
            box_regression.append(scale(self.bbox_pred(feature)))
            centerness.append(self.centerness(feature))
            dot_product_logits.append(self._dot_product_logits(feature, proj_tokens, token_bias))
        fused_language = {**language_dict_features, "hidden": hidden}
        return VLDyHeadOutput(box_regression, centerness, dot_product_logits, fused_language)


def build_vldyhead(cfg, language_config: BertConfig) -> VLDyHead:
    """Build the VLDyHead (GLIP-T, GLIP-L; GLIP-A: no early fusion) from the official keys and the BertConfig.

    Only maps keys to arguments: config.check_supported (called by build_detection_model) refuses the variants
    that are not built.
    """
    lang_dim = cfg.MODEL.LANGUAGE_BACKBONE.LANG_DIM
    if language_config.hidden_size != lang_dim:
        raise ValueError(
            f"MODEL.LANGUAGE_BACKBONE.LANG_DIM = {lang_dim} differs from the language model's hidden size "
            f"{language_config.hidden_size}"
        )
    dyhead, fuse = cfg.MODEL.DYHEAD, cfg.MODEL.DYHEAD.FUSE_CONFIG
    return VLDyHead(
        channels=dyhead.CHANNELS,
        language_config=language_config,
        num_convs=dyhead.NUM_CONVS,
        num_classes=dyhead.NUM_CLASSES - 1,
        num_groups=cfg.MODEL.GROUP_NORM.NUM_GROUPS,
        prior_prob=dyhead.PRIOR_PROB,
        log_scale=dyhead.LOG_SCALE,
        attn_embed_dim=fuse.ATTN_EMBED_DIM,
        attn_num_heads=fuse.ATTN_NUM_HEADS,
        attn_dropout=fuse.ATTN_DROPOUT,
        clamp_fusion_min=fuse.CLAMP_MIN_FOR_UNDERFLOW,
        clamp_fusion_max=fuse.CLAMP_MAX_FOR_OVERFLOW,
        clamp_bert_min=fuse.CLAMP_BERTATTN_MIN_FOR_UNDERFLOW,
        clamp_bert_max=fuse.CLAMP_BERTATTN_MAX_FOR_OVERFLOW,
        clamp_dot_product=fuse.CLAMP_DOT_PRODUCT,
        use_checkpoint=dyhead.USE_CHECKPOINT,
        early_fuse=fuse.EARLY_FUSE_ON,
        use_fused_language=fuse.USE_FUSED_FEATURES_DOT_PRODUCT,
    )
