"""The GLIP "RPN": VLDyHead plus ATSS anchors, training loss and inference post-processing."""
import math
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from maskrcnn_benchmark.modeling.box_coder import BoxCoder
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList

from .anchor_generator import make_anchor_generator_complex
from .inference import make_atss_postprocessor
from .loss import make_atss_loss_evaluator
from .vldyhead import build_vldyhead


class VLDyHeadModule(nn.Module):
    """Runs the head on the FPN features, then computes the losses (training) or the detections (eval)."""

    def __init__(self, head: nn.Module, anchor_generator: nn.Module, loss_evaluator, box_selector: nn.Module):
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.loss_evaluator = loss_evaluator
        self.box_selector_test = box_selector

    def forward(
        self,
        images: ImageList,
        features: List[torch.Tensor],
        targets: Optional[List[BoxList]] = None,
        language_dict_features: Optional[Dict[str, torch.Tensor]] = None,
        positive_map: Union[torch.Tensor, Dict[int, List[int]], None] = None,
    ) -> Tuple[Optional[List[BoxList]], Dict[str, torch.Tensor]]:
        """Detections and an empty dict in eval mode; None and the loss dict in training mode."""
        outputs = self.head(features, language_dict_features)
        anchors = self.anchor_generator(images, features)
        if self.training:
            losses = self.loss_evaluator(
                outputs.box_regression, outputs.centerness, outputs.dot_product_logits,
                targets, anchors, positive_map, language_dict_features["masks"],
            )
            return None, losses
        boxes = self.box_selector_test(
            outputs.box_regression, outputs.centerness, anchors, outputs.dot_product_logits, positive_map
        )
        return boxes, {}


def build_rpn(cfg, language_config) -> VLDyHeadModule:
    """The VLDYHEAD module of MODEL.RPN_ARCHITECTURE (the only architecture this project builds)."""
    if cfg.MODEL.RPN_ARCHITECTURE != "VLDYHEAD":
        raise ValueError(
            f"MODEL.RPN_ARCHITECTURE={cfg.MODEL.RPN_ARCHITECTURE!r} is not built by this project; use 'VLDYHEAD'."
        )
    box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0), bbox_xform_clip=math.log(1000.0 / 16))
    return VLDyHeadModule(
        head=build_vldyhead(cfg, language_config),
        anchor_generator=make_anchor_generator_complex(cfg),
        loss_evaluator=make_atss_loss_evaluator(cfg, box_coder),
        box_selector=make_atss_postprocessor(cfg, box_coder, is_train=False),
    )
