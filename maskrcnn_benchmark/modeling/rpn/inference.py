"""ATSS post-processing: token logits -> class scores -> per-level top-k -> boxes -> class-aware NMS."""
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import nn

from maskrcnn_benchmark.layers.execution_plan import UsesExecutionPlan
from maskrcnn_benchmark.modeling.box_coder import BoxCoder
from maskrcnn_benchmark.modeling.utils import permute_and_flatten
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.boxlist_ops import boxlist_ml_nms, cat_boxlist, remove_small_boxes

SCORE_AGGREGATIONS = ("MEAN", "MAX")


def token_to_class_scores(
    token_probs: torch.Tensor, positive_map: dict[int, list[int]], num_classes: int, score_agg: str = "MEAN"
) -> torch.Tensor:
    """(N, A, T) token probabilities -> (N, A, C) scores; column label-1 aggregates that label's tokens.

    C is num_classes, or the largest label when it is larger. Columns of labels absent from positive_map stay 0.
    """
    if score_agg not in SCORE_AGGREGATIONS:
        raise ValueError(f"score aggregation {score_agg!r} is not one of {SCORE_AGGREGATIONS}")
    # The official matrix has the head's num_classes columns and fails on a larger label (a prompt of more
    # phrases, a later chunk of a chunked evaluation). Up to num_classes the layout is the official one; beyond,
    # it widens to the largest label (like MDETR_STYLE_AGGREGATE_CLASS_NUM, which the official LVIS configs set).
    width = max([num_classes, *positive_map])
    scores = token_probs.new_zeros(token_probs.shape[0], token_probs.shape[1], width)
    # Labels with the same number of tokens are aggregated together, one gather per token count.
    labels_by_token_count = defaultdict(list)
    for label, tokens in positive_map.items():
        labels_by_token_count[len(tokens)].append(label)
    for labels in labels_by_token_count.values():
        token_index = torch.tensor([positive_map[label] for label in labels], device=token_probs.device).long()
        label_probs = token_probs[:, :, token_index]
        aggregated = label_probs.mean(-1) if score_agg == "MEAN" else label_probs.amax(-1)
        scores[:, :, torch.tensor(labels, device=token_probs.device) - 1] = aggregated
    return scores


class ATSSPostProcessor(UsesExecutionPlan, nn.Module):
    """Turns the head's per-level outputs into detections (fields "scores" and "labels") for each image."""

    def __init__(
        self,
        pre_nms_thresh: float,
        pre_nms_top_n: int,
        nms_thresh: float,
        fpn_post_nms_top_n: int,
        min_size: float,
        num_classes: int,
        box_coder: BoxCoder,
        score_agg: str = "MEAN",
    ):
        super().__init__()
        if score_agg not in SCORE_AGGREGATIONS:
            raise ValueError(f"score aggregation {score_agg!r} is not one of {SCORE_AGGREGATIONS}")
        self.pre_nms_thresh = pre_nms_thresh
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_thresh = nms_thresh
        self.fpn_post_nms_top_n = fpn_post_nms_top_n
        self.min_size = min_size
        self.num_classes = num_classes
        self.box_coder = box_coder
        self.score_agg = score_agg

    def forward_for_single_feature_map(
        self,
        box_regression: torch.Tensor,
        centerness: torch.Tensor,
        anchors: Sequence[BoxList],
        dot_product_logits: torch.Tensor,
        positive_map: dict[int, list[int]],
    ) -> list[BoxList]:
        """Candidates of one level for each image: score threshold, top-k, decode and clip."""
        N, _, H, W = box_regression.shape
        A = box_regression.size(1) // 4
        class_scores = token_to_class_scores(
            dot_product_logits.sigmoid(), positive_map, self.num_classes, self.score_agg
        )
        box_regression = permute_and_flatten(box_regression, N, A, 4, H, W)
        centerness = permute_and_flatten(centerness, N, A, 1, H, W).reshape(N, -1).sigmoid()

        # The threshold applies to the class score alone; ranking uses the score times centerness.
        candidate_mask = class_scores > self.pre_nms_thresh
        num_candidates = candidate_mask.reshape(N, -1).sum(1).clamp(max=self.pre_nms_top_n)
        ranking_scores = class_scores * centerness[:, :, None]

        results = []
        for image_scores, image_regression, image_top_n, image_mask, image_anchors in zip(
            ranking_scores, box_regression, num_candidates.tolist(), candidate_mask, anchors
        ):
            top_scores, top_index = image_scores[image_mask].topk(image_top_n, sorted=False)
            location_and_class = image_mask.nonzero()[top_index]
            locations = location_and_class[:, 0]
            boxes = self.box_coder.decode(image_regression[locations], image_anchors.bbox[locations])
            boxlist = BoxList(boxes, image_anchors.size, mode="xyxy")
            boxlist.add_field("labels", location_and_class[:, 1] + 1)
            boxlist.add_field("scores", torch.sqrt(top_scores))
            boxlist = boxlist.clip_to_image(remove_empty=False)
            results.append(remove_small_boxes(boxlist, self.min_size))
        return results

    def select_candidates(
        self,
        box_regression: Sequence[torch.Tensor],
        centerness: Sequence[torch.Tensor],
        anchors: Sequence[Sequence[BoxList]],
        dot_product_logits: Sequence[torch.Tensor],
        positive_map: dict[int, list[int]] | Sequence[dict[int, list[int]]],
    ) -> list[BoxList]:
        """Pre-NMS candidates of every level, concatenated per image (the input of select_over_all_levels).

        `positive_map` is one label -> tokens dict for the whole batch, or a list of one dict per image (a batch
        of images with a prompt each); then each image is selected with its own map.
        """
        if isinstance(positive_map, (list, tuple)):
            return self._select_candidates_per_image(box_regression, centerness, anchors, dot_product_logits,
                                                     positive_map)
        anchors_per_level = list(zip(*anchors))
        candidates_per_level = [
            self.forward_for_single_feature_map(level_regression, level_centerness, level_anchors, level_logits,
                                                positive_map)
            for level_regression, level_centerness, level_anchors, level_logits in zip(
                box_regression, centerness, anchors_per_level, dot_product_logits
            )
        ]
        return [cat_boxlist(list(image_candidates)) for image_candidates in zip(*candidates_per_level)]

    def _select_candidates_per_image(
        self,
        box_regression: Sequence[torch.Tensor],
        centerness: Sequence[torch.Tensor],
        anchors: Sequence[Sequence[BoxList]],
        dot_product_logits: Sequence[torch.Tensor],
        positive_maps: Sequence[dict[int, list[int]]],
    ) -> list[BoxList]:
        """select_candidates of each image alone, with that image's label -> tokens map."""
        if len(positive_maps) != len(anchors):
            raise ValueError(f"{len(positive_maps)} positive maps for a batch of {len(anchors)} images: pass one "
                             "label -> tokens dict per image (or one dict for all).")
        candidates = []
        for index, image_map in enumerate(positive_maps):
            one = slice(index, index + 1)
            candidates += self.select_candidates([level[one] for level in box_regression],
                                                 [level[one] for level in centerness], anchors[one],
                                                 [level[one] for level in dot_product_logits], image_map)
        return candidates

    def forward(
        self,
        box_regression: Sequence[torch.Tensor],
        centerness: Sequence[torch.Tensor],
        anchors: Sequence[Sequence[BoxList]],
        dot_product_logits: Sequence[torch.Tensor],
        positive_map: dict[int, list[int]] | Sequence[dict[int, list[int]]],
    ) -> list[BoxList]:
        """Detections per image from per-level (N, 4A, H, W) regression, (N, A, H, W) centerness logits,
        per-image per-level anchors and (N, H*W*A, T) dot-product token logits; label ids are positive_map keys
        (one dict for the batch or one per image)."""
        candidates = self.select_candidates(box_regression, centerness, anchors, dot_product_logits, positive_map)
        return self.select_over_all_levels(candidates)

    def select_over_all_levels(self, boxlists: Sequence[BoxList]) -> list[BoxList]:
        """Class-aware NMS per image, then keep the fpn_post_nms_top_n best scores (ties at the cut included)."""
        results = []
        for boxlist in boxlists:
            result = boxlist_ml_nms(boxlist, self.nms_thresh, compiled=self.execution_plan.compiled_kernels)
            num_detections = len(result)
            if num_detections > self.fpn_post_nms_top_n > 0:
                scores = result.get_field("scores")
                score_cut, _ = torch.kthvalue(scores.float(), num_detections - self.fpn_post_nms_top_n + 1)
                result = result[torch.nonzero(scores >= score_cut).squeeze(1)]
            results.append(result)
        return results


def make_atss_postprocessor(cfg, box_coder: BoxCoder, is_train: bool = False) -> ATSSPostProcessor:
    """ATSSPostProcessor from MODEL.ATSS, MODEL.DYHEAD.SCORE_AGG and the head's class count."""
    atss_cfg = cfg.MODEL.ATSS
    num_classes = cfg.TEST.MDETR_STYLE_AGGREGATE_CLASS_NUM
    if num_classes == -1:
        # The score matrix has as many columns as the head's cls_logits has channels.
        num_classes = cfg.MODEL.DYHEAD.NUM_CLASSES - 1
    return ATSSPostProcessor(
        pre_nms_thresh=atss_cfg.INFERENCE_TH_TRAIN if is_train else atss_cfg.INFERENCE_TH,
        pre_nms_top_n=atss_cfg.PRE_NMS_TOP_N_TRAIN if is_train else atss_cfg.PRE_NMS_TOP_N,
        nms_thresh=atss_cfg.NMS_TH,
        fpn_post_nms_top_n=atss_cfg.POST_NMS_TOP_N_TRAIN if is_train else atss_cfg.DETECTIONS_PER_IMG,
        min_size=0,
        num_classes=num_classes,
        box_coder=box_coder,
        score_agg=cfg.MODEL.DYHEAD.SCORE_AGG,
    )
