"""The GLIP "RPN": VLDyHead plus ATSS anchors, training loss and inference post-processing."""
import math

import torch
from torch import nn

from maskrcnn_benchmark.layers.execution_plan import UsesExecutionPlan
from maskrcnn_benchmark.modeling.box_coder import BoxCoder
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList

from .anchor_generator import make_anchor_generator_complex
from .inference import make_atss_postprocessor
from .loss import make_atss_loss_evaluator
from .vldyhead import build_vldyhead

# Number of token positions the official prompt-tuning layer holds.
PROMPT_TUNING_POSITIONS = 1000


class VLDyHeadModule(UsesExecutionPlan, nn.Module):
    """Runs the head on the FPN features, then computes the losses (training) or the detections (eval)."""

    def __init__(self, head: nn.Module, anchor_generator: nn.Module, loss_evaluator, box_selector: nn.Module,
                 prompt_tuning_dim: int = 0):
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.loss_evaluator = loss_evaluator
        self.box_selector_test = box_selector
        if prompt_tuning_dim:
            # Prompt tuning (FUSE_CONFIG.ADD_LINEAR_LAYER): a learnt offset per token position, zero at start.
            self.tunable_linear = nn.Linear(prompt_tuning_dim, PROMPT_TUNING_POSITIONS, bias=False)
            nn.init.zeros_(self.tunable_linear.weight)

    def forward(
        self,
        images: ImageList,
        features: list[torch.Tensor],
        targets: list[BoxList] | None = None,
        language_dict_features: dict[str, torch.Tensor] | None = None,
        positive_map: torch.Tensor | dict[int, list[int]] | None = None,
    ) -> tuple[list[BoxList] | None, dict[str, torch.Tensor]]:
        """Detections and an empty dict in eval mode; None and the loss dict in training mode."""
        if hasattr(self, "tunable_linear"):
            language_dict_features = self._add_prompt_offsets(language_dict_features)
        outputs = self.head(features, language_dict_features)
        anchors = self.anchor_generator(images, features)
        if self.training:
            losses = self.loss_evaluator(
                outputs.box_regression, outputs.centerness, outputs.dot_product_logits,
                targets, anchors, positive_map, language_dict_features["masks"],
                compiled_kernels=self.execution_plan.compiled_kernels,
            )
            return None, losses
        boxes = self.box_selector_test(
            outputs.box_regression, outputs.centerness, anchors, outputs.dot_product_logits, positive_map
        )
        return boxes, {}

    def _add_prompt_offsets(self, language_dict_features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        num_tokens = language_dict_features["hidden"].shape[1]
        if num_tokens > PROMPT_TUNING_POSITIONS:
            raise ValueError(f"Prompt tuning supports {PROMPT_TUNING_POSITIONS} tokens, got {num_tokens}.")
        offsets = self.tunable_linear.weight[:num_tokens].unsqueeze(0)
        return {**language_dict_features, "embedded": language_dict_features["embedded"] + offsets,
                "hidden": language_dict_features["hidden"] + offsets}


def make_box_coder() -> BoxCoder:
    """The ATSS head's box coder (the official weights and clip), shared by the loss, the post-processor and the
    ONNX runner."""
    return BoxCoder(weights=(10.0, 10.0, 5.0, 5.0), bbox_xform_clip=math.log(1000.0 / 16))


def build_rpn(cfg, language_config) -> VLDyHeadModule:
    """The VLDYHEAD module of MODEL.RPN_ARCHITECTURE (the only architecture this project builds)."""
    if cfg.MODEL.RPN_ARCHITECTURE != "VLDYHEAD":
        raise ValueError(
            f"MODEL.RPN_ARCHITECTURE={cfg.MODEL.RPN_ARCHITECTURE!r} is not built by this project; use 'VLDYHEAD'."
        )
    box_coder = make_box_coder()
    return VLDyHeadModule(
        head=build_vldyhead(cfg, language_config),
        anchor_generator=make_anchor_generator_complex(cfg),
        loss_evaluator=make_atss_loss_evaluator(cfg, box_coder),
        box_selector=make_atss_postprocessor(cfg, box_coder, is_train=False),
        prompt_tuning_dim=cfg.MODEL.LANGUAGE_BACKBONE.LANG_DIM if cfg.MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER else 0,
    )
