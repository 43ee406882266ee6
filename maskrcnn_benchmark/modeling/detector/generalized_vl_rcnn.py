"""GeneralizedVLRCNN: GLIP's detector (Swin+FPN, BERT, VLDyHead with ATSS)."""

import torch
from torch import nn

from maskrcnn_benchmark.layers.execution_plan import ExecutionPlan, apply_execution_plan, resolve_plan
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList, to_image_list
from maskrcnn_benchmark.text import build_tokenizer, tokenize_captions

from ..backbone import build_backbone
from ..language_backbone import build_language_backbone, build_language_config
from ..rpn import build_rpn

PositiveMap = torch.Tensor | dict[int, list[int]] | list[dict[int, list[int]]]


class GeneralizedVLRCNN(nn.Module):
    """Grounded detector: image features and caption features are fused in the head; boxes score caption tokens."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        language_config = build_language_config(cfg)
        self.backbone = build_backbone(cfg)
        self.language_backbone = build_language_backbone(cfg, language_config)
        self.rpn = build_rpn(cfg, language_config)
        self.tokenizer = build_tokenizer(cfg)
        self.max_query_len = cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN
        self.pad_max = cfg.MODEL.LANGUAGE_BACKBONE.PAD_MAX
        self.mask_special = cfg.MODEL.LANGUAGE_BACKBONE.MASK_SPECIAL
        self.freeze_backbone = cfg.MODEL.BACKBONE.FREEZE
        self.freeze_fpn = cfg.MODEL.FPN.FREEZE
        self.freeze_rpn = cfg.MODEL.RPN.FREEZE
        self.freeze_language_backbone = cfg.MODEL.LANGUAGE_BACKBONE.FREEZE
        self.linear_prob = cfg.MODEL.LINEAR_PROB
        if self.linear_prob and not (self.freeze_backbone and self.freeze_fpn):
            raise ValueError("MODEL.LINEAR_PROB needs MODEL.BACKBONE.FREEZE and MODEL.FPN.FREEZE set to True.")
        self._apply_freezing()
        # "auto" follows the device type the parameters are on (see _apply); other choices are fixed.
        self.plan_choice = cfg.MODEL.EXECUTION_PLAN
        self.execution_plan = apply_execution_plan(self, resolve_plan(self.plan_choice, self._device_type()))

    def _device_type(self) -> str:
        return next(self.parameters()).device.type

    def set_execution_plan(self, plan: ExecutionPlan | str) -> ExecutionPlan:
        """Compute with `plan` (an ExecutionPlan or its name) from now on, whatever the device; return it."""
        self.execution_plan = apply_execution_plan(self, plan)
        self.plan_choice = self.execution_plan.name
        return self.execution_plan

    def _apply(self, fn, *args, **kwargs):
        """Module.to / .cuda / .cpu / ...: with MODEL.EXECUTION_PLAN "auto", take the new device type's plan."""
        result = super()._apply(fn, *args, **kwargs)
        if getattr(self, "plan_choice", None) == "auto":
            self.execution_plan = apply_execution_plan(self, resolve_plan("auto", self._device_type()))
        return result

    # Parameters that linear probing keeps trainable, as in the official implementation.
    _LINEAR_PROB_TRAINABLE = ("bbox_pred", "cls_logits", "centerness", "cosine_scale", "dot_product_projection_text",
                              "head.log_scale", "head.bias_lang", "head.bias0")

    def _apply_freezing(self) -> None:
        """Freeze what the config asks for; the unused class-logit conv is always frozen and in eval mode."""
        frozen = []
        if self.freeze_backbone:
            frozen.append(self.backbone.body)
        if self.freeze_fpn:
            frozen.append(self.backbone.fpn)
        if self.freeze_rpn:
            frozen.append(self.rpn.head)
        if self.freeze_language_backbone:
            frozen.append(self.language_backbone)
        # Dot-product token logits replace the class logits, whose conv exists only for checkpoint compatibility.
        frozen.append(self.rpn.head.cls_logits)
        for module in frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad = False
        if self.linear_prob:
            for name, p in self.rpn.named_parameters():
                if not any(key in name for key in self._LINEAR_PROB_TRAINABLE):
                    p.requires_grad = False
        if hasattr(self.rpn, "tunable_linear"):
            # Prompt tuning trains this layer even when everything else is frozen.
            self.rpn.tunable_linear.weight.requires_grad = True

    def train(self, mode: bool = True) -> "GeneralizedVLRCNN":
        """Switch mode while keeping frozen parts frozen and in eval mode."""
        super().train(mode)
        self._apply_freezing()
        return self

    def tokenize(self, captions: list[str], device: str | torch.device) -> dict[str, torch.Tensor]:
        """Tokenise captions the way the model expects them (MAX_QUERY_LEN, PAD_MAX)."""
        return tokenize_captions(self.tokenizer, captions, self.max_query_len, self.pad_max).to(device)

    def forward(
        self,
        images: ImageList | torch.Tensor | list[torch.Tensor],
        targets: list[BoxList] | None = None,
        captions: list[str] | None = None,
        positive_map: PositiveMap | None = None,
        greenlight_map: torch.Tensor | None = None,
        tokenized: dict[str, torch.Tensor] | None = None,
    ) -> list[BoxList] | dict[str, torch.Tensor]:
        """Loss dict in training mode, detections (BoxList with `scores` and `labels`) in eval mode.

        `positive_map` is the (boxes, tokens) 0/1 matrix of all targets in training and the label -> token
        indices dict in eval (or, in eval, a list of one such dict per image: a prompt per image). Captions are
        tokenised here unless the data pipeline passes `tokenized` (input_ids, attention_mask and, with
        MASK_SPECIAL, special_tokens_mask). `greenlight_map` is accepted for signature compatibility; only the MLM
        loss, which this project does not build, reads it.
        """
        if self.training and targets is None:
            raise ValueError("In training mode, targets must be passed.")
        if positive_map is None:
            raise ValueError("positive_map is required: it maps boxes (training) or labels (eval) to tokens.")
        if isinstance(positive_map, (list, tuple)) and self.training:
            raise ValueError("A list of positive maps (one label -> tokens dict per image) is for eval only; "
                             "training takes the (boxes, tokens) positive_map tensor.")
        images = to_image_list(images)
        device = images.tensors.device
        if tokenized is None:
            if captions is None:
                raise ValueError("Pass captions (list of str) or tokenized captions.")
            tokenized = self.tokenize(captions, device)
        if self.execution_plan.trim_text_padding:
            tokenized = self._trim_padding(tokenized, positive_map)
        language_dict_features = self.encode_language(tokenized)
        visual_features = self.backbone(images.tensors)
        if targets is not None:
            targets = [target.to(device) for target in targets]
        detections, losses = self.rpn(images, visual_features, targets, language_dict_features, positive_map)
        return losses if self.training else detections

    def _trim_padding(self, tokenized: dict[str, torch.Tensor], positive_map: PositiveMap) -> dict[str, torch.Tensor]:
        """Drop the padding columns after the longest caption of the batch (and after every token positive_map
        names).

        Exact for everything the model returns: padded tokens are masked keys everywhere (their attention
        weight is exactly 0), so real tokens never see them, and their own outputs are either masked out of the
        token loss or never read. The loss keeps the official "no object" target on the last padded position,
        which the text mask hides unless that position is a real token (then nothing is trimmed).
        """
        real = tokenized["attention_mask"] != 0
        if self.mask_special:
            real = real | (tokenized["special_tokens_mask"] == 0)
        num_tokens = real.shape[1]
        used = torch.nonzero(real.any(dim=0))
        length = int(used.max()) + 1 if used.numel() else 1
        if not isinstance(positive_map, torch.Tensor):
            image_maps = [positive_map] if isinstance(positive_map, dict) else positive_map
            length = max([length] + [max(tokens) + 1 for image_map in image_maps
                                     for tokens in image_map.values() if len(tokens)])
        if length >= num_tokens:
            return tokenized
        return {key: value[:, :length] if value.dim() == 2 and value.shape[1] == num_tokens else value
                for key, value in tokenized.items()}

    def encode_language(self, tokenized: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the language backbone on tokenised captions."""
        text_input = {"input_ids": tokenized["input_ids"], "attention_mask": tokenized["attention_mask"]}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_language_backbone):
            features = self.language_backbone(text_input)
        if self.mask_special:
            features["masks"] = 1 - tokenized["special_tokens_mask"]
        return features
