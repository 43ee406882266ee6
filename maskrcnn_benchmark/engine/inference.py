"""Detection evaluation of a grounding model: the class names become a text prompt whose tokens score the boxes."""
import datetime
import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm import tqdm

from maskrcnn_benchmark.config.compat import check_supported
from maskrcnn_benchmark.data.build import load_list_option
from maskrcnn_benchmark.data.datasets.od_to_grounding import check_caption_prompt_length, clean_name, join_names
from maskrcnn_benchmark.data.datasets.positive_maps import create_positive_dict
from maskrcnn_benchmark.data.evaluation import evaluate
from maskrcnn_benchmark.data.evaluation.coco_eval import require_box_annotations
from maskrcnn_benchmark.layers.deform_conv import NonFiniteOffsetError
from maskrcnn_benchmark.text import build_tokenizer, tokenize_captions
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.boxlist_ops import cat_boxlist
from maskrcnn_benchmark.utils.comm import get_world_size, is_main_process, synchronize

logger = logging.getLogger("maskrcnn_benchmark.inference")

CharSpan = Tuple[int, int]
LabelToTokens = Dict[int, List[int]]


def build_detection_prompt(names: Sequence[str], separation_tokens: str,
                           caption_prompt: Optional[Sequence[dict]] = None,
                           additional_labels: Optional[Sequence[str]] = None) -> Tuple[str, List[List[CharSpan]]]:
    """The caption listing `names` (or the caption prompt's prefix/name/suffix entries) and each name's char span.

    The caption prompt's names are used as written (training cleans them), as in the official evaluation.
    `additional_labels` are appended after the names, without spans (official "suppress query").
    """
    check_caption_prompt_length(caption_prompt, len(names))
    shown = [caption_prompt[index]["name"] for index in range(len(names))] if caption_prompt is not None else names
    caption, spans = join_names(shown, separation_tokens, caption_prompt)
    if additional_labels is not None:
        caption += separation_tokens + separation_tokens.join(additional_labels)
    return caption, [[span] for span in spans]


def check_prompt_fits(label_to_tokens: LabelToTokens, max_query_len: int, caption: str) -> None:
    """Raise when a label's tokens lie beyond the model's MAX_QUERY_LEN (they would be truncated away)."""
    too_far = sorted(label for label, tokens in label_to_tokens.items() if max(tokens) >= max_query_len)
    if too_far:
        raise ValueError(
            f"The prompt is longer than MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN={max_query_len} tokens: labels "
            f"{too_far} would be truncated away. Split the categories over several prompts with "
            f"TEST.CHUNKED_EVALUATION (classes per prompt). Prompt: {caption!r}"
        )


def create_queries_and_maps(labels: Sequence[int], label_list: Sequence[str], cfg, tokenizer=None,
                            additional_labels: Optional[Sequence[str]] = None) -> Tuple[str, LabelToTokens]:
    """The detection prompt of these classes and its label -> token indices map (keys are `labels`)."""
    names = [clean_name(name) for name in label_list]
    use_prompt = cfg.DATASETS.USE_CAPTION_PROMPT and cfg.DATASETS.CAPTION_PROMPT
    caption_prompt = load_list_option(cfg.DATASETS.CAPTION_PROMPT, "CAPTION_PROMPT") if use_prompt else None
    caption, tokens_positive = build_detection_prompt(names, cfg.DATASETS.SEPARATION_TOKENS, caption_prompt,
                                                      additional_labels)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg)
    tokenized = tokenizer(caption, return_tensors="pt")
    label_to_tokens = create_positive_dict(tokenized, tokens_positive, labels)
    check_prompt_fits(label_to_tokens, cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN, caption)
    return caption, label_to_tokens


def create_queries_and_maps_from_dataset(dataset, cfg, tokenizer=None) -> Tuple[List[str], List[LabelToTokens]]:
    """One prompt for all the dataset's classes, or one per TEST.CHUNKED_EVALUATION classes (label order)."""
    categories = dataset.categories()
    labels = sorted(categories)
    chunk = cfg.TEST.CHUNKED_EVALUATION if cfg.TEST.CHUNKED_EVALUATION != -1 else max(len(labels), 1)
    additional = cfg.DATASETS.SUPRESS_QUERY if cfg.DATASETS.USE_SUPRESS_QUERY else None
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg)
    queries, maps = [], []
    for start in range(0, len(labels), chunk):
        chunk_labels = labels[start:start + chunk]
        query, label_to_tokens = create_queries_and_maps(
            chunk_labels, [categories[label] for label in chunk_labels], cfg, tokenizer, additional)
        queries.append(query)
        maps.append(label_to_tokens)
    logger.info("All queries: %s", queries)
    return queries, maps


def create_positive_map_label_to_token_from_positive_map(positive_map: torch.Tensor, plus: int = 0
                                                         ) -> LabelToTokens:
    """(labels, tokens) 0/1 (or normalised) matrix -> {row + plus: indices of the row's non-zero tokens}."""
    return {row + plus: torch.nonzero(positive_map[row], as_tuple=True)[0].tolist()
            for row in range(len(positive_map))}


def accumulate_predictions_from_multiple_gpus(predictions_per_gpu: Dict[int, BoxList]
                                              ) -> Optional[Dict[int, BoxList]]:
    """Gather every rank's {dataset index: BoxList} on rank 0 (None on the other ranks)."""
    world_size = get_world_size()
    if world_size == 1:
        gathered = [predictions_per_gpu]
    else:
        gathered = [None] * world_size if is_main_process() else None
        torch.distributed.gather_object(predictions_per_gpu, gathered, dst=0)
    if not is_main_process():
        return None
    predictions: Dict[int, BoxList] = {}
    for part in gathered:
        predictions.update(part)
    indices = sorted(predictions)
    if indices and len(indices) != indices[-1] + 1:
        logger.warning("Number of images that were gathered from multiple processes is not a contiguous set. "
                       "Some images might be missing from the evaluation")
    return predictions


class PromptedDetector:
    """Calls a grounding model on image batches with fixed prompts (one per class chunk), tokenised once."""

    def __init__(self, model: nn.Module, queries: Sequence[str], label_to_tokens: Sequence[LabelToTokens],
                 tokenizer, max_query_len: int, pad_max: bool, device: torch.device):
        self.model = model
        self.queries = list(queries)
        self.label_to_tokens = list(label_to_tokens)
        self.device = device
        self.tokenized = [
            {key: value.to(device) for key, value in tokenize_captions(tokenizer, [query], max_query_len,
                                                                        pad_max).items()}
            for query in self.queries
        ]

    @torch.no_grad()
    def __call__(self, images) -> List[BoxList]:
        """Detections of every prompt, concatenated per image, on the CPU (model input coordinates)."""
        images = images.to(self.device)
        batch_size = images.tensors.shape[0]
        per_prompt = []
        for query, positive_map, tokenized in zip(self.queries, self.label_to_tokens, self.tokenized):
            batch_tokens = {key: value.repeat(batch_size, 1) for key, value in tokenized.items()}
            output = self.model(images, captions=[query] * batch_size, positive_map=positive_map,
                                tokenized=batch_tokens)
            per_prompt.append([o.to("cpu") for o in output])
        if len(per_prompt) == 1:
            return per_prompt[0]
        return [cat_boxlist(list(per_image)) for per_image in zip(*per_prompt)]


def _describe_images(dataset, indices: Sequence[int]) -> str:
    """The images of these dataset indices, by file name where the dataset knows it."""
    if not hasattr(dataset, "get_img_info"):
        return f"the images of dataset indices {list(indices)}"
    names = [dataset.get_img_info(index).get("file_name", f"index {index}") for index in indices]
    return f"the images {names} (dataset indices {list(indices)})"


def _run_model(detector: PromptedDetector, data_loader, subset: int, verbose: bool) -> Dict[int, BoxList]:
    """{dataset index: detections} over the loader (the first `subset` batches when subset >= 0)."""
    results: Dict[int, BoxList] = {}
    batches = tqdm(data_loader, disable=not (verbose and is_main_process()))
    for i, batch in enumerate(batches):
        if i == subset:
            break
        images, _targets, image_ids, *_ = batch
        try:
            detections = detector(images)
        except NonFiniteOffsetError as error:
            images_named = _describe_images(data_loader.dataset, [int(index) for index in image_ids])
            raise error.located(detector.model, f"Evaluation stopped: NaN/inf inside the model on {images_named}"
                                ) from None
        results.update(zip((int(index) for index in image_ids), detections))
    return results


def _check_eval_settings(cfg) -> None:
    """Refuse the evaluation options that are not built (grounding evaluators, test-time augmentation)."""
    check_supported(cfg, ("TEST",))
    # The official default task "" calls the model without a prompt, which a grounding model cannot run:
    # the class-name prompt is used for it too.


def inference(model: nn.Module, data_loader, dataset_name: str, iou_types: Sequence[str] = ("bbox",),
              box_only: bool = False, device="cuda", expected_results: Sequence = (),
              expected_results_sigma_tol: float = 4, output_folder: Optional[str] = None, cfg=None,
              verbose: bool = True):
    """Detect the dataset's classes in every image of the loader and evaluate on rank 0 (None elsewhere).

    Writes `predictions.pth` (BoxLists in model input coordinates, dataset order), `bbox.json` (COCO results in
    original image coordinates and the dataset's category ids), `bbox.csv` and `coco_results.pth` into
    `output_folder`. Returns what `evaluate` returns: (COCOResults, {iou type: COCO results list}).
    """
    _check_eval_settings(cfg)
    device = torch.device(device)
    dataset = data_loader.dataset
    require_box_annotations(dataset, dataset_name)  # before running the model over every image
    if verbose:
        logger.info("Start evaluation on %s dataset(%d images).", dataset_name, len(dataset))
    tokenizer = build_tokenizer(cfg)
    queries, maps = create_queries_and_maps_from_dataset(dataset, cfg, tokenizer)
    language = cfg.MODEL.LANGUAGE_BACKBONE
    detector = PromptedDetector(model, queries, maps, tokenizer, language.MAX_QUERY_LEN, language.PAD_MAX, device)
    model.eval()
    start_time = time.time()
    predictions = _run_model(detector, data_loader, cfg.TEST.SUBSET, verbose)
    synchronize()
    total_time = time.time() - start_time
    num_devices = get_world_size()
    logger.info("Total inference time: %s (%s s / img per device, on %d devices)",
                datetime.timedelta(seconds=total_time), total_time * num_devices / max(len(dataset), 1),
                num_devices)
    predictions = accumulate_predictions_from_multiple_gpus(predictions)
    if not is_main_process():
        return None
    if output_folder:
        torch.save([predictions[i] for i in sorted(predictions)], os.path.join(output_folder, "predictions.pth"))
    return evaluate(dataset, predictions, output_folder, box_only=box_only, iou_types=iou_types,
                    expected_results=expected_results, expected_results_sigma_tol=expected_results_sigma_tol)
