"""Evaluation of detections against a dataset's annotations (COCO-format box AP)."""
from .coco_eval import COCOResults, Predictions, do_coco_evaluation, prepare_for_coco_detection

__all__ = ["evaluate", "COCOResults", "do_coco_evaluation", "prepare_for_coco_detection"]


def evaluate(dataset, predictions: Predictions, output_folder: str | None, **kwargs):
    """Evaluate `predictions` (dataset index -> BoxList in model input coordinates) with the dataset's metric.

    Datasets with COCO-format annotations (a pycocotools `coco` and the contiguous -> json category map) get
    COCO box AP; `kwargs` are those of `do_coco_evaluation`.
    """
    if getattr(dataset, "coco", None) is not None and hasattr(dataset, "contiguous_category_id_to_json_id"):
        return do_coco_evaluation(dataset, predictions, output_folder, **kwargs)
    raise NotImplementedError(f"No evaluation for datasets of type {type(dataset).__name__}: only COCO-format "
                              "datasets (with `coco` and `contiguous_category_id_to_json_id`) are evaluated.")
